//! `cmdop-bench-agents`: many idle agents in one process, each speaking the
//! real agent protocol over its own connection, to measure what an idle agent
//! costs the control plane and whether `execute` slows down with many of them.
//!
//! ```text
//! cmdop-bench-agents --server http://HOST:PORT[,http://HOST:PORT…] \
//!     (--data-dir DIR | CMDOP_DATABASE_URL=postgres://… in the environment) \
//!     --workspace NAME --agents N \
//!     [--parallel N] [--per-source N] [--control-plane-pid PID]… [--ready-file F]
//!     [--restart-file F] [--label TEXT] [--case NAME]
//! ```
//!
//! Each agent is enrolled with its own one-time token (minted straight into
//! the control plane's store — SQLite at `--data-dir` or a cluster's
//! PostgreSQL at `CMDOP_DATABASE_URL` — as `cmdop admin enroll-token` would, but
//! without a process per token), then opens
//! `ConnectTerminal`, registers, waits for `start_session` and stays
//! connected, sending a heartbeat every 25 s like the real agent. It serves no
//! commands (no terminal, no `AgentLink.Channel`): idle agents. With several
//! servers (a cluster's replicas) agent `i` connects to server `i mod n`.
//! A loopback address pair has only ~28,000 ephemeral ports, so agents bind
//! their connections to several source addresses, 127.R.0.1, 127.R.0.2, …
//! (`R` differs between runs), at most `--per-source` (10,000) agents each.
//!
//! An agent whose connection ends reconnects the way the real agent does:
//! the same backoff with jitter, reset after a connection that stayed up,
//! and the same probing wait (`cmdop_proto::backoff::AGENT_RECONNECT`,
//! `cmdop_agent::connection::wait_before_retry`), then registers again with
//! its agent secret.
//!
//! Once all agents are connected it prints one JSON record (format in
//! `bench/c/bench_common.h`; samples are the per-agent connect times) with the
//! control planes' resident memory before and after (summed over every
//! `--control-plane-pid`), writes `--ready-file`,
//! and holds the connections until SIGTERM or SIGINT.
//!
//! With `--restart-file F` it then measures a control-plane restart: the
//! harness stops the control plane, starts it again on the same port and
//! data directory and, once it listens, writes `F` as `PID EPOCH_SECONDS`
//! (the new control plane's pid and when it was ready). The simulator waits
//! until every agent has registered again, prints a second record (subject
//! `reconnect`: samples are each agent's time from the restart until it was
//! registered again, plus registrations and attempts per second), and
//! writes `F.done`.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context};
use cmdop_agent::{connection::wait_before_retry, AgentConfig};
use cmdop_controlplane::store::Store;
use cmdop_proto::backoff::{Backoff, AGENT_RECONNECT};
use cmdop_proto::{
    ext::{agent_link_client::AgentLinkClient, EnrollRequest},
    terminal::{
        agent_message, control_message,
        terminal_streaming_service_client::TerminalStreamingServiceClient, AgentMessage,
        HeartbeatUpdate, RegisterRequest,
    },
};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};

/// Heartbeat period of the real agent.
const HEARTBEAT: Duration = Duration::from_secs(25);
/// How long all agents together may take to connect.
const CONNECT_ALL_TIMEOUT: Duration = Duration::from_secs(600);
/// How long one agent may wait for `start_session`.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);
/// Messages an agent may queue towards the control plane.
const OUTBOUND_QUEUE: usize = 4;
/// Time for the control plane's allocations to settle before measuring.
const SETTLE: Duration = Duration::from_secs(2);
/// How long all agents together may take to register again after a
/// control-plane restart.
const RECONNECT_ALL_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the harness may take to restart the control plane.
const RESTART_TIMEOUT: Duration = Duration::from_secs(600);

const USAGE: &str = "usage: cmdop-bench-agents --server http://HOST:PORT[,http://HOST:PORT…] \
(--data-dir DIR | CMDOP_DATABASE_URL=postgres://… in the environment) --workspace NAME \
--agents N [--parallel N] \
[--per-source N] [--control-plane-pid PID]… [--ready-file F] [--restart-file F] \
[--label TEXT] [--case NAME]";

