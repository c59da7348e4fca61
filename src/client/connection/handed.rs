//! Which requests the HTTP/2 client took on: the channel every call goes
//! through, with each request's body watched. hyper polls a request's body
//! only once the request passed its last check of the connection and went
//! to HTTP/2 as a stream. A request that then fails with the server's
//! graceful GOAWAY got it for a stream id above the last one the server
//! processed (RFC 9113, 6.8), so nothing of it ran there: the call pipeline
//! may send it again, also a command (see [`refused_above_last_stream`]). Before that
//! point hyper reports the same GOAWAY for a request whose HEADERS may
//! already be on the wire, which must not be sent again.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;
use tonic::transport::Channel;

/// The transport under the generated stubs: a [`Channel`] that marks the
/// failures of requests whose body HTTP/2 began to send.
#[derive(Clone)]
pub(crate) struct Watched(pub(crate) Channel);

impl tower_service::Service<http::Request<Body>> for Watched {
    type Response = http::Response<Body>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let polled = Arc::new(AtomicBool::new(false));
        let req = req.map(|body| {
            Body::new(PolledBody {
                inner: body,
                polled: Arc::clone(&polled),
            })
        });
        self.0
            .call(req)
            .map(move |r| {
                r.map_err(|e| -> Self::Error {
                    if polled.load(Ordering::Acquire) {
                        Box::new(HandedOver(e.into()))
                    } else {
                        e.into()
                    }
                })
            })
            .boxed()
    }
}

/// A request body that notes when it is first polled.
struct PolledBody {
    inner: Body,
    polled: Arc<AtomicBool>,
}

impl HttpBody for PolledBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        self.polled.store(true, Ordering::Release);
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The failure of a request whose body HTTP/2 had begun to send; the
/// transport's own error is its source.
#[derive(Debug)]
struct HandedOver(Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for HandedOver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for HandedOver {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// True when `status` ended a request that HTTP/2 had taken on as a stream
/// and the server's graceful GOAWAY then refused: a stream above the last
/// one it processed, which never ran.
pub(crate) fn refused_above_last_stream(status: &tonic::Status) -> bool {
    let mut next = std::error::Error::source(status);
    let mut handed = false;
    while let Some(e) = next {
        handed |= e.is::<HandedOver>();
        next = e.source();
    }
    handed && std::error::Error::source(status).is_some_and(cmdop_proto::unsent::crossed_goaway)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmdop_proto::ext::cmdop_client::CmdopClient;
    use cmdop_proto::ext::ExecRequest;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that reads until the first request's body (DATA) arrives,
    /// then shuts down with a GOAWAY saying it processed no stream.
    async fn goaway_after_the_first_body(listener: tokio::net::TcpListener) {
        const DATA: u8 = 0;
        let (mut io, _) = listener.accept().await.expect("accept");
        let mut preface = [0u8; 24];
        io.read_exact(&mut preface).await.expect("preface");
        loop {
            let mut head = [0u8; 9];
            io.read_exact(&mut head).await.expect("frame header");
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            io.read_exact(&mut payload).await.expect("frame payload");
            if head[3] == DATA {
                break;
            }
        }
        // SETTINGS (empty), then GOAWAY: last stream 0, NO_ERROR.
        let settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
        let goaway = [0u8, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        io.write_all(&settings).await.expect("settings");
        io.write_all(&goaway).await.expect("goaway");
        let mut rest = Vec::new();
        let _ = io.read_to_end(&mut rest).await;
    }

    #[tokio::test]
    async fn a_stream_above_the_servers_last_one_never_ran() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(goaway_after_the_first_body(listener));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut client = CmdopClient::new(Watched(channel));
        let status = client
            .exec(ExecRequest {
                machine_id: "m".into(),
                command: "echo once".into(),
                ..Default::default()
            })
            .await
            .expect_err("the server went away");
        assert!(refused_above_last_stream(&status), "{status:?}");
        assert!(super::super::call::never_started(&status), "{status:?}");
        server.abort();
    }
}
