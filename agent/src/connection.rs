//! One agent's life on the network: connect, register, serve the terminal
//! stream (and the exec channel next to it), and reconnect with backoff and
//! jitter forever when anything breaks.

use std::{
    future::Future,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use cmdop_proto::backoff::{Backoff, AGENT_RECONNECT};
use cmdop_proto::ext::MoveLink;
use cmdop_proto::terminal::{
    agent_message, control_message,
    terminal_streaming_service_client::TerminalStreamingServiceClient, AgentMessage,
    ControlMessage, ErrorReport, FileOperationRequest, FileOperationResult, HeartbeatUpdate,
    RegisterRequest, SessionStatus, StatusUpdate, TerminalOutput, TerminalSize,
};
use rand::seq::SliceRandom;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;

use crate::{
    config::AgentConfig,
    enroll::error_chain,
    exec_link::{self, LinkEnd},
    files,
    host_info::HostInfo,
    probe::{self, Verdict},
    pty_session::{PtySession, DEFAULT_COLS, DEFAULT_ROWS},
    state::AgentState,
    transport::{self, AuthedChannel, BearerAuth, MAX_MESSAGE},
};

/// Version string reported to the control plane.
pub fn agent_version() -> String {
    format!("cmdop-agent/{}", env!("CARGO_PKG_VERSION"))
}

/// Capability advertised when native Exec is served.
pub use cmdop_proto::caps::AGENT_NATIVE_EXEC as EXEC_CAPABILITY;
/// Messages queued towards the control plane before senders wait.
const OUTBOUND_QUEUE: usize = 128;
/// How long the control plane may take to answer `register`.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);
/// File operations running at once (each may hold up to 32 MiB).
const MAX_CONCURRENT_FILE_OPS: usize = 4;

/// Everything a connection needs, alive for the whole agent process.
pub struct Agent<'a> {
    pub config: &'a AgentConfig,
    pub state: &'a AgentState,
    pub host: &'a HostInfo,
    pub pty: &'a PtySession,
}

/// Per-process state that survives reconnects.
struct Session {
    /// Chosen once per process (or adopted from the server) so SDK-cached
    /// session ids survive reconnects.
    id: String,
    /// Sequence number of the next output chunk.
    sequence: i64,
}

