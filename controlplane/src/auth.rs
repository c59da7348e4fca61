//! Who is calling: client credentials (API key or access token) and agent
//! secrets, read from the `authorization: Bearer …` header. Error texts
//! are part of the contract with clients.

use tonic::{metadata::MetadataMap, Status};

use crate::{
    limits,
    remembered::{Remembered, Verified},
    store::{secrets, AccessCheck, Credential, MachineRow, Store, Workspace},
};

use cmdop_proto::headers::AUTH_ERROR as AUTH_ERROR_HEADER;

/// The bearer credential of a request, if any. A bare token without the
/// `Bearer` scheme is accepted too.
pub fn bearer(meta: &MetadataMap) -> Option<&str> {
    let value = meta.get("authorization")?.to_str().ok()?.trim();
    let token = match value.split_once(char::is_whitespace) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ if value.eq_ignore_ascii_case("bearer") => "",
        _ => value,
    };
    (!token.is_empty()).then_some(token)
}

fn missing_key() -> Status {
    Status::unauthenticated("missing API key: pass one or set CMDOP_API_KEY")
}

fn invalid_key() -> Status {
    Status::unauthenticated(
        "API key is invalid or revoked, or it expired; create a new one with `cmdop admin create-key`",
    )
}

/// Who the gate ([`crate::gate`]) found calling, in the request's
/// extensions, so handlers need not ask the database a second time.
#[derive(Debug, Clone)]
pub enum Checked {
    Client(Workspace),
    Agent(MachineRow),
}

/// The caller's workspace: as the gate found it, or looked up now.
pub fn client_of<T>(store: &Store, req: &tonic::Request<T>) -> Result<Workspace, Status> {
    match req.extensions().get::<Checked>() {
        Some(Checked::Client(ws)) => Ok(ws.clone()),
        _ => crate::db::read_store(store, |s| authenticate_client(s, req.metadata())),
    }
}

/// The calling agent's machine: as the gate found it, or looked up now.
pub fn agent_of<T>(store: &Store, req: &tonic::Request<T>) -> Result<MachineRow, Status> {
    match req.extensions().get::<Checked>() {
        Some(Checked::Agent(machine)) => Ok(machine.clone()),
        _ => crate::db::read_store(store, |s| authenticate_agent(s, req.metadata())),
    }
}

/// The workspace of the client calling with an API key or access token.
pub fn authenticate_client(store: &Store, meta: &MetadataMap) -> Result<Workspace, Status> {
    let token = bearer(meta).ok_or_else(missing_key)?;
    if token.len() > limits::MAX_CREDENTIAL_BYTES {
        return Err(invalid_key());
    }
    if token.starts_with(secrets::ACCESS_TOKEN_PREFIX) {
        return match store
            .authenticate_access_token(token)
            .map_err(crate::db::internal)?
        {
            AccessCheck::Valid(ws) => Ok(ws),
            AccessCheck::Expired => Err(expired_token()),
            AccessCheck::Invalid => Err(invalid_token()),
        };
    }
    store
        .authenticate_api_key(token)
        .map_err(crate::db::internal)?
        .ok_or_else(invalid_key)
}

fn expired_token() -> Status {
    let mut status = Status::unauthenticated(
        "access token expired; refresh it with RefreshToken or sign in again",
    );
    status.metadata_mut().insert(
        AUTH_ERROR_HEADER,
        tonic::metadata::MetadataValue::from_static("expired"),
    );
    status
}

fn invalid_token() -> Status {
    Status::unauthenticated("access token is invalid or revoked; issue a new one with your API key")
}

/// A client credential the gate admitted.
pub struct ClientPass {
    pub workspace: Workspace,
    pub credential: Credential,
    /// The API key the call counts against (per-key limits).
    pub key_hash: Option<String>,
    /// When the credential stops working (ms since the epoch), if it does.
    pub expires_ms: Option<i64>,
}

/// The gate's check of an API key or access token: from the credential
/// cache when it is trusted ([`Remembered::cached`]), otherwise in the
/// database, and — only when the database cannot be reached — from the
/// memory of recent successful checks ([`Remembered::recall`]). Every
/// answer of the database updates that memory.
pub fn check_client(
    store: &Store,
    memory: &Remembered,
    meta: &MetadataMap,
) -> Result<ClientPass, Status> {
    let token = bearer(meta).ok_or_else(missing_key)?;
    if token.len() > limits::MAX_CREDENTIAL_BYTES {
        return Err(invalid_key());
    }
    let access = token.starts_with(secrets::ACCESS_TOKEN_PREFIX);
    let credential = if access {
        Credential::access_token(token)
    } else {
        Credential::api_key(token)
    };
    let verified = known_or_checked(memory, &credential, || {
        if access {
            store.check_access_token(token).map(|(check, details)| {
                let (expires_ms, key_hash) = details.unzip();
                match check {
                    AccessCheck::Valid(workspace) => Ok(Verified::Client {
                        workspace,
                        key_hash,
                        expires_ms,
                    }),
                    AccessCheck::Expired => Err(expired_token()),
                    AccessCheck::Invalid => Err(invalid_token()),
                }
            })
        } else {
            store.check_api_key(token).map(|found| match found {
                Some((workspace, expires_ms)) => Ok(Verified::Client {
                    workspace,
                    key_hash: match &credential {
                        Credential::ApiKey { hash } => Some(hash.clone()),
                        _ => None,
                    },
                    expires_ms,
                }),
                None => Err(invalid_key()),
            })
        }
    })?;
    match verified {
        Verified::Client {
            workspace,
            key_hash,
            expires_ms,
        } => Ok(ClientPass {
            workspace,
            credential,
            key_hash,
            expires_ms,
        }),
        Verified::Agent(_) => Err(invalid_key()),
    }
}

