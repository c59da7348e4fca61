//! The versioned options struct (libgit2 style). The caller states the
//! version it was built against, through `cmdop_options_init(&o,
//! CMDOP_OPTIONS_VERSION)` or `CMDOP_OPTIONS_INIT`; the library writes and
//! reads only the bytes that version has, so a program built against an
//! older, shorter layout keeps working with a newer library.
//!
//! How to add a field: append it at the end of `cmdop_options`, bump
//! `CMDOP_OPTIONS_VERSION` (and the macro in cbindgen.toml), add a frozen
//! `OptionsV<n>` copy of the new layout and its size to `size_of_version`
//! (the rules for every versioned struct are in `versioned.rs`). The
//! defaults stay in one place: the core's `ClientOptions`.

use std::ffi::{c_char, c_int};
use std::mem::size_of;
use std::time::Duration;

use super::boundary::{arg_str, opt_str, run_status, Failure};
use crate::client::{ClientOptions, Credentials};

/// Current version of `cmdop_options`.
pub const CMDOP_OPTIONS_VERSION: u32 = 3;

/// Most entries `cmdop_options.servers` may have (server_count).
pub const CMDOP_MAX_SERVERS: usize = 64;

/// Values of cmdop_options.tls (an int: any value is checked).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // only ever passed in from C, as an int
pub enum cmdop_tls {
    /// The rule the `cmdop` command line follows too. cmdop_local_new():
    /// plaintext. cmdop_remote_new*(): "https://" means TLS and "http://"
    /// plaintext; without a scheme, a loopback host ("localhost",
    /// 127.0.0.0/8, "[::1]") means plaintext (a control plane on this
    /// machine, as `cmdop dev` starts one) and any other host TLS; every
    /// entry of `servers` must come out the same (else
    /// CMDOP_STATUS_INVALID_ARGUMENT). The hosted default is TLS.
    Default = 0,
    /// TLS.
    On = 1,
    /// Plaintext (tests and private networks).
    Off = 2,
}

/// Options of a client, for remote and local control planes alike.
/// Initialise with `cmdop_options_init(&o, CMDOP_OPTIONS_VERSION)` or
/// `CMDOP_OPTIONS_INIT`, then change fields. Strings and bytes are borrowed
/// only during the call that reads them.
#[repr(C)]
pub struct cmdop_options {
    /// The layout version the program was built against:
    /// CMDOP_OPTIONS_VERSION of its header. Set by the init function/macro.
    pub version: u32,
    /// cmdop_remote_new*(): "host:port", "https://host:port" or
    /// "http://host:port" (TLS or not: see CMDOP_TLS_DEFAULT); NULL (and no
    /// `servers`) = $CMDOP_SERVER when set (one "host:port" or several
    /// separated by commas, as the `cmdop` command line reads it), else the
    /// hosted endpoint (grpc.cmdop.com:443). cmdop_local_new() takes host and
    /// port as arguments and refuses a non-NULL `server`.
    pub server: *const c_char,
    /// A cmdop_tls value (default CMDOP_TLS_DEFAULT).
    pub tls: c_int,
    /// PEM file with the CA certificate(s) to trust instead of the system
    /// roots; NULL = system roots.
    pub ca_pem_path: *const c_char,
    /// PEM bytes (not NUL-terminated) used instead of `ca_pem_path`; NULL = unused.
    pub ca_pem: *const u8,
    /// Length of `ca_pem`.
    pub ca_pem_len: usize,
    /// Default deadline of every call and of connecting (default 30000).
    pub timeout_ms: u32,
    /// Extra attempts of calls that are safe to repeat (default 3).
    pub max_retries: u32,
    /// Pause between those attempts (default 500): each one a random part
    /// between half and all of it, so clients refused together (a replica
    /// stopping) do not retry in step.
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
    /// OAuth clients (cmdop_remote_new_oauth): refresh an expired access
    /// token automatically (default true). Ignored for API keys.
    pub auto_refresh: bool,
    /// Version 2. Several control planes (replicas of one cluster), each
    /// "host:port" (the scheme, if any, follows `tls` like `server`): when
    /// `server_count` is not 0 they are used instead of `server`
    /// (cmdop_remote_new*(), which then requires `server` to be NULL) or of
    /// the `host` and `port` arguments (cmdop_local_new(), which then
    /// ignores them: NULL and 0 are fine). `tls` applies to every entry.
    ///
    /// cmdop_connect() tries them in a random order of the client's own
    /// (so that clients with the same list spread over the replicas;
    /// `servers_in_order` keeps the list's order) and
    /// keeps the first that answers (a server that cannot be reached within
    /// min(timeout_ms, 5 s) passes the turn; a refused key does not). When the server in use is
    /// lost, on_disconnect(will_reconnect=true) fires and every reconnect
    /// attempt (with the backoff above) tries the other servers first,
    /// in a random order (so the clients of a lost replica spread over the
    /// survivors), and the lost one last; on_connect fires
    /// once one answers. cmdop_get_connection_info() names the one in use.
    /// Calls in flight on the lost server end with UNAVAILABLE (an execute
    /// whose outcome is unknown with OUTCOME_UNKNOWN); they are not moved.
    ///
    /// A TCP load balancer or one DNS name in front of the replicas needs
    /// no list: pass it as `server`. The client then reconnects to whatever
    /// the name or balancer gives it, with the same events.
    ///
    /// The array and its strings are read by the constructor only (copied).
    /// Default NULL and 0; at most 64 entries; a NULL or empty entry, or a
    /// count without an array, is INVALID_ARGUMENT.
    pub servers: *const *const c_char,
    /// Number of entries of `servers` (version 2; default 0: no list).
    pub server_count: usize,
    /// Version 3; default false. true: cmdop_connect() tries `servers` in
    /// the list's order and keeps the first that answers, instead of
    /// starting at a random entry. For a preferred replica, or for servers
    /// that are not one cluster (not forwarding to each other), where a
    /// machine is reachable only through the server its agent uses. When
    /// the server in use is lost, reconnecting still tries the others in a
    /// random order, the lost one last.
    pub servers_in_order: bool,
}

