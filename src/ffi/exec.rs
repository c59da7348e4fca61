//! Command execution, results and cancel tokens.

use std::ffi::{c_char, c_void};
use std::time::Duration;

use super::boundary::{arg_str, handle, out_ptr, Failure};
use super::client::cmdop_client;
use super::delivery::{block_on_with_output, output_sink, OutputSink};
use super::events::cmdop_free_fn;
use super::runtime::run_on_runtime;
use super::status::cmdop_status;
use crate::client::{CancelToken, Error, ExecOutput};

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

/// The outcome of a command. Opaque; read with the cmdop_exec_result_*
/// accessors (their pointers are borrowed from the result); free with
/// cmdop_exec_result_free().
pub struct cmdop_exec_result {
    out: ExecOutput,
}

/// Cancels a running cmdop_execute_with_callback() from any thread. Opaque.
pub struct cmdop_cancel_token {
    pub(crate) token: CancelToken,
}

/// The token behind a C `cancel` argument; a fresh one (never cancelled)
/// for NULL.
///
/// # Safety
/// `cancel` is NULL or a live cmdop_cancel_token of this library.
pub(crate) unsafe fn cancel_arg(cancel: *const cmdop_cancel_token) -> CancelToken {
    // SAFETY: NULL (handled) or a live token, by the contract.
    unsafe { cancel.as_ref() }
        .map(|t| t.token.clone())
        .unwrap_or_default()
}

fn timeout_arg(timeout_ms: u32) -> Option<Duration> {
    (timeout_ms > 0).then(|| Duration::from_millis(u64::from(timeout_ms)))
}

/// Store the result (also on TIMEOUT and OUTCOME_UNKNOWN, with the partial
/// output) and turn the error into a failure.
pub(crate) fn finish(
    out: &mut *mut cmdop_exec_result,
    result: Result<ExecOutput, Error>,
) -> Result<(), Failure> {
    match result {
        Ok(o) => {
            *out = Box::into_raw(Box::new(cmdop_exec_result { out: o }));
            Ok(())
        }
        Err(Error::Timeout { message, partial }) => {
            let partial = partial.map(|p| *p).unwrap_or_else(|| ExecOutput {
                timed_out: true,
                exit_code: -1,
                ..Default::default()
            });
            *out = Box::into_raw(Box::new(cmdop_exec_result { out: partial }));
            Err(Failure::new(cmdop_status::Timeout, message))
        }
        Err(Error::OutcomeUnknown { message, partial }) => {
            let partial = partial.map(|p| *p).unwrap_or_else(|| ExecOutput {
                exit_code: -1,
                ..Default::default()
            });
            *out = Box::into_raw(Box::new(cmdop_exec_result { out: partial }));
            Err(Failure::new(cmdop_status::OutcomeUnknown, message))
        }
        Err(e) => Err(e.into()),
    }
}

/// Run `command` (a shell command line) on the selected machine and wait
/// for it. `timeout_ms` 0 = the client's timeout.
///
/// Uses the server's native exec when offered (stdout and stderr apart),
/// else types the command into the machine's terminal session (the official
/// SDKs' technique; output merged, needs a POSIX shell). Either way each
/// command runs on its own: `cd` or `exit` do not affect later commands.
/// On the terminal path, commands of one client on one session take turns.
///
/// On OK, TIMEOUT and OUTCOME_UNKNOWN, `*out` is the caller's; free it with
/// cmdop_exec_result_free(). After TIMEOUT the agent confirmed it killed
/// the command at its timeout; `*out` holds the output printed before.
/// After OUTCOME_UNKNOWN `*out` holds the output received so far (exit
/// code -1, timed_out false). Otherwise `*out` is NULL.
///
/// Returns OK (whatever the command's exit code); TIMEOUT (confirmed
/// killed); OUTCOME_UNKNOWN (the timeout plus a 3 s grace passed with no
/// answer from the agent, or the server lost the agent's link while the
/// command ran: it may have finished, may still run, or may have died;
/// check before running it again); NOT_FOUND (no machine selected, unknown
/// machine); UNAVAILABLE (agent offline before the start, or the
/// connection to the server was lost: server killed, restarted or
/// unreachable; never INTERNAL for a lost connection); DISCONNECTED (not
/// connected, or cmdop_close() was called while the command ran: it was
/// killed); INVALID_ARGUMENT. A started command is never retried. Thread: any; blocks; IN_CALLBACK
/// from inside a callback.
#[no_mangle]
pub unsafe extern "C" fn cmdop_execute(
    client: *mut cmdop_client,
    command: *const c_char,
    timeout_ms: u32,
    out: *mut *mut cmdop_exec_result,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a writable pointer slot.
        let out = unsafe { out_ptr(out, "out") }?;
        // SAFETY: NULL (checked) or a live handle of this library.
        let c = unsafe { handle(client, "client") }?;
        // SAFETY: NULL (checked) or a NUL-terminated string.
        let command = unsafe { arg_str(command, "command") }?;
        let client = c.client.clone();
        let command = command.to_owned();
        let timeout = timeout_arg(timeout_ms);
        let result = run_on_runtime("cmdop_execute", async move {
            client.execute(&command, timeout).await
        })?;
        finish(out, result)
    }
}

