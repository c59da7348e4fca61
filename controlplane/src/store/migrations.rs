//! Versioned schema changes for both engines. `schema_version` holds the
//! version a database is at; opening it applies the steps after that, in
//! one transaction holding the store's write lock (SQLite: an immediate
//! transaction; PostgreSQL: an advisory lock), so servers and admin CLIs
//! starting at the same moment do not trip over each other. A database at
//! a newer version than this build knows is refused.
//!
//! Version 1 is the schema of the releases before versioning: on SQLite it
//! is reached from any of them by idempotent steps, so their databases
//! upgrade in place.

use anyhow::bail;

use super::{
    engine::{args, Exec, Kind},
    machines::DEFAULT_ENROLLMENT_TOKEN_TTL,
    ms, schema,
};

/// The schema version this build writes and understands.
pub const LATEST: i64 = 6;

/// Brings the database to [`LATEST`]; run inside a write transaction.
pub fn run(db: &mut dyn Exec) -> anyhow::Result<()> {
    db.batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
             id      BIGINT PRIMARY KEY CHECK (id = 1),
             version BIGINT NOT NULL
         )",
    )?;
    let found = db
        .query_opt("SELECT version FROM schema_version WHERE id = 1", &[])?
        .map(|r| r.int(0))
        .transpose()?;
    let current = found.unwrap_or(0);
    if current > LATEST {
        bail!(
            "the database has schema version {current}, but this cmdop ({}) knows versions up \
             to {LATEST}: a newer cmdop has upgraded it; upgrade cmdop to use this database",
            env!("CARGO_PKG_VERSION")
        );
    }
    for version in current + 1..=LATEST {
        step(db, version)?;
    }
    if found.is_none() {
        db.execute(
            "INSERT INTO schema_version (id, version) VALUES (1, $1)",
            args![LATEST],
        )?;
    } else if current < LATEST {
        db.execute(
            "UPDATE schema_version SET version = $1 WHERE id = 1",
            args![LATEST],
        )?;
    }
    Ok(())
}

fn step(db: &mut dyn Exec, version: i64) -> anyhow::Result<()> {
    match (version, db.kind()) {
        (1, Kind::Sqlite) => sqlite_v1(db),
        (1, Kind::Postgres) => db.batch(POSTGRES_V1),
        (2, _) => db.batch(CLUSTER_V2),
        (3, _) => db.batch(INVENTORY_V3),
        (4, _) => db.batch(KEY_SCOPES_V4),
        (5, _) => db.batch(AUDIT_V5),
        (6, _) => db.batch(REVOCATION_ACKS_V6),
        _ => bail!("no migration to schema version {version}"),
    }
}

/// The unversioned SQLite schema, brought up to date by idempotent steps.
fn sqlite_v1(db: &mut dyn Exec) -> anyhow::Result<()> {
    db.batch(schema::SCHEMA)?;
    if !has_column(db, "machines", "revoked_ms")? {
        db.batch("ALTER TABLE machines ADD COLUMN revoked_ms INTEGER")?;
    }
    if !has_column(db, "enrollment_tokens", "expires_ms")? {
        // Tokens created before expiry existed get the default lifetime
        // counted from their creation.
        db.batch("ALTER TABLE enrollment_tokens ADD COLUMN expires_ms INTEGER")?;
        db.execute(
            "UPDATE enrollment_tokens SET expires_ms = created_ms + $1 WHERE expires_ms IS NULL",
            args![ms(DEFAULT_ENROLLMENT_TOKEN_TTL)],
        )?;
    }
    if !has_column(db, "enrollment_tokens", "revoked_ms")? {
        db.batch("ALTER TABLE enrollment_tokens ADD COLUMN revoked_ms INTEGER")?;
    }
    db.batch(
        "CREATE TABLE IF NOT EXISTS revocation_generation (
             id         INTEGER PRIMARY KEY CHECK (id = 1),
             generation INTEGER NOT NULL
         );
         INSERT OR IGNORE INTO revocation_generation (id, generation) VALUES (1, 0);",
    )
}

