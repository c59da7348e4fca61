//! Client handles: creation, connection lifecycle, connection info.

use std::ffi::{c_char, CString};

use super::boundary::{arg_str, c_string, handle, out_ptr, Failure};
use super::options::{client_options, cmdop_options, Target};
use super::runtime::block_on;
use super::status::cmdop_status;
use crate::client::{Client, Credentials};

/// A connection to one control plane with one set of credentials. Opaque.
///
/// Thread-safe: any number of threads may call functions on one client at
/// the same time, except cmdop_client_free(), which must be the last call.
pub struct cmdop_client {
    pub(crate) client: Client,
}

fn publish(out: &mut *mut cmdop_client, client: Client) {
    *out = Box::into_raw(Box::new(cmdop_client { client }));
}

/// Create a client for a remote control plane, authenticated with an API
/// key. Does not connect: install callbacks, then call cmdop_connect().
///
/// `api_key`: the key, or NULL to read $CMDOP_API_KEY. Any non-empty key is
/// accepted as is. `opts`: NULL for the defaults ($CMDOP_SERVER, else the
/// hosted endpoint; TLS by the rule of CMDOP_TLS_DEFAULT), else initialised
/// by cmdop_options_init() or CMDOP_OPTIONS_INIT.
///
/// On OK, `*out` is a new client owned by the caller; free it with
/// cmdop_client_free(). On error `*out` is NULL.
///
/// Returns OK; UNAUTHENTICATED when no key is given and CMDOP_API_KEY is
/// unset or empty; INVALID_ARGUMENT for NULL `out`, bad strings or options.
/// Thread: any.
#[no_mangle]
pub unsafe extern "C" fn cmdop_remote_new(
    api_key: *const c_char,
    opts: *const cmdop_options,
    out: *mut *mut cmdop_client,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a writable pointer slot.
        let out = unsafe { out_ptr(out, "out") }?;
        // SAFETY: NULL or a NUL-terminated string.
        let key = match unsafe { super::boundary::opt_str(api_key, "api_key") }? {
            Some(k) => k.to_string(),
            None => std::env::var("CMDOP_API_KEY").unwrap_or_default(),
        };
        if key.is_empty() {
            return Err(Failure::new(
                cmdop_status::Unauthenticated,
                "no API key: pass one to cmdop_remote_new() or set CMDOP_API_KEY",
            ));
        }
        // SAFETY: NULL or options initialised for their stated version.
        let options = unsafe { client_options(opts, Target::Remote, Credentials::ApiKey(key)) }?;
        publish(out, Client::new(options)?);
        Ok(())
    }
}

/// Create a client for a remote control plane authenticated with OAuth
/// tokens. With `opts->auto_refresh` (default), an expired access token is
/// refreshed and the call retried once; the new pair goes to the token
/// callback (cmdop_on_token_refresh) so the application can store it.
///
/// Ownership and returns as cmdop_remote_new(); UNAUTHENTICATED when either
/// token is empty. Thread: any.
#[no_mangle]
pub unsafe extern "C" fn cmdop_remote_new_oauth(
    access_token: *const c_char,
    refresh_token: *const c_char,
    opts: *const cmdop_options,
    out: *mut *mut cmdop_client,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a writable pointer slot.
        let out = unsafe { out_ptr(out, "out") }?;
        // SAFETY: NULL (checked) or a NUL-terminated string.
        let access = unsafe { arg_str(access_token, "access_token") }?;
        // SAFETY: NULL (checked) or a NUL-terminated string.
        let refresh = unsafe { arg_str(refresh_token, "refresh_token") }?;
        if access.is_empty() || refresh.is_empty() {
            return Err(Failure::new(
                cmdop_status::Unauthenticated,
                "empty access or refresh token: sign in again to obtain tokens",
            ));
        }
        let creds = Credentials::Tokens { access: access.into(), refresh: refresh.into(), auto_refresh: true };
        // SAFETY: NULL or options initialised for their stated version.
        let options = unsafe { client_options(opts, Target::Remote, creds) }?;
        publish(out, Client::new(options)?);
        Ok(())
    }
}

