//! Credentials checked successfully not long ago, for database outages.
//!
//! While the database answers, every call checks its credential there (a
//! revocation bites at the next call on every replica); this memory is
//! never consulted then. Only when a check fails because the database
//! cannot be reached ([`crate::store::is_unavailable_error`]) is a
//! credential that passed a check within the last `grace` accepted from
//! here, so calls on what this replica already knows keep working through
//! a short outage. Only successful checks insert (an unauthenticated peer
//! cannot grow it), the number of entries is bounded (oldest evicted), and
//! an entry goes as soon as the database says the credential is revoked or
//! unknown, or the revocation watcher ends its streams.

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
        /// Access tokens: when they expire (ms since the epoch); an expired
        /// token is never accepted from here.
        expires_ms: Option<i64>,
    },
    /// An agent secret.
    Agent(MachineRow),
}

struct Entry {
    verified: Verified,
    at: Instant,
    /// Insertion number, to tell live entries of `order` from stale ones.
    seq: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Credential, Entry>,
    /// Credentials in insertion order (may hold stale ones; see `seq`).
    order: VecDeque<(Credential, u64)>,
    next_seq: u64,
}

/// The memory of recent successful checks.
pub struct Remembered {
    grace: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
    /// A warning was logged for the current outage.
    warned: AtomicBool,
}

impl Remembered {
    /// `grace` zero turns the fallback off (nothing is remembered).
    pub fn new(grace: Duration) -> Remembered {
        Self::with_capacity(grace, MAX_ENTRIES)
    }

    pub fn with_capacity(grace: Duration, capacity: usize) -> Remembered {
        Remembered {
            grace,
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
        !self.grace.is_zero()
    }

    /// Records a successful check that the database answered; also ends
    /// the outage warning (the database answers again).
    pub fn remember(&self, credential: &Credential, verified: Verified) {
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
            return;
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.entries.insert(
            credential.clone(),
            Entry {
                verified,
                at: now,
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
    /// the grace period (and, for an access token, has not expired since).
    /// Logs a warning at the first admission of an outage.
    pub fn recall(&self, credential: &Credential) -> Option<Verified> {
        if !self.enabled() {
            return None;
        }
        let found = {
            let inner = self.lock();
            let entry = inner.entries.get(credential)?;
            if entry.at.elapsed() > self.grace {
                return None;
            }
            if let Verified::Client {
                expires_ms: Some(expires),
                ..
            } = &entry.verified
            {
                if *expires <= now_ms() {
                    return None;
                }
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

    #[test]
    fn recalls_within_the_grace_and_forgets_revoked() {
        let m = Remembered::new(Duration::from_secs(60));
        assert_eq!(m.recall(&key(1)), None);
        m.remember(&key(1), client(None));
        assert_eq!(m.recall(&key(1)), Some(client(None)));
        m.forget(&key(1));
        assert_eq!(m.recall(&key(1)), None);
    }

    #[test]
    fn never_recalls_an_expired_token_or_a_stale_check() {
        let m = Remembered::new(Duration::from_secs(60));
        m.remember(&key(1), client(Some(now_ms() - 1)));
        assert_eq!(m.recall(&key(1)), None);
        let m = Remembered::new(Duration::from_millis(1));
        m.remember(&key(2), client(None));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(m.recall(&key(2)), None);
    }

    #[test]
    fn zero_grace_remembers_nothing() {
        let m = Remembered::new(Duration::ZERO);
        m.remember(&key(1), client(None));
        assert!(m.is_empty());
        assert_eq!(m.recall(&key(1)), None);
    }

    #[test]
    fn bounded_with_the_oldest_evicted() {
        let m = Remembered::with_capacity(Duration::from_secs(60), 3);
        for n in 0..5 {
            m.remember(&key(n), client(None));
        }
        assert_eq!(m.len(), 3);
        assert_eq!(m.recall(&key(0)), None);
        assert_eq!(m.recall(&key(1)), None);
        assert!(m.recall(&key(4)).is_some());
        // Forget/remember cycles do not grow the order queue without bound.
        for _ in 0..100 {
            m.forget(&key(4));
            m.remember(&key(4), client(None));
        }
        assert!(m.lock().order.len() <= 6);
        assert_eq!(m.len(), 3);
    }
}
