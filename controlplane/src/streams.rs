//! Open calls filed by the credential they were opened with, so that
//! revoking a credential ends them, and per-key slots for the calls that
//! hold resources on a machine (Exec, attach, file transfers).
//!
//! Every authenticated call takes a [`Ticket`]; the gate ([`crate::gate`])
//! ends the call's request and response bodies when the ticket's credential
//! is ended. [`watch`] re-checks every credential with open calls against
//! the database a few times a second; [`OpenStreams::end`] ends them at once
//! (the hook for revocations made inside this process).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard, OnceLock,
    },
    time::Duration,
};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Code, Status};

use crate::{
    config::Limits,
    state::SharedState,
    store::{now_ms, Credential, Standing},
};

/// Calls that hold a per-key slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotKind {
    Exec,
    Attach,
    Transfer,
}

impl SlotKind {
    fn describe(self) -> &'static str {
        match self {
            SlotKind::Exec => "Exec calls",
            SlotKind::Attach => "attach streams",
            SlotKind::Transfer => "file transfers (Upload/Download)",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            SlotKind::Exec => "--max-execs-per-key",
            SlotKind::Attach => "--max-attaches-per-key",
            SlotKind::Transfer => "--max-transfers-per-key",
        }
    }
}

/// How the calls of one credential end.
struct Ending {
    token: CancellationToken,
    why: OnceLock<(Code, String)>,
}

struct Entry {
    open: usize,
    ending: Arc<Ending>,
}

/// The registry; one per server.
pub struct OpenStreams {
    limits: Limits,
    by_credential: Mutex<HashMap<Credential, Entry>>,
    slots: Mutex<HashMap<(SlotKind, String), usize>>,
    recheck: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Counters only: still consistent after a panic elsewhere.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl OpenStreams {
    pub fn new(limits: &Limits) -> Arc<OpenStreams> {
        Arc::new(OpenStreams {
            limits: limits.clone(),
            by_credential: Mutex::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
            recheck: AtomicBool::new(false),
        })
    }

    fn slot_limit(&self, kind: SlotKind) -> usize {
        match kind {
            SlotKind::Exec => self.limits.execs_per_key,
            SlotKind::Attach => self.limits.attaches_per_key,
            SlotKind::Transfer => self.limits.transfers_per_key,
        }
    }

    /// Files a new call under `credential`, taking a `slot` (kind and key
    /// hash) if given. RESOURCE_EXHAUSTED when the key has all its slots of
    /// that kind in use.
    pub fn open(
        self: &Arc<Self>,
        credential: Credential,
        slot: Option<(SlotKind, String)>,
    ) -> Result<Ticket, Status> {
        if let Some((kind, key)) = &slot {
            let limit = self.slot_limit(*kind);
            let mut slots = lock(&self.slots);
            let used = slots.entry((*kind, key.clone())).or_insert(0);
            if *used >= limit {
                return Err(Status::resource_exhausted(format!(
                    "this API key already has {used} {} open, the most allowed; wait for one to \
                     finish or cancel one, or ask the operator to raise {} on `cmdop server`",
                    kind.describe(),
                    kind.flag()
                )));
            }
            *used += 1;
        }
        let ending = {
            let mut map = lock(&self.by_credential);
            let entry = map.entry(credential.clone()).or_insert_with(|| Entry {
                open: 0,
                ending: Arc::new(Ending {
                    token: CancellationToken::new(),
                    why: OnceLock::new(),
                }),
            });
            entry.open += 1;
            entry.ending.clone()
        };
        Ok(Ticket {
            streams: self.clone(),
            credential,
            slot,
            ending,
        })
    }

    /// Exec calls and file transfers open now (what a graceful stop waits
    /// for).
    pub fn running_work(&self) -> usize {
        lock(&self.slots)
            .iter()
            .filter(|((kind, _), _)| matches!(kind, SlotKind::Exec | SlotKind::Transfer))
            .map(|(_, n)| *n)
            .sum()
    }

    /// Ends every open call made with `credential`, now. Calls opened with
    /// it later are not affected (they are authenticated afresh).
    pub fn end(&self, credential: &Credential, code: Code, why: &str) {
        let ending = lock(&self.by_credential)
            .remove(credential)
            .map(|e| e.ending);
        if let Some(ending) = ending {
            let _ = ending.why.set((code, why.to_owned()));
            ending.token.cancel();
        }
    }

    /// Asks [`watch`] to re-check every credential at its next tick; call it
    /// after revoking something in this process's own database connection
    /// (which the cheap "did anyone else write" test does not see).
    pub fn recheck(&self) {
        self.recheck.store(true, Ordering::SeqCst);
    }

    /// Credentials with open calls.
    pub fn credentials(&self) -> Vec<Credential> {
        lock(&self.by_credential).keys().cloned().collect()
    }

    fn close(&self, ticket: &Ticket) {
        {
            let mut map = lock(&self.by_credential);
            if let Some(entry) = map.get_mut(&ticket.credential) {
                // The entry may be a newer one after an `end`; only ours counts.
                if Arc::ptr_eq(&entry.ending, &ticket.ending) {
                    entry.open -= 1;
                    if entry.open == 0 {
                        map.remove(&ticket.credential);
                    }
                }
            }
        }
        if let Some(slot) = &ticket.slot {
            let mut slots = lock(&self.slots);
            if let Some(used) = slots.get_mut(slot) {
                *used -= 1;
                if *used == 0 {
                    slots.remove(slot);
                }
            }
        }
    }
}

/// One open call's place in the registry; dropping it closes the call's
/// entry and frees its slot.
pub struct Ticket {
    streams: Arc<OpenStreams>,
    credential: Credential,
    slot: Option<(SlotKind, String)>,
    ending: Arc<Ending>,
}

impl Ticket {
    /// Resolves when the call must end.
    pub fn ended(&self) -> WaitForCancellationFutureOwned {
        self.ending.token.clone().cancelled_owned()
    }

