use std::time::Duration;

use rusqlite::{params, Connection};

use super::{engine::args, *};
use cmdop_localpg::{LocalPostgres, DATABASE};

/// A private PostgreSQL server; panics with what to do when it cannot.
fn start_postgres() -> LocalPostgres {
    LocalPostgres::start().unwrap_or_else(|e| panic!("{e:#}"))
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("open store");
    (dir, store)
}

/// Cases that run on both engines, each as two tests of its own
/// (`sqlite::NAME`, `postgres::NAME`) on a fresh database.
macro_rules! on_both_engines {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $case() {
                    let (_dir, s) = super::store();
                    super::$case(&s);
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $case() {
                    let pg = super::start_postgres();
                    let s = super::Store::connect(&pg.url()).expect("connect to the test database");
                    super::$case(&s);
                }
            )*
        }
    };
}

on_both_engines!(
    workspace_names_are_unique,
    enrollment_tokens_work_once,
    refresh_rotates_and_reuse_revokes_the_family,
    access_tokens_expire_and_die_with_their_api_key,
    enrollment_tokens_expire_and_can_be_revoked,
    a_revoked_machine_loses_its_secret_and_bumps_the_generation,
    a_machine_cannot_store_another_machines_hostname,
    every_revocation_bumps_the_counter,
    cluster_tables_take_the_agreed_statements,
    scoped_keys_keep_their_scope_and_expire,
    the_audit_chain_finds_edits_removals_and_reorders,
    a_large_group_commit_chains_and_verifies,
    revokers_wait_only_for_servers_trusting_an_older_counter,
);

/// One group commit larger than a multi-row statement (records of two
/// workspaces interleaved, then outcomes of most of them, one missing):
/// every record and outcome lands, each workspace's chain verifies.
fn a_large_group_commit_chains_and_verifies(s: &Store) {
    let entries: Vec<AuditEntry> = (0..75)
        .map(|n| AuditEntry {
            workspace_id: if n % 3 == 0 { "ws_x" } else { "ws_y" }.into(),
            at_ms: 2_000 + n,
            replica: "rep_a".into(),
            actor: "key ci (cmdop_abc123)".into(),
            source: "127.0.0.1:5000".into(),
            action: "exec".into(),
            machine_id: "mach_1".into(),
            hostname: "web-1".into(),
            detail: format!("{{\"command\":\"echo {n}\"}}"),
        })
        .collect();
    let ids = s.write_audit(&entries, &[], &[]).unwrap();
    assert_eq!(ids.len(), 75);
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    let outcomes: Vec<(i64, AuditOutcome)> = ids[..40]
        .iter()
        .map(|&id| {
            (
                id,
                AuditOutcome {
                    outcome: "exit 0".into(),
                    exit_code: Some(0),
                    ..AuditOutcome::default()
                },
            )
        })
        .chain(std::iter::once((999_999, AuditOutcome::default())))
        .collect();
    // The next group: one more record, and the outcomes of earlier ones.
    let more = s.write_audit(&entries[..1], &outcomes, &[]).unwrap();
    assert_eq!(more, vec![ids[74] + 1]);
    let report = s.verify_audit(None).unwrap();
    assert_eq!(
        (report.records, report.workspaces, report.problem),
        (76, 2, None)
    );
    let (found, _) = s.audit_records(&AuditFilter::default()).unwrap();
    let with_outcome = found.iter().filter(|r| r.outcome.is_some()).count();
    assert_eq!(with_outcome, 40);
}

