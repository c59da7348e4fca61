//! The lease and the routes this replica holds.
//!
//! Every [`TICK`] the replica renews its lease, reads the live replicas,
//! checks the routes it has cached, and reads the routes still recorded as
//! its own (one query each), closing each agent link whose route another
//! replica claimed since (a newer connection of the same machine wins) —
//! except a link that was asked to move during a drain, which finishes
//! its running work first (the drain closes it).

use std::{collections::HashMap, sync::Arc};

use super::{Cluster, LEASE, TICK};
use crate::{sessions::Session, state::SharedState};

/// Further attempts to record a route after a failed one.
const CLAIM_RETRIES: u32 = 5;

/// Why an older link is closed.
const REPLACED: &str = "replaced by a newer connection of the same machine on another replica";

/// One round: renew, refresh the live set, close superseded links. The
/// first round runs before the server takes calls.
pub fn tick(state: &SharedState, cluster: &Cluster) -> anyhow::Result<()> {
    tick_after(state, cluster, false)
}

/// [`tick`]; with `after_outage` (the database was unreachable until
/// just now) replicas live before the outage stay live although their
/// lease ran out meanwhile — they could not renew it either, and do so at
/// their own next tick — so calls on the routes cached here keep working.
fn tick_after(state: &SharedState, cluster: &Cluster, after_outage: bool) -> anyhow::Result<()> {
    state
        .store
        .renew_replica(&cluster.replica_id, cluster.peer_addr(), LEASE)?;
    let mut live: HashMap<String, String> = state
        .store
        .live_replicas()?
        .into_iter()
        .map(|r| (r.replica_id, r.peer_addr))
        .collect();
    if after_outage {
        for (id, addr) in cluster.live.lock().iter() {
            live.entry(id.clone()).or_insert_with(|| addr.clone());
        }
    }
    cluster.routes.retain_replicas(&live);
    cluster.set_live(live);
    // Cached routes whose machine moved (a newer generation) are dropped,
    // so the next call looks the route up again instead of failing once.
    let cached = cluster.routes.cached();
    if !cached.is_empty() {
        let machines: Vec<String> = cached.iter().map(|r| r.machine_id.clone()).collect();
        let current = state.store.routes_of_machines(&machines)?;
        cluster.routes.refresh(&cached, &current);
    }
    // Only claims recorded before the query are judged by it.
    let snapshot: Vec<(String, i64, Arc<Session>)> = cluster
        .claims
        .lock()
        .iter()
        .map(|(m, (g, s))| (m.clone(), *g, s.clone()))
        .collect();
    if snapshot.is_empty() {
        return Ok(());
    }
    let held: HashMap<String, i64> = state
        .store
        .routes_of_replica(&cluster.replica_id)?
        .into_iter()
        .collect();
    let superseded: Vec<Arc<Session>> = {
        let mut claims = cluster.claims.lock();
        let mut out = Vec::new();
        for (machine, generation, session) in snapshot {
            if held.get(&machine) == Some(&generation) {
                continue;
            }
            let same = claims
                .get(&machine)
                .is_some_and(|(g, s)| *g == generation && Arc::ptr_eq(s, &session));
            if same {
                claims.remove(&machine);
                out.push(session);
            }
        }
        out
    };
    for session in superseded {
        // A link asked to move (a drain) was superseded by its own new
        // link: it keeps its running work until the drain closes it.
        if session.move_state() != crate::sessions::Move::Staying {
            continue;
        }
        if session.is_live() {
            tracing::info!(session = %session.id, machine = %session.machine_id, "closing an agent link: {REPLACED}");
            session.mark_closed(REPLACED);
        }
    }
    Ok(())
}

