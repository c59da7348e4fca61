//! What every service shares.

use std::sync::Arc;

use crate::{
    config::ServerConfig, raw::Rendezvous, selection::Selections, sessions::Registry, store::Store,
    streams::OpenStreams,
};

/// Shared server state.
pub struct State {
    pub store: Store,
    pub sessions: Registry,
    pub config: ServerConfig,
    /// Tickets for side connections; `None` when they are off
    /// ([`crate::raw::enabled`]).
    pub side_connections: Option<Arc<Rendezvous>>,
    /// The machine each client connection picked last (for File* calls
    /// without a session id).
    pub selections: Selections,
    /// Open calls by credential: end them when a credential is revoked
    /// ([`OpenStreams::end`], or [`OpenStreams::recheck`] after changing
    /// the database).
    pub open_streams: Arc<OpenStreams>,
}

/// The handle services hold.
pub type SharedState = Arc<State>;
