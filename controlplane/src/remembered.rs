//! What this server knows about the credentials it checked: one memory
//! with two uses.
//!
//! - **The credential cache** (the hot path). A credential that passed a
//!   check in the database is accepted from here, with no database
//!   statement, while the server's revocation watch
//!   ([`crate::revocations`]) has found the revocation counter unchanged
//!   since the check within the last `lease`
//!   ([`cmdop_proto::limits::CREDENTIAL_CACHE_LEASE_MS`]). Each entry is
//!   tagged with the counter value known when its check began; once the
//!   counter moves (any revocation, by any process sharing the database),
//!   entries of older values are checked in the database again at their
//!   next use. A revoker waits until every server has applied the new
//!   value or its lease ran out (`Store::wait_for_revocation_acks`), so a
//!   revocation bites at the next call everywhere. An expired key or token
//!   is never accepted from here.
//! - **Database outages.** Only when a check fails because the database
//!   cannot be reached ([`crate::store::is_unavailable_error`]) is a
//!   credential accepted that passed a check, or was last confirmed by the
//!   counter, within the last `grace`, so calls on what this server already
//!   knows keep working through a short outage.
//!
//! Only successful checks insert (an unauthenticated peer cannot grow it),
//! the number of entries is bounded (oldest evicted), and an entry goes as
//! soon as the database says the credential is revoked or unknown, or the
//! revocation watcher ends its streams.

use std::{
    collections::{HashMap, VecDeque},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use parking_lot::{Mutex, MutexGuard};

use crate::store::{now_ms, Credential, MachineRow, Workspace};

/// At most this many credentials are remembered; the oldest go first.
pub const MAX_ENTRIES: usize = 100_000;

/// Who a credential was found to be at its last successful check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// An API key or access token.
    Client {
        workspace: Workspace,
        /// The API key whose per-key limits the calls count against.
        key_hash: Option<String>,
        /// When the key or token stops working (ms since the epoch); an
        /// expired one is never accepted from here.
        expires_ms: Option<i64>,
    },
    /// An agent secret.
    Agent(MachineRow),
}

impl Verified {
    fn expired(&self) -> bool {
        match self {
            Verified::Client {
                expires_ms: Some(expires),
                ..
            } => *expires <= now_ms(),
            _ => false,
        }
    }
}

struct Entry {
    verified: Verified,
    /// When the database last found it good.
    at: Instant,
    /// The revocation counter value known when that check began.
    generation: Option<i64>,
    /// Insertion number, to tell live entries of `order` from stale ones.
    seq: u64,
}

/// What the revocation watch last established about the counter.
#[derive(Default, Clone, Copy)]
struct Counter {
    /// The value applied last: new entries are tagged with it.
    generation: Option<i64>,
    /// When the last read that found the counter still at `generation`
    /// (and told revokers so) began; `None` until one did.
    confirmed_at: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Credential, Entry>,
    /// Credentials in insertion order (may hold stale ones; see `seq`).
    order: VecDeque<(Credential, u64)>,
    next_seq: u64,
    counter: Counter,
}

/// The memory of recent successful checks.
pub struct Remembered {
    /// Outage fallback; zero turns it off.
    grace: Duration,
    /// How long a confirmation of the counter lets the cache be trusted;
    /// zero turns the cache off.
    lease: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
    /// A warning was logged for the current outage.
    warned: AtomicBool,
}

impl Remembered {
    /// `grace` zero turns the outage fallback off, `lease` zero the cache;
    /// both zero: nothing is remembered.
    pub fn new(grace: Duration, lease: Duration) -> Remembered {
        Self::with_capacity(grace, lease, MAX_ENTRIES)
    }

