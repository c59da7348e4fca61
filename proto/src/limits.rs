//! Size limits that more than one peer relies on. Each is defined here once;
//! limits only one peer enforces stay with that peer.

/// Largest gRPC message we send or accept (the Node SDK uses 32 MiB).
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// Most file content one message carries on the official path (a
/// `FileWrite` request, a `FileRead` answer): the message limit less 64 KiB
/// for the envelope (path, session id, metadata), so it always fits.
pub const MAX_INLINE_FILE_BYTES: usize = MAX_MESSAGE_BYTES - 64 * 1024;

/// Largest data chunk of a streaming transfer ([`crate::caps::FILES`]), in
/// either direction and on both hops (client to control plane, control
/// plane to agent). Peers send at most this; receivers refuse larger.
pub const TRANSFER_CHUNK_BYTES: usize = 1024 * 1024;

/// Largest file one streaming upload may carry.
pub const MAX_UPLOAD_BYTES: u64 = 64 * 1024 * 1024 * 1024;

/// Largest output chunk an agent puts in one message (exec and terminal
/// output alike).
pub const OUTPUT_CHUNK_BYTES: usize = 64 * 1024;

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

/// Most labels one source (an agent, or admins) may set on one machine;
/// more is refused, so what a machine declares stays bounded.
pub const MAX_LABELS_PER_SOURCE: usize = 64;

/// Most machines one ListMachines page holds (and the default page size).
pub const MAX_MACHINES_PAGE: usize = 1000;

/// Most machines one ExecFleet runs at once (`ExecFleetRequest.parallel`);
/// more is INVALID_ARGUMENT. Each running machine holds an exec stream and
/// its flow-control window on the control plane.
pub const MAX_FLEET_PARALLEL: usize = 256;

/// Machines running at once when `ExecFleetRequest.parallel` is 0.
pub const DEFAULT_FLEET_PARALLEL: usize = 64;

/// Most machines one ExecFleet may select (online or not); a larger
/// selection is INVALID_ARGUMENT naming this limit: narrow the selector or
/// split the host list over several calls.
pub const MAX_FLEET_MACHINES: usize = 10_000;

/// The label-key prefix of facts the control plane derives (hostname, os,
/// arch, status …): reserved, neither agents nor admins can set it.
pub const FACT_LABEL_PREFIX: &str = "cmdop.io/";

/// How long a control plane trusts the credentials it has cached after its
/// last successful read of the revocation counter (which also tells
/// revokers, through the database, which revocations it has applied). A
/// server that cannot read the counter for longer checks every credential
/// in the database again; a revocation waits at most this long (plus a
/// clock margin) for a server that stopped answering. Milliseconds.
pub const CREDENTIAL_CACHE_LEASE_MS: u64 = 5_000;

/// Size of a command's pseudo-terminal (`ExecTerminal`) when the caller
/// gives 0, as a VT100's.
pub const DEFAULT_TERMINAL_ROWS: u16 = 24;
pub const DEFAULT_TERMINAL_COLS: u16 = 80;
/// `TERM` of a command's pseudo-terminal when the caller gives none.
pub const DEFAULT_TERM: &str = "xterm-256color";
/// Longest `ExecTerminal.term` accepted.
pub const MAX_TERM_BYTES: usize = 64;