impl Agent<'_> {
    /// Connects and serves until `shutdown` resolves, reconnecting forever.
    /// Fails only on configuration errors (bad URL, unreadable CA file).
    pub async fn serve_forever(&self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let servers = self.config.servers();
        let endpoints = servers
            .iter()
            .map(|s| transport::endpoint(s, self.config.ca_cert.as_deref()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let auth = BearerAuth::new(Some(&self.state.agent_secret))?;
        let mut session = Session {
            id: uuid::Uuid::new_v4().to_string(),
            sequence: 0,
        };
        let mut backoff = Backoff::new(
            AGENT_RECONNECT,
            self.config.reconnect_base,
            self.config.reconnect_max,
        );
        let probe_targets: Vec<_> = endpoints.iter().map(|e| probe::target(e.uri())).collect();
        // A random entry of the list, so that agents with the same list
        // spread over the replicas.
        let mut current = if self.config.servers_in_order {
            0
        } else {
            rand::random_range(0..servers.len())
        };
        // With other servers to go to, the agent moves when a control
        // plane that is stopping asks it to (see `run_connection`).
        let can_move = servers.len() > 1;
        // The old link of a move, told the new link's server once it is up.
        let mut moved_from: Option<oneshot::Sender<String>> = None;
        tokio::pin!(shutdown);
        for attempt in 1u64.. {
            let server = &servers[current];
            tracing::info!(attempt, server = %server, "connecting to the control plane");
            let mut connected_at = None;
            let ended = tokio::select! {
                ended = self.run_connection(&endpoints[current], server, &auth, &mut session, &mut connected_at, Moves { from: moved_from.take(), can: can_move }) => ended,
                () = &mut shutdown => {
                    tracing::info!("agent shutting down");
                    return Ok(());
                }
            };
            let ended = match ended {
                Ok(Ended::Moving(moved)) => {
                    // No backoff: the old link stays up for its running
                    // commands while the new one opens.
                    let next = wait_and_pick(Duration::ZERO, &probe_targets, current).await;
                    tracing::info!(from = %server, to = %servers[next],
                        "the control plane is stopping; moving to another of the list (running commands finish on the old link)");
                    crate::metrics::reconnect();
                    current = next;
                    moved_from = Some(moved);
                    continue;
                }
                Ok(Ended::Closed(why)) => Ok(why),
                Err(e) => Err(e),
            };
            crate::metrics::connected(false);
            crate::metrics::reconnect();
            if let Some(up) = connected_at {
                backoff.connected(up);
                backoff.lost(Instant::now());
            }
            let delay = backoff.next_delay();
            match ended {
                Ok(why) => {
                    tracing::warn!(server = %server, reason = %why, retry_in = ?delay, "connection ended; reconnecting")
                }
                Err(e) => {
                    tracing::warn!(server = %server, error = %format!("{e:#}"), retry_in = ?delay, "connection failed; reconnecting")
                }
            }
            if servers.len() == 1 {
                tokio::select! {
                    () = wait_before_retry(delay, probe_targets[0].as_ref()) => {}
                    () = &mut shutdown => {
                        tracing::info!("agent shutting down");
                        return Ok(());
                    }
                }
                continue;
            }
            let next = tokio::select! {
                next = wait_and_pick(delay, &probe_targets, current) => next,
                () = &mut shutdown => {
                    tracing::info!("agent shutting down");
                    return Ok(());
                }
            };
            if next != current {
                tracing::info!(from = %server, to = %servers[next], "moving to another control plane of the list");
                current = next;
            }
        }
        Ok(())
    }

    /// One connection: returns why it ended, or that it is moving (the
    /// control plane asked: its old link lives on in a task of its own
    /// until its running commands end).
    async fn run_connection(
        &self,
        endpoint: &tonic::transport::Endpoint,
        server: &str,
        auth: &BearerAuth,
        session: &mut Session,
        connected_at: &mut Option<Instant>,
        moves: Moves,
    ) -> anyhow::Result<Ended> {
        let Moves {
            from: moved_from,
            can: can_move,
        } = moves;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {server}: {}", error_chain(&e)))?;
        let authed: AuthedChannel = InterceptedService::new(channel, auth.clone());
        let mut client = TerminalStreamingServiceClient::new(authed.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);

        let (tx, rx) = mpsc::channel::<AgentMessage>(OUTBOUND_QUEUE);
        let out = Outbound {
            tx,
            session_id: session.id.clone(),
        };
        out.send(agent_message::Payload::Register(self.register_request()))
            .await?;
        let mut inbound = client
            .connect_terminal(ReceiverStream::new(rx))
            .await
            .map_err(|s| status_error("the control plane refused the terminal stream", &s))?
            .into_inner();

        // Wait for start_session; it may assign the session id.
        let config = tokio::time::timeout(REGISTER_TIMEOUT, async {
            loop {
                match inbound.message().await {
                    Ok(Some(ControlMessage {
                        payload: Some(control_message::Payload::StartSession(start)),
                        ..
                    })) => {
                        return Ok(start.config.unwrap_or_default());
                    }
                    Ok(Some(other)) => {
                        tracing::debug!(?other, "ignoring a message received before start_session")
                    }
                    Ok(None) => {
                        anyhow::bail!("the control plane closed the stream before start_session")
                    }
                    Err(s) => return Err(status_error("registration failed", &s)),
                }
            }
        })
        .await
        .context("the control plane did not answer register with start_session within 30 s")??;
        if !config.session_id.is_empty() && config.session_id != session.id {
            tracing::info!(session_id = %config.session_id, "adopting the session id assigned by the control plane");
            session.id = config.session_id.clone();
        }
        let out = Outbound {
            session_id: session.id.clone(),
            ..out
        };
        if let Some(size) = &config.size {
            self.apply_resize(size);
        }
        *connected_at = Some(Instant::now());
        crate::metrics::connected(true);
        tracing::info!(session_id = %session.id, machine_id = %self.state.machine_id, server = %server, "connected");

        let (ask_tx, mut ask_rx) = mpsc::channel::<MoveLink>(1);
        let (moved_tx, moved_rx) = oneshot::channel::<String>();
        let mut moved_tx = Some(moved_tx);
        // Owned, so that a move can hand it to the old link's task.
        let mut exec: Pin<Box<dyn Future<Output = anyhow::Error> + Send>> = if self
            .config
            .native_exec
        {
            let hooks = exec_link::Hooks {
                ready: moved_from,
                moves: can_move.then_some(exec_link::MoveHooks {
                    asked: ask_tx,
                    moved: moved_rx,
                }),
            };
            let served = exec_link::serve(
                authed.clone(),
                session.id.clone(),
                agent_version(),
                self.config.labels.clone(),
                self.host.home_dir.clone(),
                server.to_owned(),
                hooks,
            );
            Box::pin(async move {
                match served.await {
                    Ok(LinkEnd::Unsupported) => {
                        tracing::info!(
                                "control plane does not offer native exec; serving the terminal path only"
                            );
                        std::future::pending::<anyhow::Error>().await
                    }
                    Ok(LinkEnd::Closed) => {
                        anyhow::anyhow!("the control plane closed the exec channel")
                    }
                    Err(s) => status_error("the exec channel failed", &s),
                }
            })
        } else {
            if let Some(old) = moved_from {
                let _ = old.send(server.to_owned());
            }
            Box::pin(std::future::pending())
        };

        let period = self
            .config
            .heartbeat_interval
            .max(Duration::from_millis(100));
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shell_generation = self.pty.generation();
        shell_generation.borrow_and_update();
        let (file_tx, mut file_rx) = mpsc::channel::<FileOperationResult>(MAX_CONCURRENT_FILE_OPS);
        let file_slots = Arc::new(Semaphore::new(MAX_CONCURRENT_FILE_OPS));

        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(msg)) => {
                        if let Some(why) = self.handle_control(msg, &out, &file_tx, &file_slots).await? {
                            return Ok(Ended::Closed(why));
                        }
                    }
                    Ok(None) => return Ok(Ended::Closed("the control plane closed the terminal stream".into())),
                    Err(s) => return Err(status_error("the terminal stream failed", &s)),
                },
                chunk = self.pty.next_output() => {
                    let seq = session.sequence;
                    session.sequence += 1;
                    out.send(agent_message::Payload::Output(TerminalOutput { data: chunk.into(), is_stderr: false, sequence: seq })).await?;
                }
                Some(result) = file_rx.recv() => {
                    out.send(agent_message::Payload::FileOperationResult(result)).await?;
                }
                _ = heartbeat.tick() => {
                    out.send(agent_message::Payload::Heartbeat(HeartbeatUpdate::default())).await?;
                }
                Ok(()) = shell_generation.changed() => {
                    out.send(agent_message::Payload::Status(StatusUpdate {
                        old_status: SessionStatus::Connected as i32,
                        new_status: SessionStatus::Connected as i32,
                        reason: "shell restarted".into(),
                        working_directory: self.pty.working_directory().display().to_string(),
                    })).await?;
                }
                err = &mut exec => return Err(err),
                Some(ask) = ask_rx.recv() => {
                    let Some(moved) = moved_tx.take() else { continue };
                    tracing::info!(reason = %ask.reason, grace_ms = ask.grace_ms, server = %server,
                        "the control plane asks this agent to move; its running commands finish on this link");
                    tokio::spawn(linger(inbound, out, exec, period));
                    return Ok(Ended::Moving(moved));
                }
            }
        }
    }

    /// Acts on one control message. `Some(reason)` ends the connection.
    async fn handle_control(
        &self,
        msg: ControlMessage,
        out: &Outbound,
        file_tx: &mpsc::Sender<FileOperationResult>,
        file_slots: &Arc<Semaphore>,
    ) -> anyhow::Result<Option<String>> {
        use control_message::Payload as P;
        match msg.payload {
            Some(P::Input(input)) => self.pty.write_input(input.data.to_vec()).await,
            Some(P::Resize(resize)) => {
                if let Some(size) = resize.size {
                    self.apply_resize(&size);
                }
            }
            Some(P::Signal(sig)) => {
                if let Err(e) = self.pty.signal(sig.signal) {
                    tracing::warn!(signal = sig.signal, error = %format!("{e:#}"), "cannot deliver signal");
                    out.send(agent_message::Payload::Error(ErrorReport {
                        error_code: "SIGNAL_FAILED".into(),
                        message: format!("{e:#}"),
                        can_retry: true,
                        ..Default::default()
                    }))
                    .await?;
                }
            }
            Some(P::Ping(_)) => {
                out.send(agent_message::Payload::Heartbeat(HeartbeatUpdate::default()))
                    .await?
            }
            Some(P::CloseSession(close)) => {
                return Ok(Some(format!(
                    "the control plane closed the session ({})",
                    close.reason
                )));
            }
            Some(P::FileOperation(req)) => {
                self.spawn_file_operation(req, file_tx, file_slots).await
            }
            Some(P::StartSession(_)) => tracing::debug!("ignoring a repeated start_session"),
            Some(other) => tracing::debug!(?other, "ignoring an unsupported control message"),
            None => tracing::debug!("ignoring an unknown control message"),
        }
        Ok(None)
    }

    /// Runs a file operation on the blocking pool; its result arrives on `file_tx`.
    async fn spawn_file_operation(
        &self,
        req: FileOperationRequest,
        file_tx: &mpsc::Sender<FileOperationResult>,
        file_slots: &Arc<Semaphore>,
    ) {
        // Waiting for a slot holds up the stream a little: backpressure
        // against a flood of large reads.
        let Ok(permit) = Arc::clone(file_slots).acquire_owned().await else {
            return;
        };
        let home: PathBuf = self.host.home_dir.clone();
        let tx = file_tx.clone();
        tokio::spawn(async move {
            let request_id = req.request_id.clone();
            let result = tokio::task::spawn_blocking(move || files::handle(req, &home))
                .await
                .unwrap_or_else(|e| FileOperationResult {
                    request_id,
                    success: false,
                    error_code: "INTERNAL".into(),
                    error_message: format!("the file operation crashed in the agent: {e}"),
                    ..Default::default()
                });
            drop(permit);
            let _ = tx.send(result).await;
        });
    }

    fn apply_resize(&self, size: &TerminalSize) {
        let rows = u16::try_from(size.rows).unwrap_or(0);
        let cols = u16::try_from(size.cols).unwrap_or(0);
        if rows == 0 || cols == 0 {
            return;
        }
        if let Err(e) = self.pty.resize(rows, cols) {
            tracing::warn!(error = %format!("{e:#}"), "cannot resize the terminal");
        }
    }

    fn register_request(&self) -> RegisterRequest {
        let h = self.host;
        RegisterRequest {
            version: agent_version(),
            hostname: h.hostname.clone(),
            platform: h.platform.clone(),
            supported_shells: h.supported_shells.clone(),
            initial_size: Some(TerminalSize {
                rows: i32::from(DEFAULT_ROWS),
                cols: i32::from(DEFAULT_COLS),
                ..Default::default()
            }),
            architecture: h.architecture.clone(),
            device_id: self.state.machine_id.clone(),
            device_type: "desktop".into(),
            has_shell: true,
            username: h.username.clone(),
            uid: h.uid,
            is_root: h.is_root(),
            home_dir: h.home_dir.display().to_string(),
            os_version: h.os_version.clone(),
            kernel_version: h.kernel_version.clone(),
            cpu_count: h.cpu_count,
            total_ram: h.total_ram,
            agent_capabilities: if self.config.native_exec {
                vec![EXEC_CAPABILITY.into()]
            } else {
                Vec::new()
            },
            ..Default::default()
        }
    }
}

