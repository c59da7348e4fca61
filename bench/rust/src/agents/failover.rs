//! The failover measurement: once the harness killed one server, the time
//! until none of the agents is left on it and every agent is registered
//! again (each on a survivor it picked as the real agent does), and how
//! the moved agents spread over the survivors.

use std::{
    path::{Path, PathBuf},
    sync::atomic::Ordering,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context};

use crate::{agent::Stats, args::Args, harness_file::wait_for};

/// How long the agents of the killed server may take to register on the
/// others (the goal is 30 s; this bound only ends a run that never
/// settles).
const MOVE_ALL_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the harness may take to kill the server.
const KILL_TIMEOUT: Duration = Duration::from_secs(900);

/// The failover measurement (see the crate's documentation): prints its
/// record and writes `path.done`.
pub async fn measure_failover(args: &Args, path: &Path, stats: &Stats) -> anyhow::Result<()> {
    let (killed, at) = wait_for(path, KILL_TIMEOUT, "server index", "kill a server").await?;
    let servers = stats.on_server.len();
    let killed = usize::try_from(killed).unwrap_or(usize::MAX);
    if killed >= servers {
        bail!(
            "{}: server {killed} was killed, but --server lists {servers}",
            path.display()
        );
    }
    let deadline = Instant::now() + MOVE_ALL_TIMEOUT;
    let mut settled_at = None;
    // Settled: nobody on the killed server, nobody down, and the killed
    // server's agents were seen to leave (a kill noticed late would
    // otherwise look settled at once).
    while Instant::now() < deadline {
        let left = stats
            .moved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|(from, _, _)| *from == killed);
        if left
            && stats.on_server[killed].load(Ordering::SeqCst) == 0
            && stats.down.load(Ordering::SeqCst) == 0
        {
            settled_at = Some(SystemTime::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let moved: Vec<(usize, usize, SystemTime)> = stats
        .moved
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(from, _, t)| *from == killed && *t >= at)
        .copied()
        .collect();
    let mut moved_to = vec![0u64; stats.on_server.len()];
    let mut samples: Vec<f64> = Vec::with_capacity(moved.len());
    for (_, to, t) in &moved {
        moved_to[*to] += 1;
        samples.push(t.duration_since(at).unwrap_or_default().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    let down = stats.down.load(Ordering::SeqCst);
    let stranded = stats.on_server[killed].load(Ordering::SeqCst) + down;
    if settled_at.is_none() {
        let why = stats
            .first_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "no attempt failed".into());
        eprintln!(
            "cmdop-bench-agents: {stranded} agents were not registered on a survivor {} s after server {killed} was killed (first failure: {why})",
            MOVE_ALL_TIMEOUT.as_secs()
        );
    }
    let all_back_s = settled_at.map_or(-1.0, |t| {
        t.duration_since(at).unwrap_or_default().as_secs_f64()
    });
    let record = serde_json::json!({
        "case": args.case,
        "subject": "failover",
        "label": format!("agents of a SIGKILLed server moving to the others ({} servers)", stats.on_server.len()),
        "runs": moved.len(),
        "concurrency": 0,
        "wall_s": all_back_s,
        "ops_per_s": if all_back_s > 0.0 { moved.len() as f64 / all_back_s } else { 0.0 },
        "errors": if settled_at.is_some() { 0 } else { stranded },
        "bytes": 0,
        "agents": moved.len(),
        "killed": killed,
        "moved_to": moved_to,
        "all_back_s": all_back_s,
        "samples_us": samples.iter().map(|v| (v * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
    });
    println!("{record}");
    let mut done = path.as_os_str().to_owned();
    done.push(".done");
    std::fs::write(&done, format!("{}\n", moved.len()))
        .with_context(|| format!("cannot write {}", PathBuf::from(&done).display()))?;
    Ok(())
}
