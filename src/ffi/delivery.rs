//! Hands a call's output chunks to the application's callback on a thread
//! of its own, so that a slow callback never holds the call back from
//! noticing a cancel: the call returns as soon as it is cancelled, queued
//! chunks are dropped, and no callback starts after
//! cmdop_cancel_token_cancel() returned. Without a cancel the call waits
//! until every chunk was delivered, so all callbacks run before it returns.
//! The queue is bounded: a slow callback slows the command's output down
//! (HTTP/2 flow control) instead of growing memory.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use std::ffi::c_void;

use std::future::Future;

use super::boundary::{as_callback, Failure};
use super::events::cmdop_free_fn;
use super::exec::{cmdop_exec_output_fn, cmdop_stream_kind};
use super::runtime::{block_on, run_on_runtime};
use crate::client::{CancelToken, Stream};

/// Most chunks and bytes waiting for the callback.
const MAX_QUEUED_CHUNKS: usize = 32;
const MAX_QUEUED_BYTES: usize = 2 * 1024 * 1024;
/// How often a waiting side looks at the cancel token.
const CANCEL_POLL: Duration = Duration::from_millis(2);

/// Delivers one chunk (stream kind and bytes) to the application.
pub(crate) type Deliver<K> = Box<dyn FnMut(K, &[u8]) + Send>;

struct State<K> {
    queue: VecDeque<(K, Vec<u8>)>,
    bytes: usize,
    /// The call produced its last chunk.
    closed: bool,
    /// The delivery thread ended.
    done: bool,
}

struct Shared<K> {
    state: Mutex<State<K>>,
    changed: Condvar,
    token: CancelToken,
}

impl<K> Shared<K> {
    fn lock(&self) -> MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, g: MutexGuard<'a, State<K>>) -> MutexGuard<'a, State<K>> {
        match self.changed.wait_timeout(g, CANCEL_POLL) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        }
    }
}

/// The producing side, moved into the call's chunk closure.
pub(crate) struct Pusher<K: Send + 'static> {
    shared: Arc<Shared<K>>,
    deliver: Option<Deliver<K>>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

/// The call's side: [`Delivery::finish`] once the call's future is done.
pub(crate) struct Delivery<K> {
    shared: Arc<Shared<K>>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

pub(crate) fn channel<K: Send + 'static>(
    deliver: Deliver<K>,
    token: CancelToken,
) -> (Pusher<K>, Delivery<K>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            bytes: 0,
            closed: false,
            done: false,
        }),
        changed: Condvar::new(),
        token,
    });
    let thread = Arc::new(Mutex::new(None));
    (
        Pusher {
            shared: Arc::clone(&shared),
            deliver: Some(deliver),
            thread: Arc::clone(&thread),
        },
        Delivery { shared, thread },
    )
}

impl<K: Send + 'static> Pusher<K> {
    /// Queue a chunk, waiting while the queue is full; dropped once the
    /// call is cancelled.
    pub(crate) fn push(&mut self, kind: K, data: &[u8]) {
        if let Some(deliver) = self.deliver.take() {
            let shared = Arc::clone(&self.shared);
            let spawned = std::thread::Builder::new()
                .name("cmdop-output".into())
                .spawn(move || deliver_all(shared, deliver));
            match spawned {
                Ok(h) => {
                    *self.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(h);
                }
                Err(_) => {
                    // No thread: nothing will be delivered; let finish() return.
                    self.shared.lock().done = true;
                }
            }
        }
        let shared = &*self.shared;
        let mut g = shared.lock();
        while !g.done
            && (g.queue.len() >= MAX_QUEUED_CHUNKS || g.bytes >= MAX_QUEUED_BYTES)
            && !shared.token.is_cancelled()
        {
            g = shared.wait(g);
        }
        if g.done || shared.token.is_cancelled() {
            return;
        }
        g.bytes += data.len();
        g.queue.push_back((kind, data.to_vec()));
        drop(g);
        shared.changed.notify_all();
    }
}

fn deliver_all<K>(shared: Arc<Shared<K>>, mut deliver: Deliver<K>) {
    loop {
        let mut g = shared.lock();
        while g.queue.is_empty() && !g.closed && !shared.token.is_cancelled() {
            g = shared.wait(g);
        }
        if shared.token.is_cancelled() {
            g.queue.clear();
            g.bytes = 0;
            break;
        }
        let Some((kind, data)) = g.queue.pop_front() else {
            break; // closed and drained
        };
        g.bytes -= data.len();
        drop(g);
        shared.changed.notify_all();
        if shared
            .token
            .start_unless_cancelled(|| deliver(kind, &data))
            .is_none()
        {
            break;
        }
    }
    shared.lock().done = true;
    shared.changed.notify_all();
}