/// A connection's part in moves.
struct Moves {
    /// The old link of a move, told this connection's server once its
    /// Channel is open (it then reports `LinkMoved`).
    from: Option<oneshot::Sender<String>>,
    /// The agent has other servers: it may be asked to move.
    can: bool,
}

/// How a connection ended.
enum Ended {
    /// Closed or lost, and why: reconnect after a backoff.
    Closed(String),
    /// Asked to move: connect to another server now, and tell the old
    /// link (through this) once the new one is up.
    Moving(oneshot::Sender<String>),
}

/// The old link of a move: keeps its terminal stream alive (heartbeats,
/// pings) while its Channel serves the commands that were running, until
/// the control plane closes it (their work done, or its grace over) or it
/// breaks. Dropping the Channel then stops whatever still runs on it.
async fn linger(
    mut inbound: tonic::Streaming<ControlMessage>,
    out: Outbound,
    mut exec: Pin<Box<dyn Future<Output = anyhow::Error> + Send>>,
    period: Duration,
) {
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let why = loop {
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(ControlMessage { payload: Some(control_message::Payload::Ping(_)), .. })) => {
                    if out.send(agent_message::Payload::Heartbeat(HeartbeatUpdate::default())).await.is_err() {
                        break "the terminal stream ended".to_string();
                    }
                }
                Ok(Some(ControlMessage { payload: Some(control_message::Payload::CloseSession(close)), .. })) => {
                    break format!("the control plane closed it ({})", close.reason);
                }
                // The terminal moved with the new link: input, resizes and
                // the rest go there.
                Ok(Some(_)) => {}
                Ok(None) => break "the control plane closed the terminal stream".to_string(),
                Err(s) => break format!("{:#}", status_error("the terminal stream failed", &s)),
            },
            _ = heartbeat.tick() => {
                if out.send(agent_message::Payload::Heartbeat(HeartbeatUpdate::default())).await.is_err() {
                    break "the terminal stream ended".to_string();
                }
            }
            err = &mut exec => break format!("{err:#}"),
        }
    };
    tracing::info!(reason = %why, "the old link of a move ended");
}

