//! Execute with options (stdin bytes, environment, working directory) and
//! with stdin streamed from the caller while the command runs.

use std::ffi::{c_char, c_void, CStr};
use std::time::Duration;

use super::boundary::{arg_str, handle, out_ptr, Failure};
use super::client::cmdop_client;
use super::delivery::{block_on_with_output, output_sink};
use super::events::cmdop_free_fn;
use super::exec::{
    cancel_arg, cmdop_cancel_token, cmdop_exec_output_fn, cmdop_exec_result, finish,
};
use super::status::cmdop_status;
use crate::client::{stdin_pipe, ExecOptions, StdinReader, StdinWriter};

/// Version of the cmdop_exec_options layout this header describes.
pub const CMDOP_EXEC_OPTIONS_VERSION: u32 = 1;

/// How to run a command beyond its text. Initialise with
/// cmdop_exec_options_init(&opts, CMDOP_EXEC_OPTIONS_VERSION), then set
/// fields; everything it points to is borrowed only during the call.
#[repr(C)]
pub struct cmdop_exec_options {
    /// CMDOP_EXEC_OPTIONS_VERSION (the layout the caller was built with).
    pub version: u32,
    /// Kill the command after this long; 0 = the client's timeout.
    pub timeout_ms: u32,
    /// Written to the command's stdin, then closed (before any streamed
    /// stdin). NULL or `stdin_len` 0 = none. Native exec only: on the
    /// terminal path the call returns NOT_SUPPORTED.
    pub stdin_data: *const u8,
    pub stdin_len: usize,
    /// `env_count` "NAME=value" strings added to the command's environment
    /// (NULL when 0). On the terminal path names must be shell identifiers
    /// and values free of control characters (else NOT_SUPPORTED).
    pub env: *const *const c_char,
    pub env_count: usize,
    /// Directory to run in (relative and "~/" paths from the agent's
    /// home); NULL or "" = the default. Missing: OPERATION_FAILED.
    pub working_directory: *const c_char,
    /// Keep no output in the result (it goes only to the callback).
    pub discard_output: bool,
}

/// Fills `opts` with the defaults of layout `version` (only
/// CMDOP_EXEC_OPTIONS_VERSION = 1 exists). Returns OK, or INVALID_ARGUMENT
/// (NULL, unknown version). Thread: any.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_options_init(
    opts: *mut cmdop_exec_options,
    version: u32,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a writable cmdop_exec_options of `version`.
        unsafe { super::versioned::init(opts, version) }
    }
}

impl super::versioned::Versioned for cmdop_exec_options {
    const NAME: &'static str = "cmdop_exec_options";
    const INIT: &'static str = "cmdop_exec_options_init";
    const CURRENT: u32 = CMDOP_EXEC_OPTIONS_VERSION;
    /// Only version 1 exists: the current layout.
    fn size_of_version(_version: u32) -> usize {
        size_of::<Self>()
    }
    fn defaults() -> Self {
        cmdop_exec_options {
            version: CMDOP_EXEC_OPTIONS_VERSION,
            timeout_ms: 0,
            stdin_data: std::ptr::null(),
            stdin_len: 0,
            env: std::ptr::null(),
            env_count: 0,
            working_directory: std::ptr::null(),
            discard_output: false,
        }
    }
    fn bools() -> &'static [(&'static str, usize)] {
        &[(
            "discard_output",
            std::mem::offset_of!(cmdop_exec_options, discard_output),
        )]
    }
}

