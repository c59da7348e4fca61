//! The metrics port (`--metrics-listen ADDR` of `cmdop server` and `cmdop
//! agent`): a small HTTP/1.1 server with three paths.
//!
//! - `/metrics`: the process's Prometheus metrics (OpenMetrics text);
//! - `/healthz`: 200 while the process runs (alive);
//! - `/readyz`: 200 when it should get work, 503 otherwise (a server that
//!   drains or has lost its database past the grace; an agent without a
//!   link to a control plane).
//!
//! Nothing on it is secret (no label carries a key, id or hostname), but it
//! tells who is connected and how busy the process is, so it listens on
//! loopback unless the operator says otherwise (see [`check_exposure`]).

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// What the metrics port serves.
#[derive(Clone)]
pub struct Endpoints {
    /// The metrics text and its content type.
    pub metrics: fn() -> String,
    pub content_type: &'static str,
    /// Whether `/readyz` says ready.
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// Refuses a non-loopback metrics address unless `allowed` (the flag named
/// by `how`, or TLS on the main port, says the operator meant it).
pub fn check_exposure(addr: SocketAddr, allowed: bool, how: &str) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() && !allowed {
        anyhow::bail!(
            "refusing to serve metrics on {addr}, which is not a loopback address: they show \
             who is connected and how busy this process is. Pass --metrics-listen \
             127.0.0.1:PORT and scrape through a proxy, or {how}"
        );
    }
    Ok(())
}

/// Binds the metrics port and serves it until the process exits.
pub async fn start(addr: SocketAddr, endpoints: Endpoints) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} for metrics; pick another address with --metrics-listen")
    })?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "metrics listening (/metrics, /healthz, /readyz)");
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics port: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let endpoints = endpoints.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let endpoints = endpoints.clone();
                    async move { Ok::<_, Infallible>(answer(&endpoints, &req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "metrics port: connection ended with an error");
                }
            });
        }
    });
    Ok(local)
}

fn answer(endpoints: &Endpoints, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        response
    };
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from((endpoints.metrics)())));
            if let Ok(value) = hyper::header::HeaderValue::from_str(endpoints.content_type) {
                response
                    .headers_mut()
                    .insert(hyper::header::CONTENT_TYPE, value);
            }
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if (endpoints.ready)() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: this port serves /metrics, /healthz and /readyz\n",
        ),
    }
}
