//! Durable state in SQLite: workspaces, API keys, enrollment tokens,
//! machines and token families. Credentials are stored only as SHA-256
//! hashes. The database runs in WAL mode with a busy timeout, so the admin
//! CLI can open it while the server is running.

pub mod cluster;
mod machines;
mod private;
mod schema;
pub mod secrets;
mod standing;
mod tokens;

use std::{
    path::Path,
    sync::{Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

pub use machines::{HostnameUpdate, DEFAULT_ENROLLMENT_TOKEN_TTL};
pub use standing::{Credential, Standing};
pub use tokens::{AccessCheck, RefreshOutcome, TokenPair};

use crate::limits;
use secrets::{hash, random_hex, random_token};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "cmdop.db";

/// A tenant. Everything else belongs to exactly one workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    pub id: String,
    pub name: String,
}

/// An enrolled machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineRow {
    pub machine_id: String,
    pub hostname: String,
    pub workspace_id: String,
    pub last_seen_unix_ms: i64,
    pub enrolled_at_unix_ms: i64,
}

/// What a successful enrollment hands to the agent.
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub machine_id: String,
    pub agent_secret: String,
    pub workspace: Workspace,
}

/// Handle to the database. Cheap operations only; callers share it behind an `Arc`.
///
/// Two connections: writes go through one (and may wait up to
/// [`WRITE_BUSY_TIMEOUT`] for another process's lock, then fail with a
/// busy error the API answers as UNAVAILABLE "database busy; retry");
/// credential checks and other reads use the other. In WAL mode a reader
/// never waits for a writer, so calls keep being authenticated while the
/// database is locked for writing, and each check still reads the latest
/// committed state (a revocation bites at the next call).
pub struct Store {
    conn: Mutex<Connection>,
    read: Mutex<Connection>,
}

