//! An agent's `AgentLink.Channel`: the downlink for native exec work and
//! the routing of its uplink events back to the waiting `Exec` calls.

use parking_lot::Mutex;
use std::{collections::HashMap, sync::Arc};

use cmdop_proto::ext::{
    agent_downlink, AgentDownlink, ExecCancel, ExecCredit, ExecFinished, ExecStart, ExecStdin,
    ExecTerminal, ExecWindow,
};
use tokio::sync::{
    mpsc::{self, error::TrySendError},
    watch,
};
use tonic::Status;

use crate::{limits, transfer::TransferRoutes};

/// What the agent reports about one exec.
#[derive(Debug)]
pub enum ExecUpdate {
    /// The process exists (agents with [`CAPABILITY_SPAWNED`] only).
    Spawned {
        pid: u32,
    },
    Output {
        data: bytes::Bytes,
        is_stderr: bool,
    },
    /// The agent is opening a side connection for stdout (agents with
    /// [`CAPABILITY_RAW`] or [`CAPABILITY_RAW_TLS`], for an exec that was
    /// given a ticket), with its certificate pin for a TLS one.
    RawOffered {
        agent_pin: bytes::Bytes,
    },
    /// The side connection was accepted: stdout continues there.
    RawSwitched,
    Finished(ExecFinished),
}

/// Agent capability (AgentLink hello): it sends `spawned` with the pid of
/// each command before its output.
pub use cmdop_proto::caps::EXEC_SPAWNED as CAPABILITY_SPAWNED;

/// Agent capability (AgentLink hello): it honours [`ExecWindow`] and
/// [`ExecCredit`], so its output never has to block the Channel.
pub use cmdop_proto::caps::EXEC_CREDIT as CAPABILITY_CREDIT;

/// Agent capability (AgentLink hello): it can move an exec's stdout to a
/// side connection when its `ExecStart` carries a `raw_ticket`.
pub use cmdop_proto::caps::EXEC_RAW as CAPABILITY_RAW;

/// Agent capability (AgentLink hello): it can run TLS on a side connection
/// when its `ExecStart` carries `raw_tls_peer_sha256` besides the ticket.
pub use cmdop_proto::caps::EXEC_RAW_TLS as CAPABILITY_RAW_TLS;

/// Agent capability (AgentLink hello): it keeps stdin open for an exec
/// started with `stdin_open`, writes `ExecStdin` data and acknowledges it
/// with `ExecStdinWritten`.
pub use cmdop_proto::caps::EXEC_STDIN as CAPABILITY_STDIN;
/// Listed in the agent's hello: it runs commands whose `ExecStart` carries
/// `terminal` in a pseudo-terminal, and applies `ExecStdin.resize`.
pub use cmdop_proto::caps::EXEC_TTY as CAPABILITY_TTY;

/// Agent capability (AgentLink hello): told `MoveLink`, it opens a new link
/// to another control plane of its list and reports it with `LinkMoved`.
pub use cmdop_proto::caps::LINK_MOVE as CAPABILITY_LINK_MOVE;

/// Streamed stdin bytes forwarded to an agent beyond what it acknowledged.
pub const STDIN_WINDOW_BYTES: u64 = 2 * 1024 * 1024;

/// Output bytes an agent with [`CAPABILITY_CREDIT`] may send for one exec
/// ahead of what its client has taken.
pub const EXEC_WINDOW_BYTES: u64 = 1024 * 1024;
/// Output messages an agent with [`CAPABILITY_CREDIT`] may send for one exec
/// ahead of what its client has taken (many tiny reads would otherwise pile
/// up messages inside the byte window).
pub const EXEC_WINDOW_CHUNKS: u32 = 64;
/// Room in a credited exec's event queue besides its window: `spawned`,
/// `finished`, one chunk per pipe that the agent may have counted in a
/// different order than it sent them, and `raw_offered` / `raw_switched`
/// (which are not output, so the window does not count them). Rounded up.
const CREDITED_QUEUE_SLACK: usize = 10;

/// One item of an agent's Channel response stream, boxed: a tokio channel
/// allocates its slots 32 at a time when it is created, and every connected
/// agent holds one of these channels, idle or not.
pub type DownlinkItem = Box<Result<AgentDownlink, Status>>;

