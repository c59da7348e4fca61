//! The HTTP/2 endpoint the client dials: keepalive, flow-control windows,
//! user agent and TLS; and the error a failed dial turns into.

use std::time::Duration;

use cmdop_proto::limits::{HTTP2_CONNECTION_WINDOW, HTTP2_STREAM_WINDOW};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::client::{ClientOptions, Error, Result};

/// HTTP/2 keepalive ping interval (the Node SDK uses 25 s).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(25);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

pub(super) fn build_endpoint(opts: &ClientOptions) -> Result<Endpoint> {
    let uri = opts.endpoint_uri();
    let mut ep = Endpoint::from_shared(uri.clone())
        .map_err(|e| Error::InvalidArgument(format!("server address '{uri}' is not valid: {e}")))?
        .connect_timeout(opts.timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .user_agent(concat!("libcmdop/", env!("CARGO_PKG_VERSION")))
        .map_err(|e| Error::Internal(format!("user agent: {e}")))?;
    if opts.tls {
        let mut tls = ClientTlsConfig::new();
        tls = match &opts.ca_pem {
            Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
            None => tls.with_native_roots(),
        };
        ep = ep
            .tls_config(tls)
            .map_err(|e| Error::InvalidArgument(format!("TLS configuration rejected: {e}")))?;
    }
    Ok(ep)
}

/// A failed dial, with every cause in the chain and what to check.
pub(super) fn connect_error(uri: &str, err: &tonic::transport::Error) -> Error {
    use std::error::Error as _;
    let mut detail = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    Error::Unavailable(format!(
        "cannot connect to {uri}: {detail}: check that the control plane is running and the address, port and TLS setting are right"
    ))
}
