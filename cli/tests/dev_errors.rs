//! `cmdop dev` says why its agent could not start, in the agent's own
//! words, and its own temporary state does not set off the control
//! plane's warning about state readable by other users.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

#[test]
fn an_agent_that_cannot_start_is_reported_with_its_error() {
    // The control plane refuses to enroll a hostname over 255 bytes, so
    // the agent gives up.
    let long = "h".repeat(300);
    let mut child = Command::new(cmdop_bin())
        .args(["dev", "--listen", "127.0.0.1:0", "--hostname", &long])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cmdop dev");
    // Only a guard against a hang: the assertions below are about what it says.
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cmdop dev still runs with an agent that cannot enroll");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("cmdop: the agent for this machine could not start"),
        "{err}"
    );
    assert!(last.contains("hostname is 300 bytes"), "{err}");
    assert!(!err.contains("did not connect within"), "{err}");
}

#[test]
fn dev_s_own_temporary_state_raises_no_permission_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env_file = dir.path().join("env");
    let child = Command::new(cmdop_bin())
        .args(["dev", "--listen", "127.0.0.1:0", "--env-file"])
        .arg(&env_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cmdop dev");
    let mut dev = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !env_file.exists() {
        assert!(
            dev.0.try_wait().expect("wait").is_none(),
            "cmdop dev exited before it was ready"
        );
        assert!(Instant::now() < deadline, "cmdop dev not ready within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    dev.kill();
    let mut err = String::new();
    if let Some(mut stderr) = dev.0.stderr.take() {
        use std::io::Read;
        stderr.read_to_string(&mut err).expect("read stderr");
    }
    assert!(err.contains("open-file limit"), "its log was read: {err}");
    assert!(!err.contains("readable by other users"), "{err}");
}
