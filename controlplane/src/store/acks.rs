//! Acknowledged revocations: each running server's row in
//! `revocation_acks` says which value of the revocation counter it has
//! applied to its credential cache and until when (ms since the epoch) it
//! trusts that cache without reading the counter again. A revoker waits
//! until every server still trusting its cache has applied the revocation
//! ([`Store::wait_for_revocation_acks`]).
//!
//! Times are wall-clock milliseconds written by each server and compared
//! by the revoker, so servers' clocks must agree within [`CLOCK_MARGIN`]
//! (NTP); the revoker waits that much longer for a server that stopped
//! answering.

use std::time::{Duration, Instant};

use super::{engine::args, ms, now_ms, Store};

/// How far apart the clocks of servers and revokers may be.
pub const CLOCK_MARGIN: Duration = Duration::from_secs(1);

/// How often a revoker looks at the acknowledgements while it waits.
const POLL: Duration = Duration::from_millis(10);

/// Rows of servers that stopped trusting their cache longer ago than this
/// are deleted by the next revoker (a server that comes back writes its row
/// again).
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// What a revoker's wait found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckReport {
    /// The counter value waited for.
    pub generation: i64,
    /// How long the wait took.
    pub waited: Duration,
    /// Servers that applied it.
    pub acknowledged: Vec<String>,
    /// Servers whose trust ran out while waiting (they check every
    /// credential in the database again).
    pub lapsed: Vec<String>,
    /// Servers still trusting an older value when the wait gave up.
    pub pending: Vec<String>,
}

impl Store {
    /// One statement a server runs per look at the revocation counter:
    /// records that it has applied `applied` and trusts its cache until
    /// `trusted_until_ms`, and returns the counter's current value. The
    /// server trusts its cache only when the answer equals `applied`.
    pub fn ack_revocations(
        &self,
        server_id: &str,
        applied: i64,
        trusted_until_ms: i64,
    ) -> anyhow::Result<i64> {
        let row = self.write(|db| {
            db.query_opt(
                "INSERT INTO revocation_acks (server_id, generation, trusted_until_ms)
                 VALUES ($1, $2, $3)
                 ON CONFLICT(server_id) DO UPDATE SET generation = excluded.generation,
                     trusted_until_ms = excluded.trusted_until_ms
                 RETURNING (SELECT generation FROM revocation_generation WHERE id = 1)",
                args![server_id, applied, trusted_until_ms],
            )
        })?;
        match row {
            Some(row) => row.int(0),
            None => anyhow::bail!("the revocation counter is missing from the database"),
        }
    }

    /// Removes a stopping server's row (it trusts nothing any more).
    pub fn drop_revocation_ack(&self, server_id: &str) -> anyhow::Result<()> {
        self.write(|db| {
            db.execute(
                "DELETE FROM revocation_acks WHERE server_id = $1",
                args![server_id],
            )
        })?;
        Ok(())
    }

    /// Waits until every server that trusts its credential cache has
    /// applied revocation counter value `generation`, or its trust ran out
    /// (plus [`CLOCK_MARGIN`]), for at most `max`. Servers whose trust had
    /// already run out when the wait began are not waited for.
    pub fn wait_for_revocation_acks(
        &self,
        generation: i64,
        max: Duration,
    ) -> anyhow::Result<AckReport> {
        let started = Instant::now();
        let forget_before = now_ms().saturating_sub(ms(FORGET_AFTER));
        self.write(|db| {
            db.execute(
                "DELETE FROM revocation_acks WHERE trusted_until_ms < $1",
                args![forget_before],
            )
        })?;
        let margin = ms(CLOCK_MARGIN);
        let mut report = AckReport {
            generation,
            ..Default::default()
        };
        // Servers seen trusting an older value.
        let mut waiting: Vec<String> = Vec::new();
        loop {
            let rows: Vec<(String, i64, i64)> = self.read(|db| {
                db.query(
                    "SELECT server_id, generation, trusted_until_ms FROM revocation_acks
                     ORDER BY server_id",
                    &[],
                )?
                .iter()
                .map(|r| Ok((r.text(0)?, r.int(1)?, r.int(2)?)))
                .collect()
            })?;
            let now = now_ms();
            let mut pending = Vec::new();
            for (id, applied, until) in rows {
                let trusting = until.saturating_add(margin) > now;
                let known = waiting.contains(&id);
                if applied >= generation && (trusting || known) {
                    if !report.acknowledged.contains(&id) && !report.lapsed.contains(&id) {
                        report.acknowledged.push(id);
                    }
                } else if trusting {
                    pending.push(id);
                } else if known && !report.lapsed.contains(&id) {
                    report.lapsed.push(id);
                }
            }
            for id in &pending {
                if !waiting.contains(id) {
                    waiting.push(id.clone());
                }
            }
            // A server waited for whose row went (it stopped) counts as lapsed.
            for id in &waiting {
                let seen = pending.contains(id)
                    || report.acknowledged.contains(id)
                    || report.lapsed.contains(id);
                if !seen {
                    report.lapsed.push(id.clone());
                }
            }
            report.waited = started.elapsed();
            if pending.is_empty() {
                return Ok(report);
            }
            if report.waited >= max {
                report.pending = pending;
                return Ok(report);
            }
            std::thread::sleep(POLL);
        }
    }
}
