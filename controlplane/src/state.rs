//! What every service shares.

use std::sync::Arc;

use crate::{
    cluster::Cluster, config::ServerConfig, raw::Rendezvous, remembered::Remembered,
    selection::Selections, sessions::Registry, store::Store, streams::OpenStreams,
};

/// Shared server state.
pub struct State {
    pub store: Store,
    pub sessions: Registry,
    pub config: ServerConfig,
    /// Tickets for side connections; `None` when they are off
    /// ([`crate::raw::enabled`]).
    pub side_connections: Option<Arc<Rendezvous>>,
    /// The machine each client connection picked last (for File* calls
    /// without a session id).
    pub selections: Selections,
    /// Open calls by credential: end them when a credential is revoked
    /// ([`OpenStreams::end`], or [`OpenStreams::recheck`] after changing
    /// the database).
    pub open_streams: Arc<OpenStreams>,
    /// Cluster mode ([`crate::cluster`]); `None` for a single server.
    pub cluster: Option<Arc<Cluster>>,
    /// Recent successful credential checks, for database outages
    /// ([`crate::remembered`]).
    pub remembered: Remembered,
}

/// The handle services hold.
pub type SharedState = Arc<State>;

/// Runs database work `f` on the blocking pool, so a write waiting for a
/// lock held by another process, or a PostgreSQL call waiting for the
/// network, never holds up the async workers (and the calls they serve).
pub async fn with_store<T: Send + 'static>(
    state: &SharedState,
    f: impl FnOnce(&Store) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || f(&state.store))
        .await
        .map_err(|e| anyhow::anyhow!("database task failed: {e}"))?
}

/// Runs a quick database read `f` from synchronous code on an async
/// worker. On SQLite it runs inline (local reads never wait for writers);
/// on PostgreSQL the worker first hands its other tasks to the rest of the
/// runtime (`block_in_place`), so a slow or unreachable database holds up
/// only this call.
pub fn read_store<T>(store: &Store, f: impl FnOnce(&Store) -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi_thread = Handle::try_current()
        .map(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread)
        .unwrap_or(false);
    if store.is_networked() && multi_thread {
        tokio::task::block_in_place(|| f(store))
    } else {
        f(store)
    }
}
