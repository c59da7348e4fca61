//! What every service shares.

use std::sync::Arc;

use crate::{config::ServerConfig, sessions::Registry, store::Store};

/// Shared server state.
pub struct State {
    pub store: Store,
    pub sessions: Registry,
    pub config: ServerConfig,
}

/// The handle services hold.
pub type SharedState = Arc<State>;