fn scoped_keys_keep_their_scope_and_expire(s: &Store) {
    use cmdop_proto::scope::{Operation, Operations};
    let ws = s.create_workspace("acme").unwrap();
    let key = s
        .create_key(
            &ws.id,
            &NewKey {
                label: "ci".into(),
                allow: Some(Operations::parse("exec,files:read").unwrap()),
                machines: Some("env = staging".into()),
                expires_ms: Some(now_ms() + 60_000),
            },
        )
        .unwrap();
    let (seen, expires) = s.check_api_key(&key).unwrap().expect("valid key");
    assert!(expires.is_some());
    assert!(seen.scope.allows(Operation::Exec));
    assert!(!seen.scope.allows(Operation::FilesWrite));
    assert!(seen.scope.limits_machines());
    assert!(
        seen.scope.actor().starts_with("key ci (cmdop_"),
        "{}",
        seen.scope.actor()
    );
    let pair = s
        .issue_tokens(&key, Duration::from_secs(60))
        .unwrap()
        .unwrap();
    match s.authenticate_access_token(&pair.access_token).unwrap() {
        AccessCheck::Valid(ws) => {
            let (token, key) = (ws.scope.key().unwrap(), seen.scope.key().unwrap());
            assert_eq!(token.ops, key.ops);
            assert_eq!(
                token.machines.as_ref().map(ToString::to_string),
                key.machines.as_ref().map(ToString::to_string)
            );
            assert!(ws.scope.actor().contains("via token family fam_"));
            assert!(!ws.scope.allows(Operation::FilesWrite));
        }
        other => panic!("{other:?}"),
    }
    let listed = s.list_keys(&ws.id).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].allow.as_deref(), Some("exec,files:read"));
    // Stored in the selector's own form.
    assert_eq!(listed[0].machines.as_deref(), Some("env=staging"));
    assert_eq!(listed[0].last_used_ms, None);
    s.note_key_use(&[(hash(&key), 5)]).unwrap();
    s.note_key_use(&[(hash(&key), 3)]).unwrap();
    assert_eq!(s.list_keys(&ws.id).unwrap()[0].last_used_ms, Some(5));
    // Expired: refused, and its tokens with it.
    s.write(|db| db.execute("UPDATE api_keys SET expires_ms = $1", args![now_ms() - 1]))
        .unwrap();
    assert_eq!(s.check_api_key(&key).unwrap(), None);
    assert_eq!(
        s.authenticate_access_token(&pair.access_token).unwrap(),
        AccessCheck::Invalid
    );
    assert_eq!(
        s.standing(&Credential::api_key(&key)).unwrap(),
        Standing::Expired
    );
    // Nothing in the store widens a key: creating with no operation fails.
    assert!(s
        .create_key(
            &ws.id,
            &NewKey {
                allow: Some(Operations::none()),
                ..NewKey::default()
            }
        )
        .is_err());
}

