//! API keys: creation with an optional scope and expiry, revocation, the
//! check every client call makes, listings with last use. Only a key's
//! SHA-256 hash and a short prefix (for listing and revoking) are stored.
//!
//! A key's scope ([`crate::scope`]) is fixed at creation: there is no
//! statement here that changes it, so a scope is never widened (create a
//! new key instead).

use anyhow::bail;
use cmdop_proto::{scope::Operations, selector::Selector};

use super::{
    api_key_prefix, bump_revocations, engine::args, engine::Row, now_ms, secrets, secrets::hash,
    secrets::random_token, Store, Workspace,
};
use crate::{limits, scope::Scope};

/// A key to create.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    /// Its name (listings, refusals, the audit trail); may be empty.
    pub label: String,
    /// The operations it may use; `None`: all.
    pub allow: Option<Operations>,
    /// A selector over admin labels choosing the machines it may reach;
    /// `None`: every machine of the workspace.
    pub machines: Option<String>,
    /// When it stops working (ms since the epoch); `None`: never.
    pub expires_ms: Option<i64>,
}

/// A key as listed (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub prefix: String,
    pub label: String,
    /// Operation names, comma-separated; `None`: all.
    pub allow: Option<String>,
    /// The machine selector; `None`: every machine.
    pub machines: Option<String>,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub last_used_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

/// The columns [`scope_of`] reads, in its order, for a query over `api_keys k`.
pub(super) const SCOPE_COLUMNS: &str = "k.label, k.prefix, k.allow_ops, k.machines";

/// The scope stored on a key, from [`SCOPE_COLUMNS`] starting at column
/// `at`; `family`: the token family the call came with, if any.
pub(super) fn scope_of(r: &Row, at: usize, family: Option<&str>) -> anyhow::Result<Scope> {
    let (label, prefix) = (r.text(at)?, r.text(at + 1)?);
    let mut actor = if label.is_empty() {
        format!("key {prefix}")
    } else {
        format!("key {label} ({prefix})")
    };
    if let Some(family) = family {
        actor.push_str(&format!(" via token family {family}"));
    }
    let name = if label.is_empty() { prefix } else { label };
    Scope::from_stored(
        &name,
        &actor,
        r.opt_text(at + 2)?.as_deref(),
        r.opt_text(at + 3)?.as_deref(),
    )
}

impl Store {
    /// Creates an unscoped key that never expires and returns it.
    pub fn create_api_key(&self, workspace_id: &str, label: &str) -> anyhow::Result<String> {
        self.create_key(
            workspace_id,
            &NewKey {
                label: label.to_string(),
                ..NewKey::default()
            },
        )
    }

