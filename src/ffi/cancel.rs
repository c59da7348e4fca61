//! Cancel tokens: made by the application, watched by calls, cancelled from
//! any thread.

use super::boundary::handle;
use super::status::cmdop_status;
use crate::client::CancelToken;

/// Cancels the calls given it (cmdop_exec_options.cancel, the transfer and
/// read functions' `cancel`) from any thread. Opaque.
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

/// A new cancel token; never fails (like every allocation in libcmdop, an
/// out-of-memory aborts the process). Free with cmdop_cancel_token_free()
/// after the calls using it returned. Thread: any.
#[no_mangle]
pub extern "C" fn cmdop_cancel_token_new() -> *mut cmdop_cancel_token {
    ffi_boundary!(@value std::ptr::null_mut();
        Box::into_raw(Box::new(cmdop_cancel_token { token: CancelToken::new() }))
    )
}

/// Cancel every call using `token`, now and later (it stays cancelled).
/// Returns OK or INVALID_ARGUMENT (NULL). Thread: any, callbacks included.
#[no_mangle]
pub unsafe extern "C" fn cmdop_cancel_token_cancel(token: *mut cmdop_cancel_token) -> cmdop_status {
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
/// Thread: any, once no other call uses the object (it may be one other than the thread that made it).
#[no_mangle]
pub unsafe extern "C" fn cmdop_cancel_token_free(token: *mut cmdop_cancel_token) {
    ffi_boundary!(@value ();
        if !token.is_null() {
            // SAFETY: created by cmdop_cancel_token_new; freed once.
            drop(unsafe { Box::from_raw(token) });
        }
    )
}