fn the_audit_chain_finds_edits_removals_and_reorders(s: &Store) {
    let entry = |ws: &str, n: i64| AuditEntry {
        workspace_id: ws.into(),
        at_ms: 1_000 + n,
        replica: "rep_a".into(),
        actor: "key ci (cmdop_abc123)".into(),
        source: "127.0.0.1:5000".into(),
        action: "exec".into(),
        machine_id: "mach_1".into(),
        hostname: "web-1".into(),
        detail: format!("{{\"command\":\"echo {n}\"}}"),
    };
    let mut ids = Vec::new();
    for n in 0..6 {
        let ws = if n % 2 == 0 { "ws_a" } else { "ws_b" };
        ids.extend(s.append_audit(&[entry(ws, n)]).unwrap());
    }
    s.finish_audit(&[(
        ids[0],
        AuditOutcome {
            outcome: "exit 0".into(),
            exit_code: Some(0),
            ..AuditOutcome::default()
        },
    )])
    .unwrap();
    let ok = s.verify_audit(None).unwrap();
    assert_eq!((ok.records, ok.workspaces, ok.problem), (6, 2, None));
    let (found, scanned_to) = s
        .audit_records(&AuditFilter {
            workspace_id: Some("ws_a".into()),
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(scanned_to, ids[4]);
    assert_eq!(found.len(), 3);
    assert_eq!(found[0].outcome.as_ref().unwrap().exit_code, Some(0));
    let sql = |q: &str| s.write(|db| db.execute(q, &[])).unwrap();
    let broken = |what: &str| {
        let report = s.verify_audit(None).unwrap();
        let problem = report.problem.expect("verify finds the edit");
        assert!(problem.what.contains(what), "{problem:?}");
        problem
    };
    // A changed command.
    sql(&format!(
        "UPDATE audit_records SET detail = '{{\"command\":\"true\"}}' WHERE id = {}",
        ids[2]
    ));
    assert_eq!(broken("was changed").record_id, Some(ids[2]));
    sql(&format!(
        "UPDATE audit_records SET detail = '{{\"command\":\"echo 2\"}}' WHERE id = {}",
        ids[2]
    ));
    assert_eq!(s.verify_audit(None).unwrap().problem, None);
    // A changed outcome.
    sql("UPDATE audit_outcomes SET exit_code = 1");
    broken("outcome");
    sql("UPDATE audit_outcomes SET exit_code = 0");
    // Two records swapped.
    sql(&format!(
        "UPDATE audit_records SET seq = 100 WHERE id = {}",
        ids[0]
    ));
    sql(&format!(
        "UPDATE audit_records SET seq = 1 WHERE id = {}",
        ids[2]
    ));
    sql(&format!(
        "UPDATE audit_records SET seq = 2 WHERE id = {}",
        ids[0]
    ));
    broken("does not follow");
    sql(&format!(
        "UPDATE audit_records SET seq = 100 WHERE id = {}",
        ids[2]
    ));
    sql(&format!(
        "UPDATE audit_records SET seq = 1 WHERE id = {}",
        ids[0]
    ));
    sql(&format!(
        "UPDATE audit_records SET seq = 2 WHERE id = {}",
        ids[2]
    ));
    assert_eq!(s.verify_audit(None).unwrap().problem, None);
    // Pruning keeps what remains verifiable.
    assert_eq!(s.prune_audit(1_002).unwrap(), 2);
    let after = s.verify_audit(None).unwrap();
    assert_eq!((after.records, after.problem), (4, None));
    // A removed record in the middle, then the newest one.
    sql(&format!("DELETE FROM audit_records WHERE id = {}", ids[3]));
    assert_eq!(broken("removed").record_id, Some(ids[5]));
    s.write(|db| db.execute("DELETE FROM audit_records WHERE workspace_id = 'ws_b'", &[]))
        .unwrap();
    let tail = broken("removed");
    assert_eq!(tail.workspace_id, "ws_b");
    sql(&format!("DELETE FROM audit_records WHERE id = {}", ids[4]));
    assert_eq!(
        s.verify_audit(Some("ws_a"))
            .unwrap()
            .problem
            .unwrap()
            .record_id,
        None
    );
}

fn every_revocation_bumps_the_counter(s: &Store) {
    let ws = s.create_workspace("acme").unwrap();
    let mut last = s.revocation_generation().unwrap();
    let mut bumped = |what: &str| {
        let now = s.revocation_generation().unwrap();
        assert_eq!(now, last + 1, "{what} bumps the revocation counter");
        last = now;
    };
    let key = s.create_api_key(&ws.id, "").unwrap();
    let pair = s
        .issue_tokens(&key, Duration::from_secs(60))
        .unwrap()
        .unwrap();
    let RefreshOutcome::Rotated(_) = s
        .refresh_tokens(&pair.refresh_token, Duration::from_secs(60))
        .unwrap()
    else {
        panic!("refresh rotates");
    };
    assert!(matches!(
        s.refresh_tokens(&pair.refresh_token, Duration::from_secs(60))
            .unwrap(),
        RefreshOutcome::ReuseDetected
    ));
    bumped("refresh-token reuse");
    assert!(s.revoke_api_key(&key).unwrap());
    bumped("an API key revocation");
    let token = s.create_enrollment_token(&ws.id).unwrap();
    assert!(s.revoke_enrollment_token(&token).unwrap());
    bumped("an enrollment-token revocation");
    s.create_enrollment_token(&ws.id).unwrap();
    assert_eq!(s.revoke_all_enrollment_tokens(&ws.id).unwrap(), 1);
    bumped("revoking all enrollment tokens");
    let token = s.create_enrollment_token(&ws.id).unwrap();
    let e = s.enroll_machine(&token, "web-1").unwrap().unwrap();
    assert!(s.revoke_machine(&e.machine_id).unwrap());
    bumped("a machine revocation");
    assert!(!s.revoke_api_key(&key).unwrap());
    assert_eq!(
        s.revocation_generation().unwrap(),
        last,
        "nothing revoked, no bump"
    );
}

/// The replicas and routes tables exist on both engines and take the
/// upsert-with-generation the cluster code uses.
fn cluster_tables_take_the_agreed_statements(s: &Store) {
    let ws = s.create_workspace("acme").unwrap();
    let token = s.create_enrollment_token(&ws.id).unwrap();
    let e = s.enroll_machine(&token, "web-1").unwrap().unwrap();
    let claim = |replica: &str, session: &str| {
        s.transaction(|db| {
            db.query_opt(
                "INSERT INTO routes (machine_id, workspace_id, replica_id, session_id, generation, connected_ms)
                 VALUES ($1, $2, $3, $4, 1, $5)
                 ON CONFLICT(machine_id) DO UPDATE SET generation = routes.generation + 1,
                     replica_id = excluded.replica_id, session_id = excluded.session_id,
                     connected_ms = excluded.connected_ms
                 RETURNING generation",
                args![&e.machine_id, &ws.id, replica, session, now_ms()],
            )?
            .expect("a generation")
            .int(0)
        })
        .unwrap()
    };
    assert_eq!(claim("r1", "s1"), 1);
    assert_eq!(
        claim("r2", "s2"),
        2,
        "a newer connection gets a newer generation"
    );
    s.write(|db| {
        db.execute(
            "INSERT INTO replicas (replica_id, peer_addr, lease_until_ms, started_ms) VALUES ($1, $2, $3, $3)",
            args!["r2", "127.0.0.1:1", now_ms()],
        )
    })
    .unwrap();
    let row = s
        .read(|db| {
            db.query_opt(
                "SELECT r.replica_id, p.peer_addr FROM routes r JOIN replicas p ON p.replica_id = r.replica_id
                 WHERE r.session_id = $1",
                args!["s2"],
            )
        })
        .unwrap()
        .expect("the route");
    assert_eq!(row.text(1).unwrap(), "127.0.0.1:1");
}

fn newer_schema_message(err: anyhow::Error) {
    let text = format!("{err:#}");
    assert!(
        text.contains("schema version 99")
            && text.contains(&format!("up to {}", migrations::LATEST))
            && text.contains("upgrade cmdop"),
        "{text}"
    );
}

#[test]
fn a_newer_sqlite_schema_is_refused() {
    let (dir, s) = store();
    drop(s);
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute("UPDATE schema_version SET version = 99", [])
        .unwrap();
    drop(conn);
    newer_schema_message(Store::open(dir.path()).err().expect("refused"));
}

#[test]
fn postgres_schema_versions_concurrency_and_outages() {
    let mut pg = start_postgres();
    // Several servers starting at once on an empty database.
    let url = pg.url();
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || Store::connect(&url).map(|_| ()))
        })
        .collect();
    for s in starts {
        s.join().unwrap().expect("concurrent start-ups all succeed");
    }
    let s = Store::connect(&url).unwrap();
    let ws = s.create_workspace("acme").unwrap();
    let key = s.create_api_key(&ws.id, "").unwrap();

    // The database goes away: calls fail as unavailable, within the deadline.
    pg.stop();
    let started = std::time::Instant::now();
    let err = s.authenticate_api_key(&key).expect_err("database is down");
    assert!(is_unavailable_error(&err), "{err:#}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(!format!("{err:#}").contains(pg.password()), "{err:#}");
    // ... and work again once it is back, with the same store.
    pg.start_again().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match s.authenticate_api_key(&key) {
            Ok(found) => {
                assert_eq!(found.map(|w| w.id), Some(ws.id.clone()));
                break;
            }
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(is_unavailable_error(&e), "{e:#}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("no recovery: {e:#}"),
        }
    }

    // A database from a newer cmdop is refused.
    drop(s);
    pg.psql(DATABASE, "UPDATE schema_version SET version = 99")
        .unwrap();
    newer_schema_message(Store::connect(&url).err().expect("refused"));
}

/// A database that hangs (the host freezes) gives UNAVAILABLE within the
/// call deadline, not a hung call, and the store recovers when it thaws.
#[test]
fn a_frozen_postgres_gives_unavailable_within_the_deadline() {
    let pg = start_postgres();
    let s = Store::connect(&pg.url()).unwrap();
    let ws = s.create_workspace("acme").unwrap();
    let key = s.create_api_key(&ws.id, "").unwrap();
    pg.freeze().unwrap();
    let started = std::time::Instant::now();
    let err = s
        .authenticate_api_key(&key)
        .expect_err("the database hangs");
    let took = started.elapsed();
    pg.thaw().unwrap();
    assert!(is_unavailable_error(&err), "{err:#}");
    assert!(
        took < engine::postgres::CALL_TIMEOUT + Duration::from_secs(3),
        "{took:?}"
    );
    eprintln!("a frozen database answered UNAVAILABLE after {took:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match s.authenticate_api_key(&key) {
            Ok(found) => {
                assert_eq!(found.map(|w| w.id), Some(ws.id));
                break;
            }
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(is_unavailable_error(&e), "{e:#}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("no recovery after the thaw: {e:#}"),
        }
    }
}

#[test]
fn an_unreachable_postgres_fails_fast_without_the_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = std::time::Instant::now();
    let err = Store::connect(&format!("postgres://cmdop:hunter2@127.0.0.1:{port}/cmdop"))
        .err()
        .expect("nothing listens there");
    let text = format!("{err:#}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        text.contains(&format!("postgres://cmdop:***@127.0.0.1:{port}/cmdop")),
        "{text}"
    );
    assert!(text.contains("check that PostgreSQL is running"), "{text}");
}

fn workspace_names_are_unique(s: &Store) {
    let ws = s.create_workspace("acme").unwrap();
    assert!(s.create_workspace("acme").is_err());
    assert_eq!(s.workspace_by_name("acme").unwrap(), Some(ws));
    assert_eq!(s.workspace_by_name("other").unwrap(), None);
}

#[test]
fn api_keys_are_stored_hashed_and_revocable_by_prefix() {
    let (dir, s) = store();
    let ws = s.create_workspace("acme").unwrap();
    let key = s.create_api_key(&ws.id, "ci").unwrap();
    assert!(key.starts_with("cmdop_") && key.len() == 38);
    assert_eq!(
        s.authenticate_api_key(&key).unwrap().map(|w| w.id),
        Some(ws.id.clone())
    );
    assert_eq!(s.authenticate_api_key("cmdop_nope").unwrap(), None);

    // The plaintext key is nowhere in the database files.
    drop(s);
    let mut raw = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        raw.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    assert!(!raw.windows(key.len()).any(|w| w == key.as_bytes()));

    let s = Store::open(dir.path()).unwrap();
    assert_eq!(
        s.authenticate_api_key(&key).unwrap().map(|w| w.id),
        Some(ws.id),
        "keys survive a reopen"
    );
    assert!(
        !s.revoke_api_key("cmdop_").unwrap(),
        "too short a prefix revokes nothing"
    );
    assert!(s.revoke_api_key(&api_key_prefix(&key)).unwrap());
    assert_eq!(s.authenticate_api_key(&key).unwrap(), None);
    assert!(!s.revoke_api_key(&key).unwrap(), "already revoked");
}

fn enrollment_tokens_work_once(s: &Store) {
    let ws = s.create_workspace("acme").unwrap();
    let token = s.create_enrollment_token(&ws.id).unwrap();
    assert!(token.starts_with("cmdenr_"));
    let e = s
        .enroll_machine(&token, "web-1")
        .unwrap()
        .expect("first use works");
    assert!(e.machine_id.starts_with("mach_") && e.machine_id.len() == 21);
    assert!(e.agent_secret.starts_with("cmdag_"));
    assert_eq!(e.workspace, ws);
    assert!(
        s.enroll_machine(&token, "web-2").unwrap().is_none(),
        "second use fails"
    );

    let m = s
        .machine_by_secret(&e.agent_secret)
        .unwrap()
        .expect("secret maps to machine");
    assert_eq!(m.machine_id, e.machine_id);
    assert_eq!(m.hostname, "web-1");
    s.touch_machine(&m.machine_id, "web-1b").unwrap();
    let listed = s.list_machines(&ws.id).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].hostname, "web-1b");
    assert!(s.machine_by_secret("cmdag_wrong").unwrap().is_none());

    // Last-seen times written in batches only ever move forward.
    let touched = s.list_machines(&ws.id).unwrap()[0].last_seen_unix_ms;
    let later = touched + 60_000;
    s.record_seen(&[
        (m.machine_id.clone(), later),
        ("mach_unknown".into(), later),
    ])
    .unwrap();
    assert_eq!(s.list_machines(&ws.id).unwrap()[0].last_seen_unix_ms, later);
    s.record_seen(&[(m.machine_id.clone(), touched)]).unwrap();
    assert_eq!(
        s.list_machines(&ws.id).unwrap()[0].last_seen_unix_ms,
        later,
        "an older time does not move last_seen back"
    );
}

