//! Per-Channel table that routes the agent's transfer events to the call
//! waiting for them.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
};

use parking_lot::{Mutex, MutexGuard};

use cmdop_proto::ext::{file_uplink, FileUplink};
use tokio::sync::mpsc;
use tonic::Status;

use super::{
    CAPABILITY, CAPABILITY_RAW, CAPABILITY_RAW_WRITE, MAX_CHUNK_BYTES, MAX_TRANSFERS_PER_AGENT,
    TRANSFER_EVENT_QUEUE,
};

type Routes = HashMap<String, mpsc::Sender<file_uplink::Event>>;

/// The transfers in flight on one agent Channel.
#[derive(Default)]
pub struct TransferRoutes {
    /// The agent announced [`CAPABILITY`] in its hello.
    supported: AtomicBool,
    /// The agent announced [`CAPABILITY_RAW`] in its hello.
    raw: AtomicBool,
    /// The agent announced [`CAPABILITY_RAW_WRITE`] in its hello.
    raw_write: AtomicBool,
    routes: Mutex<Routes>,
}

impl TransferRoutes {
    /// Records whether the agent's hello listed [`CAPABILITY`],
    /// [`CAPABILITY_RAW`] and [`CAPABILITY_RAW_WRITE`].
    pub fn set_supported(&self, agent_capabilities: &[String]) {
        let listed = |cap: &str| agent_capabilities.iter().any(|c| c == cap);
        self.supported.store(listed(CAPABILITY), Ordering::Relaxed);
        self.raw.store(listed(CAPABILITY_RAW), Ordering::Relaxed);
        self.raw_write
            .store(listed(CAPABILITY_RAW_WRITE), Ordering::Relaxed);
    }

    /// True when the agent can take an upload's data from a side
    /// connection (plain or TLS, as its exec side-connection capabilities
    /// say).
    pub fn raw_write_supported(&self) -> bool {
        self.raw_write.load(Ordering::Relaxed)
    }

    /// True when the agent can move a download to a side connection
    /// (plain or TLS, as its exec side-connection capabilities say).
    pub fn raw_supported(&self) -> bool {
        self.raw.load(Ordering::Relaxed)
    }

    /// True when the agent serves streaming transfers.
    pub fn is_supported(&self) -> bool {
        self.supported.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock()
    }

    /// Registers transfer `id`; its events arrive on the receiver.
    pub(super) fn open(&self, id: &str) -> Result<mpsc::Receiver<file_uplink::Event>, Status> {
        let mut routes = self.lock();
        if routes.len() >= MAX_TRANSFERS_PER_AGENT {
            return Err(Status::resource_exhausted(format!(
                "the machine already has {MAX_TRANSFERS_PER_AGENT} file transfers in flight; wait for some to finish"
            )));
        }
        let (tx, rx) = mpsc::channel(TRANSFER_EVENT_QUEUE);
        routes.insert(id.to_string(), tx);
        Ok(rx)
    }

    /// Unregisters transfer `id`; later events for it are dropped.
    pub(super) fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Routes one agent event to its transfer, waiting while that
    /// transfer's queue is full. Unknown ids and oversized chunks are dropped
    /// (an oversized chunk then fails the download's size check).
    pub async fn deliver(&self, uplink: FileUplink) {
        let Some(event) = uplink.event else { return };
        if matches!(&event, file_uplink::Event::Data(d) if d.len() > MAX_CHUNK_BYTES) {
            tracing::warn!(transfer = %uplink.transfer_id, "dropping an oversized transfer chunk from the agent");
            return;
        }
        let tx = self.lock().get(&uplink.transfer_id).cloned();
        if let Some(tx) = tx {
            let _ = tx.send(event).await;
        }
    }
}
