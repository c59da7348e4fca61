//! The caller's end of an Exec side connection (capability `exec-raw.v1`,
//! see "Side connections" in `cmdop_ext.proto`): when a command's stdout
//! grows large, the agent offers to move it off the gRPC stream onto a
//! plain TCP connection that the control plane splices through. This
//! module opens that connection on `raw_offer`, starts reading it on
//! `raw_switch`, and accounts for every byte so that the `exit` event's
//! `raw_stdout_bytes` can prove nothing was lost.

use cmdop_proto::raw::{self, Role};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::{ClientOptions, Error, Result};

/// Bytes read from the side connection per chunk handed to the callback.
pub(crate) const SIDE_READ_BYTES: usize = 256 * 1024;

/// `host:port` for side connections to `server` (the one in use), when
/// this client may use them: only over plaintext (the side connection is
/// not encrypted).
pub(crate) fn side_address(opts: &ClientOptions, server: &str) -> Option<String> {
    if opts.tls {
        return None;
    }
    let rest = server.split_once("://").map_or(server, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    (!authority.is_empty()).then(|| authority.to_string())
}

/// One Exec's side connection, from offer to EOF.
pub(crate) enum SideStdout {
    /// Not offered (or not allowed): stdout comes only on the Exec stream.
    Unused,
    /// Offered: the connection is being opened in the background.
    Opening(Opening),
    /// Switched: stdout is read from here until EOF.
    Reading { conn: TcpStream, bytes: u64 },
    /// EOF seen after `bytes` bytes.
    Done { bytes: u64 },
}

impl SideStdout {
    /// Starts opening the side connection for `ticket` on `addr`. A second
    /// offer for the same command is ignored.
    pub(crate) fn offer(&mut self, addr: &str, ticket: String) {
        if matches!(self, SideStdout::Unused) {
            let addr = addr.to_string();
            let task = tokio::spawn(async move { open(&addr, &ticket).await });
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
pub(crate) struct Opening(Option<JoinHandle<Result<TcpStream>>>);

impl Drop for Opening {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Connects, sends the caller's opening and waits for the control plane to
/// pair it with the agent's connection.
async fn open(addr: &str, ticket: &str) -> Result<TcpStream> {
    let opening = raw::opening(Role::Caller, ticket).ok_or_else(|| {
        Error::Protocol(
            "the server sent a malformed side-connection ticket; update the control plane".into(),
        )
    })?;
    let refused = |why: String| {
        Error::Unavailable(format!(
            "cannot open the stdout side connection to {addr}: {why}"
        ))
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
    fn side_connections_are_plaintext_only() {
        let local = ClientOptions::local("127.0.0.1", 50051);
        let at = |o: &ClientOptions| side_address(o, &o.endpoint_uri());
        assert_eq!(at(&local).as_deref(), Some("127.0.0.1:50051"));
        let v6 = ClientOptions::local("::1", 7);
        assert_eq!(at(&v6).as_deref(), Some("[::1]:7"));
        let remote = ClientOptions::remote(Credentials::None);
        assert_eq!(at(&remote), None);
        // With a server list: the one in use.
        assert_eq!(
            side_address(&local, "http://127.0.0.1:7001").as_deref(),
            Some("127.0.0.1:7001")
        );
    }
}
