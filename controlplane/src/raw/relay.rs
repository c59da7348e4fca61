//! Side connections of forwarded calls (cluster mode).
//!
//! A client's Exec or Download that reaches replica A while replica B
//! holds the agent is forwarded to B's peer port. A picks a fresh ticket,
//! keeps it here ([`Relays::open`], for as long as the call lasts) and
//! sends it along in [`PEER_SIDE_TICKET`]; B registers its side connection
//! under that ticket ([`register`]) and offers it as usual, the offer
//! reaching the client through the forwarded stream. The client opens its
//! side connection to A, the server it knows; A finds the ticket here,
//! opens a connection to B's peer port with the same opening, passes B's
//! answer back and then splices B to the client ([`run`]). B pairs that
//! connection with the agent's as it would the client's own.
//!
//! A (and B) only ever move bytes: on a TLS deployment they are TLS records
//! between the agent and the client, both pinned, so neither replica holds
//! a key. The ticket is the only credential, as on the public port: 128
//! random bits, used once, and valid only while its call lasts on both
//! replicas. Every wait is bounded by the raw handshake timeouts, and a
//! call that ends before its owner answered (cancelled, revoked, lost)
//! shuts the relayed connection down.
//!
//! [`PEER_SIDE_TICKET`]: cmdop_proto::headers::PEER_SIDE_TICKET

use std::{
    net::Shutdown,
    sync::{atomic::AtomicU64, Arc},
};

use cmdop_proto::raw::{self, Role, ACCEPTED, OPENING_LEN, REFUSED, TICKET_LEN};
use tokio::{io::AsyncWriteExt, net::TcpStream};

use super::{relays::Relay, rendezvous::Rendezvous, splice, Ticket};

/// Which ticket a call's side connection may be registered under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SideTicket {
    /// A call from a client of this server: a fresh one.
    Fresh,
    /// A call another replica forwarded and will relay: the one it chose.
    Relayed(String),
    /// A forwarded call whose replica relays nothing (an older one): none.
    Unrelayed,
}

impl SideTicket {
    /// The ticket a forwarded call carries in its header `value`, if any
    /// and well-formed.
    pub fn forwarded(value: Option<&str>) -> SideTicket {
        match value {
            Some(t) if t.len() == TICKET_LEN && t.bytes().all(|b| b.is_ascii_hexdigit()) => {
                SideTicket::Relayed(t.to_owned())
            }
            _ => SideTicket::Unrelayed,
        }
    }
}

/// Registers the side connection of call `id` with `rendezvous` as `side`
/// says; `None` when it gets none (an unrelayed forward, or a relayed
/// ticket already in use).
pub fn register(rendezvous: &Arc<Rendezvous>, id: &str, side: &SideTicket) -> Option<Ticket> {
    match side {
        SideTicket::Fresh => Some(rendezvous.register(id)),
        SideTicket::Relayed(ticket) => rendezvous.register_as(id, ticket),
        SideTicket::Unrelayed => None,
    }
}

/// Serves `client`'s side connection here when its ticket belongs to a
/// forwarded call; gives it back otherwise.
pub(super) async fn serve(
    rendezvous: &Rendezvous,
    opening: &[u8; OPENING_LEN],
    role: Role,
    ticket: &str,
    client: TcpStream,
) -> Option<TcpStream> {
    match rendezvous.relays().take(ticket, role) {
        Some(relay) => {
            run(relay, opening, client).await;
            None
        }
        None => Some(client),
    }
}

/// Opens the owner's side of `relay` with the client's `opening`, passes
/// the owner's answer on and splices the owner's bytes to the client.
async fn run(relay: Relay, opening: &[u8; OPENING_LEN], mut client: TcpStream) {
    // Both bounded: the connect and the owner's pairing wait.
    let owner = match raw::connect(relay.to.as_str(), opening).await {
        Ok(owner) => owner,
        Err(e) => {
            tracing::debug!(to = %relay.to, error = %e, "relayed side connection refused by its owner");
            let _ = client.write_all(&[REFUSED]).await;
            let _ = client.shutdown().await;
            return;
        }
    };
    if let Err(e) = client.write_all(&[ACCEPTED]).await {
        // The owner's splice sees this connection close and stops.
        tracing::debug!(error = %e, "the caller left before the relayed answer");
        return;
    }
    let (owner, client) = match (owner.into_std(), client.into_std()) {
        (Ok(owner), Ok(client)) => (owner, client),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot take over the relayed side connection sockets");
            return;
        }
    };
    {
        let mut live = relay.live.lock();
        if live.ended {
            let _ = owner.shutdown(Shutdown::Both);
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        for socket in [&owner, &client] {
            if let Ok(clone) = socket.try_clone() {
                live.sockets.push(clone);
            }
        }
    }
    tracing::info!(to = %relay.to, "side connection relayed to the owner replica");
    let counter = AtomicU64::new(0);
    let moved = tokio::task::spawn_blocking(move || splice::forward(owner, client, &counter)).await;
    match moved {
        Ok(forwarded) => {
            crate::metrics::side_connection_relayed_bytes(forwarded.bytes);
            match forwarded.error {
                None => tracing::info!(bytes = forwarded.bytes, "relayed side connection finished"),
                Some(e) => {
                    tracing::info!(bytes = forwarded.bytes, error = %e, "relayed side connection broken off")
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "relayed side connection mover failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_forwarded_tickets_are_taken() {
        let t = raw::new_ticket();
        assert_eq!(
            SideTicket::forwarded(Some(&t)),
            SideTicket::Relayed(t.clone())
        );
        assert_eq!(SideTicket::forwarded(None), SideTicket::Unrelayed);
        assert_eq!(SideTicket::forwarded(Some("abc")), SideTicket::Unrelayed);
        let not_hex = format!("{}z", &t[1..]);
        assert_eq!(SideTicket::forwarded(Some(&not_hex)), SideTicket::Unrelayed);
    }

    #[test]
    fn a_relayed_ticket_registers_once_and_unrelayed_calls_get_none() {
        let rendezvous = Rendezvous::new(raw::PAIRING_TIMEOUT);
        let t = raw::new_ticket();
        let first = register(&rendezvous, "exec_1", &SideTicket::Relayed(t.clone()))
            .expect("a free ticket");
        assert_eq!(first.as_str(), t);
        assert!(
            register(&rendezvous, "exec_2", &SideTicket::Relayed(t.clone())).is_none(),
            "a ticket in use is not registered twice"
        );
        assert!(register(&rendezvous, "exec_3", &SideTicket::Unrelayed).is_none());
        assert!(register(&rendezvous, "exec_4", &SideTicket::Fresh).is_some());
        drop(first);
        assert!(register(&rendezvous, "exec_5", &SideTicket::Relayed(t)).is_some());
    }
}