/// Sends `AgentMessage`s stamped with the session id and time.
struct Outbound {
    tx: mpsc::Sender<AgentMessage>,
    session_id: String,
}

impl Outbound {
    async fn send(&self, payload: agent_message::Payload) -> anyhow::Result<()> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let msg = AgentMessage {
            session_id: self.session_id.clone(),
            message_id: String::new(),
            timestamp: Some(prost_types::Timestamp {
                seconds: now.as_secs() as i64,
                nanos: now.subsec_nanos() as i32,
            }),
            payload: Some(payload),
        };
        self.tx
            .send(msg)
            .await
            .map_err(|_| anyhow::anyhow!("the terminal stream to the control plane is gone"))
    }
}

/// Turns a gRPC status into an error that says what to do.
fn status_error(context: &str, status: &tonic::Status) -> anyhow::Error {
    let hint = match status.code() {
        tonic::Code::Unauthenticated => {
            "; the agent secret was rejected: if this machine was removed, delete the agent state file and enroll again with a new token"
        }
        tonic::Code::PermissionDenied => "; the agent is not allowed to do this",
        _ => "",
    };
    anyhow::anyhow!("{context}: {:?}: {}{hint}", status.code(), status.message())
}

/// Sleeps out a backoff `delay`, but returns early (after a small random
/// spread) when TCP probes of `target` see the control plane come back after
/// being unreachable; see [`probe`]. Public so that the many-agents
/// benchmark's simulated agents wait exactly like the real one.
pub async fn wait_before_retry(delay: Duration, target: Option<&(String, u16)>) {
    let deadline = tokio::time::Instant::now() + delay;
    let Some((host, port)) = target.filter(|_| probe::worth_probing(delay)) else {
        tokio::time::sleep_until(deadline).await;
        return;
    };
    let mut watch = probe::HealWatch::default();
    loop {
        let reachable = probe::reachable(host, *port).await;
        match watch.observe(reachable) {
            Verdict::KeepProbing => {}
            Verdict::WaitOut => break,
            Verdict::ReconnectNow => {
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                let spread = probe::spread(remaining);
                tracing::info!(
                    cut_by = ?remaining.saturating_sub(spread),
                    "the control plane is reachable again; reconnecting now"
                );
                tokio::time::sleep(spread).await;
                return;
            }
        }
        let next = tokio::time::Instant::now() + probe::probe_interval();
        if next >= deadline {
            break;
        }
        tokio::time::sleep_until(next).await;
    }
    tokio::time::sleep_until(deadline).await;
}

