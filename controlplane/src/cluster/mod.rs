//! Cluster mode: several `cmdop server` replicas on one database, any
//! machine reachable through any replica.
//!
//! - [`presence`]: each replica renews a lease in the `replicas` table and
//!   claims a route (machine → replica, with a generation) when an agent
//!   registers; a newer claim elsewhere closes the older link here.
//! - [`forward`]: a client call for a machine whose agent is on another
//!   replica is sent, as the same HTTP/2 gRPC stream, to that replica's
//!   peer port; lookups over the whole workspace (ListSessions, machine
//!   and hostname lookups) ask every live replica.
//! - [`peer_gate`]: the peer port serves the same services, only to callers
//!   with the peer secret, and trusts the caller identity the forwarding
//!   replica's gate found (headers the public port never reads).
//! - [`routes`]: where each machine's agent is, cached in memory.

pub mod forward;
pub mod peer_gate;
pub mod presence;
pub mod routes;

use parking_lot::Mutex;
use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::Duration,
};

use tonic::transport::{Channel, Endpoint};

use crate::{
    config::ClusterConfig,
    sessions::Session,
    store::{Credential, Workspace},
};

pub use cmdop_proto::headers::{
    PEER_CREDENTIAL as PEER_CREDENTIAL_HEADER, PEER_KEY as PEER_KEY_HEADER,
    PEER_SCOPE as PEER_SCOPE_HEADER, PEER_SECRET as PEER_SECRET_HEADER,
    PEER_SOURCE as PEER_SOURCE_HEADER, PEER_WORKSPACE as PEER_WORKSPACE_HEADER,
    PEER_WORKSPACE_NAME as PEER_WORKSPACE_NAME_HEADER,
};

/// How long a replica's lease lasts without renewal.
pub const LEASE: Duration = Duration::from_secs(5);
/// How often the lease is renewed and the routes this replica holds are
/// checked against newer claims.
pub const TICK: Duration = Duration::from_secs(1);
/// Connecting to a peer replica gives up after this long.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 keepalive of peer channels: a call in flight through a replica
/// that vanished without closing its sockets fails within about twice this.
const PEER_KEEPALIVE: Duration = Duration::from_secs(2);

/// Marks a call that arrived on the peer port: it is served here and never
/// forwarded again; it gets a side connection only under the ticket the
/// forwarding replica relays ([`side_ticket`]).
#[derive(Debug, Clone, Copy)]
pub struct Forwarded;

/// Who is calling, as the public gate found it: what a forwarded call
/// carries to the replica that serves it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub workspace: Workspace,
    pub credential: Credential,
    pub key_hash: Option<String>,
}

/// This replica's view of the cluster.
pub struct Cluster {
    pub replica_id: String,
    secret: String,
    /// The peer address other replicas reach this one at (set once bound).
    peer_addr: OnceLock<String>,
    /// Live replicas (id → peer address), refreshed every [`TICK`].
    live: Mutex<HashMap<String, String>>,
    /// Peer channels by address.
    channels: Mutex<HashMap<String, Channel>>,
    /// Peer addresses a call just failed to reach, until when calls to them
    /// fail at once (no connection attempt, no log line per call).
    unreachable: Mutex<HashMap<String, std::time::Instant>>,
    pub routes: routes::RouteCache,
    /// Routes this replica claimed: machine → (generation, session).
    claims: Mutex<HashMap<String, (i64, Arc<Session>)>>,
    /// Held by each presence round and by leaving, so that a round under
    /// way when the replica leaves cannot write its row back after it was
    /// removed; `true` once left (no round writes any more).
    presence: Mutex<bool>,
}

/// How long calls to a peer address that just failed fail at once.
pub const UNREACHABLE_FOR: Duration = Duration::from_millis(500);

impl Cluster {
    pub fn new(config: &ClusterConfig) -> Arc<Cluster> {
        Arc::new(Cluster {
            replica_id: config.replica_id.clone(),
            secret: config.peer_secret.clone(),
            peer_addr: OnceLock::new(),
            live: Mutex::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
            unreachable: Mutex::new(HashMap::new()),
            routes: routes::RouteCache::default(),
            claims: Mutex::new(HashMap::new()),
            presence: Mutex::new(false),
        })
    }

