//! What every service shares.

use std::sync::Arc;

use crate::{
    config::ServerConfig, raw::Rendezvous, selection::Selections, sessions::Registry, store::Store,
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
}

/// The handle services hold.
pub type SharedState = Arc<State>;
