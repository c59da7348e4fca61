//! Sessions: the active one, and all of them.

use std::ffi::{c_char, CString};

use super::boundary::{c_string, handle, opt_str, out_ptr};
use super::client::cmdop_client;
use super::runtime::block_on;
use super::status::cmdop_status;
use crate::client::SessionInfo;

/// One session. Opaque; read with the cmdop_session_* accessors.
pub struct cmdop_session {
    info: SessionInfo,
    id: CString,
    machine_id: CString,
    hostname: CString,
    status: CString,
    os: CString,
    shell: CString,
}

/// Sessions of the workspace. Opaque; free with cmdop_session_list_free().
pub struct cmdop_session_list {
    sessions: Vec<cmdop_session>,
}

fn wrap(info: SessionInfo) -> cmdop_session {
    cmdop_session {
        id: c_string(&info.session_id),
        machine_id: c_string(&info.machine_id),
        hostname: c_string(&info.hostname),
        status: c_string(&info.status),
        os: c_string(&info.os),
        shell: c_string(&info.shell),
        info,
    }
}

/// The most recently active connected session, of a machine whose hostname
/// matches `hostname` (NULL = any machine).
///
/// On OK `*out` is the caller's; free with cmdop_session_free().
/// Returns OK; NOT_FOUND (no connected session); UNAVAILABLE; DISCONNECTED;
/// UNAUTHENTICATED; INVALID_ARGUMENT. Thread: any; blocks.
#[no_mangle]
pub unsafe extern "C" fn cmdop_get_active_session(
    client: *mut cmdop_client,
    hostname: *const c_char,
    out: *mut *mut cmdop_session,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a writable pointer slot.
        let out = unsafe { out_ptr(out, "out") }?;
        // SAFETY: NULL (checked) or a live handle of this library.
        let c = unsafe { handle(client, "client") }?;
        // SAFETY: NULL or a NUL-terminated string.
        let hostname = unsafe { opt_str(hostname, "hostname") }?;
        let info = block_on("cmdop_get_active_session", c.client.get_active_session(hostname))??;
        *out = Box::into_raw(Box::new(wrap(info)));
        Ok(())
    }
}

/// Every session of the workspace (connected ones first, newest activity
/// first).
///
/// On OK `*out` is the caller's; free with cmdop_session_list_free().
/// Returns as cmdop_get_active_session() (an empty list is OK).
/// Thread: any; blocks; IN_CALLBACK from inside a callback.
#[no_mangle]
pub unsafe extern "C" fn cmdop_list_sessions(
    client: *mut cmdop_client,
    out: *mut *mut cmdop_session_list,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a writable pointer slot.
        let out = unsafe { out_ptr(out, "out") }?;
        // SAFETY: NULL (checked) or a live handle of this library.
        let c = unsafe { handle(client, "client") }?;
        let list = block_on("cmdop_list_sessions", c.client.list_sessions())??;
        *out = Box::into_raw(Box::new(cmdop_session_list { sessions: list.into_iter().map(wrap).collect() }));
        Ok(())
    }
}

/// Number of sessions (0 when NULL).
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_session_list_count(list: *const cmdop_session_list) -> usize {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value 0; unsafe { list.as_ref() }.map_or(0, |l| l.sessions.len()))
}

/// Session `index`, borrowed from `list` (do not free it); NULL when out of range.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_session_list_get(
    list: *const cmdop_session_list,
    index: usize,
) -> *const cmdop_session {
    ffi_boundary!(@value std::ptr::null();
        // SAFETY: NULL (checked) or a live object of this library.
        unsafe { list.as_ref() }.and_then(|l| l.sessions.get(index)).map_or(std::ptr::null(), |s| s as *const _)
    )
}

/// Free a session list. NULL is a no-op.
/// Thread: any, once no other call uses the object (it may be one other than the thread that made it).
#[no_mangle]
pub unsafe extern "C" fn cmdop_session_list_free(list: *mut cmdop_session_list) {
    ffi_boundary!(@value ();
        if !list.is_null() {
            // SAFETY: created by Box::into_raw above; freed once.
            drop(unsafe { Box::from_raw(list) });
        }
    )
}

/// Free a session from cmdop_get_active_session(). NULL is a no-op. Never
/// pass a session borrowed from a list.
/// Thread: any, once no other call uses the object (it may be one other than the thread that made it).
#[no_mangle]
pub unsafe extern "C" fn cmdop_session_free(s: *mut cmdop_session) {
    ffi_boundary!(@value ();
        if !s.is_null() {
            // SAFETY: created by Box::into_raw above; freed once.
            drop(unsafe { Box::from_raw(s) });
        }
    )
}

/// Session id. Borrowed from `s`; NULL when `s` is NULL.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_session_id(s: *const cmdop_session) -> *const c_char {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value std::ptr::null(); unsafe { s.as_ref() }.map_or(std::ptr::null(), |s| s.id.as_ptr()))
}

/// The machine's stable id ("mach_…"), for cmdop_set_machine_id().
/// Borrowed from `s`; "" when the server cannot tell (it lacks
/// CMDOP_CAPABILITY_MACHINES, or the row is of a machine that is offline);
/// NULL when `s` is NULL.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_session_machine_id(s: *const cmdop_session) -> *const c_char {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value std::ptr::null(); unsafe { s.as_ref() }.map_or(std::ptr::null(), |s| s.machine_id.as_ptr()))
}

/// Hostname of the machine. Borrowed from `s`.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_session_hostname(s: *const cmdop_session) -> *const c_char {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value std::ptr::null(); unsafe { s.as_ref() }.map_or(std::ptr::null(), |s| s.hostname.as_ptr()))
}

/// Status in lowercase: "connected", "disconnected", "pending",
/// "background", "error"... Borrowed from `s`.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_session_status(s: *const cmdop_session) -> *const c_char {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value std::ptr::null(); unsafe { s.as_ref() }.map_or(std::ptr::null(), |s| s.status.as_ptr()))
}

/// Operating system of the machine ("" when unknown). Borrowed from `s`.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_session_os(s: *const cmdop_session) -> *const c_char {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value std::ptr::null(); unsafe { s.as_ref() }.map_or(std::ptr::null(), |s| s.os.as_ptr()))
}

/// Shell of the session ("" when unknown). Borrowed from `s`.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_session_shell(s: *const cmdop_session) -> *const c_char {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value std::ptr::null(); unsafe { s.as_ref() }.map_or(std::ptr::null(), |s| s.shell.as_ptr()))
}

/// When the session connected, Unix seconds (0 when unknown).
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_session_connected_at(s: *const cmdop_session) -> i64 {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value 0; unsafe { s.as_ref() }.map_or(0, |s| s.info.connected_at))
}

/// Seconds since the agent's last heartbeat.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_session_heartbeat_age(s: *const cmdop_session) -> i64 {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value 0; unsafe { s.as_ref() }.map_or(0, |s| s.info.heartbeat_age_seconds))
}
