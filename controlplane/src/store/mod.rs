//! Durable state in SQLite or PostgreSQL: workspaces, API keys, enrollment
//! tokens, machines and token families. Credentials are stored only as
//! SHA-256 hashes. SQLite runs in WAL mode with a busy timeout, so the admin
//! CLI can open it while the server is running; PostgreSQL is shared by any
//! number of servers and admin CLIs.
//!
//! A store method is written once for both engines: run its statements in
//! `Store::read`, `Store::write` or `Store::transaction` on the
//! [`Exec`] they hand over, in SQL both engines accept (`$1`…`$n`
//! placeholders, `BIGINT` times, `ON CONFLICT … DO UPDATE … RETURNING`),
//! with parameters as `args![…]`:
//!
//! ```ignore
//! self.write(|db| db.execute("UPDATE t SET a = $2 WHERE id = $1", args![id, now_ms()]))
//! ```
//!
//! Schema changes are new steps in `migrations.rs`.

mod acks;
mod audit;
pub mod cluster;
pub mod engine;
mod inventory;
mod keys;
mod machines;
mod migrations;
mod private;
mod schema;
pub mod secrets;
mod standing;
mod tokens;

use parking_lot::Mutex;
use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context};
use rusqlite::{Connection, TransactionBehavior};

pub use acks::{AckReport, CLOCK_MARGIN as ACK_CLOCK_MARGIN};
pub use audit::{AuditEntry, AuditFilter, AuditOutcome, AuditProblem, AuditRecord, AuditReport};
pub use inventory::{Facts, InventoryRow, LabelSource, Labels};
pub use keys::{KeyInfo, NewKey};
pub use machines::{HostnameUpdate, DEFAULT_ENROLLMENT_TOKEN_TTL};
pub use standing::{Credential, Standing};
pub use tokens::{AccessCheck, RefreshOutcome, TokenPair};

use crate::{limits, scope::Scope};
use engine::{args, sqlite::SqliteExec, Exec, Row, Unavailable};
use secrets::{hash, random_hex, random_token};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "cmdop.db";

/// A tenant. Everything else belongs to exactly one workspace.
///
/// As a client's workspace (what the gate found), it carries the caller's
/// [`Scope`]: lookups on its behalf see only the machines that scope
/// allows. Read from the store, it is the whole workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    /// Where the call came from (the client's address, as the gate saw it
    /// or the forwarding replica vouched), for the audit trail; "" when
    /// not a client's call.
    pub source: String,
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
/// On SQLite, two connections: writes go through one (and may wait up to
/// [`WRITE_BUSY_TIMEOUT`] for another process's lock, then fail with a
/// busy error the API answers as UNAVAILABLE "database busy; retry");
/// credential checks and other reads use the other. In WAL mode a reader
/// never waits for a writer, so calls keep being authenticated while the
/// database is locked for writing, and each check still reads the latest
/// committed state (a revocation bites at the next call).
///
/// On PostgreSQL, a pool of connections shared by reads and writes; every
/// call waits at most [`engine::postgres::CALL_TIMEOUT`], and a database
/// that cannot be reached gives errors the API answers as UNAVAILABLE.
/// Credential checks are never cached there either, so a revocation made
/// through any server counts at the next call on every server.
pub struct Store {
    engine: Engine,
}

enum Engine {
    Sqlite {
        conn: Mutex<Connection>,
        read: Mutex<Connection>,
    },
    Postgres(engine::postgres::Pg),
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

/// Whether `s` names a PostgreSQL database (`postgres://…`,
/// `postgresql://…`) rather than a SQLite data directory.
pub fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

impl Store {
    /// Opens the PostgreSQL database `database` when given, else (creating
    /// if needed) `data_dir/cmdop.db`; runs the migrations either way.
    pub fn open_at(data_dir: &Path, database: Option<&str>) -> anyhow::Result<Store> {
        match database {
            Some(url) => Store::connect(url),
            None => Store::open(data_dir),
        }
    }

