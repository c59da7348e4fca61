//! The accept loop of every server. Each connection is tracked
//! ([`crate::conns`]) from the moment it is accepted. With side connections
//! on, one port serves two protocols, sorted by the first byte: side
//! connections open with `C` (of "CMDOPRAW"); gRPC opens with "PRI" (the
//! HTTP/2 preface) or, on a TLS port, a 0x16 record, so the two never
//! collide. Everything that is not a side connection goes to tonic through
//! the stream [`spawn`] returns.

use std::{io, sync::Arc, time::Duration};

use cmdop_proto::raw::MAGIC;
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};
use tokio_stream::wrappers::ReceiverStream;

use super::{rendezvous::Rendezvous, side};
use crate::conns::{Guarded, Tracker};

/// Sorted gRPC connections waiting for tonic to pick them up.
const HANDOFF_QUEUE: usize = 64;
/// Pause after an accept error such as running out of file descriptors,
/// so the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The gRPC connections, for `serve_with_incoming_shutdown`.
pub type Incoming = ReceiverStream<io::Result<Guarded>>;

/// Accepts on `listener` in a task of its own: side connections (when
/// `rendezvous` is given) are served with it, the rest come out of the
/// returned stream, tracked by `tracker`. The task, and with it the
/// listening socket, ends when that stream is dropped or `stop` turns
/// true: from then on a new connection is refused by the kernel (the
/// caller tries another server at once) instead of being accepted and left
/// unserved while the server drains.
///
/// `handed_off`, when given, turns true once the loop stopped for `stop`
/// and every connection it accepted before has been taken from the
/// returned stream (or [`HANDOFF_GRACE`] passed): the server should begin
/// its graceful shutdown only then, or a connection accepted just before
/// would never be served and its call would end with a reset.
pub fn spawn(
    listener: TcpListener,
    rendezvous: Option<Arc<Rendezvous>>,
    tracker: Arc<Tracker>,
    stop: watch::Receiver<bool>,
    handed_off: Option<watch::Sender<bool>>,
) -> Incoming {
    let (tx, rx) = mpsc::channel(HANDOFF_QUEUE);
    tokio::spawn(async move {
        accept_loop(listener, rendezvous, tracker, tx.clone(), stop).await;
        if let Some(handed_off) = handed_off {
            // Sorting tasks hold clones of the sender; queued connections
            // use up its capacity.
            let deadline = tokio::time::Instant::now() + HANDOFF_GRACE;
            while (tx.strong_count() > 1 || tx.capacity() < tx.max_capacity())
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let _ = handed_off.send(true);
        }
    });
    ReceiverStream::new(rx)
}

/// Longest wait, once accepting stopped, for the connections accepted
/// before to be taken up by the server.
pub const HANDOFF_GRACE: Duration = Duration::from_millis(500);

async fn accept_loop(
    listener: TcpListener,
    rendezvous: Option<Arc<Rendezvous>>,
    tracker: Arc<Tracker>,
    grpc: mpsc::Sender<io::Result<Guarded>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = grpc.closed() => break,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                if !is_per_connection(&e) {
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let stream = tracker.admit(stream);
        match &rendezvous {
            Some(rendezvous) => {
                let timeout = tracker.handshake_timeout();
                tokio::spawn(sort(stream, timeout, rendezvous.clone(), grpc.clone()));
            }
            // Fails only when the server is shutting down.
            None => {
                if grpc.send(Ok(stream)).await.is_err() {
                    break;
                }
            }
        }
    }
    tracing::debug!("listener stopped");
}

/// Errors that concern only the connection being accepted; the next
/// accept may succeed at once.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Looks at the first byte without consuming it and passes the connection
/// on. One that says nothing within the handshake bound is closed.
async fn sort(
    stream: Guarded,
    timeout: Duration,
    rendezvous: Arc<Rendezvous>,
    grpc: mpsc::Sender<io::Result<Guarded>>,
) {
    let mut first = [0u8; 1];
    let peeked = tokio::select! {
        peeked = tokio::time::timeout(timeout, stream.tcp().peek(&mut first)) => peeked,
        // Pushed out by newer unauthenticated connections.
        _ = stream.killed() => return,
    };
    let side = match peeked {
        // Closed (or broken) before saying anything: nothing to serve.
        Ok(Ok(0)) | Ok(Err(_)) => return,
        Ok(Ok(_)) => first[0] == MAGIC[0],
        Err(_) => {
            tracing::debug!("closing a connection that sent nothing in time");
            return;
        }
    };
    if side {
        side::handle(rendezvous, stream.into_tcp()).await;
    } else {
        // Fails only when the server is shutting down.
        let _ = grpc.send(Ok(stream)).await;
    }
}
