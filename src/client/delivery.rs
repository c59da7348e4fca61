//! Hands a call's output chunks to a callback on a thread of its own, so that a slow callback never holds the call back from
//! noticing a cancel: the call returns as soon as it is cancelled, queued
//! chunks are dropped, and no callback starts after
//! cmdop_cancel_token_cancel() returned. Without a cancel the call waits
//! until every chunk was delivered, so all callbacks run before it returns.
//! The queue is bounded: a slow callback slows the command's output down
//! (HTTP/2 flow control) instead of growing memory.

use parking_lot::{Condvar, Mutex, MutexGuard};
use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::CancelToken;

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
        self.state.lock()
    }

    fn wait<'a>(&self, mut g: MutexGuard<'a, State<K>>) -> MutexGuard<'a, State<K>> {
        self.changed.wait_for(&mut g, CANCEL_POLL);
        g
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
                    *self.thread.lock() = Some(h);
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
        if self.thread.lock().is_none() {
            return; // no chunk came, no thread started
        }
        self.shared.changed.notify_all();
        while !g.done && !self.shared.token.is_cancelled() {
            g = self.shared.wait(g);
        }
        let done = g.done;
        drop(g);
        let handle = self.thread.lock().take();
        if done {
            if let Some(h) = handle {
                let _ = h.join();
            }
        }
        // Cancelled: the thread ends by itself after its current callback.
    }
}
