//! The `cluster-failover` case: SIGKILL of the replica holding the agent,
//! the time until an execute succeeds through a survivor, and the restart.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cmdop::client::Client;

use crate::{
    args::Args,
    record::{emit, round_us, timed_true, Samples},
    setup::{open_client, Setup, REPLICAS},
};

/// Longest a failover run may take before it counts as failed.
const FAILOVER_GIVE_UP: Duration = Duration::from_secs(30);
/// Bound of one execute attempt during failover (a call through the dead
/// replica must end, not hang; this keeps a hung one from hiding recovery).
const FAILOVER_ATTEMPT: Duration = Duration::from_millis(1500);
/// How long, before a failover run, the survivors may take to serve the
/// machine (following the previous run's move).
const SETTLE_WAIT: Duration = Duration::from_secs(15);
/// Pause between failover attempts.
const FAILOVER_PAUSE: Duration = Duration::from_millis(10);

/// Retries `execute("true")` on `client` until it succeeds; returns the
/// attempts it took and the first error seen.
pub async fn until_success(client: Client, hostname: String) -> (usize, Option<String>) {
    let mut attempts = 0usize;
    let mut first_error = None;
    loop {
        attempts += 1;
        let outcome = tokio::time::timeout(
            FAILOVER_ATTEMPT,
            client.execute("true", Some(FAILOVER_ATTEMPT)),
        )
        .await;
        match outcome {
            Ok(Ok(out)) if out.exit_code == 0 => return (attempts, first_error),
            Ok(Ok(out)) => {
                first_error.get_or_insert(format!("'true' exited with {}", out.exit_code));
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e.to_string());
                // The machine may come back under a new session: select again.
                let _ = tokio::time::timeout(FAILOVER_ATTEMPT, client.set_machine(&hostname)).await;
            }
            Err(_) => {
                first_error.get_or_insert(format!("an attempt hung for {FAILOVER_ATTEMPT:?}"));
            }
        }
        tokio::time::sleep(FAILOVER_PAUSE).await;
    }
}

/// A client on replica `i` that has run an execute on the machine (after
/// a previous run's move, a replica may need a moment to follow it).
pub async fn settled_client(args: &Args, setup: &Setup, i: usize) -> anyhow::Result<Client> {
    let (client, _) = open_client(&setup.cluster, i, &setup.api_key, &args.hostname).await?;
    let deadline = Instant::now() + SETTLE_WAIT;
    loop {
        match timed_true(&client, args.timeout).await {
            Ok(_) => return Ok(client),
            Err(e) if Instant::now() > deadline => bail!(
                "execute through {} still fails {SETTLE_WAIT:?} before the kill: {e}",
                setup.cluster.replicas[i].id
            ),
            Err(_) => {
                let _ = client.set_machine(&args.hostname).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// SIGKILL the agent's replica, time until an execute succeeds through a
/// survivor, restart the killed replica.
pub async fn failover(args: &Args, setup: &mut Setup) -> anyhow::Result<()> {
    let mut s = Samples::new();
    let mut notes = Vec::new();
    let mut restart_us = Vec::new();
    let mut settle_us = Vec::new();
    let t_all = Instant::now();
    for run in 0..args.failover_runs {
        if let Err(e) = failover_run(
            args,
            setup,
            run,
            &mut s,
            &mut notes,
            &mut restart_us,
            &mut settle_us,
        )
        .await
        {
            // What was measured so far is kept; the cluster is not in a
            // state to go on.
            s.add(Err(format!("{e:#}")));
            notes.push(format!("run {} could not complete: {e:#}", run + 1));
            if s.us.is_empty() {
                return Err(e);
            }
            break;
        }
    }
    if let Some(e) = &s.first_error {
        eprintln!(
            "cmdop-bench-cluster: failover: {} failed, first: {e}",
            s.errors
        );
    }
    emit(serde_json::json!({
        "case": "cluster-failover",
        "subject": "sigkill-agent-replica",
        "label": "SIGKILL of the agent's replica → execute succeeds through a survivor",
        "runs": args.failover_runs,
        "concurrency": 1,
        "wall_s": t_all.elapsed().as_secs_f64(),
        "ops_per_s": 0.0,
        "errors": s.errors,
        "bytes": 0,
        "note": notes.join("; "),
        "restart_us": round_us(&restart_us),
        "settle_us": round_us(&settle_us),
        "steady_s": args.failover_steady.as_secs_f64(),
        "samples_us": round_us(&s.us),
    }));
    Ok(())
}

/// One failover run: kill, time the recovery, restart.
async fn failover_run(
    args: &Args,
    setup: &mut Setup,
    run: usize,
    s: &mut Samples,
    notes: &mut Vec<String>,
    restart_us: &mut Vec<f64>,
    settle_us: &mut Vec<f64>,
) -> anyhow::Result<()> {
    let home = setup.cluster.live_route(&setup.machine_id).await?;
    let survivors: Vec<usize> = (0..REPLICAS).filter(|&i| i != home).collect();
    let mut clients = Vec::new();
    let settle_start = Instant::now();
    for &i in &survivors {
        clients.push(settled_client(args, setup, i).await?);
    }
    settle_us.push(settle_start.elapsed().as_secs_f64() * 1e6);
    let killed_id = setup.cluster.replicas[home].id.clone();
    let t0 = Instant::now();
    setup.cluster.kill_replica(home).await;
    let tasks: Vec<_> = clients
        .iter()
        .map(|c| Box::pin(until_success(c.clone(), args.hostname.clone())))
        .collect();
    let outcome = tokio::time::timeout(FAILOVER_GIVE_UP, futures_select_first(tasks)).await;
    let took = t0.elapsed();
    let recovered = Instant::now();
    match outcome {
        Ok((which, attempts, first_error)) => {
            s.add(Ok(took.as_secs_f64() * 1e6));
            eprintln!(
                "cmdop-bench-cluster: failover {}: killed {killed_id}, execute through {} after {:.0} ms \
                 ({attempts} attempts; first error: {})",
                run + 1,
                setup.cluster.replicas[survivors[which]].id,
                took.as_secs_f64() * 1e3,
                first_error.as_deref().unwrap_or("none")
            );
        }
        Err(_) => {
            s.add(Err(format!(
                "no execute succeeded within {FAILOVER_GIVE_UP:?} after killing {killed_id}"
            )));
            notes.push(format!("run {} gave up", run + 1));
        }
    }
    for c in clients {
        c.close().await;
    }
    let t_restart = Instant::now();
    setup
        .cluster
        .start_replica(home)
        .await
        .with_context(|| format!("cannot restart {killed_id} after failover run {}", run + 1))?;
    restart_us.push(t_restart.elapsed().as_secs_f64() * 1e6);
    // Steady state before the next run: the agent resets its reconnect
    // backoff only after a link stayed up a while, so kills in quick
    // succession would measure a flapping server's growing backoff.
    if run + 1 < args.failover_runs {
        tokio::time::sleep(args.failover_steady.saturating_sub(recovered.elapsed())).await;
    }
    Ok(())
}

/// Polls the futures until the first finishes; returns its index and output.
pub async fn futures_select_first<F>(
    mut futs: Vec<std::pin::Pin<Box<F>>>,
) -> (usize, usize, Option<String>)
where
    F: std::future::Future<Output = (usize, Option<String>)>,
{
    std::future::poll_fn(move |cx| {
        for (i, f) in futs.iter_mut().enumerate() {
            if let std::task::Poll::Ready((a, e)) = f.as_mut().poll(cx) {
                return std::task::Poll::Ready((i, a, e));
            }
        }
        std::task::Poll::Pending
    })
    .await
}
