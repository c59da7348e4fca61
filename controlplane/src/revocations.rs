//! Ending what a revoked credential opened: the watch over the store's
//! revocation counter that ends open calls ([`crate::streams::OpenStreams`])
//! and closes revoked machines' sessions, re-reads connected machines'
//! admin labels (which decide what scoped keys see) when it moves, and
//! keeps the credential cache ([`crate::remembered`]) trusted: each read
//! of the counter also tells revokers, in the database, which value this
//! server has applied (`Store::ack_revocations`).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tonic::Code;

use crate::{
    state::SharedState,
    store::{now_ms, Credential, Standing},
    streams::OpenStreams,
};

/// Full re-checks happen at least this often (in ticks) even when the
/// revocation counter did not move (a credential deleted by hand, say).
const FULL_CHECK_TICKS: u32 = 20;

/// The longest a revocation made by the server itself (a token family
/// revoked on refresh-token reuse) waits for every server to apply it:
/// twice the default lease, plus the clock margin.
pub const ACK_WAIT: Duration =
    Duration::from_millis(2 * cmdop_proto::limits::CREDENTIAL_CACHE_LEASE_MS + 1_000);

/// What one look at the database found.
struct Look {
    generation: i64,
    /// When the read of the counter began.
    read_started: Instant,
    /// Standing of each credential with open calls (when re-checked).
    standings: Vec<(Credential, anyhow::Result<Standing>)>,
    /// Revoked machines (when the counter moved).
    revoked_machines: Option<Vec<String>>,
}

