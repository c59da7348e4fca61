//! The `cluster-rolling` case: a rolling restart under load. Each replica
//! in turn (the one holding the agent first, so that the agent has to
//! move) gets SIGTERM, drains, exits and starts again on its address before
//! the next one stops, while one client per replica (every replica in its
//! list, that one first) runs `execute("true")` in a loop. Every call
//! counts: the failed ones (goal 0) and the latency of the others.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use cmdop::client::{Client, ClientOptions, Credentials};
use parking_lot::Mutex;

use crate::{
    args::Args,
    record::{emit, round_us, Samples},
    setup::{Setup, REPLICAS},
};

/// How long a stopping replica may take to exit (its drain, up to the
/// default 30 s grace, and the linger after it).
const STOP_WITHIN: Duration = Duration::from_secs(45);
/// After a restart, before the next replica stops: every replica has read
/// the restarted one's lease.
const BETWEEN: Duration = Duration::from_secs(3);
/// Bound of one call in the loops.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn rolling(args: &Args, setup: &mut Setup) -> anyhow::Result<()> {
    let mut s = Samples::new();
    let mut stop_us = Vec::new();
    let t_all = Instant::now();
    for _ in 0..args.rolling_runs {
        one_run(args, setup, &mut s, &mut stop_us).await?;
    }
    if let Some(e) = &s.first_error {
        eprintln!(
            "cmdop-bench-cluster: rolling restart: {} calls failed, first: {e}",
            s.errors
        );
    }
    let wall = t_all.elapsed().as_secs_f64();
    emit(serde_json::json!({
        "case": "cluster-rolling",
        "subject": "sigterm-each-replica",
        "label": "execute(\"true\") through every replica during a rolling restart",
        "runs": s.us.len() + s.errors,
        "restarts": args.rolling_runs,
        "concurrency": REPLICAS,
        "wall_s": wall,
        "ops_per_s": s.us.len() as f64 / wall.max(1e-9),
        "errors": s.errors,
        "first_error": s.first_error,
        "bytes": 0,
        "stop_us": round_us(&stop_us),
        "samples_us": round_us(&s.us),
    }));
    Ok(())
}

/// A client with every replica in its list, `first` first (kept in that
/// order), with the machine selected.
async fn list_client(args: &Args, setup: &Setup, first: usize) -> anyhow::Result<Client> {
    let urls: Vec<String> = (0..REPLICAS)
        .map(|k| {
            format!(
                "http://{}",
                setup.cluster.replicas[(first + k) % REPLICAS].listen
            )
        })
        .collect();
    let mut opts = ClientOptions::local("127.0.0.1", 1);
    opts.servers = urls;
    opts.servers_in_order = true;
    opts.credentials = Credentials::ApiKey(setup.api_key.clone());
    opts.timeout = CALL_TIMEOUT;
    let client = Client::connect(opts)
        .await
        .context("cannot connect a client with the replicas' list")?;
    client
        .set_machine(&args.hostname)
        .await
        .context("cannot select the machine")?;
    Ok(client)
}

async fn one_run(
    args: &Args,
    setup: &mut Setup,
    s: &mut Samples,
    stop_us: &mut Vec<f64>,
) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Samples>> = Arc::new(Mutex::new(Samples::new()));
    let mut loops = Vec::new();
    for i in 0..REPLICAS {
        let client = list_client(args, setup, i).await?;
        let (stop, results) = (stop.clone(), results.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = match client.execute("true", Some(CALL_TIMEOUT)).await {
                    Ok(out) if out.exit_code == 0 => Ok(t.elapsed().as_secs_f64() * 1e6),
                    Ok(out) => Err(format!("'true' exited with {}", out.exit_code)),
                    Err(e) => Err(e.to_string()),
                };
                results.lock().add(r);
            }
            client.close().await;
        }));
    }
    let holder = setup.cluster.live_route(&setup.machine_id).await?;
    let order = std::iter::once(holder).chain((0..REPLICAS).filter(|&i| i != holder));
    let mut outcome = Ok(());
    for i in order {
        match setup.cluster.stop_replica(i, STOP_WITHIN).await {
            Ok(took) => stop_us.push(took.as_secs_f64() * 1e6),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
        if let Err(e) = setup.cluster.start_replica(i).await {
            outcome = Err(e);
            break;
        }
        tokio::time::sleep(BETWEEN).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        let _ = l.await;
    }
    let done = std::mem::replace(&mut *results.lock(), Samples::new());
    s.us.extend(done.us);
    s.errors += done.errors;
    if s.first_error.is_none() {
        s.first_error = done.first_error;
    }
    outcome
}
