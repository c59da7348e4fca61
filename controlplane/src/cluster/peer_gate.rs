//! The peer port's gate: only other replicas of the cluster (holding the
//! peer secret) may call, and the caller's identity comes from headers the
//! forwarding replica's gate set after authenticating the client. The
//! public port never reads these headers.

use tonic::{metadata::MetadataMap, Status};

use super::{
    Cluster, PEER_CREDENTIAL_HEADER, PEER_KEY_HEADER, PEER_SCOPE_HEADER, PEER_SECRET_HEADER,
    PEER_SOURCE_HEADER, PEER_WORKSPACE_HEADER, PEER_WORKSPACE_NAME_HEADER,
};
use crate::{
    scope::Scope,
    store::{Credential, Workspace},
};

/// The caller a forwarding replica vouches for.
pub struct Vouched {
    pub workspace: Workspace,
    pub credential: Credential,
    pub key_hash: Option<String>,
}

fn refused() -> Status {
    Status::unauthenticated(
        "peer secret missing or wrong: this port (--peer-listen) serves only other replicas of \
         the cluster, which must all run with the same --peer-secret (CMDOP_PEER_SECRET)",
    )
}

/// Checks the peer secret and reads the vouched-for caller.
pub fn admit(cluster: &Cluster, meta: &MetadataMap) -> Result<Vouched, Status> {
    let secret = meta.get(PEER_SECRET_HEADER).ok_or_else(refused)?;
    if !cluster.secret_matches(secret.as_bytes()) {
        return Err(refused());
    }
    let text = |name: &str| meta.get(name).and_then(|v| v.to_str().ok());
    let bad = |what: &str| {
        Status::invalid_argument(format!(
            "forwarded call without a valid {what} header; every replica must run the same cmdop version"
        ))
    };
    let workspace_id = text(PEER_WORKSPACE_HEADER)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad(PEER_WORKSPACE_HEADER))?;
    let name = text(PEER_WORKSPACE_NAME_HEADER)
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| bad(PEER_WORKSPACE_NAME_HEADER))?;
    let credential = match text(PEER_CREDENTIAL_HEADER).and_then(|c| c.split_once(':')) {
        Some(("key", hash)) => Credential::ApiKey { hash: hash.into() },
        Some(("token", hash)) => Credential::AccessToken { hash: hash.into() },
        _ => return Err(bad(PEER_CREDENTIAL_HEADER)),
    };
    // No header: the key is unscoped. One that does not read is refused,
    // never taken as full access.
    let scope = match text(PEER_SCOPE_HEADER) {
        None => Scope::full(),
        Some(h) => Scope::from_header(h).map_err(|_| bad(PEER_SCOPE_HEADER))?,
    };
    Ok(Vouched {
        workspace: Workspace {
            id: workspace_id.to_string(),
            name,
            scope,
            source: text(PEER_SOURCE_HEADER).unwrap_or_default().to_string(),
        },
        credential,
        key_hash: text(PEER_KEY_HEADER).map(str::to_string),
    })
}
