//! Faults tell the truth: a server that cannot open its database is never
//! reported ready, a locked database yields a retryable status instead of a
//! stalled process, and the agent rides through it.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

/// Holds the SQLite write lock of the server in `data_dir` until dropped.
struct WriteLock(rusqlite::Connection);

impl WriteLock {
    fn take(data_dir: &std::path::Path) -> WriteLock {
        let conn = rusqlite::Connection::open(data_dir.join("cmdop.db")).expect("open db");
        conn.busy_timeout(Duration::from_secs(10))
            .expect("busy timeout");
        conn.execute_batch("BEGIN IMMEDIATE")
            .expect("take the write lock");
        WriteLock(conn)
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        let _ = self.0.execute_batch("ROLLBACK");
    }
}

#[test]
fn ready_file_absent_when_the_database_cannot_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("cmdop.db")).expect("a directory where the db file goes");
    let ready = dir.path().join("ready");
    let mut child = Command::new(cmdop_bin())
        .args(["--log-level", "info", "server", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--ready-file")
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cmdop server");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "a server whose database cannot open kept running"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("output");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!status.success(), "server exited successfully: {log}");
    assert!(
        !ready.exists(),
        "ready file written for a server that could not open its database"
    );
    assert!(!log.contains("listening"), "logged listening: {log}");
    assert!(
        log.contains("database"),
        "the error names the database: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_during_a_database_lock_succeeds_once_released() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(dir.path(), "127.0.0.1:0", &[]);
    let ws = create_workspace(dir.path(), "alpha");
    let token = enroll_token(dir.path(), "alpha");
    let host = unique("lockenroll");
    let state_file = dir.path().join("agent.json");
    let lock = WriteLock::take(dir.path());
    let mut agent = start_agent(
        &server.addr,
        Some(&token),
        &state_file,
        &host,
        &["--heartbeat-secs", "1"],
    );
    // Longer than the server's busy timeout: its enrollment write fails.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        agent.0.try_wait().expect("wait").is_none(),
        "the agent gave up enrolling while the database was locked"
    );
    drop(lock);
    let mut t = terminal(&server.addr, Some(&ws.api_key)).await;
    wait_connected(&mut t, &host).await;
    assert!(state_file.exists(), "enrolled agent saved its identity");
}
