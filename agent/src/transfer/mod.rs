//! Streaming file transfers over the AgentLink Channel (capability
//! `files.v1`): the control plane opens an upload or a download with a
//! `FileDownlink`, and each runs as its own task until it finishes, fails
//! or is aborted. When the Channel ends, every transfer is dropped and an
//! unfinished upload's temp file is removed. A large download may finish on
//! a side connection ([`side`], capability [`CAPABILITY_RAW`]), and a large
//! upload's data may come on one ([`side_upload`], capability
//! [`CAPABILITY_RAW_WRITE`]).

mod download;
mod side;
mod side_upload;
mod upload;

use parking_lot::Mutex;
use std::{collections::HashMap, future::Future, path::PathBuf, sync::Arc};

use cmdop_proto::ext::{
    agent_uplink, file_downlink::Op, file_uplink::Event, AgentUplink, FileDownlink, FileUplink,
    TransferError,
};
use tokio::sync::mpsc;

use crate::files::{
    error::{FileError, FileResult},
    path::resolve,
};

/// Capability announced in the Channel hello.
pub use cmdop_proto::caps::FILES as CAPABILITY;
/// Announced with it when downloads may use side connections.
pub use cmdop_proto::caps::FILES_RAW as CAPABILITY_RAW;
/// Announced with it when uploads may use side connections.
pub use cmdop_proto::caps::FILES_RAW_WRITE as CAPABILITY_RAW_WRITE;
/// Largest data chunk sent to the control plane.
pub use cmdop_proto::limits::TRANSFER_CHUNK_BYTES as CHUNK_BYTES;
/// Download bytes sent but not yet credited by the control plane.
pub const DOWNLOAD_WINDOW_BYTES: u64 = 4 * 1024 * 1024;
/// Transfers served at once; more are refused.
pub const MAX_TRANSFERS: usize = 32;
/// Control plane steps queued per transfer. The control plane keeps fewer
/// upload chunks than this in flight; a peer that overruns it loses the
/// transfer.
const STEP_QUEUE: usize = 64;

type Active = Arc<Mutex<HashMap<String, mpsc::Sender<Op>>>>;

/// The transfers of one Channel.
pub struct Transfers {
    home: PathBuf,
    uplink: mpsc::Sender<AgentUplink>,
    active: Active,
    /// The control plane's URL, when transfers may use side connections.
    side_server: Option<Arc<str>>,
}

impl Transfers {
    /// Paths resolve against `home`; events go out on `uplink`. With
    /// `side_server` (the control plane's URL, given only when this agent
    /// lists [`CAPABILITY_RAW`]) large downloads may use side connections.
    pub fn new(
        home: PathBuf,
        uplink: mpsc::Sender<AgentUplink>,
        side_server: Option<&str>,
    ) -> Self {
        Transfers {
            home,
            uplink,
            active: Active::default(),
            side_server: side_server.map(Arc::from),
        }
    }

    /// Acts on one downlink step. Never blocks the Channel.
    pub fn handle(&self, msg: FileDownlink) {
        let id = msg.transfer_id;
        let report = Reporter {
            id: id.clone(),
            uplink: self.uplink.clone(),
        };
        match msg.op {
            Some(Op::Upload(start)) => {
                let path = resolve(&start.path, &self.home);
                let server = self.side_server.clone();
                self.spawn(report, |steps, report| async move {
                    upload::run(start, path, steps, &report, server.as_deref()).await
                });
            }
            Some(Op::Download(req)) => {
                let path = resolve(&req.path, &self.home);
                let server = self.side_server.clone();
                self.spawn(report, |steps, report| async move {
                    download::run(req, path, steps, &report, server.as_deref()).await
                });
            }
            Some(op) => {
                let mut active = self.active.lock();
                let overrun = match active.get(&id) {
                    Some(tx) => tx.try_send(op).is_err(),
                    None => false, // already finished: a late credit or abort
                };
                if overrun {
                    // Dropping the sender ends the task, which cleans up.
                    active.remove(&id);
                    tracing::warn!(transfer = %id, "transfer overran its queue; dropping it");
                }
            }
            None => tracing::debug!(transfer = %id, "ignoring an unknown transfer step"),
        }
    }

    /// Runs one transfer as a task; its error, if any, goes to the control plane.
    fn spawn<F, Fut>(&self, report: Reporter, run: F)
    where
        F: FnOnce(mpsc::Receiver<Op>, Reporter) -> Fut,
        Fut: Future<Output = FileResult<()>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(STEP_QUEUE);
        let refused = {
            let mut active = self.active.lock();
            if active.contains_key(&report.id) {
                Some(FileError::invalid(
                    "a transfer with this id is already running",
                ))
            } else if active.len() >= MAX_TRANSFERS {
                Some(FileError::new(
                    "BUSY",
                    format!("the agent already serves {MAX_TRANSFERS} transfers; try again when some finish"),
                ))
            } else {
                active.insert(report.id.clone(), tx);
                None
            }
        };
        if let Some(err) = refused {
            tokio::spawn(async move { report.fail(err).await });
            return;
        }
        let active = self.active.clone();
        let id = report.id.clone();
        let task = run(rx, report.clone());
        tokio::spawn(async move {
            let result = task.await;
            active.lock().remove(&id);
            if let Err(err) = result {
                tracing::info!(transfer = %id, error = %err.message, "transfer failed");
                report.fail(err).await;
            }
        });
    }
}

impl Drop for Transfers {
    fn drop(&mut self) {
        // Every task sees its step queue close and aborts.
        self.active.lock().clear();
    }
}

/// Sends one transfer's events to the control plane.
#[derive(Clone)]
pub struct Reporter {
    id: String,
    uplink: mpsc::Sender<AgentUplink>,
}

impl Reporter {
    /// Sends `event`, waiting while the uplink is full. Fails when the
    /// Channel is gone (nobody is left to tell).
    pub async fn send(&self, event: Event) -> FileResult<()> {
        let msg = AgentUplink {
            msg: Some(agent_uplink::Msg::File(FileUplink {
                transfer_id: self.id.clone(),
                event: Some(event),
            })),
        };
        self.uplink
            .send(msg)
            .await
            .map_err(|_| FileError::new("UNAVAILABLE", "the control plane channel closed"))
    }

    async fn fail(&self, err: FileError) {
        let message = if err.suggestions.is_empty() {
            err.message
        } else {
            format!("{} ({})", err.message, err.suggestions.join("; "))
        };
        let _ = self
            .send(Event::Error(TransferError {
                code: err.code.to_string(),
                message,
            }))
            .await;
    }
}

/// Runs blocking file-system work on tokio's blocking pool.
async fn blocking<T, F>(work: F) -> FileResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> FileResult<T> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(FileError::new("INTERNAL", format!("file task failed: {e}"))))
}
