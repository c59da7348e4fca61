//! `cmdop-bench-agents`: many idle agents in one process, each speaking the
//! real agent protocol over its own connection, to measure what an idle agent
//! costs the control plane and whether `execute` slows down with many of them.
//!
//! ```text
//! cmdop-bench-agents --server http://HOST:PORT[,http://HOST:PORT…] \
//!     (--data-dir DIR | CMDOP_DATABASE_URL=postgres://… in the environment) \
//!     --workspace NAME --agents N \
//!     [--parallel N] [--per-source N] [--control-plane-pid PID]… [--ready-file F]
//!     [--restart-file F | --failover-file F] [--label TEXT] [--case NAME]
//! ```
//!
//! Each agent is enrolled with its own one-time token (minted straight into
//! the control plane's store — SQLite at `--data-dir` or a cluster's
//! PostgreSQL at `CMDOP_DATABASE_URL` — as `cmdop admin enroll-token` would, but
//! without a process per token), then opens
//! `ConnectTerminal`, registers, waits for `start_session` and stays
//! connected, sending a heartbeat every 25 s like the real agent. It serves no
//! commands (no terminal, no `AgentLink.Channel`): idle agents. With several
//! servers (a cluster's replicas) agent `i` connects to server `i mod n` first.
//! A loopback address pair has only ~28,000 ephemeral ports, so agents bind
//! their connections to several source addresses, 127.R.0.1, 127.R.0.2, …
//! (`R` differs between runs), at most `--per-source` (10,000) agents each.
//!
//! An agent whose connection ends reconnects the way the real agent does:
//! the same backoff with jitter, reset after a connection that stayed up,
//! and the same probing wait (`cmdop_proto::backoff::AGENT_RECONNECT`,
//! `cmdop_agent::connection::wait_before_retry`), then registers again with
//! its agent secret.
//!
//! Once all agents are connected it prints one JSON record (format in
//! `bench/c/bench_common.h`; samples are the per-agent connect times) with the
//! control planes' resident memory before and after (summed over every
//! `--control-plane-pid`), writes `--ready-file`,
//! and holds the connections until SIGTERM or SIGINT.
//!
//! With `--restart-file F` it then measures a control-plane restart: the
//! harness stops the control plane, starts it again on the same port and
//! data directory and, once it listens, writes `F` as `PID EPOCH_SECONDS`
//! (the new control plane's pid and when it was ready). The simulator waits
//! until every agent has registered again, prints a second record (subject
//! `reconnect`: samples are each agent's time from the restart until it was
//! registered again, plus registrations and attempts per second), and
//! writes `F.done`.
//!
//! With `--failover-file F` (several servers) it measures the loss of one of
//! them instead: the harness kills server `I` (its place in `--server`) and
//! writes `F` as `I EPOCH_SECONDS` (when it was killed). The simulator waits
//! until no agent is left on it and every agent is registered again, each
//! having picked its next server as the real agent does, prints a record
//! (subject `failover`: samples are each moved agent's time from the kill
//! until it was registered on a survivor; `moved_to` counts them per
//! server), and writes `F.done`.
//!
//! This file starts the agents, waits for them and prints the first record.
//! The command line is read in `args`, the tokens are minted in `tokens`,
//! one simulated agent is `agent`, the restart measurement is `restart`,
//! the loss of one server is `failover`,
//! and the control planes' memory is read in `rss`.

mod agent;
mod args;
mod failover;
mod harness_file;
mod restart;
mod rss;
mod tokens;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::sync::{mpsc, watch, Semaphore};
use tonic::transport::Endpoint;

use crate::{
    agent::{run_agent, source_address, Route, Routes, Serving, Stats},
    args::{parse_args, Args},
    failover::measure_failover,
    restart::measure_restart,
    rss::{vm_rss_kb, SETTLE},
    tokens::mint_tokens,
};

/// How long all agents together may take to connect.
const CONNECT_ALL_TIMEOUT: Duration = Duration::from_secs(600);

