//! `cmdop server`: the control plane.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Args;
use cmdop_controlplane::{ClusterConfig, Limits, ServerConfig, TlsFiles, MIN_PEER_SECRET_BYTES};

#[derive(Args)]
pub struct ServerArgs {
    /// Address to listen on. Plaintext is for loopback only: to listen
    /// beyond this machine, also pass --tls-cert and --tls-key (or
    /// --allow-plaintext).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Serve plaintext on a non-loopback --listen address. Keys, agent
    /// secrets, enrollment tokens and command output then cross the network
    /// unencrypted: only for a network you trust, or behind a TLS proxy.
    #[arg(long)]
    pub allow_plaintext: bool,
    /// Directory holding the SQLite state (created if missing).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Keep the state in PostgreSQL instead of SQLite:
    /// postgres://USER:PASSWORD@HOST:PORT/DATABASE (several servers may
    /// share one). The schema is created or upgraded at start-up. Other
    /// local users can read a command line: give a URL with a password
    /// through CMDOP_DATABASE_URL or --database-url-file instead.
    #[arg(
        long,
        env = "CMDOP_DATABASE_URL",
        hide_env_values = true,
        conflicts_with = "data_dir"
    )]
    pub database: Option<String>,
    /// Read the --database URL from the first line of this file (mode 0600).
    #[arg(
        long,
        env = "CMDOP_DATABASE_URL_FILE",
        hide_env_values = true,
        conflicts_with = "data_dir"
    )]
    pub database_url_file: Option<PathBuf>,
    /// PEM certificate chain; turns on TLS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve only the official CMDOP protocol (no cmdop.ext.v1.Cmdop service);
    /// clients then use the official execute path.
    #[arg(long)]
    pub no_extensions: bool,
    /// Do not fan commands out over machine selections here (ExecFleet):
    /// clients then run one Exec per machine themselves.
    #[arg(long)]
    pub no_server_fanout: bool,
    /// When an action's audit record cannot be written: `closed` refuses
    /// the action with UNAVAILABLE, `open` logs and lets it go on.
    #[arg(long, value_enum, default_value = "closed", value_name = "closed|open")]
    pub audit_failure: AuditFailureArg,
    /// Keep no audit trail (to measure its cost; not for production).
    #[arg(long)]
    pub no_audit: bool,
    /// Largest recording of one attached shell session kept with its
    /// audit record, in KiB (0: no recordings).
    #[arg(long, default_value_t = 1024, value_name = "KIB")]
    pub audit_recording_max_kib: usize,
    /// Prune audit records older than this many days (hourly; the chains
    /// stay verifiable); 0 keeps them forever.
    #[arg(long, default_value_t = 0, value_name = "DAYS")]
    pub audit_retention_days: u64,
    /// Seconds without any message from an agent before it is marked offline.
    #[arg(long, default_value_t = 75)]
    pub heartbeat_timeout_secs: u64,
    /// Seconds of silence on a connection before the server pings it; a
    /// ping unanswered for as long again closes it. A dead agent link is
    /// noticed within about twice this, and calls to that machine then fail
    /// with UNAVAILABLE.
    #[arg(long, default_value_t = 5)]
    pub keepalive_secs: u64,
    /// On SIGTERM/SIGINT: seconds running commands and file transfers get
    /// to finish (no new connections are accepted meanwhile) before they
    /// are ended with a message naming the shutdown.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// While the state database (PostgreSQL) cannot be reached, calls whose
    /// API key, access token or agent secret passed a check on this server
    /// within this many seconds are still admitted (expired tokens never);
    /// others get UNAVAILABLE. 0: every authenticated call fails with
    /// UNAVAILABLE until the database is back.
    #[arg(long, default_value_t = 300)]
    pub db_outage_grace_secs: u64,
    /// Check every call's API key, access token or agent secret in the
    /// database instead of trusting a credential checked before while no
    /// revocation happened (see the README's security model).
    #[arg(long)]
    pub no_credential_cache: bool,
    /// Once listening, write the bound address (host:port) to this file.
    /// Useful with --listen 127.0.0.1:0.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Cluster mode: serve other replicas on this address (a second port)
    /// and forward calls for machines whose agent is on another replica.
    /// Every replica uses the same --data-dir database and --peer-secret.
    #[arg(long)]
    pub peer_listen: Option<SocketAddr>,
    /// Secret shared by the replicas of a cluster (at least 16 bytes);
    /// required with --peer-listen. Give it through CMDOP_PEER_SECRET or
    /// --peer-secret-file: a command line is visible to other users.
    #[arg(long, env = "CMDOP_PEER_SECRET", hide_env_values = true)]
    pub peer_secret: Option<String>,
    /// Read --peer-secret from the first line of this file (mode 0600).
    #[arg(long, env = "CMDOP_PEER_SECRET_FILE", hide_env_values = true)]
    pub peer_secret_file: Option<PathBuf>,
    /// Serve Prometheus metrics on http://ADDR/metrics, with /healthz
    /// (alive) and /readyz (ready for work). Off by default; a non-loopback
    /// ADDR needs TLS on --listen or --allow-plaintext, like the main port.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// This replica's id in the cluster (default: a random `rep_…`).
    #[arg(long, requires = "peer_listen")]
    pub replica_id: Option<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Read settings from this TOML file: any flag above by its long name
    /// with `_` for `-` (listen = "0.0.0.0:50051", data_dir = "/var/lib/cmdop").
    /// Flags and environment variables win over the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the settings (flags, environment, --config file), print
    /// them with secrets masked, and exit without serving.
    #[arg(long)]
    pub check: bool,
    /// The effective settings `--check` prints (filled in by the CLI).
    #[arg(skip)]
    pub effective: String,
}

