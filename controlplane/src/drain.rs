//! A graceful stop (SIGTERM): agents move to other control planes, the
//! work already running finishes, then every agent session closes.
//!
//! 1. Every agent that lists `link-move.v1` is told `MoveLink`: it opens a
//!    new link to another control plane of its list at once and keeps this
//!    one for its running commands. Once the new Channel is open it says
//!    `LinkMoved` here, which is what counts with a single server; in
//!    cluster mode the move counts once the route table names another
//!    replica (the new link's claim replaced this one's, so there is never
//!    a moment without a route).
//! 2. Calls that still reach this replica for a moving machine (forwarded
//!    by a replica whose cached route is a tick old) run on the old link,
//!    which is alive; so the old link is kept [`SETTLE`] after the last
//!    move, until every replica has read the new route.
//! 3. Once no Exec call or transfer runs, every move is done and settled
//!    (or the grace ran out), every session closes. Agents that cannot move
//!    reconnect then, as before.

use std::{collections::HashSet, sync::Arc, time::Duration};

use tokio::time::Instant;

use crate::{
    sessions::{self, Move, Session},
    state::State,
    streams::OpenStreams,
};

/// How long an old link stays after its agent's move was confirmed, so
/// that each replica's cached route (checked every tick) has followed.
const SETTLE: Duration = Duration::from_millis(2 * crate::cluster::TICK.as_millis() as u64);
/// How often the drain looks at running work and moves.
const POLL: Duration = Duration::from_millis(50);
/// How often, in cluster mode, the route table is read for moves reported
/// but not yet confirmed.
const ROUTE_POLL: Duration = Duration::from_millis(200);

/// Why agents are asked to move.
const MOVE_REASON: &str = "control plane shutting down";

/// Moves the agents, waits (up to `grace`) for running Exec calls and file
/// transfers to finish, then closes every agent session.
pub async fn run(state: &Arc<State>, open: &OpenStreams, grace: Duration) {
    let started = Instant::now();
    let deadline = started + grace;
    let live = state.sessions.live();
    let asked: Vec<Arc<Session>> = live
        .iter()
        .filter(|s| s.ask_to_move(MOVE_REASON, grace))
        .cloned()
        .collect();
    tracing::info!(
        running = open.running_work(),
        agents = live.len(),
        moving = asked.len(),
        grace = ?grace,
        "shutting down: accepting no new connections; moving agents to other control planes \
         and waiting for running commands and transfers"
    );
    let mut confirmed: HashSet<String> = HashSet::new();
    let mut next_route_read = Instant::now();
    let mut all_moved_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let waiting: Vec<&Arc<Session>> = asked
            .iter()
            .filter(|s| s.is_live() && !confirmed.contains(&s.id))
            .collect();
        if !waiting.is_empty() && now >= next_route_read {
            next_route_read = now + ROUTE_POLL;
            confirmed.extend(confirm_moves(state, &waiting).await);
        }
        let moves_left = asked
            .iter()
            .filter(|s| s.is_live() && !confirmed.contains(&s.id))
            .count();
        if moves_left == 0 && all_moved_at.is_none() {
            all_moved_at = Some(Instant::now());
            if !asked.is_empty() {
                tracing::info!(
                    moved = confirmed.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "agents moved to other control planes; their old links finish their running work"
                );
            }
        }
        let settled = match all_moved_at {
            Some(at) if state.cluster.is_some() && !confirmed.is_empty() => {
                Instant::now() >= at + SETTLE
            }
            Some(_) => true,
            None => false,
        };
        if settled && open.running_work() == 0 {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let left = open.running_work();
    let reason = if left == 0 {
        sessions::SHUTDOWN_REASON.to_string()
    } else {
        tracing::warn!(
            left,
            "shutdown grace period over; ending the commands and transfers still running"
        );
        format!(
            "{}: the {} s grace period (--shutdown-grace-secs) for running calls ran out",
            sessions::SHUTDOWN_REASON,
            grace.as_secs()
        )
    };
    tracing::info!("closing agent sessions");
    state.sessions.close_all(&reason);
}

/// The ids of the sessions among `waiting` whose move is done. In cluster
/// mode: the route table names another replica for the machine (the
/// agent's new link claimed it; also when the new link was opened after a
/// first try failed, and the old one never heard of it). A single server:
/// the agent reported its new link (`LinkMoved`).
async fn confirm_moves(state: &Arc<State>, waiting: &[&Arc<Session>]) -> Vec<String> {
    let Some(cluster) = &state.cluster else {
        return waiting
            .iter()
            .filter(|s| s.move_state() == Move::Moved)
            .map(|s| s.id.clone())
            .collect();
    };
    let machines: Vec<String> = waiting.iter().map(|s| s.machine_id.clone()).collect();
    let routes = match crate::db::with_store(&state.store, move |store| {
        store.routes_of_machines(&machines)
    })
    .await
    {
        Ok(routes) => routes,
        Err(err) => {
            // The agents' new replicas claim their routes as soon as the
            // database answers; until then the old links keep serving.
            tracing::debug!(error = %format!("{err:#}"), "cannot read the routes of moving agents yet");
            return Vec::new();
        }
    };
    waiting
        .iter()
        .filter(|s| {
            routes.iter().any(|r| {
                r.machine_id == s.machine_id
                    && !r.replica_id.is_empty()
                    && r.replica_id != cluster.replica_id
            })
        })
        .map(|s| s.id.clone())
        .collect()
}