/// Like cmdop_execute(), also handing each chunk of output to `on_chunk`
/// (may be NULL) as it arrives, in order, one call at a time, on a thread
/// of the library's (one per call); it may call accessors and
/// cmdop_cancel_token_cancel(), not blocking functions. Without a cancel,
/// every callback has returned before this function returns. `cancel` (may
/// be NULL): cmdop_cancel_token_cancel() on it from any thread stops and
/// kills the command; the call then returns CANCELLED promptly (within
/// milliseconds, whatever the callback is doing), output not yet delivered
/// is dropped, and no callback starts after cmdop_cancel_token_cancel()
/// returned. A callback already running then may still be finishing after
/// this function returned: `free_user_data` (may be NULL) is called with
/// `user_data` exactly once, on any outcome (failed argument checks
/// included), when no callback runs any more — before this function
/// returns unless a cancel left a callback running, then right after that
/// callback returned, on the library's thread. Keep `user_data` valid
/// until then.
///
/// The result also keeps the output (up to 64 MiB per stream); for large
/// outputs use cmdop_execute_with_callback_discard(), which keeps none.
///
/// Ownership and returns as cmdop_execute() (OUTCOME_UNKNOWN included),
/// plus CANCELLED.
#[no_mangle]
pub unsafe extern "C" fn cmdop_execute_with_callback(
    client: *mut cmdop_client,
    command: *const c_char,
    timeout_ms: u32,
    on_chunk: cmdop_exec_output_fn,
    user_data: *mut c_void,
    free_user_data: cmdop_free_fn,
    cancel: *const cmdop_cancel_token,
    out: *mut *mut cmdop_exec_result,
) -> cmdop_status {
    let sink = output_sink(on_chunk, user_data, free_user_data);
    // SAFETY: the caller's arguments, forwarded under the same contract.
    unsafe { execute_streaming(client, command, timeout_ms, sink, cancel, out, true) }
}

/// Like cmdop_execute_with_callback(), but the output goes only to `on_chunk`:
/// the result keeps none (cmdop_exec_result_output(), _stdout() and
/// _stderr() are empty, also after TIMEOUT), so memory use does not grow
/// with what the command prints. Exit code, signal, duration and the other
/// accessors work as usual.
///
/// Ownership and returns as cmdop_execute_with_callback().
#[no_mangle]
pub unsafe extern "C" fn cmdop_execute_with_callback_discard(
    client: *mut cmdop_client,
    command: *const c_char,
    timeout_ms: u32,
    on_chunk: cmdop_exec_output_fn,
    user_data: *mut c_void,
    free_user_data: cmdop_free_fn,
    cancel: *const cmdop_cancel_token,
    out: *mut *mut cmdop_exec_result,
) -> cmdop_status {
    let sink = output_sink(on_chunk, user_data, free_user_data);
    // SAFETY: the caller's arguments, forwarded under the same contract.
    unsafe { execute_streaming(client, command, timeout_ms, sink, cancel, out, false) }
}

/// The body of cmdop_execute_with_callback() (`keep`) and
/// cmdop_execute_with_callback_discard().
#[allow(clippy::too_many_arguments)]
unsafe fn execute_streaming(
    client: *mut cmdop_client,
    command: *const c_char,
    timeout_ms: u32,
    sink: OutputSink,
    cancel: *const cmdop_cancel_token,
    out: *mut *mut cmdop_exec_result,
    keep: bool,
) -> cmdop_status {
    ffi_boundary! {
        let sink = sink;
        // SAFETY: NULL (checked) or a writable pointer slot.
        let out = unsafe { out_ptr(out, "out") }?;
        // SAFETY: NULL (checked) or a live handle of this library.
        let c = unsafe { handle(client, "client") }?;
        // SAFETY: NULL (checked) or a NUL-terminated string.
        let command = unsafe { arg_str(command, "command") }?;
        // SAFETY: NULL (checked) or a live object of this library.
        let token = unsafe { cancel_arg(cancel) };
        let timeout = timeout_arg(timeout_ms);
        let result = if keep {
            block_on_with_output("cmdop_execute_with_callback", sink, token, |on_chunk, token| {
                c.client.execute_stream(command, timeout, on_chunk, token)
            })?
        } else {
            block_on_with_output("cmdop_execute_with_callback_discard", sink, token, |on_chunk, token| {
                c.client.execute_stream_discarding(command, timeout, on_chunk, token)
            })?
        };
        finish(out, result)
    }
}