/// How long a write waits for a lock held by another process.
pub const WRITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a read waits (only WAL recovery or a truncating checkpoint
/// make readers wait at all).
const READ_BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// Milliseconds since the Unix epoch of `t` (0 before the epoch).
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens (creating if needed) `data_dir/cmdop.db`.
    pub fn open(data_dir: &Path) -> anyhow::Result<Store> {
        private::create_dir(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let path = data_dir.join(DB_FILE);
        private::secure(data_dir, &path)?;
        // Two processes creating the database at the same moment (server and
        // admin CLI) can see SQLITE_BUSY while switching to WAL, which the
        // busy timeout does not cover; retry briefly.
        let mut attempt = 0;
        loop {
            match Self::open_once(&path) {
                Ok(store) => return Ok(store),
                Err(err) if attempt < OPEN_RETRIES && is_busy(&err) => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(err) => {
                    return Err(anyhow::Error::new(err)
                        .context(format!("cannot open database {}", path.display())))
                }
            }
        }
    }

    fn open_once(path: &Path) -> rusqlite::Result<Store> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(WRITE_BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // SQLite creates the -wal and -shm files with the database's mode.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(schema::SCHEMA)?;
        machines::migrate(&mut conn)?;
        cluster::migrate(&conn)?;
        let read = Connection::open(path)?;
        read.busy_timeout(READ_BUSY_TIMEOUT)?;
        read.pragma_update(None, "query_only", "ON")?;
        read.pragma_update(None, "foreign_keys", "ON")?;
        Ok(Store {
            conn: Mutex::new(conn),
            read: Mutex::new(read),
        })
    }

    /// The read connection (see [`Store`]).
    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.read.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a transaction holding the write lock from its first statement.
    /// A read-then-write transaction started the default (deferred) way
    /// fails at once with SQLITE_BUSY_SNAPSHOT, which the busy timeout does
    /// not cover, when another process (the admin CLI) writes between its
    /// read and its write; this one waits for that writer instead.
    fn write_transaction(conn: &mut Connection) -> rusqlite::Result<Transaction<'_>> {
        conn.transaction_with_behavior(TransactionBehavior::Immediate)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (statements are atomic), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a workspace; fails if the name is taken.
    pub fn create_workspace(&self, name: &str) -> anyhow::Result<Workspace> {
        let name = name.trim();
        if name.is_empty() || name.len() > limits::MAX_WORKSPACE_NAME_BYTES {
            bail!(
                "workspace name must be 1 to {} bytes",
                limits::MAX_WORKSPACE_NAME_BYTES
            );
        }
        if self.workspace_by_name(name)?.is_some() {
            bail!("workspace '{name}' already exists");
        }
        let ws = Workspace {
            id: random_hex("ws_", 8),
            name: name.to_string(),
        };
        self.conn().execute(
            "INSERT INTO workspaces (id, name, created_ms) VALUES (?1, ?2, ?3)",
            params![ws.id, ws.name, now_ms()],
        )?;
        Ok(ws)
    }

    /// Looks a workspace up by name.
    pub fn workspace_by_name(&self, name: &str) -> anyhow::Result<Option<Workspace>> {
        Ok(self
            .reader()
            .query_row(
                "SELECT id, name FROM workspaces WHERE name = ?1",
                [name],
                |r| {
                    Ok(Workspace {
                        id: r.get(0)?,
                        name: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// Looks a workspace up by id.
    pub fn workspace_by_id(&self, id: &str) -> anyhow::Result<Option<Workspace>> {
        Ok(self
            .reader()
            .query_row("SELECT id, name FROM workspaces WHERE id = ?1", [id], |r| {
                Ok(Workspace {
                    id: r.get(0)?,
                    name: r.get(1)?,
                })
            })
            .optional()?)
    }

    /// Creates an API key and returns it; only its hash and a short prefix
    /// (for listing and revoking) are stored.
    pub fn create_api_key(&self, workspace_id: &str, label: &str) -> anyhow::Result<String> {
        if label.len() > limits::MAX_LABEL_BYTES {
            bail!("label is longer than {} bytes", limits::MAX_LABEL_BYTES);
        }
        if self.workspace_by_id(workspace_id)?.is_none() {
            bail!("no workspace with id '{workspace_id}'");
        }
        let key = random_token(secrets::API_KEY_PREFIX, 32);
        self.conn().execute(
            "INSERT INTO api_keys (hash, prefix, workspace_id, label, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![hash(&key), api_key_prefix(&key), workspace_id, label, now_ms()],
        )?;
        Ok(key)
    }

    /// Revokes a key given in full or by its listed prefix (at least 10
    /// characters, and matching exactly one key). Returns false when nothing
    /// matched.
    pub fn revoke_api_key(&self, key_or_prefix: &str) -> anyhow::Result<bool> {
        let key_or_prefix = key_or_prefix.trim();
        let conn = self.conn();
        let by_hash = conn.execute(
            "UPDATE api_keys SET revoked_ms = ?2 WHERE hash = ?1 AND revoked_ms IS NULL",
            params![hash(key_or_prefix), now_ms()],
        )?;
        if by_hash > 0 {
            return Ok(true);
        }
        if key_or_prefix.len() < 10 {
            return Ok(false);
        }
        let matches: i64 = conn.query_row(
            "SELECT COUNT(*) FROM api_keys WHERE prefix = ?1 AND revoked_ms IS NULL",
            [key_or_prefix],
            |r| r.get(0),
        )?;
        if matches > 1 {
            bail!("prefix '{key_or_prefix}' matches {matches} keys; pass the whole key");
        }
        let n = conn.execute(
            "UPDATE api_keys SET revoked_ms = ?2 WHERE prefix = ?1 AND revoked_ms IS NULL",
            params![key_or_prefix, now_ms()],
        )?;
        Ok(n > 0)
    }

    /// The workspace of a valid, unrevoked API key. Runs on every client
    /// call, so the statement is compiled once and cached; the lookup itself
    /// is never cached (a revocation by another process counts at once).
    pub fn authenticate_api_key(&self, key: &str) -> anyhow::Result<Option<Workspace>> {
        let hashed = hash(key);
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT w.id, w.name FROM api_keys k JOIN workspaces w ON w.id = k.workspace_id
             WHERE k.hash = ?1 AND k.revoked_ms IS NULL",
        )?;
        let workspace = stmt
            .query_row([hashed], |r| {
                Ok(Workspace {
                    id: r.get(0)?,
                    name: r.get(1)?,
                })
            })
            .optional()?;
        Ok(workspace)
    }

    /// Creates a single-use enrollment token for `workspace_id` that
    /// expires after [`DEFAULT_ENROLLMENT_TOKEN_TTL`].
    pub fn create_enrollment_token(&self, workspace_id: &str) -> anyhow::Result<String> {
        self.create_enrollment_token_for(workspace_id, DEFAULT_ENROLLMENT_TOKEN_TTL)
    }

    /// Consumes an enrollment token and creates a machine. `None` when the
    /// token is unknown, already used, expired or revoked.
    pub fn enroll_machine(
        &self,
        token: &str,
        hostname: &str,
    ) -> anyhow::Result<Option<Enrollment>> {
        let mut conn = self.conn();
        let tx = Self::write_transaction(&mut conn)?;
        let now = now_ms();
        let workspace: Option<Workspace> = tx
            .query_row(
                "SELECT w.id, w.name FROM enrollment_tokens t JOIN workspaces w ON w.id = t.workspace_id
                 WHERE t.hash = ?1 AND t.used_ms IS NULL AND t.revoked_ms IS NULL AND t.expires_ms > ?2",
                params![hash(token), now],
                |r| Ok(Workspace { id: r.get(0)?, name: r.get(1)? }),
            )
            .optional()?;
        let Some(workspace) = workspace else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE enrollment_tokens SET used_ms = ?2 WHERE hash = ?1",
            params![hash(token), now],
        )?;
        let machine_id = random_hex(secrets::MACHINE_ID_PREFIX, 8);
        let agent_secret = random_token(secrets::AGENT_SECRET_PREFIX, 43);
        tx.execute(
            "INSERT INTO machines (machine_id, workspace_id, hostname, secret_hash, enrolled_ms, last_seen_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            params![machine_id, workspace.id, hostname, hash(&agent_secret), now],
        )?;
        tx.commit()?;
        Ok(Some(Enrollment {
            machine_id,
            agent_secret,
            workspace,
        }))
    }

    /// The machine an agent secret belongs to, unless it was revoked.
    pub fn machine_by_secret(&self, secret: &str) -> anyhow::Result<Option<MachineRow>> {
        Ok(self
            .reader()
            .query_row(
                "SELECT machine_id, hostname, workspace_id, last_seen_ms, enrolled_ms FROM machines WHERE secret_hash = ?1 AND revoked_ms IS NULL",
                [hash(secret)],
                machine_row,
            )
            .optional()?)
    }

    /// Records when connected machines were last heard from, in one
    /// transaction: `(machine_id, unix_ms)` pairs; a time earlier than the
    /// one stored is ignored.
    pub fn record_seen(&self, seen: &[(String, i64)]) -> anyhow::Result<()> {
        let mut conn = self.conn();
        let tx = Self::write_transaction(&mut conn)?;
        {
            let mut update = tx.prepare_cached(
                "UPDATE machines SET last_seen_ms = MAX(last_seen_ms, ?2) WHERE machine_id = ?1",
            )?;
            for (machine_id, at) in seen {
                update.execute(params![machine_id, at])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Unrevoked machines of a workspace, most recently seen first.
    pub fn list_machines(&self, workspace_id: &str) -> anyhow::Result<Vec<MachineRow>> {
        let conn = self.reader();
        let mut stmt = conn.prepare(
            "SELECT machine_id, hostname, workspace_id, last_seen_ms, enrolled_ms FROM machines
             WHERE workspace_id = ?1 AND revoked_ms IS NULL ORDER BY last_seen_ms DESC, machine_id",
        )?;
        let rows = stmt.query_map([workspace_id], machine_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Attempts of [`Store::open`] while another process holds the database.
const OPEN_RETRIES: u32 = 100;

/// True when `err` (or any error in its chain) is SQLite saying the database
/// is locked by another connection or process.
pub fn is_busy_error(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<rusqlite::Error>())
        .any(is_busy)
}

fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn machine_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MachineRow> {
    Ok(MachineRow {
        machine_id: r.get(0)?,
        hostname: r.get(1)?,
        workspace_id: r.get(2)?,
        last_seen_unix_ms: r.get(3)?,
        enrolled_at_unix_ms: r.get(4)?,
    })
}

/// The non-secret part of a key shown in listings: the type prefix plus
/// six characters (36 bits; enough to tell keys apart, useless to guess).
pub fn api_key_prefix(key: &str) -> String {
    key.chars()
        .take(secrets::API_KEY_PREFIX.len() + 6)
        .collect()
}

#[cfg(test)]
mod tests;
