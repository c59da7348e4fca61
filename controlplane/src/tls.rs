//! TLS for the gRPC server (rustls via tonic).

use anyhow::Context;
use tonic::transport::{Identity, ServerTlsConfig};

use crate::config::TlsFiles;

/// Reads the PEM files into a tonic TLS configuration.
pub fn server_tls_config(files: &TlsFiles) -> anyhow::Result<ServerTlsConfig> {
    let cert = std::fs::read(&files.cert)
        .with_context(|| format!("cannot read TLS certificate {}", files.cert.display()))?;
    let key = std::fs::read(&files.key)
        .with_context(|| format!("cannot read TLS private key {}", files.key.display()))?;
    Ok(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
}
