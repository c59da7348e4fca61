//! Connecting, the unary call path (auth, deadlines, retries, token refresh)
//! and the supervisor that watches the connection and reconnects.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use cmdop_proto::ext::cmdop_client::CmdopClient;
use cmdop_proto::ext::{RefreshTokenRequest, ServerInfoRequest};
use cmdop_proto::limits::{HTTP2_CONNECTION_WINDOW, HTTP2_STREAM_WINDOW, MAX_MESSAGE_BYTES};
use cmdop_proto::terminal::terminal_streaming_service_client::TerminalStreamingServiceClient;
use cmdop_proto::terminal::HealthCheckRequest;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::backoff::backoff_delay;
use super::error::is_expired_token;
use super::{lock, Client, Credentials, Error, ErrorKind, Event, Inner, LogLevel, Result};

/// HTTP/2 keepalive ping interval (the Node SDK uses 25 s).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(25);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound of one health probe, whatever the call timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Capability the server lists when it serves native `Exec`.
pub(crate) const CAP_EXEC: &str = "exec.v1";

/// Connection state, observable with [`Client::state`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    /// Created, never connected.
    Idle,
    Connected,
    /// Lost; the supervisor is on attempt `attempt`.
    Reconnecting {
        attempt: u32,
    },
    /// Lost for good (no auto-reconnect, or it gave up).
    Disconnected {
        reason: String,
    },
    /// Closed by the application.
    Closed,
}

/// The generated stubs over the client's single channel.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) terminal: TerminalStreamingServiceClient<Channel>,
    pub(crate) ext: CmdopClient<Channel>,
}

/// What the server said about itself at connect time.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerFacts {
    /// `cmdop.ext.v1.Cmdop` answers (false when it said UNIMPLEMENTED).
    pub(crate) ext: bool,
    pub(crate) capabilities: Vec<String>,
    pub(crate) version: String,
    pub(crate) workspace: String,
}

impl ServerFacts {
    pub(crate) fn has(&self, capability: &str) -> bool {
        self.ext && self.capabilities.iter().any(|c| c == capability)
    }
}

/// What [`Client::connection_info`] reports.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub server: String,
    pub tls: bool,
    pub connected: bool,
    /// Round trip of one ServerInfo (or HealthCheck) call just now; `None`
    /// when it failed.
    pub latency: Option<Duration>,
    pub server_version: String,
    pub workspace: String,
    /// The server offers native exec (`exec.v1`).
    pub native_exec: bool,
    pub capabilities: Vec<String>,
}

/// How a unary call may be repeated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallPolicy {
    /// Safe to send again after a transient failure.
    pub(crate) idempotent: bool,
    pub(crate) timeout: Duration,
}

impl Client {
    /// Connect (or reconnect after [`close`](Self::close)): open the channel,
    /// learn what the server offers, fire `Connected`, start the supervisor.
    /// Connecting a connected client does nothing.
    pub async fn open(&self) -> Result<()> {
        let inner = &self.inner;
        if *inner.state.borrow() == ConnState::Connected {
            return Ok(());
        }
        let uri = inner.opts.endpoint_uri();
        inner.log(LogLevel::Info, || {
            format!("connecting to {uri} (tls: {})", inner.opts.tls)
        });
        let channel = build_endpoint(&inner.opts)?
            .connect()
            .await
            .map_err(|e| inner.report(connect_error(&uri, &e)))?;
        let conn = Conn {
            terminal: TerminalStreamingServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            ext: CmdopClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        };
        *inner.conn.write().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());

