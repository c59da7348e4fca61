//! The audit trail: one record per action on a machine and per admin
//! action, hash-chained per workspace so that a record changed, removed or
//! reordered in the database is found by [`Store::verify_audit`].
//!
//! A record is written before its action proceeds; what the action came to
//! (exit code, bytes, duration) follows as its outcome row, bound to the
//! record by a hash of its own. Records never hold a secret: actors are key
//! names and prefixes and token family ids, env variables appear by name.
//!
//! Chain: `hash = sha256(prev_hash ␟ id ␟ seq ␟ workspace ␟ fields…)`, with
//! `seq` counting from 1 per workspace and `audit_heads` holding each
//! workspace's last `(seq, hash)` (so removing the newest records shows) and
//! where pruning cut the chain (so it still verifies after old records are
//! pruned). Appends run in the store's write transaction, which serializes
//! them across processes and servers.

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::{engine::args, engine::Exec, engine::Row, engine::Value, now_ms, Store};

/// A record to append.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditEntry {
    pub workspace_id: String,
    pub at_ms: i64,
    /// The replica (or `admin` for the admin CLI) that wrote it.
    pub replica: String,
    /// Who acted: a key's name and prefix (and token family), or `admin`.
    pub actor: String,
    /// The client's address.
    pub source: String,
    /// What was done: `exec`, `file.read`, `key.create` … (see the README).
    pub action: String,
    pub machine_id: String,
    pub hostname: String,
    /// The action's details as a JSON object (command, cwd, env names,
    /// path, bytes, direction, method …).
    pub detail: String,
}

/// What an action came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditOutcome {
    /// `ok`, `exit 3`, `killed by signal 9`, `timed out`, `outcome unknown`,
    /// `failed: …`, `cancelled` …
    pub outcome: String,
    pub exit_code: Option<i64>,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub duration_ms: i64,
}

/// A stored record with its outcome, if one was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Unique over the whole trail, in the order records were written.
    pub id: i64,
    pub seq: i64,
    pub entry: AuditEntry,
    pub outcome: Option<AuditOutcome>,
}

/// Which records [`Store::audit_records`] returns.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub workspace_id: Option<String>,
    /// Only records with an id above this (for following the trail).
    pub after_id: i64,
    pub since_ms: Option<i64>,
    /// A machine id or hostname (exact, hostname case-insensitive).
    pub machine: Option<String>,
    /// Part of the actor (a key's name or prefix).
    pub actor: Option<String>,
    /// An action, or a prefix of one ending in `.` (`file.`).
    pub action: Option<String>,
    pub limit: usize,
}

/// The first thing [`Store::verify_audit`] found wrong, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditProblem {
    pub workspace_id: String,
    /// The record where the chain breaks (its id), when one is to blame.
    pub record_id: Option<i64>,
    pub what: String,
}

/// What a verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    pub records: u64,
    pub workspaces: u64,
    pub problem: Option<AuditProblem>,
}

fn sha(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update([0x1f]);
        }
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

fn record_hash(prev: &str, id: i64, seq: i64, e: &AuditEntry) -> String {
    sha(&[
        prev,
        &id.to_string(),
        &seq.to_string(),
        &e.workspace_id,
        &e.at_ms.to_string(),
        &e.replica,
        &e.actor,
        &e.source,
        &e.action,
        &e.machine_id,
        &e.hostname,
        &e.detail,
    ])
}

fn outcome_hash(record_hash: &str, o: &AuditOutcome) -> String {
    sha(&[
        record_hash,
        &o.outcome,
        &o.exit_code.map(|c| c.to_string()).unwrap_or_default(),
        &o.bytes_in.to_string(),
        &o.bytes_out.to_string(),
        &o.duration_ms.to_string(),
    ])
}

const RECORD_COLUMNS: &str = "r.id, r.seq, r.workspace_id, r.at_ms, r.replica, r.actor, r.source, \
     r.action, r.machine_id, r.hostname, r.detail, r.prev_hash, r.hash, \
     o.outcome, o.exit_code, o.bytes_in, o.bytes_out, o.duration_ms, o.hash";

