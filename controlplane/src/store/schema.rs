//! The database layout. Statements are idempotent so opening an existing
//! database is a no-op.

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS workspaces (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    hash         TEXT PRIMARY KEY,
    prefix       TEXT NOT NULL,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    label        TEXT NOT NULL,
    created_ms   INTEGER NOT NULL,
    revoked_ms   INTEGER
);
CREATE INDEX IF NOT EXISTS api_keys_prefix ON api_keys(prefix);
CREATE TABLE IF NOT EXISTS enrollment_tokens (
    hash         TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    created_ms   INTEGER NOT NULL,
    used_ms      INTEGER
);
CREATE TABLE IF NOT EXISTS machines (
    machine_id   TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    hostname     TEXT NOT NULL,
    secret_hash  TEXT NOT NULL UNIQUE,
    enrolled_ms  INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS machines_workspace ON machines(workspace_id);
CREATE TABLE IF NOT EXISTS token_families (
    id           TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    api_key_hash TEXT NOT NULL,
    created_ms   INTEGER NOT NULL,
    revoked_ms   INTEGER
);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    hash         TEXT PRIMARY KEY,
    family_id    TEXT NOT NULL REFERENCES token_families(id),
    expires_ms   INTEGER NOT NULL,
    used_ms      INTEGER
);
CREATE TABLE IF NOT EXISTS access_tokens (
    hash         TEXT PRIMARY KEY,
    family_id    TEXT NOT NULL REFERENCES token_families(id),
    expires_ms   INTEGER NOT NULL
);
";
