//! TLS end to end: `cmdop server --tls-cert/--tls-key`, an agent dialing it
//! over https with a private CA (`--ca-cert`), and the client core (through
//! `cmdop exec --ca-cert`) trusting the same CA.

mod common;

use std::process::Command;

use common::*;

#[test]
fn tls_with_a_private_ca_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_tls_certs(dir.path());
    let server = start_server(
        dir.path(),
        "127.0.0.1:0",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let port = server.addr.rsplit_once(':').unwrap().1.to_string();
    let ws = create_workspace(dir.path(), "tls");
    let token = enroll_token(dir.path(), "tls");
    let url = format!("https://localhost:{port}");
    let _agent = Proc(
        Command::new(cmdop_bin())
            .args([
                "--log-level",
                "warn",
                "agent",
                "--server",
                &url,
                "--hostname",
                "tls-host",
                "--token",
                &token,
            ])
            .arg("--state-file")
            .arg(dir.path().join("agent.json"))
            .arg("--ca-cert")
            .arg(&ca)
            .spawn()
            .expect("spawn agent"),
    );

    let exec = |ca_cert: Option<&std::path::Path>| {
        let mut cmd = Command::new(cmdop_bin());
        cmd.args([
            "exec",
            "--server",
            &url,
            "--host",
            "tls-host",
            "--timeout-secs",
            "5",
        ])
        .env("CMDOP_API_KEY", &ws.api_key);
        if let Some(ca) = ca_cert {
            cmd.arg("--ca-cert").arg(ca);
        }
        cmd.args(["--", "echo", "over-tls"])
            .output()
            .expect("run cmdop exec")
    };
    // The agent needs a moment to enroll and connect.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let out = loop {
        let out = exec(Some(&ca));
        if out.status.success() || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(
        out.status.success(),
        "exec over TLS failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over-tls\n");

    // Bulk stdout stays inside TLS (on the stream or on a pinned TLS side
    // connection, see tls_side.rs), and every byte arrives.
    let mut cmd = Command::new(cmdop_bin());
    cmd.args([
        "exec",
        "--server",
        &url,
        "--host",
        "tls-host",
        "--timeout-secs",
        "30",
        "--ca-cert",
    ])
    .arg(&ca)
    .env("CMDOP_API_KEY", &ws.api_key)
    .args(["--", "seq", "1", "400000"]);
    let out = cmd.output().expect("run cmdop exec");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: String = (1..=400000).map(|i| format!("{i}\n")).collect();
    assert!(
        out.stdout == want.as_bytes(),
        "bulk output over TLS arrived complete ({} bytes)",
        out.stdout.len()
    );

    // Without the private CA the client refuses the server's certificate.
    let out = exec(None);
    assert!(
        !out.status.success(),
        "a certificate from an unknown CA was accepted"
    );
}