/// Create a client for a control plane at `host`:`port`, e.g. `cmdop dev`
/// (plaintext unless `opts->tls` is CMDOP_TLS_ON). `api_key`: the key, or
/// NULL for $CMDOP_API_KEY if set, else no credentials. `opts`: NULL for
/// the defaults; `opts->server` must be NULL. With a server list in
/// `opts->servers` the list is used and `host` and `port` are ignored (NULL
/// and 0 allowed). Does not connect.
///
/// Ownership as cmdop_remote_new(). Returns OK or INVALID_ARGUMENT (NULL or
/// empty host, port 0, bad options). Thread: any.
#[no_mangle]
pub unsafe extern "C" fn cmdop_local_new(
    host: *const c_char,
    port: u16,
    api_key: *const c_char,
    opts: *const cmdop_options,
    out: *mut *mut cmdop_client,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a writable pointer slot.
        let out = unsafe { out_ptr(out, "out") }?;
        // SAFETY: NULL or a NUL-terminated string (NULL is refused later
        // unless the options carry a server list).
        let host = unsafe { super::boundary::opt_str(host, "host") }?;
        // SAFETY: NULL or a NUL-terminated string.
        let credentials = match unsafe { super::boundary::opt_str(api_key, "api_key") }? {
            Some(k) if !k.is_empty() => Credentials::ApiKey(k.to_string()),
            _ => match std::env::var("CMDOP_API_KEY") {
                Ok(k) if !k.is_empty() => Credentials::ApiKey(k),
                _ => Credentials::None,
            },
        };
        // SAFETY: NULL or options initialised for their stated version.
        let options = unsafe { client_options(opts, Target::Local { host, port }, credentials) }?;
        publish(out, Client::new(options)?);
        Ok(())
    }
}

/// Connect: open the connection, learn the server's capabilities, check the
/// credentials, fire on_connect, start watching the connection. Does nothing
/// on a connected client; reconnects a closed or given-up one.
///
/// Returns OK; UNAVAILABLE when the server cannot be reached within the
/// timeout; UNAUTHENTICATED for a rejected key; INVALID_ARGUMENT; TIMEOUT.
/// Thread: any; blocks; IN_CALLBACK from inside a callback.
#[no_mangle]
pub unsafe extern "C" fn cmdop_connect(client: *mut cmdop_client) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a live handle of this library.
        let c = unsafe { handle(client, "client") }?;
        block_on("cmdop_connect", c.client.open())??;
        Ok(())
    }
}

/// Close the connection; later calls fail with DISCONNECTED until
/// cmdop_connect(). Fires on_disconnect once. Closing a closed (or never
/// connected) client does nothing.
///
/// Calls in flight on other threads end promptly (no need to cancel them
/// first): every execute form returns DISCONNECTED after its remote command
/// was killed (a call stopped through its own cancel token returns
/// CANCELLED instead); cmdop_read_file() and cmdop_write_file() return
/// DISCONNECTED (a write is atomic: the old file stays); attachments end
/// (their output callback gets its final NULL call). cmdop_close() itself
/// does not wait for them.
///
/// Returns OK or INVALID_ARGUMENT (NULL). Thread: any, callbacks included
/// (it does not block).
#[no_mangle]
pub unsafe extern "C" fn cmdop_close(client: *mut cmdop_client) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a live handle of this library.
        let c = unsafe { handle(client, "client") }?;
        c.client.shutdown();
        Ok(())
    }
}

/// Close (if needed) and free a client. NULL is a no-op. Calls on other
/// threads must have returned. Event callbacks already queued (such as the
/// on_disconnect of this close) run before it returns, and so does every
/// `free_user_data`: afterwards nothing of this client calls into the
/// application, so its user_data may go. (Called from one of this client's
/// own event callbacks, it cannot wait for that callback; the rest then
/// follows on the event thread once the callback returns.)
/// Thread: any, once no other call uses the object (it may be one other than the thread that made it).
#[no_mangle]
pub unsafe extern "C" fn cmdop_client_free(client: *mut cmdop_client) {
    ffi_boundary!(@value ();
        if !client.is_null() {
            // SAFETY: created by Box::into_raw in this module; freed once.
            let boxed = unsafe { Box::from_raw(client) };
            boxed.client.shutdown_and_drain_events();
            drop(boxed);
        }
    )
}