fn refresh_rotates_and_reuse_revokes_the_family(s: &Store) {
    let ws = s.create_workspace("acme").unwrap();
    let key = s.create_api_key(&ws.id, "").unwrap();
    let ttl = Duration::from_secs(60);
    assert!(s.issue_tokens("cmdop_wrong", ttl).unwrap().is_none());
    let first = s.issue_tokens(&key, ttl).unwrap().unwrap();
    assert!(first.access_token.starts_with("cmdat_"));
    assert!(first.refresh_token.starts_with("cmdrt_"));
    assert!(matches!(
        s.authenticate_access_token(&first.access_token).unwrap(),
        AccessCheck::Valid(w) if w.id == ws.id
    ));

    let RefreshOutcome::Rotated(second) = s.refresh_tokens(&first.refresh_token, ttl).unwrap()
    else {
        panic!("first refresh must rotate");
    };
    assert!(matches!(
        s.authenticate_access_token(&second.access_token).unwrap(),
        AccessCheck::Valid(w) if w.id == ws.id
    ));

    assert!(matches!(
        s.refresh_tokens(&first.refresh_token, ttl).unwrap(),
        RefreshOutcome::ReuseDetected
    ));
    assert_eq!(
        s.authenticate_access_token(&second.access_token).unwrap(),
        AccessCheck::Invalid
    );
    assert_eq!(
        s.authenticate_access_token(&first.access_token).unwrap(),
        AccessCheck::Invalid
    );
    assert!(matches!(
        s.refresh_tokens(&second.refresh_token, ttl).unwrap(),
        RefreshOutcome::Invalid
    ));
    assert!(matches!(
        s.refresh_tokens("cmdrt_unknown", ttl).unwrap(),
        RefreshOutcome::Invalid
    ));
}

