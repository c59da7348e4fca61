//! The hidden tokio runtime shared by every client.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Runtime;

use super::boundary::{in_callback, Failure};
use super::status::cmdop_status;

/// Worker threads: I/O bound work, and the machine may be small.
const WORKER_THREADS: usize = 2;

/// Started on first use and never dropped (dropping a runtime from an
/// arbitrary thread at exit is a source of hangs).
static RT: OnceLock<Result<Runtime, String>> = OnceLock::new();

pub(crate) fn runtime() -> Result<&'static Runtime, Failure> {
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("cmdop-runtime")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start libcmdop's runtime threads: {e}"))
    })
    .as_ref()
    .map_err(|e| Failure::new(cmdop_status::Internal, e.clone()))
}

/// Run `fut` to completion on the runtime, blocking this thread. Refuses
/// (IN_CALLBACK) inside a library callback or on a runtime thread, where
/// blocking would deadlock.
pub(crate) fn block_on<F: Future>(what: &str, fut: F) -> Result<F::Output, Failure> {
    if in_callback() || tokio::runtime::Handle::try_current().is_ok() {
        return Err(Failure::new(
            cmdop_status::InCallback,
            format!(
                "{what} blocks and cannot be called from inside a libcmdop callback; \
                 call it from another thread, or use cmdop_cancel() to stop a running call"
            ),
        ));
    }
    Ok(runtime()?.block_on(fut))
}