struct Args {
    servers: Vec<String>,
    data_dir: PathBuf,
    database: Option<String>,
    workspace: String,
    agents: usize,
    parallel: usize,
    per_source: usize,
    control_plane_pids: Vec<u32>,
    ready_file: Option<PathBuf>,
    restart_file: Option<PathBuf>,
    label: String,
    case: String,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        servers: Vec::new(),
        data_dir: PathBuf::new(),
        // The URL holds a password: never on a command line.
        database: std::env::var("CMDOP_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty()),
        workspace: String::new(),
        agents: 0,
        parallel: 64,
        per_source: 10_000,
        control_plane_pids: Vec::new(),
        ready_file: None,
        restart_file: None,
        label: String::new(),
        case: "agents-10k".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value; {USAGE}"))?;
        let count = |v: &str| {
            v.parse::<usize>()
                .with_context(|| format!("{flag}: '{v}' is not a count"))
        };
        match flag.as_str() {
            "--server" => args.servers.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            ),
            "--data-dir" => args.data_dir = value.into(),
            "--case" => args.case = value,
            "--workspace" => args.workspace = value,
            "--agents" => args.agents = count(&value)?,
            "--parallel" => args.parallel = count(&value)?,
            "--per-source" => args.per_source = count(&value)?,
            "--restart-file" => args.restart_file = Some(value.into()),
            "--control-plane-pid" => args.control_plane_pids.push(
                value
                    .parse()
                    .with_context(|| format!("--control-plane-pid: '{value}' is not a pid"))?,
            ),
            "--ready-file" => args.ready_file = Some(value.into()),
            "--label" => args.label = value,
            _ => bail!("unknown option {flag}; {USAGE}"),
        }
    }
    if args.servers.is_empty()
        || (args.data_dir.as_os_str().is_empty() == args.database.is_none())
        || args.workspace.is_empty()
    {
        bail!(
            "--server, one of --data-dir and CMDOP_DATABASE_URL, and --workspace are required; {USAGE}"
        );
    }
    if args.agents == 0 || args.parallel == 0 || args.per_source == 0 {
        bail!("--agents, --parallel and --per-source must be > 0");
    }
    if args.agents.div_ceil(args.per_source) > 250 {
        bail!("--agents / --per-source needs more than 250 source addresses; raise --per-source");
    }
    if args.label.is_empty() {
        args.label = format!("{} idle agents", args.agents);
    }
    Ok(args)
}

/// Current resident set (VmRSS, KiB) of all `pids` together; -1 when
/// there are none or one is unknown.
fn vm_rss_kb(pids: &[u32]) -> i64 {
    if pids.is_empty() {
        return -1;
    }
    pids.iter()
        .map(|&pid| one_vm_rss_kb(pid))
        .try_fold(0i64, |sum, kb| (kb >= 0).then_some(sum + kb))
        .unwrap_or(-1)
}

fn one_vm_rss_kb(pid: u32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(-1)
}

/// Opens the control plane's store: the SQLite one in `data_dir`, or the
/// cluster's PostgreSQL database at `database`.
fn open_store(data_dir: &std::path::Path, database: Option<&str>) -> anyhow::Result<Store> {
    Store::open_at(data_dir, database).with_context(|| match database {
        Some(_) => "cannot open the control plane's PostgreSQL database".to_string(),
        None => format!(
            "cannot open the control plane's state in {}",
            data_dir.display()
        ),
    })
}

/// Mints `n` one-time enrollment tokens for `workspace`.
fn mint_tokens(
    data_dir: &std::path::Path,
    database: Option<&str>,
    workspace: &str,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let store = open_store(data_dir, database)?;
    let ws = store.workspace_by_name(workspace)?.with_context(|| {
        format!("no workspace named '{workspace}' in the control plane's store")
    })?;
    (0..n)
        .map(|_| store.create_enrollment_token(&ws.id))
        .collect()
}

/// Counters and timestamps every agent reports into, for the reconnect
/// measurement.
#[derive(Default)]
struct Stats {
    /// Connections that ended while the agents were not being stopped.
    lost: AtomicUsize,
    /// Agents that lost their connection at least once.
    agents_lost: AtomicUsize,
    /// Agents without a registered connection right now.
    down: AtomicUsize,
    /// When each connection ended.
    lost_at: Mutex<Vec<SystemTime>>,
    /// When each reconnect attempt started.
    attempts: Mutex<Vec<SystemTime>>,
    /// When each registration after a lost connection completed
    /// (`start_session` received).
    registered_again: Mutex<Vec<SystemTime>>,
    /// When each agent was first registered again after its first loss.
    first_back: Mutex<Vec<SystemTime>>,
    /// The first reason an attempt failed, for the log.
    first_failure: Mutex<Option<String>>,
}