/// Renews the lease and checks routes every [`TICK`] until aborted.
pub async fn run(state: SharedState, cluster: Arc<Cluster>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The last round failed (logged once per outage).
    let mut failing = false;
    // Until then, replicas live before an outage stay live.
    let mut lenient_until: Option<tokio::time::Instant> = None;
    loop {
        interval.tick().await;
        let (s, c) = (state.clone(), cluster.clone());
        let after_outage =
            failing || lenient_until.is_some_and(|t| tokio::time::Instant::now() < t);
        match tokio::task::spawn_blocking(move || {
            c.presence_round(|| tick_after(&s, &c, after_outage))
        })
        .await
        {
            // Left the cluster: no more rounds.
            Ok(Ok(None)) => return,
            Ok(Ok(Some(()))) => {
                if failing {
                    tracing::info!("lease renewed again; the database answers");
                    lenient_until = Some(tokio::time::Instant::now() + LEASE);
                }
                failing = false;
            }
            Ok(Err(err)) => {
                if !failing {
                    tracing::warn!(
                        error = %format!("{err:#}"),
                        "cannot renew this replica's lease; calls on routes cached here keep \
                         working, other replicas stop forwarding to it if it stays expired \
                         once the database is back; retrying every tick"
                    );
                }
                failing = true;
            }
            Err(err) => tracing::warn!(error = %err, "the cluster presence task failed"),
        }
    }
}

/// Claims the route of `session`'s machine for this replica (in the
/// background: registration does not wait for the database).
pub fn claim(state: &SharedState, cluster: &Arc<Cluster>, session: &Arc<Session>) {
    let (state, cluster, session) = (state.clone(), cluster.clone(), session.clone());
    tokio::spawn(async move {
        // A database busy for longer than its timeout gets a few more tries
        // while the link lasts, an unreachable one as many as it takes
        // (an agent reconnecting during an outage): without a route other
        // replicas cannot reach the agent.
        let mut attempt = 0;
        let generation = loop {
            let claimed = crate::db::with_store(&state.store, {
                let (machine, replica, sid) = (
                    session.machine_id.clone(),
                    cluster.replica_id.clone(),
                    session.id.clone(),
                );
                move |store| store.claim_route(&machine, &replica, &sid)
            })
            .await;
            match claimed {
                Ok(g) => break g,
                Err(err)
                    if session.is_live()
                        && (attempt < CLAIM_RETRIES
                            || crate::store::is_unavailable_error(&err)) =>
                {
                    attempt += 1;
                    tracing::debug!(error = %format!("{err:#}"), attempt, "claiming a route failed; retrying");
                    tokio::time::sleep(TICK).await;
                }
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), machine = %session.machine_id,
                        "cannot record the route of a connected agent; other replicas cannot reach it until it reconnects");
                    return;
                }
            }
        };
        {
            let mut claims = cluster.claims.lock();
            let newer_here = claims
                .get(&session.machine_id)
                .is_some_and(|(g, _)| *g > generation);
            if session.is_live() && !newer_here {
                claims.insert(session.machine_id.clone(), (generation, session.clone()));
                return;
            }
        }
        // The link ended (or was replaced here) while claiming.
        release_generation(&state, &session.machine_id, generation).await;
    });
}

/// Releases the route of `session`'s ended link, if this replica still
/// holds it for that link.
pub async fn release(state: &SharedState, cluster: &Cluster, session: &Arc<Session>) {
    let generation = {
        let mut claims = cluster.claims.lock();
        match claims.get(&session.machine_id) {
            Some((g, s)) if Arc::ptr_eq(s, session) => {
                let g = *g;
                claims.remove(&session.machine_id);
                g
            }
            _ => return,
        }
    };
    release_generation(state, &session.machine_id, generation).await;
}

async fn release_generation(state: &SharedState, machine_id: &str, generation: i64) {
    let machine = machine_id.to_string();
    if let Err(err) = crate::db::with_store(&state.store, move |store| {
        store.release_route(&machine, generation)
    })
    .await
    {
        tracing::warn!(error = %format!("{err:#}"), machine = %machine_id, "cannot release a route");
    }
}
