//! Closes the connections of machines revoked by another process (the
//! admin CLI). Every [`POLL_INTERVAL`] the server reads one integer, the
//! store's revocation generation; only when it changed does it list the
//! revoked machines and close their sessions (ConnectTerminal stream and
//! exec Channel). The agent's reconnect then fails: its secret is refused.

use std::{sync::Arc, time::Duration};

use crate::state::State;

/// How often the revocation generation is read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Polls forever (abort the task to stop it).
pub async fn run(state: Arc<State>) {
    let mut seen: Option<i64> = None;
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let polled = {
            let state = state.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<Option<(i64, Vec<String>)>> {
                let generation = state.store.revocation_generation()?;
                if seen == Some(generation) {
                    return Ok(None);
                }
                Ok(Some((generation, state.store.revoked_machines()?)))
            })
            .await
        };
        let (generation, revoked) = match polled {
            Ok(Ok(Some(found))) => found,
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read machine revocations");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the revocation watcher failed");
                continue;
            }
        };
        for machine_id in &revoked {
            if state.sessions.close_machine(machine_id, "machine revoked") {
                tracing::info!(machine = %machine_id, "closed the connection of a revoked machine");
            }
        }
        seen = Some(generation);
    }
}
