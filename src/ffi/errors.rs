//! What a C caller reads after a call: a status's text and this thread's
//! last error message.

use std::ffi::{c_char, c_int};

use super::boundary::last_error_ptr;
use super::status::cmdop_status;

/// Short static description of a `cmdop_status` value ("timed out", ...).
/// Takes an int so that any value is safe to pass; unknown values give
/// "unknown status". Never NULL; never free it.
///
/// Thread: any, including callbacks.
#[no_mangle]
pub extern "C" fn cmdop_status_str(status: c_int) -> *const c_char {
    ffi_boundary!(@value c"unknown status".as_ptr();
        match cmdop_status::from_raw(status) {
            Some(s) => s.text().as_ptr(),
            None => c"unknown status".as_ptr(),
        }
    )
}

/// Detail of the last failed libcmdop call made on this thread, saying what
/// happened and what to do next; "" after a successful call.
///
/// Never NULL. Owned by the library; valid until the next libcmdop call on
/// this thread. Read it on the same thread as the failing call.
///
/// Thread: any, including callbacks.
#[no_mangle]
pub extern "C" fn cmdop_last_error_message() -> *const c_char {
    ffi_boundary!(@value c"".as_ptr(); last_error_ptr())
}