/// True while connected (false when NULL, never connected, reconnecting,
/// closed). Thread: any, callbacks included.
#[no_mangle]
pub unsafe extern "C" fn cmdop_is_connected(client: *const cmdop_client) -> bool {
    ffi_boundary!(@value false;
        // SAFETY: NULL (checked) or a live object of this library.
        unsafe { client.as_ref() }.is_some_and(|c| c.client.is_connected())
    )
}

/// Facts about a client's connection. Opaque; read with the
/// cmdop_connection_info_* accessors; free with cmdop_connection_info_free().
pub struct cmdop_connection_info {
    server: CString,
    server_version: CString,
    workspace: CString,
    tls: bool,
    connected: bool,
    latency_ms: f64,
    native_exec: bool,
    /// What the server offers, as it listed it (empty without the libcmdop
    /// extension).
    capabilities: Vec<CString>,
}

// The CMDOP_CAPABILITY_* names are macros in cbindgen.toml (cbindgen does
// not emit string constants); a test below keeps them equal to
// cmdop_proto::caps, the one definition.

/// Describe the connection, measuring the latency with one round trip now.
///
/// On OK `*out` is the caller's; free with cmdop_connection_info_free().
/// Returns OK or INVALID_ARGUMENT. (A failing round trip is not an error:
/// latency is then -1.) Thread: any; blocks; IN_CALLBACK in callbacks.
#[no_mangle]
pub unsafe extern "C" fn cmdop_get_connection_info(
    client: *mut cmdop_client,
    out: *mut *mut cmdop_connection_info,
) -> cmdop_status {
    ffi_boundary! {
        // SAFETY: NULL (checked) or a writable pointer slot.
        let out = unsafe { out_ptr(out, "out") }?;
        // SAFETY: NULL (checked) or a live handle of this library.
        let c = unsafe { handle(client, "client") }?;
        let info = block_on("cmdop_get_connection_info", c.client.connection_info())?;
        *out = Box::into_raw(Box::new(cmdop_connection_info {
            server: c_string(&info.server),
            server_version: c_string(&info.server_version),
            workspace: c_string(&info.workspace),
            tls: info.tls,
            connected: info.connected,
            latency_ms: info.latency.map_or(-1.0, |d| d.as_secs_f64() * 1e3),
            native_exec: info.native_exec,
            capabilities: info.capabilities.iter().map(|c| c_string(c)).collect(),
        }));
        Ok(())
    }
}

/// Server URI, e.g. "https://grpc.cmdop.com:443". Borrowed from `info`;
/// NULL when `info` is NULL.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_connection_info_server(
    info: *const cmdop_connection_info,
) -> *const c_char {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value std::ptr::null(); unsafe { info.as_ref() }.map_or(std::ptr::null(), |i| i.server.as_ptr()))
}

/// Server version ("" when unknown). Borrowed from `info`.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_connection_info_server_version(
    info: *const cmdop_connection_info,
) -> *const c_char {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value std::ptr::null(); unsafe { info.as_ref() }.map_or(std::ptr::null(), |i| i.server_version.as_ptr()))
}

/// Workspace name ("" when the server does not say). Borrowed from `info`.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_connection_info_workspace(
    info: *const cmdop_connection_info,
) -> *const c_char {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value std::ptr::null(); unsafe { info.as_ref() }.map_or(std::ptr::null(), |i| i.workspace.as_ptr()))
}

/// True when the connection uses TLS.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_connection_info_tls(info: *const cmdop_connection_info) -> bool {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value false; unsafe { info.as_ref() }.is_some_and(|i| i.tls))
}

