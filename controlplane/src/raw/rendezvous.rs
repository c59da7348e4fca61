//! Tickets and pairing: which two side connections belong together.
//!
//! `Exec` registers a fresh ticket per command that may use a side
//! connection and holds the returned [`Ticket`] until the call ends. A side
//! connection presenting that ticket either finds the slot empty and waits
//! for its counterpart, or finds the counterpart waiting and hands itself
//! over. Either way the ticket is gone after one pairing attempt.
//!
//! Bytes flow from agent to caller (Exec stdout, downloads) unless the
//! ticket was registered for an upload ([`Rendezvous::register_upload`]):
//! then from caller to agent.

use parking_lot::{Mutex, MutexGuard};
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use cmdop_proto::raw::{self, Role};
use tokio::{net::TcpStream, sync::oneshot};

use super::relays::Relays;

/// Tickets that are still valid, and the connection waiting on each.
pub struct Rendezvous {
    slots: Mutex<HashMap<String, Slot>>,
    timeout: Duration,
    /// Tickets of calls forwarded to other replicas, relayed there.
    relays: Arc<Relays>,
}

enum Slot {
    /// Registered; nobody has connected with it yet.
    Open {
        exec_id: String,
        moved: Moved,
        upload: bool,
    },
    /// One side is connected and waits for the other to be handed over.
    Waiting {
        exec_id: String,
        moved: Moved,
        upload: bool,
        role: Role,
        handover: oneshot::Sender<TcpStream>,
    },
}

/// Bytes forwarded so far on a ticket's side connection.
type Moved = Arc<AtomicU64>;

/// A registered ticket, valid until this is dropped (or it was used).
pub struct Ticket {
    rendezvous: Arc<Rendezvous>,
    ticket: String,
    moved: Moved,
}

impl Ticket {
    /// The ticket text that goes into `ExecStart.raw_ticket`.
    pub fn as_str(&self) -> &str {
        &self.ticket
    }

    /// Bytes forwarded on this ticket's side connection so far (TLS records included, on a TLS one); it keeps counting after
    /// the ticket is dropped.
    pub fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // A side still waiting is woken by its sender being dropped here and
        // answered REFUSED.
        self.rendezvous.slots().remove(&self.ticket);
    }
}

/// Both ends of one side connection, matched by ticket.
pub struct Pair {
    pub exec_id: String,
    /// Counts the bytes forwarded, for the ticket's holder.
    pub moved: Arc<AtomicU64>,
    /// The caller sends and the agent receives (an upload).
    pub upload: bool,
    pub agent: TcpStream,
    pub caller: TcpStream,
}