    /// What the call ends with.
    pub fn status(&self) -> Status {
        match self.ending.why.get() {
            Some((code, why)) => Status::new(*code, why.clone()),
            None => Status::unauthenticated("the credential of this call is no longer valid"),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.streams.close(self);
    }
}

/// Full re-checks happen at least this often (in ticks) even when the
/// revocation counter did not move (a credential deleted by hand, say).
const FULL_CHECK_TICKS: u32 = 20;

/// What one look at the database found.
struct Look {
    generation: i64,
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
/// Runs until the server stops.
pub async fn watch(state: SharedState, streams: Arc<OpenStreams>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_generation: Option<i64> = None;
    let mut ticks = 0u32;
    // Earliest expiry among the access tokens last seen good.
    let mut next_expiry = i64::MAX;
    // The database could not be read at the last tick.
    let mut unreadable = false;
    let signal = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || state.store.revocation_signal())
            .await
            .ok()
            .flatten()
    };
    loop {
        match &signal {
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
        let asked = streams.recheck.swap(false, Ordering::SeqCst);
        let due = asked || ticks >= FULL_CHECK_TICKS || now_ms() >= next_expiry;
        let seen = last_generation;
        let look = tokio::task::spawn_blocking({
            let state = state.clone();
            move || -> anyhow::Result<Look> {
                let generation = state.store.revocation_generation()?;
                let moved = seen != Some(generation);
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
                Ok(Look {
                    generation,
                    standings,
                    revoked_machines,
                })
            }
        })
        .await;
        let look = match look {
            Ok(Ok(look)) => look,
            Ok(Err(e)) => {
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
                }
                Ok(Standing::Expired) => {
                    state.remembered.forget(&credential);
                    tracing::info!("access token expired; ending the calls it opened");
                    streams.end(
                        &credential,
                        Code::Unauthenticated,
                        "the access token this call was opened with expired and was not \
                         refreshed; refresh it with RefreshToken and open the call again",
                    );
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