    /// Connects to a PostgreSQL database (`postgres://user:password@host:port/db`)
    /// and brings its schema up to date. Fails within a few seconds, with
    /// the URL (password hidden) in the message, when it cannot be reached.
    pub fn connect(url: &str) -> anyhow::Result<Store> {
        let pg = engine::postgres::Pg::connect(url)?;
        let store = Store {
            engine: Engine::Postgres(pg),
        };
        store
            .transaction(migrations::run)
            .with_context(|| format!("cannot prepare the database {}", store.describe()))?;
        Ok(store)
    }

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
                Err(err) if attempt < OPEN_RETRIES && is_busy_error(&err) => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(err) => {
                    return Err(err.context(format!("cannot open database {}", path.display())))
                }
            }
        }
    }

    fn open_once(path: &Path) -> anyhow::Result<Store> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(WRITE_BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // SQLite creates the -wal and -shm files with the database's mode.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let read = Connection::open(path)?;
        read.busy_timeout(READ_BUSY_TIMEOUT)?;
        read.pragma_update(None, "query_only", "ON")?;
        read.pragma_update(None, "foreign_keys", "ON")?;
        let store = Store {
            engine: Engine::Sqlite {
                conn: Mutex::new(conn),
                read: Mutex::new(read),
            },
        };
        store.transaction(migrations::run)?;
        Ok(store)
    }

    /// Where the state lives, for messages: the database file, or the
    /// PostgreSQL URL without its password.
    pub fn describe(&self) -> String {
        match &self.engine {
            Engine::Sqlite { conn, .. } => conn
                .lock()
                .path()
                .map(str::to_owned)
                .unwrap_or_else(|| "(in memory)".into()),
            Engine::Postgres(pg) => pg.shown_url().to_owned(),
        }
    }

    /// Woken when a revocation is committed by any process sharing the
    /// database, so watchers need not wait for their next poll. `None` on
    /// SQLite (poll only).
    pub fn revocation_signal(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        match &self.engine {
            Engine::Sqlite { .. } => None,
            Engine::Postgres(pg) => Some(pg.listen_revocations()),
        }
    }

    /// True when calls go over the network (PostgreSQL): then they must not
    /// run on an async worker. SQLite reads are local and never wait for a
    /// writer, so they may run inline.
    pub fn is_networked(&self) -> bool {
        matches!(self.engine, Engine::Postgres(_))
    }

    /// Runs reads `f` (SQLite: on the read connection).
    fn read<T>(&self, f: impl FnOnce(&mut dyn Exec) -> anyhow::Result<T>) -> anyhow::Result<T> {
        match &self.engine {
            Engine::Sqlite { read, .. } => f(&mut SqliteExec(&read.lock())),
            Engine::Postgres(pg) => f(&mut pg.client()?),
        }
    }

    /// Runs single-statement writes `f` (each statement commits by itself).
    fn write<T>(&self, f: impl FnOnce(&mut dyn Exec) -> anyhow::Result<T>) -> anyhow::Result<T> {
        match &self.engine {
            Engine::Sqlite { conn, .. } => f(&mut SqliteExec(&conn.lock())),
            Engine::Postgres(pg) => f(&mut pg.client()?),
        }
    }

    /// Runs `f` in a transaction holding the write lock from its start
    /// (committed when `f` succeeds), so that read-then-write transactions
    /// of several processes run one after the other.
    ///
    /// SQLite: a deferred transaction would fail at once with
    /// SQLITE_BUSY_SNAPSHOT, which the busy timeout does not cover, when
    /// another process writes between its read and its write; an immediate
    /// one waits for that writer instead. PostgreSQL: a transaction-scoped
    /// advisory lock does the same between servers.
    fn transaction<T>(
        &self,
        f: impl FnOnce(&mut dyn Exec) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        match &self.engine {
            Engine::Sqlite { conn, .. } => {
                let mut conn = conn.lock();
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let out = f(&mut SqliteExec(&tx))?;
                tx.commit()?;
                Ok(out)
            }
            Engine::Postgres(pg) => {
                let mut db = pg.client()?;
                // BEGIN and the lock in one round trip.
                let out = db
                    .begin_with("SELECT pg_advisory_xact_lock(7436029418552)")
                    .and_then(|()| f(&mut db));
                match out {
                    Ok(out) => {
                        db.finish(true)?;
                        Ok(out)
                    }
                    Err(e) => {
                        let _ = db.finish(false);
                        Err(e)
                    }
                }
            }
        }
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
            scope: Scope::full(),
            source: String::new(),
        };
        self.write(|db| {
            db.execute(
                "INSERT INTO workspaces (id, name, created_ms) VALUES ($1, $2, $3)",
                args![&ws.id, &ws.name, now_ms()],
            )
        })?;
        Ok(ws)
    }

    /// Looks a workspace up by name.
    pub fn workspace_by_name(&self, name: &str) -> anyhow::Result<Option<Workspace>> {
        self.read(|db| {
            db.query_opt(
                "SELECT id, name FROM workspaces WHERE name = $1",
                args![name],
            )?
            .map(|r| workspace(&r))
            .transpose()
        })
    }

    /// Looks a workspace up by id.
    pub fn workspace_by_id(&self, id: &str) -> anyhow::Result<Option<Workspace>> {
        self.read(|db| {
            db.query_opt("SELECT id, name FROM workspaces WHERE id = $1", args![id])?
                .map(|r| workspace(&r))
                .transpose()
        })
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
        self.transaction(|db| {
            let now = now_ms();
            let workspace = db
                .query_opt(
                    "SELECT w.id, w.name FROM enrollment_tokens t JOIN workspaces w ON w.id = t.workspace_id
                     WHERE t.hash = $1 AND t.used_ms IS NULL AND t.revoked_ms IS NULL AND t.expires_ms > $2",
                    args![hash(token), now],
                )?
                .map(|r| workspace(&r))
                .transpose()?;
            let Some(workspace) = workspace else {
                return Ok(None);
            };
            let used = db.execute(
                "UPDATE enrollment_tokens SET used_ms = $2 WHERE hash = $1 AND used_ms IS NULL",
                args![hash(token), now],
            )?;
            if used == 0 {
                return Ok(None);
            }
            let machine_id = random_hex(secrets::MACHINE_ID_PREFIX, 8);
            let agent_secret = random_token(secrets::AGENT_SECRET_PREFIX, 43);
            db.execute(
                "INSERT INTO machines (machine_id, workspace_id, hostname, secret_hash, enrolled_ms, last_seen_ms)
                 VALUES ($1, $2, $3, $4, $5, $5)",
                args![&machine_id, &workspace.id, hostname, hash(&agent_secret), now],
            )?;
            Ok(Some(Enrollment {
                machine_id,
                agent_secret,
                workspace,
            }))
        })
    }

    /// The machine an agent secret belongs to, unless it was revoked.
    pub fn machine_by_secret(&self, secret: &str) -> anyhow::Result<Option<MachineRow>> {
        self.read(|db| {
            db.query_opt(
                "SELECT machine_id, hostname, workspace_id, last_seen_ms, enrolled_ms FROM machines WHERE secret_hash = $1 AND revoked_ms IS NULL",
                args![hash(secret)],
            )?
            .map(|r| machine_row(&r))
            .transpose()
        })
    }

    /// Records when connected machines were last heard from, in one
    /// transaction: `(machine_id, unix_ms)` pairs; a time earlier than the
    /// one stored is ignored.
    pub fn record_seen(&self, seen: &[(String, i64)]) -> anyhow::Result<()> {
        self.transaction(|db| {
            for (machine_id, at) in seen {
                db.execute(
                    "UPDATE machines SET last_seen_ms = CASE WHEN last_seen_ms < $2 THEN $2 ELSE last_seen_ms END
                     WHERE machine_id = $1",
                    args![machine_id, at],
                )?;
            }
            Ok(())
        })
    }

    /// Unrevoked machines of a workspace, most recently seen first.
    pub fn list_machines(&self, workspace_id: &str) -> anyhow::Result<Vec<MachineRow>> {
        self.read(|db| {
            db.query(
                "SELECT machine_id, hostname, workspace_id, last_seen_ms, enrolled_ms FROM machines
                 WHERE workspace_id = $1 AND revoked_ms IS NULL ORDER BY last_seen_ms DESC, machine_id",
                args![workspace_id],
            )?
            .iter()
            .map(machine_row)
            .collect()
        })
    }
}

