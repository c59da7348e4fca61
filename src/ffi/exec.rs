//! Execute: the one entry point (cmdop_exec), the older positional forms
//! as thin wrappers over it, and cancel tokens.

use std::ffi::{c_char, c_void};

use super::boundary::{arg_str, handle, out_ptr, Failure};
use super::cancel::{cancel_arg, cmdop_cancel_token};
use super::client::cmdop_client;
use super::events::cmdop_free_fn;
use super::exec_options::{cmdop_exec_options, cmdop_exec_stdin, core_options};
use super::exec_result::{cmdop_exec_result, finish};
use super::output::{cmdop_exec_output_fn, output_sink, run_with_output};
use super::status::cmdop_status;
use super::versioned::Versioned;

/// Runs `command` (a shell command line) on the selected machine with
/// `opts` (NULL = the defaults of cmdop_exec_options_init()) and waits for
/// it: the one execute every other cmdop_execute* function is a form of.
///
/// Uses the server's native exec when offered (stdout and stderr apart),
/// else types the command into the machine's terminal session (the official
/// SDKs' technique; output merged, needs a POSIX shell). Either way each
/// command runs on its own: `cd` or `exit` do not affect later commands.
/// On the terminal path, commands of one client on one session take turns;
/// environment and working directory are applied in the command's subshell,
/// and stdin (`stdin_data`, `input`) makes the call NOT_SUPPORTED: an
/// option is never silently dropped.
///
/// The result keeps the output (up to 64 MiB per stream) unless
/// `opts->discard_output`. On OK, TIMEOUT and OUTCOME_UNKNOWN `*out` is
/// the caller's (cmdop_exec_result_free()); otherwise NULL. After TIMEOUT
/// the agent confirmed it killed the command at its timeout, and `*out`
/// holds the output printed before; after OUTCOME_UNKNOWN `*out` holds the
/// output received so far (exit code -1, timed_out false).
///
/// Returns OK (whatever the command's exit code); TIMEOUT (confirmed
/// killed); OUTCOME_UNKNOWN (the timeout plus a 3 s grace passed with no
/// answer from the agent, or the server lost the agent's link while the
/// command ran: it may have finished, may still run, or may have died;
/// check before running it again); CANCELLED (`opts->cancel`); NOT_FOUND
/// (no machine selected, unknown machine); UNAVAILABLE (agent offline
/// before the start, or the connection to the server was lost: server
/// killed, restarted or unreachable; never INTERNAL for a lost
/// connection); DISCONNECTED (not connected, or cmdop_close() was called
/// while the command ran: it was killed); NOT_SUPPORTED (an option the
/// path cannot honour); OPERATION_FAILED (working directory missing);
/// INVALID_ARGUMENT (NULL `client`, `command` or `out`, a bad field of
/// `opts`, an `input` used before). A started command is never retried.
/// Thread: any; blocks; IN_CALLBACK from inside a callback.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec(
    client: *mut cmdop_client,
    command: *const c_char,
    opts: *const cmdop_exec_options,
    out: *mut *mut cmdop_exec_result,
) -> cmdop_status {
    // SAFETY: the caller's `opts`, under cmdop_exec()'s contract.
    match unsafe { read_opts(opts) } {
        // SAFETY: the caller's arguments, forwarded under the same contract.
        Ok(o) => unsafe { exec_call("cmdop_exec", client, command, o, out) },
        Err(failure) => super::boundary::run_status(|| Err(failure)),
    }
}

/// The caller's options in the current layout (NULL: the defaults), with
/// panics caught.
///
/// # Safety
/// `opts` is NULL or a readable struct whose version field tells its layout.
unsafe fn read_opts(opts: *const cmdop_exec_options) -> Result<cmdop_exec_options, Failure> {
    ffi_boundary!(@value Err(Failure::invalid("opts could not be read"));
        // SAFETY: by this function's contract.
        unsafe { super::versioned::read(opts) })
}

