//! Native Exec against real processes: output separation, exit codes,
//! signals, timeouts that kill the whole process group, cancel.

use std::{path::Path, time::Duration};

use cmdop_agent::exec::{run_exec, ExecRunner};
use cmdop_proto::ext::{agent_uplink, AgentUplink, ExecFinished, ExecStart};
use tokio::sync::{mpsc, oneshot};

struct Outcome {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    finished: ExecFinished,
}

fn start(command: &str, timeout_ms: u32) -> ExecStart {
    ExecStart {
        exec_id: "e1".into(),
        command: command.into(),
        timeout_ms,
        ..Default::default()
    }
}

async fn run(start: ExecStart, cancel: oneshot::Receiver<()>) -> Outcome {
    let (tx, mut rx) = mpsc::channel(16);
    let home = std::env::temp_dir();
    let collect = tokio::spawn(async move {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(AgentUplink { msg }) = rx.recv().await {
            if let Some(agent_uplink::Msg::Output(o)) = msg {
                assert_eq!(o.exec_id, "e1");
                assert!(o.data.len() <= 64 * 1024);
                if o.is_stderr {
                    stderr.extend_from_slice(&o.data)
                } else {
                    stdout.extend_from_slice(&o.data)
                }
            }
        }
        (stdout, stderr)
    });
    let finished = run_exec(start, &home, cancel, &tx).await;
    drop(tx);
    let (stdout, stderr) = collect.await.unwrap();
    Outcome {
        stdout,
        stderr,
        finished,
    }
}

async fn run_simple(command: &str) -> Outcome {
    let (_keep, cancel) = oneshot::channel();
    run(start(command, 0), cancel).await
}

fn pid_alive(pid: i32) -> bool {
    // Zombies count as gone: they are dead, just not reaped by their parent.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

async fn wait_gone(pid: i32) -> bool {
    for _ in 0..50 {
        if !pid_alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn stdout_and_stderr_stay_apart() {
    let o = run_simple("echo out; echo err >&2; printf more").await;
    assert_eq!(o.stdout, b"out\nmore");
    assert_eq!(o.stderr, b"err\n");
    let exit = o.finished.exit.unwrap();
    assert_eq!((exit.exit_code, exit.signal, exit.timed_out), (0, 0, false));
    assert!(o.finished.pid > 0);
    assert!(exit.duration_us > 0);
}

#[tokio::test]
async fn exit_codes_are_exact() {
    for code in [0, 1, 7] {
        let o = run_simple(&format!("exit {code}")).await;
        assert_eq!(o.finished.exit.unwrap().exit_code, code);
    }
}

#[tokio::test]
async fn signal_death_reports_the_signal() {
    let o = run_simple("kill -TERM $$").await;
    let exit = o.finished.exit.unwrap();
    assert_eq!((exit.exit_code, exit.signal), (-1, 15));
}

#[tokio::test]
async fn stdin_env_and_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start("cat; printf \"$GREETING\"; pwd", 0);
    s.stdin = b"from stdin|".to_vec().into();
    s.env.insert("GREETING".into(), "hello|".into());
    s.working_directory = dir.path().display().to_string();
    let (_keep, cancel) = oneshot::channel();
    let o = run(s, cancel).await;
    let canonical = std::fs::canonicalize(dir.path()).unwrap();
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.starts_with("from stdin|hello|"), "{out}");
    assert!(
        out.trim_end().ends_with(&canonical.display().to_string())
            || out.contains(&dir.path().display().to_string()),
        "{out}"
    );
}

#[tokio::test]
async fn spawn_failure_is_reported() {
    let mut s = start("true", 0);
    s.working_directory = "/definitely/not/here".into();
    let (_keep, cancel) = oneshot::channel();
    let o = run(s, cancel).await;
    let exit = o.finished.exit.unwrap();
    assert_eq!(exit.exit_code, -1);
    assert!(
        exit.error.contains("/definitely/not/here"),
        "{}",
        exit.error
    );
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    // The grandchild writes its pid and would sleep for 100 s.
    let cmd = format!("sleep 100 & echo $! > {}; wait", pidfile.display());
    let (_keep, cancel) = oneshot::channel();
    let begun = std::time::Instant::now();
    let o = run(start(&cmd, 500), cancel).await;
    assert!(begun.elapsed() < Duration::from_secs(5));
    let exit = o.finished.exit.unwrap();
    assert!(exit.timed_out);
    assert_eq!((exit.exit_code, exit.signal), (-1, 9));
    let grandchild: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_gone(grandchild).await,
        "grandchild {grandchild} survived the timeout"
    );
}

