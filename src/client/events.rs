//! Connection events and the thread that delivers them.
//!
//! Every client owns one dispatcher thread. Events and handler changes go
//! through one queue, so handlers run one at a time, in order, never on a
//! runtime worker, and a handler that is replaced is dropped (running any
//! finaliser it owns) only after its last call.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

use super::error::ErrorKind;

/// Queue depth between the client and its dispatcher thread. Events are rare
/// (state changes, failed calls); a full queue drops the event with a log line
/// instead of blocking a call.
const EVENT_QUEUE_DEPTH: usize = 1024;

/// Something that happened to a client.
#[derive(Debug, Clone)]
pub enum Event {
    /// The client is connected (first time or after a reconnection).
    Connected,
    /// The connection is gone; `reason` says why and whether the client keeps
    /// trying (final when reconnection gave up or the client was closed).
    Disconnected { reason: String, final_: bool },
    /// A call or a background task failed.
    Error { kind: ErrorKind, message: String },
    /// New tokens after an automatic refresh; persist them.
    TokensRefreshed { access: String, refresh: String },
}

/// Which handler slot an event goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Connect,
    Disconnect,
    Error,
    Tokens,
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Connected => EventKind::Connect,
            Event::Disconnected { .. } => EventKind::Disconnect,
            Event::Error { .. } => EventKind::Error,
            Event::TokensRefreshed { .. } => EventKind::Tokens,
        }
    }
}

/// A handler; dropped on the dispatcher thread after its last call.
pub type EventHandler = Box<dyn FnMut(&Event) + Send>;

enum Msg {
    Event(Event),
    SetHandler(EventKind, Option<EventHandler>),
    /// Drop every handler (running their finalisers) and end the thread.
    Stop,
}

/// Sending side of a client's dispatcher thread. Dropping it ends the thread
/// once the queue is drained.
pub(crate) struct EventDispatcher {
    tx: SyncSender<Msg>,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl EventDispatcher {
    pub(crate) fn spawn(client_id: u64) -> std::io::Result<EventDispatcher> {
        let (tx, rx) = sync_channel(EVENT_QUEUE_DEPTH);
        let thread = std::thread::Builder::new()
            .name(format!("cmdop-events-{client_id}"))
            .spawn(move || dispatch(rx))?;
        Ok(EventDispatcher {
            tx,
            thread: parking_lot::Mutex::new(Some(thread)),
        })
    }

    /// Delivers every event queued so far, drops the handlers (running
    /// their finalisers) and ends the thread; returns once that is done.
    /// From a handler itself it cannot wait for its own thread: it only
    /// asks, and the thread ends after that handler returns. Later events
    /// are dropped.
    pub(crate) fn finish(&self) {
        let thread = self.thread.lock().take();
        let Some(thread) = thread else { return };
        // Blocks only while the queue is full, i.e. while it is draining.
        let _ = self.tx.send(Msg::Stop);
        if thread.thread().id() != std::thread::current().id() {
            let _ = thread.join();
        }
    }

    /// Queue an event; never blocks.
    pub(crate) fn emit(&self, event: Event) {
        match self.tx.try_send(Msg::Event(event)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!("event queue full: an event handler is too slow; event dropped")
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Install (or with `None` remove) the handler for `kind`. The previous
    /// handler is dropped after any event queued before this call.
    pub(crate) fn set_handler(&self, kind: EventKind, handler: Option<EventHandler>) -> bool {
        self.tx.try_send(Msg::SetHandler(kind, handler)).is_ok()
    }
}

fn dispatch(rx: Receiver<Msg>) {
    let mut slots: [Option<EventHandler>; 4] = [None, None, None, None];
    let slot = |k: EventKind| match k {
        EventKind::Connect => 0,
        EventKind::Disconnect => 1,
        EventKind::Error => 2,
        EventKind::Tokens => 3,
    };
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Event(event) => {
                if let Some(h) = slots[slot(event.kind())].as_mut() {
                    h(&event);
                }
            }
            Msg::SetHandler(kind, handler) => slots[slot(kind)] = handler,
            Msg::Stop => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::sync::Arc;

    #[test]
    fn events_are_delivered_in_order_and_handlers_dropped_after_use() {
        struct DropFlag(Arc<Mutex<Vec<String>>>);
        impl Drop for DropFlag {
            fn drop(&mut self) {
                self.0.lock().push("dropped".into());
            }
        }
        let log = Arc::new(Mutex::new(Vec::new()));
        let d = EventDispatcher::spawn(0).unwrap();
        let flag = DropFlag(log.clone());
        let l = log.clone();
        d.set_handler(
            EventKind::Disconnect,
            Some(Box::new(move |e| {
                let _keep = &flag;
                if let Event::Disconnected { reason, .. } = e {
                    l.lock().push(reason.clone());
                }
            })),
        );
        d.emit(Event::Disconnected {
            reason: "a".into(),
            final_: false,
        });
        d.emit(Event::Connected); // no handler: ignored
        d.emit(Event::Disconnected {
            reason: "b".into(),
            final_: true,
        });
        d.set_handler(EventKind::Disconnect, None);
        drop(d);
        for _ in 0..200 {
            if log.lock().len() == 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(*log.lock(), vec!["a", "b", "dropped"]);
    }
}
