//! `cmdop-bench-cluster`: the cluster benchmarks of issue 11 — a private
//! PostgreSQL, three `cmdop server` replicas sharing it (forwarding to each
//! other over their peer ports) and one real agent that knows all three,
//! measured through the Rust client core.
//!
//! ```text
//! cmdop-bench-cluster --cmdop PATH --hostname NAME
//!     [--latency-runs N] [--warmup N] [--stream-bytes N] [--stream-runs N]
//!     [--failover-runs N] [--failover-steady-ms N] [--db-runs N]
//!     [--agents N --agents-bin PATH [--agents-lat-runs N]]
//!     [--timeout-ms N] [--log-level L] [--keep-logs DIR] [--store postgres|sqlite]
//! ```
//!
//! `--store sqlite` (replicas sharing one SQLite data directory instead of
//! PostgreSQL) is for trying the harness on builds without PostgreSQL
//! support; the database case needs PostgreSQL and is skipped then.
//!
//! Prints one JSON record per measurement on stdout (format in
//! `bench/c/bench_common.h`), progress on stderr:
//!
//! - `cluster-latency`: `execute("true")` with the client on the agent's
//!   replica (`same-replica`) and on another one (`cross-replica`),
//!   interleaved call by call;
//! - `cluster-stream`: `head -c N /dev/zero` through a cross-replica
//!   client, bytes counted in the streaming callback;
//! - `cluster-failover`: SIGKILL of the replica holding the agent, time
//!   until an execute on the machine succeeds through a survivor; the killed
//!   replica is restarted (same arguments) before the next run, which starts
//!   `--failover-steady-ms` after the recovery (default 12 s: the agent
//!   resets its reconnect backoff once a link stayed up 10 s); then
//!   (`sigkill-twice-3s`, half as many runs) the holder is killed, and 3 s
//!   later the replica the agent moved to, each recovery timed;
//! - `cluster-db`: database statements per execute on the hot path
//!   (`pg_stat_statements`, or transactions from `pg_stat_database` when the
//!   extension is not available), minus the background rate of an idle
//!   window of the same length, with the credential checks and the audit
//!   trail's statements also counted apart;
//! - `cluster-revoke` (with the database case): a key cached on every
//!   replica is revoked with `cmdop admin revoke-key` while each replica
//!   runs calls with it; the time from revoke-key's start to each
//!   replica's first refusal, and revoke-key's own time;
//! - `cluster-rolling` (with `--rolling-runs N`): each replica in turn (the
//!   one holding the agent first) gets SIGTERM and starts again before the
//!   next, while one client per replica (the whole list, that one first)
//!   runs `execute("true")` in a loop: calls failed (goal 0) and the
//!   latency of every call during the restarts;
//! - `cluster-agents` (with `--agents N`): `cmdop-bench-agents` connects N
//!   simulated idle agents spread over the replicas; the replicas' resident
//!   memory before and after (summed), and cross-replica `execute("true")`
//!   without (`exec-1`) and with them (`exec-n`); then SIGKILL of a replica
//!   that holds neither the agent nor the cross-replica client, and the
//!   time until its simulated agents are all registered on the survivors
//!   (`sigkill-replica`, with how they spread); it is started again after.
//!
//! A part that cannot run prints a record with `"skipped"` and the run exits
//! with status 1; status 2 means the cluster itself did not start.
//!
//! This file runs the cases in order and sets the exit status. The command
//! line is read in `args`, the processes are started in `setup`, the
//! database and its counters are in `database`, what all cases share is in
//! `record`, and each case has a module of its own (`latency`, `stream`,
//! `failover`, `db_queries`, `revoke`, `idle_agents`).

mod args;
mod database;
mod db_queries;
mod failover;
mod failover_twice;
mod idle_agents;
mod latency;
mod record;
mod revoke;
mod rolling;
mod setup;
mod stream;

use std::path::{Path, PathBuf};

use anyhow::Context;
use cmdop_localpg::LocalPostgres;

use crate::{
    args::{parse_args, Args},
    database::{enable_statement_stats, Db, DbCounter},
    record::emit_skip,
    setup::start_cluster,
};

