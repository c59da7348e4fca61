//! The `cluster-agents` case: `cmdop-bench-agents` connects many simulated
//! idle agents over the replicas; cross-replica execute latency without and
//! with them, what they cost the replicas, and how long the agents of a
//! replica killed with SIGKILL take to be registered on the others (the
//! killed replica is started again afterwards).

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use cmdop::client::Client;
use tokio::process::Command;

use crate::{
    args::Args,
    record::{emit, round_us, rss_kb, timed_true, Samples},
    setup::{log_tail, open_client, Setup, REPLICAS},
};

/// Time for the replicas' allocations to settle before their memory is read.
const SETTLE: Duration = Duration::from_secs(2);

/// `runs` executes of `true` one after the other.
async fn measure(client: &Client, runs: usize, timeout: Duration) -> (Samples, Duration) {
    let mut s = Samples::new();
    let t0 = Instant::now();
    for _ in 0..runs {
        s.add(timed_true(client, timeout).await);
    }
    (s, t0.elapsed())
}

fn agents_latency_record(subject: &str, label: &str, s: &Samples, runs: usize, wall: Duration) {
    if let Some(e) = &s.first_error {
        eprintln!(
            "cmdop-bench-cluster: {subject}: {} failed, first: {e}",
            s.errors
        );
    }
    emit(serde_json::json!({
        "case": "cluster-agents",
        "subject": subject,
        "label": label,
        "runs": runs,
        "concurrency": 1,
        "wall_s": wall.as_secs_f64(),
        "ops_per_s": if wall.as_secs_f64() > 0.0 { s.us.len() as f64 / wall.as_secs_f64() } else { 0.0 },
        "errors": s.errors,
        "bytes": 0,
        "samples_us": round_us(&s.us),
    }));
}

/// Agents one simulator process holds: one connection each, so that the
/// simulator stays under a 20,000 descriptor limit with room to spare (more
/// agents take more simulators, each of which spreads its agents over every
/// replica).
const PER_SIMULATOR: usize = 15_000;
/// Agents per source address in a simulator: with several simulators on
/// one machine, even a shared source address keeps below the ~28,000
/// ephemeral ports it has.
const PER_SOURCE: usize = 5_000;