fn access_tokens_expire_and_die_with_their_api_key(s: &Store) {
    let ws = s.create_workspace("acme").unwrap();
    let key = s.create_api_key(&ws.id, "").unwrap();
    let short = s
        .issue_tokens(&key, Duration::from_secs(1))
        .unwrap()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        s.authenticate_access_token(&short.access_token).unwrap(),
        AccessCheck::Expired
    );

    let long = s
        .issue_tokens(&key, Duration::from_secs(60))
        .unwrap()
        .unwrap();
    assert!(s.revoke_api_key(&key).unwrap());
    assert_eq!(
        s.authenticate_access_token(&long.access_token).unwrap(),
        AccessCheck::Invalid
    );
}

/// The admin CLI writes to the same database from its own process. A
/// read-then-write transaction here must wait for such a writer, not fail
/// because the data it read went stale meanwhile.
#[test]
fn enrollment_waits_for_a_writer_in_another_process() {
    let (dir, s) = store();
    let ws = s.create_workspace("acme").unwrap();
    let token = s.create_enrollment_token(&ws.id).unwrap();
    // Another connection (as the admin CLI has) holds the write lock.
    let other = Connection::open(dir.path().join(DB_FILE)).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    other
        .execute(
            "INSERT INTO workspaces (id, name, created_ms) VALUES ('ws_other', 'other', 0)",
            [],
        )
        .unwrap();
    let enrolling = std::thread::spawn(move || s.enroll_machine(&token, "web-1"));
    std::thread::sleep(Duration::from_millis(300));
    other.execute_batch("COMMIT").unwrap();
    let enrolled = enrolling
        .join()
        .unwrap()
        .expect("enrollment waits instead of failing");
    assert!(enrolled.is_some(), "the token still works");
}

