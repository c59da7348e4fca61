//! Access and refresh tokens. Each `IssueToken` starts a family; every
//! refresh rotates within it. A refresh token works once: presenting a used
//! one means it leaked, so the whole family (all its access tokens too) is
//! revoked.

use std::time::Duration;

use super::{
    bump_revocations,
    engine::args,
    keys::{scope_of, SCOPE_COLUMNS},
    ms, now_ms, secrets,
    secrets::hash,
    secrets::random_token,
    Store, Workspace,
};
use crate::limits;

/// A freshly issued pair. The plaintext tokens exist only here.
#[derive(Debug, Clone)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub access_expires_unix_ms: i64,
    pub refresh_expires_unix_ms: i64,
}

/// Result of checking an access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessCheck {
    Valid(Workspace),
    Expired,
    Invalid,
}

/// Result of presenting a refresh token.
#[derive(Debug, Clone)]
pub enum RefreshOutcome {
    Rotated(TokenPair),
    /// The token was already used; its family is now revoked.
    ReuseDetected,
    Expired,
    Invalid,
}

impl Store {
    /// Starts a token family for the holder of `api_key` (which must be valid).
    /// `access_ttl` is clamped to [1 s, [`limits::MAX_ACCESS_TTL`]].
    pub fn issue_tokens(
        &self,
        api_key: &str,
        access_ttl: Duration,
    ) -> anyhow::Result<Option<TokenPair>> {
        let Some(ws) = self.authenticate_api_key(api_key)? else {
            return Ok(None);
        };
        let family = secrets::random_hex("fam_", 12);
        self.write(|db| {
            db.execute(
                "INSERT INTO token_families (id, workspace_id, api_key_hash, created_ms) VALUES ($1, $2, $3, $4)",
                args![&family, &ws.id, hash(api_key), now_ms()],
            )
        })?;
        self.mint_pair(&family, access_ttl).map(Some)
    }

    fn mint_pair(&self, family: &str, access_ttl: Duration) -> anyhow::Result<TokenPair> {
        let ttl = access_ttl.clamp(Duration::from_secs(1), limits::MAX_ACCESS_TTL);
        let now = now_ms();
        let pair = TokenPair {
            access_token: random_token(secrets::ACCESS_TOKEN_PREFIX, 43),
            refresh_token: random_token(secrets::REFRESH_TOKEN_PREFIX, 43),
            access_expires_unix_ms: now.saturating_add(ms(ttl)),
            refresh_expires_unix_ms: now.saturating_add(ms(limits::REFRESH_TTL)),
        };
        self.write(|db| {
            db.execute(
                "INSERT INTO access_tokens (hash, family_id, expires_ms) VALUES ($1, $2, $3)",
                args![
                    hash(&pair.access_token),
                    family,
                    pair.access_expires_unix_ms
                ],
            )?;
            db.execute(
                "INSERT INTO refresh_tokens (hash, family_id, expires_ms) VALUES ($1, $2, $3)",
                args![
                    hash(&pair.refresh_token),
                    family,
                    pair.refresh_expires_unix_ms
                ],
            )
        })?;
        Ok(pair)
    }

    /// Checks an access token: its family must be unrevoked and the API key
    /// that started the family must still be valid.
    pub fn authenticate_access_token(&self, token: &str) -> anyhow::Result<AccessCheck> {
        Ok(self.check_access_token(token)?.0)
    }

