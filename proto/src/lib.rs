//! The protocol every libcmdop peer speaks: generated types (`terminal`, the
//! official CMDOP package, the subset we speak; `ext`, libcmdop's own
//! extension package), and the one home of what peers must agree on:
//! capability strings ([`caps`]), shared size limits ([`limits`]) and the
//! side-connection handshake ([`raw`]).

#![allow(clippy::all, missing_docs)]

pub mod caps;
pub mod codec;
pub mod limits;
pub mod raw;

pub mod terminal {
    tonic::include_proto!("terminal");
}

pub mod ext {
    tonic::include_proto!("cmdop.ext.v1");
}
