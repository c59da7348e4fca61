//! The HTTP/2 endpoint the client dials: keepalive, flow-control windows,
//! user agent and TLS; and the error a failed dial turns into.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tonic::codegen::Service;

use cmdop_proto::limits::{HTTP2_CONNECTION_WINDOW, HTTP2_STREAM_WINDOW};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::client::{ClientOptions, Error, Result};

/// HTTP/2 keepalive: a ping every 10 s, and a connection whose ping is
/// not answered within 10 s is dropped (and reported): a silent network
/// loss is noticed within ~20 s even with no call running. A server that
/// closes or resets the connection is noticed at once (see
/// [`WatchedConnector`]).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The endpoint of `uri` (one of the client's servers); dialling it takes
/// at most `connect_timeout`.
pub(super) fn build_endpoint(
    opts: &ClientOptions,
    uri: &str,
    connect_timeout: Duration,
) -> Result<Endpoint> {
    let mut ep = Endpoint::from_shared(uri.to_string())
        .map_err(|e| Error::InvalidArgument(format!("server address '{uri}' is not valid: {e}")))?
        .connect_timeout(connect_timeout)
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

/// Dials the server over TCP like tonic's own connector, but wraps each
/// connection so that its end is known at once: when the server closes it
/// (killed, restarted, GOAWAY), resets it, or hyper drops it (keepalive
/// timeout, protocol error), `dropped` is notified. The supervisor turns
/// that into `Disconnected(will_reconnect)` and, once back, `Connected`,
/// even when the server is back before the next call.
#[derive(Clone)]
pub(crate) struct WatchedConnector {
    pub(crate) dropped: Arc<Notify>,
}

impl Service<Uri> for WatchedConnector {
    type Response = TokioIo<Watched>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<Watched>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dropped = Arc::clone(&self.dropped);
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::other(format!("no host in '{uri}'")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
            let stream = TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(Watched {
                stream,
                dropped,
                ended: false,
            }))
        })
    }
}

/// One TCP connection of the channel; notifies once when it ends.
pub(crate) struct Watched {
    stream: TcpStream,
    dropped: Arc<Notify>,
    ended: bool,
}

impl Watched {
    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.dropped.notify_one();
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        // Also when the client itself closes: the supervisor is gone or
        // sees the Closed state then, and ignores it.
        self.end();
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        match &r {
            Poll::Ready(Err(_)) => self.end(),
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                self.end()
            }
            _ => {}
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, data);
        if matches!(r, Poll::Ready(Err(_))) {
            self.end();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Err(_))) {
            self.end();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
