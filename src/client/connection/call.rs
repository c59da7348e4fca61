//! The call pipeline every RPC goes through: wait for a live connection,
//! authorize, bound the wait by a deadline, refresh an expired access token
//! once, and resend idempotent calls after a transient failure. Unary calls
//! and the opening of streaming calls share this one implementation.

use std::future::Future;
use std::time::{Duration, Instant};

use cmdop_proto::backoff::{Backoff, CLIENT_CALL_RETRY};

use super::{Conn, ConnState};
use crate::client::error::is_expired_token;
use crate::client::{Error, ErrorKind, Inner, LogLevel, Result};

/// How a unary call may be repeated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallPolicy {
    /// Safe to send again after a transient failure.
    pub(crate) idempotent: bool,
    pub(crate) timeout: Duration,
}

/// The gRPC timeout a request carries to the server.
#[derive(Debug, Clone, Copy)]
enum ServerTimeout {
    /// What is left until the call's deadline (unary calls).
    UntilDeadline,
    /// A stream's own lifetime, which may outlast opening it; `None` = none.
    Stream(Option<Duration>),
}

/// One call as the pipeline sees it.
struct Plan {
    what: &'static str,
    /// Pins the connection (used while connecting); else the live one.
    fixed: Option<Conn>,
    /// How long we wait for the response (for a stream: its opening).
    budget: Duration,
    server_timeout: ServerTimeout,
    /// Safe to send again after a transient failure.
    idempotent: bool,
}

impl Inner {
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
        let plan = Plan {
            what,
            fixed,
            budget: policy.timeout,
            server_timeout: ServerTimeout::UntilDeadline,
            idempotent: policy.idempotent,
        };
        self.call(plan, req, call).await
    }

    /// Open a streaming call (the stream is the `Resp`): authorization, one
    /// token refresh, no resend. Opening is bounded by the client's timeout;
    /// `timeout` is the stream's own, sent to the server.
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
        let plan = Plan {
            what,
            fixed: None,
            budget: self.opts.timeout,
            server_timeout: ServerTimeout::Stream(timeout),
            idempotent: false,
        };
        self.call(plan, req, call).await
    }

    /// The pipeline itself.
    async fn call<Req, Resp, F, Fut>(&self, plan: Plan, req: Req, call: F) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(Conn, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let what = plan.what;
        let label = match plan.server_timeout {
            ServerTimeout::UntilDeadline => "",
            ServerTimeout::Stream(_) => " (stream)",
        };
        let deadline = Instant::now() + plan.budget;
        let mut retries = 0;
        let mut pauses = Backoff::new(
            CLIENT_CALL_RETRY,
            self.opts.retry_delay,
            self.opts.retry_delay,
        );
        let mut refreshed = false;
        loop {
            let conn = match &plan.fixed {
                Some(c) => c.clone(),
                None => self.ready_conn(deadline).await?,
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::timeout(what, plan.budget));
            }
            let mut request = tonic::Request::new(req.clone());
            match plan.server_timeout {
                ServerTimeout::UntilDeadline => request.set_timeout(remaining),
                ServerTimeout::Stream(Some(t)) => request.set_timeout(t),
                ServerTimeout::Stream(None) => {}
            }
            let used = self.authorize(&mut request)?;
            self.log(LogLevel::Debug, || format!("-> {what}{label}"));
            let started = Instant::now();
            let outcome =
                tokio::time::timeout_at(deadline.into(), call(conn.clone(), request)).await;
            let status = match outcome {
                Err(_) => return Err(Error::timeout(what, plan.budget)),
                Ok(Ok(response)) => {
                    self.log(LogLevel::Debug, || {
                        format!(
                            "<- {what}{label} ok in {:.1} ms",
                            started.elapsed().as_secs_f64() * 1e3
                        )
                    });
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => status,
            };
            self.log(LogLevel::Debug, || {
                format!("<- {what}{label} {:?}: {}", status.code(), status.message())
            });
            if is_expired_token(&status) && !refreshed && self.can_refresh() {
                refreshed = true;
                self.refresh_tokens(used.as_deref(), &conn).await?;
                continue;
            }
            let err = Error::from_status(what, &status);
            if err.kind() == ErrorKind::Unavailable {
                self.trouble.notify_one();
                let pause = pauses.next_delay();
                // A call refused before it reached the machine ran nowhere:
                // sending it again is safe even when it is a command.
                if (plan.idempotent || never_started(&status))
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

    /// The live connection, waiting (until `deadline`) while reconnecting.
    pub(crate) async fn ready_conn(&self, deadline: Instant) -> Result<Conn> {
        let mut rx = self.state.subscribe();
        loop {
            let state = rx.borrow_and_update().clone();
            match state {
                ConnState::Connected => {
                    if let Some(c) = self.conn.read().clone() {
                        return Ok(c);
                    }
                    return Err(Error::Disconnected(
                        "not connected: connect the client first".into(),
                    ));
                }
                ConnState::Idle => {
                    return Err(Error::Disconnected(
                        "not connected: connect the client first".into(),
                    ))
                }
                ConnState::Closed => {
                    return Err(Error::Disconnected(
                        "the client is closed: connect it again to make calls".into(),
                    ))
                }
                ConnState::Disconnected { reason } => {
                    return Err(Error::Disconnected(format!(
                        "disconnected ({reason}): connect the client again"
                    )))
                }
                ConnState::Reconnecting { attempt } => {
                    match tokio::time::timeout_at(deadline.into(), rx.changed()).await {
                        Ok(Ok(())) => continue,
                        Ok(Err(_)) => return Err(Error::Disconnected("the client was dropped".into())),
                        Err(_) => {
                            return Err(Error::Unavailable(format!(
                                "reconnecting to {} (attempt {attempt}) took longer than the call's timeout; try again later",
                                self.current_server()
                            )))
                        }
                    }
                }
            }
        }
    }
}

/// True when `status` proves that nothing of the call reached the machine:
/// the server said so ([`CALL_NOT_STARTED`]), or the client's own transport
/// could not open the connection or the stream (connection refused, the
/// request handed back unsent, the stream refused by a server that is
/// stopping, or above the last one its GOAWAY says it processed).
///
/// [`CALL_NOT_STARTED`]: cmdop_proto::headers::CALL_NOT_STARTED
pub(crate) fn never_started(status: &tonic::Status) -> bool {
    use cmdop_proto::headers::{CALL_NOT_STARTED, CALL_NOT_STARTED_REFUSED};
    if status
        .metadata()
        .get(CALL_NOT_STARTED)
        .and_then(|v| v.to_str().ok())
        == Some(CALL_NOT_STARTED_REFUSED)
    {
        return true;
    }
    std::error::Error::source(status).is_some_and(cmdop_proto::unsent::never_sent)
        || super::handed::refused_above_last_stream(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_before_the_machine_count_as_never_started() {
        let mut refused = tonic::Status::unavailable("refused before it reached the machine");
        refused.metadata_mut().insert(
            cmdop_proto::headers::CALL_NOT_STARTED,
            tonic::metadata::MetadataValue::from_static(
                cmdop_proto::headers::CALL_NOT_STARTED_REFUSED,
            ),
        );
        assert!(never_started(&refused));
        let lost = tonic::Status::unavailable("lost the connection in the middle of this call");
        assert!(!never_started(&lost));
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let from_io = tonic::Status::from_error(Box::new(io));
        assert!(never_started(&from_io));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!never_started(&tonic::Status::from_error(Box::new(reset))));
    }
}