/// Sender half of an agent's Channel response stream.
pub type DownlinkSender = mpsc::Sender<DownlinkItem>;

/// One open Channel of one agent.
pub struct ExecLink {
    downlink: DownlinkSender,
    pending: Mutex<HashMap<String, mpsc::Sender<ExecUpdate>>>,
    alive: watch::Sender<bool>,
    /// The agent reports pids with `spawned` ([`CAPABILITY_SPAWNED`]).
    reports_spawned: std::sync::atomic::AtomicBool,
    /// The agent honours per-exec credit ([`CAPABILITY_CREDIT`]).
    exec_credit: std::sync::atomic::AtomicBool,
    /// The agent can use side connections for stdout ([`CAPABILITY_RAW`]).
    raw_stdout: std::sync::atomic::AtomicBool,
    /// The agent can run TLS on side connections ([`CAPABILITY_RAW_TLS`]).
    raw_stdout_tls: std::sync::atomic::AtomicBool,
    /// The agent takes streamed stdin ([`CAPABILITY_STDIN`]).
    takes_stdin: std::sync::atomic::AtomicBool,
    /// The agent moves its link when told ([`CAPABILITY_LINK_MOVE`]).
    moves: std::sync::atomic::AtomicBool,
    /// The agent runs commands in a pseudo-terminal ([`CAPABILITY_TTY`]).
    runs_tty: std::sync::atomic::AtomicBool,
    /// Stdin bytes each streamed-stdin exec's agent acknowledged so far.
    stdin_acks: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Streaming file transfers riding on this Channel.
    transfers: TransferRoutes,
}

impl ExecLink {
    pub fn new(downlink: DownlinkSender) -> Arc<Self> {
        Arc::new(ExecLink {
            downlink,
            pending: Mutex::new(HashMap::new()),
            alive: watch::Sender::new(true),
            reports_spawned: std::sync::atomic::AtomicBool::new(false),
            exec_credit: std::sync::atomic::AtomicBool::new(false),
            raw_stdout: std::sync::atomic::AtomicBool::new(false),
            raw_stdout_tls: std::sync::atomic::AtomicBool::new(false),
            takes_stdin: std::sync::atomic::AtomicBool::new(false),
            moves: std::sync::atomic::AtomicBool::new(false),
            runs_tty: std::sync::atomic::AtomicBool::new(false),
            stdin_acks: Mutex::new(HashMap::new()),
            transfers: TransferRoutes::default(),
        })
    }

    /// Records what the agent said it supports in its hello.
    pub fn set_agent_capabilities(&self, capabilities: &[String]) {
        let spawned = capabilities.iter().any(|c| c == CAPABILITY_SPAWNED);
        self.reports_spawned
            .store(spawned, std::sync::atomic::Ordering::Relaxed);
        let credit = capabilities.iter().any(|c| c == CAPABILITY_CREDIT);
        self.exec_credit
            .store(credit, std::sync::atomic::Ordering::Relaxed);
        let raw = capabilities.iter().any(|c| c == CAPABILITY_RAW);
        self.raw_stdout
            .store(raw, std::sync::atomic::Ordering::Relaxed);
        let raw_tls = capabilities.iter().any(|c| c == CAPABILITY_RAW_TLS);
        self.raw_stdout_tls
            .store(raw_tls, std::sync::atomic::Ordering::Relaxed);
        let stdin = capabilities.iter().any(|c| c == CAPABILITY_STDIN);
        self.takes_stdin
            .store(stdin, std::sync::atomic::Ordering::Relaxed);
        let moves = capabilities.iter().any(|c| c == CAPABILITY_LINK_MOVE);
        self.moves
            .store(moves, std::sync::atomic::Ordering::Relaxed);
        let tty = capabilities.iter().any(|c| c == CAPABILITY_TTY);
        self.runs_tty
            .store(tty, std::sync::atomic::Ordering::Relaxed);
    }