        let facts = match inner.probe_server(&conn).await {
            Ok(f) => f,
            Err(e) => {
                *inner.conn.write().unwrap_or_else(|p| p.into_inner()) = None;
                return Err(inner.report(e));
            }
        };
        inner.log(LogLevel::Info, || {
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
        *lock(&inner.facts) = facts;
        inner.state.send_replace(ConnState::Connected);
        inner.emit(Event::Connected);

        let weak = Arc::downgrade(&self.inner);
        let handle = tokio::spawn(supervise(weak));
        if let Some(old) = lock(&inner.supervisor).replace(handle) {
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
        if let Some(task) = lock(&inner.supervisor).take() {
            task.abort();
        }
        let was = inner.state.send_replace(ConnState::Closed);
        *inner.conn.write().unwrap_or_else(|p| p.into_inner()) = None;
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
        let facts = lock(&inner.facts).clone();
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
            server: inner.opts.endpoint_uri(),
            tls: inner.opts.tls,
            connected: self.is_connected(),
            latency: ok.then(|| started.elapsed()),
            server_version: facts.version.clone(),
            workspace: facts.workspace.clone(),
            native_exec: facts.has(CAP_EXEC),
            capabilities: facts.capabilities,
        }
    }
}

fn build_endpoint(opts: &super::ClientOptions) -> Result<Endpoint> {
    let uri = opts.endpoint_uri();
    let mut ep = Endpoint::from_shared(uri.clone())
        .map_err(|e| Error::InvalidArgument(format!("server address '{uri}' is not valid: {e}")))?
        .connect_timeout(opts.timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .user_agent(concat!("libcmdop/", env!("CARGO_PKG_VERSION")))
        .map_err(|e| Error::Internal(format!("user agent: {e}")))?;
    if opts.tls {
        let mut tls = ClientTlsConfig::new();
        tls = match &opts.ca_pem {
            Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
            None => tls.with_native_roots(),
        };
        ep = ep
            .tls_config(tls)
            .map_err(|e| Error::InvalidArgument(format!("TLS configuration rejected: {e}")))?;
    }
    Ok(ep)
}

fn connect_error(uri: &str, err: &tonic::transport::Error) -> Error {
    use std::error::Error as _;
    let mut detail = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    Error::Unavailable(format!(
        "cannot connect to {uri}: {detail}: check that the control plane is running and the address, port and TLS setting are right"
    ))
}

impl Inner {
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

    /// The live connection, waiting (until `deadline`) while reconnecting.
    pub(crate) async fn ready_conn(&self, deadline: Instant) -> Result<Conn> {
        let mut rx = self.state.subscribe();
        loop {
            let state = rx.borrow_and_update().clone();
            match state {
                ConnState::Connected => {
                    if let Some(c) = self.conn.read().unwrap_or_else(|p| p.into_inner()).clone() {
                        return Ok(c);
                    }
                    return Err(Error::Disconnected(
                        "not connected: call cmdop_connect() first".into(),
                    ));
                }
                ConnState::Idle => {
                    return Err(Error::Disconnected(
                        "not connected: call cmdop_connect() first".into(),
                    ))
                }
                ConnState::Closed => {
                    return Err(Error::Disconnected(
                        "the client is closed: call cmdop_connect() to connect again".into(),
                    ))
                }
                ConnState::Disconnected { reason } => {
                    return Err(Error::Disconnected(format!(
                        "disconnected ({reason}): call cmdop_connect() to connect again"
                    )))
                }
                ConnState::Reconnecting { attempt } => {
                    match tokio::time::timeout_at(deadline.into(), rx.changed()).await {
                        Ok(Ok(())) => continue,
                        Ok(Err(_)) => return Err(Error::Disconnected("the client was dropped".into())),
                        Err(_) => {
                            return Err(Error::Unavailable(format!(
                                "reconnecting to {} (attempt {attempt}) took longer than the call's timeout; try again later",
                                self.opts.endpoint_uri()
                            )))
                        }
                    }
                }
            }
        }
    }

    /// Put the `authorization` header on `request`; returns the access token
    /// used (to detect a concurrent refresh).
    pub(crate) fn authorize<T>(&self, request: &mut tonic::Request<T>) -> Result<Option<String>> {
        let token = match &*lock(&self.creds) {
            Credentials::ApiKey(k) => Some(k.clone()),
            Credentials::Tokens { access, .. } => Some(access.clone()),
            Credentials::None => None,
        };
        if let Some(t) = &token {
            let value: MetadataValue<_> = format!("Bearer {t}").parse().map_err(|_| {
                Error::InvalidArgument(
                    "the API key or token contains characters that cannot be sent in a header"
                        .into(),
                )
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(token)
    }

    pub(crate) fn can_refresh(&self) -> bool {
        matches!(
            &*lock(&self.creds),
            Credentials::Tokens {
                auto_refresh: true,
                ..
            }
        )
    }

    /// Trade the refresh token for a new pair, unless another call already
    /// did since `used_access` was sent.
    pub(crate) async fn refresh_tokens(
        &self,
        used_access: Option<&str>,
        conn: &Conn,
    ) -> Result<()> {
        let _guard = self.refresh_lock.lock().await;
        let refresh = match &*lock(&self.creds) {
            Credentials::Tokens {
                access, refresh, ..
            } => {
                if Some(access.as_str()) != used_access {
                    return Ok(()); // someone refreshed meanwhile
                }
                refresh.clone()
            }
            _ => {
                return Err(Error::Unauthenticated(
                    "access token expired and no refresh token is set".into(),
                ))
            }
        };
        self.log(LogLevel::Info, || {
            "access token expired: refreshing it".into()
        });
        let mut request = tonic::Request::new(RefreshTokenRequest {
            refresh_token: refresh,
        });
        request.set_timeout(self.opts.timeout);
        let mut ext = conn.ext.clone();
        let pair = match tokio::time::timeout(self.opts.timeout, ext.refresh_token(request)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                let e = Error::Unauthenticated(format!(
                    "access token expired and refreshing it failed ({}): sign in again for new tokens",
                    status.message()
                ));
                return Err(e);
            }
            Err(_) => return Err(Error::timeout("RefreshToken", self.opts.timeout)),
        };
        if pair.access_token.is_empty() || pair.refresh_token.is_empty() {
            return Err(Error::Protocol(
                "RefreshToken answered an empty token".into(),
            ));
        }
        {
            let mut creds = lock(&self.creds);
            if let Credentials::Tokens {
                access, refresh, ..
            } = &mut *creds
            {
                access.clone_from(&pair.access_token);
                refresh.clone_from(&pair.refresh_token);
            }
        }
        self.log(LogLevel::Info, || "tokens refreshed".into());
        self.emit(Event::TokensRefreshed {
            access: pair.access_token,
            refresh: pair.refresh_token,
        });
        Ok(())
    }

    /// One unary call over the live connection; see [`Inner::unary_on`].
    pub(crate) async fn unary<Req, Resp, F, Fut>(
        &self,
        what: &'static str,
        req: Req,
        policy: CallPolicy,
        call: F,
    ) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(Conn, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.unary_on(None, what, req, policy, call).await
    }

    /// One unary call: authorization, deadline, one token refresh on an
    /// expired access token, retries of idempotent calls on UNAVAILABLE.
    /// `fixed` pins the connection (used while connecting).
    pub(crate) async fn unary_on<Req, Resp, F, Fut>(
        &self,
        fixed: Option<Conn>,
        what: &'static str,
        req: Req,
        policy: CallPolicy,
        call: F,
    ) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(Conn, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let deadline = Instant::now() + policy.timeout;
        let mut retries = 0;
        let mut refreshed = false;
        loop {
            let conn = match &fixed {
                Some(c) => c.clone(),
                None => self.ready_conn(deadline).await?,
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::timeout(what, policy.timeout));
            }
            let mut request = tonic::Request::new(req.clone());
            request.set_timeout(remaining);
            let used = self.authorize(&mut request)?;
            self.log(LogLevel::Debug, || format!("-> {what}"));
            let started = Instant::now();
            let outcome =
                tokio::time::timeout_at(deadline.into(), call(conn.clone(), request)).await;
            let status = match outcome {
                Err(_) => return Err(Error::timeout(what, policy.timeout)),
                Ok(Ok(response)) => {
                    self.log(LogLevel::Debug, || {
                        format!(
                            "<- {what} ok in {:.1} ms",
                            started.elapsed().as_secs_f64() * 1e3
                        )
                    });
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => status,
            };
            self.log(LogLevel::Debug, || {
                format!("<- {what} {:?}: {}", status.code(), status.message())
            });
            if is_expired_token(&status) && !refreshed && self.can_refresh() {
                refreshed = true;
                self.refresh_tokens(used.as_deref(), &conn).await?;
                continue;
            }
            let err = Error::from_status(what, &status);
            if err.kind() == ErrorKind::Unavailable {
                self.trouble.notify_one();
                let pause = self.opts.retry_delay;
                if policy.idempotent
                    && retries < self.opts.max_retries
                    && Instant::now() + pause < deadline
                {
                    retries += 1;
                    self.log(LogLevel::Debug, || {
                        format!(
                            "retrying {what} ({retries}/{}) in {} ms",
                            self.opts.max_retries,
                            pause.as_millis()
                        )
                    });
                    tokio::time::sleep(pause).await;
                    continue;
                }
            }
            return Err(err);
        }
    }

    /// Some server-streaming call's opening, with auth and one refresh.
    pub(crate) async fn open_stream<Req, Resp, F, Fut>(
        &self,
        what: &'static str,
        req: Req,
        timeout: Option<Duration>,
        call: F,
    ) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(Conn, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.opts.timeout;
        let mut refreshed = false;
        loop {
            let conn = self.ready_conn(deadline).await?;
            let mut request = tonic::Request::new(req.clone());
            if let Some(t) = timeout {
                request.set_timeout(t);
            }
            let used = self.authorize(&mut request)?;
            self.log(LogLevel::Debug, || format!("-> {what} (stream)"));
            let status =
                match tokio::time::timeout_at(deadline.into(), call(conn.clone(), request)).await {
                    Err(_) => return Err(Error::timeout(what, self.opts.timeout)),
                    Ok(Ok(r)) => return Ok(r.into_inner()),
                    Ok(Err(s)) => s,
                };
            if is_expired_token(&status) && !refreshed && self.can_refresh() {
                refreshed = true;
                self.refresh_tokens(used.as_deref(), &conn).await?;
                continue;
            }
            if status.code() == tonic::Code::Unavailable {
                self.trouble.notify_one();
            }
            return Err(Error::from_status(what, &status));
        }
    }

    /// True when a probe reached the server (any answer but a transport
    /// failure or timeout counts).
    async fn probe_alive(&self, conn: &Conn) -> std::result::Result<(), String> {
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
}

/// Watches the connection; on loss fires `Disconnected` and, with
/// `auto_reconnect`, reconnects with exponential backoff and jitter.
async fn supervise(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let interval = inner.opts.health_interval;
        {
            let trouble_notify = inner.trouble.clone();
            drop(inner); // do not keep the client alive while sleeping
            let trouble = trouble_notify.notified();
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = trouble => {}
            }
        }
        let Some(inner) = weak.upgrade() else { return };
        if *inner.state.borrow() != ConnState::Connected {
            return;
        }
        let Some(conn) = inner.conn.read().unwrap_or_else(|p| p.into_inner()).clone() else {
            return;
        };
        let Err(why) = inner.probe_alive(&conn).await else {
            continue;
        };

        let server = inner.opts.endpoint_uri();
        if !inner.opts.auto_reconnect {
            let reason = format!("lost connection to {server}: {why}");
            inner.log(LogLevel::Warn, || reason.clone());
            inner.state.send_replace(ConnState::Disconnected {
                reason: reason.clone(),
            });
            inner.emit(Event::Disconnected {
                reason,
                final_: true,
            });
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
        let (base, cap) = (inner.opts.reconnect_delay, inner.opts.max_reconnect_delay);
        drop(inner);
        let mut attempt: u32 = 0;
        let mut last = why;
        let recovered = loop {
            if max != 0 && attempt >= max {
                break false;
            }
            tokio::time::sleep(backoff_delay(base, cap, attempt)).await;
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
            match inner.probe_alive(&conn).await {
                Ok(()) => break true,
                Err(e) => last = e,
            }
        };
        let Some(inner) = weak.upgrade() else { return };
        if !matches!(*inner.state.borrow(), ConnState::Reconnecting { .. }) {
            return;
        }
        if recovered {
            inner.log(LogLevel::Info, || {
                format!("reconnected to {server} after {attempt} attempt(s)")
            });
            inner.state.send_replace(ConnState::Connected);
            inner.emit(Event::Connected);
        } else {
            let reason = format!(
                "gave up reconnecting to {server} after {attempt} attempts (last error: {last}); call cmdop_connect() to try again"
            );
            inner.log(LogLevel::Error, || reason.clone());
            inner.state.send_replace(ConnState::Disconnected {
                reason: reason.clone(),
            });
            inner.emit(Event::Disconnected {
                reason,
                final_: true,
            });
            return;
        }
    }
}
