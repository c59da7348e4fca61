//! Client configuration.

use std::fmt;
use std::time::Duration;

/// The hosted control plane the official SDKs talk to.
pub const DEFAULT_REMOTE_SERVER: &str = "https://grpc.cmdop.com:443";

/// Credentials presented as `authorization: Bearer …` on every call.
#[derive(Clone)]
pub enum Credentials {
    /// A long-lived API key. Any non-empty string is passed through as is.
    ApiKey(String),
    /// An OAuth-style pair; with `auto_refresh` the access token is renewed
    /// through `cmdop.ext.v1.Cmdop/RefreshToken` when the server says it
    /// expired, and the call is retried once.
    Tokens {
        access: String,
        refresh: String,
        auto_refresh: bool,
    },
    /// No credentials (only useful against servers without authentication).
    None,
}

impl fmt::Debug for Credentials {
    // Never print secrets, not even in debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
            Credentials::Tokens { auto_refresh, .. } => {
                write!(f, "Tokens(<redacted>, auto_refresh: {auto_refresh})")
            }
            Credentials::None => f.write_str("None"),
        }
    }
}

/// How to reach and talk to a control plane. Build with
/// [`ClientOptions::remote`] or [`ClientOptions::local`] and adjust fields.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `scheme://host:port`; the scheme is replaced according to `tls`.
    /// Unused when `servers` is not empty.
    pub server: String,
    /// Several control planes (replicas of one cluster), each written like
    /// `server`; when not empty they replace `server`. Connecting tries them
    /// in a random order of this client's own (unless `servers_in_order`)
    /// and keeps the first that answers, so that clients spread over the
    /// replicas; when the one in use is lost, reconnecting tries the others
    /// first, in a random order so that the clients of a lost replica
    /// spread over the survivors (the lost one last), with the same backoff
    /// between rounds. A load balancer or a DNS name in front of the
    /// replicas needs no list: give it as `server`.
    pub servers: Vec<String>,
    /// Connect to `servers` in the order given (the first that answers),
    /// for a preferred replica, instead of starting at a random one.
    /// Failing over still picks a random survivor.
    pub servers_in_order: bool,
    /// Use TLS (system roots, or `ca_pem` when set).
    pub tls: bool,
    /// Extra root certificate(s), PEM.
    pub ca_pem: Option<Vec<u8>>,
    pub credentials: Credentials,
    /// Default deadline of each call (and of connecting).
    pub timeout: Duration,
    /// Extra attempts for calls that are safe to repeat.
    pub max_retries: u32,
    /// Pause between those attempts: each one a random part between half
    /// and all of it, so clients refused together do not retry in step.
    pub retry_delay: Duration,
    /// Reconnect in the background when the connection drops.
    pub auto_reconnect: bool,
    pub reconnect_delay: Duration,
    pub max_reconnect_delay: Duration,
    /// 0 = unlimited.
    pub max_reconnect_attempts: u32,
    /// Emit debug-level log messages (requests, responses, state changes).
    pub debug: bool,
    /// How often the supervisor checks that the server is still there.
    pub health_interval: Duration,
}

impl ClientOptions {
    /// Defaults for the hosted control plane: TLS on, 30 s timeout.
    pub fn remote(credentials: Credentials) -> ClientOptions {
        ClientOptions {
            server: DEFAULT_REMOTE_SERVER.to_string(),
            servers: Vec::new(),
            servers_in_order: false,
            tls: true,
            ca_pem: None,
            credentials,
            timeout: Duration::from_secs(30),
            max_retries: 3,
            retry_delay: Duration::from_millis(500),
            auto_reconnect: true,
            reconnect_delay: Duration::from_millis(1000),
            max_reconnect_delay: Duration::from_millis(30_000),
            max_reconnect_attempts: 10,
            debug: false,
            health_interval: Duration::from_secs(5),
        }
    }

    /// Defaults for a control plane on `host:port`: plaintext, no credentials
    /// unless `CMDOP_API_KEY` is set by the caller into `credentials`.
    pub fn local(host: &str, port: u16) -> ClientOptions {
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]") // bare IPv6 literal
        } else {
            host.to_string()
        };
        ClientOptions {
            server: format!("http://{host}:{port}"),
            tls: false,
            ..ClientOptions::remote(Credentials::None)
        }
    }

    /// The URI tonic connects to, with the scheme matching `tls`: of
    /// `server`, or of the first entry of `servers` when there are several.
    pub(crate) fn endpoint_uri(&self) -> String {
        uri_for(self.servers.first().unwrap_or(&self.server), self.tls)
    }

    /// Every server to try, in order, as URIs (see [`endpoint_uri`](Self::endpoint_uri)).
    pub(crate) fn endpoint_uris(&self) -> Vec<String> {
        if self.servers.is_empty() {
            vec![self.endpoint_uri()]
        } else {
            self.servers.iter().map(|s| uri_for(s, self.tls)).collect()
        }
    }
}

