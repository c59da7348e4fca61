//! Versioned option structs (libgit2 style): the caller fills `version`
//! through the init function or the INIT macro; the library reads only the
//! fields that version has and rejects versions it does not know.

use std::ffi::c_char;
use std::time::Duration;

use super::boundary::{opt_str, run_status, Failure, FfiResult};
use crate::client::{ClientOptions, Credentials};

/// Current version of `cmdop_remote_options`.
pub const CMDOP_REMOTE_OPTIONS_VERSION: u32 = 1;
/// Current version of `cmdop_local_options`.
pub const CMDOP_LOCAL_OPTIONS_VERSION: u32 = 1;

/// Options of a client for a remote (hosted) control plane. Initialise with
/// `cmdop_remote_options_init()` or `CMDOP_REMOTE_OPTIONS_INIT`, then change
/// fields. Strings are borrowed only during the call that reads them.
#[repr(C)]
pub struct cmdop_remote_options {
    /// CMDOP_REMOTE_OPTIONS_VERSION.
    pub version: u32,
    /// "host:port" or "https://host:port"; NULL = the hosted endpoint
    /// (grpc.cmdop.com:443).
    pub server: *const c_char,
    /// Plaintext instead of TLS (for tests and private networks).
    pub insecure: bool,
    /// PEM file with the CA certificate(s) to trust instead of the system
    /// roots; NULL = system roots.
    pub ca_pem_path: *const c_char,
    /// PEM bytes (not NUL-terminated) used instead of `ca_pem_path`; NULL = unused.
    pub ca_pem: *const u8,
    pub ca_pem_len: usize,
    /// Default deadline of every call and of connecting (default 30000).
    pub timeout_ms: u32,
    /// Extra attempts of calls that are safe to repeat (default 3).
    pub max_retries: u32,
    /// Pause between those attempts (default 500).
    pub retry_delay_ms: u32,
    /// Reconnect in the background when the connection drops (default true).
    pub auto_reconnect: bool,
    /// First reconnection delay (default 1000), doubled per attempt...
    pub reconnect_delay_ms: u32,
    /// ...up to this (default 30000), with jitter.
    pub max_reconnect_delay_ms: u32,
    /// Attempts before giving up (default 10; 0 = never give up).
    pub max_reconnect_attempts: u32,
    /// Emit debug-level log messages (see cmdop_on_log).
    pub debug: bool,
    /// OAuth clients: refresh an expired access token automatically
    /// (default true).
    pub auto_refresh: bool,
}

/// Options of a client for a control plane on host:port (e.g. `cmdop dev`).
/// Initialise with `cmdop_local_options_init()` or `CMDOP_LOCAL_OPTIONS_INIT`.
#[repr(C)]
pub struct cmdop_local_options {
    /// CMDOP_LOCAL_OPTIONS_VERSION.
    pub version: u32,
    /// API key; NULL = $CMDOP_API_KEY if set, else no credentials.
    pub api_key: *const c_char,
    /// Use TLS (default false: plaintext).
    pub tls: bool,
    /// As in cmdop_remote_options.
    pub ca_pem_path: *const c_char,
    pub ca_pem: *const u8,
    pub ca_pem_len: usize,
    /// Default deadline of every call and of connecting (default 30000).
    pub timeout_ms: u32,
    pub max_retries: u32,
    pub retry_delay_ms: u32,
    pub auto_reconnect: bool,
    pub reconnect_delay_ms: u32,
    pub max_reconnect_delay_ms: u32,
    pub max_reconnect_attempts: u32,
    pub debug: bool,
}

fn remote_defaults() -> cmdop_remote_options {
    cmdop_remote_options {
        version: CMDOP_REMOTE_OPTIONS_VERSION,
        server: std::ptr::null(),
        insecure: false,
        ca_pem_path: std::ptr::null(),
        ca_pem: std::ptr::null(),
        ca_pem_len: 0,
        timeout_ms: 30_000,
        max_retries: 3,
        retry_delay_ms: 500,
        auto_reconnect: true,
        reconnect_delay_ms: 1000,
        max_reconnect_delay_ms: 30_000,
        max_reconnect_attempts: 10,
        debug: false,
        auto_refresh: true,
    }
}

