//! Generated protocol types. `terminal` is the official CMDOP package (the
//! subset we speak); `ext` is libcmdop's own extension package.

#![allow(clippy::all, missing_docs)]

pub mod codec;
pub mod raw;

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

    /// HTTP/2 flow-control window of one stream, set by every peer we build
    /// (the default, 64 KiB, stalls bulk output once per 64 KiB on a round
    /// trip). Bounds how much one stream's peer may send ahead of the reader.
    pub const HTTP2_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
    /// HTTP/2 flow-control window of a whole connection: what all its
    /// streams together may have in flight towards one reader.
    pub const HTTP2_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

    /// Longest `ExecRequest.command`, in bytes. The agent runs it as the one
    /// argument after `/bin/sh -c`, and Linux refuses a single argument of
    /// 128 KiB or more (MAX_ARG_STRLEN, counting its NUL) with "Argument
    /// list too long". Longer commands are refused up front with
    /// INVALID_ARGUMENT naming this limit, by the control plane and again
    /// by the agent; to run a longer script, send it as `stdin` of
    /// `/bin/sh -s` instead.
    pub const MAX_COMMAND_BYTES: usize = 128 * 1024 - 1;
}
