//! The `cluster-failover` case's second subject: two SIGKILLs 3 s apart
//! (the replica holding the agent, then the one it moved to), the time
//! until an execute succeeds through the last survivor after each, and the
//! restart of both.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{
    args::Args,
    failover::{futures_select_first, settled_client, until_success},
    record::{emit, round_us, Samples},
    setup::{Setup, REPLICAS},
};

/// From the first kill to the second.
const BETWEEN_KILLS: Duration = Duration::from_secs(3);
/// Longest one recovery may take before the run counts as failed.
const GIVE_UP: Duration = Duration::from_secs(30);

/// Half the failover runs (at least one), each two kills.
pub async fn failover_twice(args: &Args, setup: &mut Setup) -> anyhow::Result<()> {
    let runs = (args.failover_runs / 2).max(1);
    let (mut first, mut second) = (Samples::new(), Samples::new());
    // Steady state first: the previous case's last recovery is recent.
    tokio::time::sleep(args.failover_steady).await;
    let t_all = Instant::now();
    for run in 0..runs {
        if let Err(e) = one_run(args, setup, &mut first, &mut second).await {
            second.add(Err(format!("{e:#}")));
            eprintln!(
                "cmdop-bench-cluster: failover twice, run {}: {e:#}",
                run + 1
            );
            break;
        }
        if run + 1 < runs {
            tokio::time::sleep(args.failover_steady).await;
        }
    }
    emit(serde_json::json!({
        "case": "cluster-failover",
        "subject": "sigkill-twice-3s",
        "label": "second SIGKILL 3 s after the first → execute succeeds through the last survivor",
        "runs": runs,
        "concurrency": 1,
        "wall_s": t_all.elapsed().as_secs_f64(),
        "ops_per_s": 0.0,
        "errors": second.errors + first.errors,
        "bytes": 0,
        "first_us": round_us(&first.us),
        "samples_us": round_us(&second.us),
    }));
    Ok(())
}

/// Kill the holder, time the recovery; 3 s after the first kill, kill the
/// new holder, time the recovery through the last replica; restart both.
async fn one_run(
    args: &Args,
    setup: &mut Setup,
    first: &mut Samples,
    second: &mut Samples,
) -> anyhow::Result<()> {
    let home = setup.cluster.live_route(&setup.machine_id).await?;
    // A client on each other replica, each serving the machine first.
    let mut clients = Vec::new();
    for i in (0..REPLICAS).filter(|&i| i != home) {
        clients.push((i, settled_client(args, setup, i).await?));
    }
    let t0 = Instant::now();
    setup.cluster.kill_replica(home).await;
    let recovered = tokio::time::timeout(
        GIVE_UP,
        futures_select_first(
            clients
                .iter()
                .map(|(_, c)| Box::pin(until_success(c.clone(), args.hostname.clone())))
                .collect(),
        ),
    )
    .await;
    if recovered.is_err() {
        bail!("no execute within {GIVE_UP:?} of the first kill");
    }
    first.add(Ok(t0.elapsed().as_secs_f64() * 1e6));
    tokio::time::sleep(BETWEEN_KILLS.saturating_sub(t0.elapsed())).await;
    let moved_to = setup.cluster.live_route(&setup.machine_id).await?;
    if moved_to == home {
        bail!("the route still names the killed replica");
    }
    let (_, last) = clients
        .iter()
        .find(|(i, _)| *i != moved_to)
        .context("no replica left to ask through")?;
    let t1 = Instant::now();
    setup.cluster.kill_replica(moved_to).await;
    let back =
        tokio::time::timeout(GIVE_UP, until_success(last.clone(), args.hostname.clone())).await;
    match back {
        Ok(_) => second.add(Ok(t1.elapsed().as_secs_f64() * 1e6)),
        Err(_) => second.add(Err(format!(
            "no execute within {GIVE_UP:?} of the second kill"
        ))),
    }
    for (_, c) in clients {
        c.close().await;
    }
    for i in [home, moved_to] {
        setup
            .cluster
            .start_replica(i)
            .await
            .with_context(|| format!("cannot restart replica {i}"))?;
    }
    Ok(())
}
