//! Server configuration.

use std::{path::PathBuf, time::Duration};

/// PEM files for serving TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key for `cert` (PEM).
    pub key: PathBuf,
}

/// How the control plane runs. Build it with struct-update syntax from
/// [`ServerConfig::default`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Directory of the SQLite state (`cmdop.db`); created if missing.
    pub data_dir: PathBuf,
    /// Serve `cmdop.ext.v1.Cmdop`. When false clients get UNIMPLEMENTED for
    /// it and fall back to the official protocol. AgentLink is always served.
    pub extensions: bool,
    /// Serve TLS with these files; plaintext when `None`.
    pub tls: Option<TlsFiles>,
    /// An agent that sends nothing for this long is marked offline.
    pub heartbeat_timeout: Duration,
    /// Per-session cap of the output ring buffer (allocated as output comes).
    pub output_buffer_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("cmdop-data"),
            extensions: true,
            tls: None,
            heartbeat_timeout: Duration::from_secs(75),
            output_buffer_bytes: 1024 * 1024,
        }
    }
}
