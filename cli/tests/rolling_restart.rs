//! A rolling restart of a three-replica cluster (one PostgreSQL,
//! [`common::postgres`]) under a continuous execute loop through every
//! replica: each replica in turn gets SIGTERM, drains, exits and starts
//! again on its address before the next one stops. The agent (which knows
//! all three) is asked to move by each replica that holds it and opens its
//! new link elsewhere while its old link finishes its work; clients (each
//! with the full list, starting at a different replica) fail over by
//! themselves (a call that provably never reached the stopping replica is
//! sent again). No call may fail, a 10 s command started before its
//! replica's SIGTERM completes with its output, and the route table never
//! shows the machine without a route.

mod common;

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use cmdop::client::{set_log_sink, Client, ClientOptions, Credentials, LogLevel};
use common::{
    postgres::{self, Postgres},
    *,
};

const PEER_SECRET: &str = "rolling-test-peer-secret-0123456789abc";

/// Replica `id` on `listen` ("127.0.0.1:0" the first time, its own address
/// when restarted).
fn start_replica(url: &str, dir: &Path, id: &str, listen: &str) -> Server {
    server_pg_env_on(
        url,
        &[("CMDOP_PEER_SECRET", PEER_SECRET)],
        dir,
        listen,
        &[
            "--peer-listen",
            "127.0.0.1:0",
            "--replica-id",
            id,
            "--keepalive-secs",
            "2",
            "--shutdown-grace-secs",
            "30",
        ],
    )
}

fn query(pg: &Postgres, sql: &str) -> String {
    pg.psql(postgres::DATABASE, sql).trim().to_string()
}

/// The replica the route table names for `machine_id` ("" for none).
fn route_of(pg: &Postgres, machine_id: &str) -> String {
    query(
        pg,
        &format!("SELECT replica_id FROM routes WHERE machine_id = '{machine_id}'"),
    )
}

/// A library client with every replica in its list, preferring `first`.
async fn client(addrs: &[String], first: usize, key: &str, host: &str) -> Client {
    let n = addrs.len();
    let mut opts = ClientOptions::local("127.0.0.1", 1);
    opts.servers = (0..n).map(|i| addrs[(first + i) % n].clone()).collect();
    opts.servers_in_order = true;
    opts.credentials = Credentials::ApiKey(key.to_string());
    opts.timeout = Duration::from_secs(30);
    // For the count of resent calls (see `count_resends`).
    opts.debug = true;
    let c = Client::new(opts).expect("client");
    c.open().await.expect("connect");
    c.set_machine(host).await.expect("select the machine");
    c
}

/// Counts the calls the library sent again, from its debug log: an execute
/// is resent only when its failure proves that nothing of it ran.
fn count_resends() -> Arc<AtomicUsize> {
    let resent = Arc::new(AtomicUsize::new(0));
    let counter = resent.clone();
    set_log_sink(Some((
        LogLevel::Debug,
        Arc::new(move |_, message: &str| {
            if message.contains("retrying Exec") {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }),
    )));
    resent
}

/// What the execute loops saw.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
    errors: Mutex<Vec<String>>,
    latencies: Mutex<Vec<Duration>>,
}

