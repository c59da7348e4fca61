//! Side connections for bulk Exec stdout (capability `exec-raw.v1`): the
//! opening every peer sends and the control plane's one-byte answer. See
//! "Side connections" at the end of `cmdop_ext.proto`.

use std::{io, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, ToSocketAddrs},
};

/// Capability name, in ServerInfo (control plane) and AgentHello (agent).
pub use crate::caps::EXEC_RAW as CAPABILITY;
/// First bytes of every side connection.
pub const MAGIC: &[u8; 8] = b"CMDOPRAW";
/// The only version so far.
pub const VERSION: u8 = 1;
/// Characters in a ticket (hex of 16 random bytes).
pub const TICKET_LEN: usize = 32;
/// Bytes of the opening: magic, version, role, ticket.
pub const OPENING_LEN: usize = MAGIC.len() + 2 + TICKET_LEN;
/// The control plane's answer once both sides are connected.
pub const ACCEPTED: u8 = b'Y';
/// The control plane's answer when it will not pair this connection.
pub const REFUSED: u8 = b'N';
/// How long the control plane waits for the other side, and a peer for
/// the answer (plus a little).
pub const PAIRING_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a peer waits for its TCP connection to the control plane.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a peer waits for the answer to its opening: the control
/// plane's pairing timeout plus a little.
pub const ANSWER_TIMEOUT: Duration = PAIRING_TIMEOUT.saturating_add(Duration::from_secs(1));

/// A peer's half of the handshake, for the agent and the caller alike:
/// connects to the control plane at `addr`, sends `opening` and waits for
/// the answer. `Ok` only when the control plane paired the connection
/// ([`ACCEPTED`]); the socket then carries stdout and nothing else.
pub async fn connect(
    addr: impl ToSocketAddrs,
    opening: &[u8; OPENING_LEN],
) -> io::Result<TcpStream> {
    let mut socket = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    socket.set_nodelay(true)?;
    socket.write_all(opening).await?;
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, socket.read_u8())
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer to the opening"))??;
    if answer != ACCEPTED {
        return Err(io::Error::other(format!(
            "the control plane refused the side connection (answer {answer:#04x})"
        )));
    }
    Ok(socket)
}

/// Which end of the stream a side connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The agent: writes the command's stdout, then half-closes.
    Agent,
    /// The caller: reads stdout until EOF.
    Caller,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Role::Agent => b'A',
            Role::Caller => b'C',
        }
    }
}

/// The opening a peer sends for `ticket`; `None` if the ticket is not
/// [`TICKET_LEN`] ASCII characters.
pub fn opening(role: Role, ticket: &str) -> Option<[u8; OPENING_LEN]> {
    if ticket.len() != TICKET_LEN || !ticket.is_ascii() {
        return None;
    }
    let mut out = [0u8; OPENING_LEN];
    out[..8].copy_from_slice(MAGIC);
    out[8] = VERSION;
    out[9] = role.byte();
    out[10..].copy_from_slice(ticket.as_bytes());
    Some(out)
}

/// Reads an opening: the role and the ticket, or why it is not one.
pub fn parse_opening(bytes: &[u8; OPENING_LEN]) -> Result<(Role, String), &'static str> {
    if &bytes[..8] != MAGIC {
        return Err("not a side connection");
    }
    if bytes[8] != VERSION {
        return Err("unsupported side connection version");
    }
    let role = match bytes[9] {
        b'A' => Role::Agent,
        b'C' => Role::Caller,
        _ => return Err("unknown side connection role"),
    };
    let ticket = &bytes[10..];
    if !ticket.iter().all(u8::is_ascii_hexdigit) {
        return Err("malformed ticket");
    }
    Ok((role, String::from_utf8_lossy(ticket).into_owned()))
}

/// A fresh ticket: 128 bits from the OS-seeded CSPRNG, in hex.
pub fn new_ticket() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openings_round_trip_and_reject_garbage() {
        let t = new_ticket();
        assert_eq!(t.len(), TICKET_LEN);
        assert_ne!(t, new_ticket());
        let o = opening(Role::Caller, &t).unwrap();
        assert_eq!(parse_opening(&o).unwrap(), (Role::Caller, t.clone()));
        let o = opening(Role::Agent, &t).unwrap();
        assert_eq!(parse_opening(&o).unwrap().0, Role::Agent);
        assert!(opening(Role::Agent, "short").is_none());
        let mut bad = o;
        bad[0] = b'P';
        assert!(parse_opening(&bad).is_err());
        let mut bad = o;
        bad[8] = 2;
        assert!(parse_opening(&bad).is_err());
        let mut bad = o;
        bad[9] = b'X';
        assert!(parse_opening(&bad).is_err());
        let mut bad = o;
        bad[20] = b'z';
        assert!(parse_opening(&bad).is_err());
    }
}
