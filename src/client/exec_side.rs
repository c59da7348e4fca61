//! The caller's end of an Exec side connection (capabilities `exec-raw.v1`
//! and `exec-raw-tls.v1`, see "Side connections" in `cmdop_ext.proto`):
//! when a command's stdout grows large, the agent offers to move it off the
//! gRPC stream onto a TCP connection that the control plane splices
//! through. This module opens that connection on `raw_offer`, starts
//! reading it on `raw_switch`, and accounts for every byte so that the
//! `exit` event's `raw_stdout_bytes` can prove nothing was lost.
//!
//! A client connected over TLS only ever uses TLS side connections: it
//! sends its certificate pin with the request, opens a side connection only
//! for an offer that carries the agent's pin, and runs TLS 1.3 on it with
//! both pins checked. An offer without a pin is ignored: stdout then simply
//! stays on the Exec stream.

use std::pin::Pin as StdPin;
use std::task::{Context, Poll};

use cmdop_proto::{
    raw::{self, Role},
    raw_tls::{self, CallerStream, Identity, Pin},
};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::{ClientOptions, Error, Result};

/// Bytes read from the side connection per chunk handed to the callback.
pub(crate) const SIDE_READ_BYTES: usize = 256 * 1024;

/// Where and how this client may take side connections to `server` (the
/// one in use).
pub(crate) struct SidePlan {
    /// `host:port` of the control plane.
    pub(crate) addr: String,
    /// The client's own connection is TLS: side connections must be too.
    pub(crate) tls: bool,
}