/// Limits that keep one peer from exhausting the server.
#[derive(Args)]
pub struct LimitArgs {
    /// Seconds a new connection has to finish its TLS and HTTP/2 handshakes
    /// and send its first call before it is closed.
    #[arg(long, default_value_t = 10)]
    pub handshake_timeout_secs: u64,
    /// Connections that have not made an authenticated call yet; beyond
    /// this the oldest of them is closed.
    #[arg(long, default_value_t = 1024)]
    pub max_unauthenticated_connections: usize,
    /// Calls (HTTP/2 streams) open at once on one connection.
    #[arg(long, default_value_t = 256)]
    pub max_concurrent_streams: u32,
    /// MiB of clients' request messages (those over 64 KiB) being received
    /// at once over all calls (at least 32); a message that does not fit
    /// fails with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 256)]
    pub max_inflight_request_mib: usize,
    /// Exec calls open at once per API key.
    #[arg(long, default_value_t = 128)]
    pub max_execs_per_key: usize,
    /// Attach streams open at once per API key.
    #[arg(long, default_value_t = 16)]
    pub max_attaches_per_key: usize,
    /// Upload/Download calls open at once per API key.
    #[arg(long, default_value_t = 16)]
    pub max_transfers_per_key: usize,
}

impl LimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            handshake_timeout: Duration::from_millis(
                self.handshake_timeout_secs.saturating_mul(1000).max(100),
            ),
            max_unauthenticated_connections: self.max_unauthenticated_connections.max(1),
            max_concurrent_streams: self.max_concurrent_streams.max(1),
            inflight_request_bytes: self.max_inflight_request_mib.saturating_mul(1024 * 1024),
            execs_per_key: self.max_execs_per_key,
            attaches_per_key: self.max_attaches_per_key,
            transfers_per_key: self.max_transfers_per_key,
            ..Limits::default()
        }
    }
}

impl ServerArgs {
    pub fn config(&self) -> anyhow::Result<ServerConfig> {
        use crate::secret_flags::resolve;
        let database = resolve(&self.database, &self.database_url_file, "database-url-file")?;
        let peer_secret = resolve(
            &self.peer_secret,
            &self.peer_secret_file,
            "peer-secret-file",
        )?;
        if self.peer_listen.is_some() && peer_secret.is_none() {
            anyhow::bail!(
                "--peer-listen needs the cluster's peer secret: set CMDOP_PEER_SECRET or pass \
                 --peer-secret-file FILE (the same secret on every replica)"
            );
        }
        Ok(ServerConfig {
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(crate::data_dir::default_data_dir),
            database,
            extensions: !self.no_extensions,
            server_fanout: !self.no_server_fanout,
            audit: cmdop_controlplane::audit::AuditConfig {
                enabled: !self.no_audit,
                failure: match self.audit_failure {
                    AuditFailureArg::Closed => cmdop_controlplane::audit::AuditFailure::Closed,
                    AuditFailureArg::Open => cmdop_controlplane::audit::AuditFailure::Open,
                },
                recording_max_bytes: self.audit_recording_max_kib.saturating_mul(1024),
                retention: (self.audit_retention_days > 0)
                    .then(|| Duration::from_secs(self.audit_retention_days.saturating_mul(86_400))),
            },
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            heartbeat_timeout: Duration::from_secs(self.heartbeat_timeout_secs.max(1)),
            keepalive: Duration::from_secs(self.keepalive_secs.max(1)),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            db_outage_grace: Duration::from_secs(self.db_outage_grace_secs),
            credential_cache: !self.no_credential_cache,
            limits: self.limits.limits(),
            cluster: self.peer_listen.map(|peer_listen| ClusterConfig {
                replica_id: self
                    .replica_id
                    .clone()
                    .unwrap_or_else(cmdop_controlplane::cluster::random_replica_id),
                peer_listen,
                peer_secret: peer_secret.unwrap_or_default(),
            }),
            ..ServerConfig::default()
        })
    }
}

