//! The `cluster-latency` case: `execute("true")` with the client on the
//! agent's replica and on another one, interleaved call by call.

use std::time::{Duration, Instant};

use crate::{
    args::Args,
    record::{emit, p50, round_us, timed_true, Samples},
    setup::{open_client, Setup, REPLICAS},
};

fn latency_record(
    subject: &str,
    label: &str,
    s: &Samples,
    runs: usize,
    wall: Duration,
    note: &str,
) {
    if let Some(e) = &s.first_error {
        eprintln!(
            "cmdop-bench-cluster: {subject}: {} failed, first: {e}",
            s.errors
        );
    }
    eprintln!(
        "cmdop-bench-cluster: {subject}: p50 {:.0} µs over {} runs",
        p50(&s.us),
        s.us.len()
    );
    emit(serde_json::json!({
        "case": "cluster-latency",
        "subject": subject,
        "label": label,
        "runs": runs,
        "concurrency": 1,
        "wall_s": wall.as_secs_f64(),
        "ops_per_s": if wall.as_secs_f64() > 0.0 { s.us.len() as f64 / wall.as_secs_f64() } else { 0.0 },
        "errors": s.errors,
        "bytes": 0,
        "note": note,
        "samples_us": round_us(&s.us),
    }));
}

/// Same-replica and cross-replica `execute("true")`, interleaved call by call.
pub async fn latency(args: &Args, setup: &Setup) -> anyhow::Result<()> {
    let c = &setup.cluster;
    let home = c.live_route(&setup.machine_id).await?;
    let other = (home + 1) % REPLICAS;
    let (same, _) = open_client(c, home, &setup.api_key, &args.hostname).await?;
    let (cross, _) = open_client(c, other, &setup.api_key, &args.hostname).await?;
    for _ in 0..args.warmup {
        let _ = timed_true(&same, args.timeout).await;
        let _ = timed_true(&cross, args.timeout).await;
    }
    let (mut s_same, mut s_cross) = (Samples::new(), Samples::new());
    let t0 = Instant::now();
    for i in 0..args.latency_runs {
        // Alternate which goes first so neither always follows the other.
        if i % 2 == 0 {
            s_same.add(timed_true(&same, args.timeout).await);
            s_cross.add(timed_true(&cross, args.timeout).await);
        } else {
            s_cross.add(timed_true(&cross, args.timeout).await);
            s_same.add(timed_true(&same, args.timeout).await);
        }
    }
    let wall = t0.elapsed() / 2;
    let moved = c.route(&setup.machine_id)? != Some(home);
    let note = if moved {
        "the agent moved to another replica during the run"
    } else {
        ""
    };
    latency_record(
        "same-replica",
        "execute(\"true\"), client on the agent's replica",
        &s_same,
        args.latency_runs,
        wall,
        note,
    );
    latency_record(
        "cross-replica",
        "execute(\"true\"), client on another replica (forwarded)",
        &s_cross,
        args.latency_runs,
        wall,
        note,
    );
    same.close().await;
    cross.close().await;
    Ok(())
}
