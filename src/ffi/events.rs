//! Event callbacks (connect, disconnect, error, tokens) and the global log
//! callback.

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::Arc;

use super::boundary::{as_callback, c_string, handle, in_callback, Failure};
use super::client::cmdop_client;
use super::status::cmdop_status;
use crate::client::{set_log_sink, Event, EventHandler, EventKind, LogLevel};

/// Called once when `user_data` is no longer needed.
pub type cmdop_free_fn = Option<unsafe extern "C" fn(user_data: *mut c_void)>;
/// on_connect: the client is connected (first time or after reconnecting).
pub type cmdop_connect_fn = Option<unsafe extern "C" fn(user_data: *mut c_void)>;
/// on_disconnect: the connection is gone; `reason` (borrowed for the
/// duration of the call) says why. `will_reconnect` is true while the
/// library keeps trying on its own (auto_reconnect, attempts left); false
/// when this is final (cmdop_close(), reconnection off or given up): call
/// cmdop_connect() to try again.
pub type cmdop_disconnect_fn = Option<
    unsafe extern "C" fn(user_data: *mut c_void, reason: *const c_char, will_reconnect: bool),
>;
/// on_error: a call or a background task failed with `status`; `message`
/// is borrowed for the duration of the call.
pub type cmdop_error_fn = Option<
    unsafe extern "C" fn(user_data: *mut c_void, status: cmdop_status, message: *const c_char),
>;
/// Token callback: new tokens after an automatic refresh, borrowed for the
/// duration of the call; copy them to persist them.
pub type cmdop_token_refresh_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        access_token: *const c_char,
        refresh_token: *const c_char,
    ),
>;
/// Log callback: `message` is borrowed for the duration of the call.
pub type cmdop_log_fn = Option<
    unsafe extern "C" fn(user_data: *mut c_void, level: cmdop_log_level, message: *const c_char),
>;

/// Log severities; a callback receives messages up to the level it asked for.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // OFF is only ever passed in from C (as an int)
pub enum cmdop_log_level {
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    /// Request/response summaries and state changes of clients created with
    /// `debug = true`.
    Debug = 4,
}

/// The application's `user_data` plus its finaliser, run exactly once when
/// the library drops its last reference.
pub(crate) struct UserData {
    ptr: *mut c_void,
    free: cmdop_free_fn,
}

// SAFETY: the header states that user_data is handed to callbacks on library
// threads; making it usable there is the application's contract.
unsafe impl Send for UserData {}
// SAFETY: as for Send: the library only passes the pointer on to the
// application's callbacks and finaliser; it never dereferences it.
unsafe impl Sync for UserData {}

impl UserData {
    pub(crate) fn new(ptr: *mut c_void, free: cmdop_free_fn) -> UserData {
        UserData { ptr, free }
    }

    pub(crate) fn ptr(&self) -> *mut c_void {
        self.ptr
    }
}

impl Drop for UserData {
    fn drop(&mut self) {
        if let Some(free) = self.free {
            // SAFETY: the application's finaliser for its own pointer.
            as_callback(|| unsafe { free(self.ptr) });
        }
    }
}

fn install(
    client: *mut cmdop_client,
    kind: EventKind,
    handler: Option<EventHandler>,
) -> Result<(), Failure> {
    // SAFETY: NULL (checked) or a live handle of this library.
    let c = unsafe { handle(client, "client") }?;
    c.client.set_event_handler(kind, handler)?;
    Ok(())
}

/// Set (or, with `cb` NULL, remove) the on_connect callback.
///
/// Callbacks of a client run on that client's event thread (a library
/// thread), one at a time and in order. Keep them short. Inside a callback
/// you may call accessors, non-blocking functions (cmdop_is_connected,
/// cmdop_close, cmdop_cancel_token_cancel, callback setters, cmdop_last_error_message);
/// blocking functions return IN_CALLBACK. `free_user_data` (may be NULL)
/// runs once, after the last call of this callback (when it is replaced or
/// the client is freed). Thread: any.
#[no_mangle]
pub unsafe extern "C" fn cmdop_on_connect(
    client: *mut cmdop_client,
    cb: cmdop_connect_fn,
    user_data: *mut c_void,
    free_user_data: cmdop_free_fn,
) -> cmdop_status {
    ffi_boundary! {
        let ud = UserData::new(user_data, free_user_data);
        let handler: Option<EventHandler> = cb.map(|f| -> EventHandler {
            Box::new(move |e: &Event| {
                if let Event::Connected = e {
                    // SAFETY: the application's callback with its own user_data.
                    as_callback(|| unsafe { f(ud.ptr()) });
                }
            })
        });
        install(client, EventKind::Connect, handler)
    }
}

/// Set (or remove) the on_disconnect callback; see cmdop_on_connect() for
/// the threading rules. Fires when the connection drops (`will_reconnect`
/// says whether the library keeps trying), when reconnection gives up
/// (`will_reconnect` false), and on cmdop_close() (false).
/// Thread: any; the callback runs on a library thread.
#[no_mangle]
pub unsafe extern "C" fn cmdop_on_disconnect(
    client: *mut cmdop_client,
    cb: cmdop_disconnect_fn,
    user_data: *mut c_void,
    free_user_data: cmdop_free_fn,
) -> cmdop_status {
    ffi_boundary! {
        let ud = UserData::new(user_data, free_user_data);
        let handler: Option<EventHandler> = cb.map(|f| -> EventHandler {
            Box::new(move |e: &Event| {
                if let Event::Disconnected { reason, final_ } = e {
                    let reason = c_string(reason);
                    // SAFETY: the application's callback with its own user_data.
                    as_callback(|| unsafe { f(ud.ptr(), reason.as_ptr(), !final_) });
                }
            })
        });
        install(client, EventKind::Disconnect, handler)
    }
}