/// A new cancel token, or NULL if out of memory. Free with
/// cmdop_cancel_token_free() after the calls using it returned.
#[no_mangle]
pub extern "C" fn cmdop_cancel_token_new() -> *mut cmdop_cancel_token {
    ffi_boundary!(@value std::ptr::null_mut();
        Box::into_raw(Box::new(cmdop_cancel_token { token: CancelToken::new() }))
    )
}

/// Cancel every call using `token`, now and later (it stays cancelled).
/// Returns OK or INVALID_ARGUMENT (NULL). Thread: any, callbacks included.
#[no_mangle]
pub unsafe extern "C" fn cmdop_cancel_token_cancel(
    token: *const cmdop_cancel_token,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a live handle of this library.
        let token = unsafe { handle(token, "token") }?.token.clone();
        // Only our own reference from here: a call using the token may
        // return as soon as the flag is set (a callback cancelling its own
        // call), and the application may then free `token` at once.
        token.cancel();
        Ok(())
    }
}

/// Free a cancel token. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn cmdop_cancel_token_free(token: *mut cmdop_cancel_token) {
    ffi_boundary!(@value ();
        if !token.is_null() {
            // SAFETY: created by cmdop_cancel_token_new; freed once.
            drop(unsafe { Box::from_raw(token) });
        }
    )
}

fn bytes_out(v: &[u8], len: *mut usize) -> *const u8 {
    if !len.is_null() {
        // SAFETY: non-null out-parameter provided by the caller.
        unsafe { *len = v.len() };
    }
    v.as_ptr()
}

unsafe fn result_bytes(
    r: *const cmdop_exec_result,
    len: *mut usize,
    pick: fn(&ExecOutput) -> &[u8],
) -> *const u8 {
    // SAFETY: NULL (checked) or a live object of this library.
    match unsafe { r.as_ref() } {
        Some(r) => bytes_out(pick(&r.out), len),
        None => {
            if !len.is_null() {
                // SAFETY: non-NULL `len` is writable (header contract).
                unsafe { *len = 0 };
            }
            std::ptr::null()
        }
    }
}

/// All output in arrival order (stdout and stderr interleaved); `*len` gets
/// its length (`len` may be NULL). Not NUL-terminated; borrowed from `r`.
/// NULL (and 0) when `r` is NULL.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_result_output(
    r: *const cmdop_exec_result,
    len: *mut usize,
) -> *const u8 {
    // SAFETY: NULL or a live result; `len` NULL or writable.
    ffi_boundary!(@value std::ptr::null(); unsafe { result_bytes(r, len, |o| &o.output) })
}

/// Stdout alone (on the terminal path: all output). As cmdop_exec_result_output().
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_result_stdout(
    r: *const cmdop_exec_result,
    len: *mut usize,
) -> *const u8 {
    // SAFETY: NULL or a live result; `len` NULL or writable.
    ffi_boundary!(@value std::ptr::null(); unsafe { result_bytes(r, len, |o| &o.stdout) })
}

/// Stderr alone (native path only; empty on the terminal path).
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_result_stderr(
    r: *const cmdop_exec_result,
    len: *mut usize,
) -> *const u8 {
    // SAFETY: NULL or a live result; `len` NULL or writable.
    ffi_boundary!(@value std::ptr::null(); unsafe { result_bytes(r, len, |o| &o.stderr) })
}

/// Exit code; -1 when killed by a signal, timed out, or `r` is NULL.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_result_exit_code(r: *const cmdop_exec_result) -> i32 {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value -1; unsafe { r.as_ref() }.map_or(-1, |r| r.out.exit_code))
}

/// Signal that ended the command (native path), 0 if none.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_result_signal(r: *const cmdop_exec_result) -> i32 {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value 0; unsafe { r.as_ref() }.map_or(0, |r| r.out.signal))
}

/// True when the command was killed by the timeout.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_result_timed_out(r: *const cmdop_exec_result) -> bool {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value false; unsafe { r.as_ref() }.is_some_and(|r| r.out.timed_out))
}

/// True when the command ran through native exec, false for the terminal path.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_result_native(r: *const cmdop_exec_result) -> bool {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value false; unsafe { r.as_ref() }.is_some_and(|r| r.out.native))
}

/// True when some output is missing: beyond 64 MiB per stream (the chunk
/// callback still saw it), or, on the terminal path, printed faster than
/// the server's buffer could hold between two polls.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_result_truncated(r: *const cmdop_exec_result) -> bool {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value false; unsafe { r.as_ref() }.is_some_and(|r| r.out.truncated))
}

/// How long the command ran, in milliseconds.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_result_duration_ms(r: *const cmdop_exec_result) -> u64 {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value 0; unsafe { r.as_ref() }.map_or(0, |r| u64::try_from(r.out.duration.as_millis()).unwrap_or(u64::MAX)))
}

/// Free a result. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_result_free(r: *mut cmdop_exec_result) {
    ffi_boundary!(@value ();
        if !r.is_null() {
            // SAFETY: created by Box::into_raw in this module; freed once.
            drop(unsafe { Box::from_raw(r) });
        }
    )
}