/// The body of every execute: arms the finaliser of `o.user_data` first,
/// so it runs on every path, then checks the arguments and runs the call.
///
/// # Safety
/// The arguments are as cmdop_exec() documents, `o` read from the caller.
unsafe fn exec_call(
    what: &'static str,
    client: *mut cmdop_client,
    command: *const c_char,
    o: cmdop_exec_options,
    out: *mut *mut cmdop_exec_result,
) -> cmdop_status {
    let sink = output_sink(o.on_output, o.user_data, o.free_user_data);
    ffi_boundary! {
        let sink = sink;
        // SAFETY: NULL (checked) or a writable pointer slot.
        let out = unsafe { out_ptr(out, "out") }?;
        // SAFETY: NULL (checked) or a live handle of this library.
        let client = unsafe { handle(client, "client") }?.client.clone();
        // SAFETY: NULL (checked) or a NUL-terminated string.
        let command = unsafe { arg_str(command, "command") }?.to_owned();
        // SAFETY: the pointers of `o` are as documented on the struct.
        let opts = unsafe { core_options(&o) }?;
        // SAFETY: NULL or a live cmdop_exec_stdin of this library.
        let input = unsafe { o.input.as_ref() };
        let reader = input.map(cmdop_exec_stdin::take_reader).transpose()?;
        // SAFETY: NULL or a live token of this library.
        let token = unsafe { cancel_arg(o.cancel) };
        let result = run_with_output(what, sink, token, |on_output, token| async move {
            match reader {
                Some(reader) => client.execute_piped(&command, &opts, reader, on_output, token).await,
                None => client.execute_with(&command, &opts, on_output, token).await,
            }
        });
        if let Some(input) = input {
            input.end();
        }
        finish(out, result?)
    }
}

/// The defaults with a timeout, for the positional forms.
fn with_timeout(timeout_ms: u32) -> cmdop_exec_options {
    cmdop_exec_options {
        timeout_ms,
        ..<cmdop_exec_options as Versioned>::defaults()
    }
}

/// cmdop_exec() with only a timeout (`timeout_ms` 0 = the client's
/// timeout): `opts.timeout_ms`. Ownership and returns as cmdop_exec()
/// (CANCELLED and NOT_SUPPORTED aside). Thread: any; blocks; IN_CALLBACK
/// from inside a callback.
#[no_mangle]
pub unsafe extern "C" fn cmdop_execute(
    client: *mut cmdop_client,
    command: *const c_char,
    timeout_ms: u32,
    out: *mut *mut cmdop_exec_result,
) -> cmdop_status {
    // SAFETY: the caller's arguments, forwarded under the same contract.
    unsafe {
        exec_call(
            "cmdop_execute",
            client,
            command,
            with_timeout(timeout_ms),
            out,
        )
    }
}

/// cmdop_exec() with `timeout_ms`, `on_chunk` (may be NULL), `user_data`,
/// `free_user_data` (may be NULL) and `cancel` (may be NULL) in the
/// options' fields of the same meaning (`on_output` for `on_chunk`):
/// `free_user_data` is called exactly once on every outcome. Ownership,
/// returns and threads as cmdop_exec().
/// Thread: any; blocks; IN_CALLBACK from inside a callback.
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
    let o = cmdop_exec_options {
        on_output: on_chunk,
        user_data,
        free_user_data,
        cancel,
        ..with_timeout(timeout_ms)
    };
    // SAFETY: the caller's arguments, forwarded under the same contract.
    unsafe { exec_call("cmdop_execute_with_callback", client, command, o, out) }
}

/// cmdop_execute_with_callback() with `discard_output`: the result keeps no
/// output (cmdop_exec_result_output(), _stdout() and _stderr() are empty,
/// also after TIMEOUT). Ownership, returns and threads as cmdop_exec().
/// Thread: any; blocks; IN_CALLBACK from inside a callback.
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
    let o = cmdop_exec_options {
        on_output: on_chunk,
        user_data,
        free_user_data,
        cancel,
        discard_output: true,
        ..with_timeout(timeout_ms)
    };
    // SAFETY: the caller's arguments, forwarded under the same contract.
    unsafe {
        exec_call(
            "cmdop_execute_with_callback_discard",
            client,
            command,
            o,
            out,
        )
    }
}

