//! One agent connection: its identity, output, pending file operations,
//! attach subscribers and (optionally) its native exec link.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use parking_lot::Mutex;

use cmdop_proto::terminal::{
    control_message, ControlMessage, FileOperationResult, RegisterRequest, TerminalSize,
};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;

use super::{exec_link::ExecLink, history::History, ring::OutputRing};
use crate::{limits, store::now_ms};

/// One item of a ConnectTerminal response stream, boxed: a tokio channel
/// allocates its slots 32 at a time when it is created, so with the ~250-byte
/// unboxed item every idle agent's channel held ~8 KiB of empty slots.
pub type ControlItem = Box<Result<ControlMessage, Status>>;

/// Sender half of a ConnectTerminal response stream (agent or attach client).
pub type ControlSender = mpsc::Sender<ControlItem>;

/// Capability an agent advertises when it serves native exec.
pub use cmdop_proto::caps::AGENT_NATIVE_EXEC as NATIVE_EXEC_CAPABILITY;

/// What an agent told us about itself when it registered.
#[derive(Debug, Clone, Default)]
pub struct AgentInfo {
    pub hostname: String,
    pub os: String,
    pub version: String,
    pub shell: String,
    pub home_dir: String,
    pub has_shell: bool,
    pub native_exec: bool,
    pub size: TerminalSize,
}

impl AgentInfo {
    /// Extracts the parts we use from a RegisterRequest.
    pub fn from_register(r: &RegisterRequest) -> Self {
        AgentInfo {
            hostname: r.hostname.clone(),
            os: r.platform.clone(),
            version: r.version.clone(),
            shell: r.supported_shells.first().cloned().unwrap_or_default(),
            home_dir: r.home_dir.clone(),
            has_shell: r.has_shell,
            native_exec: r
                .agent_capabilities
                .iter()
                .any(|c| c == NATIVE_EXEC_CAPABILITY),
            size: r
                .initial_size
                .filter(|s| s.rows > 0 && s.cols > 0)
                .unwrap_or(TerminalSize {
                    rows: 24,
                    cols: 80,
                    width: 0,
                    height: 0,
                }),
        }
    }
}

/// How the close reasons of a control-plane shutdown begin.
pub const SHUTDOWN_REASON: &str = "control plane shutting down";

/// State carried over when an agent reconnects with the same session id,
/// so SDK polling offsets and history survive a blip.
#[derive(Clone)]
pub struct Carried {
    pub output: Arc<Mutex<OutputRing>>,
    pub history: Arc<Mutex<History>>,
}

/// A session: one agent connection, live or recently ended.
pub struct Session {
    pub id: String,
    pub workspace_id: String,
    pub machine_id: String,
    pub info: AgentInfo,
    pub connected_at: SystemTime,
    last_activity_ms: AtomicI64,
    control: ControlSender,
    alive: watch::Sender<bool>,
    carried: Carried,
    files: Mutex<HashMap<String, oneshot::Sender<FileOperationResult>>>,
    subscribers: Mutex<HashMap<u64, ControlSender>>,
    next_subscriber: AtomicU64,
    exec_link: Mutex<Option<Arc<ExecLink>>>,
    /// Why the control plane ended the session, when it did.
    close_reason: Mutex<Option<String>>,
    /// The machine's admin labels, which decide which scoped keys see it
    /// ([`crate::scope`]); `None` until read from the store.
    admin_labels: Mutex<Option<Arc<BTreeMap<String, String>>>>,
    /// Where a move of the agent's link to another control plane stands
    /// (a drain): [`Move`] as a number.
    moving: AtomicU8,
}

/// Where a move of an agent's link stands (see `cmdop.ext.v1.MoveLink`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// Not asked to move.
    Staying = 0,
    /// Asked to move; its new link is not up yet.
    Asked = 1,
    /// The agent said its new link is up (`LinkMoved`): this one only
    /// finishes the work it already has.
    Moved = 2,
}

