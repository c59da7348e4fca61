//! One simulated idle agent: enroll, register over its own connection,
//! heartbeat, and reconnect the way the real agent does, reporting into the
//! shared counters (with several servers it fails over like the real agent
//! too). With [`Serving`] it also opens the exec channel with
//! declared labels and answers every command at once with exit 0, spawning
//! nothing: a fan-out's machines at the control plane's cost alone.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use cmdop_agent::{
    connection::{wait_and_pick, wait_before_retry},
    AgentConfig,
};
use cmdop_proto::backoff::{Backoff, AGENT_RECONNECT};
use cmdop_proto::{
    ext::{
        agent_downlink, agent_link_client::AgentLinkClient, agent_uplink, AgentHello, AgentUplink,
        EnrollRequest, ExecExit, ExecFinished,
    },
    terminal::{
        agent_message, control_message,
        terminal_streaming_service_client::TerminalStreamingServiceClient, AgentMessage,
        HeartbeatUpdate, RegisterRequest,
    },
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};

/// Heartbeat period of the real agent.
const HEARTBEAT: Duration = Duration::from_secs(25);
/// How long one agent may wait for `start_session`.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);
/// Messages an agent may queue towards the control plane.
const OUTBOUND_QUEUE: usize = 4;

/// Counters and timestamps every agent reports into, for the reconnect
/// measurement.
#[derive(Default)]
pub struct Stats {
    /// Connections that ended while the agents were not being stopped.
    pub lost: AtomicUsize,
    /// Agents that lost their connection at least once.
    pub agents_lost: AtomicUsize,
    /// Agents without a registered connection right now.
    pub down: AtomicUsize,
    /// When each connection ended.
    pub lost_at: Mutex<Vec<SystemTime>>,
    /// When each reconnect attempt started.
    pub attempts: Mutex<Vec<SystemTime>>,
    /// When each registration after a lost connection completed
    /// (`start_session` received).
    pub registered_again: Mutex<Vec<SystemTime>>,
    /// When each agent was first registered again after its first loss.
    pub first_back: Mutex<Vec<SystemTime>>,
    /// The first reason an attempt failed, for the log.
    pub first_failure: Mutex<Option<String>>,
    /// Agents registered on each server (by its place in `--server`) now.
    pub on_server: Vec<AtomicUsize>,
    /// Each registration after a lost connection: the server whose
    /// connection was lost, the server registered on, and when.
    pub moved: Mutex<Vec<(usize, usize, SystemTime)>>,
}

impl Stats {
    /// Counters for agents spread over `servers` servers.
    pub fn new(servers: usize) -> Stats {
        Stats {
            on_server: (0..servers).map(|_| AtomicUsize::new(0)).collect(),
            ..Default::default()
        }
    }
}

fn push(list: &Mutex<Vec<SystemTime>>, at: SystemTime) {
    list.lock().unwrap_or_else(|e| e.into_inner()).push(at);
}

/// Where agents connect: `[server][source]`, each route bound to one of the
/// source addresses (see [`source_address`]).
pub type Routes = Arc<Vec<Vec<Route>>>;

/// Where one agent connects: its endpoint (bound to its source address) and
/// the enrollment channel of that server.
#[derive(Clone)]
pub struct Route {
    pub endpoint: Endpoint,
    pub enroll_channel: Channel,
    pub probe_target: Option<(String, u16)>,
}

/// An open, registered terminal stream.
struct Connected {
    tx: mpsc::Sender<AgentMessage>,
    inbound: tonic::Streaming<cmdop_proto::terminal::ControlMessage>,
    session_id: String,
    channel: Channel,
}

/// What a simulated agent serves besides its terminal stream: with
/// `Some(labels)` the exec channel, declaring `labels`.
pub type Serving = Option<Arc<std::collections::HashMap<String, String>>>;

/// The uplink and downlink of an agent's exec channel.
type ExecLink = (
    mpsc::Sender<AgentUplink>,
    tonic::Streaming<cmdop_proto::ext::AgentDownlink>,
);

/// Opens the exec channel (`AgentLink.Channel`) of a registered session with
/// its hello.
async fn open_exec_link(
    channel: Channel,
    bearer: &MetadataValue<Ascii>,
    session_id: &str,
    labels: &std::collections::HashMap<String, String>,
) -> Result<ExecLink, String> {
    let bearer = bearer.clone();
    let mut link = AgentLinkClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", bearer.clone());
        Ok(req)
    });
    let (tx, rx) = mpsc::channel::<AgentUplink>(64);
    let hello = AgentHello {
        session_id: session_id.to_string(),
        agent_version: "cmdop-bench-agents".into(),
        capabilities: Vec::new(),
        labels: labels.clone(),
    };
    tx.send(AgentUplink {
        msg: Some(agent_uplink::Msg::Hello(hello)),
    })
    .await
    .map_err(|_| "the exec uplink closed".to_string())?;
    let down = link
        .channel(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("AgentLink.Channel: {}", s.message()))?
        .into_inner();
    Ok((tx, down))
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
        channel.clone(),
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
        channel,
    })
}

