//! Side connections for bulk Exec stdout (capability `exec-raw.v1`).
//!
//! An agent may move a command's stdout off the gRPC stream onto a plain TCP
//! connection to our own port; the caller opens another with the same
//! ticket, and we move the bytes from one to the other in the kernel. The
//! wire format lives in [`cmdop_proto::raw`]; the pieces here are:
//!
//! - [`listener`]: the accept loop that tells side connections from gRPC by
//!   their first byte,
//! - [`rendezvous`]: the tickets handed out by `Exec` and the pairing of the
//!   two connections that present one,
//! - [`side`]: what happens on one side connection (opening, answer),
//! - [`splice`]: the byte mover.

pub mod listener;
pub mod rendezvous;
mod side;
mod splice;

#[cfg(test)]
mod tests;

pub use cmdop_proto::raw::{CAPABILITY, PAIRING_TIMEOUT};
pub use rendezvous::{Rendezvous, Ticket};

use crate::config::ServerConfig;

/// True when this server offers side connections: only with the Cmdop
/// extensions on (Exec is one of them) and only over plaintext, because the
/// bytes on a side connection are not encrypted and a TLS deployment must
/// not leak command output next to its encrypted port.
pub fn enabled(config: &ServerConfig) -> bool {
    config.extensions && config.tls.is_none()
}
