//! Execute with options (stdin bytes, environment, working directory) and
//! with stdin streamed from the caller while the command runs.

use parking_lot::Mutex;
use std::ffi::{c_char, c_void, CStr};
use std::mem::size_of;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::boundary::{handle, out_ptr, Failure};
use super::cancel::cmdop_cancel_token;
use super::events::cmdop_free_fn;
use super::output::cmdop_exec_output_fn;
use super::status::cmdop_status;
use crate::client::{stdin_pipe, ExecOptions, StdinReader, StdinWriter};

/// Version of the cmdop_exec_options layout this header describes.
pub const CMDOP_EXEC_OPTIONS_VERSION: u32 = 2;

/// Everything an execute can take beyond the command's text, for
/// cmdop_exec(). Initialise with cmdop_exec_options_init(&opts,
/// CMDOP_EXEC_OPTIONS_VERSION) (or CMDOP_EXEC_OPTIONS_INIT), then set
/// fields; what it points to is borrowed only during the call, except
/// `user_data` (see `free_user_data`).
#[repr(C)]
pub struct cmdop_exec_options {
    /// CMDOP_EXEC_OPTIONS_VERSION (the layout the caller was built with).
    pub version: u32,
    /// Kill the command after this long; 0 = the client's timeout.
    pub timeout_ms: u32,
    /// Written to the command's stdin, then closed (before any streamed
    /// `input`). NULL or `stdin_len` 0 = none. Native exec only: on the
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
    /// Keep no output in the result (it goes only to `on_output`), so
    /// memory does not grow with what the command prints.
    pub discard_output: bool,
    /// Version 2. Receives each chunk of output as it arrives (NULL = none),
    /// in order, one call at a time, on a thread of the library's (one per
    /// call); it may call accessors and cmdop_cancel_token_cancel(), not
    /// blocking functions. Without a cancel, every callback has returned
    /// before the execute returns.
    pub on_output: cmdop_exec_output_fn,
    /// Version 2. Passed to `on_output` and to `free_user_data`.
    pub user_data: *mut c_void,
    /// Version 2. Called with `user_data` exactly once when no callback runs
    /// any more, on every outcome once `opts` was read (failed argument
    /// checks included; not when `opts` itself is refused for an unknown
    /// version): before the execute returns, unless a cancel left a
    /// callback running, then right after that callback, on the library's
    /// thread. NULL = none; keep `user_data` valid until then.
    pub free_user_data: cmdop_free_fn,
    /// Version 2. cmdop_cancel_token_cancel() on it, from any thread, stops
    /// and kills the command: the execute returns CANCELLED within
    /// milliseconds, output not yet delivered is dropped and no callback
    /// starts after the cancel returned. NULL = not cancellable.
    pub cancel: *const cmdop_cancel_token,
    /// Version 2. Stdin streamed while the command runs (from
    /// cmdop_exec_stdin_new(); one command per stream): other threads call
    /// cmdop_exec_stdin_write() and, for EOF, cmdop_exec_stdin_close().
    /// `stdin_data` is written first. Needs CMDOP_CAPABILITY_EXEC_STDIN on
    /// server and agent, else NOT_SUPPORTED. NULL = none.
    pub input: *mut cmdop_exec_stdin,
}

/// Version 1 of cmdop_exec_options, frozen: its size is what a caller
/// built against version 1 passes.
#[repr(C)]
struct ExecOptionsV1 {
    version: u32,
    timeout_ms: u32,
    stdin_data: *const u8,
    stdin_len: usize,
    env: *const *const c_char,
    env_count: usize,
    working_directory: *const c_char,
    discard_output: bool,
}

/// Fills `opts` with the defaults of layout `version` (1 or
/// CMDOP_EXEC_OPTIONS_VERSION = 2), writing only that layout's bytes.
/// Returns OK, or INVALID_ARGUMENT (NULL, unknown version). Thread: any.
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
    fn size_of_version(version: u32) -> usize {
        match version {
            1 => size_of::<ExecOptionsV1>(),
            _ => size_of::<Self>(),
        }
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
            on_output: None,
            user_data: std::ptr::null_mut(),
            free_user_data: None,
            cancel: std::ptr::null(),
            input: std::ptr::null_mut(),
        }
    }
    fn bools() -> &'static [(&'static str, usize)] {
        &[(
            "discard_output",
            std::mem::offset_of!(cmdop_exec_options, discard_output),
        )]
    }
}

