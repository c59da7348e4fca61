//! The `cluster-db` case: database statements (or transactions) per
//! execute on the hot path, minus the background of an idle window.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{
    args::Args,
    database::{db_delta, Db, DbCounter},
    record::{emit, round_us, timed_true, Samples},
    setup::{open_client, Setup, REPLICAS},
};

/// Shortest idle window for the database background rate.
const MIN_IDLE_WINDOW: Duration = Duration::from_secs(2);

/// Database work per execute: N executes, then an idle window of the same
/// length for the background (leases, heartbeats).
pub async fn db_queries(args: &Args, setup: &Setup, counter: &DbCounter) -> anyhow::Result<()> {
    let c = &setup.cluster;
    let Db::Postgres(url) = c.db.clone() else {
        bail!("needs PostgreSQL (run without --store sqlite)");
    };
    let home = c.live_route(&setup.machine_id).await?;
    for (subject, label, at) in [
        (
            "cross-replica",
            "database work per execute, client on another replica",
            (home + 1) % REPLICAS,
        ),
        (
            "same-replica",
            "database work per execute, client on the agent's replica",
            home,
        ),
    ] {
        let (client, _) = open_client(c, at, &setup.api_key, &args.hostname).await?;
        // The route is known after these.
        for _ in 0..args.warmup.max(3) {
            let _ = timed_true(&client, args.timeout).await;
        }
        let snap = |u: String, counter: DbCounter| async move {
            tokio::task::spawn_blocking(move || counter.snapshot(&u))
                .await
                .context("snapshot task failed")?
        };
        let s0 = snap(url.clone(), counter.clone()).await?;
        let mut s = Samples::new();
        let t0 = Instant::now();
        for _ in 0..args.db_runs {
            s.add(timed_true(&client, args.timeout).await);
        }
        let window = t0.elapsed();
        let s1 = snap(url.clone(), counter.clone()).await?;
        let idle = window.max(MIN_IDLE_WINDOW);
        tokio::time::sleep(idle).await;
        let s2 = snap(url.clone(), counter.clone()).await?;
        client.close().await;
        let (busy, top) = db_delta(&s0, &s1);
        let (background, idle_top) = db_delta(&s1, &s2);
        // Statements by kind: credential checks (the hot path's own), the
        // audit trail's batched writes (one record per execute), the rest.
        let kinds = |top: &[(u64, String)]| {
            let (mut credential, mut audit) = (0u64, 0u64);
            for (n, q) in top {
                if is_credential_check(q) {
                    credential += n;
                } else if q.contains("audit_") {
                    audit += n;
                }
            }
            (credential, audit)
        };
        let (credential, audit) = kinds(&top);
        let (idle_credential, _) = kinds(&idle_top);
        // The background scaled to the execute window.
        let background_in_window = background as f64 * window.as_secs_f64() / idle.as_secs_f64();
        let per_execute = (busy as f64 - background_in_window) / args.db_runs as f64;
        let unit = match counter {
            DbCounter::Statements => "statements (pg_stat_statements)",
            DbCounter::Transactions => "transactions (pg_stat_database)",
        };
        eprintln!(
            "cmdop-bench-cluster: db {subject}: {busy} {unit} during {} executes ({:.2} s), \
             {background} in {:.2} s idle → {per_execute:.3} per execute ({credential} credential \
             checks, {audit} audit-trail statements)",
            args.db_runs,
            window.as_secs_f64(),
            idle.as_secs_f64()
        );
        let top: Vec<_> = top
            .into_iter()
            .take(5)
            .map(|(n, q)| serde_json::json!({"calls": n, "query": q}))
            .collect();
        emit(serde_json::json!({
            "case": "cluster-db",
            "subject": subject,
            "label": label,
            "runs": args.db_runs,
            "concurrency": 1,
            "wall_s": window.as_secs_f64(),
            "ops_per_s": if window.as_secs_f64() > 0.0 { s.us.len() as f64 / window.as_secs_f64() } else { 0.0 },
            "errors": s.errors,
            "bytes": 0,
            "db": {
                "unit": unit,
                "during_executes": busy,
                "idle_window_s": idle.as_secs_f64(),
                "idle": background,
                "background_in_window": background_in_window,
                "per_execute": per_execute,
                "credential_per_execute": credential as f64 / args.db_runs as f64,
                "credential_idle": idle_credential,
                "audit_per_execute": audit as f64 / args.db_runs as f64,
                "top_during_executes": top,
            },
            "samples_us": round_us(&s.us),
        }));
    }
    Ok(())
}

/// The statements that check a credential: an API key, an access token, an
/// agent secret.
fn is_credential_check(query: &str) -> bool {
    query.contains("FROM api_keys k JOIN workspaces")
        || query.contains("FROM access_tokens a")
        || (query.contains("FROM machines") && query.contains("secret_hash ="))
}