/// A row of [`RECORD_COLUMNS`]: the record, its stored hashes and outcome.
struct Stored {
    record: AuditRecord,
    prev_hash: String,
    hash: String,
    outcome_hash: Option<String>,
}

fn stored(r: &Row) -> anyhow::Result<Stored> {
    let outcome = match r.opt_text(13)? {
        Some(outcome) => Some(AuditOutcome {
            outcome,
            exit_code: r.opt_int(14)?,
            bytes_in: r.int(15)?,
            bytes_out: r.int(16)?,
            duration_ms: r.int(17)?,
        }),
        None => None,
    };
    Ok(Stored {
        record: AuditRecord {
            id: r.int(0)?,
            seq: r.int(1)?,
            entry: AuditEntry {
                workspace_id: r.text(2)?,
                at_ms: r.int(3)?,
                replica: r.text(4)?,
                actor: r.text(5)?,
                source: r.text(6)?,
                action: r.text(7)?,
                machine_id: r.text(8)?,
                hostname: r.text(9)?,
                detail: r.text(10)?,
            },
            outcome,
        },
        prev_hash: r.text(11)?,
        hash: r.text(12)?,
        outcome_hash: r.opt_text(18)?,
    })
}

impl Store {
    /// Appends records (in order) in one transaction; returns their ids.
    pub fn append_audit(&self, entries: &[AuditEntry]) -> anyhow::Result<Vec<i64>> {
        self.write_audit(entries, &[], &[])
    }

    /// Records what the actions of records `id` came to (once each).
    pub fn finish_audit(&self, outcomes: &[(i64, AuditOutcome)]) -> anyhow::Result<()> {
        self.write_audit(&[], outcomes, &[]).map(drop)
    }

    /// Stores the asciicast recording of record `id`'s shell session, bound
    /// to the record by a hash.
    pub fn save_recording(&self, id: i64, cast: &str) -> anyhow::Result<()> {
        self.write_audit(&[], &[], &[(id, cast.to_string())])
            .map(drop)
    }

    /// One group commit: appends `entries` (in order), then records
    /// `outcomes` and `recordings` of earlier records, in one transaction.
    /// Returns the new records' ids.
    pub fn write_audit(
        &self,
        entries: &[AuditEntry],
        outcomes: &[(i64, AuditOutcome)],
        recordings: &[(i64, String)],
    ) -> anyhow::Result<Vec<i64>> {
        if entries.is_empty() && outcomes.is_empty() && recordings.is_empty() {
            return Ok(Vec::new());
        }
        self.transaction(|db| {
            let ids = append_in(db, entries)?;
            let hashes = hashes_of(db, outcomes.iter().map(|(id, _)| *id))?;
            let mut rows: Vec<Value> = Vec::with_capacity(outcomes.len() * 8);
            for (id, o) in outcomes {
                let Some(hash) = hashes.get(id) else {
                    continue;
                };
                rows.extend([
                    Value::from(*id),
                    Value::from(now_ms()),
                    Value::from(o.outcome.as_str()),
                    Value::from(o.exit_code),
                    Value::from(o.bytes_in),
                    Value::from(o.bytes_out),
                    Value::from(o.duration_ms),
                    Value::from(outcome_hash(hash, o)),
                ]);
            }
            for chunk in rows.chunks(8 * ROWS_PER_STATEMENT) {
                db.execute(
                    &format!(
                        "INSERT INTO audit_outcomes (id, at_ms, outcome, exit_code, bytes_in, bytes_out, duration_ms, hash)
                         VALUES {}
                         ON CONFLICT (id) DO NOTHING",
                        placeholders(chunk.len() / 8, 8)
                    ),
                    chunk,
                )?;
            }
            for (id, cast) in recordings {
                let Some(hash) = hash_of(db, *id)? else {
                    continue;
                };
                db.execute(
                    "INSERT INTO audit_recordings (id, asciicast, hash) VALUES ($1, $2, $3)
                     ON CONFLICT (id) DO NOTHING",
                    args![*id, cast.as_str(), sha(&[&hash, cast])],
                )?;
            }
            Ok(ids)
        })
    }