fn has_column(db: &mut dyn Exec, table: &str, column: &str) -> anyhow::Result<bool> {
    let rows = db.query(&format!("PRAGMA table_info({table})"), &[])?;
    for row in rows {
        if row.text(1)? == column {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Version 1 on PostgreSQL: the same tables, with 64-bit integers.
const POSTGRES_V1: &str = "
CREATE TABLE IF NOT EXISTS workspaces (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_ms  BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    hash         TEXT PRIMARY KEY,
    prefix       TEXT NOT NULL,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    label        TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    revoked_ms   BIGINT
);
CREATE INDEX IF NOT EXISTS api_keys_prefix ON api_keys(prefix);
CREATE TABLE IF NOT EXISTS enrollment_tokens (
    hash         TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    created_ms   BIGINT NOT NULL,
    used_ms      BIGINT,
    expires_ms   BIGINT,
    revoked_ms   BIGINT
);
CREATE TABLE IF NOT EXISTS machines (
    machine_id   TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    hostname     TEXT NOT NULL,
    secret_hash  TEXT NOT NULL UNIQUE,
    enrolled_ms  BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    revoked_ms   BIGINT
);
CREATE INDEX IF NOT EXISTS machines_workspace ON machines(workspace_id);
CREATE TABLE IF NOT EXISTS token_families (
    id           TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    api_key_hash TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    revoked_ms   BIGINT
);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    hash         TEXT PRIMARY KEY,
    family_id    TEXT NOT NULL REFERENCES token_families(id),
    expires_ms   BIGINT NOT NULL,
    used_ms      BIGINT
);
CREATE TABLE IF NOT EXISTS access_tokens (
    hash         TEXT PRIMARY KEY,
    family_id    TEXT NOT NULL REFERENCES token_families(id),
    expires_ms   BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS access_tokens_family ON access_tokens(family_id);
CREATE TABLE IF NOT EXISTS revocation_generation (
    id         BIGINT PRIMARY KEY CHECK (id = 1),
    generation BIGINT NOT NULL
);
INSERT INTO revocation_generation (id, generation) VALUES (1, 0) ON CONFLICT DO NOTHING;
";

/// Version 2, both engines: replicas' presence and machines' routes
/// (cluster mode).
const CLUSTER_V2: &str = "
CREATE TABLE IF NOT EXISTS replicas (
    replica_id     TEXT PRIMARY KEY,
    peer_addr      TEXT NOT NULL,
    lease_until_ms BIGINT NOT NULL,
    started_ms     BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS routes (
    machine_id   TEXT PRIMARY KEY REFERENCES machines(machine_id),
    workspace_id TEXT NOT NULL,
    replica_id   TEXT NOT NULL,
    session_id   TEXT NOT NULL,
    generation   BIGINT NOT NULL,
    connected_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS routes_session ON routes(session_id);
CREATE INDEX IF NOT EXISTS routes_workspace ON routes(workspace_id);
CREATE INDEX IF NOT EXISTS routes_replica ON routes(replica_id);
";

/// Version 3: machine facts (as last reported) and labels, by source
/// (`agent`: declared by the machine, untrusted; `admin`: set by an admin).
const INVENTORY_V3: &str = "
ALTER TABLE machines ADD COLUMN os TEXT NOT NULL DEFAULT '';
ALTER TABLE machines ADD COLUMN os_version TEXT NOT NULL DEFAULT '';
ALTER TABLE machines ADD COLUMN kernel TEXT NOT NULL DEFAULT '';
ALTER TABLE machines ADD COLUMN arch TEXT NOT NULL DEFAULT '';
ALTER TABLE machines ADD COLUMN cpu_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE machines ADD COLUMN memory_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE machines ADD COLUMN agent_version TEXT NOT NULL DEFAULT '';
CREATE TABLE IF NOT EXISTS machine_labels (
    machine_id TEXT NOT NULL REFERENCES machines(machine_id),
    source     TEXT NOT NULL CHECK (source IN ('agent', 'admin')),
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (machine_id, source, key)
);
";

/// Version 4: API key scopes (operation names and a machine selector over
/// admin labels; NULL: not limited that way), expiry and last use.
const KEY_SCOPES_V4: &str = "
ALTER TABLE api_keys ADD COLUMN allow_ops TEXT;
ALTER TABLE api_keys ADD COLUMN machines TEXT;
ALTER TABLE api_keys ADD COLUMN expires_ms BIGINT;
ALTER TABLE api_keys ADD COLUMN last_used_ms BIGINT;
";

/// Version 5: the audit trail (records hash-chained per workspace, their
/// outcomes, shell recordings, each chain's head and pruning anchor).
const AUDIT_V5: &str = "
CREATE TABLE IF NOT EXISTS audit_records (
    id           BIGINT PRIMARY KEY,
    seq          BIGINT NOT NULL,
    workspace_id TEXT NOT NULL,
    at_ms        BIGINT NOT NULL,
    replica      TEXT NOT NULL,
    actor        TEXT NOT NULL,
    source       TEXT NOT NULL,
    action       TEXT NOT NULL,
    machine_id   TEXT NOT NULL,
    hostname     TEXT NOT NULL,
    detail       TEXT NOT NULL,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL,
    UNIQUE (workspace_id, seq)
);
CREATE INDEX IF NOT EXISTS audit_records_at ON audit_records(at_ms);
CREATE TABLE IF NOT EXISTS audit_outcomes (
    id          BIGINT PRIMARY KEY,
    at_ms       BIGINT NOT NULL,
    outcome     TEXT NOT NULL,
    exit_code   BIGINT,
    bytes_in    BIGINT NOT NULL,
    bytes_out   BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_recordings (
    id        BIGINT PRIMARY KEY,
    asciicast TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_heads (
    workspace_id TEXT PRIMARY KEY,
    seq          BIGINT NOT NULL,
    hash         TEXT NOT NULL,
    pruned_seq   BIGINT NOT NULL,
    pruned_hash  TEXT NOT NULL
);
";

/// Version 6: which revocations each running server has applied to its
/// credential cache, and until when it trusts that cache without reading
/// the revocation counter again (see `store/acks.rs`).
const REVOCATION_ACKS_V6: &str = "
CREATE TABLE IF NOT EXISTS revocation_acks (
    server_id        TEXT PRIMARY KEY,
    generation       BIGINT NOT NULL,
    trusted_until_ms BIGINT NOT NULL
);
";