/// The [`SidePlan`] for `server`: over plaintext when the server offers
/// plain side connections (`plain`), over TLS when it offers TLS ones
/// (`tls`).
pub(crate) fn side_plan(
    opts: &ClientOptions,
    server: &str,
    plain: bool,
    tls: bool,
) -> Option<SidePlan> {
    if !(if opts.tls { tls } else { plain }) {
        return None;
    }
    let rest = server.split_once("://").map_or(server, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    (!authority.is_empty()).then(|| SidePlan {
        addr: authority.to_string(),
        tls: opts.tls,
    })
}

/// A side connection's byte stream, plain or TLS.
pub(crate) enum SideConn {
    Plain(TcpStream),
    Tls(Box<CallerStream>),
}

impl AsyncRead for SideConn {
    fn poll_read(
        self: StdPin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SideConn::Plain(s) => StdPin::new(s).poll_read(cx, buf),
            SideConn::Tls(s) => StdPin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

/// What an offer asks of this client: `None` when it must not be taken
/// (a TLS client and an offer without a well-formed agent pin).
pub(crate) fn offer_security(client_tls: bool, agent_pin: &[u8]) -> Option<Option<Pin>> {
    if client_tls {
        raw_tls::parse_pin(agent_pin).map(Some)
    } else {
        Some(None)
    }
}

/// One Exec's side connection, from offer to EOF.
pub(crate) enum SideStdout {
    /// Not offered (or not allowed): stdout comes only on the Exec stream.
    Unused,
    /// Offered: the connection is being opened in the background.
    Opening(Opening),
    /// Switched: stdout is read from here until EOF.
    Reading { conn: SideConn, bytes: u64 },
    /// EOF seen after `bytes` bytes.
    Done { bytes: u64 },
}

impl SideStdout {
    /// Starts opening the side connection for `ticket` on `addr`, with
    /// `tls` (this client's identity and the agent's pin) a TLS one. A
    /// second offer for the same command is ignored.
    pub(crate) fn offer(
        &mut self,
        addr: &str,
        ticket: String,
        tls: Option<(std::sync::Arc<Identity>, Pin)>,
    ) {
        if matches!(self, SideStdout::Unused) {
            let addr = addr.to_string();
            let task = tokio::spawn(async move {
                let socket = open_side(&addr, &ticket).await?;
                match tls {
                    None => Ok(SideConn::Plain(socket)),
                    Some((identity, agent)) => raw_tls::connect(&identity, agent, socket)
                        .await
                        .map(|s| SideConn::Tls(Box::new(s)))
                        .map_err(|e| {
                            Error::Unavailable(format!(
                                "the TLS handshake on the stdout side connection to {addr} failed: {e}; run the command again"
                            ))
                        }),
                }
            });
            *self = SideStdout::Opening(Opening(Some(task)));
        }
    }

    /// The agent switched: from now on stdout is on the side connection.
    /// Fails if the connection that the control plane paired never opened
    /// here (then the output cannot be read at all).
    pub(crate) async fn switch(&mut self) -> Result<()> {
        let task = match std::mem::replace(self, SideStdout::Unused) {
            SideStdout::Opening(mut o) => o.0.take(),
            other => {
                *self = other;
                return Err(Error::Protocol(
                    "the server moved stdout to a side connection it never offered; update the control plane".into(),
                ));
            }
        };
        let Some(task) = task else {
            return Err(Error::Internal("side connection opened twice".into()));
        };
        let conn = task
            .await
            .map_err(|e| Error::Internal(format!("side connection task failed: {e}")))??;
        *self = SideStdout::Reading { conn, bytes: 0 };
        Ok(())
    }

    /// True while there is side-connection stdout left to read.
    pub(crate) fn reading(&self) -> bool {
        matches!(self, SideStdout::Reading { .. })
    }

    /// Reads the next chunk into `buf`: `Some(n)` bytes, or `None` at EOF
    /// (after which [`reading`](Self::reading) is false). Cancel-safe.
    pub(crate) async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>> {
        let SideStdout::Reading { conn, bytes } = self else {
            return Ok(None);
        };
        match conn.read(buf).await {
            Ok(0) => {
                *self = SideStdout::Done { bytes: *bytes };
                Ok(None)
            }
            Ok(n) => {
                *bytes += n as u64;
                Ok(Some(n))
            }
            Err(e) => Err(Error::Unavailable(format!(
                "the command's stdout connection broke: {e}; the agent or server went away, run the command again"
            ))),
        }
    }

    /// Checks the count the agent reported against what arrived here.
    pub(crate) fn verify(&self, reported: u64) -> Result<()> {
        let got = match self {
            SideStdout::Done { bytes } | SideStdout::Reading { bytes, .. } => *bytes,
            SideStdout::Unused | SideStdout::Opening(_) => 0,
        };
        if got == reported {
            Ok(())
        } else {
            Err(Error::Unavailable(format!(
                "the command's stdout connection delivered {got} of {reported} bytes; run the command again"
            )))
        }
    }
}

/// The task opening a side connection; dropping it (the call ended first)
/// abandons the attempt.
pub(crate) struct Opening(Option<JoinHandle<Result<SideConn>>>);

impl Drop for Opening {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Connects, sends the caller's opening and waits for the control plane to
/// pair it with the agent's connection (for Exec stdout and downloads).
pub(crate) async fn open_side(addr: &str, ticket: &str) -> Result<TcpStream> {
    let opening = raw::opening(Role::Caller, ticket).ok_or_else(|| {
        Error::Protocol(
            "the server sent a malformed side-connection ticket; update the control plane".into(),
        )
    })?;
    let refused = |why: String| {
        Error::Unavailable(format!("cannot open the side connection to {addr}: {why}"))
    };
    // The whole handshake, connect included, within the answer timeout.
    tokio::time::timeout(raw::ANSWER_TIMEOUT, raw::connect(addr, &opening))
        .await
        .map_err(|_| refused("no answer in time".into()))?
        .map_err(|e| refused(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Credentials;

    #[test]
    fn plaintext_clients_take_plain_side_connections_tls_clients_tls_ones() {
        let local = ClientOptions::local("127.0.0.1", 50051);
        let at = |o: &ClientOptions, plain, tls| {
            side_plan(o, &o.endpoint_uri(), plain, tls).map(|p| (p.addr, p.tls))
        };
        assert_eq!(
            at(&local, true, false),
            Some(("127.0.0.1:50051".into(), false))
        );
        assert_eq!(
            at(&local, false, true),
            None,
            "a plaintext server never says TLS"
        );
        let v6 = ClientOptions::local("::1", 7);
        assert_eq!(at(&v6, true, false), Some(("[::1]:7".into(), false)));
        let remote = ClientOptions::remote(Credentials::None);
        assert_eq!(at(&remote, true, false), None, "TLS client, plain offer");
        assert!(at(&remote, false, true).is_some_and(|(_, tls)| tls));
        // With a server list: the one in use.
        assert_eq!(
            side_plan(&local, "http://127.0.0.1:7001", true, false).map(|p| p.addr),
            Some("127.0.0.1:7001".into())
        );
    }

    #[test]
    fn tls_clients_refuse_offers_without_a_pin() {
        assert_eq!(offer_security(true, &[]), None);
        assert_eq!(offer_security(true, &[1; 31]), None);
        assert_eq!(offer_security(true, &[1; 32]), Some(Some([1; 32])));
        assert_eq!(offer_security(false, &[]), Some(None));
        assert_eq!(offer_security(false, &[1; 32]), Some(None));
    }
}
