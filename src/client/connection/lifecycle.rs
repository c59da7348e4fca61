//! The connection's lifecycle: open (dial, learn what the server offers,
//! start the supervisor), close, and the state and facts callers can read.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Notify;

use cmdop_proto::caps;
use cmdop_proto::ext::cmdop_client::CmdopClient;
use cmdop_proto::ext::ServerInfoRequest;
use cmdop_proto::limits::MAX_MESSAGE_BYTES;
use cmdop_proto::terminal::terminal_streaming_service_client::TerminalStreamingServiceClient;
use cmdop_proto::terminal::HealthCheckRequest;

use super::endpoint::{build_endpoint, connect_error, WatchedConnector};
use super::handed::Watched;
use super::supervisor::supervise;
use super::{CallPolicy, Conn, ConnState, ConnectionInfo, ServerFacts, PROBE_TIMEOUT};
use crate::client::{Client, Error, ErrorKind, Event, Inner, LogLevel, Result};

impl Client {
    /// Connect (or reconnect after [`close`](Self::close)): open the channel,
    /// learn what the server offers, fire `Connected`, start the supervisor.
    /// Connecting a connected client does nothing.
    pub async fn open(&self) -> Result<()> {
        let inner = &self.inner;
        if *inner.state.borrow() == ConnState::Connected {
            return Ok(());
        }
        let (index, conn, facts) = inner
            .dial_in_turn(&inner.first_order())
            .await
            .map_err(|e| inner.report(e))?;
        inner.install(index, conn, facts);
        inner.state.send_replace(ConnState::Connected);
        inner.emit(Event::Connected);

        let weak = Arc::downgrade(&self.inner);
        let handle = tokio::spawn(supervise(weak));
        if let Some(old) = inner.supervisor.lock().replace(handle) {
            old.abort();
        }
        Ok(())
    }

    /// Close the connection. Later calls fail with `Disconnected` until
    /// [`open`](Self::open) is called again. Closing twice is harmless.
    pub async fn close(&self) {
        self.shutdown();
    }

    /// [`close`](Self::close) without awaiting: usable outside the runtime.
    pub fn shutdown(&self) {
        let inner = &self.inner;
        if let Some(task) = inner.supervisor.lock().take() {
            task.abort();
        }
        let was = inner.state.send_replace(ConnState::Closed);
        *inner.conn.write() = None;
        // End the calls in flight (they kill what they started); later
        // calls take the fresh token.
        std::mem::take(&mut *inner.closing.lock()).cancel();
        if was != ConnState::Closed && was != ConnState::Idle {
            inner.log(LogLevel::Info, || "closed by the application".into());
            inner.emit(Event::Disconnected {
                reason: "closed by the application".into(),
                final_: true,
            });
        }
    }

    /// [`shutdown`](Self::shutdown), then deliver the events still queued
    /// and drop the event handlers; returns once no handler runs any more
    /// (unless called from a handler, which cannot wait for itself).
    pub fn shutdown_and_drain_events(&self) {
        self.shutdown();
        self.inner.events.finish();
    }

    /// True while the client is connected (not reconnecting, closed...).
    pub fn is_connected(&self) -> bool {
        *self.inner.state.borrow() == ConnState::Connected
    }

    /// The current connection state.
    pub fn state(&self) -> ConnState {
        self.inner.state.borrow().clone()
    }

    /// Server, TLS, measured latency (one ServerInfo or HealthCheck round
    /// trip, made now), server version and native exec availability.
    pub async fn connection_info(&self) -> ConnectionInfo {
        let inner = &self.inner;
        let facts = inner.facts.lock().clone();
        let policy = CallPolicy {
            idempotent: false,
            timeout: inner.opts.timeout.min(PROBE_TIMEOUT),
        };
        let started = Instant::now();
        let ok = if facts.ext {
            inner
                .unary(
                    "ServerInfo",
                    ServerInfoRequest {},
                    policy,
                    |mut c, r| async move { c.ext.server_info(r).await },
                )
                .await
                .is_ok()
        } else {
            inner
                .unary(
                    "HealthCheck",
                    HealthCheckRequest {},
                    policy,
                    |mut c, r| async move { c.terminal.health_check(r).await },
                )
                .await
                .is_ok()
        };
        ConnectionInfo {
            server: inner.current_server(),
            tls: inner.opts.tls,
            connected: self.is_connected(),
            latency: ok.then(|| started.elapsed()),
            server_version: facts.version.clone(),
            workspace: facts.workspace.clone(),
            native_exec: facts.has(caps::EXEC),
            capabilities: facts.capabilities,
        }
    }
}

