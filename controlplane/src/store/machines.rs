//! Machine identity over time: hostname changes, revoking a machine (its
//! agent secret stops working), enrollment-token expiry and revocation,
//! and the revocation generation the server polls to close what a
//! revocation by another process (the admin CLI) made invalid.

use std::time::Duration;

use anyhow::bail;

use super::{
    bump_revocations, engine::args, ms, now_ms, secrets, secrets::hash, secrets::random_token,
    Store,
};

/// How long an enrollment token works when no lifetime is given.
pub const DEFAULT_ENROLLMENT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// What recording a machine's reported hostname did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostnameUpdate {
    /// The stored name already was the reported one (or none was reported).
    Unchanged,
    /// The machine renamed itself; the old name is given.
    Renamed { from: String },
    /// Another machine of the workspace has this name; the stored name
    /// was kept. Its id is given.
    Taken { by: String, kept: String },
}

impl Store {
    /// Creates a single-use enrollment token for `workspace_id` that
    /// expires after `ttl` (at least one second).
    pub fn create_enrollment_token_for(
        &self,
        workspace_id: &str,
        ttl: Duration,
    ) -> anyhow::Result<String> {
        if self.workspace_by_id(workspace_id)?.is_none() {
            bail!("no workspace with id '{workspace_id}'");
        }
        let token = random_token(secrets::ENROLLMENT_TOKEN_PREFIX, 32);
        let now = now_ms();
        let ttl = ttl.max(Duration::from_secs(1));
        self.write(|db| {
            db.execute(
                "INSERT INTO enrollment_tokens (hash, workspace_id, created_ms, expires_ms) VALUES ($1, $2, $3, $4)",
                args![hash(&token), workspace_id, now, now.saturating_add(ms(ttl))],
            )
        })?;
        Ok(token)
    }

    /// Revokes an unused enrollment token. Returns false when the token is
    /// unknown, used or already revoked.
    pub fn revoke_enrollment_token(&self, token: &str) -> anyhow::Result<bool> {
        self.transaction(|db| {
            let n = db.execute(
                "UPDATE enrollment_tokens SET revoked_ms = $2
                 WHERE hash = $1 AND used_ms IS NULL AND revoked_ms IS NULL",
                args![hash(token.trim()), now_ms()],
            )?;
            if n > 0 {
                bump_revocations(db)?;
            }
            Ok(n > 0)
        })
    }

    /// The workspace of an unused, unrevoked enrollment token, if any.
    pub fn enrollment_token_owner(&self, token: &str) -> anyhow::Result<Option<String>> {
        self.read(|db| {
            db.query_opt(
                "SELECT workspace_id FROM enrollment_tokens
                 WHERE hash = $1 AND used_ms IS NULL AND revoked_ms IS NULL",
                args![hash(token.trim())],
            )?
            .map(|r| r.text(0))
            .transpose()
        })
    }

    /// Revokes every unused, unexpired enrollment token of a workspace
    /// (for a token that was lost). Returns how many.
    pub fn revoke_all_enrollment_tokens(&self, workspace_id: &str) -> anyhow::Result<usize> {
        let now = now_ms();
        self.transaction(|db| {
            let n = db.execute(
                "UPDATE enrollment_tokens SET revoked_ms = $2
                 WHERE workspace_id = $1 AND used_ms IS NULL AND revoked_ms IS NULL AND expires_ms > $2",
                args![workspace_id, now],
            )?;
            if n > 0 {
                bump_revocations(db)?;
            }
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    /// Revokes a machine: its agent secret stops working and it leaves the
    /// machine list. Bumps the revocation generation so every running server
    /// closes its connection. Returns false when no unrevoked machine of
    /// that id exists.
    pub fn revoke_machine(&self, machine_id: &str) -> anyhow::Result<bool> {
        self.transaction(|db| {
            let n = db.execute(
                "UPDATE machines SET revoked_ms = $2 WHERE machine_id = $1 AND revoked_ms IS NULL",
                args![machine_id.trim(), now_ms()],
            )?;
            if n > 0 {
                bump_revocations(db)?;
            }
            Ok(n > 0)
        })
    }

    /// A number that changes whenever anything is revoked (an API key, a
    /// token family, a machine, an enrollment token), in the same
    /// transaction as the revocation; cheap to poll.
    pub fn revocation_generation(&self) -> anyhow::Result<i64> {
        self.read(|db| {
            Ok(db
                .query_opt(
                    "SELECT generation FROM revocation_generation WHERE id = 1",
                    &[],
                )?
                .map(|r| r.int(0))
                .transpose()?
                .unwrap_or(0))
        })
    }

    /// Ids of all revoked machines.
    pub fn revoked_machines(&self) -> anyhow::Result<Vec<String>> {
        self.read(|db| {
            db.query(
                "SELECT machine_id FROM machines WHERE revoked_ms IS NOT NULL",
                &[],
            )?
            .iter()
            .map(|r| r.text(0))
            .collect()
        })
    }

    /// Records that a machine was seen now, under the hostname it reported
    /// (empty: keep the stored one). A name another unrevoked machine of
    /// the workspace already has is not stored: machines own their names.
    pub fn touch_machine(
        &self,
        machine_id: &str,
        hostname: &str,
    ) -> anyhow::Result<HostnameUpdate> {
        self.transaction(|db| {
            let now = now_ms();
            let current = db.query_opt(
                "SELECT hostname, workspace_id FROM machines WHERE machine_id = $1",
                args![machine_id],
            )?;
            let Some(current) = current else {
                return Ok(HostnameUpdate::Unchanged);
            };
            let (stored, workspace_id) = (current.text(0)?, current.text(1)?);
            let mut outcome = HostnameUpdate::Unchanged;
            let mut name = stored.clone();
            if !hostname.is_empty() && hostname != stored {
                let owner = db
                    .query_opt(
                        "SELECT machine_id FROM machines
                         WHERE workspace_id = $1 AND machine_id <> $2 AND revoked_ms IS NULL
                           AND lower(hostname) = lower($3)
                         LIMIT 1",
                        args![&workspace_id, machine_id, hostname],
                    )?
                    .map(|r| r.text(0))
                    .transpose()?;
                outcome = match owner {
                    Some(by) => HostnameUpdate::Taken {
                        by,
                        kept: stored.clone(),
                    },
                    None => {
                        name = hostname.to_string();
                        HostnameUpdate::Renamed {
                            from: stored.clone(),
                        }
                    }
                };
            }
            db.execute(
                "UPDATE machines SET last_seen_ms = $2, hostname = $3 WHERE machine_id = $1",
                args![machine_id, now, &name],
            )?;
            Ok(outcome)
        })
    }
}