/// The core's options from the fields of a read `cmdop_exec_options`
/// (the callback, cancel and stdin-stream fields are taken apart by the
/// caller).
///
/// # Safety
/// The pointers of `o` are NULL or valid as documented on the struct.
pub(super) unsafe fn core_options(o: &cmdop_exec_options) -> Result<ExecOptions, Failure> {
    let invalid = |m: String| Failure::new(cmdop_status::InvalidArgument, m);
    let stdin = if o.stdin_len == 0 {
        Vec::new()
    } else if o.stdin_data.is_null() {
        return Err(invalid(
            "opts->stdin_data is NULL but opts->stdin_len is not 0".into(),
        ));
    } else {
        // SAFETY: non-NULL and, per the contract, `stdin_len` readable bytes.
        unsafe { std::slice::from_raw_parts(o.stdin_data, o.stdin_len) }.to_vec()
    };
    let mut env = Vec::with_capacity(o.env_count.min(1024));
    if o.env_count > 0 {
        if o.env.is_null() {
            return Err(invalid(
                "opts->env is NULL but opts->env_count is not 0".into(),
            ));
        }
        // SAFETY: non-NULL and, per the contract, `env_count` pointers.
        let entries = unsafe { std::slice::from_raw_parts(o.env, o.env_count) };
        for (i, &entry) in entries.iter().enumerate() {
            if entry.is_null() {
                return Err(invalid(format!("opts->env[{i}] is NULL")));
            }
            // SAFETY: non-NULL, a NUL-terminated string per the contract.
            let text = unsafe { CStr::from_ptr(entry) }
                .to_str()
                .map_err(|_| invalid(format!("opts->env[{i}] is not UTF-8")))?;
            match text.split_once('=') {
                Some((k, v)) if !k.is_empty() => env.push((k.to_owned(), v.to_owned())),
                _ => {
                    return Err(invalid(format!(
                        "opts->env[{i}] '{text}' is not NAME=value"
                    )))
                }
            }
        }
    }
    let working_directory = if o.working_directory.is_null() {
        String::new()
    } else {
        // SAFETY: non-NULL, a NUL-terminated string per the contract.
        unsafe { CStr::from_ptr(o.working_directory) }
            .to_str()
            .map_err(|_| invalid("opts->working_directory is not UTF-8".into()))?
            .to_owned()
    };
    Ok(ExecOptions {
        timeout: (o.timeout_ms > 0).then(|| Duration::from_millis(u64::from(o.timeout_ms))),
        stdin,
        env,
        working_directory,
        discard_output: o.discard_output,
        machine: None,
        // The C API runs no command in a terminal (yet).
        terminal: None,
    })
}

/// The writing end of a command's stdin, streamed while it runs (the
/// `input` of cmdop_exec_options). Opaque; made by cmdop_exec_stdin_new(),
/// freed by cmdop_exec_stdin_free().
pub struct cmdop_exec_stdin {
    writer: Mutex<Option<StdinWriter>>,
    reader: Mutex<Option<StdinReader>>,
    /// The execute that used it returned: every later write fails.
    ended: AtomicBool,
}

impl cmdop_exec_stdin {
    /// The reading end, for the one execute that uses this stdin.
    pub(super) fn take_reader(&self) -> Result<StdinReader, Failure> {
        self.reader.lock().take().ok_or_else(|| {
            Failure::invalid(
                "opts->input was already used by a command; make a new one with cmdop_exec_stdin_new()",
            )
        })
    }

    /// The execute that used it is returning.
    pub(super) fn end(&self) {
        self.ended.store(true, Ordering::SeqCst);
        self.writer.lock().take();
    }
}

/// A new stdin stream for one execute, in `*out` (the caller's;
/// cmdop_exec_stdin_free()). Returns OK or INVALID_ARGUMENT. Thread: any.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_stdin_new(out: *mut *mut cmdop_exec_stdin) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a writable pointer slot.
        let out = unsafe { out_ptr(out, "out") }?;
        let (writer, reader) = stdin_pipe();
        *out = Box::into_raw(Box::new(cmdop_exec_stdin {
            writer: Mutex::new(Some(writer)),
            reader: Mutex::new(Some(reader)),
            ended: AtomicBool::new(false),
        }));
        Ok(())
    }
}

fn writer_of(s: &cmdop_exec_stdin) -> Result<StdinWriter, Failure> {
    if s.ended.load(Ordering::SeqCst) {
        return Err(Failure::new(
            cmdop_status::OperationFailed,
            "the execute using this stdin has returned; nothing was written",
        ));
    }
    s.writer.lock().clone().ok_or_else(|| {
        Failure::invalid("this stdin is closed; make a new one for the next command")
    })
}

/// Writes `len` bytes at `data` to the command's stdin, blocking while the
/// command does not keep up (memory stays bounded). Call it from another
/// thread than the one in the execute, before or while the command runs.
/// Returns OK, INVALID_ARGUMENT (NULL, closed), or OPERATION_FAILED (the
/// execute using `input` has returned: always, once it has). Thread: any
/// but a library thread (IN_CALLBACK there); blocks.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_stdin_write(
    input: *mut cmdop_exec_stdin,
    data: *const u8,
    len: usize,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a live cmdop_exec_stdin.
        let s = unsafe { handle(input, "input") }?;
        if data.is_null() && len != 0 {
            return Err(Failure::invalid("data is NULL but len is not 0"));
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Failure::new(cmdop_status::InCallback, "cmdop_exec_stdin_write blocks; call it from a thread of your own"));
        }
        let writer = writer_of(s)?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: non-NULL and, per the contract, `len` readable bytes.
        let bytes = unsafe { std::slice::from_raw_parts(data, len) };
        writer.write_blocking(bytes).map_err(Failure::from)?;
        // Queued just as the execute returned: it never reached the command.
        if s.ended.load(Ordering::SeqCst) {
            return Err(Failure::new(
                cmdop_status::OperationFailed,
                "the execute using this stdin returned while writing; the bytes may not have reached the command",
            ));
        }
        Ok(())
    }
}

/// Closes the command's stdin after what was written (the command sees
/// EOF); later writes are INVALID_ARGUMENT. Returns OK (also when the
/// command already ended) or INVALID_ARGUMENT (NULL). Thread: any.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_stdin_close(input: *mut cmdop_exec_stdin) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a live cmdop_exec_stdin.
        let s = unsafe { handle(input, "input") }?;
        // Dropping the only writer closes stdin without blocking.
        s.writer.lock().take();
        Ok(())
    }
}

/// Frees `input` (NULL: no-op), closing it if still open; only after the
/// execute using it returned. Thread: any.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_stdin_free(input: *mut cmdop_exec_stdin) {
    ffi_boundary!(@value ();
        if !input.is_null() {
            // SAFETY: non-NULL, made by cmdop_exec_stdin_new, freed once.
            drop(unsafe { Box::from_raw(input) });
        }
    )
}
