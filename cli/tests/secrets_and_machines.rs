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