/// Set (or remove) the on_error callback; see cmdop_on_connect() for the
/// threading rules. Fires for every call of this client that failed after
/// its arguments were accepted (connection, server, machine and command
/// failures) and for background failures (reconnects, token refresh).
/// Calls refused by their argument checks (INVALID_ARGUMENT for a NULL or
/// malformed argument, IN_CALLBACK) do not fire it, nor does a call the
/// application cancelled (CANCELLED): their status and
/// cmdop_last_error_message() are the whole report, on the caller's thread.
/// Thread: any; the callback runs on a library thread.
#[no_mangle]
pub unsafe extern "C" fn cmdop_on_error(
    client: *mut cmdop_client,
    cb: cmdop_error_fn,
    user_data: *mut c_void,
    free_user_data: cmdop_free_fn,
) -> cmdop_status {
    ffi_boundary! {
        let ud = UserData::new(user_data, free_user_data);
        let handler: Option<EventHandler> = cb.map(|f| -> EventHandler {
            Box::new(move |e: &Event| {
                if let Event::Error { kind, message } = e {
                    let status = cmdop_status::from_kind(*kind);
                    let message = c_string(message);
                    // SAFETY: the application's callback with its own user_data.
                    as_callback(|| unsafe { f(ud.ptr(), status, message.as_ptr()) });
                }
            })
        });
        install(client, EventKind::Error, handler)
    }
}

/// Set (or remove) the callback receiving refreshed OAuth tokens; see
/// cmdop_on_connect() for the threading rules.
/// Thread: any; the callback runs on a library thread.
#[no_mangle]
pub unsafe extern "C" fn cmdop_on_token_refresh(
    client: *mut cmdop_client,
    cb: cmdop_token_refresh_fn,
    user_data: *mut c_void,
    free_user_data: cmdop_free_fn,
) -> cmdop_status {
    ffi_boundary! {
        let ud = UserData::new(user_data, free_user_data);
        let handler: Option<EventHandler> = cb.map(|f| -> EventHandler {
            Box::new(move |e: &Event| {
                if let Event::TokensRefreshed { access, refresh } = e {
                    let (a, r) = (c_string(access), c_string(refresh));
                    // SAFETY: the application's callback with its own user_data.
                    as_callback(|| unsafe { f(ud.ptr(), a.as_ptr(), r.as_ptr()) });
                }
            })
        });
        install(client, EventKind::Tokens, handler)
    }
}

/// Install the process-wide log callback receiving messages up to `level`
/// from every client (debug messages only from clients with `debug` set).
/// `cb` NULL or level OFF removes it. Keys and tokens are never logged.
///
/// The callback runs on whichever thread logs (library threads or the
/// caller's), possibly concurrently: make it thread-safe and quick.
/// `level` is a cmdop_log_level value. `free_user_data` (may be NULL) runs
/// once with `user_data` after the last call of this callback: when it is
/// replaced or removed by a later cmdop_on_log(), possibly on the thread of
/// a log call still running it (at once when `cb` is NULL or `level` OFF).
///
/// Returns OK; INVALID_ARGUMENT when `level` is not a cmdop_log_level
/// (nothing is changed, `free_user_data` is not called); IN_CALLBACK when
/// called from inside a callback. Thread: any.
#[no_mangle]
pub unsafe extern "C" fn cmdop_on_log(
    level: c_int,
    cb: cmdop_log_fn,
    user_data: *mut c_void,
    free_user_data: cmdop_free_fn,
) -> cmdop_status {
    ffi_boundary! {
        if in_callback() {
            return Err(Failure::new(
                cmdop_status::InCallback,
                "cmdop_on_log cannot be called from inside a libcmdop callback",
            ));
        }
        // An int, not the enum: C may pass any number, and an out-of-range
        // value in a Rust enum would be undefined behaviour.
        let max = match level {
            0 => None,
            1 => Some(LogLevel::Error),
            2 => Some(LogLevel::Warn),
            3 => Some(LogLevel::Info),
            4 => Some(LogLevel::Debug),
            other => {
                return Err(Failure::invalid(format!(
                    "level {other} is not a cmdop_log_level: pass CMDOP_LOG_LEVEL_OFF (0) to CMDOP_LOG_LEVEL_DEBUG (4)"
                )))
            }
        };
        match (cb, max) {
            (Some(f), Some(max)) => {
                let ud = Arc::new(UserData::new(user_data, free_user_data));
                set_log_sink(Some((max, Arc::new(move |lvl: LogLevel, msg: &str| {
                    let level = match lvl {
                        LogLevel::Error => cmdop_log_level::Error,
                        LogLevel::Warn => cmdop_log_level::Warn,
                        LogLevel::Info => cmdop_log_level::Info,
                        LogLevel::Debug => cmdop_log_level::Debug,
                    };
                    let text: CString = c_string(msg);
                    // SAFETY: the application's callback with its own user_data.
                    as_callback(|| unsafe { f(ud.ptr(), level, text.as_ptr()) });
                }))));
            }
            _ => {
                set_log_sink(None);
                drop(UserData::new(user_data, free_user_data));
            }
        }
        Ok(())
    }
}
