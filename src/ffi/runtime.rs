//! The hidden tokio runtime shared by every client.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Runtime;

use super::boundary::{in_callback, panic_message, Failure};
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
            .on_thread_start(block_sigpipe)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start libcmdop's runtime threads: {e}"))
    })
    .as_ref()
    .map_err(|e| Failure::new(cmdop_status::Internal, e.clone()))
}

/// Blocks SIGPIPE on the calling thread (each runtime thread, as it
/// starts). The runtime writes to sockets; a write to one whose peer has
/// gone raises SIGPIPE, whose default action ends the whole program, and a
/// C program, unlike a Rust one, does not ignore it. Blocked on the threads
/// that write, the signal stays pending there and the write fails with
/// EPIPE, which the library reports as a lost connection. The host's own
/// threads and its SIGPIPE handling are left alone.
fn block_sigpipe() {
    // SAFETY: `set` is a local sigset_t that sigemptyset initialises before
    // sigaddset and pthread_sigmask read it; pthread_sigmask changes only
    // this thread's mask and accepts a NULL old-mask pointer.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Run `fut` to completion on the runtime, blocking this thread. Refuses
/// (IN_CALLBACK) inside a library callback or on a runtime thread, where
/// blocking would deadlock.
///
/// `fut` is polled on this thread, so every wakeup it waits for (each
/// network event) crosses from a runtime thread to this one. Calls that
/// need no callbacks on the caller's thread should use [`run_on_runtime`].
pub(crate) fn block_on<F: Future>(what: &str, fut: F) -> Result<F::Output, Failure> {
    check_may_block(what)?;
    Ok(runtime()?.block_on(fut))
}

/// Run `fut` as a task on the runtime's threads and block this thread
/// until it is done. Unlike [`block_on`], the network events it waits for
/// wake it on the runtime thread that saw them; this thread is woken once,
/// at the end. Same refusals as [`block_on`].
pub(crate) fn run_on_runtime<F>(what: &str, fut: F) -> Result<F::Output, Failure>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    check_may_block(what)?;
    let rt = runtime()?;
    joined(what, rt.block_on(rt.spawn(fut)))
}

/// [`run_on_runtime`] while this thread takes the messages `fut` sends
/// into `feed` and hands each to `each`, in order, until `fut` is done
/// and has dropped its sender (the fleet execute: the application's
/// callbacks run here, on the caller's thread).
pub(crate) fn run_feeding<F, M>(
    what: &str,
    fut: F,
    feed: std::sync::mpsc::Receiver<M>,
    mut each: impl FnMut(M),
) -> Result<F::Output, Failure>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    check_may_block(what)?;
    let rt = runtime()?;
    let task = rt.spawn(fut);
    for msg in feed {
        each(msg);
    }
    joined(what, rt.block_on(task))
}

/// A task's end as the caller's result.
fn joined<T>(what: &str, r: Result<T, tokio::task::JoinError>) -> Result<T, Failure> {
    match r {
        Ok(out) => Ok(out),
        Err(e) if e.is_panic() => Err(Failure::new(
            cmdop_status::Panic,
            panic_message(&*e.into_panic()),
        )),
        Err(_) => Err(Failure::new(
            cmdop_status::Internal,
            format!("{what} was stopped because libcmdop's runtime is shutting down"),
        )),
    }
}

/// IN_CALLBACK inside a library callback or on a runtime thread, where
/// blocking would deadlock.
fn check_may_block(what: &str) -> Result<(), Failure> {
    if in_callback() || tokio::runtime::Handle::try_current().is_ok() {
        return Err(Failure::new(
            cmdop_status::InCallback,
            format!(
                "{what} blocks and cannot be called from inside a libcmdop callback; \
                 call it from another thread, or use cmdop_cancel_token_cancel() to stop a running call"
            ),
        ));
    }
    Ok(())
}
