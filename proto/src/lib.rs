//! Generated protocol types. `terminal` is the official CMDOP package (the
//! subset we speak); `ext` is libcmdop's own extension package.

#![allow(clippy::all, missing_docs)]

pub mod codec;

pub mod terminal {
    tonic::include_proto!("terminal");
}

pub mod ext {
    tonic::include_proto!("cmdop.ext.v1");
}

/// Limits shared by every peer we build.
pub mod limits {
    /// Largest gRPC message we send or accept (the Node SDK uses 32 MiB).
    pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;
}