/// Binds `addr` and reports the address actually bound.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}; is another cmdop server running? pick another address with --listen"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    if config.tls.is_none() && !args.listen.ip().is_loopback() {
        if !args.allow_plaintext {
            anyhow::bail!(
                "refusing to serve plaintext on {}, which is not a loopback address: keys, agent \
                 secrets and command output would cross the network unencrypted. Pass \
                 --tls-cert and --tls-key, listen on 127.0.0.1, or pass --allow-plaintext if \
                 this network is trusted",
                args.listen
            );
        }
        tracing::warn!(listen = %args.listen, "serving PLAINTEXT beyond loopback (--allow-plaintext): credentials and output are not encrypted; pass --tls-cert/--tls-key to encrypt");
    }
    if let Some(addr) = args.metrics_listen {
        crate::metrics_http::check_exposure(
            addr,
            config.tls.is_some() || args.allow_plaintext,
            "serve TLS on --listen (--tls-cert, --tls-key) or pass --allow-plaintext if this \
             network is trusted",
        )?;
    }
    if let Some(cluster) = &config.cluster {
        if cluster.peer_secret.len() < MIN_PEER_SECRET_BYTES {
            anyhow::bail!(
                "the peer secret (CMDOP_PEER_SECRET or --peer-secret-file) must be at least {MIN_PEER_SECRET_BYTES} bytes; \
                 generate one with `openssl rand -hex 32` and give every replica the same one"
            );
        }
        if cluster.peer_listen.ip().is_unspecified() {
            anyhow::bail!(
                "--peer-listen {} is not an address other replicas can dial; pass this host's \
                 own address (e.g. 10.0.0.5:50052)",
                cluster.peer_listen
            );
        }
    }
    cmdop_controlplane::check_config(&config)?;
    if args.check {
        print!("{}", args.effective);
        eprintln!("cmdop: the settings are valid");
        return Ok(());
    }
    // Ready means ready: the database is open and migrated and the port is
    // bound before "listening" is logged and the ready file is written.
    let store = {
        let (dir, database) = (config.data_dir.clone(), config.database.clone());
        tokio::task::spawn_blocking(move || {
            cmdop_controlplane::store::Store::open_at(&dir, database.as_deref())
        })
        .await??
    };
    let (listener, local) = bind(args.listen).await?;
    // Installed before anyone is told we are ready, so that a stop right
    // after is a drain, not the default action of the signal.
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    // `systemctl reload`: installed before anyone is told we are ready, as
    // SIGHUP's default action would end the process.
    crate::reload::on_hangup("server", args.effective.clone());
    if let Some(addr) = args.metrics_listen {
        let serving = config.serving.clone();
        crate::metrics_http::start(
            addr,
            crate::metrics_http::Endpoints {
                metrics: cmdop_controlplane::metrics::encode,
                content_type: cmdop_controlplane::metrics::CONTENT_TYPE,
                ready: std::sync::Arc::new(move || serving.is_ready()),
            },
        )
        .await?;
    }
    tracing::info!(%local, state = %store.describe(), tls = config.tls.is_some(), "control plane listening");
    if let Some(path) = &args.ready_file {
        crate::readiness::write_ready_file(path, &format!("{local}\n"))?;
    }
    crate::readiness::notify_service_manager(false);
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        crate::readiness::notify_service_manager(true);
    };
    cmdop_controlplane::serve_with_store(listener, config, store, shutdown).await
}

/// `--audit-failure`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum AuditFailureArg {
    Closed,
    Open,
}
