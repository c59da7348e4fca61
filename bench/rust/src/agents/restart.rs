//! The restart measurement: once the harness restarted the control plane,
//! the time until every agent registered again, and the rate of attempts
//! and registrations meanwhile.

use std::{
    path::PathBuf,
    sync::atomic::Ordering,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;

use crate::{
    agent::Stats,
    args::Args,
    harness_file::wait_for,
    rss::{vm_rss_kb, SETTLE},
};

/// How long all agents together may take to register again after a
/// control-plane restart.
const RECONNECT_ALL_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the harness may take to restart the control plane.
const RESTART_TIMEOUT: Duration = Duration::from_secs(600);

/// Counts of `events` per whole second after `zero` (events before it go
/// to `before`).
fn per_second(events: &[SystemTime], zero: SystemTime) -> (Vec<u64>, u64) {
    let mut counts = Vec::new();
    let mut before = 0;
    for e in events {
        match e.duration_since(zero) {
            Ok(d) => {
                let i = d.as_secs() as usize;
                if counts.len() <= i {
                    counts.resize(i + 1, 0);
                }
                counts[i] += 1;
            }
            Err(_) => before += 1,
        }
    }
    (counts, before)
}

fn secs_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// The restart measurement: waits for the harness to restart the control
/// plane, then for all `expected` agents to register again, and prints its
/// record.
pub async fn measure_restart(
    args: &Args,
    path: &std::path::Path,
    expected: usize,
    stats: &Stats,
) -> anyhow::Result<()> {
    let (new_pid, ready_at) =
        wait_for(path, RESTART_TIMEOUT, "pid", "restart the control plane").await?;
    let new_pid = u32::try_from(new_pid).context("the restart file's pid is out of range")?;
    let deadline = Instant::now() + RECONNECT_ALL_TIMEOUT;
    // All back: every agent lost its connection and none is down now.
    let mut all_back_at = None;
    loop {
        if stats.agents_lost.load(Ordering::SeqCst) >= expected
            && stats.down.load(Ordering::SeqCst) == 0
        {
            all_back_at = Some(SystemTime::now());
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(SETTLE).await;
    let rss_after = vm_rss_kb(&[new_pid]);
    let lost_at = stats
        .lost_at
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let attempts = stats
        .attempts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let back = stats
        .registered_again
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let first_back = stats
        .first_back
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let lost = stats.lost.load(Ordering::Relaxed);
    let down = stats.down.load(Ordering::SeqCst);
    if all_back_at.is_none() {
        let why = stats
            .first_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "no attempt failed".into());
        eprintln!(
            "cmdop-bench-agents: {down} of {expected} agents were still not registered again {} s after the restart (first failure: {why})",
            RECONNECT_ALL_TIMEOUT.as_secs()
        );
    }
    let first_lost = lost_at.iter().min().copied().unwrap_or(ready_at);
    let all_back_s = all_back_at.map_or(-1.0, |t| secs_between(ready_at, t));
    let (back_per_s, back_before) = per_second(&back, ready_at);
    let (attempts_per_s, attempts_before) = per_second(&attempts, ready_at);
    let mut samples: Vec<f64> = first_back
        .iter()
        .map(|t| secs_between(ready_at, *t) * 1e6)
        .collect();
    samples.sort_by(f64::total_cmp);
    let record = serde_json::json!({
        "case": args.case,
        "subject": "reconnect",
        "label": format!("{expected} agents reconnecting after a control-plane restart"),
        "runs": expected,
        "concurrency": 0,
        "wall_s": all_back_s,
        "ops_per_s": if all_back_s > 0.0 { expected as f64 / all_back_s } else { 0.0 },
        "errors": if all_back_at.is_some() { 0 } else { down },
        "bytes": 0,
        "agents": expected - if all_back_at.is_some() { 0 } else { down },
        "lost": lost,
        "registrations": back.len(),
        "attempts": attempts.len(),
        "attempts_before_ready": attempts_before,
        "registered_before_ready": back_before,
        "down_s": secs_between(first_lost, ready_at),
        "all_back_s": all_back_s,
        "registered_per_s": back_per_s,
        "attempts_per_s": attempts_per_s,
        "peak_registered_per_s": back_per_s.iter().max().copied().unwrap_or(0),
        "peak_attempts_per_s": attempts_per_s.iter().max().copied().unwrap_or(0),
        "rss_kb": { "controlplane_after": rss_after },
        "samples_us": samples.iter().map(|v| (v * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
    });
    println!("{record}");
    let mut done = path.as_os_str().to_owned();
    done.push(".done");
    std::fs::write(&done, format!("{}\n", first_back.len()))
        .with_context(|| format!("cannot write {}", PathBuf::from(&done).display()))?;
    Ok(())
}