fn enrollment_tokens_expire_and_can_be_revoked(s: &Store) {
    let ws = s.create_workspace("acme").unwrap();
    let short = s
        .create_enrollment_token_for(&ws.id, Duration::from_secs(1))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert!(
        s.enroll_machine(&short, "web-1").unwrap().is_none(),
        "an expired token is refused"
    );

    let revoked = s.create_enrollment_token(&ws.id).unwrap();
    assert!(s.revoke_enrollment_token(&revoked).unwrap());
    assert!(!s.revoke_enrollment_token(&revoked).unwrap(), "only once");
    assert!(s.enroll_machine(&revoked, "web-1").unwrap().is_none());

    let a = s.create_enrollment_token(&ws.id).unwrap();
    let b = s.create_enrollment_token(&ws.id).unwrap();
    assert_eq!(s.revoke_all_enrollment_tokens(&ws.id).unwrap(), 2);
    assert!(s.enroll_machine(&a, "web-1").unwrap().is_none());
    assert!(s.enroll_machine(&b, "web-1").unwrap().is_none());

    let fresh = s.create_enrollment_token(&ws.id).unwrap();
    assert!(s.enroll_machine(&fresh, "web-1").unwrap().is_some());
}

fn a_revoked_machine_loses_its_secret_and_bumps_the_generation(s: &Store) {
    let ws = s.create_workspace("acme").unwrap();
    let token = s.create_enrollment_token(&ws.id).unwrap();
    let e = s.enroll_machine(&token, "web-1").unwrap().unwrap();
    let before = s.revocation_generation().unwrap();
    assert!(s.revoke_machine(&e.machine_id).unwrap());
    assert!(!s.revoke_machine(&e.machine_id).unwrap(), "only once");
    assert!(!s.revoke_machine("mach_unknown").unwrap());
    assert_eq!(s.revocation_generation().unwrap(), before + 1);
    assert!(s.machine_by_secret(&e.agent_secret).unwrap().is_none());
    assert!(s.list_machines(&ws.id).unwrap().is_empty());
    assert_eq!(s.revoked_machines().unwrap(), vec![e.machine_id]);
}

