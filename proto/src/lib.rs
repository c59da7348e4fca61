//! The protocol every libcmdop peer speaks: generated types (`terminal`, the
//! official CMDOP package, the subset we speak; `ext`, libcmdop's own
//! extension package), and the one home of what peers must agree on:
//! capability strings ([`caps`]), our metadata keys ([`headers`]), shared
//! size limits ([`limits`]), the side-connection handshake ([`raw`]) and
//! its TLS ([`raw_tls`]), the one retry schedule of clients and agents
//! ([`backoff`]), and the label selectors and hostname patterns
//! that choose machines in a fleet ([`selector`]), and the operations a
//! scoped API key may be allowed ([`scope`]).

pub mod backoff;
pub mod caps;
pub mod codec;
pub mod headers;
pub mod limits;
pub mod raw;
pub mod raw_tls;
pub mod scope;
pub mod selector;
pub mod unsent;

// The generated modules are tonic/prost output, not ours to restyle: lints
// stay quiet there and apply everywhere else in this crate.
#[allow(clippy::all, missing_docs, unused_qualifications)]
pub mod terminal {
    tonic::include_proto!("terminal");
}

#[allow(clippy::all, missing_docs, unused_qualifications)]
pub mod ext {
    tonic::include_proto!("cmdop.ext.v1");
}

/// The path of every RPC both packages define, generated from the .proto
/// files (metrics label calls by these, never by a path a caller made up).
pub mod methods {
    include!(concat!(env!("OUT_DIR"), "/methods.rs"));

    /// `path` if it is one of ours, else `None`.
    pub fn known(path: &str) -> Option<&'static str> {
        METHOD_PATHS
            .binary_search(&path)
            .ok()
            .map(|i| METHOD_PATHS[i])
    }
}
