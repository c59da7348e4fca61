//! The audit trail against a real server, agents and the `cmdop` CLI:
//! every action leaves exactly one record with the right fields, no
//! secret reaches it, `cmdop admin audit verify` catches a record edited
//! in the database, and with the store refusing writes actions are refused
//! (`--audit-failure closed`) or go on (`open`).

mod common;

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use cmdop_proto::{
    ext::{IssueTokenRequest, RefreshTokenRequest},
    terminal::{
        agent_message, control_message, AgentMessage, FileReadRpcRequest, RegisterRequest,
        SendInputRequest, TerminalOutput,
    },
};
use common::*;
use serde_json::Value;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

fn cli(addr: &str, key: &str, args: &[&str]) -> Output {
    Command::new(cmdop_bin())
        .args(args)
        .env("CMDOP_SERVER", format!("http://{addr}"))
        .env("CMDOP_API_KEY", key)
        .stdin(Stdio::null())
        .output()
        .expect("run cmdop")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every record, as `cmdop admin audit --json` prints them.
fn records(dir: &Path) -> Vec<Value> {
    admin(dir, &["audit", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

fn of<'a>(all: &'a [Value], action: &str) -> Vec<&'a Value> {
    all.iter().filter(|r| r["action"] == action).collect()
}

/// A server, workspace alpha and one connected agent labelled env=staging.
async fn setup(extra: &[&str]) -> Stack {
    let s = stack("audit", extra).await;
    admin(s.dir.path(), &["label", &s.host, "env=staging"]);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_leaves_one_record_and_no_secret() {
    let s = setup(&[]).await;
    let (dir, ws, host, session, addr) = (&s.dir, &s.ws, &s.host, &s.session_id, &s.server.addr);
    let key = admin(
        dir.path(),
        &[
            "create-key",
            "--workspace",
            "alpha",
            "--name",
            "ci-deploy",
            "--allow",
            "exec",
            "--machines",
            "env=staging",
        ],
    );
    wait_labels_read(addr, &key, host).await;

    // exec, with its command, cwd, env names and exit code.
    let out = cli(
        addr,
        &key,
        &[
            "exec",
            "-H",
            host,
            "--env",
            "SECRET_TOKEN=hunter2",
            "--cwd",
            "/tmp",
            "echo audited; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    // Hidden: a production machine, out of the key's scope.
    let prod = unique("audit-prod");
    let token = enroll_token(dir.path(), "alpha");
    let _prod_agent = start_agent(
        addr,
        Some(&token),
        &dir.path().join("prod.json"),
        &prod,
        &["--heartbeat-secs", "1"],
    );
    let mut t = terminal(addr, Some(&ws.api_key)).await;
    wait_connected(&mut t, &prod).await;
    admin(dir.path(), &["label", &prod, "env=prod"]);
    let hidden = cli(addr, &key, &["exec", "-H", &prod, "echo prod"]);
    assert!(!hidden.status.success(), "ran out of scope");
    assert!(!text(&hidden.stdout).contains("prod"));
    // Refused: reading a file with an exec-only key.
    let refused = cli(
        addr,
        &key,
        &[
            "cp",
            &format!("{host}:/etc/hostname"),
            dir.path().to_str().unwrap(),
        ],
    );
    assert!(!refused.status.success());
    // Files both ways with the workspace's full key.
    let local = dir.path().join("up.txt");
    std::fs::write(&local, b"twelve bytes").unwrap();
    let remote = dir.path().join("remote.txt");
    let up = cli(
        addr,
        &ws.api_key,
        &[
            "cp",
            local.to_str().unwrap(),
            &format!("{host}:{}", remote.display()),
        ],
    );
    assert!(up.status.success(), "{}", text(&up.stderr));
    let back = dir.path().join("back.txt");
    let down = cli(
        addr,
        &ws.api_key,
        &[
            "cp",
            &format!("{host}:{}", remote.display()),
            back.to_str().unwrap(),
        ],
    );
    assert!(down.status.success(), "{}", text(&down.stderr));
    // The official protocol: a file read, typed input, an attach.
    let mut t = terminal(addr, Some(&ws.api_key)).await;
    let read = t
        .file_read(FileReadRpcRequest {
            session_id: session.clone(),
            path: remote.to_str().unwrap().into(),
            ..Default::default()
        })
        .await
        .expect("FileRead")
        .into_inner();
    assert!(read.success);
    t.send_input(SendInputRequest {
        session_id: session.clone(),
        data: b"echo typed-in\n".to_vec().into(),
    })
    .await
    .expect("SendInput");
    let (tx, rx) = mpsc::channel::<AgentMessage>(2);
    tx.send(AgentMessage {
        session_id: session.clone(),
        payload: Some(agent_message::Payload::Register(RegisterRequest {
            version: "audit-test-attach".into(),
            ..Default::default()
        })),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut attach = t
        .connect_terminal(ReceiverStream::new(rx))
        .await
        .expect("attach")
        .into_inner();
    attach
        .message()
        .await
        .expect("attach opens")
        .expect("first");
    // Type a command and watch its output, as a user of `cmdop attach`.
    tx.send(AgentMessage {
        session_id: session.clone(),
        payload: Some(agent_message::Payload::Output(TerminalOutput {
            data: b"echo cast-$((6*7))\n".to_vec().into(),
            ..Default::default()
        })),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("cast-42") {
        let msg = tokio::time::timeout(Duration::from_secs(20), attach.message())
            .await
            .expect("the typed command's output within 20 s")
            .expect("attach stream")
            .expect("attach stream open");
        if let Some(control_message::Payload::Input(shown)) = msg.payload {
            seen.extend_from_slice(&shown.data);
        }
    }
    drop(tx);
    drop(attach);
    let token = ext(addr, Some(&key))
        .await
        .issue_token(IssueTokenRequest::default())
        .await
        .expect("IssueToken")
        .into_inner();
    // A refresh token presented twice revokes its family.
    let mut refresher = ext(addr, None).await;
    let refresh = || RefreshTokenRequest {
        refresh_token: token.refresh_token.clone(),
    };
    refresher
        .refresh_token(refresh())
        .await
        .expect("first refresh");
    let reused = refresher
        .refresh_token(refresh())
        .await
        .expect_err("a reused refresh token");
    assert!(reused.message().contains("reuse"), "{reused:?}");
    // An enrollment token revoked by itself (on stdin).
    let unused = enroll_token(dir.path(), "alpha");
    let mut revoke = Command::new(cmdop_bin())
        .args(["admin", "--data-dir"])
        .arg(dir.path())
        .args(["revoke-enroll-token", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = revoke.stdin.take().unwrap();
        writeln!(stdin, "{unused}").unwrap();
    }
    assert!(revoke.wait_with_output().unwrap().status.success());
    admin(dir.path(), &["label", host, "tier=web"]);
    let prefix: String = key.chars().take(12).collect();
    admin(dir.path(), &["revoke-key", &prefix]);

    // The outcomes of the streams that ended are written shortly after.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let all = loop {
        let all = records(dir.path());
        let attach_done = of(&all, "shell.attach")
            .first()
            .is_some_and(|r| !r["outcome"].is_null());
        if attach_done || std::time::Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let execs = of(&all, "exec");
    assert_eq!(execs.len(), 1, "{execs:#?}");
    let exec = execs[0];
    assert_eq!(exec["detail"]["command"], "echo audited; exit 3");
    assert_eq!(exec["detail"]["cwd"], "/tmp");
    assert_eq!(exec["detail"]["env"], serde_json::json!(["SECRET_TOKEN"]));
    assert_eq!(exec["hostname"], host.as_str());
    assert!(exec["machine_id"].as_str().unwrap().starts_with("mach_"));
    assert!(
        exec["actor"].as_str().unwrap().contains("ci-deploy"),
        "{exec}"
    );
    assert!(
        exec["actor"].as_str().unwrap().contains(&prefix[..12]),
        "{exec}"
    );
    assert!(
        exec["source"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{exec}"
    );
    assert_eq!(exec["outcome"]["exit_code"], 3);
    assert_eq!(exec["outcome"]["outcome"], "exit 3");
    assert_eq!(exec["outcome"]["bytes_out"], 8);

    let denied = of(&all, "denied");
    assert_eq!(denied.len(), 2, "{denied:#?}");
    // The exec on a machine out of the key's scope: the caller was told
    // "not found", the trail names the machine.
    assert_eq!(denied[0]["detail"]["missing"], "machine scope");
    assert_eq!(denied[0]["hostname"], prod.as_str());
    assert_eq!(denied[1]["detail"]["missing"], "files:read");

    let ups = of(&all, "transfer.upload");
    assert_eq!(ups.len(), 1, "{ups:#?}");
    assert_eq!(ups[0]["detail"]["path"], remote.to_str().unwrap());
    assert_eq!(ups[0]["outcome"]["bytes_in"], 12);
    let downs = of(&all, "transfer.download");
    assert_eq!(downs.len(), 1, "{downs:#?}");
    assert_eq!(downs[0]["outcome"]["bytes_out"], 12);
    let reads = of(&all, "file.read");
    assert_eq!(reads.len(), 1, "{reads:#?}");
    assert_eq!(reads[0]["outcome"]["bytes_out"], 12);
    let typed = of(&all, "shell.input");
    assert_eq!(typed.len(), 1, "{typed:#?}");
    assert_eq!(typed[0]["detail"]["input"], "echo typed-in\n");
    let attaches = of(&all, "shell.attach");
    assert_eq!(attaches.len(), 1, "{attaches:#?}");
    assert_eq!(attaches[0]["outcome"]["outcome"], "detached");
    // The recording replays to what the user saw.
    let id = attaches[0]["id"].as_i64().unwrap().to_string();
    let cast = admin(dir.path(), &["audit", "play", &id, "--raw"]);
    let mut lines = cast.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    let replayed: String = lines
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()[2]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        replayed.starts_with(&*String::from_utf8_lossy(&seen)),
        "recording {replayed:?} differs from what was seen {:?}",
        String::from_utf8_lossy(&seen)
    );
    let played = admin(dir.path(), &["audit", "play", &id, "--speed", "1000"]);
    assert!(played.contains("cast-42"), "{played}");
    let tokens = of(&all, "token.issue");
    assert_eq!(tokens.len(), 1, "{tokens:#?}");
    assert_eq!(of(&all, "machine.enroll").len(), 2);
    let families = of(&all, "token.revoke");
    assert_eq!(families.len(), 1, "{families:#?}");
    assert!(families[0]["detail"]["family"]
        .as_str()
        .unwrap()
        .starts_with("fam_"));
    let enroll_revoked = of(&all, "enroll_token.revoke");
    assert_eq!(enroll_revoked.len(), 1, "{enroll_revoked:#?}");
    assert_eq!(enroll_revoked[0]["outcome"]["outcome"], "ok");
    // The workspace's first key and ci-deploy.
    let created = of(&all, "key.create");
    assert_eq!(created.len(), 2, "{created:#?}");
    assert_eq!(created[1]["detail"]["allow"], "exec");
    assert!(created[1]["actor"]
        .as_str()
        .unwrap()
        .starts_with("admin CLI"));
    assert_eq!(of(&all, "key.revoke").len(), 1);
    let labels = of(&all, "label.change");
    assert_eq!(labels.len(), 3, "{labels:#?}");
    assert_eq!(labels[2]["detail"]["set"]["tier"], "web");

    // No secret anywhere: not in the records, not in the database file.
    let printed = admin(dir.path(), &["audit", "--json"]);
    let mut db = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("cmdop.db") {
            db.extend(std::fs::read(entry.path()).unwrap());
        }
    }
    for secret in [
        key.as_str(),
        ws.api_key.as_str(),
        token.access_token.as_str(),
        token.refresh_token.as_str(),
        unused.as_str(),
        "hunter2",
    ] {
        assert!(!printed.contains(secret), "a secret is in the audit output");
        assert!(
            !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a secret is in the database"
        );
    }

    // Filters and the table.
    let table = admin(
        dir.path(),
        &["audit", "--action", "exec", "--key", "ci-deploy"],
    );
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("ID"), "{table}");
    assert!(lines[1].contains("echo audited; exit 3") && lines[1].contains("exit 3"));
    let on_host = admin(
        dir.path(),
        &["audit", "--machine", host, "--json", "--since", "1h"],
    );
    assert!(on_host.lines().count() >= 8, "{on_host}");

    // Verify, then edit one record by hand.
    let ok = admin(dir.path(), &["audit", "verify"]);
    assert!(ok.starts_with("audit trail intact"), "{ok}");
    let conn = rusqlite::Connection::open(dir.path().join("cmdop.db")).unwrap();
    let id: i64 = exec["id"].as_i64().unwrap();
    conn.execute(
        "UPDATE audit_records SET detail = replace(detail, 'exit 3', 'exit 0') WHERE id = ?1",
        [id],
    )
    .unwrap();
    let out = Command::new(cmdop_bin())
        .args(["admin", "--data-dir"])
        .arg(dir.path())
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("record {id} was changed")),
        "{}",
        text(&out.stderr)
    );
}

/// Holds SQLite's write lock (an exclusive transaction) until dropped.
fn lock_database(dir: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.join("cmdop.db")).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_trail_refuses_actions_unless_told_to_go_on() {
    let s = setup(&[]).await;
    let lock = lock_database(s.dir.path());
    let out = cli(
        &s.server.addr,
        &s.ws.api_key,
        &["exec", "-H", &s.host, "echo ran"],
    );
    drop(lock);
    assert!(!out.status.success(), "ran without a record");
    assert!(!text(&out.stdout).contains("ran"));
    assert!(
        text(&out.stderr).contains("audit trail"),
        "{}",
        text(&out.stderr)
    );

    let s = setup(&["--audit-failure", "open"]).await;
    let lock = lock_database(s.dir.path());
    let out = cli(
        &s.server.addr,
        &s.ws.api_key,
        &["exec", "-H", &s.host, "echo ran"],
    );
    drop(lock);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ran\n");
}