/// Reads the fields of `opts`'s version into [`ExecOptions`].
///
/// # Safety
/// `opts` is NULL or points to a cmdop_exec_options whose pointers are
/// NULL or valid as documented there.
unsafe fn read_options(opts: *const cmdop_exec_options) -> Result<ExecOptions, Failure> {
    if opts.is_null() {
        return Ok(ExecOptions::default());
    }
    // SAFETY: a readable struct whose version field tells its layout.
    let o = unsafe { super::versioned::read(opts) }?;
    let invalid = |m: String| Failure::new(cmdop_status::InvalidArgument, m);
    let stdin = if o.stdin_len == 0 {
        Vec::new()
    } else if o.stdin_data.is_null() {
        return Err(invalid("stdin_data is NULL but stdin_len is not 0".into()));
    } else {
        // SAFETY: non-NULL and, per the contract, `stdin_len` readable bytes.
        unsafe { std::slice::from_raw_parts(o.stdin_data, o.stdin_len) }.to_vec()
    };
    let mut env = Vec::with_capacity(o.env_count.min(1024));
    if o.env_count > 0 {
        if o.env.is_null() {
            return Err(invalid("env is NULL but env_count is not 0".into()));
        }
        // SAFETY: non-NULL and, per the contract, `env_count` pointers.
        let entries = unsafe { std::slice::from_raw_parts(o.env, o.env_count) };
        for (i, &entry) in entries.iter().enumerate() {
            if entry.is_null() {
                return Err(invalid(format!("env[{i}] is NULL")));
            }
            // SAFETY: non-NULL, a NUL-terminated string per the contract.
            let text = unsafe { CStr::from_ptr(entry) }
                .to_str()
                .map_err(|_| invalid(format!("env[{i}] is not UTF-8")))?;
            match text.split_once('=') {
                Some((k, v)) if !k.is_empty() => env.push((k.to_owned(), v.to_owned())),
                _ => return Err(invalid(format!("env[{i}] '{text}' is not NAME=value"))),
            }
        }
    }
    let working_directory = if o.working_directory.is_null() {
        String::new()
    } else {
        // SAFETY: non-NULL, a NUL-terminated string per the contract.
        unsafe { CStr::from_ptr(o.working_directory) }
            .to_str()
            .map_err(|_| invalid("working_directory is not UTF-8".into()))?
            .to_owned()
    };
    Ok(ExecOptions {
        timeout: (o.timeout_ms > 0).then(|| Duration::from_millis(u64::from(o.timeout_ms))),
        stdin,
        env,
        working_directory,
        discard_output: o.discard_output,
    })
}

/// Runs `command` on the selected machine with `opts` (NULL = defaults),
/// handing output to `on_output` (may be NULL) as
/// cmdop_execute_with_callback() does (on a library thread; a cancel
/// returns at once and no callback starts after it; `free_user_data`, may
/// be NULL, is called once when no callback runs any more).
/// `cancel` (may be NULL) stops and kills it from any thread (CANCELLED).
/// cmdop_execute() stays the simple form.
///
/// Native exec honours every option. On the terminal path environment and
/// working directory are applied in the command's subshell, and stdin
/// makes the call NOT_SUPPORTED: an option is never silently dropped.
///
/// On OK, TIMEOUT and OUTCOME_UNKNOWN `*out` is the caller's
/// (cmdop_exec_result_free()); otherwise NULL. Returns OK (any exit code),
/// TIMEOUT (confirmed killed), OUTCOME_UNKNOWN (as cmdop_execute()), CANCELLED,
/// NOT_SUPPORTED, OPERATION_FAILED (working directory missing), NOT_FOUND,
/// UNAVAILABLE, DISCONNECTED, INVALID_ARGUMENT. Thread: any; blocks;
/// IN_CALLBACK from inside a callback.
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
    let sink = output_sink(on_output, user_data, free_user_data);
    ffi_boundary! {
        let sink = sink;
        // SAFETY: NULL (checked) or a writable pointer slot.
        let out = unsafe { out_ptr(out, "out") }?;
        // SAFETY: NULL (checked) or a live handle of this library.
        let c = unsafe { handle(client, "client") }?;
        // SAFETY: NULL (checked) or a NUL-terminated string.
        let command = unsafe { arg_str(command, "command") }?;
        // SAFETY: NULL or a struct as documented.
        let opts = unsafe { read_options(opts) }?;
        // SAFETY: NULL or a live token of this library.
        let token = unsafe { cancel_arg(cancel) };
        let result = block_on_with_output("cmdop_execute_with_options", sink, token, |on_output, token| {
            c.client.execute_with(command, &opts, on_output, token)
        })?;
        finish(out, result)
    }
}

/// The writing end of a command's stdin for cmdop_execute_with_stdin().
/// Opaque; made by cmdop_exec_stdin_new(), freed by cmdop_exec_stdin_free().
pub struct cmdop_exec_stdin {
    writer: std::sync::Mutex<Option<StdinWriter>>,
    reader: std::sync::Mutex<Option<StdinReader>>,
}

/// A new stdin for one cmdop_execute_with_stdin() call, in `*out` (the
/// caller's; cmdop_exec_stdin_free()). Returns OK or INVALID_ARGUMENT.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_stdin_new(out: *mut *mut cmdop_exec_stdin) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a writable pointer slot.
        let out = unsafe { out_ptr(out, "out") }?;
        let (writer, reader) = stdin_pipe();
        *out = Box::into_raw(Box::new(cmdop_exec_stdin {
            writer: std::sync::Mutex::new(Some(writer)),
            reader: std::sync::Mutex::new(Some(reader)),
        }));
        Ok(())
    }
}

