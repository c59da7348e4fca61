//! The tower layer that counts every gRPC call on the public port: by
//! method and final gRPC code, its duration (Exec calls), the bytes of its
//! request and response bodies, and the calls in flight.
//!
//! It sits outside the gate, so calls the gate refuses (no credential, a
//! limit) are counted too. A call's code comes from its response headers
//! (a refusal answered at once) or from its trailers; a response that ends
//! without either (the caller went away) counts as CANCELLED.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::{body::Body, Code, Status};

use super::{code_label, get, is_exec, method_label, stream_bytes, CallLabels, MethodLabel};

/// The layer for `Server::layer`; put it before the gate's.
#[derive(Clone, Default)]
pub struct MetricsLayer;

impl<S> tower_layer::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> MetricsService<S> {
        MetricsService { inner }
    }
}

/// [`MetricsLayer`] around the gate and the routes.
#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S> tower_service::Service<http::Request<Body>> for MetricsService<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let call = Call::start(method_label(req.uri().path()));
        let req = req.map(|body| {
            Body::new(Counted {
                inner: body,
                direction: "in",
                call: None,
            })
        });
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            let mut call = call;
            if let Some(code) = code_of(response.headers()) {
                // Answered with headers only (trailers-only): done.
                call.code = Some(code);
                return Ok(response);
            }
            Ok(response.map(|body| {
                Body::new(Counted {
                    inner: body,
                    direction: "out",
                    call: Some(call),
                })
            }))
        })
    }
}

/// One call being counted; recorded when dropped.
struct Call {
    method: &'static str,
    started: Instant,
    code: Option<Code>,
}

impl Call {
    fn start(method: &'static str) -> Call {
        get()
            .calls_in_flight
            .get_or_create(&MethodLabel { method })
            .inc();
        Call {
            method,
            started: Instant::now(),
            code: None,
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let m = get();
        let method = self.method;
        m.calls_in_flight
            .get_or_create(&MethodLabel { method })
            .dec();
        let code = self.code.unwrap_or(Code::Cancelled);
        m.calls
            .get_or_create(&CallLabels {
                method,
                code: code_label(code),
            })
            .inc();
        if code == Code::Unauthenticated {
            m.auth_failures.inc();
        }
        if is_exec(method) {
            m.exec_duration
                .get_or_create(&MethodLabel { method })
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}

fn code_of(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?;
    let n: i32 = value.to_str().ok()?.parse().ok()?;
    Some(Code::from_i32(n))
}

/// A body whose data bytes are counted; a response body also carries its
/// call, which takes its code from the trailers.
struct Counted {
    inner: Body,
    direction: &'static str,
    call: Option<Call>,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    stream_bytes("grpc", this.direction, data.len() as u64);
                } else if let (Some(trailers), Some(call)) = (frame.trailers_ref(), &mut this.call)
                {
                    call.code = code_of(trailers);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                if let Some(call) = &mut this.call {
                    call.code = Some(status.code());
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