    /// Runs `round` (a presence round) unless the replica has left; rounds
    /// and [`leave`](Self::leave) never overlap.
    pub fn presence_round<T>(
        &self,
        round: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<Option<T>> {
        let left = self.presence.lock();
        if *left {
            return Ok(None);
        }
        round().map(Some)
    }

    /// Runs `remove` (taking this replica's row and routes out of the
    /// database) once any presence round under way has ended, and stops
    /// later rounds. Blocking.
    pub fn leave<T>(&self, remove: impl FnOnce() -> T) -> T {
        let mut left = self.presence.lock();
        *left = true;
        remove()
    }

    /// Records the address the peer port was bound to.
    pub fn set_peer_addr(&self, addr: String) {
        let _ = self.peer_addr.set(addr);
    }

    pub fn peer_addr(&self) -> &str {
        self.peer_addr.get().map(String::as_str).unwrap_or("")
    }

    /// True when `given` is the peer secret (compared in constant time).
    pub fn secret_matches(&self, given: &[u8]) -> bool {
        use sha2::{Digest, Sha256};
        let a = Sha256::digest(given);
        let b = Sha256::digest(self.secret.as_bytes());
        a.iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }

    /// The peer address of `replica_id` if its lease is current.
    pub fn live_addr(&self, replica_id: &str) -> Option<String> {
        self.live.lock().get(replica_id).cloned()
    }

    /// Every other live replica: (id, peer address).
    pub fn other_replicas(&self) -> Vec<(String, String)> {
        let mut out: Vec<_> = self
            .live
            .lock()
            .iter()
            .filter(|(id, _)| **id != self.replica_id)
            .map(|(id, addr)| (id.clone(), addr.clone()))
            .collect();
        out.sort();
        out
    }

    fn set_live(&self, live: HashMap<String, String>) {
        *self.live.lock() = live;
    }

    /// The (cached) channel to the peer port at `addr`. Connects lazily,
    /// with a connect timeout and HTTP/2 keepalive.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::Status> {
        if let Some(ch) = self.channels.lock().get(addr) {
            return Ok(ch.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| {
                tonic::Status::internal(format!(
                    "replica peer address '{addr}' is not usable ({e}); check that replica's --peer-listen"
                ))
            })?
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .http2_keep_alive_interval(PEER_KEEPALIVE)
            .keep_alive_timeout(PEER_KEEPALIVE)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(cmdop_proto::limits::HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(cmdop_proto::limits::HTTP2_CONNECTION_WINDOW)
            .tcp_nodelay(true);
        let ch = endpoint.connect_lazy();
        self.channels.lock().insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// Forgets the channel to `addr` after a transport failure and marks
    /// the address unreachable for [`UNREACHABLE_FOR`], so that calls to a
    /// dead replica fail at once until its agents have moved, and the next
    /// call after that connects afresh. True when it was not marked yet
    /// (log the failure once, not per call).
    pub fn mark_unreachable(&self, addr: &str) -> bool {
        self.channels.lock().remove(addr);
        let until = std::time::Instant::now() + UNREACHABLE_FOR;
        let mut marks = self.unreachable.lock();
        marks.retain(|_, t| *t > std::time::Instant::now());
        marks.insert(addr.to_string(), until).is_none()
    }

    /// Whether a call to `addr` failed within the last [`UNREACHABLE_FOR`].
    pub fn is_unreachable(&self, addr: &str) -> bool {
        self.unreachable
            .lock()
            .get(addr)
            .is_some_and(|t| *t > std::time::Instant::now())
    }

    /// Peer headers for a call made on behalf of `caller`.
    pub fn peer_headers(&self, caller: &Caller, headers: &mut http::HeaderMap) {
        use http::HeaderValue;
        for name in [
            PEER_SECRET_HEADER,
            PEER_WORKSPACE_HEADER,
            PEER_WORKSPACE_NAME_HEADER,
            PEER_CREDENTIAL_HEADER,
            PEER_KEY_HEADER,
            PEER_SCOPE_HEADER,
            PEER_SOURCE_HEADER,
            cmdop_proto::headers::PEER_SIDE_TICKET,
            "authorization",
        ] {
            headers.remove(name);
        }
        let mut put = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        };
        put(PEER_SECRET_HEADER, &self.secret);
        put(PEER_WORKSPACE_HEADER, &caller.workspace.id);
        put(
            PEER_WORKSPACE_NAME_HEADER,
            &hex::encode(caller.workspace.name.as_bytes()),
        );
        let credential = match &caller.credential {
            Credential::ApiKey { hash } => format!("key:{hash}"),
            Credential::AccessToken { hash } => format!("token:{hash}"),
            Credential::AgentSecret { hash } => format!("agent:{hash}"),
        };
        put(PEER_CREDENTIAL_HEADER, &credential);
        // The replica that serves the call sees what the key may see here.
        if let Some(scope) = caller.workspace.scope.to_header() {
            put(PEER_SCOPE_HEADER, &scope);
        }
        put(PEER_SOURCE_HEADER, &caller.workspace.source);
        if let Some(key) = &caller.key_hash {
            put(PEER_KEY_HEADER, key);
        }
    }

    /// A typed request to a peer on behalf of `caller`.
    pub fn peer_request<T>(&self, caller: &Caller, message: T) -> tonic::Request<T> {
        let mut headers = http::HeaderMap::new();
        self.peer_headers(caller, &mut headers);
        let mut req = tonic::Request::new(message);
        *req.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
        req.set_timeout(PEER_LOOKUP_TIMEOUT);
        req
    }

    /// A typed request to a peer on behalf of `caller` for a call that
    /// lasts as long as its work (an Exec): no deadline of its own.
    pub fn peer_stream_request<T>(&self, caller: &Caller, message: T) -> tonic::Request<T> {
        let mut headers = http::HeaderMap::new();
        self.peer_headers(caller, &mut headers);
        let mut req = tonic::Request::new(message);
        *req.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
        req
    }
}

/// A lookup asked of every live replica (ListSessions, hostname lookups)
/// waits at most this long for each.
pub const PEER_LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// A random replica id (`rep_…`).
pub fn random_replica_id() -> String {
    crate::store::secrets::random_hex("rep_", 6)
}

impl Cluster {
    /// Runs `ask` against every other live replica at once (each bounded by
    /// [`PEER_LOOKUP_TIMEOUT`]) and returns the answers that came back. A
    /// replica that fails or is slow is left out (and logged).
    pub async fn ask_all<T, F, Fut>(&self, ask: F) -> Vec<T>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.ask_each(ask)
            .await
            .into_iter()
            .map(|(_, answer)| answer)
            .collect()
    }

    /// [`Cluster::ask_all`], each answer with the id of the replica that
    /// gave it.
    pub async fn ask_each<T, F, Fut>(&self, ask: F) -> Vec<(String, T)>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let calls = self.other_replicas().into_iter().map(|(id, addr)| {
            let call = self.channel(&addr).map(&ask);
            async move {
                let answer = match call {
                    Ok(fut) => tokio::time::timeout(PEER_LOOKUP_TIMEOUT, fut)
                        .await
                        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("timed out"))),
                    Err(status) => Err(status),
                };
                match answer {
                    Ok(answer) => Some((id, answer)),
                    Err(status) => {
                        tracing::warn!(replica = %id, %addr, %status, "a replica did not answer a workspace-wide lookup; its machines are left out");
                        None
                    }
                }
            }
        });
        futures::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

/// The caller of a client call in cluster mode that may ask other replicas:
/// `None` for a single server and for calls that came from another replica
/// (those answer from this replica alone).
pub fn asking_caller<T>(in_cluster: bool, req: &tonic::Request<T>) -> Option<Caller> {
    if !in_cluster {
        return None;
    }
    if req.extensions().get::<Forwarded>().is_some() {
        return None;
    }
    req.extensions().get::<Caller>().cloned()
}

/// True for a call that came from another replica.
pub fn is_forwarded<T>(req: &tonic::Request<T>) -> bool {
    req.extensions().get::<Forwarded>().is_some()
}

/// Which ticket a call's side connection may use: a fresh one for a
/// client of this replica; for a forwarded call the one the forwarding
/// replica relays (none from a replica that relays nothing).
pub fn side_ticket<T>(req: &tonic::Request<T>) -> crate::raw::SideTicket {
    if !is_forwarded(req) {
        return crate::raw::SideTicket::Fresh;
    }
    let header = req
        .metadata()
        .get(cmdop_proto::headers::PEER_SIDE_TICKET)
        .and_then(|v| v.to_str().ok());
    crate::raw::SideTicket::forwarded(header)
}
