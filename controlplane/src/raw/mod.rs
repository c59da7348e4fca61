//! Side connections for bulk Exec stdout (capabilities `exec-raw.v1` and
//! `exec-raw-tls.v1`).
//!
//! An agent may move a command's stdout off the gRPC stream onto a TCP
//! connection to our own port; the caller opens another with the same
//! ticket, and we move the bytes from one to the other in the kernel. On a
//! TLS server those bytes are TLS records between agent and caller
//! ([`cmdop_proto::raw_tls`]): we forward them without any key. The wire
//! format lives in [`cmdop_proto::raw`]; the pieces here are:
//!
//! - [`listener`]: the accept loop that tells side connections from gRPC by
//!   their first byte,
//! - [`rendezvous`]: the tickets handed out by `Exec` and the pairing of the
//!   two connections that present one,
//! - [`side`]: what happens on one side connection (opening, answer),
//! - [`splice`]: the byte mover,
//! - [`relay`]: side connections of calls forwarded to another replica;
//!   [`relays`]: the table of their tickets.

pub mod listener;
pub mod relay;
pub mod relays;
pub mod rendezvous;
mod side;
mod splice;

#[cfg(test)]
mod tests;

pub use cmdop_proto::raw::{CAPABILITY, PAIRING_TIMEOUT};
pub use relay::SideTicket;
pub use rendezvous::{Rendezvous, Ticket};

use crate::config::ServerConfig;

/// True when this server offers side connections: only with the Cmdop
/// extensions on (Exec is one of them).
pub fn enabled(config: &ServerConfig) -> bool {
    config.extensions
}

/// The side-connection capability this server lists in ServerInfo, when
/// they are [`enabled`]: plain ones over plaintext; over TLS only the
/// encrypted kind, so that a TLS deployment never leaks command output
/// next to its encrypted port.
pub fn capability(config: &ServerConfig) -> &'static str {
    if config.tls.is_some() {
        cmdop_proto::raw_tls::CAPABILITY
    } else {
        CAPABILITY
    }
}

/// Whether an Exec may get a ticket, and how its side connection is
/// protected: `client_pin` is the caller's `raw_tls_client_sha256`,
/// `agent_plain` / `agent_tls` what its agent listed. Over TLS a ticket
/// needs the caller's pin and an agent that speaks TLS on side
/// connections; over plaintext the pin is passed on when the agent can use
/// it. `None`: no ticket, stdout stays on gRPC.
pub fn side_mode(
    tls_server: bool,
    accept_raw_stdout: bool,
    client_pin: &[u8],
    agent_plain: bool,
    agent_tls: bool,
) -> Option<SideMode> {
    if !accept_raw_stdout {
        return None;
    }
    let pin = cmdop_proto::raw_tls::parse_pin(client_pin).filter(|_| agent_tls);
    match (tls_server, pin) {
        (_, Some(pin)) => Some(SideMode::Tls(pin)),
        (false, None) if agent_plain => Some(SideMode::Plain),
        _ => None,
    }
}

/// How one exec's side connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SideMode {
    /// Plain bytes (plaintext servers only).
    Plain,
    /// TLS between agent and caller; the caller's pin.
    Tls(cmdop_proto::raw_tls::Pin),
}
