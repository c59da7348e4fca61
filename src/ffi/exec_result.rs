//! The outcome of an execute: the result object and its accessors.

use super::boundary::Failure;
use super::status::cmdop_status;
use crate::client::{Error, ExecOutput};

/// The outcome of a command. Opaque; read with the cmdop_exec_result_*
/// accessors (their pointers are borrowed from the result); free with
/// cmdop_exec_result_free().
pub struct cmdop_exec_result {
    out: ExecOutput,
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
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_result_output(
    r: *const cmdop_exec_result,
    len: *mut usize,
) -> *const u8 {
    // SAFETY: NULL or a live result; `len` NULL or writable.
    ffi_boundary!(@value std::ptr::null(); unsafe { result_bytes(r, len, |o| &o.output) })
}

/// Stdout alone (on the terminal path: all output). As cmdop_exec_result_output().
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_result_stdout(
    r: *const cmdop_exec_result,
    len: *mut usize,
) -> *const u8 {
    // SAFETY: NULL or a live result; `len` NULL or writable.
    ffi_boundary!(@value std::ptr::null(); unsafe { result_bytes(r, len, |o| &o.stdout) })
}

/// Stderr alone (native path only; empty on the terminal path).
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_result_stderr(
    r: *const cmdop_exec_result,
    len: *mut usize,
) -> *const u8 {
    // SAFETY: NULL or a live result; `len` NULL or writable.
    ffi_boundary!(@value std::ptr::null(); unsafe { result_bytes(r, len, |o| &o.stderr) })
}

/// Exit code; -1 when killed by a signal, timed out, or `r` is NULL.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_result_exit_code(r: *const cmdop_exec_result) -> i32 {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value -1; unsafe { r.as_ref() }.map_or(-1, |r| r.out.exit_code))
}

/// Signal that ended the command (native path), 0 if none.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_result_signal(r: *const cmdop_exec_result) -> i32 {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value 0; unsafe { r.as_ref() }.map_or(0, |r| r.out.signal))
}

/// True when the command was killed by the timeout.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_result_timed_out(r: *const cmdop_exec_result) -> bool {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value false; unsafe { r.as_ref() }.is_some_and(|r| r.out.timed_out))
}

/// True when the command ran through native exec, false for the terminal path.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_result_native(r: *const cmdop_exec_result) -> bool {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value false; unsafe { r.as_ref() }.is_some_and(|r| r.out.native))
}

/// True when some output is missing: beyond 64 MiB per stream (the chunk
/// callback still saw it), or, on the terminal path, printed faster than
/// the server's buffer could hold between two polls.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_result_truncated(r: *const cmdop_exec_result) -> bool {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value false; unsafe { r.as_ref() }.is_some_and(|r| r.out.truncated))
}

/// How long the command ran, in milliseconds.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_result_duration_ms(r: *const cmdop_exec_result) -> u64 {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value 0; unsafe { r.as_ref() }.map_or(0, |r| u64::try_from(r.out.duration.as_millis()).unwrap_or(u64::MAX)))
}

/// Free a result. NULL is a no-op.
/// Thread: any, once no other call uses the object (it may be one other than the thread that made it).
#[no_mangle]
pub unsafe extern "C" fn cmdop_exec_result_free(r: *mut cmdop_exec_result) {
    ffi_boundary!(@value ();
        if !r.is_null() {
            // SAFETY: created by Box::into_raw in this module; freed once.
            drop(unsafe { Box::from_raw(r) });
        }
    )
}
