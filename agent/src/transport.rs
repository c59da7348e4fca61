//! gRPC channel to the control plane: plaintext for `http://`, TLS (system
//! roots plus an optional private CA) for `https://`, HTTP/2 keepalive so a
//! silently dead connection is noticed, and the agent's bearer credential on
//! every call.

use std::{path::Path, time::Duration};

use anyhow::Context;
use cmdop_proto::limits::{HTTP2_CONNECTION_WINDOW, HTTP2_STREAM_WINDOW, MAX_MESSAGE_BYTES};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

/// Time allowed for the TCP/TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 ping interval: a dead link (partition, vanished server) is
/// noticed within interval + timeout and the agent reconnects. The control
/// plane does not police ping rates.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long to wait for a ping acknowledgement before dropping the link.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the endpoint for `server` (not connected yet).
pub fn endpoint(server: &str, ca_cert: Option<&Path>) -> anyhow::Result<Endpoint> {
    let mut endpoint = Endpoint::from_shared(server.to_owned())
        .with_context(|| {
            format!("invalid server URL {server:?}; expected http://host:port or https://host:port")
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW);
    if server.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read CA certificate {}", path.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint
            .tls_config(tls)
            .context("invalid TLS configuration")?;
    } else if !server.starts_with("http://") {
        anyhow::bail!("server URL {server:?} must start with http:// or https://");
    }
    Ok(endpoint)
}

/// Adds `authorization: Bearer <secret>` to every request.
#[derive(Clone)]
pub struct BearerAuth {
    header: Option<MetadataValue<Ascii>>,
}

impl BearerAuth {
    /// Credential for agent RPCs; `None` for the unauthenticated Enroll.
    pub fn new(secret: Option<&str>) -> anyhow::Result<Self> {
        let header = secret
            .map(|s| {
                format!("Bearer {s}")
                    .parse::<MetadataValue<Ascii>>()
                    .context("agent secret contains characters not allowed in a header; remove the state file and enroll again")
            })
            .transpose()?;
        Ok(Self { header })
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

/// A channel with the agent's credentials attached.
pub type AuthedChannel = InterceptedService<Channel, BearerAuth>;

/// Largest message the agent sends or accepts.
pub const MAX_MESSAGE: usize = MAX_MESSAGE_BYTES;