    pub fn with_capacity(grace: Duration, lease: Duration, capacity: usize) -> Remembered {
        Remembered {
            grace,
            lease,
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
            warned: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The map stays consistent even if a holder panicked.
        self.inner.lock()
    }

    fn enabled(&self) -> bool {
        !self.grace.is_zero() || !self.lease.is_zero()
    }

    /// Whether the cache is on (the watch then tells revokers what it
    /// applied).
    pub fn caching(&self) -> bool {
        !self.lease.is_zero()
    }

    /// How long a confirmation of the counter is trusted.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The counter value to tag a check with: take it before the check
    /// begins.
    pub fn generation(&self) -> Option<i64> {
        self.lock().counter.generation
    }

    /// The revocation watch read a new counter value: entries of older
    /// values are no longer trusted, and nothing is until the watch has
    /// applied it and told revokers ([`Remembered::confirmed`]).
    pub fn moved(&self, generation: i64) {
        let mut inner = self.lock();
        inner.counter = Counter {
            generation: Some(generation),
            confirmed_at: None,
        };
    }

    /// The revocation watch told revokers it applied `generation`, in a
    /// statement begun at `read_started` that found the counter still
    /// there: entries of that value are trusted for the lease from then.
    pub fn confirmed(&self, generation: i64, read_started: Instant) {
        let mut inner = self.lock();
        if inner.counter.generation == Some(generation) {
            inner.counter.confirmed_at = Some(read_started);
        }
    }

    /// The revocation watch could not read the counter: nothing is trusted
    /// until it can again (known credentials then follow the outage rules).
    pub fn distrust(&self) {
        self.lock().counter.confirmed_at = None;
    }

    /// The hot path: who `credential` is, when its entry is trusted (the
    /// counter confirmed unchanged since its check within the lease) and
    /// it has not expired. `None`: check it in the database.
    pub fn cached(&self, credential: &Credential) -> Option<Verified> {
        if self.lease.is_zero() {
            return None;
        }
        let inner = self.lock();
        let counter = inner.counter;
        let confirmed = counter.confirmed_at?;
        if confirmed.elapsed() >= self.lease {
            return None;
        }
        let entry = inner.entries.get(credential)?;
        if entry.generation.is_none() || entry.generation != counter.generation {
            return None;
        }
        if entry.verified.expired() {
            return None;
        }
        Some(entry.verified.clone())
    }

    /// Records a successful check that the database answered, begun when
    /// the counter was at `generation` ([`Remembered::generation`]); also
    /// ends the outage warning (the database answers again).
    pub fn remember(&self, credential: &Credential, verified: Verified, generation: Option<i64>) {
        if self.warned.swap(false, Ordering::Relaxed) {
            tracing::info!("state database answers again; credentials are checked there again");
        }
        if !self.enabled() {
            return;
        }
        let mut inner = self.lock();
        let now = Instant::now();
        if let Some(entry) = inner.entries.get_mut(credential) {
            entry.verified = verified;
            entry.at = now;
            entry.generation = generation;
            return;
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.entries.insert(
            credential.clone(),
            Entry {
                verified,
                at: now,
                generation,
                seq,
            },
        );
        inner.order.push_back((credential.clone(), seq));
        while inner.entries.len() > self.capacity {
            let Some((old, old_seq)) = inner.order.pop_front() else {
                break;
            };
            if inner.entries.get(&old).is_some_and(|e| e.seq == old_seq) {
                inner.entries.remove(&old);
            }
        }
        // Stale order entries (forgotten credentials) are dropped before
        // they can outnumber live ones.
        if inner.order.len() > 2 * self.capacity {
            let Inner { entries, order, .. } = &mut *inner;
            order.retain(|(c, s)| entries.get(c).is_some_and(|e| e.seq == *s));
        }
    }

    /// Drops a credential the database found revoked or unknown.
    pub fn forget(&self, credential: &Credential) {
        if !self.enabled() {
            return;
        }
        self.lock().entries.remove(credential);
    }

    /// Drops the agent secrets of machines the database lists as revoked.
    pub fn forget_machines(&self, machine_ids: &[String]) {
        if !self.enabled() || machine_ids.is_empty() {
            return;
        }
        self.lock().entries.retain(|_, e| match &e.verified {
            Verified::Agent(m) => !machine_ids.contains(&m.machine_id),
            Verified::Client { .. } => true,
        });
    }

    /// During an outage: who `credential` was, if it passed a check within
    /// the grace period, or its entry was confirmed by the counter within
    /// it (and, for a key or token with an expiry, it has not expired
    /// since). Logs a warning at the first admission of an outage.
    pub fn recall(&self, credential: &Credential) -> Option<Verified> {
        if self.grace.is_zero() {
            return None;
        }
        let found = {
            let inner = self.lock();
            let entry = inner.entries.get(credential)?;
            let confirmed = match inner.counter.confirmed_at {
                Some(at)
                    if entry.generation.is_some()
                        && entry.generation == inner.counter.generation =>
                {
                    at.max(entry.at)
                }
                _ => entry.at,
            };
            if confirmed.elapsed() > self.grace || entry.verified.expired() {
                return None;
            }
            entry.verified.clone()
        };
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                grace_secs = self.grace.as_secs(),
                "state database unavailable; admitting calls on credentials checked successfully \
                 within the grace period (--db-outage-grace-secs) until it answers again; \
                 credentials not seen before get UNAVAILABLE"
            );
        }
        Some(found)
    }