/// Runs `echo` through `c` until `stop`, counting every call.
async fn execute_loop(c: Client, name: String, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let word = format!("{name}-{i}");
        let started = Instant::now();
        let r = c
            .execute(&format!("echo {word}"), Some(Duration::from_secs(30)))
            .await;
        let took = started.elapsed();
        match r {
            Ok(out)
                if out.exit_code == 0 && String::from_utf8_lossy(&out.stdout).trim() == word =>
            {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                tally.latencies.lock().unwrap().push(took);
            }
            Ok(out) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                tally.errors.lock().unwrap().push(format!(
                    "{word}: exit {} stdout {:?}",
                    out.exit_code,
                    String::from_utf8_lossy(&out.stdout)
                ));
            }
            Err(e) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                tally.errors.lock().unwrap().push(format!("{word}: {e}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Samples the machine's route every few tens of milliseconds until
/// `stop`: (samples, samples without a route, route holders in turn).
fn sample_routes(
    pg: Arc<Postgres>,
    machine_id: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, usize, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut samples, mut empty, mut seen) = (0, 0, Vec::<String>::new());
        while !stop.load(Ordering::Relaxed) {
            let now = route_of(&pg, &machine_id);
            samples += 1;
            if now.is_empty() {
                empty += 1;
            }
            if seen.last() != Some(&now) {
                seen.push(now);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (samples, empty, seen)
    })
}

fn sigterm(pid: u32) {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_under_load_loses_no_call() {
    let pg = Arc::new(Postgres::start());
    let url = pg.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = ["rep_a", "rep_b", "rep_c"];
    let mut replicas: Vec<Server> = ids
        .iter()
        .map(|id| start_replica(&url, dir.path(), id, "127.0.0.1:0"))
        .collect();
    let addrs: Vec<String> = replicas.iter().map(|r| r.addr.clone()).collect();
    let ws = create_workspace_pg(&url, "alpha");
    let host = unique("rolling");
    let token = admin_pg(&url, &["enroll-token", "--workspace", "alpha"]);
    let list: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
    let _agent = start_agent(
        &addrs[0],
        Some(&token),
        &dir.path().join("agent.json"),
        &host,
        &[
            "--heartbeat-secs",
            "1",
            "--server",
            &list[1],
            "--server",
            &list[2],
        ],
    );
    let mut t = terminal(&addrs[0], Some(&ws.api_key)).await;
    wait_connected(&mut t, &host).await;
    let mut machine_id = String::new();
    for addr in &addrs {
        let mut e = ext(addr, Some(&ws.api_key)).await;
        machine_id = wait_native_exec(&mut e, &host).await.machine_id;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let resent = count_resends();
    let mut loops = Vec::new();
    for first in 0..addrs.len() {
        let c = client(&addrs, first, &ws.api_key, &host).await;
        loops.push(tokio::spawn(execute_loop(
            c,
            format!("via{first}"),
            stop.clone(),
            tally.clone(),
        )));
    }
    let sampler = sample_routes(pg.clone(), machine_id.clone(), stop.clone());
    // Let the loops run on the whole cluster first.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut restarted = [false; 3];
    let mut moves = 0;
    let mut long_checked = false;
    for _ in 0..ids.len() {
        // The replica holding the agent goes first (among those not
        // restarted yet), so that the agent moves as often as it can.
        let holder = route_of(&pg, &machine_id);
        let next = (0..ids.len())
            .filter(|&i| !restarted[i])
            .max_by_key(|&i| ids[i] == holder)
            .expect("a replica left");
        let holds_agent = ids[next] == holder;
        // A 10 s command on the agent, through the replica about to stop
        // (so it holds both the client's call and the agent's link).
        let long = if holds_agent && !long_checked {
            long_checked = true;
            let c = client(&addrs, next, &ws.api_key, &host).await;
            Some(tokio::spawn(async move {
                let r = c
                    .execute("sleep 10; echo long-done", Some(Duration::from_secs(60)))
                    .await;
                (r, c)
            }))
        } else {
            None
        };
        if long.is_some() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let pid = replicas[next].proc.pid();
        let stopped_at = Instant::now();
        sigterm(pid);
        if holds_agent {
            // The route follows the agent's new link while the old one
            // still drains.
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let now = route_of(&pg, &machine_id);
                if !now.is_empty() && now != holder {
                    eprintln!(
                        "{}: SIGTERM -> route on {now} after {} ms",
                        ids[next],
                        stopped_at.elapsed().as_millis()
                    );
                    moves += 1;
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the agent did not move off {} within 15 s",
                    ids[next]
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if let Some(long) = long {
            let (r, c) = long.await.expect("task");
            let out = r.expect("the 10 s command started before the SIGTERM");
            assert_eq!(out.exit_code, 0);
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "long-done");
            c.close().await;
        }
        wait_gone(pid as i32, Duration::from_secs(45), "SIGTERM").await;
        let _ = replicas[next].proc.0.wait();
        eprintln!(
            "{}: SIGTERM -> exited after {} ms",
            ids[next],
            stopped_at.elapsed().as_millis()
        );
        replicas[next] = start_replica(&url, dir.path(), ids[next], &addrs[next]);
        restarted[next] = true;
        // Every replica sees the restarted one's lease before the next stops.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.expect("loop");
    }
    let (samples, empty, seen) = sampler.join().expect("sampler");
    let ok = tally.ok.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    let mut lat = tally.latencies.lock().unwrap().clone();
    lat.sort();
    let pick = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize].as_millis();
    eprintln!(
        "rolling restart: {ok} calls ok, {failed} failed, {} resent; latency min {} ms, p50 {} ms, p99 {} ms, \
         max {} ms; agent moved {moves} time(s); route samples {samples}, without a route {empty}, \
         route holders in turn {seen:?}",
        resent.load(Ordering::Relaxed),
        pick(0.0),
        pick(0.5),
        pick(0.99),
        pick(1.0)
    );
    let errors = tally.errors.lock().unwrap().clone();
    // No call may be lost (issue 19). The calls that used to be: one queued
    // on the client's connection to the stopping replica when its GOAWAY
    // arrived (hyper hands it back unsent), and one whose stream the GOAWAY
    // put above the last one the replica processed; both never ran, and
    // the library sends them again (counted as resent above). A call whose
    // failure cannot prove that, e.g. hyper's GOAWAY for a request it had
    // not yet taken on while its HEADERS may have left (a window of a few
    // instructions, see `cmdop_proto::unsent::crossed_goaway`), is not
    // resent and would fail here, named as such.
    assert_eq!(
        failed,
        0,
        "{failed} of {} calls failed: {errors:#?}",
        ok + failed
    );
    assert!(ok > 0);
    assert!(moves >= 1, "the agent never had to move");
    assert!(long_checked, "no 10 s command ran across a SIGTERM");
    assert_eq!(empty, 0, "samples without a route: {seen:?}");
}