impl Inner {
    /// Dial one server and learn what it offers (which also checks the
    /// credentials). Nothing of the client changes.
    pub(super) async fn dial(&self, uri: &str) -> Result<(Conn, ServerFacts)> {
        self.log(LogLevel::Info, || {
            format!("connecting to {uri} (tls: {})", self.opts.tls)
        });
        let dropped = Arc::new(Notify::new());
        let connector = WatchedConnector {
            dropped: Arc::clone(&dropped),
        };
        // With several servers a blackholed one must not hold up the rest
        // for the whole call timeout.
        let connect_timeout = if self.servers.len() > 1 {
            self.opts.timeout.min(PROBE_TIMEOUT)
        } else {
            self.opts.timeout
        };
        let channel = build_endpoint(&self.opts, uri, connect_timeout)?
            .connect_with_connector(connector)
            .await
            .map_err(|e| connect_error(uri, &e))?;
        let conn = Conn {
            terminal: TerminalStreamingServiceClient::new(Watched(channel.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            ext: CmdopClient::new(Watched(channel))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            dropped,
        };
        let facts = self.probe_server(&conn).await?;
        self.log(LogLevel::Info, || {
            format!(
                "connected to {uri}: server {} (extensions: {}, capabilities: [{}])",
                if facts.version.is_empty() {
                    "?"
                } else {
                    &facts.version
                },
                if facts.ext { "yes" } else { "no" },
                facts.capabilities.join(", ")
            )
        });
        Ok((conn, facts))
    }

    /// Dial the servers at the indices of `order`, each once; the first
    /// that answers wins. Only a server that cannot be reached (or does not
    /// answer in time) passes the turn to the next: a refusal
    /// (credentials, bad options) is the same on every replica and ends
    /// the round.
    pub(super) async fn dial_in_turn(&self, order: &[usize]) -> Result<(usize, Conn, ServerFacts)> {
        let n = self.servers.len();
        let mut failures = Vec::new();
        for &i in order {
            let uri = &self.servers[i];
            match self.dial(uri).await {
                Ok((conn, facts)) => return Ok((i, conn, facts)),
                Err(e)
                    if n > 1 && matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout) =>
                {
                    self.log(LogLevel::Info, || {
                        format!("{uri}: {e}; trying the next server")
                    });
                    failures.push(format!("{uri}: {e}"));
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Unavailable(format!(
            "none of the {} servers answered ({}): check that at least one control plane of the list is running and reachable",
            failures.len(),
            failures.join("; ")
        )))
    }

    /// The order in which connecting tries the servers: a random one of
    /// this client's own, so that clients with the same list spread over
    /// the replicas (or the list's order, with `servers_in_order`).
    fn first_order(&self) -> Vec<usize> {
        use rand::seq::SliceRandom;
        let mut order: Vec<usize> = (0..self.servers.len()).collect();
        if !self.opts.servers_in_order {
            order.shuffle(&mut rand::rng());
        }
        order
    }

    /// Make `conn` (to server `index`) the live connection.
    pub(super) fn install(&self, index: usize, conn: Conn, facts: ServerFacts) {
        *self.facts.lock() = facts;
        *self.current.lock() = index;
        *self.conn.write() = Some(conn);
    }

    /// Learn what the server offers; also checks the credentials.
    async fn probe_server(&self, conn: &Conn) -> Result<ServerFacts> {
        let policy = CallPolicy {
            idempotent: true,
            timeout: self.opts.timeout,
        };
        let info = self
            .unary_on(
                Some(conn.clone()),
                "ServerInfo",
                ServerInfoRequest {},
                policy,
                |mut c, r| async move { c.ext.server_info(r).await },
            )
            .await;
        match info {
            Ok(info) => Ok(ServerFacts {
                ext: true,
                capabilities: info.capabilities,
                version: info.server_version,
                workspace: info.workspace_name,
            }),
            Err(Error::NotSupported(_)) => {
                self.log(LogLevel::Info, || {
                    "server has no cmdop.ext.v1 extension: using the official protocol only".into()
                });
                let health = self
                    .unary_on(
                        Some(conn.clone()),
                        "HealthCheck",
                        HealthCheckRequest {},
                        policy,
                        |mut c, r| async move { c.terminal.health_check(r).await },
                    )
                    .await?;
                Ok(ServerFacts {
                    ext: false,
                    version: health.version,
                    ..Default::default()
                })
            }
            Err(e) => Err(e),
        }
    }
}