    /// The recording of record `id`, if it has one.
    pub fn recording(&self, id: i64) -> anyhow::Result<Option<String>> {
        self.read(|db| {
            db.query_opt(
                "SELECT asciicast FROM audit_recordings WHERE id = $1",
                args![id],
            )?
            .map(|r| r.text(0))
            .transpose()
        })
    }

    /// Records matching `filter`, oldest first, and the id of the newest
    /// record looked at (matching or not; `filter.after_id` when none), for
    /// following the trail with `after_id`.
    pub fn audit_records(&self, filter: &AuditFilter) -> anyhow::Result<(Vec<AuditRecord>, i64)> {
        let limit = if filter.limit == 0 {
            1000
        } else {
            filter.limit
        };
        let rows = self.read(|db| {
            db.query(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM audit_records r
                     LEFT JOIN audit_outcomes o ON o.id = r.id
                     WHERE r.id > $1 AND r.at_ms >= $2 AND ($3 = '' OR r.workspace_id = $3)
                     ORDER BY r.id LIMIT $4"
                ),
                args![
                    filter.after_id,
                    filter.since_ms.unwrap_or(0),
                    filter.workspace_id.clone().unwrap_or_default(),
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
            )
        })?;
        let mut out = Vec::new();
        let mut scanned_to = filter.after_id;
        for r in &rows {
            let rec = stored(r)?.record;
            scanned_to = scanned_to.max(rec.id);
            let e = &rec.entry;
            if let Some(m) = &filter.machine {
                if e.machine_id != *m && !e.hostname.eq_ignore_ascii_case(m) {
                    continue;
                }
            }
            if let Some(a) = &filter.actor {
                if !e.actor.contains(a.as_str()) {
                    continue;
                }
            }
            if let Some(a) = &filter.action {
                let hit = if a.ends_with('.') {
                    e.action.starts_with(a.as_str())
                } else {
                    e.action == *a
                };
                if !hit {
                    continue;
                }
            }
            out.push(rec);
        }
        Ok((out, scanned_to))
    }

    /// Walks every workspace's chain (or one's) and reports the first
    /// record changed, removed or out of order.
    pub fn verify_audit(&self, workspace_id: Option<&str>) -> anyhow::Result<AuditReport> {
        self.read(|db| {
            let mut report = AuditReport {
                records: 0,
                workspaces: 0,
                problem: None,
            };
            let mut workspaces: Vec<String> = db
                .query(
                    "SELECT DISTINCT workspace_id FROM audit_records
                     UNION SELECT workspace_id FROM audit_heads",
                    &[],
                )?
                .iter()
                .map(|r| r.text(0))
                .collect::<anyhow::Result<_>>()?;
            workspaces.sort();
            if let Some(only) = workspace_id {
                workspaces.retain(|w| w == only);
            }
            for ws in workspaces {
                report.workspaces += 1;
                if let Some(problem) = verify_workspace(db, &ws, &mut report.records)? {
                    report.problem = Some(problem);
                    break;
                }
            }
            Ok(report)
        })
    }

    /// Deletes records older than `before_ms` (and their outcomes), moving
    /// each chain's anchor past them so what remains still verifies.
    /// Returns how many records went.
    pub fn prune_audit(&self, before_ms: i64) -> anyhow::Result<u64> {
        self.transaction(|db| {
            let cut: Vec<(String, i64, String)> = db
                .query(
                    "SELECT r.workspace_id, r.seq, r.hash FROM audit_records r
                     WHERE r.seq = (SELECT MAX(seq) FROM audit_records x
                                    WHERE x.workspace_id = r.workspace_id AND x.at_ms < $1)",
                    args![before_ms],
                )?
                .iter()
                .map(|r| Ok((r.text(0)?, r.int(1)?, r.text(2)?)))
                .collect::<anyhow::Result<_>>()?;
            let mut gone = 0;
            for (ws, seq, hash) in cut {
                db.execute(
                    "DELETE FROM audit_outcomes WHERE id IN
                       (SELECT id FROM audit_records WHERE workspace_id = $1 AND seq <= $2)",
                    args![ws.as_str(), seq],
                )?;
                db.execute(
                    "DELETE FROM audit_recordings WHERE id IN
                       (SELECT id FROM audit_records WHERE workspace_id = $1 AND seq <= $2)",
                    args![ws.as_str(), seq],
                )?;
                gone += db.execute(
                    "DELETE FROM audit_records WHERE workspace_id = $1 AND seq <= $2",
                    args![ws.as_str(), seq],
                )?;
                db.execute(
                    "UPDATE audit_heads SET pruned_seq = $2, pruned_hash = $3 WHERE workspace_id = $1",
                    args![ws.as_str(), seq, hash],
                )?;
            }
            Ok(gone)
        })
    }
}

