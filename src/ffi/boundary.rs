//! Panic containment, the thread-local last error, and argument checks.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, CStr, CString};

use super::status::cmdop_status;
use crate::client::{Error, NextStep};

/// A failure on its way to C: a status plus the detail for
/// `cmdop_last_error_message()`.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: cmdop_status,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(status: cmdop_status, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(cmdop_status::InvalidArgument, message)
    }

    pub(crate) fn null(name: &str) -> Failure {
        Failure::invalid(format!("`{name}` is NULL"))
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        // The core says what to do in words; C callers also get the function.
        let call = match e.next_step() {
            Some(NextStep::Connect) => " (call cmdop_connect())",
            Some(NextStep::SelectMachine) => {
                " (call cmdop_set_machine() or cmdop_set_machine_id())"
            }
            None => "",
        };
        Failure {
            status: cmdop_status::from_kind(e.kind()),
            message: format!("{e}{call}"),
        }
    }
}

pub(crate) type FfiResult = Result<(), Failure>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    static IN_CALLBACK: Cell<u32> = const { Cell::new(0) };
}

/// Store `message` as this thread's last error (interior NULs dropped).
pub(crate) fn set_last_error(message: &str) {
    let clean: Vec<u8> = message.bytes().filter(|&b| b != 0).collect();
    let c = CString::new(clean).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Pointer to this thread's last error; valid until the next libcmdop call
/// on this thread that stores one.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// True while this thread runs an application callback.
pub(crate) fn in_callback() -> bool {
    IN_CALLBACK.with(|c| c.get() > 0)
}

/// Run an application callback with the "in callback" mark set, so that a
/// blocking libcmdop call made from it fails with IN_CALLBACK instead of
/// deadlocking. A panic cannot come from C code; the mark is reset anyway.
pub(crate) fn as_callback<R>(f: impl FnOnce() -> R) -> R {
    struct Mark;
    impl Drop for Mark {
        fn drop(&mut self) {
            IN_CALLBACK.with(|c| c.set(c.get().saturating_sub(1)));
        }
    }
    IN_CALLBACK.with(|c| c.set(c.get() + 1));
    let _mark = Mark;
    f()
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error (panic) in libcmdop: {what}; please report this bug")
}

/// Run the body of a status-returning export: catches panics, records the
/// error message, clears it on success.
pub(crate) fn run_status(f: impl FnOnce() -> FfiResult) -> cmdop_status {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            set_last_error("");
            cmdop_status::Ok
        }
        Ok(Err(failure)) => {
            set_last_error(&failure.message);
            failure.status
        }
        Err(payload) => {
            set_last_error(&panic_message(&*payload));
            cmdop_status::Panic
        }
    }
}

/// Run the body of a value-returning export (accessors); a panic yields
/// `default`.
pub(crate) fn run_value<T>(default: T, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => {
            set_last_error(&panic_message(&*payload));
            default
        }
    }
}

/// Wraps an export body. `ffi_boundary! { … }` for bodies returning
/// `FfiResult` (the export returns `cmdop_status`), and
/// `ffi_boundary!(@value default; …)` for bodies returning a plain value.
macro_rules! ffi_boundary {
    (@value $default:expr; $($body:tt)*) => {
        $crate::ffi::boundary::run_value($default, move || { $($body)* })
    };
    ($($body:tt)*) => {
        $crate::ffi::boundary::run_status(move || -> $crate::ffi::boundary::FfiResult { $($body)* })
    };
}

/// Borrow a C string argument as UTF-8.
pub(crate) unsafe fn arg_str<'a>(ptr: *const c_char, name: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::null(name));
    }
    // SAFETY: the caller promises a NUL-terminated string (documented).
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| Failure::invalid(format!("`{name}` is not valid UTF-8")))
}

/// Like [`arg_str`], but NULL is allowed and yields `None`.
pub(crate) unsafe fn opt_str<'a>(
    ptr: *const c_char,
    name: &str,
) -> Result<Option<&'a str>, Failure> {
    if ptr.is_null() {
        Ok(None)
    } else {
        // SAFETY: NULL (checked) or a NUL-terminated string.
        unsafe { arg_str(ptr, name) }.map(Some)
    }
}

/// Check an out-parameter and set `*out = NULL` so that it is defined on
/// every error path.
pub(crate) unsafe fn out_ptr<'a, T>(
    out: *mut *mut T,
    name: &str,
) -> Result<&'a mut *mut T, Failure> {
    if out.is_null() {
        return Err(Failure::null(name));
    }
    // SAFETY: non-null and, per the documented contract, writable.
    let slot = unsafe { &mut *out };
    *slot = std::ptr::null_mut();
    Ok(slot)
}

/// Borrow an opaque handle.
pub(crate) unsafe fn handle<'a, T>(ptr: *const T, name: &str) -> Result<&'a T, Failure> {
    // SAFETY: non-null handles come from this library (documented contract).
    unsafe { ptr.as_ref() }.ok_or_else(|| Failure::null(name))
}

/// Convert owned text for C, dropping interior NULs (never present in
/// practice; a C string cannot carry them).
pub(crate) fn c_string(s: &str) -> CString {
    CString::new(s.bytes().filter(|&b| b != 0).collect::<Vec<u8>>()).unwrap_or_default()
}
