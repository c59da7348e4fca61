//! The control plane on PostgreSQL: real `cmdop server` processes (one or
//! two sharing a database), a real agent and clients, and a throwaway
//! PostgreSQL server ([`common::postgres`]) that tests also stop and start.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use cmdop_proto::ext::{exec_event::Event, ExecEvent};
use common::{
    postgres::{self, Postgres},
    *,
};
use tonic::Code;

/// Runs `cmdop server --database URL` (the URL on the command line, which
/// the server warns about), which must fail; returns its stderr and how
/// long it took.
fn refused_start(url: &str) -> (String, Duration) {
    let t0 = Instant::now();
    let out = Command::new(cmdop_bin())
        .args(["server", "--listen", "127.0.0.1:0", "--database", url])
        .stdin(Stdio::null())
        .output()
        .expect("run cmdop server");
    assert!(!out.status.success(), "the server started");
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t0.elapsed(),
    )
}

struct PgStack {
    // Dropped in order: agent, servers, then PostgreSQL.
    agent: Proc,
    servers: Vec<Server>,
    key: String,
    host: String,
    session_id: String,
    _dir: tempfile::TempDir,
    pg: Postgres,
}

/// PostgreSQL, `servers` servers on it, workspace "alpha" with a key, and
/// one agent connected to the first server.
async fn pg_stack(servers: usize) -> PgStack {
    pg_stack_with(servers, &[]).await
}

/// [`pg_stack`] with `extra` flags for every server.
async fn pg_stack_with(servers: usize, extra: &[&str]) -> PgStack {
    let pg = Postgres::start();
    let url = pg.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let servers: Vec<Server> = (0..servers)
        .map(|_| server_pg(&url, dir.path(), extra))
        .collect();
    admin_pg(&url, &["create-workspace", "alpha"]);
    let key = admin_pg(&url, &["create-key", "--workspace", "alpha"]);
    assert!(key.starts_with("cmdop_"), "{key}");
    let token = admin_pg(&url, &["enroll-token", "--workspace", "alpha"]);
    let host = unique("pg");
    let agent = start_agent(
        &servers[0].addr,
        Some(&token),
        &dir.path().join("agent.json"),
        &host,
        &["--heartbeat-secs", "1"],
    );
    let mut t = terminal(&servers[0].addr, Some(&key)).await;
    let session_id = wait_connected(&mut t, &host).await;
    let mut e = ext(&servers[0].addr, Some(&key)).await;
    wait_native_exec(&mut e, &host).await;
    PgStack {
        agent,
        servers,
        key,
        host,
        session_id,
        _dir: dir,
        pg,
    }
}

/// ResolveMachine by exact hostname: a call that needs the credential check.
async fn resolve(e: &mut Ext, host: &str) -> Result<cmdop_proto::ext::Machine, tonic::Status> {
    Ok(e.resolve_machine(cmdop_proto::ext::ResolveMachineRequest {
        hostname: host.into(),
        ..Default::default()
    })
    .await?
    .into_inner()
    .machine
    .expect("a machine"))
}