fn writer_of(s: &cmdop_exec_stdin) -> Result<StdinWriter, Failure> {
    s.writer
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .ok_or_else(|| {
            Failure::new(
                cmdop_status::InvalidArgument,
                "this stdin is closed; make a new one for the next command",
            )
        })
}

/// Writes `len` bytes at `data` to the command's stdin, blocking while the
/// command does not keep up (memory stays bounded). Call it from another
/// thread than the one in cmdop_execute_with_stdin(), before or while the
/// command runs. Returns OK, INVALID_ARGUMENT (NULL, closed), or
/// OPERATION_FAILED (the command's call ended). Thread: any but a
/// runtime thread; blocks.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_stdin_write(
    stdin: *const cmdop_exec_stdin,
    data: *const u8,
    len: usize,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a live cmdop_exec_stdin.
        let s = unsafe { handle(stdin, "stdin") }?;
        if len == 0 {
            return Ok(());
        }
        if data.is_null() {
            return Err(Failure::new(cmdop_status::InvalidArgument, "data is NULL but len is not 0"));
        }
        // SAFETY: non-NULL and, per the contract, `len` readable bytes.
        let bytes = unsafe { std::slice::from_raw_parts(data, len) };
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Failure::new(cmdop_status::InCallback, "cmdop_exec_stdin_write blocks; call it from a thread of your own"));
        }
        writer_of(s)?.write_blocking(bytes).map_err(Failure::from)
    }
}

/// Closes the command's stdin after what was written (the command sees
/// EOF); later writes are INVALID_ARGUMENT. Returns OK (also when the
/// command already ended) or INVALID_ARGUMENT (NULL). Thread: any.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_stdin_close(stdin: *const cmdop_exec_stdin) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a live cmdop_exec_stdin.
        let s = unsafe { handle(stdin, "stdin") }?;
        // Dropping the only writer closes stdin without blocking.
        s.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        Ok(())
    }
}

/// Frees `stdin` (NULL: no-op), closing it if still open; only after the
/// cmdop_execute_with_stdin() call using it returned. Thread: any.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_stdin_free(stdin: *mut cmdop_exec_stdin) {
    ffi_boundary!(@value ();
        if !stdin.is_null() {
            // SAFETY: non-NULL, made by cmdop_exec_stdin_new, freed once.
            drop(unsafe { Box::from_raw(stdin) });
        }
    )
}

/// Like cmdop_execute_with_options(), with stdin streamed from `stdin`
/// (from cmdop_exec_stdin_new(); one command per stdin) while the command
/// runs: other threads call cmdop_exec_stdin_write() and, for EOF,
/// cmdop_exec_stdin_close(). `opts->stdin_data` is written first. Needs
/// native exec with streamed stdin (CMDOP_CAPABILITY_EXEC_STDIN) on server
/// and agent: otherwise NOT_SUPPORTED.
///
/// Ownership and returns as cmdop_execute_with_options(); INVALID_ARGUMENT
/// also when `stdin` was used before.
#[no_mangle]
pub unsafe extern "C" fn cmdop_execute_with_stdin(
    client: *mut cmdop_client,
    command: *const c_char,
    opts: *const cmdop_exec_options,
    stdin: *const cmdop_exec_stdin,
    on_output: cmdop_exec_output_fn,
    user_data: *mut c_void,
    free_user_data: cmdop_free_fn,
    cancel: *const cmdop_cancel_token,
    out: *mut *mut cmdop_exec_result,
) -> cmdop_status {
    let sink = output_sink(on_output, user_data, free_user_data);
    ffi_boundary! {
        let sink = sink;
        // SAFETY: NULL (checked) or a writable pointer slot.
        let out = unsafe { out_ptr(out, "out") }?;
        // SAFETY: NULL (checked) or a live handle of this library.
        let c = unsafe { handle(client, "client") }?;
        // SAFETY: NULL (checked) or a NUL-terminated string.
        let command = unsafe { arg_str(command, "command") }?;
        // SAFETY: NULL (checked) or a live cmdop_exec_stdin.
        let s = unsafe { handle(stdin, "stdin") }?;
        // SAFETY: NULL or a struct as documented.
        let opts = unsafe { read_options(opts) }?;
        let reader = s.reader.lock().unwrap_or_else(|p| p.into_inner()).take().ok_or_else(|| {
            Failure::new(cmdop_status::InvalidArgument, "this stdin was already used by a command; make a new one")
        })?;
        // SAFETY: NULL or a live token of this library.
        let token = unsafe { cancel_arg(cancel) };
        let result = block_on_with_output("cmdop_execute_with_stdin", sink, token, |on_output, token| {
            c.client.execute_piped(command, &opts, reader, on_output, token)
        })?;
        finish(out, result)
    }
}