impl Session {
    pub(super) fn new(
        id: String,
        workspace_id: String,
        machine_id: String,
        info: AgentInfo,
        control: ControlSender,
        carried: Carried,
    ) -> Self {
        // Until mark_closed.
        crate::metrics::agents_connected(1);
        Session {
            id,
            workspace_id,
            machine_id,
            info,
            connected_at: SystemTime::now(),
            last_activity_ms: AtomicI64::new(now_ms()),
            control,
            alive: watch::Sender::new(true),
            carried,
            files: Mutex::new(HashMap::new()),
            subscribers: Mutex::new(HashMap::new()),
            next_subscriber: AtomicU64::new(0),
            exec_link: Mutex::new(None),
            close_reason: Mutex::new(None),
            admin_labels: Mutex::new(None),
            moving: AtomicU8::new(Move::Staying as u8),
        }
    }

    /// Where a move of this link stands.
    pub fn move_state(&self) -> Move {
        match self.moving.load(Ordering::Acquire) {
            0 => Move::Staying,
            1 => Move::Asked,
            _ => Move::Moved,
        }
    }

    /// Asks the agent to move its link to another control plane now
    /// (`MoveLink`), keeping this one for the work already running on it.
    /// False when it cannot be asked: no live exec link, or an agent that
    /// does not list [`cmdop_proto::caps::LINK_MOVE`]; its link then stays
    /// until the session is closed, as before.
    pub fn ask_to_move(&self, reason: &str, grace: Duration) -> bool {
        let Some(link) = self.exec_link().filter(|l| l.moves()) else {
            return false;
        };
        let msg = cmdop_proto::ext::AgentDownlink {
            msg: Some(cmdop_proto::ext::agent_downlink::Msg::MoveLink(
                cmdop_proto::ext::MoveLink {
                    reason: reason.to_string(),
                    grace_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
                },
            )),
        };
        if !link.try_send(msg) {
            return false;
        }
        let _ = self.moving.compare_exchange(
            Move::Staying as u8,
            Move::Asked as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        true
    }

    /// The agent reported its new link up (`LinkMoved`). Counts only
    /// after [`Session::ask_to_move`]: a link never asked stays an ordinary
    /// one (a newer link elsewhere closes it as usual).
    pub fn note_moved(&self) {
        let _ = self.moving.compare_exchange(
            Move::Asked as u8,
            Move::Moved as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// The machine's admin labels as last read; `None` when not read yet.
    pub fn admin_labels(&self) -> Option<Arc<BTreeMap<String, String>>> {
        self.admin_labels.lock().clone()
    }

    /// Records the machine's admin labels (read from the store).
    pub fn set_admin_labels(&self, labels: Arc<BTreeMap<String, String>>) {
        *self.admin_labels.lock() = Some(labels);
    }

    /// Whether a caller with `scope` may see this session's machine.
    pub fn visible_to(&self, scope: &crate::scope::Scope) -> bool {
        !scope.limits_machines() || scope.sees(self.admin_labels().as_deref())
    }

    pub(super) fn carried(&self) -> Carried {
        self.carried.clone()
    }

    /// True while the agent's ConnectTerminal stream is open.
    pub fn is_live(&self) -> bool {
        *self.alive.borrow()
    }

    /// Resolves when the agent's stream has ended (at once if it already has).
    pub async fn closed(&self) {
        let mut rx = self.alive.subscribe();
        let _ = rx.wait_for(|alive| !*alive).await;
    }

    /// "connected" or "disconnected", as the SDKs expect.
    pub fn status_text(&self) -> &'static str {
        if self.is_live() {
            "connected"
        } else {
            "disconnected"
        }
    }

    /// Last time anything arrived from the agent (Unix ms).
    pub fn last_activity_ms(&self) -> i64 {
        self.last_activity_ms.load(Ordering::Relaxed)
    }

    /// Whole seconds since the last message from the agent.
    pub fn heartbeat_age_seconds(&self) -> i64 {
        (now_ms() - self.last_activity_ms()).max(0) / 1000
    }

    /// Notes that the agent sent something.
    pub fn touch(&self) {
        self.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// The error for calls that need a live agent.
    pub fn offline_status(&self) -> Status {
        Status::unavailable(format!(
            "machine {} is offline; it will show as connected again when its agent reconnects",
            self.info.hostname
        ))
    }

    /// The error for calls whose agent went away while they waited.
    pub fn disconnected_status(&self) -> Status {
        let reason = self.close_reason.lock().clone();
        match reason {
            Some(reason) if reason.starts_with(SHUTDOWN_REASON) => Status::unavailable(format!(
                "{reason}; the call to machine {} was cut short: retry once the control plane is \
                 back (clients and agents reconnect by themselves)",
                self.info.hostname
            )),
            _ => Status::unavailable(format!(
                "machine {} disconnected during the call; it will show as connected again when its agent reconnects",
                self.info.hostname
            )),
        }
    }

    /// What a call whose command was handed to the agent is told when the
    /// session ends before the command's exit arrived: nothing confirmed
    /// that the command was killed, so its outcome is unknown.
    pub fn outcome_unknown_message(&self) -> String {
        let why = match self.close_reason.lock().as_deref() {
            Some(reason) => format!("the link to its agent ended ({reason})"),
            None => "the link to its agent was lost".to_string(),
        };
        format!(
            "machine {}: {why} while the command ran; it may have finished, may still be running \
             or may have died with the agent. The outcome is unknown: check before running it again",
            self.info.hostname
        )
    }

    /// Queues a message to the agent. Waits (bounded) while the agent's
    /// queue is full; fails with UNAVAILABLE if the agent is gone or stuck.
    pub async fn send_control(&self, payload: control_message::Payload) -> Result<(), Status> {
        if !self.is_live() {
            return Err(self.offline_status());
        }
        let msg = ControlMessage {
            payload: Some(payload),
            ..Default::default()
        };
        tokio::select! {
            res = self.control.send_timeout(Box::new(Ok(msg)), Duration::from_secs(10)) => match res {
                Ok(()) => Ok(()),
                Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(Status::unavailable(format!(
                    "machine {} is not reading its messages; try again later", self.info.hostname
                ))),
                Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(self.disconnected_status()),
            },
            _ = self.closed() => Err(self.disconnected_status()),
        }
    }

    /// Queues a message to the agent without waiting; dropped if the queue is full.
    pub fn try_send_control(&self, payload: control_message::Payload) {
        let msg = ControlMessage {
            payload: Some(payload),
            ..Default::default()
        };
        let _ = self.control.try_send(Box::new(Ok(msg)));
    }

    /// Stores agent output and copies it to attach subscribers. A subscriber
    /// that cannot keep up is dropped (its stream ends) rather than
    /// buffering without bound.
    pub fn record_output(&self, data: &[u8]) {
        self.carried.output.lock().push(data);
        let mut subs = self.subscribers.lock();
        if subs.is_empty() {
            return;
        }
        let msg = ControlMessage {
            payload: Some(control_message::Payload::Input(
                cmdop_proto::terminal::TerminalInput {
                    data: bytes::Bytes::copy_from_slice(data),
                    sequence: 0,
                },
            )),
            ..Default::default()
        };
        subs.retain(|id, tx| match tx.try_send(Box::new(Ok(msg.clone()))) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(session = %self.id, subscriber = id, "attach client too slow; detaching it");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// Reads buffered output with `GetOutput` semantics.
    pub fn read_output(&self, offset: u64, limit: usize) -> super::ring::OutputSlice {
        self.carried
            .output
            .lock()
            .read(offset, limit, limits::MAX_GET_OUTPUT_BYTES)
    }

    /// Remembers typed input for `GetHistory`.
    pub fn record_input(&self, data: &[u8]) {
        self.carried.history.lock().record_input(data);
    }

    /// A page of typed commands and the total count.
    pub fn history(&self, offset: usize, limit: usize) -> (Vec<String>, usize) {
        let h = self.carried.history.lock();
        (h.page(offset, limit), h.len())
    }

    /// Registers a file operation awaiting the agent's answer.
    pub fn expect_file_result(
        &self,
        request_id: &str,
    ) -> Result<oneshot::Receiver<FileOperationResult>, Status> {
        let mut files = self.files.lock();
        if !self.is_live() {
            return Err(self.offline_status());
        }
        if files.len() >= limits::MAX_PENDING_FILE_OPS {
            return Err(Status::resource_exhausted(format!(
                "{} file operations are already waiting on this machine; retry when they finish",
                limits::MAX_PENDING_FILE_OPS
            )));
        }
        let (tx, rx) = oneshot::channel();
        files.insert(request_id.to_string(), tx);
        Ok(rx)
    }

    /// Forgets a file operation (its caller gave up).
    pub fn forget_file_op(&self, request_id: &str) {
        self.files.lock().remove(request_id);
    }

    /// Hands an agent's file result to the waiting call, if any.
    pub fn complete_file_op(&self, result: FileOperationResult) {
        if let Some(tx) = self.files.lock().remove(&result.request_id) {
            let _ = tx.send(result);
        }
    }

    /// Adds an attach client; returns its id for [`Session::unsubscribe`].
    pub fn subscribe(&self, tx: ControlSender) -> Result<u64, Status> {
        let mut subs = self.subscribers.lock();
        if !self.is_live() {
            return Err(self.offline_status());
        }
        if subs.len() >= limits::MAX_ATTACH_SUBSCRIBERS {
            return Err(Status::resource_exhausted(format!(
                "session already has {} attached clients",
                limits::MAX_ATTACH_SUBSCRIBERS
            )));
        }
        let id = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
        subs.insert(id, tx);
        Ok(id)
    }

    /// Removes an attach client; its stream ends once nothing else holds its sender.
    pub fn unsubscribe(&self, id: u64) {
        self.subscribers.lock().remove(&id);
    }

    /// Number of attach clients.
    pub fn subscriber_count(&self) -> usize {
        self.subscribers.lock().len()
    }

    /// Installs the agent's exec link, closing any previous one.
    pub fn set_exec_link(&self, link: Arc<ExecLink>) -> Result<(), Status> {
        let mut slot = self.exec_link.lock();
        if !self.is_live() {
            return Err(self.offline_status());
        }
        if let Some(old) = slot.replace(link) {
            old.close();
        }
        Ok(())
    }

    /// Removes `link` if it is still the installed one.
    pub fn clear_exec_link(&self, link: &Arc<ExecLink>) {
        let mut slot = self.exec_link.lock();
        if slot.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)) {
            *slot = None;
        }
        link.close();
    }

    /// The agent's exec link, if it has an open Channel.
    pub fn exec_link(&self) -> Option<Arc<ExecLink>> {
        self.exec_link.lock().clone().filter(|l| l.is_alive())
    }

    /// Ends the session: every waiting call fails with UNAVAILABLE, attach
    /// clients get `close_session`, the exec link closes.
    pub fn mark_closed(&self, reason: &str) {
        if !self.alive.send_replace(false) {
            return;
        }
        crate::metrics::agents_connected(-1);
        *self.close_reason.lock() = Some(reason.to_string());
        self.files.lock().clear();
        let close = ControlMessage {
            payload: Some(control_message::Payload::CloseSession(
                cmdop_proto::terminal::CloseSessionCommand {
                    reason: reason.to_string(),
                    force: false,
                },
            )),
            ..Default::default()
        };
        for (_, tx) in self.subscribers.lock().drain() {
            let _ = tx.try_send(Box::new(Ok(close.clone())));
        }
        if let Some(link) = self.exec_link.lock().take() {
            link.close();
        }
    }
}
