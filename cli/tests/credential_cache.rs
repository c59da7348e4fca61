//! The credential cache (README: "Security model"): a credential checked
//! once is accepted again without a database statement, every revocation
//! returns only once every running server has applied it (so the next
//! call is refused everywhere, with no sleep), and a server cut off from
//! the database stops trusting what it cached after its lease. Real
//! replicas on a private PostgreSQL with `pg_stat_statements` on, a real
//! agent.

mod common;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use cmdop_proto::ext::{exec_event::Event, IssueTokenRequest, RefreshTokenRequest};
use common::{
    postgres::{self, Postgres},
    *,
};
use tonic::Code;

const PEER_SECRET: &str = "cache-test-peer-secret-0123456789abcdef";

/// Turns on `pg_stat_statements` (restarts the server; before any replica
/// connects) so the test can count the statements the replicas run.
fn enable_statement_stats(pg: &mut Postgres) {
    pg.psql(
        "postgres",
        "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'",
    );
    pg.stop();
    pg.start_again();
    pg.psql(
        postgres::DATABASE,
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
    );
}

/// Calls of the statements that check an API key or access token.
fn credential_checks(pg: &Postgres) -> u64 {
    let out = pg.psql(
        postgres::DATABASE,
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements
         WHERE query LIKE '%FROM api_keys k JOIN workspaces%'
            OR query LIKE '%FROM access_tokens a%'",
    );
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a count: {out:?}"))
}

fn start_replica(url: &str, dir: &Path, id: &str) -> Server {
    server_pg_env(
        url,
        &[("CMDOP_PEER_SECRET", PEER_SECRET)],
        dir,
        &[
            "--peer-listen",
            "127.0.0.1:0",
            "--replica-id",
            id,
            "--keepalive-secs",
            "2",
        ],
    )
}

/// `cmdop admin ARGS…` on `url`: (stdout, stderr), asserting success.
fn admin_both(url: &str, args: &[&str]) -> (String, String) {
    let out = Command::new(cmdop_bin())
        .arg("admin")
        .env("CMDOP_DATABASE_URL", url)
        .args(args)
        .output()
        .expect("run cmdop admin");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(out.status.success(), "cmdop admin {args:?}: {stderr}");
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        stderr,
    )
}

/// One `true` through `addr` with `credential`: its exit code, or the
/// status the call failed with.
async fn run_true(addr: &str, credential: &str, session_id: &str) -> Result<i32, tonic::Status> {
    let mut e = ext(addr, Some(credential)).await;
    let mut stream = e
        .exec(exec_req(session_id, "true", 30_000))
        .await?
        .into_inner();
    let mut code = None;
    while let Some(ev) = stream.message().await? {
        if let Some(Event::Exit(x)) = ev.event {
            code = Some(x.exit_code);
        }
    }
    Ok(code.expect("an exit event"))
}