    /// [`Store::authenticate_access_token`], with — for a valid token —
    /// when it expires (ms since the epoch) and the hash of the API key
    /// that started its family.
    pub fn check_access_token(
        &self,
        token: &str,
    ) -> anyhow::Result<(AccessCheck, Option<(i64, String)>)> {
        let hashed = hash(token);
        let row = self.read(|db| {
            db.query_opt(
                &format!(
                    "SELECT a.expires_ms, w.id, w.name, f.api_key_hash, k.expires_ms, {SCOPE_COLUMNS}, f.id
                     FROM access_tokens a
                     JOIN token_families f ON f.id = a.family_id
                     JOIN api_keys k ON k.hash = f.api_key_hash
                     JOIN workspaces w ON w.id = f.workspace_id
                     WHERE a.hash = $1 AND f.revoked_ms IS NULL AND k.revoked_ms IS NULL"
                ),
                args![hashed],
            )
        })?;
        let now = now_ms();
        Ok(match row {
            None => (AccessCheck::Invalid, None),
            // The key that issued it expired: its tokens end with it.
            Some(r) if r.opt_int(4)?.is_some_and(|at| at <= now) => (AccessCheck::Invalid, None),
            Some(r) if r.int(0)? <= now => (AccessCheck::Expired, None),
            Some(r) => {
                // A token carries its key's scope; it works until the
                // earlier of its own expiry and its key's.
                let until = match r.opt_int(4)? {
                    Some(key_expiry) => r.int(0)?.min(key_expiry),
                    None => r.int(0)?,
                };
                (
                    AccessCheck::Valid(Workspace {
                        id: r.text(1)?,
                        name: r.text(2)?,
                        scope: scope_of(&r, 5, Some(&r.text(9)?))?,
                        source: String::new(),
                    }),
                    Some((until, r.text(3)?)),
                )
            }
        })
    }

    /// The workspace and family of a refresh token (used or not), for the
    /// audit record of a family revoked on its reuse.
    pub fn family_of_refresh_token(
        &self,
        refresh_token: &str,
    ) -> anyhow::Result<Option<(String, String)>> {
        self.read(|db| {
            db.query_opt(
                "SELECT f.workspace_id, f.id FROM refresh_tokens r
                 JOIN token_families f ON f.id = r.family_id WHERE r.hash = $1",
                args![hash(refresh_token)],
            )?
            .map(|r| Ok((r.text(0)?, r.text(1)?)))
            .transpose()
        })
    }

    /// Trades a refresh token for a new pair in the same family.
    pub fn refresh_tokens(
        &self,
        refresh_token: &str,
        access_ttl: Duration,
    ) -> anyhow::Result<RefreshOutcome> {
        let now = now_ms();
        let family = self.transaction(|db| {
            let row = db.query_opt(
                "SELECT r.family_id, r.expires_ms, r.used_ms, f.revoked_ms, k.revoked_ms, k.expires_ms
                 FROM refresh_tokens r
                 JOIN token_families f ON f.id = r.family_id
                 LEFT JOIN api_keys k ON k.hash = f.api_key_hash
                 WHERE r.hash = $1",
                args![hash(refresh_token)],
            )?;
            let Some(row) = row else {
                return Ok(Err(RefreshOutcome::Invalid));
            };
            let family = row.text(0)?;
            let (expires, used) = (row.int(1)?, row.opt_int(2)?);
            let (family_revoked, key_revoked) = (row.opt_int(3)?, row.opt_int(4)?);
            let key_expired = row.opt_int(5)?.is_some_and(|at| at <= now);
            if used.is_some() {
                let n = db.execute(
                    "UPDATE token_families SET revoked_ms = $2 WHERE id = $1 AND revoked_ms IS NULL",
                    args![&family, now],
                )?;
                if n > 0 {
                    bump_revocations(db)?;
                }
                return Ok(Err(RefreshOutcome::ReuseDetected));
            }
            if family_revoked.is_some() || key_revoked.is_some() || key_expired {
                return Ok(Err(RefreshOutcome::Invalid));
            }
            if expires <= now {
                return Ok(Err(RefreshOutcome::Expired));
            }
            db.execute(
                "UPDATE refresh_tokens SET used_ms = $2 WHERE hash = $1",
                args![hash(refresh_token), now],
            )?;
            Ok(Ok(family))
        })?;
        match family {
            Ok(family) => self
                .mint_pair(&family, access_ttl)
                .map(RefreshOutcome::Rotated),
            Err(outcome) => Ok(outcome),
        }
    }
}