async fn run(args: Args) -> anyhow::Result<bool> {
    let data_dir = args.data_dir.clone();
    let database = args.database.clone();
    let workspace = args.workspace.clone();
    let n = args.agents;
    let tokens = tokio::task::spawn_blocking(move || {
        mint_tokens(&data_dir, database.as_deref(), &workspace, n)
    })
    .await
    .context("token minting task failed")??;

    // One enrollment channel per server, and one endpoint per server and
    // source address.
    let sources = n.div_ceil(args.per_source);
    let run = 1 + (std::process::id() % 254) as u8;
    let mut servers = Vec::with_capacity(args.servers.len());
    for server in &args.servers {
        let endpoint = Endpoint::from_shared(server.clone())
            .with_context(|| format!("invalid server URL '{server}'; expected http://host:port"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10));
        let enroll_channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach the control plane at {server}"))?;
        let probe_target = cmdop_agent::probe::target(endpoint.uri());
        let routes: Vec<Route> = (0..sources)
            .map(|s| Route {
                endpoint: endpoint.clone().local_address(Some(source_address(run, s))),
                enroll_channel: enroll_channel.clone(),
                probe_target: probe_target.clone(),
            })
            .collect();
        servers.push(routes);
    }
    let servers: Routes = Arc::new(servers);

    let rss_before = vm_rss_kb(&args.control_plane_pids);
    let stats = Arc::new(Stats::new(servers.len()));
    let serving: Serving = args.serve_exec.clone().map(Arc::new);
    let (ready_tx, mut ready_rx) = mpsc::channel(args.parallel.max(16));
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(args.parallel));
    let started = Instant::now();
    let pid = std::process::id();

    // Start agents at most `parallel` at a time; each frees its slot once it
    // is connected (or has failed).
    let spawner = {
        let slots = slots.clone();
        let stop_rx = stop_rx.clone();
        let stats = stats.clone();
        let serving = serving.clone();
        tokio::spawn(async move {
            let mut handles = Vec::with_capacity(tokens.len());
            for (i, token) in tokens.into_iter().enumerate() {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let (agent_ready, mut agent_ready_rx) = mpsc::channel(1);
                let ready_tx = ready_tx.clone();
                tokio::spawn(async move {
                    if let Some(outcome) = agent_ready_rx.recv().await {
                        let _ = ready_tx.send(outcome).await;
                    }
                    drop(permit);
                });
                let home = i % servers.len();
                let source = (i / servers.len()) % sources;
                handles.push(tokio::spawn(run_agent(
                    servers.clone(),
                    home,
                    source,
                    token,
                    format!("sim-{pid}-{i}"),
                    agent_ready,
                    stop_rx.clone(),
                    stats.clone(),
                    serving.clone(),
                )));
            }
            handles
        })
    };

    let mut samples = Vec::with_capacity(n);
    let mut errors = 0usize;
    let deadline = tokio::time::Instant::now() + CONNECT_ALL_TIMEOUT;
    while samples.len() + errors < n {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(Ok(took))) => samples.push(took.as_secs_f64() * 1e6),
            Ok(Some(Err(why))) => {
                if errors == 0 {
                    eprintln!("cmdop-bench-agents: an agent failed to connect: {why}");
                }
                errors += 1;
            }
            Ok(None) => break,
            Err(_) => {
                eprintln!(
                    "cmdop-bench-agents: only {} of {n} agents connected within {} s",
                    samples.len(),
                    CONNECT_ALL_TIMEOUT.as_secs()
                );
                errors = n - samples.len();
                break;
            }
        }
    }
    let wall = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    let rss_after = vm_rss_kb(&args.control_plane_pids);

    let record = serde_json::json!({
        "case": args.case,
        "subject": "idle-agents",
        "label": args.label,
        "runs": n,
        "concurrency": args.parallel,
        "wall_s": wall.as_secs_f64(),
        "ops_per_s": if wall.as_secs_f64() > 0.0 { samples.len() as f64 / wall.as_secs_f64() } else { 0.0 },
        "errors": errors,
        "bytes": 0,
        "agents": samples.len(),
        "servers": args.servers.len(),
        "source_addresses": sources,
        "rss_kb": { "controlplane_before": rss_before, "controlplane_after": rss_after },
        "samples_us": samples.iter().map(|v| (v * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
    });
    println!("{record}");
    if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{}\n", samples.len()))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }

    if let Some(path) = &args.failover_file {
        tokio::select! {
            measured = measure_failover(&args, path, &stats) => measured?,
            () = shutdown_signal() => return Ok(false),
        }
    }

    if let Some(path) = &args.restart_file {
        tokio::select! {
            measured = measure_restart(&args, path, samples.len(), &stats) => measured?,
            () = shutdown_signal() => return Ok(false),
        }
    }

    shutdown_signal().await;
    let _ = stop_tx.send(true);
    if let Ok(handles) = spawner.await {
        for h in handles {
            let _ = h.await;
        }
    }
    Ok(errors < n)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> std::process::ExitCode {
    let result = parse_args().and_then(|args| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the tokio runtime")?;
        rt.block_on(run(args))
    });
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cmdop-bench-agents: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
