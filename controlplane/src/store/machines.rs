//! Machine identity over time: hostname changes, revoking a machine (its
//! agent secret stops working), enrollment-token expiry and revocation,
//! and the revocation generation the server polls to close what a
//! revocation by another process (the admin CLI) made invalid.

use std::time::Duration;

use anyhow::bail;
use rusqlite::{params, Connection, OptionalExtension};

use super::{ms, now_ms, secrets, secrets::hash, secrets::random_token, Store};

/// How long an enrollment token works when no lifetime is given.
pub const DEFAULT_ENROLLMENT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Columns and tables added after the first release. Each step checks
/// whether it already ran, so opening any older database upgrades it. All
/// steps run in one write transaction: the server and the admin CLI may
/// open the same old database at the same moment.
pub(super) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    migrate_in(&tx)?;
    tx.commit()
}

fn migrate_in(conn: &Connection) -> rusqlite::Result<()> {
    if !has_column(conn, "machines", "revoked_ms")? {
        conn.execute_batch("ALTER TABLE machines ADD COLUMN revoked_ms INTEGER")?;
    }
    if !has_column(conn, "enrollment_tokens", "expires_ms")? {
        // Tokens created before expiry existed get the default lifetime
        // counted from their creation.
        conn.execute_batch("ALTER TABLE enrollment_tokens ADD COLUMN expires_ms INTEGER")?;
        conn.execute(
            "UPDATE enrollment_tokens SET expires_ms = created_ms + ?1 WHERE expires_ms IS NULL",
            [ms(DEFAULT_ENROLLMENT_TOKEN_TTL)],
        )?;
    }
    if !has_column(conn, "enrollment_tokens", "revoked_ms")? {
        conn.execute_batch("ALTER TABLE enrollment_tokens ADD COLUMN revoked_ms INTEGER")?;
    }
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS revocation_generation (
             id         INTEGER PRIMARY KEY CHECK (id = 1),
             generation INTEGER NOT NULL
         );
         INSERT OR IGNORE INTO revocation_generation (id, generation) VALUES (1, 0);",
    )?;
    Ok(())
}

fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
    for name in names {
        if name? == column {
            return Ok(true);
        }
    }
    Ok(false)
}

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
        self.conn().execute(
            "INSERT INTO enrollment_tokens (hash, workspace_id, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4)",
            params![hash(&token), workspace_id, now, now.saturating_add(ms(ttl))],
        )?;
        Ok(token)
    }

    /// Revokes an unused enrollment token. Returns false when the token is
    /// unknown, used or already revoked.
    pub fn revoke_enrollment_token(&self, token: &str) -> anyhow::Result<bool> {
        let n = self.conn().execute(
            "UPDATE enrollment_tokens SET revoked_ms = ?2
             WHERE hash = ?1 AND used_ms IS NULL AND revoked_ms IS NULL",
            params![hash(token.trim()), now_ms()],
        )?;
        Ok(n > 0)
    }

    /// Revokes every unused, unexpired enrollment token of a workspace
    /// (for a token that was lost). Returns how many.
    pub fn revoke_all_enrollment_tokens(&self, workspace_id: &str) -> anyhow::Result<usize> {
        let now = now_ms();
        Ok(self.conn().execute(
            "UPDATE enrollment_tokens SET revoked_ms = ?2
             WHERE workspace_id = ?1 AND used_ms IS NULL AND revoked_ms IS NULL AND expires_ms > ?2",
            params![workspace_id, now],
        )?)
    }

    /// Revokes a machine: its agent secret stops working and it leaves the
    /// machine list. Bumps the revocation generation so a running server
    /// closes its connection. Returns false when no unrevoked machine of
    /// that id exists.
    pub fn revoke_machine(&self, machine_id: &str) -> anyhow::Result<bool> {
        let mut conn = self.conn();
        let tx = Self::write_transaction(&mut conn)?;
        let n = tx.execute(
            "UPDATE machines SET revoked_ms = ?2 WHERE machine_id = ?1 AND revoked_ms IS NULL",
            params![machine_id.trim(), now_ms()],
        )?;
        if n > 0 {
            tx.execute(
                "UPDATE revocation_generation SET generation = generation + 1 WHERE id = 1",
                [],
            )?;
        }
        tx.commit()?;
        Ok(n > 0)
    }

    /// A number that changes whenever a machine is revoked; cheap to poll.
    pub fn revocation_generation(&self) -> anyhow::Result<i64> {
        Ok(self
            .reader()
            .prepare_cached("SELECT generation FROM revocation_generation WHERE id = 1")?
            .query_row([], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    /// Ids of all revoked machines.
    pub fn revoked_machines(&self) -> anyhow::Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached("SELECT machine_id FROM machines WHERE revoked_ms IS NOT NULL")?;
        let ids = stmt.query_map([], |r| r.get(0))?;
        Ok(ids.collect::<Result<_, _>>()?)
    }

    /// Records that a machine was seen now, under the hostname it reported
    /// (empty: keep the stored one). A name another unrevoked machine of
    /// the workspace already has is not stored: machines own their names.
    pub fn touch_machine(
        &self,
        machine_id: &str,
        hostname: &str,
    ) -> anyhow::Result<HostnameUpdate> {
        let mut conn = self.conn();
        let tx = Self::write_transaction(&mut conn)?;
        let now = now_ms();
        let current: Option<(String, String)> = tx
            .query_row(
                "SELECT hostname, workspace_id FROM machines WHERE machine_id = ?1",
                [machine_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((stored, workspace_id)) = current else {
            return Ok(HostnameUpdate::Unchanged);
        };
        let mut outcome = HostnameUpdate::Unchanged;
        let mut name = stored.clone();
        if !hostname.is_empty() && hostname != stored {
            let owner: Option<String> = tx
                .query_row(
                    "SELECT machine_id FROM machines
                     WHERE workspace_id = ?1 AND machine_id <> ?2 AND revoked_ms IS NULL
                       AND lower(hostname) = lower(?3)
                     LIMIT 1",
                    params![workspace_id, machine_id, hostname],
                    |r| r.get(0),
                )
                .optional()?;
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
        tx.execute(
            "UPDATE machines SET last_seen_ms = ?2, hostname = ?3 WHERE machine_id = ?1",
            params![machine_id, now, name],
        )?;
        tx.commit()?;
        Ok(outcome)
    }
}