/// cmdop_exec() with `opts` (NULL = defaults; version 1 or 2) and the
/// callback, `user_data`, finaliser and cancel given apart: these arguments
/// replace the fields of the same meaning in a version-2 `opts`, and
/// `free_user_data` is called exactly once on every outcome, a refused
/// `opts` included. Ownership, returns and threads as cmdop_exec().
/// Thread: any; blocks; IN_CALLBACK from inside a callback.
#[no_mangle]
pub unsafe extern "C" fn cmdop_execute_with_options(
    client: *mut cmdop_client,
    command: *const c_char,
    opts: *const cmdop_exec_options,
    on_output: cmdop_exec_output_fn,
    user_data: *mut c_void,
    free_user_data: cmdop_free_fn,
    cancel: *const cmdop_cancel_token,
    out: *mut *mut cmdop_exec_result,
) -> cmdop_status {
    // SAFETY: the caller's arguments, forwarded under the same contract.
    unsafe {
        positional(
            "cmdop_execute_with_options",
            client,
            command,
            opts,
            std::ptr::null_mut(),
            (on_output, user_data, free_user_data, cancel),
            out,
        )
    }
}

/// cmdop_execute_with_options() with stdin streamed from `input` (the
/// `input` field of cmdop_exec_options). Ownership, returns and threads as
/// cmdop_exec(); INVALID_ARGUMENT also for a NULL `input`.
/// Thread: any; blocks; IN_CALLBACK from inside a callback.
#[no_mangle]
pub unsafe extern "C" fn cmdop_execute_with_stdin(
    client: *mut cmdop_client,
    command: *const c_char,
    opts: *const cmdop_exec_options,
    input: *mut cmdop_exec_stdin,
    on_output: cmdop_exec_output_fn,
    user_data: *mut c_void,
    free_user_data: cmdop_free_fn,
    cancel: *const cmdop_cancel_token,
    out: *mut *mut cmdop_exec_result,
) -> cmdop_status {
    if input.is_null() {
        // The finaliser still runs once, as for any refused argument.
        drop(output_sink(on_output, user_data, free_user_data));
        return super::boundary::run_status(|| Err(Failure::null("input")));
    }
    // SAFETY: the caller's arguments, forwarded under the same contract.
    unsafe {
        positional(
            "cmdop_execute_with_stdin",
            client,
            command,
            opts,
            input,
            (on_output, user_data, free_user_data, cancel),
            out,
        )
    }
}

/// The callback set of the positional forms.
type Callbacks = (
    cmdop_exec_output_fn,
    *mut c_void,
    cmdop_free_fn,
    *const cmdop_cancel_token,
);

/// Merges the positional forms' arguments into the caller's options and
/// runs [`exec_call`]; the finaliser runs also when `opts` is refused.
///
/// # Safety
/// As cmdop_execute_with_stdin().
unsafe fn positional(
    what: &'static str,
    client: *mut cmdop_client,
    command: *const c_char,
    opts: *const cmdop_exec_options,
    input: *mut cmdop_exec_stdin,
    (on_output, user_data, free_user_data, cancel): Callbacks,
    out: *mut *mut cmdop_exec_result,
) -> cmdop_status {
    // SAFETY: the caller's `opts`, under the same contract.
    let o = match unsafe { read_opts(opts) } {
        Ok(o) => o,
        Err(failure) => {
            drop(output_sink(on_output, user_data, free_user_data));
            return super::boundary::run_status(|| Err(failure));
        }
    };
    let o = cmdop_exec_options {
        on_output,
        user_data,
        free_user_data,
        cancel,
        input,
        ..o
    };
    // SAFETY: the caller's arguments, forwarded under the same contract.
    unsafe { exec_call(what, client, command, o, out) }
}
