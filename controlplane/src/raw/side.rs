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

/// Tells both sides they are paired, then moves the agent's bytes to the
/// caller until the agent half-closes or either side fails.
async fn run(pair: Pair) {
    let Pair {
        exec_id,
        moved: counter,
        mut agent,
        mut caller,
    } = pair;
    // The caller hears first: if it is already gone, the agent still gets a
    // REFUSED and keeps its stdout on the gRPC stream.
    if caller.write_all(&[ACCEPTED]).await.is_err() {
        return refuse(agent, "the caller left before the answer").await;
    }
    if let Err(e) = agent.write_all(&[ACCEPTED]).await {
        // The caller sees EOF with no switch; stdout stays on gRPC.
        tracing::debug!(%exec_id, error = %e, "agent left before the answer");
        return;
    }
    tracing::info!(%exec_id, "side connection paired");
    let (agent, caller) = match (agent.into_std(), caller.into_std()) {
        (Ok(agent), Ok(caller)) => (agent, caller),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(%exec_id, error = %e, "cannot take over the side connection sockets");
            return;
        }
    };
    let moved = tokio::task::spawn_blocking(move || splice::forward(agent, caller, &counter)).await;
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