fn a_machine_cannot_store_another_machines_hostname(s: &Store) {
    let ws = s.create_workspace("acme").unwrap();
    let enroll = |host: &str| {
        let t = s.create_enrollment_token(&ws.id).unwrap();
        s.enroll_machine(&t, host).unwrap().unwrap()
    };
    let victim = enroll("db-1");
    let squatter = enroll("laptop");
    assert_eq!(
        s.touch_machine(&squatter.machine_id, "DB-1").unwrap(),
        HostnameUpdate::Taken {
            by: victim.machine_id.clone(),
            kept: "laptop".into()
        }
    );
    assert_eq!(
        s.touch_machine(&squatter.machine_id, "laptop-2").unwrap(),
        HostnameUpdate::Renamed {
            from: "laptop".into()
        }
    );
    assert_eq!(
        s.touch_machine(&squatter.machine_id, "").unwrap(),
        HostnameUpdate::Unchanged
    );
    let mut names: Vec<_> = s
        .list_machines(&ws.id)
        .unwrap()
        .into_iter()
        .map(|m| m.hostname)
        .collect();
    names.sort();
    assert_eq!(names, ["db-1", "laptop-2"]);
}

#[test]
fn data_dir_and_database_are_private_even_when_they_were_not() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("state");
    drop(Store::open(&data).unwrap());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join(DB_FILE)), 0o600);

    // A database created by an older version with open modes is fixed.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(data.join(DB_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
    let s = Store::open(&data).unwrap();
    s.create_workspace("acme").unwrap();
    assert_eq!(mode(&data), 0o700);
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
}