/// With several servers: sleeps out a backoff `delay` (cut short when a
/// server that was unreachable during the wait answers again, like
/// [`wait_before_retry`]), then probes every server and returns the index
/// of the one to dial next: the first that answers of the others in a
/// random order (then `lost`), or the first of that order when none
/// answers (its attempt then fails and the backoff grows). Public so that
/// the many-agents benchmark's simulated agents fail over exactly like the
/// real one.
pub async fn wait_and_pick(
    delay: Duration,
    targets: &[Option<(String, u16)>],
    lost: usize,
) -> usize {
    let n = targets.len();
    // The other servers in a random order of this agent's own, the lost one
    // last: the agents of a lost replica spread over the survivors instead
    // of all moving to the next in their list.
    let mut others: Vec<usize> = (0..n).filter(|&i| i != lost).collect();
    others.shuffle(&mut rand::rng());
    others.push(lost);
    let order = |k: usize| others[(k - 1) % n];
    let deadline = tokio::time::Instant::now() + delay;
    if probe::worth_probing(delay) {
        let mut watches: Vec<probe::HealWatch> = (0..n).map(|_| Default::default()).collect();
        loop {
            let seen = probe_all(targets).await;
            let verdicts: Vec<Verdict> = watches
                .iter_mut()
                .zip(&seen)
                .map(|(w, &reachable)| w.observe(reachable))
                .collect();
            let healed = (1..=n)
                .map(order)
                .find(|&i| verdicts[i] == Verdict::ReconnectNow);
            if let Some(i) = healed {
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                tracing::info!(
                    server = i,
                    "a control plane of the list is reachable again; reconnecting now"
                );
                tokio::time::sleep(probe::spread(remaining)).await;
                return i;
            }
            let next = tokio::time::Instant::now() + probe::probe_interval();
            if next >= deadline {
                break;
            }
            tokio::time::sleep_until(next).await;
        }
    }
    tokio::time::sleep_until(deadline).await;
    let seen = probe_all(targets).await;
    (1..=n)
        .map(order)
        .find(|&i| seen[i])
        .unwrap_or_else(|| order(1))
}

