//! The `cluster-stream` case: `head -c N /dev/zero` through a client of
//! the replica holding the agent, then through a cross-replica client,
//! bytes counted in the streaming callback. The first is the rate the
//! second is judged against (issue 25: forwarded output at ≥ 80 % of it).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use cmdop::client::{CancelToken, Client};

use crate::{
    args::Args,
    record::{emit, reset_peak, round_us, rss_kb, Samples},
    setup::{open_client, Setup, REPLICAS},
};

/// `head -c N /dev/zero` through the agent's own replica, then through
/// another one.
pub async fn stream(args: &Args, setup: &Setup) -> anyhow::Result<()> {
    let home = setup.cluster.live_route(&setup.machine_id).await?;
    let other = (home + 1) % REPLICAS;
    stream_through(
        args,
        setup,
        home,
        home,
        "same-replica",
        "Rust client, replica holding the agent (streaming callback)",
    )
    .await?;
    stream_through(
        args,
        setup,
        home,
        other,
        "cross-replica",
        "Rust client, cross-replica (streaming callback)",
    )
    .await
}

/// One record: the stream through a client of replica `via`.
async fn stream_through(
    args: &Args,
    setup: &Setup,
    home: usize,
    via: usize,
    subject: &str,
    label: &str,
) -> anyhow::Result<()> {
    let c = &setup.cluster;
    let other = via;
    let (client, _) = open_client(c, other, &setup.api_key, &args.hostname).await?;
    let command = format!("head -c {} /dev/zero", args.stream_bytes);
    let timeout = args.timeout.max(Duration::from_secs(600));
    let run_once = |client: &Client| {
        let client = client.clone();
        let command = command.clone();
        async move {
            let counted = Arc::new(AtomicU64::new(0));
            let seen = counted.clone();
            let t0 = Instant::now();
            let out = client
                .execute_stream_discarding(
                    &command,
                    Some(timeout),
                    move |_, chunk| {
                        seen.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    },
                    CancelToken::new(),
                )
                .await;
            let took = t0.elapsed();
            let n = counted.load(Ordering::Relaxed);
            match out {
                Ok(o) if o.exit_code == 0 && n == args.stream_bytes => Ok(took.as_secs_f64() * 1e6),
                Ok(o) => Err(format!(
                    "exit {} after {n} of {} bytes",
                    o.exit_code, args.stream_bytes
                )),
                Err(e) => Err(format!("{e} after {n} bytes")),
            }
        }
    };
    let _ = run_once(&client).await; // warm-up
    let watched = [
        ("controlplane", c.pid(other)),
        ("controlplane_agent", c.pid(home)),
        ("agent", c.agent_pid()),
    ];
    reset_peak(None);
    for (_, pid) in &watched {
        if pid.is_some() {
            reset_peak(*pid);
        }
    }
    let mut s = Samples::new();
    let t0 = Instant::now();
    for _ in 0..args.stream_runs {
        s.add(run_once(&client).await);
    }
    let wall = t0.elapsed();
    let mut rss = serde_json::Map::new();
    rss.insert("client".into(), rss_kb(None, "VmHWM:").into());
    for (name, pid) in watched {
        let kb = if pid.is_some() {
            rss_kb(pid, "VmHWM:")
        } else {
            -1
        };
        rss.insert(name.into(), kb.into());
    }
    client.close().await;
    if let Some(e) = &s.first_error {
        eprintln!(
            "cmdop-bench-cluster: stream {subject}: {} failed, first: {e}",
            s.errors
        );
    }
    emit(serde_json::json!({
        "case": "cluster-stream",
        "subject": subject,
        "label": label,
        "runs": args.stream_runs,
        "concurrency": 1,
        "wall_s": wall.as_secs_f64(),
        "ops_per_s": if wall.as_secs_f64() > 0.0 { s.us.len() as f64 / wall.as_secs_f64() } else { 0.0 },
        "errors": s.errors,
        "bytes": args.stream_bytes,
        "rss_kb": rss,
        "samples_us": round_us(&s.us),
    }));
    Ok(())
}