/// Why [`tls_by_default`] could not decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsRuleError {
    /// A scheme other than `http` or `https`.
    UnknownScheme(String),
    /// Some servers of one list say TLS and others plaintext.
    Mixed,
}

/// The TLS rule every front end shares when the caller does not choose
/// (the CLI's `--server` and `CMDOP_SERVER`; `cmdop_remote_new*()` with
/// `CMDOP_TLS_DEFAULT`; the bindings through it): `https://` means TLS,
/// `http://` plaintext; without a scheme, a loopback host (`localhost`,
/// 127.0.0.0/8, `::1`) means plaintext — a control plane on this machine,
/// as `cmdop dev` starts one — and any other host TLS. Every server of a
/// list must come out the same.
pub fn tls_by_default<'a>(
    servers: impl IntoIterator<Item = &'a str>,
) -> Result<bool, TlsRuleError> {
    let mut tls = None;
    for server in servers {
        let server = server.trim();
        let this = match server.split_once("://") {
            Some(("https", _)) => true,
            Some(("http", _)) => false,
            Some((scheme, _)) => return Err(TlsRuleError::UnknownScheme(scheme.to_string())),
            None => !is_loopback(server),
        };
        if tls.is_some_and(|t| t != this) {
            return Err(TlsRuleError::Mixed);
        }
        tls = Some(this);
    }
    Ok(tls.unwrap_or(true))
}

/// Whether the host of `host:port` (or a bare host) is this machine.
fn is_loopback(host_port: &str) -> bool {
    let host = match host_port.rsplit_once(':') {
        // `[::1]:50051`, `127.0.0.1:50051`, `localhost:50051`; a bare IPv6
        // literal (`::1`) has colons but no port.
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host_port,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// `server` with the scheme matching `tls` and no trailing slash.
fn uri_for(server: &str, tls: bool) -> String {
    let server = server.trim();
    let rest = server
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(server);
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", rest.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_tls_rule() {
        let one = |s: &str| tls_by_default([s]);
        assert_eq!(one("127.0.0.1:50051"), Ok(false));
        assert_eq!(one("localhost:1"), Ok(false));
        assert_eq!(one("[::1]:1"), Ok(false));
        assert_eq!(one("127.1.2.3:1"), Ok(false));
        assert_eq!(one("10.0.0.1:1"), Ok(true));
        assert_eq!(one("cp.example.com:443"), Ok(true));
        assert_eq!(one("https://127.0.0.1:1"), Ok(true));
        assert_eq!(one("http://cp.example.com:80"), Ok(false));
        assert_eq!(
            one("ftp://a:1"),
            Err(TlsRuleError::UnknownScheme("ftp".into()))
        );
        assert_eq!(
            tls_by_default(["127.0.0.1:1", "10.0.0.1:2"]),
            Err(TlsRuleError::Mixed)
        );
        assert_eq!(tls_by_default(["http://a:1", "127.0.0.1:2"]), Ok(false));
        assert_eq!(tls_by_default([]), Ok(true));
    }

    #[test]
    fn endpoint_scheme_follows_tls_flag() {
        let mut o = ClientOptions::local("127.0.0.1", 5000);
        assert_eq!(o.endpoint_uri(), "http://127.0.0.1:5000");
        o.tls = true;
        assert_eq!(o.endpoint_uri(), "https://127.0.0.1:5000");
        o.server = "grpc.example.com:443/".into();
        assert_eq!(o.endpoint_uri(), "https://grpc.example.com:443");
        assert_eq!(
            ClientOptions::local("::1", 7).endpoint_uri(),
            "http://[::1]:7"
        );
    }

    #[test]
    fn a_server_list_replaces_the_single_server_in_order() {
        let mut o = ClientOptions::local("127.0.0.1", 5000);
        assert_eq!(o.endpoint_uris(), vec!["http://127.0.0.1:5000"]);
        o.servers = vec!["10.0.0.1:1".into(), "https://10.0.0.2:2/".into()];
        assert_eq!(
            o.endpoint_uris(),
            vec!["http://10.0.0.1:1", "http://10.0.0.2:2"]
        );
        assert_eq!(o.endpoint_uri(), "http://10.0.0.1:1");
        o.tls = true;
        assert_eq!(o.endpoint_uris()[1], "https://10.0.0.2:2");
    }

    #[test]
    fn credentials_never_print_secrets() {
        let c = Credentials::Tokens {
            access: "at_secret".into(),
            refresh: "rt_secret".into(),
            auto_refresh: true,
        };
        let s = format!("{c:?} {:?}", Credentials::ApiKey("cmdop_secret".into()));
        assert!(!s.contains("secret"), "{s}");
    }
}
