//! The table of relay tickets: the calls this replica forwarded whose
//! side connections it relays, and where to (see [`super::relay`]). Each
//! ticket lives as long as its call's [`RelayTicket`]; ending the call
//! early shuts the relayed sockets down.

use std::{collections::HashMap, net::Shutdown, sync::Arc};

use cmdop_proto::raw::{self, Role};
use parking_lot::Mutex;

/// Tickets of calls this replica forwarded, and where to relay each.
#[derive(Default)]
pub struct Relays {
    slots: Mutex<HashMap<String, Relay>>,
}

/// Where one forwarded call's side connection goes.
pub(super) struct Relay {
    /// The owner replica's peer address.
    pub(super) to: String,
    pub(super) live: Arc<Mutex<Live>>,
}

/// The sockets of a relayed connection while it runs, so that the end of
/// its call can shut them down.
#[derive(Default)]
pub(super) struct Live {
    pub(super) ended: bool,
    pub(super) sockets: Vec<std::net::TcpStream>,
}

/// A forwarded call's relay ticket, valid until this is dropped.
pub struct RelayTicket {
    relays: Arc<Relays>,
    ticket: String,
    live: Arc<Mutex<Live>>,
    /// The owner answered the whole call: a relayed connection then runs
    /// to the owner's EOF instead of being cut off.
    answered: bool,
}

impl RelayTicket {
    /// The ticket text for [`PEER_SIDE_TICKET`](cmdop_proto::headers::PEER_SIDE_TICKET).
    pub fn as_str(&self) -> &str {
        &self.ticket
    }

    /// The owner ended the call normally: stdout still in flight on the
    /// relayed connection is delivered (its own EOF ends it).
    pub fn answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for RelayTicket {
    fn drop(&mut self) {
        self.relays.slots.lock().remove(&self.ticket);
        if self.answered {
            return;
        }
        let mut live = self.live.lock();
        live.ended = true;
        for socket in live.sockets.drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

impl Relays {
    /// A fresh ticket for a call forwarded to the replica whose peer port
    /// is `to`.
    pub fn open(self: &Arc<Self>, to: &str) -> RelayTicket {
        let live = Arc::new(Mutex::new(Live::default()));
        let mut slots = self.slots.lock();
        let mut ticket = raw::new_ticket();
        while slots.contains_key(&ticket) {
            ticket = raw::new_ticket();
        }
        slots.insert(
            ticket.clone(),
            Relay {
                to: to.to_owned(),
                live: live.clone(),
            },
        );
        RelayTicket {
            relays: self.clone(),
            ticket,
            live,
            answered: false,
        }
    }

    /// Takes the relay of `ticket` for a caller's connection (once).
    pub(super) fn take(&self, ticket: &str, role: Role) -> Option<Relay> {
        if role != Role::Caller {
            return None;
        }
        self.slots.lock().remove(ticket)
    }

    /// Tickets currently relayed.
    #[cfg(test)]
    pub fn open_tickets(&self) -> usize {
        self.slots.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_tickets_are_taken_once_by_callers_and_end_with_their_call() {
        let relays = Arc::new(Relays::default());
        let ticket = relays.open("127.0.0.1:1");
        let other = relays.open("127.0.0.1:1");
        assert_ne!(ticket.as_str(), other.as_str());
        assert_eq!(relays.open_tickets(), 2);
        assert!(relays.take(ticket.as_str(), Role::Agent).is_none());
        assert!(relays.take(ticket.as_str(), Role::Caller).is_some());
        assert!(relays.take(ticket.as_str(), Role::Caller).is_none());
        drop(other);
        drop(ticket);
        assert_eq!(relays.open_tickets(), 0);
    }
}