async fn run(args: Args, dir: PathBuf, db: Db, counter: DbCounter) -> anyhow::Result<bool> {
    let mut setup = start_cluster(&args, &dir, db).await?;
    eprintln!(
        "cmdop-bench-cluster: cluster up: replicas {}, agent '{}' on {}",
        setup
            .cluster
            .replicas
            .iter()
            .map(|r| format!("{}={}", r.id, r.listen))
            .collect::<Vec<_>>()
            .join(" "),
        args.hostname,
        setup
            .cluster
            .live_route(&setup.machine_id)
            .await
            .map(|i| setup.cluster.replicas[i].id.clone())
            .unwrap_or_else(|e| format!("? ({e:#})"))
    );
    let mut all_ran = true;
    let mut part = |name: &str, labels: &[(&str, &str, &str)], r: anyhow::Result<()>| {
        if let Err(e) = r {
            eprintln!("cmdop-bench-cluster: {name} failed: {e:#}");
            for (case, subject, label) in labels {
                emit_skip(case, subject, label, &format!("{e:#}"));
            }
            all_ran = false;
        }
    };
    if args.latency_runs > 0 {
        let r = latency::latency(&args, &setup).await;
        part(
            "latency",
            &[
                (
                    "cluster-latency",
                    "same-replica",
                    "execute(\"true\"), same replica",
                ),
                (
                    "cluster-latency",
                    "cross-replica",
                    "execute(\"true\"), cross-replica",
                ),
            ],
            r,
        );
    }
    if args.db_runs > 0 {
        let r = db_queries::db_queries(&args, &setup, &counter).await;
        part(
            "database queries",
            &[("cluster-db", "cross-replica", "database work per execute")],
            r,
        );
        let r = revoke::revoke(&args, &setup).await;
        part(
            "revocation",
            &[(
                "cluster-revoke",
                "revoke-to-refusal",
                "revoke-key start to the first refused call, each replica",
            )],
            r,
        );
    }
    if args.stream_runs > 0 {
        let r = stream::stream(&args, &setup).await;
        part(
            "stream",
            &[
                (
                    "cluster-stream",
                    "same-replica",
                    "Rust client, replica holding the agent",
                ),
                (
                    "cluster-stream",
                    "cross-replica",
                    "Rust client, cross-replica",
                ),
            ],
            r,
        );
    }
    if args.agents > 0 {
        let r = idle_agents::idle_agents(&args, &mut setup).await;
        part(
            "idle agents",
            &[(
                "cluster-agents",
                "idle-agents",
                "simulated idle agents over the replicas",
            )],
            r,
        );
    }
    if args.rolling_runs > 0 {
        let r = rolling::rolling(&args, &mut setup).await;
        part(
            "rolling restart",
            &[(
                "cluster-rolling",
                "sigterm-each-replica",
                "rolling restart (SIGTERM of each replica in turn)",
            )],
            r,
        );
    }
    if args.failover_runs > 0 {
        let r = failover::failover(&args, &mut setup).await;
        part(
            "failover",
            &[(
                "cluster-failover",
                "sigkill-agent-replica",
                "SIGKILL of the agent's replica",
            )],
            r,
        );
        let r = failover_twice::failover_twice(&args, &mut setup).await;
        part(
            "failover twice",
            &[(
                "cluster-failover",
                "sigkill-twice-3s",
                "two SIGKILLs 3 s apart",
            )],
            r,
        );
    }
    setup.cluster.stop().await;
    Ok(all_ran)
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cmdop-bench-cluster: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let dir = match tempfile_dir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cmdop-bench-cluster: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let (pg, db, counter) = if args.sqlite {
        let data = dir.path().join("data");
        (None, Db::Sqlite(data), DbCounter::Transactions)
    } else {
        // Started on the main thread, which lives as long as the program:
        // the server dies with it even on SIGKILL.
        eprintln!("cmdop-bench-cluster: starting PostgreSQL from the system's packages");
        let mut pg = match LocalPostgres::start() {
            Ok(pg) => pg,
            Err(e) => {
                eprintln!("cmdop-bench-cluster: cannot start PostgreSQL: {e:#}");
                return std::process::ExitCode::from(2);
            }
        };
        let counter = match enable_statement_stats(&mut pg) {
            Ok(()) => DbCounter::Statements,
            Err(why) => {
                eprintln!(
                    "cmdop-bench-cluster: counting transactions instead of statements: {why}"
                );
                if let Err(e) = pg.start_again() {
                    eprintln!("cmdop-bench-cluster: PostgreSQL does not start again: {e:#}");
                    return std::process::ExitCode::from(2);
                }
                DbCounter::Transactions
            }
        };
        let url = pg.url();
        (Some(pg), Db::Postgres(url), counter)
    };
    let keep_logs = args.keep_logs.clone();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
        .and_then(|rt| {
            rt.block_on(async {
                // SIGTERM/SIGINT (bench/run's timeout): stop what was
                // started (the children die with their handles), remove
                // the directories.
                tokio::select! {
                    r = run(args, dir.path().to_path_buf(), db, counter) => r,
                    why = shutdown_signal() => Err(anyhow::anyhow!("stopped by {why}")),
                }
            })
        });
    if let Some(to) = keep_logs {
        let _ = std::fs::create_dir_all(&to);
        for entry in std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".log") {
                let _ = std::fs::copy(entry.path(), to.join(name));
            }
        }
    }
    drop(pg);
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cmdop-bench-cluster: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Resolves on SIGTERM or SIGINT, naming it.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

fn tempfile_dir() -> anyhow::Result<TempDir> {
    let base = std::env::temp_dir().join(format!("cmdop-bench-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    Ok(TempDir(base))
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
