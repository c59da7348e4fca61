//! A call's output callback as C gives it (function, user_data,
//! finaliser) turned into the chunk handler the client core calls, with
//! the core's delivery thread (`crate::client::delivery`) between them so
//! that a slow callback never holds back a cancel.

use std::ffi::c_void;
use std::future::Future;

use super::boundary::{as_callback, Failure};
use super::events::cmdop_free_fn;
use super::runtime::{block_on, run_on_runtime};
use crate::client::{delivery, CancelToken, Stream};

/// Which stream a chunk of output belongs to.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum cmdop_stream_kind {
    Stdout = 1,
    /// Only on the native path; a terminal merges stderr into stdout.
    Stderr = 2,
}

/// Receives a command's output as it arrives: `data` (not NUL-terminated,
/// borrowed for the duration of the call) holds `len` > 0 bytes of stream
/// `kind` (a cmdop_stream_kind value).
pub type cmdop_exec_output_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        kind: cmdop_stream_kind,
        data: *const u8,
        len: usize,
    ),
>;

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
) -> (ChunkHandler, Option<delivery::Delivery<cmdop_stream_kind>>) {
    if sink.cb.is_none() {
        // No callback: the finaliser runs when the call drops the handler.
        return (
            Box::new(move |_: Stream, _: &[u8]| {
                let _ = &sink;
            }),
            None,
        );
    }
    let deliver: delivery::Deliver<cmdop_stream_kind> = Box::new(move |kind, data: &[u8]| {
        let s = &sink;
        if let Some(cb) = s.cb {
            // SAFETY: the application's callback with its own user_data and
            // a live slice of `data.len()` bytes.
            as_callback(|| unsafe { cb(s.user_data, kind, data.as_ptr(), data.len()) });
        }
    });
    let (mut pusher, delivery) = delivery::channel(deliver, token.clone());
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