impl<K> Delivery<K> {
    /// The call produced everything: wait until the callback has had it
    /// all, or return at once when the call is cancelled (a callback that
    /// already started may then still be running).
    pub(crate) fn finish(self) {
        let mut g = self.shared.lock();
        g.closed = true;
        if self
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            return; // no chunk came, no thread started
        }
        self.shared.changed.notify_all();
        while !g.done && !self.shared.token.is_cancelled() {
            g = self.shared.wait(g);
        }
        let done = g.done;
        drop(g);
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if done {
            if let Some(h) = handle {
                let _ = h.join();
            }
        }
        // Cancelled: the thread ends by itself after its current callback.
    }
}

/// The application's output callback, its `user_data` and the finaliser
/// that releases `user_data` once no callback can run any more: when the
/// last owner of the sink (the delivery thread, or the call if no output
/// ever came) drops it.
pub(crate) struct OutputSink {
    cb: Option<unsafe extern "C" fn(*mut c_void, cmdop_stream_kind, *const u8, usize)>,
    user_data: *mut c_void,
    free_user_data: cmdop_free_fn,
}
// SAFETY: the callback runs on the delivery thread, one call at a time, and
// the finaliser once, after it; the header tells applications that output
// callbacks run on a library thread and that `user_data` must stay valid
// until `free_user_data` is called (or, without one, until a callback that
// started before a cancel returned).
unsafe impl Send for OutputSink {}

impl Drop for OutputSink {
    fn drop(&mut self) {
        if let Some(free) = self.free_user_data {
            let user_data = self.user_data;
            // SAFETY: the application's finaliser with its own user_data,
            // called once: no callback runs after this sink is dropped.
            as_callback(|| unsafe { free(user_data) });
        }
    }
}

/// The chunk closure handed to the client core.
pub(crate) type ChunkHandler = Box<dyn FnMut(Stream, &[u8]) + Send + 'static>;

/// The chunk closure for a call's future and the delivery to finish after
/// it: `on_output` (may be NULL) runs on a thread of its own.
/// The sink of one call's output callback. Build it first thing in an
/// export, so that the finaliser runs on every path, failed argument
/// checks included.
pub(crate) fn output_sink(
    on_output: cmdop_exec_output_fn,
    user_data: *mut c_void,
    free_user_data: cmdop_free_fn,
) -> OutputSink {
    OutputSink {
        cb: on_output,
        user_data,
        free_user_data,
    }
}

/// Runs the call that `call` makes from the output handler and the token,
/// with the handler delivering to `sink` on a delivery thread, blocking
/// this thread; once the call is done, waits for that thread's remaining
/// deliveries (none after a cancel).
pub(crate) fn block_on_with_output<Fut: Future>(
    what: &str,
    sink: OutputSink,
    token: CancelToken,
    call: impl FnOnce(ChunkHandler, CancelToken) -> Fut,
) -> Result<Fut::Output, Failure> {
    let (handler, delivery) = output_delivery(sink, &token);
    let result = block_on(what, call(handler, token))?;
    if let Some(d) = delivery {
        d.finish();
    }
    Ok(result)
}

/// [`block_on_with_output`], except that a call without an output
/// callback runs as a task on the runtime's threads (each network event
/// then wakes a runtime thread, not this one: the fast path of a plain
/// execute). `free_user_data` still runs before this returns: the task
/// drops its future, and the sink with it, before it reports completion.
pub(crate) fn run_with_output<Fut>(
    what: &str,
    sink: OutputSink,
    token: CancelToken,
    call: impl FnOnce(ChunkHandler, CancelToken) -> Fut,
) -> Result<Fut::Output, Failure>
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    if sink.cb.is_some() {
        return block_on_with_output(what, sink, token, call);
    }
    let handler: ChunkHandler = Box::new(move |_: Stream, _: &[u8]| {
        let _ = &sink;
    });
    run_on_runtime(what, call(handler, token))
}

fn output_delivery(
    sink: OutputSink,
    token: &CancelToken,
) -> (ChunkHandler, Option<Delivery<cmdop_stream_kind>>) {
    if sink.cb.is_none() {
        // No callback: the finaliser runs when the call drops the handler.
        return (
            Box::new(move |_: Stream, _: &[u8]| {
                let _ = &sink;
            }),
            None,
        );
    }
    let deliver: Deliver<cmdop_stream_kind> = Box::new(move |kind, data: &[u8]| {
        let s = &sink;
        if let Some(cb) = s.cb {
            // SAFETY: the application's callback with its own user_data and
            // a live slice of `data.len()` bytes.
            as_callback(|| unsafe { cb(s.user_data, kind, data.as_ptr(), data.len()) });
        }
    });
    let (mut pusher, delivery) = channel(deliver, token.clone());
    let handler = move |stream: Stream, data: &[u8]| {
        if data.is_empty() {
            return;
        }
        let kind = match stream {
            Stream::Stdout => cmdop_stream_kind::Stdout,
            Stream::Stderr => cmdop_stream_kind::Stderr,
        };
        pusher.push(kind, data);
    };
    (Box::new(handler), Some(delivery))
}