/// Runs `command`; its stdout and exit code.
async fn run(e: &mut Ext, session_id: &str, command: &str) -> Result<(String, i32), tonic::Status> {
    let mut stream = e
        .exec(exec_req(session_id, command, 30_000))
        .await?
        .into_inner();
    let mut out = Vec::new();
    loop {
        match stream.message().await? {
            Some(ExecEvent {
                event: Some(Event::Stdout(b)),
            }) => out.extend_from_slice(&b),
            Some(ExecEvent {
                event: Some(Event::Exit(x)),
            }) => return Ok((String::from_utf8_lossy(&out).into_owned(), x.exit_code)),
            Some(_) => {}
            None => panic!("the exec stream ended without an exit"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_agent_client_and_admin_on_postgres() {
    let s = pg_stack(1).await;
    let addr = &s.servers[0].addr;
    let mut e = ext(addr, Some(&s.key)).await;
    assert_eq!(
        run(&mut e, &s.session_id, "echo hello; exit 3")
            .await
            .expect("exec"),
        ("hello\n".to_string(), 3)
    );
    let machine = machine_by_host(&mut e, &s.host).await;
    assert_eq!(machine.status, "connected", "{machine:?}");

    // Admin on the same database: a second key works, and revoking it bites
    // at the next call.
    let url = s.pg.url();
    let second = admin_pg(&url, &["create-key", "--workspace", "alpha"]);
    let mut e2 = ext(addr, Some(&second)).await;
    run(&mut e2, &s.session_id, "true")
        .await
        .expect("the new key works");
    assert_eq!(admin_pg(&url, &["revoke-key", &second]), "revoked");
    let refused = run(&mut e2, &s.session_id, "true")
        .await
        .expect_err("revoked");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    run(&mut e, &s.session_id, "true")
        .await
        .expect("the first key still works");

    // Enrollment tokens: revoked ones are refused.
    let token = admin_pg(&url, &["enroll-token", "--workspace", "alpha"]);
    assert_eq!(admin_pg(&url, &["revoke-enroll-token", &token]), "revoked");
    admin_pg(&url, &["enroll-token", "--workspace", "alpha"]);
    assert_eq!(
        admin_pg(
            &url,
            &["revoke-enroll-token", "--workspace", "alpha", "--all"]
        ),
        "revoked 1"
    );
    let enrolled = agent_link(addr)
        .await
        .enroll(cmdop_proto::ext::EnrollRequest {
            enrollment_token: token,
            hostname: "new-host".into(),
        })
        .await
        .expect_err("a revoked token");
    assert_eq!(enrolled.code(), Code::Unauthenticated);

    // The machine list, and revoking the machine closes its link.
    let listed = admin_pg(&url, &["machines", "--workspace", "alpha"]);
    assert!(
        listed.contains(&machine.machine_id) && listed.contains(&s.host),
        "{listed}"
    );
    assert_eq!(
        admin_pg(&url, &["revoke-machine", &machine.machine_id]),
        "revoked"
    );
    let revoked_at = Instant::now();
    let mut t = terminal(addr, Some(&s.key)).await;
    loop {
        let found = t
            .get_session_by_hostname(cmdop_proto::terminal::GetSessionByHostnameRequest {
                hostname: s.host.clone(),
                partial_match: false,
            })
            .await
            .expect("GetSessionByHostname")
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
    assert!(!admin_pg(&url, &["machines", "--workspace", "alpha"]).contains(&s.host));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_one_server_is_refused_by_the_other_at_once() {
    let s = pg_stack(2).await;
    let (a, b) = (&s.servers[0].addr, &s.servers[1].addr);
    let mut on_a = ext(a, Some(&s.key)).await;
    let mut on_b = ext(b, Some(&s.key)).await;
    // B serves the same workspace's state (it knows the machine).
    let known = resolve(&mut on_b, &s.host)
        .await
        .expect("ResolveMachine on B");
    assert_eq!(known.hostname, s.host);

    // An exec stream open on A, with the key.
    let mut stream = on_a
        .exec(exec_req(&s.session_id, "sleep 60", 0))
        .await
        .expect("exec on A")
        .into_inner();
    match stream
        .message()
        .await
        .expect("started")
        .and_then(|e| e.event)
    {
        Some(Event::Started(_)) => {}
        other => panic!("expected started, got {other:?}"),
    }

    // Noted the moment the open stream ends.
    let ended = tokio::spawn(async move {
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the stream ended without an error"),
                Err(status) => break (status, Instant::now()),
            }
        }
    });
    // The key is revoked in the shared database (by the admin CLI): both
    // servers refuse it at the next call.
    assert_eq!(admin_pg(&s.pg.url(), &["revoke-key", &s.key]), "revoked");
    let revoked_at = Instant::now();
    let refused = resolve(&mut on_b, &s.host)
        .await
        .expect_err("B refuses the revoked key");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refused = resolve(&mut on_a, &s.host)
        .await
        .expect_err("A refuses the revoked key");
    assert_eq!(refused.code(), Code::Unauthenticated);
    // ... and A ends the open stream.
    let (ended, at) = ended.await.expect("stream task");
    let took = at.saturating_duration_since(revoked_at);
    eprintln!("revoke-key committed to the open exec stream on the other server ending: {took:?}");
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    // NOTIFY wakes the watcher; without it, it polls every 250 ms.
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_family_revoked_through_one_server_is_refused_by_the_other() {
    let s = pg_stack(2).await;
    let (a, b) = (&s.servers[0].addr, &s.servers[1].addr);
    let mut keyed_a = ext(a, Some(&s.key)).await;
    let pair = keyed_a
        .issue_token(cmdop_proto::ext::IssueTokenRequest::default())
        .await
        .expect("IssueToken on A")
        .into_inner();
    let mut with_token_b = ext(b, Some(&pair.access_token)).await;
    resolve(&mut with_token_b, &s.host)
        .await
        .expect("B accepts the token");
    let mut anon_a = ext(a, None).await;
    let refresh = cmdop_proto::ext::RefreshTokenRequest {
        refresh_token: pair.refresh_token.clone(),
    };
    anon_a
        .refresh_token(refresh.clone())
        .await
        .expect("first refresh rotates");
    let reuse = anon_a.refresh_token(refresh).await.expect_err("reuse");
    assert_eq!(reuse.code(), Code::Unauthenticated, "{reuse:?}");
    let refused = resolve(&mut with_token_b, &s.host)
        .await
        .expect_err("B refuses a token of the revoked family at the next call");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
}

#[test]
fn an_unreachable_database_stops_the_server_at_once_naming_it_without_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    let (stderr, took) = refused_start(&format!(
        "postgres://cmdop:s3cr3t-pw@127.0.0.1:{port}/cmdop"
    ));
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert!(!stderr.contains("s3cr3t-pw"), "{stderr}");
    assert!(
        stderr.contains(&format!("postgres://cmdop:***@127.0.0.1:{port}/cmdop")),
        "{stderr}"
    );
    assert!(
        stderr.contains("check that PostgreSQL is running"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "warning: --database on the command line can be read by every user of this machine"
        ) && stderr.contains("set CMDOP_DATABASE_URL or pass --database-url-file FILE"),
        "a password on the command line is warned about: {stderr}"
    );
}

#[test]
fn a_database_of_a_newer_schema_is_refused() {
    let pg = Postgres::start();
    admin_pg(&pg.url(), &["create-workspace", "alpha"]);
    pg.psql(postgres::DATABASE, "UPDATE schema_version SET version = 99");
    let (stderr, _) = refused_start(&pg.url());
    assert!(stderr.contains("schema version 99"), "{stderr}");
    assert!(stderr.contains("upgrade cmdop"), "{stderr}");
    assert!(!stderr.contains(pg.password()), "{stderr}");
}

/// Asserts that `status` is the UNAVAILABLE of a database outage.
fn assert_database_unavailable(status: &tonic::Status) {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("database unavailable; retry"),
        "{status:?}"
    );
}

/// After PostgreSQL is back: an execute through `e` works again within 20 s.
async fn recovers(e: &mut Ext, session_id: &str) {
    let back = Instant::now();
    loop {
        match run(e, session_id, "echo back").await {
            Ok(out) => {
                assert_eq!(out, ("back\n".to_string(), 0));
                break;
            }
            Err(status) => {
                assert_database_unavailable(&status);
                assert!(
                    back.elapsed() < Duration::from_secs(20),
                    "no recovery: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    eprintln!(
        "PostgreSQL restarted to a working execute: {:?}",
        back.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_for_ten_seconds_known_credentials_keep_working_then_recovers() {
    // Actions go on unrecorded while the trail is down (the default refuses
    // them: cluster_routing's outage tests show both).
    let mut s = pg_stack_with(1, &["--audit-failure", "open"]).await;
    let addr = s.servers[0].addr.clone();
    let url = s.pg.url();
    let mut e = ext(&addr, Some(&s.key)).await;
    run(&mut e, &s.session_id, "true")
        .await
        .expect("exec before");
    // A key that exists but was never used on this server.
    let unused = admin_pg(&url, &["create-key", "--workspace", "alpha"]);
    let mut stranger = ext(&addr, Some(&unused)).await;
    // A key used, then revoked before the outage: the server's refusal
    // drops what it remembered, so the outage does not bring it back.
    let revoked = admin_pg(&url, &["create-key", "--workspace", "alpha"]);
    let mut gone = ext(&addr, Some(&revoked)).await;
    run(&mut gone, &s.session_id, "true")
        .await
        .expect("exec with a key not yet revoked");
    assert_eq!(admin_pg(&url, &["revoke-key", &revoked]), "revoked");
    let status = run(&mut gone, &s.session_id, "true")
        .await
        .expect_err("revoked");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    s.pg.stop();
    let down = Instant::now();
    let (mut worked, mut refused) = (0, 0);
    let mut slowest = Duration::ZERO;
    let mut session_id = s.session_id.clone();
    let mut agent_restarted = false;
    while down.elapsed() < Duration::from_secs(10) {
        // The key used before the outage keeps working for execute.
        let t0 = Instant::now();
        let out = run(&mut e, &session_id, "echo during")
            .await
            .expect("a key checked before the outage works during it");
        assert_eq!(out, ("during\n".to_string(), 0));
        slowest = slowest.max(t0.elapsed());
        worked += 1;
        // So does looking up the machine connected here by its hostname.
        assert_eq!(
            resolve(&mut e, &s.host).await.expect("resolve").hostname,
            s.host
        );
        // A key never checked before gets UNAVAILABLE saying why.
        let t0 = Instant::now();
        let status = run(&mut stranger, &session_id, "true")
            .await
            .expect_err("an unknown key during the outage");
        assert_database_unavailable(&status);
        assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
        let status = run(&mut gone, &session_id, "true")
            .await
            .expect_err("a key revoked before the outage");
        assert_database_unavailable(&status);
        refused += 1;
        // The agent, restarted mid-outage, reconnects with its secret
        // (checked before the outage) and serves execute again.
        if !agent_restarted && down.elapsed() > Duration::from_secs(3) {
            agent_restarted = true;
            s.agent.kill();
            s.agent = start_agent(
                &addr,
                None,
                &s._dir.path().join("agent.json"),
                &s.host,
                &["--heartbeat-secs", "1"],
            );
            let again = Instant::now();
            session_id = loop {
                if let Ok(m) = resolve(&mut e, &s.host).await {
                    if !m.session_id.is_empty() && run(&mut e, &m.session_id, "true").await.is_ok()
                    {
                        break m.session_id;
                    }
                }
                assert!(
                    again.elapsed() < Duration::from_secs(20),
                    "the restarted agent did not come back during the outage"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            eprintln!(
                "agent restarted during the outage serves again after {:?}",
                again.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(agent_restarted);
    // The official ListSessions still lists the session connected here.
    let mut t = terminal(&addr, Some(&s.key)).await;
    assert_eq!(wait_connected(&mut t, &s.host).await, session_id);
    assert!(worked >= 3 && refused >= 3, "{worked} {refused}");
    eprintln!(
        "{worked} executes worked and {refused} calls of an unused key got UNAVAILABLE while PostgreSQL was down; slowest execute: {slowest:?}"
    );
    s.pg.start_again();
    recovers(&mut e, &session_id).await;
    // The key never used before works now too, and new clients as well.
    let mut fresh = ext(&addr, Some(&unused)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match run(&mut fresh, &session_id, "true").await {
            Ok(_) => break,
            Err(status) => {
                assert_database_unavailable(&status);
                assert!(Instant::now() < deadline, "{status:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert_eq!(
        machine_by_host(&mut fresh, &s.host).await.status,
        "connected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_outage_grace_postgres_down_gives_unavailable_then_recovers() {
    let mut s = pg_stack_with(1, &["--db-outage-grace-secs", "0"]).await;
    let addr = s.servers[0].addr.clone();
    let mut e = ext(&addr, Some(&s.key)).await;
    run(&mut e, &s.session_id, "true")
        .await
        .expect("exec before");

    s.pg.stop();
    // Credentials cached before the outage are trusted for at most the
    // cache's lease after the server last read the revocation counter (the
    // call may then fail later, at the audit trail); beyond it the check
    // itself answers UNAVAILABLE.
    tokio::time::sleep(
        Duration::from_millis(cmdop_proto::limits::CREDENTIAL_CACHE_LEASE_MS)
            + Duration::from_secs(1),
    )
    .await;
    let down = Instant::now();
    let mut unavailable = 0;
    let mut slowest = Duration::ZERO;
    while down.elapsed() < Duration::from_secs(5) {
        let t0 = Instant::now();
        let status = run(&mut e, &s.session_id, "true")
            .await
            .expect_err("the database is down and there is no grace");
        assert_database_unavailable(&status);
        assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
        slowest = slowest.max(t0.elapsed());
        unavailable += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(unavailable >= 2, "{unavailable}");
    eprintln!("{unavailable} calls while PostgreSQL was down; slowest UNAVAILABLE: {slowest:?}");
    s.pg.start_again();
    recovers(&mut e, &s.session_id).await;
    // The agent stayed connected throughout.
    let mut fresh = ext(&addr, Some(&s.key)).await;
    assert_eq!(
        machine_by_host(&mut fresh, &s.host).await.status,
        "connected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_expiring_during_a_database_outage_works_again_after_it() {
    use cmdop::client::{Client, Credentials, Error};
    let mut s = pg_stack_with(1, &["--audit-failure", "open"]).await;
    let addr = s.servers[0].addr.clone();
    let mut e = ext(&addr, Some(&s.key)).await;
    let pair = e
        .issue_token(cmdop_proto::ext::IssueTokenRequest {
            access_ttl_seconds: 2,
        })
        .await
        .expect("IssueToken")
        .into_inner();
    let opts = local_options(
        &addr,
        Credentials::Tokens {
            access: pair.access_token,
            refresh: pair.refresh_token,
            auto_refresh: true,
        },
        Duration::from_secs(20),
    );
    let client = Client::new(opts).expect("client");
    client.open().await.expect("connect");
    client.set_machine(&s.host).await.expect("set_machine");

    s.pg.stop();
    tokio::time::sleep(Duration::from_millis(2200)).await; // the access token expires
                                                           // Nothing can check or refresh it: a retryable error, not "sign in
                                                           // again", and the tokens are kept for later.
    match client.execute("echo during", None).await {
        Err(Error::Unavailable(msg)) => {
            assert!(msg.contains("retry"), "{msg}");
        }
        other => panic!("expected UNAVAILABLE while the database is down, got {other:?}"),
    }
    s.pg.start_again();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.execute("echo after", None).await {
            Ok(out) => {
                assert_eq!(out.output, b"after\n");
                break;
            }
            Err(err) => assert!(
                Instant::now() < deadline,
                "no execute worked within 20 s of the database's return: {err}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
