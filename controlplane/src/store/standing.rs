//! Is the credential an open stream was opened with still good? Asked for
//! every credential with open streams when the revocation counter moves,
//! so revoking a key, a token family or an agent secret — in this process,
//! the admin CLI or another server sharing the database — ends its streams.

use super::{engine::args, now_ms, secrets::hash, Store};

/// A credential as open streams are filed under it: only its hash is kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Credential {
    /// An API key (`cmdop_…`).
    ApiKey { hash: String },
    /// An access token (`cmdat_…`); good while its family has an unexpired
    /// access token, so refreshing keeps the streams it opened.
    AccessToken { hash: String },
    /// An agent secret (`cmdag_…`).
    AgentSecret { hash: String },
}

impl Credential {
    pub fn api_key(key: &str) -> Credential {
        Credential::ApiKey { hash: hash(key) }
    }

    pub fn access_token(token: &str) -> Credential {
        Credential::AccessToken { hash: hash(token) }
    }

    pub fn agent_secret(secret: &str) -> Credential {
        Credential::AgentSecret { hash: hash(secret) }
    }
}

/// What [`Store::standing`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Good; for tokens, until this time (ms since the epoch).
    Good {
        until_ms: Option<i64>,
    },
    Revoked,
    /// An API key past its expiry, or an access token family whose newest
    /// access token (or whose key) has expired.
    Expired,
}

impl Store {
    /// Whether `credential` is still good.
    pub fn standing(&self, credential: &Credential) -> anyhow::Result<Standing> {
        self.read(|db| {
            Ok(match credential {
                Credential::ApiKey { hash } => {
                    let row = db.query_opt(
                        "SELECT revoked_ms, expires_ms FROM api_keys WHERE hash = $1",
                        args![hash],
                    )?;
                    let row = match row {
                        Some(r) => Some((r.opt_int(0)?, r.opt_int(1)?)),
                        None => None,
                    };
                    match row {
                        Some((None, None)) => Standing::Good { until_ms: None },
                        Some((None, Some(until))) if until > now_ms() => Standing::Good {
                            until_ms: Some(until),
                        },
                        Some((None, Some(_))) => Standing::Expired,
                        _ => Standing::Revoked,
                    }
                }
                Credential::AccessToken { hash } => {
                    let row = db.query_opt(
                        "SELECT f.revoked_ms, k.revoked_ms,
                                (SELECT MAX(expires_ms) FROM access_tokens WHERE family_id = f.id),
                                k.expires_ms
                         FROM access_tokens a
                         JOIN token_families f ON f.id = a.family_id
                         JOIN api_keys k ON k.hash = f.api_key_hash
                         WHERE a.hash = $1",
                        args![hash],
                    )?;
                    let row = match row {
                        Some(r) => Some((r.opt_int(0)?, r.opt_int(1)?, r.int(2)?, r.opt_int(3)?)),
                        None => None,
                    };
                    match row {
                        // Good until the family's newest access token or
                        // its key expires, whichever comes first.
                        Some((None, None, newest, key_expiry)) => {
                            let until = key_expiry.map_or(newest, |k| k.min(newest));
                            if until > now_ms() {
                                Standing::Good {
                                    until_ms: Some(until),
                                }
                            } else {
                                Standing::Expired
                            }
                        }
                        _ => Standing::Revoked,
                    }
                }
                Credential::AgentSecret { hash } => {
                    let found = db.query_opt(
                        "SELECT machine_id FROM machines WHERE secret_hash = $1 AND revoked_ms IS NULL",
                        args![hash],
                    )?;
                    match found {
                        Some(_) => Standing::Good { until_ms: None },
                        None => Standing::Revoked,
                    }
                }
            })
        })
    }

    /// The hash of the API key that issued `access_token`, for per-key
    /// limits. `None` for an unknown token.
    pub fn access_token_key_hash(&self, access_token: &str) -> anyhow::Result<Option<String>> {
        self.read(|db| {
            db.query_opt(
                "SELECT f.api_key_hash FROM access_tokens a
                 JOIN token_families f ON f.id = a.family_id WHERE a.hash = $1",
                args![hash(access_token)],
            )?
            .map(|r| r.text(0))
            .transpose()
        })
    }
}