    /// How many credentials are remembered.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    fn client(expires_ms: Option<i64>) -> Verified {
        Verified::Client {
            workspace: Workspace {
                id: "w".into(),
                name: "default".into(),
                scope: crate::scope::Scope::full(),
                source: String::new(),
            },
            key_hash: Some("k".into()),
            expires_ms,
        }
    }

    fn key(n: usize) -> Credential {
        Credential::ApiKey {
            hash: format!("h{n}"),
        }
    }

    /// A memory whose counter stands at 7, confirmed now.
    fn confirmed(grace: Duration, lease: Duration) -> Remembered {
        let m = Remembered::new(grace, lease);
        m.moved(7);
        m.confirmed(7, Instant::now());
        m
    }

    #[test]
    fn recalls_within_the_grace_and_forgets_revoked() {
        let m = Remembered::new(LONG, Duration::ZERO);
        assert_eq!(m.recall(&key(1)), None);
        m.remember(&key(1), client(None), None);
        assert_eq!(m.recall(&key(1)), Some(client(None)));
        m.forget(&key(1));
        assert_eq!(m.recall(&key(1)), None);
    }

    #[test]
    fn never_recalls_an_expired_token_or_a_stale_check() {
        let m = Remembered::new(LONG, Duration::ZERO);
        m.remember(&key(1), client(Some(now_ms() - 1)), None);
        assert_eq!(m.recall(&key(1)), None);
        let m = Remembered::new(Duration::from_millis(1), Duration::ZERO);
        m.remember(&key(2), client(None), None);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(m.recall(&key(2)), None);
    }

    #[test]
    fn zero_grace_and_lease_remember_nothing() {
        let m = Remembered::new(Duration::ZERO, Duration::ZERO);
        m.remember(&key(1), client(None), Some(1));
        assert!(m.is_empty());
        assert_eq!(m.recall(&key(1)), None);
        assert_eq!(m.cached(&key(1)), None);
    }

    #[test]
    fn bounded_with_the_oldest_evicted() {
        let m = Remembered::with_capacity(LONG, LONG, 3);
        m.moved(1);
        m.confirmed(1, Instant::now());
        for n in 0..5 {
            m.remember(&key(n), client(None), Some(1));
        }
        assert_eq!(m.len(), 3);
        assert_eq!(m.recall(&key(0)), None);
        assert_eq!(m.cached(&key(1)), None);
        assert!(m.recall(&key(4)).is_some());
        assert!(m.cached(&key(4)).is_some());
        // Forget/remember cycles do not grow the order queue without bound.
        for _ in 0..100 {
            m.forget(&key(4));
            m.remember(&key(4), client(None), Some(1));
        }
        assert!(m.lock().order.len() <= 6);
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn the_cache_serves_only_entries_of_the_confirmed_counter() {
        let m = Remembered::new(LONG, LONG);
        // Nothing is trusted before the watch confirmed a counter value.
        m.remember(&key(1), client(None), None);
        assert_eq!(m.cached(&key(1)), None);
        m.moved(7);
        assert_eq!(m.generation(), Some(7));
        m.remember(&key(1), client(None), m.generation());
        assert_eq!(m.cached(&key(1)), None, "moved but not yet confirmed");
        m.confirmed(7, Instant::now());
        assert_eq!(m.cached(&key(1)), Some(client(None)));
        // A confirmation of another value than the one applied is ignored.
        m.confirmed(6, Instant::now());
        assert_eq!(m.cached(&key(1)), Some(client(None)));
        // Any move: the entry is no longer served, though still known for
        // an outage.
        m.moved(8);
        assert_eq!(m.cached(&key(1)), None);
        m.confirmed(8, Instant::now());
        assert_eq!(m.cached(&key(1)), None);
        assert!(m.recall(&key(1)).is_some());
        // Checked again: served again.
        m.remember(&key(1), client(None), m.generation());
        assert_eq!(m.cached(&key(1)), Some(client(None)));
    }

    #[test]
    fn a_check_begun_before_a_move_is_not_served_after_it() {
        let m = confirmed(LONG, LONG);
        let tag = m.generation();
        // A revocation lands while the check runs.
        m.moved(8);
        m.confirmed(8, Instant::now());
        m.remember(&key(1), client(None), tag);
        assert_eq!(m.cached(&key(1)), None);
    }

    #[test]
    fn trust_ends_with_the_lease_and_expiry_is_honoured() {
        let m = confirmed(LONG, Duration::from_millis(30));
        m.remember(&key(1), client(None), m.generation());
        assert!(m.cached(&key(1)).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(m.cached(&key(1)), None, "no confirmation within the lease");
        m.confirmed(7, Instant::now());
        assert!(m.cached(&key(1)).is_some());
        // A failed read of the counter ends the trust at once.
        m.distrust();
        assert_eq!(m.cached(&key(1)), None);
        assert!(m.recall(&key(1)).is_some(), "the outage rules still apply");
        let m = confirmed(LONG, LONG);
        m.remember(&key(2), client(Some(now_ms() + 60_000)), m.generation());
        assert!(m.cached(&key(2)).is_some());
        m.remember(&key(3), client(Some(now_ms() - 1)), m.generation());
        assert_eq!(m.cached(&key(3)), None);
        // Zero lease: no cache, the outage memory still works.
        let m = confirmed(LONG, Duration::ZERO);
        m.remember(&key(4), client(None), m.generation());
        assert_eq!(m.cached(&key(4)), None);
        assert!(m.recall(&key(4)).is_some());
    }

    #[test]
    fn an_outage_recalls_entries_the_counter_kept_confirming() {
        // Checked long ago (beyond the grace), but confirmed by the counter
        // just now: recalled.
        let m = Remembered::new(Duration::from_millis(40), LONG);
        m.moved(7);
        m.remember(&key(1), client(None), m.generation());
        m.remember(&key(2), client(None), Some(6));
        std::thread::sleep(Duration::from_millis(80));
        m.confirmed(7, Instant::now());
        assert!(m.recall(&key(1)).is_some());
        assert_eq!(
            m.recall(&key(2)),
            None,
            "an older value's entry counts from its check"
        );
    }
}
