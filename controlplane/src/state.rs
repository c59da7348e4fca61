//! What every service shares.

use std::sync::Arc;

use crate::{
    cluster::Cluster, config::ServerConfig, raw::Rendezvous, remembered::Remembered,
    selection::Selections, sessions::Registry, store::Store, streams::OpenStreams,
};

/// Shared server state.
pub struct State {
    /// Shared with database work on the blocking pool ([`crate::db`]).
    pub store: Arc<Store>,
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
    /// Cluster mode ([`crate::cluster`]); `None` for a single server.
    pub cluster: Option<Arc<Cluster>>,
    /// Recent successful credential checks, for database outages
    /// ([`crate::remembered`]).
    pub remembered: Remembered,
    /// Keys used since the revocation watch last wrote their last use.
    pub key_uses: crate::key_use::KeyUses,
    /// The audit trail's writer ([`crate::audit`]).
    pub audit: Arc<crate::audit::Trail>,
}

/// The handle services hold.
pub type SharedState = Arc<State>;