fn local_defaults() -> cmdop_local_options {
    let r = remote_defaults();
    cmdop_local_options {
        version: CMDOP_LOCAL_OPTIONS_VERSION,
        api_key: std::ptr::null(),
        tls: false,
        ca_pem_path: std::ptr::null(),
        ca_pem: std::ptr::null(),
        ca_pem_len: 0,
        timeout_ms: r.timeout_ms,
        max_retries: r.max_retries,
        retry_delay_ms: r.retry_delay_ms,
        auto_reconnect: r.auto_reconnect,
        reconnect_delay_ms: r.reconnect_delay_ms,
        max_reconnect_delay_ms: r.max_reconnect_delay_ms,
        max_reconnect_attempts: r.max_reconnect_attempts,
        debug: r.debug,
    }
}

/// Fill `*opts` with the defaults of this library version.
///
/// Returns OK, or INVALID_ARGUMENT when `opts` is NULL. Thread: any.
#[no_mangle]
pub extern "C" fn cmdop_remote_options_init(
    opts: *mut cmdop_remote_options,
) -> super::status::cmdop_status {
    run_status(move || {
        if opts.is_null() {
            return Err(Failure::null("opts"));
        }
        // SAFETY: non-null; the caller provides a writable struct.
        unsafe { opts.write(remote_defaults()) };
        Ok(())
    })
}

/// Fill `*opts` with the defaults of this library version.
///
/// Returns OK, or INVALID_ARGUMENT when `opts` is NULL. Thread: any.
#[no_mangle]
pub extern "C" fn cmdop_local_options_init(
    opts: *mut cmdop_local_options,
) -> super::status::cmdop_status {
    run_status(move || {
        if opts.is_null() {
            return Err(Failure::null("opts"));
        }
        // SAFETY: as above.
        unsafe { opts.write(local_defaults()) };
        Ok(())
    })
}

/// Check the version field, read before anything else.
fn check_version(found: u32, current: u32, name: &str) -> FfiResult {
    match found {
        0 => Err(Failure::invalid(format!(
            "{name}.version is 0: initialise the struct with {name}_init() or the INIT macro"
        ))),
        v if v > current => Err(Failure::invalid(format!(
            "{name}.version is {v} but this libcmdop knows only up to {current}: the program was built against a newer libcmdop"
        ))),
        _ => Ok(()),
    }
}

fn ms(v: u32) -> Duration {
    Duration::from_millis(u64::from(v))
}

unsafe fn read_ca(
    path: *const c_char,
    pem: *const u8,
    len: usize,
) -> Result<Option<Vec<u8>>, Failure> {
    if !pem.is_null() {
        // SAFETY: the caller promises `len` readable bytes at `pem`.
        return Ok(Some(
            unsafe { std::slice::from_raw_parts(pem, len) }.to_vec(),
        ));
    }
    match unsafe { opt_str(path, "ca_pem_path") }? {
        None => Ok(None),
        Some(p) => std::fs::read(p)
            .map(Some)
            .map_err(|e| Failure::invalid(format!("cannot read the CA file '{p}': {e}"))),
    }
}

/// Build core options from a (possibly NULL) remote options struct.
pub(crate) unsafe fn remote_options(
    opts: *const cmdop_remote_options,
    credentials: Credentials,
) -> Result<ClientOptions, Failure> {
    let defaults = remote_defaults();
    let o = if opts.is_null() {
        &defaults
    } else {
        // SAFETY: non-null; read the leading version field alone first.
        let version = unsafe { std::ptr::read(opts.cast::<u32>()) };
        check_version(
            version,
            CMDOP_REMOTE_OPTIONS_VERSION,
            "cmdop_remote_options",
        )?;
        unsafe { &*opts }
    };
    let mut c = ClientOptions::remote(credentials);
    if let Some(server) = unsafe { opt_str(o.server, "opts->server") }? {
        if server.trim().is_empty() {
            return Err(Failure::invalid(
                "opts->server is empty: pass host:port or NULL for the default",
            ));
        }
        c.server = server.to_string();
    }
    c.tls = !o.insecure;
    c.ca_pem = unsafe { read_ca(o.ca_pem_path, o.ca_pem, o.ca_pem_len) }?;
    fill_common(
        &mut c,
        o.timeout_ms,
        o.max_retries,
        o.retry_delay_ms,
        o.auto_reconnect,
        o.reconnect_delay_ms,
        o.max_reconnect_delay_ms,
        o.max_reconnect_attempts,
        o.debug,
    )?;
    if let Credentials::Tokens { auto_refresh, .. } = &mut c.credentials {
        *auto_refresh = o.auto_refresh;
    }
    Ok(c)
}