/// The gate's check of an agent secret, with the same cache and outage
/// fallback as [`check_client`].
pub fn check_agent(
    store: &Store,
    memory: &Remembered,
    meta: &MetadataMap,
) -> Result<(MachineRow, Credential), Status> {
    let secret = bearer(meta).ok_or_else(missing_secret)?;
    if secret.len() > limits::MAX_CREDENTIAL_BYTES
        || !secret.starts_with(secrets::AGENT_SECRET_PREFIX)
    {
        return Err(unknown_agent());
    }
    let credential = Credential::agent_secret(secret);
    let verified = known_or_checked(memory, &credential, || {
        store
            .machine_by_secret(secret)
            .map(|found| found.map(Verified::Agent).ok_or_else(unknown_agent))
    })?;
    match verified {
        Verified::Agent(machine) => Ok((machine, credential)),
        Verified::Client { .. } => Err(unknown_agent()),
    }
}

/// Who `credential` is: from the cache when it is trusted, otherwise as
/// `check` finds it in the database (tagged with the revocation counter
/// value known before the check began).
fn known_or_checked(
    memory: &Remembered,
    credential: &Credential,
    check: impl FnOnce() -> anyhow::Result<Result<Verified, Status>>,
) -> Result<Verified, Status> {
    if let Some(verified) = memory.cached(credential) {
        crate::metrics::credential_checked("cache");
        return Ok(verified);
    }
    let generation = memory.generation();
    answered(memory, credential, check(), generation)
}

/// Applies what the database answered about `credential` to the memory,
/// or — when it could not be reached — asks the memory.
fn answered(
    memory: &Remembered,
    credential: &Credential,
    checked: anyhow::Result<Result<Verified, Status>>,
    generation: Option<i64>,
) -> Result<Verified, Status> {
    match checked {
        Ok(Ok(verified)) => {
            crate::metrics::credential_checked("database");
            memory.remember(credential, verified.clone(), generation);
            Ok(verified)
        }
        Ok(Err(refused)) => {
            memory.forget(credential);
            Err(refused)
        }
        Err(err) => {
            if crate::store::is_unavailable_error(&err) {
                if let Some(verified) = memory.recall(credential) {
                    crate::metrics::credential_checked("outage");
                    return Ok(verified);
                }
            }
            Err(crate::db::internal(err))
        }
    }
}

fn missing_secret() -> Status {
    Status::unauthenticated("missing agent secret; enroll the agent with an enrollment token first")
}

/// The machine of the agent calling with its secret.
pub fn authenticate_agent(store: &Store, meta: &MetadataMap) -> Result<MachineRow, Status> {
    let secret = bearer(meta).ok_or_else(missing_secret)?;
    if secret.len() > limits::MAX_CREDENTIAL_BYTES
        || !secret.starts_with(secrets::AGENT_SECRET_PREFIX)
    {
        return Err(unknown_agent());
    }
    store
        .machine_by_secret(secret)
        .map_err(crate::db::internal)?
        .ok_or_else(unknown_agent)
}

fn unknown_agent() -> Status {
    Status::unauthenticated(
        "agent secret is invalid; enroll again with a new token from `cmdop admin enroll-token`",
    )
}

/// True when the request's credential looks like an agent secret.
pub fn is_agent_credential(meta: &MetadataMap) -> bool {
    bearer(meta).is_some_and(|t| t.starts_with(secrets::AGENT_SECRET_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().expect("ascii header"));
        m
    }

    #[test]
    fn bearer_reads_the_token() {
        assert_eq!(bearer(&meta("Bearer cmdop_abc")), Some("cmdop_abc"));
        assert_eq!(bearer(&meta("bearer  cmdat_x ")), Some("cmdat_x"));
        assert_eq!(bearer(&meta("Bearer ")), None);
        assert_eq!(bearer(&MetadataMap::new()), None);
        assert!(is_agent_credential(&meta("Bearer cmdag_secret")));
        assert!(!is_agent_credential(&meta("Bearer cmdop_key")));
    }
}