#[tokio::test]
async fn cancel_kills_the_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    let cmd = format!("sleep 100 & echo $! > {}; wait", pidfile.display());
    let (cancel_tx, cancel) = oneshot::channel();
    let waiter = tokio::spawn(async move { run(start(&cmd, 0), cancel).await });
    wait_for_file(&pidfile).await;
    cancel_tx.send(()).unwrap();
    let o = waiter.await.unwrap();
    let exit = o.finished.exit.unwrap();
    assert!(!exit.timed_out);
    assert_eq!((exit.exit_code, exit.signal), (-1, 9));
    let grandchild: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_gone(grandchild).await,
        "grandchild {grandchild} survived cancel"
    );
}

#[tokio::test]
async fn dropping_the_runner_kills_running_commands() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let (tx, mut rx) = mpsc::channel(16);
    let runner = ExecRunner::new(std::env::temp_dir(), tx, None);
    runner.start(start(
        &format!("echo $$ > {}; sleep 100", pidfile.display()),
        0,
    ));
    wait_for_file(&pidfile).await;
    drop(runner); // what a lost AgentLink channel does
    let finished = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rx.recv().await {
                Some(AgentUplink {
                    msg: Some(agent_uplink::Msg::Finished(f)),
                }) => return f,
                Some(_) => continue,
                None => panic!("uplink closed without finished"),
            }
        }
    })
    .await
    .expect("finished within 5 s");
    assert_eq!(finished.exit.unwrap().signal, 9);
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(wait_gone(pid).await);
}

#[tokio::test]
async fn background_process_holding_stdout_does_not_hang_finished() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pid");
    let begun = std::time::Instant::now();
    let o = run_simple(&format!(
        "sleep 30 & echo $! > {}; echo done",
        pidfile.display()
    ))
    .await;
    assert_eq!(o.finished.exit.unwrap().exit_code, 0);
    assert_eq!(o.stdout, b"done\n");
    assert!(
        begun.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        begun.elapsed()
    );
    // The background process is left running by design; clean it up.
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

async fn wait_for_file(path: &Path) {
    for _ in 0..100 {
        if std::fs::read_to_string(path).is_ok_and(|s| s.ends_with('\n')) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} never appeared", path.display());
}

#[tokio::test]
async fn the_pid_is_reported_before_any_output() {
    let (tx, mut rx) = mpsc::channel(16);
    let (_keep, cancel) = oneshot::channel();
    let home = std::env::temp_dir();
    let finished = run_exec(start("echo hi", 0), &home, cancel, &tx).await;
    drop(tx);
    let first = rx.recv().await.and_then(|m| m.msg);
    let Some(agent_uplink::Msg::Spawned(spawned)) = first else {
        panic!("expected `spawned` first, got {first:?}");
    };
    assert_eq!(spawned.exec_id, "e1");
    assert!(spawned.pid > 0);
    assert_eq!(spawned.pid, finished.pid);
    let next = rx.recv().await.and_then(|m| m.msg);
    assert!(
        matches!(next, Some(agent_uplink::Msg::Output(ref o)) if &o.data[..] == b"hi\n"),
        "{next:?}"
    );
}

/// The longest command the protocol allows really runs, and one byte more
/// is refused before anything starts, naming the limit (instead of failing
/// with "Argument list too long" from the kernel).
#[tokio::test]
async fn commands_up_to_the_os_argument_limit_run_and_longer_ones_are_refused() {
    let max = cmdop_proto::limits::MAX_COMMAND_BYTES;
    let longest = format!("echo ok #{}", "x".repeat(max - "echo ok #".len()));
    assert_eq!(longest.len(), max);
    let out = run_simple(&longest).await;
    let exit = out.finished.exit.expect("exit");
    assert_eq!((exit.exit_code, exit.error.as_str()), (0, ""));
    assert_eq!(out.stdout, b"ok\n");

    let too_long = format!("{longest}x");
    let out = run_simple(&too_long).await;
    let exit = out.finished.exit.expect("exit");
    assert_eq!(exit.exit_code, -1);
    assert!(exit.error.contains(&max.to_string()), "{}", exit.error);
    assert_eq!(out.finished.pid, 0, "nothing was started");
}

fn libc_sigpipe() -> u32 {
    nix::sys::signal::Signal::SIGPIPE as u32
}

