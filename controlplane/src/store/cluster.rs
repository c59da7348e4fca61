//! Cluster presence and routes: which replicas are alive (a lease each
//! renews) and which replica holds each machine's agent link. Only used in
//! cluster mode (`cmdop server --peer-listen`); a single server never
//! touches these tables beyond creating them.
//!
//! The SQL is portable (SQLite ≥ 3.35 and PostgreSQL): BIGINT times and
//! generations, `INSERT … ON CONFLICT … RETURNING`.

use std::time::Duration;

use super::{
    engine::{args, Row},
    ms, now_ms, Store,
};

/// One live (or recently live) replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRow {
    pub replica_id: String,
    pub peer_addr: String,
    pub lease_until_ms: i64,
}

/// Where a machine's agent is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRow {
    pub machine_id: String,
    pub workspace_id: String,
    pub replica_id: String,
    pub session_id: String,
    pub generation: i64,
}

/// The tables are created by migration 2 (`migrations.rs`).
fn route_row(r: &Row) -> anyhow::Result<RouteRow> {
    Ok(RouteRow {
        machine_id: r.text(0)?,
        workspace_id: r.text(1)?,
        replica_id: r.text(2)?,
        session_id: r.text(3)?,
        generation: r.int(4)?,
    })
}

const ROUTE_COLUMNS: &str = "machine_id, workspace_id, replica_id, session_id, generation";

impl Store {
    /// Upserts this replica's row with lease_until = now + lease.
    pub fn renew_replica(
        &self,
        replica_id: &str,
        peer_addr: &str,
        lease: Duration,
    ) -> anyhow::Result<()> {
        let now = now_ms();
        self.write(|db| {
            db.execute(
                "INSERT INTO replicas (replica_id, peer_addr, lease_until_ms, started_ms)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT(replica_id) DO UPDATE SET peer_addr = excluded.peer_addr,
                     lease_until_ms = excluded.lease_until_ms",
                args![replica_id, peer_addr, now.saturating_add(ms(lease)), now],
            )
        })?;
        Ok(())
    }

    /// Deletes the replica's row and releases all its routes (graceful shutdown).
    pub fn remove_replica(&self, replica_id: &str) -> anyhow::Result<()> {
        self.transaction(|db| {
            db.execute(
                "UPDATE routes SET replica_id = '', session_id = '' WHERE replica_id = $1",
                args![replica_id],
            )?;
            db.execute(
                "DELETE FROM replicas WHERE replica_id = $1",
                args![replica_id],
            )?;
            Ok(())
        })
    }

    /// Replicas whose lease has not expired.
    pub fn live_replicas(&self) -> anyhow::Result<Vec<ReplicaRow>> {
        self.read(|db| {
            db.query(
                "SELECT replica_id, peer_addr, lease_until_ms FROM replicas
                 WHERE lease_until_ms > $1 ORDER BY replica_id",
                args![now_ms()],
            )?
            .iter()
            .map(|r| {
                Ok(ReplicaRow {
                    replica_id: r.text(0)?,
                    peer_addr: r.text(1)?,
                    lease_until_ms: r.int(2)?,
                })
            })
            .collect()
        })
    }

    /// Records that `machine_id`'s agent is now connected to `replica_id` as `session_id`; returns the
    /// new generation, strictly greater than every earlier one of that machine (rows are never deleted,
    /// so generations survive a release).
    pub fn claim_route(
        &self,
        machine_id: &str,
        replica_id: &str,
        session_id: &str,
    ) -> anyhow::Result<i64> {
        let now = now_ms();
        let row = self.write(|db| {
            db.query_opt(
                "INSERT INTO routes (machine_id, workspace_id, replica_id, session_id, generation, connected_ms)
                 SELECT machine_id, workspace_id, $2, $3, 1, $4 FROM machines WHERE machine_id = $1
                 ON CONFLICT(machine_id) DO UPDATE SET generation = routes.generation + 1,
                     replica_id = excluded.replica_id, session_id = excluded.session_id,
                     connected_ms = excluded.connected_ms
                 RETURNING generation",
                args![machine_id, replica_id, session_id, now],
            )
        })?;
        match row {
            Some(row) => row.int(0),
            None => anyhow::bail!("no machine '{machine_id}' to route"),
        }
    }

    /// Releases the route if it still has `generation` (replica_id and session_id become '').
    pub fn release_route(&self, machine_id: &str, generation: i64) -> anyhow::Result<()> {
        self.write(|db| {
            db.execute(
                "UPDATE routes SET replica_id = '', session_id = ''
                 WHERE machine_id = $1 AND generation = $2",
                args![machine_id, generation],
            )
        })?;
        Ok(())
    }

    /// The current (unreleased) route of a machine.
    pub fn route_of_machine(&self, machine_id: &str) -> anyhow::Result<Option<RouteRow>> {
        self.read(|db| {
            db.query_opt(
                &format!(
                    "SELECT {ROUTE_COLUMNS} FROM routes WHERE machine_id = $1 AND replica_id <> ''"
                ),
                args![machine_id],
            )?
            .as_ref()
            .map(route_row)
            .transpose()
        })
    }

