//! TLS end to end: `cmdop server --tls-cert/--tls-key`, an agent dialing it
//! over https with a private CA (`--ca-cert`), and the client core (through
//! `cmdop exec --ca-cert`) trusting the same CA.

mod common;

use std::process::Command;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_end_to_end() {
    let s = tls_stack("tls-host").await;
    let (url, ws, ca) = (&s.url, &s.ws, &s.ca);
    let exec = |ca_cert: Option<&std::path::Path>| {
        let mut cmd = Command::new(cmdop_bin());
        cmd.args([
            "exec",
            "--server",
            url,
            "--host",
            &s.host,
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
    // `tls_stack` returned once the agent serves native exec.
    let out = exec(Some(ca));
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
        url,
        "--host",
        &s.host,
        "--timeout-secs",
        "30",
        "--ca-cert",
    ])
    .arg(ca)
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