/// A field of `/proc/<pid>/status` as printed by the command itself.
fn status_field(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {out}"))
        .trim()
        .to_owned()
}

#[tokio::test]
async fn the_command_leads_its_own_group_with_default_signals() {
    // The test process ignores SIGPIPE (Rust does) and runs handlers on
    // runtime threads; the command must see none of that.
    // Read by the shell itself (builtins only: a child would see the
    // shell's state while it waits for that child).
    let o = run_simple(
        "while read -r l; do echo \"$l\"; done </proc/self/status; \
         read -r _ _ _ _ pgid _ </proc/self/stat; echo pgid=$pgid pid=$$",
    )
    .await;
    let out = String::from_utf8(o.stdout).unwrap();
    assert_eq!(o.finished.exit.unwrap().exit_code, 0, "{out}");
    // (Caught signals are the shell's own business.)
    let blocked = status_field(&out, "SigBlk");
    assert!(
        blocked.chars().all(|c| c == '0'),
        "the command starts with signals {blocked} blocked"
    );
    // Ignored: only what this process inherited ignored, not SIGPIPE.
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    let mask = |v: &str| u64::from_str_radix(v, 16).unwrap();
    let sigpipe = 1u64 << (libc_sigpipe() - 1);
    assert_eq!(
        mask(&status_field(&out, "SigIgn")),
        mask(&status_field(&own, "SigIgn")) & !sigpipe,
        "{out}"
    );
    let last = out.lines().last().unwrap();
    let pid = o.finished.pid;
    assert_eq!(last, format!("pgid={pid} pid={pid}"), "{out}");
}

#[tokio::test]
async fn the_environment_is_the_agents_plus_the_requests() {
    let mut s = start("printf '%s|%s' \"$HOME\" \"$PATH\"", 0);
    s.env.insert("PATH".into(), "/only/this".into());
    let (_keep, cancel) = oneshot::channel();
    let o = run(s, cancel).await;
    let out = String::from_utf8(o.stdout).unwrap();
    let home = std::env::var("HOME").unwrap_or_default();
    assert_eq!(out, format!("{home}|/only/this"));
}

#[tokio::test]
async fn a_nul_byte_is_refused_without_running_anything() {
    let mut s = start("echo ran", 0);
    s.env.insert("BAD".into(), "a\0b".into());
    let (_keep, cancel) = oneshot::channel();
    let o = run(s, cancel).await;
    let exit = o.finished.exit.unwrap();
    assert_eq!((exit.exit_code, o.finished.pid), (-1, 0));
    assert!(exit.error.contains("NUL"), "{}", exit.error);
    assert!(o.stdout.is_empty());
}

#[tokio::test]
async fn many_quick_commands_are_all_reaped() {
    // Children are listed per thread: this test's runtime runs on this one.
    let (me, thread) = (std::process::id(), nix::unistd::gettid());
    for _ in 0..200 {
        let o = run_simple("true").await;
        assert_eq!(o.finished.exit.unwrap().exit_code, 0);
    }
    // No zombie children left behind.
    let children =
        std::fs::read_to_string(format!("/proc/{me}/task/{thread}/children")).unwrap_or_default();
    for pid in children.split_whitespace() {
        let pid: i32 = pid.parse().unwrap();
        assert!(pid_alive(pid), "child {pid} is an unreaped zombie");
    }
}

#[test]
fn a_command_dies_with_the_thread_that_started_it() {
    // PR_SET_PDEATHSIG: the kernel kills the command when the thread that
    // started it exits (here a runtime's only thread; in the agent, any
    // worker thread, i.e. the agent itself).
    let (pid_tx, pid_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, mut rx) = mpsc::channel(16);
            let (_keep, cancel) = oneshot::channel();
            let home = std::env::temp_dir();
            let run = run_exec(start("sleep 30", 0), &home, cancel, &tx);
            tokio::pin!(run);
            loop {
                tokio::select! {
                    _ = &mut run => panic!("sleep 30 ended early"),
                    m = rx.recv() => {
                        if let Some(AgentUplink { msg: Some(agent_uplink::Msg::Spawned(s)) }) = m {
                            pid_tx.send(s.pid).unwrap();
                            return;
                        }
                    }
                }
            }
        });
    });
    let pid = pid_rx.recv().unwrap() as i32;
    thread.join().unwrap();
    for _ in 0..100 {
        if !pid_alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("command {pid} outlived the thread that started it");
}