/// Three replicas, an agent on A, clients through all three.
#[tokio::test]
async fn revocations_bite_at_the_next_call_on_every_replica_and_cached_keys_cost_no_statement() {
    let mut pg = Postgres::start();
    enable_statement_stats(&mut pg);
    let url = pg.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let replicas = [
        start_replica(&url, dir.path(), "rep_a"),
        start_replica(&url, dir.path(), "rep_b"),
        start_replica(&url, dir.path(), "rep_c"),
    ];
    let ws = create_workspace_pg(&url, "alpha");
    let host = unique("cache-host");
    let token = admin_pg(&url, &["enroll-token", "--workspace", "alpha"]);
    let _agent = start_agent(
        &replicas[0].addr,
        Some(&token),
        &dir.path().join("agent.json"),
        &host,
        &["--heartbeat-secs", "1"],
    );
    let session_id = wait_connected(
        &mut terminal(&replicas[0].addr, Some(&ws.api_key)).await,
        &host,
    )
    .await;
    // Routes known everywhere.
    for r in &replicas {
        wait_native_exec(&mut ext(&r.addr, Some(&ws.api_key)).await, &host).await;
    }

    // A cached key: repeated executes through every replica run no
    // credential statement.
    let key = admin_pg(
        &url,
        &["create-key", "--workspace", "alpha", "--name", "cached"],
    );
    for r in &replicas {
        for _ in 0..3 {
            assert_eq!(run_true(&r.addr, &key, &session_id).await.expect("exec"), 0);
        }
    }
    let before = credential_checks(&pg);
    for r in &replicas {
        for _ in 0..20 {
            assert_eq!(run_true(&r.addr, &key, &session_id).await.expect("exec"), 0);
        }
    }
    let after = credential_checks(&pg);
    assert_eq!(
        after - before,
        0,
        "60 executes with a cached key ran credential statements"
    );

    // An access token of another key, cached everywhere too.
    let other = admin_pg(
        &url,
        &["create-key", "--workspace", "alpha", "--name", "tokens"],
    );
    let pair = ext(&replicas[1].addr, Some(&other))
        .await
        .issue_token(IssueTokenRequest::default())
        .await
        .expect("IssueToken")
        .into_inner();
    for r in &replicas {
        assert_eq!(
            run_true(&r.addr, &pair.access_token, &session_id)
                .await
                .expect("exec with a token"),
            0
        );
    }

    // revoke-key through the database (any replica's view): refused at the
    // next call on every replica, with no sleep in between.
    let (out, err) = admin_both(&url, &["revoke-key", &key]);
    assert_eq!(out, "revoked");
    assert!(
        err.contains("applied by 3 server(s)")
            && ["rep_a", "rep_b", "rep_c"].iter().all(|r| err.contains(r)),
        "revoke-key did not report every replica's acknowledgement: {err}"
    );
    eprintln!("revoke-key: {err}");
    for r in &replicas {
        let refused = run_true(&r.addr, &key, &session_id)
            .await
            .expect_err("a revoked key");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        assert!(refused.message().contains("revoked"), "{refused:?}");
    }

    // A token family revoked on refresh-token reuse (through B): its access
    // token is refused at the next call on every replica. The refused
    // RefreshToken answers only once every replica has applied it.
    let mut refresher = ext(&replicas[1].addr, None).await;
    let refresh = || RefreshTokenRequest {
        refresh_token: pair.refresh_token.clone(),
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
    for r in &replicas {
        let refused = run_true(&r.addr, &pair.access_token, &session_id)
            .await
            .expect_err("a token of a revoked family");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    }
    // The key that issued it still works (only the family went).
    assert_eq!(
        run_true(&replicas[2].addr, &other, &session_id)
            .await
            .expect("exec"),
        0
    );
}

/// One server on PostgreSQL; the database goes away for longer than the
/// cache's lease.
#[tokio::test]
async fn a_server_cut_off_beyond_its_lease_trusts_only_what_the_outage_rules_allow() {
    let mut pg = Postgres::start();
    let url = pg.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    // A keeps the default outage grace; B has none.
    let a = server_pg(&url, &dir_a, &[]);
    let b = server_pg(&url, &dir_b, &["--db-outage-grace-secs", "0"]);
    let ws = create_workspace_pg(&url, "alpha");
    let unseen = admin_pg(
        &url,
        &["create-key", "--workspace", "alpha", "--name", "unseen"],
    );
    let info = |addr: String, key: String| async move {
        ext(&addr, Some(&key))
            .await
            .server_info(cmdop_proto::ext::ServerInfoRequest::default())
            .await
            .map(|_| ())
    };
    for s in [&a, &b] {
        info(s.addr.clone(), ws.api_key.clone())
            .await
            .expect("a key checked while the database answers");
    }
    pg.stop();
    // Beyond the lease (5 s) with no read of the revocation counter.
    let lease = Duration::from_millis(cmdop_proto::limits::CREDENTIAL_CACHE_LEASE_MS);
    let stopped = Instant::now();
    tokio::time::sleep(lease + Duration::from_secs(1)).await;
    assert!(stopped.elapsed() > lease);
    for s in [&a, &b] {
        let refused = info(s.addr.clone(), unseen.clone())
            .await
            .expect_err("a key never checked on this server");
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    }
    // A known key: accepted within the outage grace (README), refused
    // where there is none, since the cache is no longer trusted.
    info(a.addr.clone(), ws.api_key.clone())
        .await
        .expect("a known key within the outage grace");
    let refused = info(b.addr.clone(), ws.api_key.clone())
        .await
        .expect_err("no grace and no trusted cache");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    pg.start_again();
}

/// A single server on SQLite: the same acknowledgement, one server.
#[tokio::test]
async fn a_single_sqlite_server_acknowledges_before_revoke_key_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(dir.path(), "127.0.0.1:0", &[]);
    let ws = create_workspace(dir.path(), "alpha");
    let key = admin(dir.path(), &["create-key", "--workspace", "alpha"]);
    let call = |key: String| {
        let addr = server.addr.clone();
        async move {
            ext(&addr, Some(&key))
                .await
                .server_info(cmdop_proto::ext::ServerInfoRequest::default())
                .await
                .map(|_| ())
        }
    };
    for _ in 0..3 {
        call(key.clone()).await.expect("a valid key");
    }
    let out = Command::new(cmdop_bin())
        .args(["admin", "--data-dir"])
        .arg(dir.path())
        .args(["revoke-key", &key])
        .output()
        .expect("run cmdop admin");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("applied by 1 server(s)"), "{err}");
    let refused = call(key).await.expect_err("a revoked key");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    call(ws.api_key).await.expect("another key still works");
}