/// Execute latency, same replica and cross-replica, without and with
/// `--agents` simulated idle agents spread over the replicas (by as many
/// simulator processes as [`PER_SIMULATOR`] asks), and what they cost the
/// replicas' memory.
pub async fn idle_agents(args: &Args, setup: &mut Setup) -> anyhow::Result<()> {
    let bin = args
        .agents_bin
        .as_ref()
        .context("--agents needs --agents-bin (target/release/cmdop-bench-agents)")?;
    let c = &setup.cluster;
    let home = c.live_route(&setup.machine_id).await?;
    // Killed after the latency rows: neither the agent's replica nor the
    // cross-replica client's.
    let victim = (home + 2) % REPLICAS;
    let (cross, _) = open_client(c, (home + 1) % REPLICAS, &setup.api_key, &args.hostname).await?;
    let (same, _) = open_client(c, home, &setup.api_key, &args.hostname).await?;
    let runs = args.agents_lat_runs;
    for (client, subject, label) in [
        (
            &same,
            "same-1",
            "same-replica execute(\"true\"), no other agent",
        ),
        (
            &cross,
            "exec-1",
            "cross-replica execute(\"true\"), no other agent",
        ),
    ] {
        let _ = measure(client, args.warmup, args.timeout).await;
        let (s, wall) = measure(client, runs, args.timeout).await;
        agents_latency_record(subject, label, &s, runs, wall);
    }

    let servers: Vec<String> = c
        .replicas
        .iter()
        .map(|r| format!("http://{}", r.listen))
        .collect();
    let pids: Vec<u32> = (0..REPLICAS)
        .map(|i| c.pid(i).context("a replica is not running"))
        .collect::<anyhow::Result<_>>()?;
    let rss = |pids: &[u32]| -> i64 {
        pids.iter()
            .map(|&p| rss_kb(Some(p), "VmRSS:"))
            .try_fold(0i64, |sum, kb| (kb >= 0).then_some(sum + kb))
            .unwrap_or(-1)
    };
    let rss_before = rss(&pids);
    let simulators = args.agents.div_ceil(PER_SIMULATOR).max(1);
    let label = format!("{} idle agents over {REPLICAS} replicas", args.agents);
    let mut sims = Vec::with_capacity(simulators);
    for k in 0..simulators {
        let share = args.agents / simulators + usize::from(k < args.agents % simulators);
        let log_path = c.agent_log.with_file_name(format!("agents-{k}.log"));
        let kill_file = c.agent_log.with_file_name(format!("agents-{k}.killed"));
        let _ = std::fs::remove_file(&kill_file);
        let log = std::fs::File::create(&log_path)?;
        let mut sim = Command::new(bin);
        sim.arg("--server").arg(servers.join(","));
        c.db.name_to(&mut sim);
        sim.args(["--workspace", "bench", "--agents", &share.to_string()])
            .args(["--per-source", &PER_SOURCE.to_string()])
            .args(["--case", "cluster-agents", "--label", &label])
            .arg("--failover-file")
            .arg(&kill_file);
        let mut child = sim
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout of the simulator")?;
        sims.push((child, stdout, log_path, kill_file));
    }
    // Each simulator prints one record once its agents are connected, and
    // a second once the agents of the killed replica have moved.
    let mut records = Vec::with_capacity(simulators);
    let mut children = Vec::with_capacity(simulators);
    let mut waits = Vec::with_capacity(simulators);
    let mut outputs = Vec::with_capacity(simulators);
    for (child, stdout, log_path, kill_file) in sims {
        children.push(child);
        outputs.push((log_path.clone(), kill_file));
        waits.push(tokio::spawn(async move {
            let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
            let record = next_record(&mut lines, &log_path, Duration::from_secs(900))
                .await
                .context("simulated agents did not all connect")?;
            Ok::<_, anyhow::Error>((record, lines))
        }));
    }
    let mut readers = Vec::with_capacity(simulators);
    for wait in waits {
        let (record, lines) = wait.await.context("a simulator's reader task failed")??;
        records.push(record);
        readers.push(lines);
    }
    tokio::time::sleep(SETTLE).await;
    let rss_after = rss(&pids);
    let sum = |field: &str| -> u64 { records.iter().map(|r| r[field].as_u64().unwrap_or(0)).sum() };
    let wall = records
        .iter()
        .map(|r| r["wall_s"].as_f64().unwrap_or(0.0))
        .fold(0.0, f64::max);
    let samples: Vec<serde_json::Value> = records
        .iter()
        .flat_map(|r| r["samples_us"].as_array().cloned().unwrap_or_default())
        .collect();
    let agents = sum("agents");
    emit(serde_json::json!({
        "case": "cluster-agents",
        "subject": "idle-agents",
        "label": label,
        "runs": args.agents,
        "concurrency": records.first().map_or(serde_json::Value::Null, |r| r["concurrency"].clone()),
        "wall_s": wall,
        "ops_per_s": if wall > 0.0 { agents as f64 / wall } else { 0.0 },
        "errors": sum("errors"),
        "bytes": 0,
        "agents": agents,
        "servers": REPLICAS,
        "simulators": simulators,
        "rss_kb": { "controlplane_before": rss_before, "controlplane_after": rss_after },
        "samples_us": samples,
    }));
    for (client, subject, label) in [
        (
            &same,
            "same-n",
            format!(
                "same-replica execute(\"true\"), {} idle agents connected",
                args.agents
            ),
        ),
        (
            &cross,
            "exec-n",
            format!(
                "cross-replica execute(\"true\"), {} idle agents connected",
                args.agents
            ),
        ),
    ] {
        let (s, wall) = measure(client, runs, args.timeout).await;
        agents_latency_record(subject, &label, &s, runs, wall);
    }
    same.close().await;
    cross.close().await;
    let moved = failover(setup, victim, &outputs, &mut readers, args.agents).await;
    let restarted = setup.cluster.start_replica(victim).await;
    for child in &children {
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    for mut child in children {
        if tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
    moved?;
    restarted.with_context(|| format!("cannot restart replica {victim} after killing it"))
}

type Lines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

/// The next JSON record a simulator prints, within `within`.
async fn next_record(
    lines: &mut Lines,
    log_path: &std::path::Path,
    within: Duration,
) -> anyhow::Result<serde_json::Value> {
    match tokio::time::timeout(within, lines.next_line()).await {
        Ok(Ok(Some(line))) => {
            serde_json::from_str(&line).context("a simulator printed no JSON record")
        }
        Ok(_) => bail!("the simulator ended: {}", log_tail(log_path, 2)),
        Err(_) => bail!("no record within {within:?}: {}", log_tail(log_path, 2)),
    }
}

/// SIGKILL of replica `victim` with the simulated agents connected: tells
/// every simulator (through its failover file), waits for each one's record
/// of its agents moving to the survivors, and prints the combined record.
async fn failover(
    setup: &mut Setup,
    victim: usize,
    outputs: &[(std::path::PathBuf, std::path::PathBuf)],
    readers: &mut [Lines],
    agents: usize,
) -> anyhow::Result<()> {
    setup.cluster.kill_replica(victim).await;
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    for (_, kill_file) in outputs {
        std::fs::write(kill_file, format!("{victim} {at:.6}\n"))
            .with_context(|| format!("cannot write {}", kill_file.display()))?;
    }
    let mut records = Vec::with_capacity(readers.len());
    for (lines, (log_path, _)) in readers.iter_mut().zip(outputs) {
        records.push(
            next_record(lines, log_path, Duration::from_secs(240))
                .await
                .context("the agents of the killed replica did not move")?,
        );
    }
    let sum = |field: &str| -> u64 { records.iter().map(|r| r[field].as_u64().unwrap_or(0)).sum() };
    let all_back = records
        .iter()
        .map(|r| r["all_back_s"].as_f64().unwrap_or(-1.0))
        .fold(
            0.0,
            |a: f64, b| if a < 0.0 || b < 0.0 { -1.0 } else { a.max(b) },
        );
    let mut moved_to = vec![0u64; REPLICAS];
    for r in &records {
        for (i, n) in r["moved_to"].as_array().into_iter().flatten().enumerate() {
            if i < REPLICAS {
                moved_to[i] += n.as_u64().unwrap_or(0);
            }
        }
    }
    let samples: Vec<serde_json::Value> = records
        .iter()
        .flat_map(|r| r["samples_us"].as_array().cloned().unwrap_or_default())
        .collect();
    let moved = sum("agents");
    emit(serde_json::json!({
        "case": "cluster-agents",
        "subject": "sigkill-replica",
        "label": format!("SIGKILL of one of {REPLICAS} replicas with {agents} agents: its agents registered on the survivors"),
        "runs": moved,
        "concurrency": 0,
        "wall_s": all_back,
        "ops_per_s": if all_back > 0.0 { moved as f64 / all_back } else { 0.0 },
        "errors": sum("errors"),
        "bytes": 0,
        "agents": moved,
        "killed": victim,
        "moved_to": moved_to,
        "all_back_s": all_back,
        "samples_us": samples,
    }));
    Ok(())
}
