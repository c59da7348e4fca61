//! Server configuration.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

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
    /// Unused when `database` is set.
    pub data_dir: PathBuf,
    /// PostgreSQL URL (`postgres://user:password@host:port/db`) of the state
    /// shared by several servers; `None`: SQLite in `data_dir`.
    pub database: Option<String>,
    /// Serve `cmdop.ext.v1.Cmdop`. When false clients get UNIMPLEMENTED for
    /// it and fall back to the official protocol. AgentLink is always served.
    pub extensions: bool,
    /// Fan a command out over a selection of machines here (ExecFleet,
    /// capability `exec-fleet.v1`). When false clients run one Exec per
    /// machine themselves.
    pub server_fanout: bool,
    /// Serve TLS with these files; plaintext when `None`.
    pub tls: Option<TlsFiles>,
    /// An agent that sends nothing for this long is marked offline.
    pub heartbeat_timeout: Duration,
    /// HTTP/2 keepalive of every connection (agents' links included): a
    /// PING goes out after this long without traffic, and a connection
    /// whose PING is not answered within this long again is closed. A dead
    /// agent link is therefore noticed within about twice this, and calls to
    /// that machine then fail fast with UNAVAILABLE.
    pub keepalive: Duration,
    /// On shutdown, how long running Exec calls and file transfers get to
    /// finish (no new connections are accepted meanwhile) before agents'
    /// links are closed and what still runs ends with a message naming the
    /// shutdown.
    pub shutdown_grace: Duration,
    /// Per-session cap of the output ring buffer (allocated as output comes).
    pub output_buffer_bytes: usize,
    /// Limits that keep one peer from exhausting the server.
    pub limits: Limits,
    /// Cluster mode: several servers on one database, each call forwarded
    /// to the replica that holds its machine's agent. `None`: one server,
    /// no cluster queries at all.
    pub cluster: Option<ClusterConfig>,
    /// While the database cannot be reached, calls whose credential (API
    /// key, access token, agent secret) passed a check on this server
    /// within this long are still admitted; zero turns that off (every
    /// authenticated call then fails with UNAVAILABLE during an outage).
    pub db_outage_grace: Duration,
    /// The credential cache: a credential checked once is accepted again
    /// without a database statement while the revocation watch keeps
    /// confirming that nothing was revoked since
    /// ([`credential_cache_lease`]). Off: every call checks its credential
    /// in the database.
    pub credential_cache: bool,
    /// The audit trail: on (the default) or off, and whether an action
    /// whose record cannot be written is refused (the default) or goes on.
    pub audit: crate::audit::AuditConfig,
    /// Whether this server should get new work (listening, not draining,
    /// database reachable); the health service reports it, and a caller
    /// that keeps a clone can too (`/readyz`).
    pub serving: crate::health::Serving,
}

/// How this server joins a cluster of replicas sharing one database.
#[derive(Clone)]
pub struct ClusterConfig {
    /// This replica's id in the `replicas` table (unique in the cluster).
    pub replica_id: String,
    /// Where the peer port listens; other replicas must reach it at this
    /// address (with port 0 the bound port is advertised).
    pub peer_listen: SocketAddr,
    /// Shared by every replica; required on the peer port. At least
    /// [`MIN_PEER_SECRET_BYTES`] bytes. Never logged.
    pub peer_secret: String,
}

/// Shortest peer secret accepted.
pub const MIN_PEER_SECRET_BYTES: usize = 16;

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("replica_id", &self.replica_id)
            .field("peer_listen", &self.peer_listen)
            .field("peer_secret", &"<redacted>")
            .finish()
    }
}

/// Connection and request limits. The defaults suit a small deployment;
/// `cmdop server` has a flag for each.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A connection must send its first gRPC request (after the TLS and
    /// HTTP/2 handshakes) within this long, or it is closed.
    pub handshake_timeout: Duration,
    /// Connections that have not yet made an authenticated call. When a new
    /// connection would exceed this, the oldest of them is closed.
    pub max_unauthenticated_connections: usize,
    /// HTTP/2 streams (calls) open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Bytes of request messages being received at once, over all calls.
    /// A message that does not fit fails with RESOURCE_EXHAUSTED.
    pub inflight_request_bytes: usize,
    /// Exec calls open at once per API key (tokens count for their key).
    pub execs_per_key: usize,
    /// Attach streams open at once per API key.
    pub attaches_per_key: usize,
    /// Upload and Download calls open at once per API key.
    pub transfers_per_key: usize,
    /// How often open streams' credentials are checked again, so a revoked
    /// key or token ends its streams.
    pub revocation_poll: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            max_unauthenticated_connections: 1024,
            max_concurrent_streams: 256,
            inflight_request_bytes: 256 * 1024 * 1024,
            execs_per_key: 128,
            attaches_per_key: 16,
            transfers_per_key: 16,
            revocation_poll: Duration::from_millis(250),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("cmdop-data"),
            database: None,
            extensions: true,
            server_fanout: true,
            tls: None,
            heartbeat_timeout: Duration::from_secs(75),
            keepalive: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            output_buffer_bytes: 1024 * 1024,
            limits: Limits::default(),
            cluster: None,
            db_outage_grace: Duration::from_secs(300),
            credential_cache: true,
            audit: crate::audit::AuditConfig::default(),
            serving: crate::health::Serving::default(),
        }
    }
}

/// How long the credential cache is trusted after the revocation watch last
/// confirmed the revocation counter: [`cmdop_proto::limits::CREDENTIAL_CACHE_LEASE_MS`],
/// or four polls when `--revocation-poll` is set that slow (so that a
/// healthy watch always renews it in time); zero when the cache is off.
pub fn credential_cache_lease(config: &ServerConfig) -> Duration {
    if !config.credential_cache {
        return Duration::ZERO;
    }
    Duration::from_millis(cmdop_proto::limits::CREDENTIAL_CACHE_LEASE_MS)
        .max(config.limits.revocation_poll.saturating_mul(4))
}
