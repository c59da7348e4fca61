//! `cmdop shell` and `cmdop exec -t` in a real pseudo-terminal, against a
//! real control plane and agent: the remote terminal has the local size
//! and follows a resize, Ctrl-C and Ctrl-\ interrupt the remote command
//! and not cmdop, `exit 3` ends the client with 3, `~.` disconnects (255)
//! and stops the remote shell, an interactive prompt gets its answer, and
//! without a local terminal `exec -t` warns and runs without one and
//! `shell` reads a script from stdin, as ssh does.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{pty::Tty, *};

fn env(s: &Stack) -> [(&'static str, String); 2] {
    [
        ("CMDOP_SERVER", format!("http://{}", s.server.addr)),
        ("CMDOP_API_KEY", s.ws.api_key.clone()),
    ]
}

fn spawn(s: &Stack, args: &[&str], rows: u16, cols: u16) -> Tty {
    let env = env(s);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Tty::spawn(args, &env, rows, cols)
}

#[tokio::test]
async fn shell_is_sized_interruptible_and_ends_with_the_shell_s_status() {
    let s = stack("shell-pty", &[]).await;
    let mut t = spawn(&s, &["shell", "-H", &s.host], 33, 111);

    // The remote terminal has the local size (not 24x80), and follows a
    // resize.
    t.type_keys(b"stty size\r");
    t.wait_for("33 111").await;
    t.resize(30, 100);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !t.screen.text().contains("30 100") {
        assert!(
            Instant::now() < deadline,
            "no resize: {:?}",
            t.screen.text()
        );
        t.type_keys(b"stty size\r");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // It is a terminal: `tty` names one, and a command is echoed once (by
    // the remote terminal; the local one is raw).
    t.type_keys(b"tty; echo one-$((40+2))\r");
    t.wait_for("one-42").await;
    assert!(
        t.screen.text().contains("/dev/pts/"),
        "{:?}",
        t.screen.text()
    );
    assert_eq!(
        t.screen.text().matches("echo one-$((40+2))").count(),
        1,
        "echoed locally and remotely: {:?}",
        t.screen.text()
    );

    // Ctrl-C goes to the remote command, not to cmdop; the shell stays.
    t.type_keys(b"echo st$((1+1))rt; sleep 300\r");
    t.wait_for("st2rt").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    t.type_keys(b"\x03");
    t.type_keys(b"echo after-$((1+1))\r");
    t.wait_for("after-2").await;
    assert!(t.running(), "Ctrl-C ended cmdop: {:?}", t.screen.text());
    // So does Ctrl-\ (SIGQUIT).
    t.type_keys(b"echo q$((2+2))q; sleep 300\r");
    t.wait_for("q4q").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    t.type_keys(b"\x1c");
    t.type_keys(b"echo after-quit-$((1+1))\r");
    t.wait_for("after-quit-2").await;
    assert!(t.running(), "Ctrl-\\ ended cmdop: {:?}", t.screen.text());

    // `exit 3` ends the shell, and cmdop with its status.
    t.type_keys(b"exit 3\r");
    let status = t.wait_exit().await;
    assert_eq!(status.code(), Some(3), "{:?}", t.screen.text());
}

#[tokio::test]
async fn tilde_dot_disconnects_the_shell() {
    let s = stack("shell-escape", &[]).await;
    let mut t = spawn(&s, &["shell", "-H", &s.host], 24, 80);
    t.type_keys(b"echo ready-$((2+3))\r");
    t.wait_for("ready-5").await;
    // A `~` inside a line is typed as is.
    t.type_keys(b"echo a~.b-$((1+1))\r");
    t.wait_for("a~.b-2").await;
    assert!(t.running());
    let pid_file = s.dir.path().join("shell.pid");
    t.type_keys(format!("echo $$ > {}; echo saved-$((1+2))\r", pid_file.display()).as_bytes());
    t.wait_for("saved-3").await;
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    t.type_keys(b"\r~.");
    let status = t.wait_exit().await;
    assert_eq!(status.code(), Some(255), "{:?}", t.screen.text());
    t.wait_for("closed (~.)").await;
    // The remote shell was stopped with the connection.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
        assert!(Instant::now() < deadline, "the remote shell {pid} lives on");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

#[tokio::test]
async fn exec_t_runs_interactive_programs_in_a_terminal() {
    let s = stack("exec-tty", &[]).await;

    // A prompt that reads from the terminal gets what is typed.
    let mut t = spawn(
        &s,
        &[
            "exec",
            "-t",
            "-H",
            &s.host,
            "read -p 'name? ' n; echo hi-$n; exit 7",
        ],
        24,
        80,
    );
    t.wait_for("name? ").await;
    t.type_keys(b"bob\r");
    t.wait_for("hi-bob").await;
    let status = t.wait_exit().await;
    assert_eq!(status.code(), Some(7), "{:?}", t.screen.text());

    // The command's stdin, stdout and stderr are the terminal.
    let mut t = spawn(&s, &["exec", "-t", "-H", &s.host, "tty"], 24, 80);
    let status = t.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{:?}", t.screen.text());
    t.wait_for("/dev/pts/").await;
    let mut t = spawn(
        &s,
        &[
            "exec",
            "-t",
            "-H",
            &s.host,
            "test -t 2 && echo err-$((3*3))",
        ],
        24,
        80,
    );
    t.wait_for("err-9").await;
    assert_eq!(t.wait_exit().await.code(), Some(0));

    // Without a local terminal: ssh's warning, and no terminal remotely.
    let mut cmd = Command::new(cmdop_bin());
    cmd.args(["exec", "-t", "-H", &s.host, "tty"])
        .stdin(Stdio::null());
    for (k, v) in env(&s) {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("cmdop exec -t");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Pseudo-terminal will not be allocated because stdin is not a terminal"),
        "{stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "not a tty",
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "tty's own status: {stderr}");

    // `cmdop shell < script`: the login shell reads the script, as
    // `ssh host < script` does, and cmdop exits with its status.
    let mut cmd = Command::new(cmdop_bin());
    cmd.args(["shell", "-H", &s.host])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env(&s) {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("cmdop shell");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"echo piped-$((1+1)); test -t 0 || echo no-tty; exit 4\n")
            .unwrap();
    }
    let out = child.wait_with_output().expect("cmdop shell ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("piped-2"), "{stdout}");
    assert!(stdout.contains("no-tty"), "{stdout}");
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
