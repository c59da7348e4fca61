//! The client's one connection, split by job:
//!
//! - [`lifecycle`]: open, close, state and what the server offers;
//! - [`endpoint`]: the HTTP/2 endpoint (keepalive, windows, TLS) and connect errors;
//! - [`handed`]: the channel under the stubs, which tells the requests
//!   HTTP/2 took on (a GOAWAY above them proves they never ran);
//! - [`call`]: the call pipeline every RPC goes through (live connection,
//!   deadline, retries), shared by unary calls and stream openings;
//! - [`auth`]: the `authorization` header and access-token refresh;
//! - [`supervisor`]: the task that watches the connection and reconnects.

mod auth;
mod call;
mod endpoint;
mod handed;
mod lifecycle;
mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use cmdop_proto::ext::cmdop_client::CmdopClient;
use cmdop_proto::terminal::terminal_streaming_service_client::TerminalStreamingServiceClient;
use tokio::sync::Notify;

pub(crate) use call::CallPolicy;
pub(crate) use handed::refused_above_last_stream;

/// Upper bound of one health probe, whatever the call timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connection state, observable with [`Client::state`](super::Client::state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    /// Created, never connected.
    Idle,
    Connected,
    /// Lost; the supervisor is on attempt `attempt`.
    Reconnecting {
        attempt: u32,
    },
    /// Lost for good (no auto-reconnect, or it gave up).
    Disconnected {
        reason: String,
    },
    /// Closed by the application.
    Closed,
}

/// The generated stubs over the client's single channel.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) terminal: TerminalStreamingServiceClient<handed::Watched>,
    pub(crate) ext: CmdopClient<handed::Watched>,
    /// A transport connection of this channel ended (a loss, no probe
    /// needed). One per channel: the end of a channel left behind for
    /// another server is no news for the one in use.
    pub(crate) dropped: Arc<Notify>,
}

/// What the server said about itself at connect time.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerFacts {
    /// `cmdop.ext.v1.Cmdop` answers (false when it said UNIMPLEMENTED).
    pub(crate) ext: bool,
    pub(crate) capabilities: Vec<String>,
    pub(crate) version: String,
    pub(crate) workspace: String,
}

impl ServerFacts {
    pub(crate) fn has(&self, capability: &str) -> bool {
        self.ext && self.capabilities.iter().any(|c| c == capability)
    }
}

/// What [`Client::connection_info`](super::Client::connection_info) reports.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The server in use (one of the list, when several were given).
    pub server: String,
    pub tls: bool,
    pub connected: bool,
    /// Round trip of one ServerInfo (or HealthCheck) call just now; `None`
    /// when it failed.
    pub latency: Option<Duration>,
    pub server_version: String,
    pub workspace: String,
    /// The server offers native exec (`exec.v1`).
    pub native_exec: bool,
    pub capabilities: Vec<String>,
}
