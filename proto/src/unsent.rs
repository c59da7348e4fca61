//! Telling a call that never left from one that may have reached its
//! peer, by the transport error that ended it. Shared by the library (may it
//! resend?) and the control plane's forwarding (may it say "nothing ran"?).

/// True when some error in `err`'s chain shows that the connection or the
/// stream was never opened: the connection refused, the request handed
/// back by hyper before it reached HTTP/2 (its connection closed, a GOAWAY
/// above all, while the request waited for the connection's task), or the
/// stream refused by a peer that is stopping (HTTP/2 REFUSED_STREAM).
/// Anything else may have reached the peer.
///
/// hyper's HTTP/2 client reports a request as "canceled" only when it
/// never gave the request to HTTP/2: the connection was no longer taking
/// requests ("connection was not ready"), or it closed with the request
/// still queued ("connection closed"; hyper even hands the request back).
/// A request already on the wire fails with an HTTP/2 or I/O error
/// instead. tonic keeps hyper's error in the chain, but not as text (its
/// message is only "operation was canceled"), so it is looked up by type.
/// The other cases are not exposed as types through the chains, so beyond
/// `io::ErrorKind::ConnectionRefused` the texts hyper and tonic use are
/// matched.
pub fn never_sent(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        let text = e.to_string().to_ascii_lowercase();
        if text.contains("tcp connect error")
            || text.contains("error trying to connect")
            || text.contains("refused stream")
            || text.contains("refused_stream")
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// True when `err`'s chain holds the peer's graceful GOAWAY (NO_ERROR)
/// ending a request that was being sent as the peer began to shut down.
/// The request either never left, or left with a stream id above the last
/// one the peer processed (never run), or, in one case, may have reached
/// it: hyper reports all three alike. After handing a request to HTTP/2 it
/// checks the connection once more, and a GOAWAY read by the connection's
/// task in between fails the request although its HEADERS may already be
/// on the wire (and a peer that had not yet sent its final GOAWAY
/// processes them). So this alone does not allow sending a command again;
/// a caller that knows HTTP/2 had taken the request on (hyper polled its
/// body, which it does only after that check) knows it never ran.
pub fn crossed_goaway(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.downcast_ref::<h2::Error>().is_some_and(|h2| {
            h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR)
        }) {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_connections_and_streams_were_never_sent() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(never_sent(&refused));
        let other = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!never_sent(&other));
        let text = std::io::Error::other(
            "stream error received: refused stream before processing any application logic",
        );
        assert!(never_sent(&text));
    }

    /// A real HTTP/2 client connection (hyper's, as under tonic) to a peer
    /// that never answers, and the request it holds.
    async fn queued_request() -> (
        hyper::client::conn::http2::Connection<
            hyper_util::rt::TokioIo<tokio::io::DuplexStream>,
            http_body_util::Empty<bytes::Bytes>,
            hyper_util::rt::TokioExecutor,
        >,
        impl std::future::Future<Output = hyper::Result<hyper::Response<hyper::body::Incoming>>>,
        tokio::io::DuplexStream,
    ) {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(ours),
        )
        .await
        .expect("HTTP/2 handshake");
        let request = http::Request::post("http://peer/cmdop.ext.v1.Cmdop/Exec")
            .body(http_body_util::Empty::new())
            .expect("request");
        (conn, send.send_request(request), theirs)
    }

    #[tokio::test]
    async fn a_request_whose_connection_closed_before_it_was_sent_was_never_sent() {
        let (conn, response, _peer) = queued_request().await;
        // The connection's task ends (as after a GOAWAY) with the request
        // still queued for it.
        drop(conn);
        let err = response.await.expect_err("the connection is gone");
        assert!(err.is_canceled(), "{err:?}");
        let status = tonic::Status::from_error(Box::new(err));
        assert!(
            std::error::Error::source(&status).is_some_and(never_sent),
            "{status:?}"
        );
    }

    #[tokio::test]
    async fn a_request_on_the_wire_when_the_connection_broke_may_have_been_sent() {
        let (conn, response, peer) = queued_request().await;
        let task = tokio::spawn(conn);
        // The request goes out; then the peer vanishes under it.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        drop(peer);
        let err = response.await.expect_err("the peer is gone");
        assert!(!err.is_canceled(), "{err:?}");
        assert!(!never_sent(&err), "{err:?}");
        let _ = task.await;
    }

    /// A peer that reads frames until the client's first request HEADERS,
    /// then says SETTINGS and GOAWAY with last stream 0: that request was
    /// above the last stream processed.
    async fn goaway_before_the_first_stream(mut io: tokio::io::DuplexStream) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const HEADERS: u8 = 1;
        let mut preface = [0u8; 24];
        io.read_exact(&mut preface).await.expect("preface");
        loop {
            let mut head = [0u8; 9];
            io.read_exact(&mut head).await.expect("frame header");
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            io.read_exact(&mut payload).await.expect("frame payload");
            if head[3] == HEADERS {
                break;
            }
        }
        let settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
        let goaway = [0u8, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        io.write_all(&settings).await.expect("settings");
        io.write_all(&goaway).await.expect("goaway");
        // Keep the connection open until the client is done with it.
        let mut rest = Vec::new();
        let _ = io.read_to_end(&mut rest).await;
    }

    #[tokio::test]
    async fn a_request_the_peer_goes_away_under_crossed_its_goaway() {
        let (conn, response, peer) = queued_request().await;
        let peer = tokio::spawn(goaway_before_the_first_stream(peer));
        let task = tokio::spawn(conn);
        let err = response.await.expect_err("the peer went away");
        assert!(crossed_goaway(&err), "{err:?}");
        // hyper reports a request that may have reached the peer alike.
        assert!(!never_sent(&err), "{err:?}");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!crossed_goaway(&refused));
        drop(task);
        peer.abort();
    }
}
