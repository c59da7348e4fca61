//! The caller's end of a download's side connection (see "Side
//! connections" in `cmdop_ext.proto`): a `DownloadStart` with a ticket is
//! the offer, which this module takes by opening the connection in the
//! background; `raw_switch` says the rest of the file comes on it. A client
//! connected over TLS takes only offers that carry the agent's pin and runs
//! TLS 1.3 on the connection with both pins checked, as for Exec stdout.
//!
//! Uploads (`UploadWithSide`) use the same offer the other way round: the
//! `raw_offer` event's ticket opens the connection, and once it is up the
//! client says `raw_switch` and writes the rest of the file there
//! ([`SideWrite`]).

use std::sync::Arc;

use cmdop_proto::{caps, ext::DownloadStart, raw_tls::Identity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::exec_side::{offer_security, open_side, side_plan, SideConn, SidePlan};
use super::{Client, Error, Result};

/// Bytes read from the side connection per piece handed on.
pub(crate) const READ_BYTES: usize = 1024 * 1024;

/// What a download asks for: whether the server may offer a side
/// connection, with this client's pin when it is a TLS one.
pub(crate) struct SideAsk {
    plan: Option<SidePlan>,
    identity: Option<Arc<Identity>>,
}

impl SideAsk {
    /// Side connections this client may take from the server in use.
    pub(crate) fn new(client: &Client) -> Self {
        let (plain, tls) = {
            let facts = client.inner.facts.lock();
            (facts.has(caps::EXEC_RAW), facts.has(caps::EXEC_RAW_TLS))
        };
        let mut plan = side_plan(
            &client.inner.opts,
            &client.inner.current_server(),
            plain,
            tls,
        );
        let identity = match &plan {
            Some(p) if p.tls => client.inner.side_identity(),
            _ => None,
        };
        if plan.as_ref().is_some_and(|p| p.tls) && identity.is_none() {
            plan = None;
        }
        SideAsk { plan, identity }
    }

    /// True when the request may ask for a side connection.
    pub(crate) fn accept(&self) -> bool {
        self.plan.is_some()
    }

    /// This client's pin for the request (empty without TLS).
    pub(crate) fn pin(&self) -> bytes::Bytes {
        self.identity
            .as_ref()
            .map(|id| bytes::Bytes::copy_from_slice(&id.pin()))
            .unwrap_or_default()
    }

    /// Takes the offer in `start`, if there is one this client may take:
    /// starts opening the connection in the background.
    pub(crate) fn take(&self, start: &DownloadStart) -> SideData {
        match self.open(&start.raw_ticket, &start.raw_tls_agent_sha256, "download") {
            Some(task) => SideData::Opening(task),
            None => SideData::Unused,
        }
    }

    /// Starts opening the side connection an offer of `ticket` (with the
    /// agent's pin for a TLS one) names, when this client may take it;
    /// `what` names the transfer in errors.
    pub(crate) fn open(
        &self,
        ticket: &str,
        agent_pin: &[u8],
        what: &'static str,
    ) -> Option<OpenTask> {
        let plan = self.plan.as_ref()?;
        if ticket.is_empty() {
            return None;
        }
        let tls = match offer_security(plan.tls, agent_pin)? {
            None => None,
            Some(pin) => Some((self.identity.clone()?, pin)),
        };
        let (addr, ticket) = (plan.addr.clone(), ticket.to_owned());
        Some(OpenTask(tokio::spawn(async move {
            let socket = open_side(&addr, &ticket).await?;
            match tls {
                None => Ok(SideConn::Plain(socket)),
                Some((identity, agent)) => {
                    cmdop_proto::raw_tls::connect(&identity, agent, socket)
                        .await
                        .map(|s| SideConn::Tls(Box::new(s)))
                        .map_err(|e| {
                            Error::Unavailable(format!(
                                "the TLS handshake on the {what}'s side connection to {addr} failed: {e}; try again"
                            ))
                        })
                }
            }
        })))
    }
}

/// One download's side connection.
pub(crate) enum SideData {
    /// No offer taken: every byte comes on the Download stream.
    Unused,
    /// Offered: being opened in the background.
    Opening(OpenTask),
    /// Switched: the rest of the file is read from here until EOF.
    Reading(SideConn),
}

impl SideData {
    /// The agent switched: the rest of the file is on the side connection.
    /// Fails if this client never opened the connection the control plane
    /// paired (then the rest cannot be read at all).
    pub(crate) async fn switch(&mut self) -> Result<()> {
        let SideData::Opening(mut task) = std::mem::replace(self, SideData::Unused) else {
            return Err(Error::Protocol(
                "the server moved a download to a side connection it never offered; update the control plane".into(),
            ));
        };
        let conn = (&mut task.0)
            .await
            .map_err(|e| Error::Internal(format!("side connection task failed: {e}")))??;
        *self = SideData::Reading(conn);
        Ok(())
    }

    /// Reads the next piece into `buf`: `Some(n)` bytes, or `None` at the
    /// end (after which this is unused). Cancel-safe.
    pub(crate) async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>> {
        let SideData::Reading(conn) = self else {
            return Ok(None);
        };
        match conn.read(buf).await {
            Ok(0) => {
                *self = SideData::Unused;
                Ok(None)
            }
            Ok(n) => Ok(Some(n)),
            Err(e) => Err(Error::Unavailable(format!(
                "the download's side connection broke: {e}; try again"
            ))),
        }
    }
}

/// The task opening a side connection; dropping it (the download ended or
/// finished on the stream first) abandons the attempt.
pub(crate) struct OpenTask(tokio::task::JoinHandle<Result<SideConn>>);

impl Drop for OpenTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl OpenTask {
    /// The connection once the task is done, without waiting: `None`
    /// while it is still opening; `Some(Err)` when it failed.
    pub(crate) fn ready(&mut self) -> Option<Result<SideConn>> {
        use futures::FutureExt;
        let outcome = (&mut self.0).now_or_never()?;
        Some(
            outcome.unwrap_or_else(|e| {
                Err(Error::Internal(format!("side connection task failed: {e}")))
            }),
        )
    }
}

/// The sending end of an upload's side connection.
pub(crate) struct SideWrite(pub(crate) SideConn);

impl SideWrite {
    /// Writes all of `data`.
    pub(crate) async fn write(&mut self, data: &[u8]) -> Result<()> {
        let written = match &mut self.0 {
            SideConn::Plain(s) => s.write_all(data).await,
            SideConn::Tls(s) => s.write_all(data).await,
        };
        written.map_err(broken_upload)
    }

    /// Ends the data: with TLS close_notify, then the half-close, so the
    /// agent can tell the end from a cut connection.
    pub(crate) async fn finish(&mut self) -> Result<()> {
        let done = match &mut self.0 {
            SideConn::Plain(s) => s.shutdown().await,
            SideConn::Tls(s) => s.shutdown().await,
        };
        done.map_err(broken_upload)
    }
}

fn broken_upload(e: std::io::Error) -> Error {
    Error::Unavailable(format!(
        "the upload's side connection broke: {e}; try again"
    ))
}