/// One TCP probe of every server at once; a server without a probe
/// target counts as reachable (its full attempt will tell).
async fn probe_all(targets: &[Option<(String, u16)>]) -> Vec<bool> {
    futures::future::join_all(targets.iter().map(|t| async move {
        match t {
            Some((host, port)) => probe::reachable(host, *port).await,
            None => true,
        }
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(port: u16) -> Option<(String, u16)> {
        Some(("127.0.0.1".to_owned(), port))
    }

    /// A port where nothing listens.
    fn dead_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn after_a_loss_the_next_server_that_answers_is_picked_the_lost_one_last() {
        let a = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (pa, pb) = (
            a.local_addr().unwrap().port(),
            b.local_addr().unwrap().port(),
        );
        let dead = dead_port();
        let short = Duration::from_millis(10);
        // Both answer: the other one.
        assert_eq!(wait_and_pick(short, &[target(pa), target(pb)], 0).await, 1);
        assert_eq!(wait_and_pick(short, &[target(pa), target(pb)], 1).await, 0);
        // One of the others is dead: never picked while another answers.
        let three = [target(pa), target(dead), target(pb)];
        assert_eq!(wait_and_pick(short, &three, 0).await, 2);
        // Only the lost one answers (it came back): back to it.
        assert_eq!(
            wait_and_pick(short, &[target(pa), target(dead)], 0).await,
            0
        );
        // None answers: the other one (its attempt will fail).
        let none = [target(dead), target(dead_port())];
        assert_eq!(wait_and_pick(short, &none, 0).await, 1);
    }

    /// The agents of a lost server spread over the survivors: over 300
    /// picks, each of three answering others gets a fair share.
    #[tokio::test]
    async fn agents_of_a_lost_server_spread_over_the_others() {
        let mut targets = Vec::new();
        for _ in 0..4 {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            targets.push(target(l.local_addr().unwrap().port()));
            // Accept (and drop) every probe, so the backlog never fills.
            tokio::spawn(async move { while l.accept().await.is_ok() {} });
        }
        let mut count = [0usize; 4];
        for _ in 0..300 {
            count[wait_and_pick(Duration::from_millis(1), &targets, 0).await] += 1;
        }
        assert_eq!(count[0], 0, "{count:?}");
        for (i, &n) in count.iter().enumerate().skip(1) {
            assert!(
                (60..=140).contains(&n),
                "server {i} got {n} of 300: {count:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_long_wait_is_cut_when_a_dead_server_comes_back() {
        let dead = dead_port();
        let other = dead_port();
        let started = Instant::now();
        let revive = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let l = tokio::net::TcpListener::bind(("127.0.0.1", other))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(l);
        });
        let picked =
            wait_and_pick(Duration::from_secs(20), &[target(dead), target(other)], 0).await;
        assert_eq!(picked, 1);
        // Probes every 1-2 s, then at most 1 s of spread: far below 20 s.
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
        revive.abort();
    }
}
