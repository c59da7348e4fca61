//! Secrets stay out of help texts, logs and world-readable files, and
//! `cmdop admin` revocations bite on a running server from another process.

mod common;

use std::{
    os::unix::fs::PermissionsExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use cmdop_proto::{
    ext::EnrollRequest,
    terminal::{GetSessionByHostnameRequest, SendInputRequest},
};
use common::*;
use tonic::Code;

#[test]
fn help_texts_show_no_secret_from_the_environment() {
    let secrets = [
        ("CMDOP_ENROLL_TOKEN", "cmdenr_HelpLeakCanary1"),
        ("CMDOP_API_KEY", "cmdop_HelpLeakCanary2"),
        ("CMDOP_SERVER", "http://HelpLeakCanary3:1"),
        ("CMDOP_AGENT_SERVER", "http://HelpLeakCanary4:1"),
        ("CMDOP_LOG", "HelpLeakCanary5"),
        (
            "CMDOP_DATABASE_URL",
            "postgres://u:HelpLeakCanary6@127.0.0.1:1/db",
        ),
    ];
    for command in [
        &["--help"][..],
        &["agent", "--help"],
        &["exec", "--help"],
        &["ls", "--help"],
        &["sessions", "--help"],
        &["attach", "--help"],
        &["server", "--help"],
        &["dev", "--help"],
        &["admin", "--help"],
    ] {
        let out = Command::new(cmdop_bin())
            .args(command)
            .envs(secrets)
            .output()
            .expect("run cmdop --help");
        assert!(out.status.success(), "{command:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.is_empty());
        assert!(
            !text.contains("HelpLeakCanary"),
            "{command:?} prints:\n{text}"
        );
    }
}

/// Runs `cmdop` with `args` at trace level (the most verbose), its log
/// going to `log`.
fn spawn_logged(args: &[&str], log: &std::path::Path) -> Proc {
    let file = std::fs::File::create(log).expect("log file");
    Proc(
        Command::new(cmdop_bin())
            .args(["--log-level", "trace"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("spawn cmdop"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_of_an_execute_hold_no_command_text_and_state_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server-state");
    let server_log = dir.path().join("server.log");
    let agent_log = dir.path().join("agent.log");
    let ready = dir.path().join("ready");
    let _server = spawn_logged(
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--ready-file",
            ready.to_str().unwrap(),
        ],
        &server_log,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        if let Ok(s) = std::fs::read_to_string(&ready) {
            if !s.trim().is_empty() {
                break s.trim().to_string();
            }
        }
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Control-plane state is private to its owner.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("cmdop.db")), 0o600);

    let ws = create_workspace(&data, "alpha");
    let token = enroll_token(&data, "alpha");
    let host = unique("logcheck");
    let _agent = spawn_logged(
        &[
            "agent",
            "--server",
            &format!("http://{addr}"),
            "--hostname",
            &host,
            "--state-file",
            dir.path().join("agent.json").to_str().unwrap(),
            "--token",
            &token,
        ],
        &agent_log,
    );
    let mut t = terminal(&addr, Some(&ws.api_key)).await;
    let sid = wait_connected(&mut t, &host).await;

    // Native exec, and the official path's SendInput (what execute() uses).
    let secret = "Passw0rdCanary-9f1c";
    let command = format!("echo pw={secret} >/dev/null");
    let mut e = ext(&addr, Some(&ws.api_key)).await;
    // The exec channel opens just after the terminal session.
    wait_native_exec(&mut e, &host).await;
    let mut events = e
        .exec(exec_req(&sid, &command, 10_000))
        .await
        .expect("exec")
        .into_inner();
    while events.message().await.expect("exec events").is_some() {}
    t.send_input(SendInputRequest {
        session_id: sid.clone(),
        data: format!("{command}\n").into_bytes().into(),
    })
    .await
    .expect("send input");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let logs = format!(
        "{}\n{}",
        std::fs::read_to_string(&server_log).unwrap(),
        std::fs::read_to_string(&agent_log).unwrap()
    );
    assert!(
        logs.contains("exec start"),
        "the agent logs the execute (at debug level):\n{logs}"
    );
    assert!(!logs.contains(secret), "a log holds the command:\n{logs}");
    assert!(
        !logs.contains("pw="),
        "more than the prefix is logged:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_revocations_bite_on_a_running_server() {
    let s = stack("revoke", &[]).await;
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let machine = machine_by_host(&mut e, &s.host).await;
    let mut t = terminal(&s.server.addr, Some(&s.ws.api_key)).await;

    let revoked_at = Instant::now();
    assert_eq!(
        admin(s.dir.path(), &["revoke-machine", &machine.machine_id]),
        "revoked"
    );
    loop {
        let found = t
            .get_session_by_hostname(GetSessionByHostnameRequest {
                hostname: s.host.clone(),
                partial_match: false,
            })
            .await
            .unwrap()
            .into_inner();
        if !found.found {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "the revoked machine is still connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "cmdop admin revoke-machine to link closed: {:?} (includes the admin process start)",
        revoked_at.elapsed()
    );
    // Its agent keeps retrying with the revoked secret and stays out.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let found = t
        .get_session_by_hostname(GetSessionByHostnameRequest {
            hostname: s.host.clone(),
            partial_match: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!found.found, "the revoked agent reconnected: {found:?}");

    // Enrollment tokens: revoked ones and expired ones are refused.
    let enroll = |token: String| async {
        agent_link(&s.server.addr)
            .await
            .enroll(EnrollRequest {
                enrollment_token: token,
                hostname: "new-host".into(),
            })
            .await
    };
    let token = enroll_token(s.dir.path(), "alpha");
    assert_eq!(
        admin(s.dir.path(), &["revoke-enroll-token", &token]),
        "revoked"
    );
    assert_eq!(
        enroll(token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let short = admin(
        s.dir.path(),
        &["enroll-token", "--workspace", "alpha", "--ttl", "1s"],
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        enroll(short).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let lost = enroll_token(s.dir.path(), "alpha");
    assert_eq!(
        admin(
            s.dir.path(),
            &["revoke-enroll-token", "--workspace", "alpha", "--all"]
        ),
        "revoked 1"
    );
    assert_eq!(
        enroll(lost).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert!(enroll(enroll_token(s.dir.path(), "alpha")).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_reporting_the_same_hostname_makes_set_machine_ambiguous() {
    let s = stack("squat", &[]).await;
    let client = library_client(&s, false).await;
    let mut e = ext(&s.server.addr, Some(&s.ws.api_key)).await;
    let owner = machine_by_host(&mut e, &s.host).await;

    // Another machine of the workspace reports the same hostname.
    let token = enroll_token(s.dir.path(), "alpha");
    let _squatter = start_agent(
        &s.server.addr,
        Some(&token),
        &s.dir.path().join("squatter.json"),
        &s.host,
        &["--heartbeat-secs", "1"],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let err = loop {
        match client.set_machine(&s.host).await {
            Err(err) => break err,
            Ok(m) => {
                assert_eq!(m.machine_id, owner.machine_id, "silently switched machines");
                assert!(
                    Instant::now() < deadline,
                    "the second agent never connected"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(err.kind(), cmdop::client::ErrorKind::Ambiguous, "{err}");
    let text = err.to_string();
    assert!(text.contains(&owner.machine_id), "{text}");
    assert_eq!(text.matches("mach_").count(), 2, "{text}");
}

/// Every process's command line, as a user other than the one running the
/// test sees it (`nobody` under root; ourselves otherwise): one line each.
fn command_lines_seen_by(uid: Option<u32>) -> String {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' <"$f" 2>/dev/null; echo; done"#);
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().expect("read /proc/*/cmdline");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `psql` as `uid` with no password available; true when it logged in.
fn psql_logs_in(uid: Option<u32>, args: &[&str]) -> (bool, String) {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("psql");
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/nonexistent")
        .args(["-X", "-w", "-qAt", "-c", "SELECT 'logged-in'"])
        .args(args)
        .stdin(Stdio::null());
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().expect("run psql (postgresql-client)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && said.contains("logged-in"), said)
}

/// The environment variable `name` of process `pid` (readable by its user
/// and root only).
fn environ_var(pid: u32, name: &str) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    raw.split(|&b| b == 0).find_map(|kv| {
        let kv = String::from_utf8_lossy(kv);
        kv.strip_prefix(&format!("{name}=")).map(str::to_owned)
    })
}

/// Pids of `root`'s descendants.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid …"; comm may hold spaces and parentheses.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            parent_of.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

/// The hole of issue 19: `cmdop dev --cluster` put its database URL (with
/// the owner's password) on its replicas' command lines, so any local user
/// could log in to the database and mint an API key. Now no secret is on
/// any command line, and another user cannot log in to the database.
#[test]
fn dev_cluster_shows_no_secret_to_other_users_and_its_database_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("env");
    let mut dev = Proc(
        Command::new(cmdop_bin())
            .args(["--log-level", "warn", "dev", "--cluster", "3"])
            .args(["--listen", "127.0.0.1:0", "--env-file"])
            .arg(&env_file)
            .env_remove("CMDOP_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn cmdop dev --cluster 3"),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let env_text = loop {
        if let Ok(text) = std::fs::read_to_string(&env_file) {
            break text;
        }
        assert!(
            dev.0.try_wait().expect("wait").is_none(),
            "cmdop dev --cluster 3 exited before it was ready"
        );
        assert!(
            Instant::now() < deadline,
            "cmdop dev --cluster 3 not ready in 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let api_key = env_text
        .lines()
        .find_map(|l| l.strip_prefix("CMDOP_API_KEY="))
        .expect("CMDOP_API_KEY in the env file")
        .to_string();

    // The secrets, read where only the user running cmdop dev can: the
    // children's environments.
    let children = descendants(dev.pid());
    let var = |name: &str| {
        children
            .iter()
            .find_map(|&pid| environ_var(pid, name))
            .unwrap_or_else(|| panic!("no child of cmdop dev has {name}"))
    };
    let database_url = var("CMDOP_DATABASE_URL");
    let peer_secret = var("CMDOP_PEER_SECRET");
    let enroll_token = var("CMDOP_ENROLL_TOKEN");
    let password = database_url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, pw)| pw.to_string())
        .expect("the URL has a password");
    let port = database_url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(port, _)| port.to_string())
        .expect("the URL has a port");

    let other_user = nix::unistd::geteuid().is_root().then_some(65534u32);
    if other_user.is_none() {
        eprintln!(
            "NOTE: not root, so the probes below run as the same user as cmdop dev \
             (command lines and the password check still apply; the socket check does not)"
        );
    }
    let seen = command_lines_seen_by(other_user);
    assert!(
        seen.contains("--peer-listen") && seen.contains("--cluster"),
        "the probe saw the cluster's command lines: {seen}"
    );
    for (what, secret) in [
        ("the database password", password.as_str()),
        ("the peer secret", peer_secret.as_str()),
        ("the enrollment token", enroll_token.as_str()),
        ("the API key", api_key.as_str()),
    ] {
        assert!(secret.len() >= 16, "{what} looks too short: {secret}");
        assert!(
            !seen.contains(secret),
            "{what} is on a command line every user can read"
        );
    }

    // Over TCP without the password: refused. With it: in (so the refusal
    // was for the password, not for a missing psql or server).
    let no_pw = format!("postgresql://cmdop@127.0.0.1:{port}/cmdop");
    let (logged_in, said) = psql_logs_in(other_user, &[&no_pw]);
    assert!(!logged_in, "logged in without the password: {said}");
    let (logged_in, said) = psql_logs_in(other_user, &[&database_url]);
    assert!(logged_in, "the password itself works: {said}");
    // The superuser's socket (trusted, no password) is in a directory only
    // the database's owner can enter.
    if other_user.is_some() {
        let sock_dir = seen
            .lines()
            .filter(|l| l.contains(&format!("-p {port} -k")))
            .find_map(|l| {
                let mut words = l.split_whitespace();
                words.find(|w| *w == "-k")?;
                words.next().map(str::to_owned)
            })
            .expect("the postgres server's -k socket directory");
        let (logged_in, said) = psql_logs_in(
            other_user,
            &[
                "-h",
                &sock_dir,
                "-p",
                &port,
                "-U",
                "cmdop_admin",
                "-d",
                "postgres",
            ],
        );
        assert!(
            !logged_in,
            "another user reached the superuser's socket: {said}"
        );
    }

    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dev.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let stop = Instant::now() + Duration::from_secs(30);
    while dev.0.try_wait().expect("wait").is_none() && Instant::now() < stop {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `cmdop admin revoke-key -` and `revoke-enroll-token -` read the secret
/// from stdin; a whole key or token on the command line is warned about,
/// and a refusal shows only the key's prefix.
#[test]
fn revocations_take_the_secret_from_stdin_and_warn_about_argv() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let ws = create_workspace(dir.path(), "alpha");
    let admin_with_stdin = |args: &[&str], input: &str| {
        let mut child = Command::new(cmdop_bin())
            .arg("admin")
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run cmdop admin");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = admin_with_stdin(&["revoke-key", "-"], &format!("{}\n", ws.api_key));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "revoked");
    assert!(out.stderr.is_empty(), "no warning for stdin: {out:?}");
    // Revoked: a second time matches nothing, and the refusal shows only
    // the prefix.
    let out = admin_with_stdin(&["revoke-key", &ws.api_key], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: the API key on the command line"),
        "{err}"
    );
    assert!(
        !err.contains(&ws.api_key),
        "the whole key was printed: {err}"
    );
    assert!(err.contains(&ws.api_key[..12]), "{err}");

    let token = enroll_token(dir.path(), "alpha");
    let out = admin_with_stdin(&["revoke-enroll-token", "-"], &token);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    let out = admin_with_stdin(&["revoke-enroll-token", "-"], "\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stdin is empty"));
}