    /// True when the agent moves its link to another control plane when
    /// told to ([`CAPABILITY_LINK_MOVE`]).
    pub fn moves(&self) -> bool {
        self.moves.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// True when the agent runs commands in a pseudo-terminal
    /// ([`CAPABILITY_TTY`]).
    pub fn runs_tty(&self) -> bool {
        self.runs_tty.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends the new size of `exec_id`'s terminal to the agent, in order
    /// with its stdin; fails once the link is gone.
    pub async fn resize(&self, exec_id: &str, size: ExecTerminal) -> Result<(), Status> {
        self.send(AgentDownlink {
            msg: Some(agent_downlink::Msg::Stdin(ExecStdin {
                exec_id: exec_id.to_string(),
                resize: Some(size),
                ..Default::default()
            })),
        })
        .await
    }

    /// True when the agent takes streamed stdin ([`CAPABILITY_STDIN`]).
    pub fn takes_stdin(&self) -> bool {
        self.takes_stdin.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn stdin_acks(&self) -> parking_lot::MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        self.stdin_acks.lock()
    }

    /// Starts following the stdin acknowledgements of `exec_id` (before
    /// its start is sent, so that none is missed).
    pub fn watch_stdin(&self, exec_id: &str) -> watch::Receiver<u64> {
        let (tx, rx) = watch::channel(0);
        self.stdin_acks().insert(exec_id.to_owned(), tx);
        rx
    }

    /// Stops following `exec_id`'s stdin acknowledgements.
    pub fn forget_stdin(&self, exec_id: &str) {
        self.stdin_acks().remove(exec_id);
    }

    /// Records the agent's `ExecStdinWritten`; unknown ids are dropped.
    pub fn stdin_written(&self, exec_id: &str, written: u64) {
        if let Some(tx) = self.stdin_acks().get(exec_id) {
            tx.send_if_modified(|w| {
                let grows = written > *w;
                if grows {
                    *w = written;
                }
                grows
            });
        }
    }

    /// Sends more stdin (and with `close`, EOF) for `exec_id` to the agent,
    /// waiting while the downlink is full; fails once the link is gone.
    pub async fn stdin(
        &self,
        exec_id: &str,
        data: bytes::Bytes,
        close: bool,
    ) -> Result<(), Status> {
        self.send(AgentDownlink {
            msg: Some(agent_downlink::Msg::Stdin(ExecStdin {
                exec_id: exec_id.to_string(),
                data,
                close,
                resize: None,
            })),
        })
        .await
    }

    /// True when the agent can move stdout to a side connection, given a
    /// ticket in `ExecStart.raw_ticket`.
    pub fn raw_stdout(&self) -> bool {
        self.raw_stdout.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// True when the agent can run TLS on a side connection, given the
    /// caller's pin in `ExecStart.raw_tls_peer_sha256`.
    pub fn raw_stdout_tls(&self) -> bool {
        self.raw_stdout_tls
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// True when the agent's exec output is flow-controlled with
    /// [`ExecLink::credit`], so delivering it never waits.
    pub fn exec_credit(&self) -> bool {
        self.exec_credit.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// True when the agent sends [`ExecUpdate::Spawned`] before any output.
    pub fn reports_spawned(&self) -> bool {
        self.reports_spawned
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The file transfers routed over this Channel.
    pub fn transfers(&self) -> &TransferRoutes {
        &self.transfers
    }

    /// Queues one message for the agent, waiting while the downlink is full.
    pub async fn send(&self, msg: AgentDownlink) -> Result<(), Status> {
        if !self.is_alive() {
            return Err(link_gone());
        }
        self.downlink
            .send(Box::new(Ok(msg)))
            .await
            .map_err(|_| link_gone())
    }

    /// Queues one message for the agent if there is room; false otherwise.
    pub fn try_send(&self, msg: AgentDownlink) -> bool {
        self.downlink.try_send(Box::new(Ok(msg))).is_ok()
    }

    fn pending(&self) -> parking_lot::MutexGuard<'_, HashMap<String, mpsc::Sender<ExecUpdate>>> {
        self.pending.lock()
    }

    /// Sends `start` to the agent; events for it arrive on the returned receiver,
    /// which ends without a `Finished` if the link breaks.
    ///
    /// With an agent that honours credit the start carries an [`ExecWindow`];
    /// the caller must then [`ExecLink::credit`] the output it hands on.
    pub async fn start(&self, mut start: ExecStart) -> Result<mpsc::Receiver<ExecUpdate>, Status> {
        let queue = if self.exec_credit() {
            start.window = Some(ExecWindow {
                bytes: EXEC_WINDOW_BYTES,
                chunks: EXEC_WINDOW_CHUNKS,
            });
            EXEC_WINDOW_CHUNKS as usize + CREDITED_QUEUE_SLACK
        } else {
            limits::EXEC_EVENT_QUEUE
        };
        let (tx, rx) = mpsc::channel(queue);
        {
            let mut pending = self.pending();
            if !self.is_alive() {
                return Err(link_gone_before_start());
            }
            if pending.len() >= limits::MAX_PENDING_EXECS {
                return Err(Status::resource_exhausted(format!(
                    "the agent already runs {} exec calls; wait for some to finish",
                    limits::MAX_PENDING_EXECS
                )));
            }
            pending.insert(start.exec_id.clone(), tx);
        }
        let exec_id = start.exec_id.clone();
        let msg = AgentDownlink {
            msg: Some(agent_downlink::Msg::Start(start)),
        };
        if self.downlink.send(Box::new(Ok(msg))).await.is_err() {
            self.pending().remove(&exec_id);
            return Err(link_gone_before_start());
        }
        Ok(rx)
    }

    /// Asks the agent to kill an exec and forgets it.
    pub fn cancel(&self, exec_id: &str) {
        self.pending().remove(exec_id);
        let msg = AgentDownlink {
            msg: Some(agent_downlink::Msg::Cancel(ExecCancel {
                exec_id: exec_id.to_string(),
            })),
        };
        // If the queue is full the agent is not reading; it kills every exec
        // when its Channel breaks, so a lost cancel cannot leak a process for long.
        let _ = self.downlink.try_send(Box::new(Ok(msg)));
    }

    /// Tells the agent that `delivered` bytes of an exec's output (cumulative)
    /// reached its client, opening the window again. Waits while the
    /// downlink is full; fails once the link is gone.
    pub async fn credit(&self, exec_id: &str, delivered: u64) -> Result<(), Status> {
        self.send(AgentDownlink {
            msg: Some(agent_downlink::Msg::Credit(ExecCredit {
                exec_id: exec_id.to_string(),
                delivered,
            })),
        })
        .await
    }

    /// Routes an uplink event to its Exec call. Unknown ids are dropped.
    ///
    /// With an agent that honours credit this never waits: its window fits
    /// the call's queue, and an agent that overruns it loses the exec (it is
    /// cancelled, the client sees the stream end as if the agent left). With
    /// other agents it waits while that call's queue is full, which stalls
    /// every exec on the Channel until the slow client reads.
    pub async fn deliver(&self, exec_id: &str, update: ExecUpdate) {
        let finished = matches!(update, ExecUpdate::Finished(_));
        let tx = if finished {
            self.pending().remove(exec_id)
        } else {
            self.pending().get(exec_id).cloned()
        };
        let Some(tx) = tx else { return };
        if !self.exec_credit() {
            let _ = tx.send(update).await;
            return;
        }
        match tx.try_send(update) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!(
                    exec_id,
                    "agent sent more exec output than its credit allows; cancelling the exec"
                );
                drop(tx);
                self.cancel(exec_id);
            }
        }
    }

    /// True until [`ExecLink::close`].
    pub fn is_alive(&self) -> bool {
        *self.alive.borrow()
    }

    /// Resolves once the link is closed.
    pub async fn closed(&self) {
        let mut rx = self.alive.subscribe();
        let _ = rx.wait_for(|alive| !*alive).await;
    }

    /// Marks the link dead and ends every Exec call waiting on it.
    pub fn close(&self) {
        self.alive.send_replace(false);
        self.pending().clear();
    }
}

fn link_gone() -> Status {
    Status::unavailable("the agent's exec channel closed; retry once the agent reconnects")
}

/// `status` marked as a refusal before anything reached the machine
/// ([`cmdop_proto::headers::CALL_NOT_STARTED`]): nothing ran, so a client
/// may send the call again, even a command.
pub fn not_started(mut status: Status) -> Status {
    status.metadata_mut().insert(
        cmdop_proto::headers::CALL_NOT_STARTED,
        tonic::metadata::MetadataValue::from_static(cmdop_proto::headers::CALL_NOT_STARTED_REFUSED),
    );
    status
}

/// [`link_gone`] for a command whose start never reached the agent.
fn link_gone_before_start() -> Status {
    not_started(Status::unavailable(
        "the command was refused before it reached the machine: the agent's exec channel \
         closed; nothing ran. Retry once the agent reconnects",
    ))
}
