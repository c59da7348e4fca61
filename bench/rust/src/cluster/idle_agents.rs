//! The `cluster-agents` case: `cmdop-bench-agents` connects many simulated
//! idle agents over the replicas; cross-replica execute latency without and
//! with them, and what they cost the replicas.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use cmdop::client::Client;
use tokio::process::Command;

use crate::{
    args::Args,
    record::{emit, round_us, timed_true, Samples},
    setup::{log_tail, open_client, Setup, REPLICAS},
};

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

/// Cross-replica execute latency without and with `--agents` simulated idle
/// agents spread over the replicas, and what they cost the replicas.
pub async fn idle_agents(args: &Args, setup: &Setup) -> anyhow::Result<()> {
    let bin = args
        .agents_bin
        .as_ref()
        .context("--agents needs --agents-bin (target/release/cmdop-bench-agents)")?;
    let c = &setup.cluster;
    let home = c.live_route(&setup.machine_id).await?;
    let (client, _) = open_client(c, (home + 1) % REPLICAS, &setup.api_key, &args.hostname).await?;
    let _ = measure(&client, args.warmup, args.timeout).await;
    let (s, wall) = measure(&client, args.agents_lat_runs, args.timeout).await;
    agents_latency_record(
        "exec-1",
        "cross-replica execute(\"true\"), no other agent",
        &s,
        args.agents_lat_runs,
        wall,
    );

    let servers: Vec<String> = c
        .replicas
        .iter()
        .map(|r| format!("http://{}", r.listen))
        .collect();
    let log_path = c.agent_log.with_file_name("agents.log");
    let log = std::fs::File::create(&log_path)?;
    let mut sim = Command::new(bin);
    sim.arg("--server").arg(servers.join(","));
    c.db.name_to(&mut sim);
    sim.args(["--workspace", "bench", "--agents", &args.agents.to_string()])
        .args(["--case", "cluster-agents"])
        .args([
            "--label",
            &format!("{} idle agents over {REPLICAS} replicas", args.agents),
        ]);
    for i in 0..REPLICAS {
        let pid = c.pid(i).context("a replica is not running")?;
        sim.args(["--control-plane-pid", &pid.to_string()]);
    }
    let mut sim = sim
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let stdout = sim.stdout.take().context("no stdout of the simulator")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let record = tokio::time::timeout(Duration::from_secs(900), lines.next_line()).await;
    let record = match record {
        Ok(Ok(Some(line))) => line,
        Ok(_) => bail!(
            "the simulated agents did not connect: {}",
            log_tail(&log_path, 2)
        ),
        Err(_) => bail!("the simulated agents did not all connect within 900 s"),
    };
    let parsed: serde_json::Value =
        serde_json::from_str(&record).context("the simulator printed no JSON record")?;
    emit(parsed);
    let (s, wall) = measure(&client, args.agents_lat_runs, args.timeout).await;
    agents_latency_record(
        "exec-n",
        &format!(
            "cross-replica execute(\"true\"), {} idle agents connected",
            args.agents
        ),
        &s,
        args.agents_lat_runs,
        wall,
    );
    client.close().await;
    if let Some(pid) = sim.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    if tokio::time::timeout(Duration::from_secs(30), sim.wait())
        .await
        .is_err()
    {
        let _ = sim.kill().await;
    }
    Ok(())
}