/// Rows per multi-row INSERT or IN list: one statement instead of one per
/// row, with a bounded number of distinct statements to prepare and cache.
const ROWS_PER_STATEMENT: usize = 32;

/// `($k, $k+1, …)` groups for `rows` rows of `width` parameters each.
fn placeholders(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| {
            let cols: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
            format!("({})", cols.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Appends `entries` in order; each workspace's head is read once. The
/// next id and the first workspace's head come in one statement and the
/// records go in multi-row INSERTs, so that a group commit costs a few
/// round trips to PostgreSQL however many records it holds.
fn append_in(db: &mut dyn Exec, entries: &[AuditEntry]) -> anyhow::Result<Vec<i64>> {
    let Some(first) = entries.first() else {
        return Ok(Vec::new());
    };
    let start = db
        .query_opt(
            "SELECT (SELECT COALESCE(MAX(id), 0) FROM audit_records),
                    (SELECT seq FROM audit_heads WHERE workspace_id = $1),
                    (SELECT hash FROM audit_heads WHERE workspace_id = $1)",
            args![first.workspace_id.as_str()],
        )?
        .context("the audit trail's next id could not be read")?;
    let first_id = start.int(0)? + 1;
    let mut heads: std::collections::HashMap<&str, (i64, String)> = Default::default();
    heads.insert(
        &first.workspace_id,
        (
            start.opt_int(1)?.unwrap_or(0),
            start.opt_text(2)?.unwrap_or_default(),
        ),
    );
    let mut ids = Vec::with_capacity(entries.len());
    let mut rows: Vec<Value> = Vec::with_capacity(entries.len() * 13);
    for (id, e) in (first_id..).zip(entries) {
        let (seq, prev) = match heads.remove(e.workspace_id.as_str()) {
            Some(head) => head,
            None => head(db, &e.workspace_id)?,
        };
        let seq = seq + 1;
        let hash = record_hash(&prev, id, seq, e);
        rows.extend([
            Value::from(id),
            Value::from(seq),
            Value::from(e.workspace_id.as_str()),
            Value::from(e.at_ms),
            Value::from(e.replica.as_str()),
            Value::from(e.actor.as_str()),
            Value::from(e.source.as_str()),
            Value::from(e.action.as_str()),
            Value::from(e.machine_id.as_str()),
            Value::from(e.hostname.as_str()),
            Value::from(e.detail.as_str()),
            Value::from(prev),
            Value::from(hash.as_str()),
        ]);
        heads.insert(&e.workspace_id, (seq, hash));
        ids.push(id);
    }
    for chunk in rows.chunks(13 * ROWS_PER_STATEMENT) {
        db.execute(
            &format!(
                "INSERT INTO audit_records (id, seq, workspace_id, at_ms, replica, actor, source,
                     action, machine_id, hostname, detail, prev_hash, hash)
                 VALUES {}",
                placeholders(chunk.len() / 13, 13)
            ),
            chunk,
        )?;
    }
    for (ws, (seq, hash)) in heads {
        db.execute(
            "INSERT INTO audit_heads (workspace_id, seq, hash, pruned_seq, pruned_hash)
             VALUES ($1, $2, $3, 0, '')
             ON CONFLICT (workspace_id) DO UPDATE SET seq = $2, hash = $3",
            args![ws, seq, hash],
        )?;
    }
    Ok(ids)
}

/// The stored hashes of the records `ids` (missing ones left out), in
/// IN lists of [`ROWS_PER_STATEMENT`].
fn hashes_of(
    db: &mut dyn Exec,
    ids: impl Iterator<Item = i64>,
) -> anyhow::Result<std::collections::HashMap<i64, String>> {
    let ids: Vec<Value> = ids.map(Value::from).collect();
    let mut found = std::collections::HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        for r in db.query(
            &format!(
                "SELECT id, hash FROM audit_records WHERE id IN ({})",
                list.join(", ")
            ),
            chunk,
        )? {
            found.insert(r.int(0)?, r.text(1)?);
        }
    }
    Ok(found)
}

/// The stored hash of record `id`, if it exists.
fn hash_of(db: &mut dyn Exec, id: i64) -> anyhow::Result<Option<String>> {
    db.query_opt("SELECT hash FROM audit_records WHERE id = $1", args![id])?
        .map(|r| r.text(0))
        .transpose()
}

/// A workspace's last `(seq, hash)`: `(0, "")` before its first record.
fn head(db: &mut dyn Exec, workspace_id: &str) -> anyhow::Result<(i64, String)> {
    Ok(
        match db.query_opt(
            "SELECT seq, hash FROM audit_heads WHERE workspace_id = $1",
            args![workspace_id],
        )? {
            Some(r) => (r.int(0)?, r.text(1)?),
            None => (0, String::new()),
        },
    )
}

fn verify_workspace(
    db: &mut dyn Exec,
    ws: &str,
    count: &mut u64,
) -> anyhow::Result<Option<AuditProblem>> {
    let problem = |record_id: Option<i64>, what: String| {
        Ok(Some(AuditProblem {
            workspace_id: ws.to_string(),
            record_id,
            what,
        }))
    };
    let anchor = db.query_opt(
        "SELECT seq, hash, pruned_seq, pruned_hash FROM audit_heads WHERE workspace_id = $1",
        args![ws],
    )?;
    let Some(anchor) = anchor else {
        return problem(
            None,
            "records exist but the chain's head is missing (audit_heads was edited)".into(),
        );
    };
    let (head_seq, head_hash) = (anchor.int(0)?, anchor.text(1)?);
    let (mut seq, mut prev) = (anchor.int(2)?, anchor.text(3)?);
    let rows = db
        .query(
            &format!(
                "SELECT {RECORD_COLUMNS} FROM audit_records r
                 LEFT JOIN audit_outcomes o ON o.id = r.id
                 WHERE r.workspace_id = $1 ORDER BY r.seq"
            ),
            args![ws],
        )
        .context("reading the audit trail")?;
    for row in &rows {
        let s = stored(row)?;
        let id = s.record.id;
        seq += 1;
        if s.record.seq != seq {
            return problem(
                Some(id),
                format!(
                    "record {id} has number {} where {seq} belongs: records before it were removed",
                    s.record.seq
                ),
            );
        }
        if s.prev_hash != prev {
            return problem(
                Some(id),
                format!("record {id} does not follow the record before it (reordered or replaced)"),
            );
        }
        if record_hash(&prev, id, seq, &s.record.entry) != s.hash {
            return problem(Some(id), format!("record {id} was changed"));
        }
        if let (Some(o), Some(h)) = (&s.record.outcome, &s.outcome_hash) {
            if outcome_hash(&s.hash, o) != *h {
                return problem(Some(id), format!("the outcome of record {id} was changed"));
            }
        }
        if let Some(r) = db.query_opt(
            "SELECT asciicast, hash FROM audit_recordings WHERE id = $1",
            args![id],
        )? {
            if sha(&[&s.hash, &r.text(0)?]) != r.text(1)? {
                return problem(
                    Some(id),
                    format!("the recording of record {id} was changed"),
                );
            }
        }
        *count += 1;
        prev = s.hash;
    }
    if seq != head_seq || prev != head_hash {
        return problem(
            None,
            format!("records after number {seq} were removed (the chain's head is at {head_seq})"),
        );
    }
    Ok(None)
}