    /// Creates a key as `new` says and returns it (the only time it exists
    /// in plaintext).
    pub fn create_key(&self, workspace_id: &str, new: &NewKey) -> anyhow::Result<String> {
        if new.label.len() > limits::MAX_LABEL_BYTES {
            bail!(
                "the key's name is longer than {} bytes",
                limits::MAX_LABEL_BYTES
            );
        }
        if new.allow == Some(Operations::none()) {
            bail!("a key allowed no operation could do nothing; name at least one");
        }
        // Stored in the selector's own printed form, which parses back.
        let machines = match &new.machines {
            Some(text) => Some(Selector::parse(text)?.to_string()),
            None => None,
        };
        if let Some(expires) = new.expires_ms {
            if expires <= now_ms() {
                bail!("the key would expire before it is created; give a future expiry");
            }
        }
        if self.workspace_by_id(workspace_id)?.is_none() {
            bail!("no workspace with id '{workspace_id}'");
        }
        let key = random_token(secrets::API_KEY_PREFIX, 32);
        let allow = new.allow.map(|ops| ops.to_string());
        self.write(|db| {
            db.execute(
                "INSERT INTO api_keys (hash, prefix, workspace_id, label, created_ms, allow_ops, machines, expires_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                args![
                    hash(&key),
                    api_key_prefix(&key),
                    workspace_id,
                    new.label.as_str(),
                    now_ms(),
                    allow,
                    machines,
                    new.expires_ms
                ],
            )
        })?;
        Ok(key)
    }

    /// Revokes a key given in full or by its listed prefix (at least 10
    /// characters, and matching exactly one key). Returns false when nothing
    /// matched.
    pub fn revoke_api_key(&self, key_or_prefix: &str) -> anyhow::Result<bool> {
        let key_or_prefix = key_or_prefix.trim();
        self.transaction(|db| {
            let by_hash = db.execute(
                "UPDATE api_keys SET revoked_ms = $2 WHERE hash = $1 AND revoked_ms IS NULL",
                args![hash(key_or_prefix), now_ms()],
            )?;
            if by_hash > 0 {
                bump_revocations(db)?;
                return Ok(true);
            }
            if key_or_prefix.len() < 10 {
                return Ok(false);
            }
            let matches = db
                .query_opt(
                    "SELECT COUNT(*) FROM api_keys WHERE prefix = $1 AND revoked_ms IS NULL",
                    args![key_or_prefix],
                )?
                .map(|r| r.int(0))
                .transpose()?
                .unwrap_or(0);
            if matches > 1 {
                bail!("prefix '{key_or_prefix}' matches {matches} keys; pass the whole key");
            }
            let n = db.execute(
                "UPDATE api_keys SET revoked_ms = $2 WHERE prefix = $1 AND revoked_ms IS NULL",
                args![key_or_prefix, now_ms()],
            )?;
            if n > 0 {
                bump_revocations(db)?;
            }
            Ok(n > 0)
        })
    }

    /// The workspace, seen through the key's scope, of a valid, unrevoked,
    /// unexpired API key.
    pub fn authenticate_api_key(&self, key: &str) -> anyhow::Result<Option<Workspace>> {
        Ok(self.check_api_key(key)?.map(|(ws, _)| ws))
    }

    /// [`Store::authenticate_api_key`], with when the key expires (ms since
    /// the epoch). Runs on every client call, so the statement is compiled
    /// once and cached; the lookup itself is never cached (a revocation by
    /// another process counts at once).
    pub fn check_api_key(&self, key: &str) -> anyhow::Result<Option<(Workspace, Option<i64>)>> {
        let hashed = hash(key);
        let row = self.read(|db| {
            db.query_opt(
                &format!(
                    "SELECT w.id, w.name, k.expires_ms, {SCOPE_COLUMNS}
                     FROM api_keys k JOIN workspaces w ON w.id = k.workspace_id
                     WHERE k.hash = $1 AND k.revoked_ms IS NULL"
                ),
                args![hashed],
            )
        })?;
        let Some(r) = row else {
            return Ok(None);
        };
        let expires = r.opt_int(2)?;
        if expires.is_some_and(|at| at <= now_ms()) {
            return Ok(None);
        }
        Ok(Some((
            Workspace {
                id: r.text(0)?,
                name: r.text(1)?,
                scope: scope_of(&r, 3, None)?,
                source: String::new(),
            },
            expires,
        )))
    }

    /// The workspace, name and listed prefix of the unrevoked key given in
    /// full or by its listed prefix (as [`Store::revoke_api_key`] takes it).
    pub fn key_owner(
        &self,
        key_or_prefix: &str,
    ) -> anyhow::Result<Option<(String, String, String)>> {
        let key_or_prefix = key_or_prefix.trim();
        self.read(|db| {
            db.query_opt(
                "SELECT workspace_id, label, prefix FROM api_keys
                 WHERE (hash = $1 OR prefix = $2) AND revoked_ms IS NULL
                 ORDER BY created_ms LIMIT 1",
                args![hash(key_or_prefix), key_or_prefix],
            )?
            .map(|r| Ok((r.text(0)?, r.text(1)?, r.text(2)?)))
            .transpose()
        })
    }

    /// Every key of a workspace, revoked ones included, oldest first.
    pub fn list_keys(&self, workspace_id: &str) -> anyhow::Result<Vec<KeyInfo>> {
        let rows = self.read(|db| {
            db.query(
                "SELECT prefix, label, allow_ops, machines, created_ms, expires_ms, last_used_ms, revoked_ms
                 FROM api_keys WHERE workspace_id = $1 ORDER BY created_ms, prefix",
                args![workspace_id],
            )
        })?;
        rows.iter()
            .map(|r| {
                Ok(KeyInfo {
                    prefix: r.text(0)?,
                    label: r.text(1)?,
                    allow: r.opt_text(2)?,
                    machines: r.opt_text(3)?,
                    created_ms: r.int(4)?,
                    expires_ms: r.opt_int(5)?,
                    last_used_ms: r.opt_int(6)?,
                    revoked_ms: r.opt_int(7)?,
                })
            })
            .collect()
    }

    /// Records when keys (by hash) were last used; a time never moves back.
    pub fn note_key_use(&self, uses: &[(String, i64)]) -> anyhow::Result<()> {
        if uses.is_empty() {
            return Ok(());
        }
        self.transaction(|db| {
            for (key_hash, at) in uses {
                db.execute(
                    "UPDATE api_keys SET last_used_ms = $2
                     WHERE hash = $1 AND (last_used_ms IS NULL OR last_used_ms < $2)",
                    args![key_hash.as_str(), *at],
                )?;
            }
            Ok(())
        })
    }
}
