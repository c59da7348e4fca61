//! How the services reach their state store: database work on the blocking
//! pool, quick reads inline, and what a store failure tells the caller.

use std::sync::Arc;

use tonic::Status;

use crate::store::Store;

/// What calls that need the database get while it cannot be reached.
pub const DATABASE_UNAVAILABLE: &str = "database unavailable; retry: the control plane cannot \
     reach its state database (PostgreSQL) right now; calls that need it work again by \
     themselves once it is back";

/// Maps a store failure to a status, logging the cause (never the
/// credential): UNAVAILABLE when the database stayed locked past the busy
/// timeout or cannot be reached (a retry may succeed), INTERNAL otherwise.
pub fn internal(err: anyhow::Error) -> Status {
    if crate::store::is_busy_error(&err) {
        tracing::warn!(error = %format!("{err:#}"), "state database busy");
        return Status::unavailable(
            "database busy; retry: the control plane's state database is locked by another process",
        );
    }
    if crate::store::is_unavailable_error(&err) {
        tracing::warn!(error = %format!("{err:#}"), "state database unavailable");
        return Status::unavailable(DATABASE_UNAVAILABLE);
    }
    tracing::error!(error = %format!("{err:#}"), "state database error");
    Status::internal("the control plane could not read its state; check the server log")
}

/// Runs database work `f` on the blocking pool, so a write waiting for a
/// lock held by another process, or a PostgreSQL call waiting for the
/// network, never holds up the async workers (and the calls they serve).
pub async fn with_store<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(&store))
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