/// True when the client was connected at the time of the query.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_connection_info_connected(
    info: *const cmdop_connection_info,
) -> bool {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value false; unsafe { info.as_ref() }.is_some_and(|i| i.connected))
}

/// Measured round trip in milliseconds; -1 when it failed.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_connection_info_latency_ms(
    info: *const cmdop_connection_info,
) -> f64 {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value -1.0; unsafe { info.as_ref() }.map_or(-1.0, |i| i.latency_ms))
}

/// True when the server offers native exec (stdout/stderr apart, no PTY).
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_connection_info_native_exec(
    info: *const cmdop_connection_info,
) -> bool {
    // SAFETY: NULL (checked) or a live object of this library.
    ffi_boundary!(@value false; unsafe { info.as_ref() }.is_some_and(|i| i.native_exec))
}

/// Number of capabilities the server listed (0 when `info` is NULL, or
/// when the server lacks the libcmdop extension: an official server).
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_connection_info_capability_count(
    info: *const cmdop_connection_info,
) -> usize {
    // SAFETY: `info` is NULL or from cmdop_get_connection_info (header contract).
    ffi_boundary!(@value 0; unsafe { info.as_ref() }.map_or(0, |i| i.capabilities.len()))
}

/// Capability `index` (e.g. "files.v1"), borrowed from `info`; NULL when
/// out of range or `info` is NULL.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_connection_info_capability_get(
    info: *const cmdop_connection_info,
    index: usize,
) -> *const c_char {
    ffi_boundary!(@value std::ptr::null();
        // SAFETY: `info` is NULL or from cmdop_get_connection_info.
        unsafe { info.as_ref() }
            .and_then(|i| i.capabilities.get(index))
            .map_or(std::ptr::null(), |c| c.as_ptr()))
}

/// True when the server offers capability `name`, one of the
/// CMDOP_CAPABILITY_* strings (compared exactly). False when `info` or
/// `name` is NULL. Calls needing a capability the server lacks return
/// NOT_SUPPORTED or take the official path, as each documents.
/// Thread: any; concurrent reads of one object are safe, but not during its _free.
#[no_mangle]
pub unsafe extern "C" fn cmdop_connection_info_has_capability(
    info: *const cmdop_connection_info,
    name: *const c_char,
) -> bool {
    ffi_boundary!(@value false; {
        if name.is_null() {
            return false;
        }
        // SAFETY: `name` is a non-NULL C string (header contract).
        let name = unsafe { std::ffi::CStr::from_ptr(name) };
        // SAFETY: `info` is NULL or from cmdop_get_connection_info.
        unsafe { info.as_ref() }.is_some_and(|i| i.capabilities.iter().any(|c| c.as_c_str() == name))
    })
}

/// Free a connection info. NULL is a no-op.
/// Thread: any, once no other call uses the object (it may be one other than the thread that made it).
#[no_mangle]
pub unsafe extern "C" fn cmdop_connection_info_free(info: *mut cmdop_connection_info) {
    ffi_boundary!(@value ();
        if !info.is_null() {
            // SAFETY: created by Box::into_raw above; freed once.
            drop(unsafe { Box::from_raw(info) });
        }
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn capability_macros_name_what_the_core_checks() {
        let toml = include_str!("../../cbindgen.toml");
        for (name, value) in [
            ("EXEC", cmdop_proto::caps::EXEC),
            ("FILES", cmdop_proto::caps::FILES),
            ("MACHINE_ID", cmdop_proto::caps::MACHINE_ID),
            ("TOKENS", cmdop_proto::caps::TOKENS),
            ("SIDE_CONNECTIONS", cmdop_proto::caps::EXEC_RAW),
            ("SIDE_CONNECTIONS_TLS", cmdop_proto::caps::EXEC_RAW_TLS),
            ("EXEC_STDIN", cmdop_proto::caps::EXEC_STDIN),
        ] {
            let want = format!("#define CMDOP_CAPABILITY_{name} \"{value}\"");
            assert!(toml.contains(&want), "cbindgen.toml must define {want}");
        }
    }
}