/// What became of a connection that presented a ticket.
pub enum Joined {
    /// This connection found its counterpart (or was found by it after
    /// waiting): answer both and start moving bytes.
    Paired(Pair),
    /// This connection was handed to the waiting side, which carries on.
    HandedOver,
    /// Not paired; answer REFUSED on the stream given back.
    Refused(TcpStream, &'static str),
}

impl Rendezvous {
    /// An empty table. `timeout` bounds both reading a connection's opening
    /// and waiting for the other side ([`raw::PAIRING_TIMEOUT`] in service).
    pub fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Rendezvous {
            slots: Mutex::new(HashMap::new()),
            timeout,
            relays: Arc::default(),
        })
    }

    /// How long a side connection may take to open and to find its pair.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock()
    }

    /// Makes a fresh ticket for `exec_id`, valid while the result lives.
    pub fn register(self: &Arc<Self>, exec_id: &str) -> Ticket {
        self.fresh(exec_id, false)
    }

    /// Makes a fresh ticket for upload `transfer_id`: its bytes go from
    /// the caller to the agent.
    pub fn register_upload(self: &Arc<Self>, transfer_id: &str) -> Ticket {
        self.fresh(transfer_id, true)
    }

    /// A new random ticket for `id` (drawn again in the unlikely case that
    /// it is in use).
    fn fresh(self: &Arc<Self>, id: &str, upload: bool) -> Ticket {
        loop {
            if let Some(ticket) = self.insert(id, raw::new_ticket(), upload) {
                return ticket;
            }
        }
    }

    /// Registers `ticket`, chosen by the replica that forwarded call
    /// `exec_id` here ([`super::relay`]); `None` if it is in use already.
    pub fn register_as(self: &Arc<Self>, exec_id: &str, ticket: &str) -> Option<Ticket> {
        self.insert(exec_id, ticket.to_owned(), false)
    }

    /// Files `ticket` for `exec_id` (`upload`: its bytes go from the caller
    /// to the agent); `None` if the ticket is in use already.
    fn insert(self: &Arc<Self>, exec_id: &str, ticket: String, upload: bool) -> Option<Ticket> {
        let moved = Moved::default();
        {
            let mut slots = self.slots();
            if slots.contains_key(&ticket) {
                return None;
            }
            slots.insert(
                ticket.clone(),
                Slot::Open {
                    exec_id: exec_id.to_owned(),
                    moved: moved.clone(),
                    upload,
                },
            );
        }
        Some(Ticket {
            rendezvous: self.clone(),
            ticket,
            moved,
        })
    }

    /// The relay tickets of calls this replica forwarded.
    pub fn relays(&self) -> &Arc<Relays> {
        &self.relays
    }

    /// Tickets currently registered.
    #[cfg(test)]
    pub fn registered(&self) -> usize {
        self.slots().len()
    }

    /// Matches `stream`, which presented `ticket` as `role`, with the other
    /// side of that ticket, waiting up to the timeout for it to arrive.
    pub async fn join(&self, ticket: &str, role: Role, stream: TcpStream) -> Joined {
        let waiting = {
            let mut slots = self.slots();
            match slots.remove(ticket) {
                None => return Joined::Refused(stream, "unknown or used ticket"),
                Some(Slot::Open {
                    exec_id,
                    moved,
                    upload,
                }) => {
                    let (handover, waiting) = oneshot::channel();
                    slots.insert(
                        ticket.to_owned(),
                        Slot::Waiting {
                            exec_id: exec_id.clone(),
                            moved: moved.clone(),
                            upload,
                            role,
                            handover,
                        },
                    );
                    (exec_id, moved, upload, waiting)
                }
                Some(Slot::Waiting {
                    exec_id,
                    moved,
                    upload,
                    role: waiting_role,
                    handover,
                }) => {
                    if waiting_role == role {
                        // The one already waiting keeps its place.
                        slots.insert(
                            ticket.to_owned(),
                            Slot::Waiting {
                                exec_id,
                                moved,
                                upload,
                                role: waiting_role,
                                handover,
                            },
                        );
                        return Joined::Refused(stream, "this side of the ticket is taken");
                    }
                    // The slot is gone from the table now: the ticket is used.
                    return match handover.send(stream) {
                        Ok(()) => Joined::HandedOver,
                        // The waiting task was dropped without cleaning up.
                        Err(stream) => Joined::Refused(stream, "the other side gave up"),
                    };
                }
            }
        };
        let (exec_id, moved, upload, mut waiting) = waiting;
        let peer = match tokio::time::timeout(self.timeout, &mut waiting).await {
            Ok(Ok(peer)) => peer,
            Ok(Err(_)) => return Joined::Refused(stream, "the exec ended"),
            Err(_) => {
                // Withdraw under the lock; a peer that got in just before
                // then has already put its stream in the channel.
                {
                    let mut slots = self.slots();
                    if matches!(slots.get(ticket), Some(Slot::Waiting { .. })) {
                        slots.remove(ticket);
                    }
                }
                match waiting.try_recv() {
                    Ok(peer) => peer,
                    Err(_) => {
                        return Joined::Refused(stream, "the other side did not come in time")
                    }
                }
            }
        };
        let (agent, caller) = match role {
            Role::Agent => (stream, peer),
            Role::Caller => (peer, stream),
        };
        Joined::Paired(Pair {
            exec_id,
            moved,
            upload,
            agent,
            caller,
        })
    }
}
