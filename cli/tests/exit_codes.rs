//! `cmdop exec`'s exit status, case by case against a real control plane
//! and agent (the table in the README and `cmdop exec --help`): the remote
//! status as it is, 128+N for a signal, 124 for `--timeout`, 255 for
//! cmdop's own failures; each failure one line in CLI words. Also the log
//! options every command shares (`-v`, `-vv`, `--log-format json`).

mod common;

use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::*;

/// `cmdop ARGS` as a user of `s`'s workspace, stdin closed.
fn cmdop(s: &Stack, args: &[&str]) -> Output {
    cmdop_with(&format!("http://{}", s.server.addr), &s.ws.api_key, args)
}

fn cmdop_with(server: &str, key: &str, args: &[&str]) -> Output {
    Command::new(cmdop_bin())
        .args(args)
        .env("CMDOP_SERVER", server)
        .env("CMDOP_API_KEY", key)
        .env_remove("CMDOP_LOG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run cmdop")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A failure report: exactly one line, starting with `cmdop: `, without
/// RPC names or a cause printed twice.
fn assert_one_clean_line(o: &Output) -> String {
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {err:?}");
    let line = lines[0];
    assert!(line.starts_with("cmdop: "), "{line}");
    for rpc in ["ServerInfo", "ResolveMachine", "ListMachines", "Exec:"] {
        assert!(!line.contains(rpc), "names an RPC: {line}");
    }
    let pieces: Vec<&str> = line.split(": ").collect();
    for (i, p) in pieces.iter().enumerate() {
        assert!(!pieces[i + 1..].contains(p), "cause {p:?} repeated: {line}");
    }
    line.to_string()
}

#[tokio::test]
async fn cmdop_s_own_failures_exit_255_with_one_line_naming_the_fix() {
    let s = stack("exit-own", &[]).await;

    // Server down: a port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let out = cmdop_with(
        &format!("http://127.0.0.1:{closed}"),
        &s.ws.api_key,
        &["exec", "true"],
    );
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let line = assert_one_clean_line(&out);
    assert!(line.contains("cannot connect"), "{line}");
    assert!(line.contains("--server"), "{line}");

    // A key the server does not know.
    let out = cmdop_with(
        &format!("http://{}", s.server.addr),
        "cmdop_not_a_real_key",
        &["exec", "-H", &s.host, "true"],
    );
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let line = assert_one_clean_line(&out);
    assert!(line.contains("CMDOP_API_KEY"), "{line}");
    assert!(
        !line.contains("cmdop_not_a_real_key"),
        "the key is a secret: {line}"
    );

    // An unknown host.
    let out = cmdop(&s, &["exec", "-H", "no-such-host-anywhere", "true"]);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let line = assert_one_clean_line(&out);
    assert!(line.contains("cmdop machines"), "{line}");

    // An offline machine: its agent stopped.
    let mut s = s;
    s.agent.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cmdop(&s, &["machines", "--json", "-H", &s.host]);
        assert!(out.status.success(), "{}", stderr(&out));
        if stdout(&out).contains("\"offline\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} still online: {}",
            s.host,
            stdout(&out)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = cmdop(&s, &["exec", "-H", &s.host, "true"]);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert_one_clean_line(&out);
}

#[tokio::test]
async fn the_remote_status_passes_through() {
    let s = stack("exit-remote", &[]).await;
    let run = |cmd: &str| cmdop(&s, &["exec", "-H", &s.host, cmd]);

    let out = run("echo fine");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "fine\n");
    assert_eq!(stderr(&out), "", "nothing on stderr for a success");

    let out = run("exit 1");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = run("exit 42");
    assert_eq!(out.status.code(), Some(42), "{}", stderr(&out));

    // Killed by signal 9: 128 + 9, as a shell reports it.
    let out = run("kill -9 $$");
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    assert!(stderr(&out).contains("signal 9"), "{}", stderr(&out));

    // --timeout kills it and says which flag did.
    let out = cmdop(
        &s,
        &[
            "exec",
            "-H",
            &s.host,
            "--timeout",
            "2s",
            "echo started; sleep 60",
        ],
    );
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert_eq!(stdout(&out), "started\n");
    assert!(stderr(&out).contains("--timeout 2s"), "{}", stderr(&out));

    // A bad duration is refused before anything runs, as cmdop's own
    // failure.
    let out = cmdop(&s, &["exec", "-H", &s.host, "--timeout", "soon", "true"]);
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(stderr(&out).contains("--timeout 30s"), "{}", stderr(&out));
}

/// Without `--timeout` nothing kills a long command: this one runs past
/// the 30 s per-call timeout (`--timeout-secs`) and completes.
#[tokio::test]
async fn a_40_second_command_is_not_killed_without_timeout() {
    let s = stack("exit-long", &[]).await;
    let out = cmdop(&s, &["exec", "-H", &s.host, "sleep 40; echo completed"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "completed\n");
}

#[tokio::test]
async fn verbosity_and_json_logs() {
    let s = stack("exit-logs", &[]).await;

    // -v in text on a pipe: cmdop's own debug lines, no colour codes.
    let out = cmdop(&s, &["-v", "exec", "-H", &s.host, "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("connecting to"), "{err}");
    assert!(!err.contains('\x1b'), "colour codes on a pipe: {err:?}");

    // JSON: one object per line with stable fields; -v shows no HTTP/2
    // internals, -vv does.
    let targets = |verbosity: &str| -> Vec<String> {
        let out = cmdop(
            &s,
            &[
                verbosity,
                "--log-format",
                "json",
                "exec",
                "-H",
                &s.host,
                "true",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(!err.is_empty(), "no log lines at {verbosity}");
        assert!(
            !err.contains(&s.ws.api_key[7..]),
            "the API key is in the {verbosity} log"
        );
        err.lines()
            .map(|l| {
                let v: serde_json::Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
                for field in ["timestamp", "level", "target", "message"] {
                    assert!(v.get(field).is_some(), "no {field} in {l}");
                }
                v["target"].as_str().unwrap_or_default().to_string()
            })
            .collect()
    };
    let v = targets("-v");
    assert!(
        v.iter().all(|t| t.starts_with("cmdop")),
        "-v shows only cmdop's own messages: {v:?}"
    );
    let vv = targets("-vv");
    assert!(
        vv.iter().any(|t| t.starts_with("h2")),
        "-vv shows the HTTP/2 internals: {vv:?}"
    );
}