/// Watches the store's revocation counter ([`crate::store::Store::revocation_generation`]),
/// bumped in the same transaction as every revocation by any process or
/// server sharing the database. Every `every` (and, on PostgreSQL, as soon
/// as a revocation's NOTIFY arrives) it reads that one number;
/// when it moved (or [`OpenStreams::recheck`] asked, an access token is due
/// to expire, or every [`FULL_CHECK_TICKS`]) it re-checks every credential
/// with open calls, ending the calls of those revoked or expired, and
/// closes the sessions of revoked machines (their agents' reconnects then
/// fail: the secret is refused). Database calls run on the blocking pool.
///
/// With the credential cache on, the read is also the acknowledgement
/// under `server_id`: it records the value last applied and the end of the
/// lease, and the cache is trusted only when the counter was found still
/// at that value. A moved counter is applied at once (the cache stops
/// trusting older entries, open calls are re-checked) and acknowledged
/// without waiting for the next tick. Runs until the server stops.
pub async fn watch(
    state: SharedState,
    streams: Arc<OpenStreams>,
    every: Duration,
    server_id: String,
) {
    let lease = state.remembered.lease();
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_generation: Option<i64> = None;
    let mut ticks = 0u32;
    // Earliest expiry among the access tokens last seen good.
    let mut next_expiry = i64::MAX;
    // The database could not be read at the last tick.
    let mut unreadable = false;
    // Look again at once (a moved counter to acknowledge).
    let mut again = false;
    let signal = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || state.store.revocation_signal())
            .await
            .ok()
            .flatten()
    };
    loop {
        match &signal {
            _ if std::mem::take(&mut again) => {}
            Some(signal) => {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = signal.notified() => {}
                }
            }
            None => {
                ticker.tick().await;
            }
        }
        ticks += 1;
        let credentials = streams.credentials();
        let asked = streams.take_recheck();
        next_expiry = next_expiry.min(streams.take_earliest_expiry());
        let due = asked || ticks >= FULL_CHECK_TICKS || now_ms() >= next_expiry;
        let seen = last_generation;
        let look = tokio::task::spawn_blocking({
            let state = state.clone();
            let server_id = server_id.clone();
            move || -> anyhow::Result<Look> {
                let read_started = Instant::now();
                let generation = if lease.is_zero() {
                    state.store.revocation_generation()?
                } else {
                    // Nothing applied yet: acknowledge nothing, trust nothing.
                    let (applied, until) = match seen {
                        Some(g) => (g, now_ms().saturating_add(lease_ms)),
                        None => (-1, 0),
                    };
                    state.store.ack_revocations(&server_id, applied, until)?
                };
                let moved = seen != Some(generation);
                if moved {
                    // Entries of older values are no longer served, from now.
                    state.remembered.moved(generation);
                }
                let standings = if moved || due {
                    credentials
                        .into_iter()
                        .map(|c| {
                            let standing = state.store.standing(&c);
                            (c, standing)
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let revoked_machines = if moved {
                    Some(state.store.revoked_machines()?)
                } else {
                    None
                };
                // Admin label changes move the counter too: what scoped
                // keys see follows them.
                if moved {
                    crate::inventory::refresh_admin_labels(&state)?;
                }
                // Last use of keys, for listings; lost on a failed write
                // (the next calls note it again).
                if let Err(e) = state.store.note_key_use(&state.key_uses.take()) {
                    tracing::debug!(error = %format!("{e:#}"), "cannot record when keys were last used");
                }
                Ok(Look {
                    generation,
                    read_started,
                    standings,
                    revoked_machines,
                })
            }
        })
        .await;
        let look = match look {
            Ok(Ok(look)) => look,
            Ok(Err(e)) => {
                // It cannot hear revocations: the cache is not trusted
                // until it can (the lease would end it anyway).
                state.remembered.distrust();
                if asked {
                    streams.recheck();
                }
                // Once per outage, not at every tick.
                if !unreadable {
                    tracing::warn!(error = %format!("{e:#}"), "cannot read revocations; retrying every tick until the database answers");
                }
                unreadable = true;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the revocation watcher failed; will retry");
                continue;
            }
        };
        if unreadable {
            tracing::info!("revocations readable again");
            unreadable = false;
        }
        if seen == Some(look.generation) {
            state
                .remembered
                .confirmed(look.generation, look.read_started);
        } else if !lease.is_zero() {
            again = true;
        }
        let rechecked = seen != Some(look.generation) || due;
        if rechecked {
            ticks = 0;
            next_expiry = i64::MAX;
        }
        for (credential, standing) in look.standings {
            match standing {
                Ok(Standing::Good { until_ms }) => {
                    if let Some(until) = until_ms {
                        next_expiry = next_expiry.min(until);
                    }
                }
                Ok(Standing::Revoked) => {
                    state.remembered.forget(&credential);
                    tracing::info!(
                        kind = kind(&credential),
                        "credential revoked; ending its open calls"
                    );
                    streams.end(
                        &credential,
                        Code::Unauthenticated,
                        revoked_text(&credential),
                    );
                    crate::metrics::revoked();
                }
                Ok(Standing::Expired) => {
                    state.remembered.forget(&credential);
                    tracing::info!(
                        kind = kind(&credential),
                        "credential expired; ending the calls it opened"
                    );
                    streams.end(
                        &credential,
                        Code::Unauthenticated,
                        expired_text(&credential),
                    );
                    crate::metrics::revoked();
                }
                Err(e) => {
                    // Look again at the next tick.
                    next_expiry = 0;
                    tracing::warn!(error = %format!("{e:#}"), "cannot re-check a credential; will retry");
                }
            }
        }
        if let Some(revoked) = look.revoked_machines {
            state.remembered.forget_machines(&revoked);
            for machine_id in &revoked {
                if state.sessions.close_machine(machine_id, "machine revoked") {
                    tracing::info!(machine = %machine_id, "closed the connection of a revoked machine");
                }
            }
        }
        last_generation = Some(look.generation);
    }
}

fn kind(credential: &Credential) -> &'static str {
    match credential {
        Credential::ApiKey { .. } => "api key",
        Credential::AccessToken { .. } => "access token",
        Credential::AgentSecret { .. } => "agent secret",
    }
}

fn expired_text(credential: &Credential) -> &'static str {
    match credential {
        Credential::ApiKey { .. } => {
            "the API key this call was opened with expired; create a new one with \
             `cmdop admin create-key`"
        }
        _ => {
            "the access token this call was opened with expired and was not refreshed (or \
             its API key expired); refresh it with RefreshToken and open the call again"
        }
    }
}

fn revoked_text(credential: &Credential) -> &'static str {
    match credential {
        Credential::ApiKey { .. } => {
            "the API key this call was opened with was revoked; create a new one with \
             `cmdop admin create-key`"
        }
        Credential::AccessToken { .. } => {
            "the access token this call was opened with was revoked (its API key or token \
             family); sign in again with a valid API key"
        }
        Credential::AgentSecret { .. } => {
            "this agent's secret was revoked; enroll it again with a new token from \
             `cmdop admin enroll-token`"
        }
    }
}