/// Version 2 of the layout, frozen: never change it.
#[repr(C)]
#[allow(dead_code)] // only its size is used
struct OptionsV2 {
    version: u32,
    server: *const c_char,
    tls: c_int,
    ca_pem_path: *const c_char,
    ca_pem: *const u8,
    ca_pem_len: usize,
    timeout_ms: u32,
    max_retries: u32,
    retry_delay_ms: u32,
    auto_reconnect: bool,
    reconnect_delay_ms: u32,
    max_reconnect_delay_ms: u32,
    max_reconnect_attempts: u32,
    debug: bool,
    auto_refresh: bool,
    servers: *const *const c_char,
    server_count: usize,
}

/// Version 1 of the layout, frozen: never change it.
#[repr(C)]
#[allow(dead_code)] // only its size is used
struct OptionsV1 {
    version: u32,
    server: *const c_char,
    tls: c_int,
    ca_pem_path: *const c_char,
    ca_pem: *const u8,
    ca_pem_len: usize,
    timeout_ms: u32,
    max_retries: u32,
    retry_delay_ms: u32,
    auto_reconnect: bool,
    reconnect_delay_ms: u32,
    max_reconnect_delay_ms: u32,
    max_reconnect_attempts: u32,
    debug: bool,
    auto_refresh: bool,
}

impl super::versioned::Versioned for cmdop_options {
    const NAME: &'static str = "cmdop_options";
    const INIT: &'static str = "cmdop_options_init";
    const CURRENT: u32 = CMDOP_OPTIONS_VERSION;
    fn size_of_version(version: u32) -> usize {
        match version {
            1 => size_of::<OptionsV1>(),
            2 => size_of::<OptionsV2>(),
            _ => size_of::<cmdop_options>(),
        }
    }
    fn defaults() -> Self {
        defaults()
    }
    fn bools() -> &'static [(&'static str, usize)] {
        &[
            (
                "auto_reconnect",
                std::mem::offset_of!(cmdop_options, auto_reconnect),
            ),
            ("debug", std::mem::offset_of!(cmdop_options, debug)),
            (
                "auto_refresh",
                std::mem::offset_of!(cmdop_options, auto_refresh),
            ),
            (
                "servers_in_order",
                std::mem::offset_of!(cmdop_options, servers_in_order),
            ),
        ]
    }
}

