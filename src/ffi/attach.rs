//! Attaching to a live terminal session.

use std::ffi::{c_char, c_void};

use super::boundary::{arg_str, as_callback, handle, out_ptr, Failure};
use super::client::cmdop_client;
use super::events::{cmdop_free_fn, UserData};
use super::runtime::block_on;
use super::status::cmdop_status;
use crate::client::{AttachEvent, AttachHandle};

/// Receives live terminal output: `len` > 0 bytes at `data` (not
/// NUL-terminated, borrowed for the call). One last call with `data` NULL
/// and `len` 0 says the attachment ended (session closed, agent gone, error,
/// or the client was closed with cmdop_close()/cmdop_client_free()).
pub type cmdop_attach_output_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, data: *const u8, len: usize)>;

/// A live attachment to a session. Opaque; end it with cmdop_attachment_close().
pub struct cmdop_attachment {
    handle: AttachHandle,
}

/// Attach to session `session_id` (e.g. from cmdop_get_active_session()):
/// `on_output` receives its terminal output as it is printed, until
/// cmdop_attachment_close(). It runs on a library thread dedicated to this
/// attachment, one call at a time, in order; it may call accessors, cmdop_cancel_token_cancel
/// and non-blocking functions, and cmdop_attachment_close() on its own attachment.
/// A slow callback slows the attachment down (bounded buffering).
/// `free_user_data` (may be NULL) runs once with `user_data` after the last
/// call of `on_output` (also when cmdop_attach() fails).
///
/// On OK `*out` is the caller's; end it with cmdop_attachment_close().
/// Returns OK; NOT_FOUND (unknown session); UNAVAILABLE; DISCONNECTED;
/// TIMEOUT; INVALID_ARGUMENT (`on_output` NULL...). Thread: any; blocks.
#[no_mangle]
pub unsafe extern "C" fn cmdop_attach(
    client: *mut cmdop_client,
    session_id: *const c_char,
    on_output: cmdop_attach_output_fn,
    user_data: *mut c_void,
    free_user_data: cmdop_free_fn,
    out: *mut *mut cmdop_attachment,
) -> cmdop_status {
    ffi_boundary! {
        // Owned from here on, so that every failure below finalises it.
        let ud = UserData::new(user_data, free_user_data);
        // SAFETY: NULL (checked) or a writable pointer slot.
        let out = unsafe { out_ptr(out, "out") }?;
        // SAFETY: NULL (checked) or a live handle of this library.
        let c = unsafe { handle(client, "client") }?;
        // SAFETY: NULL (checked) or a NUL-terminated string.
        let session_id = unsafe { arg_str(session_id, "session_id") }?;
        let cb = on_output.ok_or_else(|| Failure::null("on_output"))?;
        let on_event = move |e: AttachEvent<'_>| match e {
            AttachEvent::Output(data) if !data.is_empty() => {
                // SAFETY: the application's callback with its own user_data.
                as_callback(|| unsafe { cb(ud.ptr(), data.as_ptr(), data.len()) })
            }
            AttachEvent::Output(_) => {}
            // SAFETY: the application's callback with its own user_data.
            AttachEvent::Ended(_) => as_callback(|| unsafe { cb(ud.ptr(), std::ptr::null(), 0) }),
        };
        let handle = block_on("cmdop_attach", c.client.attach(session_id, on_event))??;
        *out = Box::into_raw(Box::new(cmdop_attachment { handle }));
        Ok(())
    }
}

/// Type `len` bytes at `data` into the attached session's terminal.
/// Returns OK, DISCONNECTED (attachment ended), INVALID_ARGUMENT. Thread: any; blocks.
#[no_mangle]
pub unsafe extern "C" fn cmdop_attachment_write(
    attachment: *mut cmdop_attachment,
    data: *const u8,
    len: usize,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a live handle of this library.
        let s = unsafe { handle(attachment, "attachment") }?;
        if len == 0 {
            return Ok(());
        }
        if data.is_null() {
            return Err(Failure::null("data"));
        }
        // SAFETY: the caller promises `len` readable bytes.
        let bytes = unsafe { std::slice::from_raw_parts(data, len) };
        block_on("cmdop_attachment_write", s.handle.send_input(bytes))??;
        Ok(())
    }
}

/// Resize the attached session's terminal. Returns as cmdop_attachment_write().
/// Thread: any; blocks.
#[no_mangle]
pub unsafe extern "C" fn cmdop_attachment_resize(
    attachment: *mut cmdop_attachment,
    cols: u16,
    rows: u16,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a live handle of this library.
        let s = unsafe { handle(attachment, "attachment") }?;
        if cols == 0 || rows == 0 {
            return Err(Failure::invalid("cols and rows must be greater than 0"));
        }
        block_on("cmdop_attachment_resize", s.handle.resize(cols, rows))??;
        Ok(())
    }
}

/// Detach and free the attachment. After it returns, `on_output` is not called
/// any more (when called from `on_output` itself, that call is the last).
/// NULL is a no-op. Returns OK. Thread: any; callbacks included.
#[no_mangle]
pub unsafe extern "C" fn cmdop_attachment_close(attachment: *mut cmdop_attachment) -> cmdop_status {
    ffi_boundary! {
        if attachment.is_null() {
            return Ok(());
        }
        // SAFETY: created by Box::into_raw above; freed once.
        let s = unsafe { Box::from_raw(attachment) };
        let rt = super::runtime::runtime()?;
        if super::boundary::in_callback() || tokio::runtime::Handle::try_current().is_ok() {
            // Cannot block here: stop delivery and let the runtime finish.
            rt.spawn(s.handle.close());
        } else {
            rt.block_on(s.handle.close());
        }
        Ok(())
    }
}