#[test]
fn an_old_database_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    {
        // The layout before expiry and revocation existed.
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute_batch(
            "CREATE TABLE workspaces (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_ms INTEGER NOT NULL);
             CREATE TABLE enrollment_tokens (hash TEXT PRIMARY KEY, workspace_id TEXT NOT NULL, created_ms INTEGER NOT NULL, used_ms INTEGER);
             CREATE TABLE machines (machine_id TEXT PRIMARY KEY, workspace_id TEXT NOT NULL, hostname TEXT NOT NULL,
                 secret_hash TEXT NOT NULL UNIQUE, enrolled_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL);
             INSERT INTO workspaces VALUES ('ws_1', 'acme', 0);",
        )
        .unwrap();
        let now = now_ms();
        conn.execute(
            "INSERT INTO enrollment_tokens VALUES (?1, 'ws_1', ?2, NULL)",
            params![hash("cmdenr_recent"), now - 1000],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO enrollment_tokens VALUES (?1, 'ws_1', ?2, NULL)",
            params![hash("cmdenr_old"), now - 25 * 3600 * 1000],
        )
        .unwrap();
    }
    let s = Store::open(dir.path()).unwrap();
    {
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let version: i64 = conn
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, migrations::LATEST);
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('replicas', 'routes')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 2, "the cluster tables exist");
    }
    assert!(
        s.enroll_machine("cmdenr_old", "a").unwrap().is_none(),
        "an old token gets the default lifetime from its creation"
    );
    let e = s.enroll_machine("cmdenr_recent", "b").unwrap().unwrap();
    assert!(s.revoke_machine(&e.machine_id).unwrap());
    drop(s);
    Store::open(dir.path()).expect("opening a migrated database again is a no-op");
}

/// The acknowledgements of revocations (`acks.rs`).
fn revokers_wait_only_for_servers_trusting_an_older_counter(store: &Store) {
    let g0 = store.revocation_generation().unwrap();
    assert_eq!(
        store.ack_revocations("a", g0, now_ms() + 60_000).unwrap(),
        g0
    );
    // A server whose trust ran out long ago is not waited for.
    store.ack_revocations("dead", g0, 1).unwrap();
    // A server whose trust runs out soon is waited for until then.
    store
        .ack_revocations("stuck", g0, now_ms() - ms(acks::CLOCK_MARGIN) + 3000)
        .unwrap();
    let ws = store.create_workspace("w").unwrap();
    let key = store.create_api_key(&ws.id, "k").unwrap();
    assert!(store.revoke_api_key(&key).unwrap());
    let g1 = store.revocation_generation().unwrap();
    assert!(g1 > g0);
    // "a" has not applied g1: the wait gives up at its bound.
    let r = store
        .wait_for_revocation_acks(g1, Duration::from_millis(50))
        .unwrap();
    assert_eq!(r.pending, vec!["a".to_string(), "stuck".to_string()]);
    assert!(r.acknowledged.is_empty());
    // "a" applies it; the wait goes on until "stuck" lapses.
    assert_eq!(
        store.ack_revocations("a", g1, now_ms() + 60_000).unwrap(),
        g1
    );
    let r = store
        .wait_for_revocation_acks(g1, Duration::from_secs(10))
        .unwrap();
    assert_eq!(r.acknowledged, vec!["a".to_string()]);
    assert_eq!(r.lapsed, vec!["stuck".to_string()]);
    assert!(r.pending.is_empty());
    assert!(r.waited < Duration::from_secs(10));
    store.drop_revocation_ack("a").unwrap();
    let r = store
        .wait_for_revocation_acks(g1, Duration::from_secs(10))
        .unwrap();
    assert!(r.acknowledged.is_empty() && r.pending.is_empty());
}