fn push(list: &Mutex<Vec<SystemTime>>, at: SystemTime) {
    list.lock().unwrap_or_else(|e| e.into_inner()).push(at);
}

/// Where one agent connects: its endpoint (bound to its source address) and
/// the enrollment channel of that server.
#[derive(Clone)]
struct Route {
    endpoint: Endpoint,
    enroll_channel: Channel,
    probe_target: Option<(String, u16)>,
}

/// An open, registered terminal stream.
struct Connected {
    tx: mpsc::Sender<AgentMessage>,
    inbound: tonic::Streaming<cmdop_proto::terminal::ControlMessage>,
    session_id: String,
}

/// Opens a connection, starts `ConnectTerminal` with `register` and waits
/// for `start_session`.
async fn connect_and_register(
    endpoint: &Endpoint,
    bearer: &MetadataValue<Ascii>,
    hostname: &str,
) -> Result<Connected, String> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let bearer = bearer.clone();
    let mut client = TerminalStreamingServiceClient::with_interceptor(
        channel,
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", bearer.clone());
            Ok(req)
        },
    );
    let (tx, rx) = mpsc::channel::<AgentMessage>(OUTBOUND_QUEUE);
    let register = RegisterRequest {
        version: "cmdop-bench-agents".into(),
        hostname: hostname.to_string(),
        platform: "linux".into(),
        has_shell: false,
        ..Default::default()
    };
    tx.send(message(
        String::new(),
        agent_message::Payload::Register(register),
    ))
    .await
    .map_err(|_| "the outbound stream closed".to_string())?;
    let mut inbound = client
        .connect_terminal(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("ConnectTerminal: {}", s.message()))?
        .into_inner();
    let session_id = tokio::time::timeout(REGISTER_TIMEOUT, async {
        loop {
            match inbound.message().await {
                Ok(Some(m)) => {
                    if let Some(control_message::Payload::StartSession(start)) = m.payload {
                        return Ok(start.config.map(|c| c.session_id).unwrap_or_default());
                    }
                }
                Ok(None) => {
                    return Err(
                        "the control plane closed the stream before start_session".to_string()
                    )
                }
                Err(s) => return Err(format!("register: {}", s.message())),
            }
        }
    })
    .await
    .map_err(|_| "no start_session within 60 s".to_string())??;
    Ok(Connected {
        tx,
        inbound,
        session_id,
    })
}

/// Serves one registered stream (heartbeats, ignoring what arrives) until
/// it ends (`false`) or `stop` flips (`true`).
async fn stay_connected(c: Connected, stop: &mut watch::Receiver<bool>) -> bool {
    let Connected {
        tx,
        mut inbound,
        session_id,
    } = c;
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    loop {
        tokio::select! {
            _ = stop.changed() => return true,
            _ = heartbeat.tick() => {
                let beat = message(session_id.clone(), agent_message::Payload::Heartbeat(HeartbeatUpdate::default()));
                if tx.send(beat).await.is_err() {
                    return false;
                }
            }
            msg = inbound.message() => match msg {
                // Idle agents ignore what they are sent; a ping is answered
                // by the next heartbeat.
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return false,
            },
        }
    }
}