/// Counts a revocation, in the transaction that made it: servers watch
/// this number ([`Store::revocation_generation`]) to end what it made
/// invalid.
fn bump_revocations(db: &mut dyn Exec) -> anyhow::Result<()> {
    db.execute(
        "UPDATE revocation_generation SET generation = generation + 1 WHERE id = 1",
        &[],
    )?;
    if db.kind() == engine::Kind::Postgres {
        // Delivered at commit: wakes every server's watcher at once.
        db.batch(&format!("NOTIFY {}", engine::postgres::REVOCATIONS_CHANNEL))?;
    }
    Ok(())
}

fn workspace(r: &Row) -> anyhow::Result<Workspace> {
    Ok(Workspace {
        id: r.text(0)?,
        name: r.text(1)?,
        scope: Scope::full(),
        source: String::new(),
    })
}

/// Attempts of [`Store::open`] while another process holds the database.
const OPEN_RETRIES: u32 = 100;

/// True when `err` (or any error in its chain) is SQLite saying the database
/// is locked by another connection or process.
pub fn is_busy_error(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<rusqlite::Error>())
        .any(|e| {
            matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            )
        })
}

/// True when `err` says the database cannot be reached right now
/// (PostgreSQL down, restarting, unreachable or not answering in time), so
/// that a retry may succeed.
pub fn is_unavailable_error(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<Unavailable>())
}

fn machine_row(r: &Row) -> anyhow::Result<MachineRow> {
    Ok(MachineRow {
        machine_id: r.text(0)?,
        hostname: r.text(1)?,
        workspace_id: r.text(2)?,
        last_seen_unix_ms: r.int(3)?,
        enrolled_at_unix_ms: r.int(4)?,
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
