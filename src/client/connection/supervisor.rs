//! The reconnect supervisor: a task per connected client that probes the
//! connection every `health_interval` (or at once when a call saw
//! UNAVAILABLE), reports a loss and, with `auto_reconnect`, reconnects with
//! exponential backoff and jitter (at once to another server of a list).

use std::sync::Weak;
use std::time::Instant;

use futures::FutureExt;
use rand::seq::SliceRandom;

use cmdop_proto::backoff::{Backoff, CLIENT_RECONNECT};
use cmdop_proto::terminal::HealthCheckRequest;

use super::{Conn, ConnState, PROBE_TIMEOUT};
use crate::client::{Event, Inner, LogLevel};

impl Inner {
    /// True when a probe reached the server (any answer but a transport
    /// failure or timeout counts).
    async fn probe_alive(&self, conn: &Conn) -> Result<(), String> {
        let mut request = tonic::Request::new(HealthCheckRequest {});
        let timeout = self.opts.timeout.min(PROBE_TIMEOUT);
        request.set_timeout(timeout);
        let _ = self.authorize(&mut request);
        let mut terminal = conn.terminal.clone();
        match tokio::time::timeout(timeout, terminal.health_check(request)).await {
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s))
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                ) =>
            {
                Err(s.message().to_string())
            }
            Ok(Err(_)) => Ok(()),
        }
    }

    /// The connection is lost and will not come back by itself: say why
    /// (log, state, final `Disconnected` event).
    fn disconnect_for_good(&self, level: LogLevel, reason: String) {
        self.log(level, || reason.clone());
        self.state.send_replace(ConnState::Disconnected {
            reason: reason.clone(),
        });
        self.emit(Event::Disconnected {
            reason,
            final_: true,
        });
    }
}

/// Upper bound of the pause before the first failover attempt to another
/// server of the list, so that the clients of a lost replica do not all
/// dial in the same millisecond.
const FIRST_FAILOVER_JITTER_MS: u64 = 50;

/// Watches the connection; on loss fires `Disconnected` and, with
/// `auto_reconnect`, reconnects with exponential backoff and jitter (reset
/// once a connection stayed up for `CLIENT_RECONNECT.reset_after`, see
/// `cmdop_proto::backoff`). A transport
/// connection that ends (see `WatchedConnector`) is a loss by itself, with
/// no probe: a server that is back before the probe still yields
/// `Disconnected(will_reconnect)` then `Connected`.
pub(super) async fn supervise(weak: Weak<Inner>) {
    let mut backoff = match weak.upgrade() {
        Some(inner) => Backoff::new(
            CLIENT_RECONNECT,
            inner.opts.reconnect_delay,
            inner.opts.max_reconnect_delay,
        ),
        None => return,
    };
    backoff.connected(Instant::now());
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let interval = inner.opts.health_interval;
        let Some(conn) = inner.conn.read().clone() else {
            return;
        };
        let dropped = {
            let trouble_notify = inner.trouble.clone();
            let dropped_notify = conn.dropped.clone();
            drop(inner); // do not keep the client alive while sleeping
            let trouble = trouble_notify.notified();
            let dropped = dropped_notify.notified();
            tokio::select! {
                _ = tokio::time::sleep(interval) => false,
                _ = trouble => false,
                _ = dropped => true,
            }
        };
        let Some(inner) = weak.upgrade() else { return };
        if *inner.state.borrow() != ConnState::Connected {
            return;
        }
        let why = if dropped {
            "the connection closed (server stopped, restarted or unreachable)".to_string()
        } else {
            match inner.probe_alive(&conn).await {
                Ok(()) => continue,
                Err(why) => why,
            }
        };
        backoff.lost(Instant::now());

        let server = inner.current_server();
        let lost_index = *inner.current.lock();
        let several = inner.servers.len() > 1;
        if !inner.opts.auto_reconnect {
            inner.disconnect_for_good(
                LogLevel::Warn,
                format!("lost connection to {server}: {why}"),
            );
            return;
        }
        inner.log(LogLevel::Warn, || {
            format!("lost connection to {server}: {why}; reconnecting")
        });
        inner
            .state
            .send_replace(ConnState::Reconnecting { attempt: 1 });
        inner.emit(Event::Disconnected {
            reason: format!("lost connection to {server}: {why}; reconnecting"),
            final_: false,
        });

        let max = inner.opts.max_reconnect_attempts;
        drop(inner);
        let mut attempt: u32 = 0;
        let mut last = why;
        let recovered = loop {
            if max != 0 && attempt >= max {
                break None;
            }
            // With other servers to go to, the first attempt starts at
            // once (within a few ms of jitter): a replica that stops or dies
            // should cost its clients no reconnect delay. Later attempts,
            // and a lone server, back off.
            let delay = if attempt == 0 && several {
                std::time::Duration::from_millis(rand::random_range(0..FIRST_FAILOVER_JITTER_MS))
            } else {
                backoff.next_delay()
            };
            tokio::time::sleep(delay).await;
            attempt += 1;
            let Some(inner) = weak.upgrade() else { return };
            if !matches!(*inner.state.borrow(), ConnState::Reconnecting { .. }) {
                return; // closed meanwhile
            }
            inner
                .state
                .send_replace(ConnState::Reconnecting { attempt });
            inner.log(LogLevel::Info, || {
                format!("reconnect attempt {attempt} to {server}")
            });
            if several {
                // The others first, in a random order of this client's own,
                // so that the clients of a lost replica spread over the
                // survivors instead of all moving to the next in the list;
                // the lost one last, over its own channel (which redials
                // by itself).
                let mut others: Vec<usize> = (0..inner.servers.len())
                    .filter(|&i| i != lost_index)
                    .collect();
                others.shuffle(&mut rand::rng());
                match inner.dial_in_turn(&others).await {
                    Ok(found) => break Some(Some(found)),
                    Err(e) => last = e.to_string(),
                }
            }
            match inner.probe_alive(&conn).await {
                Ok(()) => break Some(None),
                Err(e) if several => last = format!("{last}; {server}: {e}"),
                Err(e) => last = e,
            }
        };
        let Some(inner) = weak.upgrade() else { return };
        if !matches!(*inner.state.borrow(), ConnState::Reconnecting { .. }) {
            return;
        }
        match recovered {
            Some(other) => {
                if let Some((index, new_conn, facts)) = other {
                    inner.install(index, new_conn, facts);
                }
                let now_on = inner.current_server();
                inner.log(LogLevel::Info, || {
                    format!("reconnected to {now_on} after {attempt} attempt(s)")
                });
                backoff.connected(Instant::now());
                // Drops seen while reconnecting belong to the outage.
                if let Some(c) = inner.conn.read().as_ref() {
                    let _ = c.dropped.notified().now_or_never();
                }
                inner.state.send_replace(ConnState::Connected);
                inner.emit(Event::Connected);
            }
            None => {
                let which = if several {
                    format!("any of the {} servers", inner.servers.len())
                } else {
                    server
                };
                let reason = format!(
                    "gave up reconnecting to {which} after {attempt} attempts (last error: {last}); connect the client again to retry"
                );
                inner.disconnect_for_good(LogLevel::Error, reason);
                return;
            }
        }
    }
}