/// Serves one registered stream (heartbeats, ignoring what arrives; with
/// `serving`, every ExecStart answered with exit 0) until it ends (`false`)
/// or `stop` flips (`true`).
async fn stay_connected(
    c: Connected,
    bearer: &MetadataValue<Ascii>,
    serving: &Serving,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let Connected {
        tx,
        mut inbound,
        session_id,
        channel,
    } = c;
    let mut exec = match serving {
        Some(labels) => match open_exec_link(channel, bearer, &session_id, labels).await {
            Ok(link) => Some(link),
            Err(_) => return false,
        },
        None => None,
    };
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
            work = async {
                match exec.as_mut() {
                    Some((_, down)) => down.message().await,
                    None => std::future::pending().await,
                }
            } => match work {
                Ok(Some(cmdop_proto::ext::AgentDownlink {
                    msg: Some(agent_downlink::Msg::Start(start)),
                })) => {
                    let done = AgentUplink {
                        msg: Some(agent_uplink::Msg::Finished(ExecFinished {
                            exec_id: start.exec_id,
                            exit: Some(ExecExit::default()),
                            pid: 0,
                        })),
                    };
                    let Some((up, _)) = exec.as_ref() else { return false };
                    if up.send(done).await.is_err() {
                        return false;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return false,
            },
        }
    }
}

/// One simulated agent: enroll, connect, register; then report readiness and
/// stay connected until `stop` flips, reconnecting like the real agent
/// whenever the connection ends. It starts on server `home` of `routes`
/// (always through source address `source`); with several servers it picks
/// the next one as the real agent does
/// (`cmdop_agent::connection::wait_and_pick`: the others in a random order,
/// the lost one last, the first that answers a TCP probe), so the agents of
/// a killed replica spread over the survivors.
#[allow(clippy::too_many_arguments)]
pub async fn run_agent(
    routes: Routes,
    home: usize,
    source: usize,
    token: String,
    hostname: String,
    ready: mpsc::Sender<Result<Duration, String>>,
    mut stop: watch::Receiver<bool>,
    stats: Arc<Stats>,
    serving: Serving,
) {
    let started = Instant::now();
    let route = |server: usize| &routes[server][source];
    let first = async {
        let enrolled = AgentLinkClient::new(route(home).enroll_channel.clone())
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
        let connected = connect_and_register(&route(home).endpoint, &bearer, &hostname).await?;
        Ok::<_, String>((bearer, connected))
    }
    .await;

    let (bearer, mut connected) = match first {
        Ok(c) => {
            stats.on_server[home].fetch_add(1, Ordering::SeqCst);
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
    let probes: Vec<Option<(String, u16)>> = routes
        .iter()
        .map(|r| r[source].probe_target.clone())
        .collect();
    let mut current = home;
    let mut losses = 0u64;
    loop {
        backoff.connected(Instant::now());
        if stay_connected(connected, &bearer, &serving, &mut stop).await {
            return;
        }
        let lost_from = current;
        losses += 1;
        stats.on_server[lost_from].fetch_sub(1, Ordering::SeqCst);
        stats.down.fetch_add(1, Ordering::SeqCst);
        stats.lost.fetch_add(1, Ordering::Relaxed);
        if losses == 1 {
            stats.agents_lost.fetch_add(1, Ordering::SeqCst);
        }
        push(&stats.lost_at, SystemTime::now());
        backoff.lost(Instant::now());
        connected = loop {
            let delay = backoff.next_delay();
            let waited = async {
                if probes.len() == 1 {
                    wait_before_retry(delay, probes[0].as_ref()).await;
                    0
                } else {
                    wait_and_pick(delay, &probes, current).await
                }
            };
            tokio::select! {
                _ = stop.changed() => return,
                next = waited => current = next,
            }
            push(&stats.attempts, SystemTime::now());
            match connect_and_register(&route(current).endpoint, &bearer, &hostname).await {
                Ok(c) => {
                    let now = SystemTime::now();
                    push(&stats.registered_again, now);
                    if losses == 1 {
                        push(&stats.first_back, now);
                    }
                    stats
                        .moved
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((lost_from, current, now));
                    stats.on_server[current].fetch_add(1, Ordering::SeqCst);
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
pub fn source_address(run: u8, i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, run, 0, 1 + i as u8))
}