    /// The current (unreleased) route of a session id.
    pub fn route_of_session(&self, session_id: &str) -> anyhow::Result<Option<RouteRow>> {
        if session_id.is_empty() {
            return Ok(None);
        }
        self.read(|db| {
            db.query_opt(
                &format!(
                    "SELECT {ROUTE_COLUMNS} FROM routes WHERE session_id = $1 AND replica_id <> ''
                     ORDER BY generation DESC LIMIT 1"
                ),
                args![session_id],
            )?
            .as_ref()
            .map(route_row)
            .transpose()
        })
    }

    /// The current (unreleased) routes of every machine of a workspace.
    pub fn routes_of_workspace(&self, workspace_id: &str) -> anyhow::Result<Vec<RouteRow>> {
        self.read(|db| {
            db.query(
                &format!(
                    "SELECT {ROUTE_COLUMNS} FROM routes WHERE workspace_id = $1 AND replica_id <> ''
                     ORDER BY machine_id"
                ),
                args![workspace_id],
            )?
            .iter()
            .map(route_row)
            .collect()
        })
    }

    /// The route rows (released ones too) of `machine_ids`, in as few
    /// queries as the engines' parameter limits allow: a replica checks the
    /// routes it has cached against them once a tick.
    pub fn routes_of_machines(&self, machine_ids: &[String]) -> anyhow::Result<Vec<RouteRow>> {
        const CHUNK: usize = 500;
        self.read(|db| {
            let mut out = Vec::with_capacity(machine_ids.len());
            for chunk in machine_ids.chunks(CHUNK) {
                let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
                let params: Vec<_> = chunk.iter().map(super::engine::Value::from).collect();
                for row in db.query(
                    &format!(
                        "SELECT {ROUTE_COLUMNS} FROM routes WHERE machine_id IN ({})",
                        marks.join(", ")
                    ),
                    &params,
                )? {
                    out.push(route_row(&row)?);
                }
            }
            Ok(out)
        })
    }

    /// `(machine_id, generation)` of every route `replica_id` holds, in one
    /// query: a replica compares them with its own links to close the ones
    /// a newer connection elsewhere replaced.
    pub fn routes_of_replica(&self, replica_id: &str) -> anyhow::Result<Vec<(String, i64)>> {
        self.read(|db| {
            db.query(
                "SELECT machine_id, generation FROM routes WHERE replica_id = $1",
                args![replica_id],
            )?
            .iter()
            .map(|r| Ok((r.text(0)?, r.int(1)?)))
            .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_machine() -> (tempfile::TempDir, Store, String) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ws = store.create_workspace("w").unwrap();
        let token = store.create_enrollment_token(&ws.id).unwrap();
        let m = store.enroll_machine(&token, "h").unwrap().unwrap();
        (dir, store, m.machine_id)
    }

    #[test]
    fn generations_grow_and_only_the_current_one_releases() {
        let (_dir, store, m) = store_with_machine();
        let g1 = store.claim_route(&m, "rep_a", "s1").unwrap();
        let g2 = store.claim_route(&m, "rep_c", "s1").unwrap();
        assert!(g2 > g1);
        store.release_route(&m, g1).unwrap();
        let r = store.route_of_machine(&m).unwrap().unwrap();
        assert_eq!((r.replica_id.as_str(), r.generation), ("rep_c", g2));
        assert_eq!(store.route_of_session("s1").unwrap().unwrap(), r);
        assert_eq!(store.routes_of_workspace(&r.workspace_id).unwrap(), vec![r]);
        store.release_route(&m, g2).unwrap();
        assert!(store.route_of_machine(&m).unwrap().is_none());
        let g3 = store.claim_route(&m, "rep_a", "s2").unwrap();
        assert!(g3 > g2, "generations survive a release");
        assert_eq!(
            store.routes_of_replica("rep_a").unwrap(),
            vec![(m.clone(), g3)]
        );
        let rows = store
            .routes_of_machines(&[m.clone(), "mach_none".into()])
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].machine_id.as_str(), rows[0].generation),
            (m.as_str(), g3)
        );
    }

    #[test]
    fn leases_expire_and_removal_releases_routes() {
        let (_dir, store, m) = store_with_machine();
        store
            .renew_replica("rep_a", "127.0.0.1:1", Duration::from_secs(5))
            .unwrap();
        store
            .renew_replica("rep_b", "127.0.0.1:2", Duration::from_millis(0))
            .unwrap();
        let live = store.live_replicas().unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].peer_addr, "127.0.0.1:1");
        store.claim_route(&m, "rep_a", "s1").unwrap();
        store.remove_replica("rep_a").unwrap();
        assert!(store.live_replicas().unwrap().is_empty());
        assert!(store.route_of_machine(&m).unwrap().is_none());
    }
}