/// Build core options for host:port from a (possibly NULL) struct.
pub(crate) unsafe fn local_options(
    host: &str,
    port: u16,
    opts: *const cmdop_local_options,
) -> Result<ClientOptions, Failure> {
    let defaults = local_defaults();
    let o = if opts.is_null() {
        &defaults
    } else {
        // SAFETY: as in remote_options.
        let version = unsafe { std::ptr::read(opts.cast::<u32>()) };
        check_version(version, CMDOP_LOCAL_OPTIONS_VERSION, "cmdop_local_options")?;
        unsafe { &*opts }
    };
    let mut c = ClientOptions::local(host, port);
    c.credentials = match unsafe { opt_str(o.api_key, "opts->api_key") }? {
        Some(k) if !k.is_empty() => Credentials::ApiKey(k.to_string()),
        _ => match std::env::var("CMDOP_API_KEY") {
            Ok(k) if !k.is_empty() => Credentials::ApiKey(k),
            _ => Credentials::None,
        },
    };
    c.tls = o.tls;
    c.ca_pem = unsafe { read_ca(o.ca_pem_path, o.ca_pem, o.ca_pem_len) }?;
    fill_common(
        &mut c,
        o.timeout_ms,
        o.max_retries,
        o.retry_delay_ms,
        o.auto_reconnect,
        o.reconnect_delay_ms,
        o.max_reconnect_delay_ms,
        o.max_reconnect_attempts,
        o.debug,
    )?;
    Ok(c)
}

#[allow(clippy::too_many_arguments)]
fn fill_common(
    c: &mut ClientOptions,
    timeout_ms: u32,
    max_retries: u32,
    retry_delay_ms: u32,
    auto_reconnect: bool,
    reconnect_delay_ms: u32,
    max_reconnect_delay_ms: u32,
    max_reconnect_attempts: u32,
    debug: bool,
) -> FfiResult {
    if timeout_ms == 0 {
        return Err(Failure::invalid(
            "opts->timeout_ms is 0: give a deadline in milliseconds (default 30000)",
        ));
    }
    if reconnect_delay_ms > max_reconnect_delay_ms {
        return Err(Failure::invalid(
            "opts->reconnect_delay_ms is larger than opts->max_reconnect_delay_ms",
        ));
    }
    c.timeout = ms(timeout_ms);
    c.max_retries = max_retries;
    c.retry_delay = ms(retry_delay_ms);
    c.auto_reconnect = auto_reconnect;
    c.reconnect_delay = ms(reconnect_delay_ms);
    c.max_reconnect_delay = ms(max_reconnect_delay_ms);
    c.max_reconnect_attempts = max_reconnect_attempts;
    c.debug = debug;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_zero_and_newer_versions_are_rejected() {
        let mut o = remote_defaults();
        o.version = 0;
        let e = unsafe { remote_options(&o, Credentials::None) }.unwrap_err();
        assert!(e.message.contains("_init()"), "{}", e.message);
        o.version = CMDOP_REMOTE_OPTIONS_VERSION + 1;
        let e = unsafe { remote_options(&o, Credentials::None) }.unwrap_err();
        assert!(e.message.contains("newer libcmdop"), "{}", e.message);
        o.version = CMDOP_REMOTE_OPTIONS_VERSION;
        let c = unsafe { remote_options(&o, Credentials::None) }.unwrap();
        assert!(c.tls);
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert_eq!(c.server, crate::client::DEFAULT_REMOTE_SERVER);
    }

    #[test]
    fn local_defaults_are_plaintext_and_read_fields() {
        let mut o = local_defaults();
        o.timeout_ms = 1234;
        o.api_key = c"k".as_ptr();
        let c = unsafe { local_options("127.0.0.1", 9, &o) }.unwrap();
        assert!(!c.tls);
        assert_eq!(c.timeout, Duration::from_millis(1234));
        assert_eq!(c.endpoint_uri(), "http://127.0.0.1:9");
        assert!(matches!(c.credentials, Credentials::ApiKey(ref k) if k == "k"));
        o.timeout_ms = 0;
        assert!(unsafe { local_options("h", 1, &o) }.is_err());
        let mut bad = local_defaults();
        bad.version = 99;
        assert!(unsafe { local_options("h", 1, &bad) }.is_err());
    }

    #[test]
    fn init_functions_reject_null_and_fill_version() {
        use super::super::status::cmdop_status;
        assert_eq!(
            cmdop_remote_options_init(std::ptr::null_mut()),
            cmdop_status::InvalidArgument
        );
        let mut o = std::mem::MaybeUninit::<cmdop_local_options>::uninit();
        assert_eq!(cmdop_local_options_init(o.as_mut_ptr()), cmdop_status::Ok);
        assert_eq!(
            unsafe { o.assume_init() }.version,
            CMDOP_LOCAL_OPTIONS_VERSION
        );
    }
}
