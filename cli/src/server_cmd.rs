//! `cmdop server`: the control plane.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Args;
use cmdop_controlplane::{ServerConfig, TlsFiles};

#[derive(Args)]
pub struct ServerArgs {
    /// Address to listen on. Plaintext is meant for loopback only: to expose
    /// the server beyond this machine, also pass --tls-cert and --tls-key.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Directory holding the SQLite state (created if missing).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
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
    /// Seconds without any message from an agent before it is marked offline.
    #[arg(long, default_value_t = 75)]
    pub heartbeat_timeout_secs: u64,
    /// Once listening, write the bound address (host:port) to this file.
    /// Useful with --listen 127.0.0.1:0.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

impl ServerArgs {
    pub fn config(&self) -> ServerConfig {
        ServerConfig {
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(crate::data_dir::default_data_dir),
            extensions: !self.no_extensions,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            heartbeat_timeout: Duration::from_secs(self.heartbeat_timeout_secs.max(1)),
            ..ServerConfig::default()
        }
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

/// Writes `contents` to `path` atomically (temp file + rename), so readers
/// polling for the file never see it half written.
pub fn write_ready_file(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let config = args.config();
    let (listener, local) = bind(args.listen).await?;
    if config.tls.is_none() && !local.ip().is_loopback() {
        tracing::warn!(%local, "serving plaintext beyond loopback; pass --tls-cert/--tls-key to encrypt");
    }
    tracing::info!(%local, data_dir = %config.data_dir.display(), tls = config.tls.is_some(), "control plane listening");
    if let Some(path) = &args.ready_file {
        write_ready_file(path, &format!("{local}\n"))?;
    }
    cmdop_controlplane::serve(listener, config, crate::shutdown_signal()).await
}