/// The defaults of the current layout, from the core's defaults.
fn defaults() -> cmdop_options {
    let c = ClientOptions::remote(Credentials::None);
    let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    cmdop_options {
        version: CMDOP_OPTIONS_VERSION,
        server: std::ptr::null(),
        tls: cmdop_tls::Default as c_int,
        ca_pem_path: std::ptr::null(),
        ca_pem: std::ptr::null(),
        ca_pem_len: 0,
        timeout_ms: ms(c.timeout),
        max_retries: c.max_retries,
        retry_delay_ms: ms(c.retry_delay),
        auto_reconnect: c.auto_reconnect,
        reconnect_delay_ms: ms(c.reconnect_delay),
        max_reconnect_delay_ms: ms(c.max_reconnect_delay),
        max_reconnect_attempts: c.max_reconnect_attempts,
        debug: c.debug,
        auto_refresh: true,
        servers: std::ptr::null(),
        server_count: 0,
        servers_in_order: c.servers_in_order,
    }
}

/// Fill `*opts` with the defaults, writing only the fields of `version`
/// (pass CMDOP_OPTIONS_VERSION, the version of the header the program is
/// built with; `opts->version` is set to it).
///
/// Returns OK; INVALID_ARGUMENT when `opts` is NULL or `version` is 0 or
/// newer than this library (nothing is written then). Thread: any.
#[no_mangle]
pub extern "C" fn cmdop_options_init(
    opts: *mut cmdop_options,
    version: u32,
) -> super::status::cmdop_status {
    // SAFETY: NULL (checked) or, by the header's contract, a writable
    // struct of layout `version`.
    run_status(move || unsafe { super::versioned::init(opts, version) })
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
    // SAFETY: `path` is NULL or a C string, by the header's contract.
    match unsafe { opt_str(path, "ca_pem_path") }? {
        None => Ok(None),
        Some(p) => std::fs::read(p)
            .map(Some)
            .map_err(|e| Failure::invalid(format!("cannot read the CA file '{p}': {e}"))),
    }
}

/// The entries of `opts->servers`, checked and copied.
unsafe fn read_servers(list: *const *const c_char, count: usize) -> Result<Vec<String>, Failure> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if list.is_null() {
        return Err(Failure::invalid(format!(
            "opts->server_count is {count} but opts->servers is NULL: pass the array of \"host:port\" strings, or a count of 0"
        )));
    }
    if count > CMDOP_MAX_SERVERS {
        return Err(Failure::invalid(format!(
            "opts->server_count is {count}: at most {CMDOP_MAX_SERVERS} servers; put a load balancer or a DNS name in front of the replicas instead"
        )));
    }
    // SAFETY: non-null and, by the header's contract, `count` readable
    // pointers.
    let entries = unsafe { std::slice::from_raw_parts(list, count) };
    let mut out = Vec::with_capacity(count);
    for (i, &p) in entries.iter().enumerate() {
        let name = format!("opts->servers[{i}]");
        // SAFETY: NULL (checked) or a NUL-terminated string.
        let s = unsafe { arg_str(p, &name) }?;
        if s.trim().is_empty() {
            return Err(Failure::invalid(format!(
                "{name} is empty: pass \"host:port\" for every server"
            )));
        }
        out.push(s.trim().to_string());
    }
    Ok(out)
}

/// Which constructor reads the options.
pub(crate) enum Target<'a> {
    /// cmdop_remote_new*(): `server` (or `servers`) from the options.
    Remote,
    /// cmdop_local_new(): host and port from the arguments (unless the
    /// options carry `servers`; then they may be NULL and 0).
    Local { host: Option<&'a str>, port: u16 },
}

/// The environment variable the `cmdop` command line reads its servers
/// from; cmdop_remote_new*() read it too when given no server.
const SERVER_ENV: &str = "CMDOP_SERVER";