/// One simulated agent: enroll, connect, register; then report readiness and
/// stay connected until `stop` flips, reconnecting like the real agent
/// whenever the connection ends.
async fn run_agent(
    route: Route,
    token: String,
    hostname: String,
    ready: mpsc::Sender<Result<Duration, String>>,
    mut stop: watch::Receiver<bool>,
    stats: Arc<Stats>,
) {
    let started = Instant::now();
    let first = async {
        let enrolled = AgentLinkClient::new(route.enroll_channel.clone())
            .enroll(EnrollRequest {
                enrollment_token: token,
                hostname: hostname.clone(),
            })
            .await
            .map_err(|s| format!("enroll: {}", s.message()))?
            .into_inner();
        let bearer: MetadataValue<Ascii> = format!("Bearer {}", enrolled.agent_secret)
            .parse()
            .map_err(|_| "the agent secret is not a valid header value".to_string())?;
        let connected = connect_and_register(&route.endpoint, &bearer, &hostname).await?;
        Ok::<_, String>((bearer, connected))
    }
    .await;

    let (bearer, mut connected) = match first {
        Ok(c) => {
            let _ = ready.send(Ok(started.elapsed())).await;
            c
        }
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            return;
        }
    };
    drop(ready);

    // The real agent's reconnect loop (`cmdop_agent::connection`): reset the
    // backoff after a connection that stayed up, wait out the next jittered
    // delay (probing), try again.
    let config = AgentConfig::default();
    let mut backoff = Backoff::new(AGENT_RECONNECT, config.reconnect_base, config.reconnect_max);
    let mut losses = 0u64;
    loop {
        backoff.connected(Instant::now());
        if stay_connected(connected, &mut stop).await {
            return;
        }
        losses += 1;
        stats.down.fetch_add(1, Ordering::SeqCst);
        stats.lost.fetch_add(1, Ordering::Relaxed);
        if losses == 1 {
            stats.agents_lost.fetch_add(1, Ordering::SeqCst);
        }
        push(&stats.lost_at, SystemTime::now());
        backoff.lost(Instant::now());
        connected = loop {
            let delay = backoff.next_delay();
            tokio::select! {
                _ = stop.changed() => return,
                () = wait_before_retry(delay, route.probe_target.as_ref()) => {}
            }
            push(&stats.attempts, SystemTime::now());
            match connect_and_register(&route.endpoint, &bearer, &hostname).await {
                Ok(c) => {
                    let now = SystemTime::now();
                    push(&stats.registered_again, now);
                    if losses == 1 {
                        push(&stats.first_back, now);
                    }
                    stats.down.fetch_sub(1, Ordering::SeqCst);
                    break c;
                }
                Err(why) => {
                    let mut first = stats
                        .first_failure
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    first.get_or_insert(why);
                }
            }
        };
    }
}

fn message(session_id: String, payload: agent_message::Payload) -> AgentMessage {
    AgentMessage {
        session_id,
        payload: Some(payload),
        ..Default::default()
    }
}

/// The `i`-th source address agents bind to: `127.R.0.(1 + i)`, with `R`
/// picked per run. A socket bound before connecting cannot take a port still
/// in TIME_WAIT from the previous run's connections (those the simulator
/// closed), so runs in a row must not share source addresses.
fn source_address(run: u8, i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, run, 0, 1 + i as u8))
}

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

