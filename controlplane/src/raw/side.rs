//! One side connection from its opening to its end: read the opening, find
//! the other side, answer, and hand both sockets to the byte mover.

use std::sync::Arc;

use cmdop_proto::raw::{self, ACCEPTED, OPENING_LEN, REFUSED};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{
    relay,
    rendezvous::{Joined, Pair, Rendezvous},
    splice,
};

/// Serves a connection whose first byte said it is a side connection.
pub async fn handle(rendezvous: Arc<Rendezvous>, mut stream: TcpStream) {
    let mut opening = [0u8; OPENING_LEN];
    match tokio::time::timeout(rendezvous.timeout(), stream.read_exact(&mut opening)).await {
        Ok(Ok(_)) => {}
        // It hung up before finishing its opening: nobody to answer.
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "side connection closed during its opening");
            return;
        }
        Err(_) => return refuse(stream, "no complete opening in time").await,
    }
    let (role, ticket) = match raw::parse_opening(&opening) {
        Ok(parsed) => parsed,
        Err(why) => return refuse(stream, why).await,
    };
    // A forwarded call's ticket: relayed to the replica that holds its agent.
    let Some(stream) = relay::serve(&rendezvous, &opening, role, &ticket, stream).await else {
        return;
    };
    match rendezvous.join(&ticket, role, stream).await {
        Joined::Paired(pair) => run(pair).await,
        Joined::HandedOver => {}
        Joined::Refused(stream, why) => refuse(stream, why).await,
    }
}

/// Answers REFUSED and closes.
async fn refuse(mut stream: TcpStream, why: &str) {
    tracing::debug!(reason = why, "side connection refused");
    // The peer may be gone already; there is nothing more to tell it then.
    let _ = stream.write_all(&[REFUSED]).await;
    let _ = stream.shutdown().await;
}

/// Tells both sides they are paired, then moves the sender's bytes (the
/// agent's, or the caller's for an upload) to the receiver until the
/// sender half-closes or either side fails.
async fn run(pair: Pair) {
    let Pair {
        exec_id,
        moved: counter,
        upload,
        agent,
        caller,
    } = pair;
    let (mut sender, mut receiver) = if upload {
        (caller, agent)
    } else {
        (agent, caller)
    };
    // The receiver hears first: if it is already gone, the sender still
    // gets a REFUSED and keeps its data on the gRPC stream.
    if receiver.write_all(&[ACCEPTED]).await.is_err() {
        return refuse(sender, "the receiving side left before the answer").await;
    }
    if let Err(e) = sender.write_all(&[ACCEPTED]).await {
        // The receiver sees EOF with no switch; the data stays on gRPC.
        tracing::debug!(%exec_id, error = %e, "sending side left before the answer");
        return;
    }
    tracing::info!(%exec_id, upload, "side connection paired");
    let (sender, receiver) = match (sender.into_std(), receiver.into_std()) {
        (Ok(sender), Ok(receiver)) => (sender, receiver),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(%exec_id, error = %e, "cannot take over the side connection sockets");
            return;
        }
    };
    let moved =
        tokio::task::spawn_blocking(move || splice::forward(sender, receiver, &counter)).await;
    if let Ok(forwarded) = &moved {
        crate::metrics::side_connection_bytes(forwarded.bytes);
    }
    match moved {
        Ok(splice::Forwarded { bytes, error: None }) => {
            tracing::info!(%exec_id, bytes, "side connection finished");
        }
        Ok(splice::Forwarded {
            bytes,
            error: Some(e),
        }) => {
            tracing::info!(%exec_id, bytes, error = %e, "side connection broken off");
        }
        Err(e) => tracing::warn!(%exec_id, error = %e, "side connection mover failed"),
    }
}