/// $CMDOP_SERVER as a list ("host:port" entries separated by commas); empty
/// when unset or blank.
fn servers_from_env() -> Result<Vec<String>, Failure> {
    let value = std::env::var(SERVER_ENV).unwrap_or_default();
    let list: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if list.len() > CMDOP_MAX_SERVERS {
        return Err(Failure::invalid(format!(
            "${SERVER_ENV} lists {} servers: at most {CMDOP_MAX_SERVERS}; put a load balancer or a DNS name in front of the replicas instead",
            list.len()
        )));
    }
    Ok(list)
}

/// Build core options from a (possibly NULL) options struct.
pub(crate) unsafe fn client_options(
    opts: *const cmdop_options,
    target: Target<'_>,
    mut credentials: Credentials,
) -> Result<ClientOptions, Failure> {
    // SAFETY: forwarded contract of the constructors.
    let o = unsafe { super::versioned::read(opts) }?;
    if let Credentials::Tokens { auto_refresh, .. } = &mut credentials {
        *auto_refresh = o.auto_refresh;
    }
    // SAFETY: `server` is NULL or a C string, by the header's contract.
    let server = unsafe { opt_str(o.server, "opts->server") }?;
    // SAFETY: NULL or `server_count` C strings, by the header's contract.
    let servers = unsafe { read_servers(o.servers, o.server_count) }?;
    let mut c = match target {
        Target::Remote if !servers.is_empty() => {
            if server.is_some() {
                return Err(Failure::invalid(
                    "both opts->server and opts->servers are set: use one (leave opts->server NULL with a list)",
                ));
            }
            ClientOptions {
                servers,
                ..ClientOptions::remote(credentials)
            }
        }
        Target::Local { .. } if !servers.is_empty() => {
            if server.is_some() {
                return Err(Failure::invalid(
                    "opts->server is set, but cmdop_local_new() takes its servers from opts->servers \
                     (or host and port): leave opts->server NULL",
                ));
            }
            ClientOptions {
                credentials,
                servers,
                ..ClientOptions::local("127.0.0.1", 1)
            }
        }
        Target::Remote => {
            let mut c = ClientOptions::remote(credentials);
            match server {
                Some(server) => {
                    if server.trim().is_empty() {
                        return Err(Failure::invalid(
                            "opts->server is empty: pass host:port or NULL for the default",
                        ));
                    }
                    c.server = server.to_string();
                }
                None => {
                    let mut from_env = servers_from_env()?;
                    if from_env.len() == 1 {
                        c.server = from_env.remove(0);
                    } else {
                        c.servers = from_env;
                    }
                }
            }
            c
        }
        Target::Local { host, port } => {
            let host = host.ok_or_else(|| Failure::null("host"))?;
            if host.trim().is_empty() {
                return Err(Failure::invalid("host is empty: pass e.g. \"127.0.0.1\""));
            }
            if port == 0 {
                return Err(Failure::invalid("port is 0: pass the control plane's port"));
            }
            if server.is_some() {
                return Err(Failure::invalid(
                    "opts->server is set, but cmdop_local_new() takes host and port as \
                     arguments: leave opts->server NULL",
                ));
            }
            ClientOptions {
                credentials,
                ..ClientOptions::local(host, port)
            }
        }
    };
    c.tls = match o.tls {
        // cmdop_local_new(): plaintext; cmdop_remote_new*(): the rule the
        // CLI follows too (see `tls_by_default`).
        0 if matches!(target, Target::Local { .. }) => c.tls,
        0 => {
            let servers: Vec<&str> = if c.servers.is_empty() {
                vec![c.server.as_str()]
            } else {
                c.servers.iter().map(String::as_str).collect()
            };
            crate::client::tls_by_default(servers).map_err(|e| match e {
                crate::client::TlsRuleError::UnknownScheme(scheme) => Failure::invalid(format!(
                    "unknown scheme '{scheme}' in opts->server(s): use http://, https:// or none"
                )),
                crate::client::TlsRuleError::Mixed => Failure::invalid(
                    "opts->servers mix TLS and plaintext (https://, http://, loopback without a \
                     scheme): give every entry the same scheme, or set opts->tls",
                ),
            })?
        }
        1 => true,
        2 => false,
        v => {
            return Err(Failure::invalid(format!(
                "opts->tls is {v}: pass CMDOP_TLS_DEFAULT, CMDOP_TLS_ON or CMDOP_TLS_OFF"
            )))
        }
    };
    // SAFETY: forwarded contract (pointer and length from the caller).
    c.ca_pem = unsafe { read_ca(o.ca_pem_path, o.ca_pem, o.ca_pem_len) }?;
    if o.timeout_ms == 0 {
        return Err(Failure::invalid(
            "opts->timeout_ms is 0: give a deadline in milliseconds (default 30000)",
        ));
    }
    if o.reconnect_delay_ms > o.max_reconnect_delay_ms {
        return Err(Failure::invalid(
            "opts->reconnect_delay_ms is larger than opts->max_reconnect_delay_ms",
        ));
    }
    c.timeout = ms(o.timeout_ms);
    c.max_retries = o.max_retries;
    c.retry_delay = ms(o.retry_delay_ms);
    c.auto_reconnect = o.auto_reconnect;
    c.reconnect_delay = ms(o.reconnect_delay_ms);
    c.max_reconnect_delay = ms(o.max_reconnect_delay_ms);
    c.max_reconnect_attempts = o.max_reconnect_attempts;
    c.debug = o.debug;
    c.servers_in_order = o.servers_in_order;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init() -> cmdop_options {
        let mut o = std::mem::MaybeUninit::<cmdop_options>::uninit();
        assert_eq!(
            cmdop_options_init(o.as_mut_ptr(), CMDOP_OPTIONS_VERSION),
            super::super::status::cmdop_status::Ok
        );
        // SAFETY: fully written by the init function (current version).
        unsafe { o.assume_init() }
    }

    #[test]
    fn each_version_is_a_prefix_of_the_next() {
        assert_eq!(CMDOP_OPTIONS_VERSION, 3);
        assert!(size_of::<OptionsV1>() < size_of::<OptionsV2>());
        assert!(size_of::<OptionsV2>() < size_of::<cmdop_options>());
        assert_eq!(
            std::mem::offset_of!(cmdop_options, servers),
            std::mem::offset_of!(OptionsV2, servers)
        );
        assert_eq!(
            std::mem::offset_of!(cmdop_options, server_count),
            std::mem::offset_of!(OptionsV2, server_count)
        );
        assert!(std::mem::offset_of!(cmdop_options, servers_in_order) >= size_of::<OptionsV2>());
    }

    /// A caller's struct of an older `version` (`size` bytes), followed by
    /// 0xFF garbage up to the current size: init must write, and the
    /// constructors read, none of the garbage.
    fn read_as_version(version: u32, size: usize) -> ClientOptions {
        let mut raw = [0xFFu8; size_of::<cmdop_options>()];
        assert_eq!(
            cmdop_options_init(raw.as_mut_ptr().cast(), version),
            super::super::status::cmdop_status::Ok
        );
        assert!(
            raw[size..].iter().all(|&b| b == 0xFF),
            "init wrote past version {version}"
        );
        let mut aligned = std::mem::MaybeUninit::<cmdop_options>::uninit();
        // SAFETY: copying raw bytes into a buffer of the same size.
        unsafe {
            std::ptr::copy_nonoverlapping(
                raw.as_ptr(),
                aligned.as_mut_ptr().cast::<u8>(),
                raw.len(),
            )
        };
        // SAFETY: a struct of layout `version` followed by bytes the
        // reader must skip.
        unsafe { client_options(aligned.as_ptr(), Target::Remote, Credentials::None) }.unwrap()
    }

    #[test]
    fn a_version_two_struct_is_read_without_the_order_flag() {
        // A v2 caller's struct ends after server_count: where v3 keeps
        // servers_in_order there is 0xFF, not a valid bool.
        let c = read_as_version(2, size_of::<OptionsV2>());
        assert!(!c.servers_in_order);
    }

    #[test]
    fn servers_in_order_reaches_the_client_options() {
        let mut o = init();
        assert!(!o.servers_in_order);
        let list = [c"127.0.0.1:1".as_ptr(), c"127.0.0.1:2".as_ptr()];
        o.servers = list.as_ptr();
        o.server_count = 2;
        o.servers_in_order = true;
        // SAFETY: options from the init function, with a valid list.
        let c = unsafe { client_options(&o, Target::Remote, Credentials::None) }.unwrap();
        assert!(c.servers_in_order);
        assert_eq!(c.servers.len(), 2);
    }

    #[test]
    fn a_version_one_struct_is_read_without_the_list() {
        // A v1 caller's struct ends after auto_refresh.
        let c = read_as_version(1, size_of::<OptionsV1>());
        assert!(c.servers.is_empty());
    }

    #[test]
    fn the_server_list_is_checked_and_replaces_the_single_server() {
        let list = [c"10.0.0.1:7001".as_ptr(), c" 10.0.0.2:7002 ".as_ptr()];
        let mut o = init();
        o.servers = list.as_ptr();
        o.server_count = 2;
        // SAFETY: the list outlives the call.
        let c = unsafe { client_options(&o, Target::Remote, Credentials::None) }.unwrap();
        assert_eq!(c.servers, vec!["10.0.0.1:7001", "10.0.0.2:7002"]);
        assert!(c.tls);
        let local = Target::Local {
            host: None,
            port: 0,
        };
        // SAFETY: as above.
        let c = unsafe { client_options(&o, local, Credentials::None) }.unwrap();
        assert_eq!(
            c.endpoint_uris(),
            vec!["http://10.0.0.1:7001", "http://10.0.0.2:7002"]
        );
        // Without a list, a local client still needs host and port.
        let mut plain = init();
        plain.servers = list.as_ptr(); // ignored with a count of 0
        let local = Target::Local {
            host: None,
            port: 0,
        };
        // SAFETY: as above.
        assert!(unsafe { client_options(&plain, local, Credentials::None) }.is_err());
        let err = |o: &cmdop_options| {
            // SAFETY: as above.
            unsafe { client_options(o, Target::Remote, Credentials::None) }
                .unwrap_err()
                .message
        };
        let mut bad = init();
        bad.server_count = 2;
        assert!(err(&bad).contains("opts->servers is NULL"), "{}", err(&bad));
        let holes = [c"a:1".as_ptr(), std::ptr::null()];
        bad.servers = holes.as_ptr();
        assert!(err(&bad).contains("opts->servers[1]"), "{}", err(&bad));
        let empty = [c"a:1".as_ptr(), c"  ".as_ptr()];
        bad.servers = empty.as_ptr();
        assert!(
            err(&bad).contains("opts->servers[1] is empty"),
            "{}",
            err(&bad)
        );
        bad.server_count = CMDOP_MAX_SERVERS + 1;
        assert!(err(&bad).contains("at most 64"), "{}", err(&bad));
        let mut both = init();
        both.servers = list.as_ptr();
        both.server_count = 2;
        both.server = c"h:1".as_ptr();
        assert!(err(&both).contains("both opts->server"), "{}", err(&both));
    }

    #[test]
    fn version_zero_and_newer_versions_are_rejected() {
        let mut o = init();
        o.version = 0;
        // SAFETY: NULL or options initialised for their stated version.
        let e = unsafe { client_options(&o, Target::Remote, Credentials::None) }.unwrap_err();
        assert!(e.message.contains("cmdop_options_init"), "{}", e.message);
        o.version = CMDOP_OPTIONS_VERSION + 1;
        // SAFETY: NULL or options initialised for their stated version.
        let e = unsafe { client_options(&o, Target::Remote, Credentials::None) }.unwrap_err();
        assert!(e.message.contains("newer libcmdop"), "{}", e.message);
        o.version = CMDOP_OPTIONS_VERSION;
        // SAFETY: NULL or options initialised for their stated version.
        let c = unsafe { client_options(&o, Target::Remote, Credentials::None) }.unwrap();
        assert!(c.tls);
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert_eq!(c.server, crate::client::DEFAULT_REMOTE_SERVER);
    }

    #[test]
    fn tls_default_depends_on_the_constructor_and_is_checked() {
        let mut o = init();
        let local = Target::Local {
            host: Some("127.0.0.1"),
            port: 9,
        };
        // SAFETY: NULL or options initialised for their stated version.
        let c = unsafe { client_options(&o, local, Credentials::None) }.unwrap();
        assert!(!c.tls);
        assert_eq!(c.endpoint_uri(), "http://127.0.0.1:9");
        o.tls = cmdop_tls::On as c_int;
        let c =
            // SAFETY: NULL or options initialised for their stated version.
            unsafe { client_options(&o, Target::Local { host: Some("h"), port: 1 }, Credentials::None) }
                .unwrap();
        assert!(c.tls);
        o.tls = cmdop_tls::Off as c_int;
        // SAFETY: NULL or options initialised for their stated version.
        let c = unsafe { client_options(&o, Target::Remote, Credentials::None) }.unwrap();
        assert!(!c.tls);
        o.tls = 3;
        // SAFETY: NULL or options initialised for their stated version.
        assert!(unsafe { client_options(&o, Target::Remote, Credentials::None) }.is_err());
        o.tls = -1;
        // SAFETY: NULL or options initialised for their stated version.
        assert!(unsafe { client_options(&o, Target::Remote, Credentials::None) }.is_err());
    }

    #[test]
    fn fields_are_read_and_checked() {
        let mut o = init();
        o.timeout_ms = 1234;
        // SAFETY: NULL or options initialised for their stated version.
        let c = unsafe { client_options(&o, Target::Remote, Credentials::None) }.unwrap();
        assert_eq!(c.timeout, Duration::from_millis(1234));
        o.timeout_ms = 0;
        // SAFETY: NULL or options initialised for their stated version.
        assert!(unsafe { client_options(&o, Target::Remote, Credentials::None) }.is_err());
        let mut o = init();
        o.server = c"h:1".as_ptr();
        let local = Target::Local {
            host: Some("h"),
            port: 1,
        };
        // SAFETY: NULL or options initialised for their stated version.
        assert!(unsafe { client_options(&o, local, Credentials::None) }.is_err());
        // A bool byte of 7, as C could write; never a Rust bool.
        let mut raw = std::mem::MaybeUninit::<cmdop_options>::uninit();
        cmdop_options_init(raw.as_mut_ptr(), CMDOP_OPTIONS_VERSION);
        let at = std::mem::offset_of!(cmdop_options, debug);
        // SAFETY: a byte inside the struct.
        unsafe { raw.as_mut_ptr().cast::<u8>().add(at).write(7) };
        let e =
            // SAFETY: NULL or options initialised for their stated version.
            unsafe { client_options(raw.as_ptr(), Target::Remote, Credentials::None) }.unwrap_err();
        assert!(e.message.contains("debug"), "{}", e.message);
    }

    #[test]
    fn init_rejects_null_and_unknown_versions() {
        use super::super::status::cmdop_status;
        assert_eq!(
            cmdop_options_init(std::ptr::null_mut(), CMDOP_OPTIONS_VERSION),
            cmdop_status::InvalidArgument
        );
        let mut o = init();
        o.timeout_ms = 5;
        assert_eq!(cmdop_options_init(&mut o, 0), cmdop_status::InvalidArgument);
        assert_eq!(
            cmdop_options_init(&mut o, CMDOP_OPTIONS_VERSION + 1),
            cmdop_status::InvalidArgument
        );
        assert_eq!(o.timeout_ms, 5, "nothing written on failure");
    }

    #[test]
    fn the_init_macro_in_the_header_matches_the_defaults() {
        let header = include_str!("../../cbindgen.toml");
        let d = defaults();
        let want = format!(
            "{{ CMDOP_OPTIONS_VERSION, NULL, CMDOP_TLS_DEFAULT, NULL, NULL, 0, {}, {}, {}, {}, {}, {}, {}, {}, {}, NULL, 0, {} }}",
            d.timeout_ms,
            d.max_retries,
            d.retry_delay_ms,
            d.auto_reconnect,
            d.reconnect_delay_ms,
            d.max_reconnect_delay_ms,
            d.max_reconnect_attempts,
            d.debug,
            d.auto_refresh,
            d.servers_in_order
        );
        assert!(
            header.contains(&format!("#define CMDOP_OPTIONS_INIT {want}")),
            "cbindgen.toml's CMDOP_OPTIONS_INIT must be {want}"
        );
    }
}
