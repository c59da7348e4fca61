//! Keeps `machines.last_seen_ms` in the database close to the truth while
//! agents stay connected. Heartbeats only touch memory (they are frequent,
//! and 10,000 agents must stay cheap); this task writes the live sessions'
//! last activity in one transaction every half heartbeat timeout, so
//! readers of the database (`cmdop admin machines`) see a machine as at
//! most that stale.

use std::{sync::Arc, time::Duration};

use crate::state::State;

/// Machines written per transaction.
const FLUSH_BATCH: usize = 500;

/// How often live sessions' activity is written: half the heartbeat
/// timeout, but not more often than once a second.
pub fn flush_interval(heartbeat_timeout: Duration) -> Duration {
    (heartbeat_timeout / 2).max(Duration::from_secs(1))
}

/// Writes the live sessions' activity every `interval`, forever (abort the
/// task to stop it). A failed write is logged and retried next time.
pub async fn run(state: Arc<State>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let seen = state.sessions.live_activity();
        if seen.is_empty() {
            continue;
        }
        let state = state.clone();
        // In batches, so that calls checking credentials in the same
        // database never wait long behind a flush of many agents.
        let written = tokio::task::spawn_blocking(move || {
            seen.chunks(FLUSH_BATCH)
                .try_for_each(|batch| state.store.record_seen(batch))
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot record when machines were last seen"),
            Err(e) => tracing::warn!(error = %e, "the last-seen writer failed"),
        }
    }
}
