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
        atomic::{AtomicBool, AtomicI64, Ordering},
        Arc, OnceLock,
    },
};

use parking_lot::Mutex;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Code, Status};

use crate::{config::Limits, store::Credential};

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
    /// The earliest expiry (ms since the epoch) of a credential that opened
    /// a call since the revocation watch last re-checked them all.
    earliest_expiry: AtomicI64,
}

impl OpenStreams {
    pub fn new(limits: &Limits) -> Arc<OpenStreams> {
        Arc::new(OpenStreams {
            limits: limits.clone(),
            by_credential: Mutex::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
            recheck: AtomicBool::new(false),
            earliest_expiry: AtomicI64::new(i64::MAX),
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
            let mut slots = self.slots.lock();
            let used = slots.entry((*kind, key.clone())).or_insert(0);
            if *used >= limit {
                crate::metrics::limit_hit(match kind {
                    SlotKind::Exec => crate::metrics::Limit::ExecsPerKey,
                    SlotKind::Attach => crate::metrics::Limit::AttachesPerKey,
                    SlotKind::Transfer => crate::metrics::Limit::TransfersPerKey,
                });
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
            let mut map = self.by_credential.lock();
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
        self.slots
            .lock()
            .iter()
            .filter(|((kind, _), _)| matches!(kind, SlotKind::Exec | SlotKind::Transfer))
            .map(|(_, n)| *n)
            .sum()
    }

    /// Ends every open call made with `credential`, now. Calls opened with
    /// it later are not affected (they are authenticated afresh).
    pub fn end(&self, credential: &Credential, code: Code, why: &str) {
        let ending = self
            .by_credential
            .lock()
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

    /// Notes that a call was opened with a credential that expires at
    /// `until_ms`, so the revocation watch ends its calls then rather than
    /// at its next full re-check.
    pub fn expires_at(&self, until_ms: i64) {
        self.earliest_expiry.fetch_min(until_ms, Ordering::SeqCst);
    }

    /// The earliest expiry noted since the last call (`i64::MAX`: none).
    pub fn take_earliest_expiry(&self) -> i64 {
        self.earliest_expiry.swap(i64::MAX, Ordering::SeqCst)
    }

    /// Whether [`recheck`](Self::recheck) was asked since the last call.
    pub fn take_recheck(&self) -> bool {
        self.recheck.swap(false, Ordering::SeqCst)
    }

    /// Credentials with open calls.
    pub fn credentials(&self) -> Vec<Credential> {
        self.by_credential.lock().keys().cloned().collect()
    }

    fn close(&self, ticket: &Ticket) {
        {
            let mut map = self.by_credential.lock();
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
            let mut slots = self.slots.lock();
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

    /// Up to `n` more slots of this call's kind and key, filed under its
    /// credential like the call itself (so a revocation ends them with
    /// it): as many as the key has free now. Without a slot (a call not
    /// counted per key), none.
    pub fn more(&self, n: usize) -> Vec<Ticket> {
        let Some(slot) = &self.slot else {
            return Vec::new();
        };
        let mut more = Vec::new();
        while more.len() < n {
            match self
                .streams
                .open(self.credential.clone(), Some(slot.clone()))
            {
                Ok(t) => more.push(t),
                Err(_) => break,
            }
        }
        more
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