/// Waits for the harness's restart file, `PID EPOCH_SECONDS`.
async fn wait_restart_file(path: &std::path::Path) -> anyhow::Result<(u32, SystemTime)> {
    let deadline = Instant::now() + RESTART_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            let mut words = text.split_whitespace();
            if let (Some(pid), Some(at)) = (words.next(), words.next()) {
                let pid: u32 = pid
                    .parse()
                    .with_context(|| format!("{}: '{pid}' is not a pid", path.display()))?;
                let at: f64 = at
                    .parse()
                    .with_context(|| format!("{}: '{at}' is not a time", path.display()))?;
                return Ok((pid, UNIX_EPOCH + Duration::from_secs_f64(at)));
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the harness did not restart the control plane within {} s ({} never appeared)",
                RESTART_TIMEOUT.as_secs(),
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The restart measurement: waits for the harness to restart the control
/// plane, then for all `expected` agents to register again, and prints its
/// record.
async fn measure_restart(
    args: &Args,
    path: &std::path::Path,
    expected: usize,
    stats: &Stats,
) -> anyhow::Result<()> {
    let (new_pid, ready_at) = wait_restart_file(path).await?;
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

async fn run(args: Args) -> anyhow::Result<bool> {
    let data_dir = args.data_dir.clone();
    let database = args.database.clone();
    let workspace = args.workspace.clone();
    let n = args.agents;
    let tokens = tokio::task::spawn_blocking(move || {
        mint_tokens(&data_dir, database.as_deref(), &workspace, n)
    })
    .await
    .context("token minting task failed")??;

    // One enrollment channel per server, and one endpoint per server and
    // source address.
    let sources = n.div_ceil(args.per_source);
    let run = 1 + (std::process::id() % 254) as u8;
    let mut servers = Vec::with_capacity(args.servers.len());
    for server in &args.servers {
        let endpoint = Endpoint::from_shared(server.clone())
            .with_context(|| format!("invalid server URL '{server}'; expected http://host:port"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10));
        let enroll_channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach the control plane at {server}"))?;
        let probe_target = cmdop_agent::probe::target(endpoint.uri());
        let routes: Vec<Route> = (0..sources)
            .map(|s| Route {
                endpoint: endpoint.clone().local_address(Some(source_address(run, s))),
                enroll_channel: enroll_channel.clone(),
                probe_target: probe_target.clone(),
            })
            .collect();
        servers.push(routes);
    }

    let rss_before = vm_rss_kb(&args.control_plane_pids);
    let stats = Arc::new(Stats::default());
    let (ready_tx, mut ready_rx) = mpsc::channel(args.parallel.max(16));
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(args.parallel));
    let started = Instant::now();
    let pid = std::process::id();

    // Start agents at most `parallel` at a time; each frees its slot once it
    // is connected (or has failed).
    let spawner = {
        let slots = slots.clone();
        let stop_rx = stop_rx.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut handles = Vec::with_capacity(tokens.len());
            for (i, token) in tokens.into_iter().enumerate() {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let (agent_ready, mut agent_ready_rx) = mpsc::channel(1);
                let ready_tx = ready_tx.clone();
                tokio::spawn(async move {
                    if let Some(outcome) = agent_ready_rx.recv().await {
                        let _ = ready_tx.send(outcome).await;
                    }
                    drop(permit);
                });
                let routes = &servers[i % servers.len()];
                let route = routes[(i / servers.len()) % routes.len()].clone();
                handles.push(tokio::spawn(run_agent(
                    route,
                    token,
                    format!("sim-{pid}-{i}"),
                    agent_ready,
                    stop_rx.clone(),
                    stats.clone(),
                )));
            }
            handles
        })
    };

    let mut samples = Vec::with_capacity(n);
    let mut errors = 0usize;
    let deadline = tokio::time::Instant::now() + CONNECT_ALL_TIMEOUT;
    while samples.len() + errors < n {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(Ok(took))) => samples.push(took.as_secs_f64() * 1e6),
            Ok(Some(Err(why))) => {
                if errors == 0 {
                    eprintln!("cmdop-bench-agents: an agent failed to connect: {why}");
                }
                errors += 1;
            }
            Ok(None) => break,
            Err(_) => {
                eprintln!(
                    "cmdop-bench-agents: only {} of {n} agents connected within {} s",
                    samples.len(),
                    CONNECT_ALL_TIMEOUT.as_secs()
                );
                errors = n - samples.len();
                break;
            }
        }
    }
    let wall = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    let rss_after = vm_rss_kb(&args.control_plane_pids);

    let record = serde_json::json!({
        "case": args.case,
        "subject": "idle-agents",
        "label": args.label,
        "runs": n,
        "concurrency": args.parallel,
        "wall_s": wall.as_secs_f64(),
        "ops_per_s": if wall.as_secs_f64() > 0.0 { samples.len() as f64 / wall.as_secs_f64() } else { 0.0 },
        "errors": errors,
        "bytes": 0,
        "agents": samples.len(),
        "servers": args.servers.len(),
        "source_addresses": sources,
        "rss_kb": { "controlplane_before": rss_before, "controlplane_after": rss_after },
        "samples_us": samples.iter().map(|v| (v * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
    });
    println!("{record}");
    if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{}\n", samples.len()))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }

    if let Some(path) = &args.restart_file {
        tokio::select! {
            measured = measure_restart(&args, path, samples.len(), &stats) => measured?,
            () = shutdown_signal() => return Ok(false),
        }
    }

    shutdown_signal().await;
    let _ = stop_tx.send(true);
    if let Ok(handles) = spawner.await {
        for h in handles {
            let _ = h.await;
        }
    }
    Ok(errors < n)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> std::process::ExitCode {
    let result = parse_args().and_then(|args| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the tokio runtime")?;
        rt.block_on(run(args))
    });
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cmdop-bench-agents: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
