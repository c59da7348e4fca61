//! The one retry schedule of every libcmdop peer: exponential growth from a
//! base delay up to a ceiling, a random spread of each delay so that peers
//! which failed together do not retry together, and a reset once a
//! connection stayed up long enough, with one quick retry after a link that
//! was up for a while and then lost (a replica killed soon after the last
//! one). The client's reconnects, the client's
//! call retries and the agent's reconnects and enrollment all use
//! [`Backoff`]; they differ only in their [`Policy`], named here so the
//! numbers live in one place.

use std::time::{Duration, Instant};

use rand::Rng;

/// How a [`Backoff`] grows, spreads and resets. The base and the ceiling are
/// the caller's (they are user settings); the shape is the policy's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Growth factor from one attempt's delay to the next (1.0 = constant).
    pub multiplier: f64,
    /// Each delay is the nominal delay times a random factor drawn uniformly
    /// from `[spread_low, spread_high]`.
    pub spread_low: f64,
    /// Upper end of the random factor.
    pub spread_high: f64,
    /// A connection that stayed up at least this long makes the next loss
    /// start from the base delay again; a shorter one (a flapping server or
    /// link) keeps the schedule where it was.
    pub reset_after: Duration,
    /// A connection that stayed up at least this long (but less than
    /// `reset_after`) gets one retry after the base delay when it is lost;
    /// if that retry fails the schedule goes on from where it was. A link
    /// that drops sooner (a server refusing right after accepting) gets no
    /// quick retry, so it cannot make its clients retry at the base rate.
    pub quick_after: Duration,
}

/// The client's reconnects (library, CLI, bindings): doubling, "equal
/// jitter" (half to all of the nominal delay, so the delay never exceeds
/// the user's `max_reconnect_delay`), reset after 30 s up.
pub const CLIENT_RECONNECT: Policy = Policy {
    multiplier: 2.0,
    spread_low: 0.5,
    spread_high: 1.0,
    reset_after: Duration::from_secs(30),
    quick_after: Duration::from_secs(1),
};

/// The client's retries of calls that are safe to repeat: a constant pause
/// of half to all of the user's `retry_delay`, spread so that many clients
/// refused together (a replica stopping) do not come back in step.
pub const CLIENT_CALL_RETRY: Policy = Policy {
    multiplier: 1.0,
    spread_low: 0.5,
    spread_high: 1.0,
    reset_after: Duration::ZERO,
    quick_after: Duration::ZERO,
};

/// The agent's reconnects and enrollment attempts: gRPC's connection
/// backoff growth (×1.6) with a wider spread (±50 % instead of ±20 %:
/// agents that failed together against an overloaded control plane retried
/// together again with ±20 %, wave after wave; the many-agents benchmark
/// measures the restart), reset after 10 s up, one quick retry after a
/// link that was up 1 s (so a second replica killed 3 s after the first
/// costs its agents no more than the first did).
pub const AGENT_RECONNECT: Policy = Policy {
    multiplier: 1.6,
    spread_low: 0.5,
    spread_high: 1.5,
    reset_after: Duration::from_secs(10),
    quick_after: Duration::from_secs(1),
};

/// The retry schedule of one loop (a reconnect loop, a call's retries).
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: Policy,
    base: Duration,
    max: Duration,
    /// Nominal (unspread) delay of the next attempt.
    current: Duration,
    /// When the connection last came up, while it is up.
    up_since: Option<Instant>,
    /// The next delay is the base once, then the schedule goes on.
    quick: bool,
}

impl Backoff {
    /// A schedule starting at `base` and growing to at most `max`. A zero
    /// `base` is raised to 1 ms so a retry loop can never spin; a `max`
    /// below `base` is raised to `base`.
    pub fn new(policy: Policy, base: Duration, max: Duration) -> Backoff {
        let base = base.max(Duration::from_millis(1));
        let max = max.max(base);
        Backoff {
            policy,
            base,
            max,
            current: base,
            up_since: None,
            quick: false,
        }
    }

    /// The connection is up (again) as of `now`.
    pub fn connected(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// The connection was lost at `now`: if it had been up for the
    /// policy's `reset_after`, the schedule starts from `base` again; if
    /// for its `quick_after`, the next delay only is the base.
    pub fn lost(&mut self, now: Instant) {
        if let Some(since) = self.up_since.take() {
            let up = now.saturating_duration_since(since);
            if up >= self.policy.reset_after {
                self.reset();
            } else if up >= self.policy.quick_after && !self.policy.quick_after.is_zero() {
                self.quick = true;
            }
        }
    }

    /// Start over from `base`.
    pub fn reset(&mut self) {
        self.current = self.base;
        self.quick = false;
    }

    /// The nominal delay (before the spread) of the next attempt.
    pub fn next_nominal(&self) -> Duration {
        if self.quick {
            self.base
        } else {
            self.current
        }
    }

    /// The spread delay to wait before the next attempt; advances the
    /// schedule (a quick retry leaves it where it was).
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.next_nominal();
        if self.quick {
            self.quick = false;
        } else {
            let grown = nominal.as_secs_f64() * self.policy.multiplier;
            self.current = Duration::from_secs_f64(grown.min(self.max.as_secs_f64()));
        }
        let (low, high) = (self.policy.spread_low, self.policy.spread_high);
        let factor = if high > low {
            rand::rng().random_range(low..=high)
        } else {
            low
        };
        nominal.mul_f64(factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(p: &Policy, d: Duration, nominal: Duration) -> bool {
        let s = d.as_secs_f64();
        let n = nominal.as_secs_f64();
        s >= n * p.spread_low - 1e-9 && s <= n * p.spread_high + 1e-9
    }

    #[test]
    fn each_policy_grows_by_its_factor_within_its_spread_and_caps() {
        for policy in [CLIENT_RECONNECT, CLIENT_CALL_RETRY, AGENT_RECONNECT] {
            let (base, max) = (Duration::from_millis(100), Duration::from_secs(30));
            let mut b = Backoff::new(policy, base, max);
            let mut nominal = base;
            for _ in 0..60 {
                assert_eq!(b.next_nominal(), nominal);
                let d = b.next_delay();
                assert!(
                    within(&policy, d, nominal),
                    "{policy:?}: {d:?} vs {nominal:?}"
                );
                nominal = Duration::from_secs_f64(
                    (nominal.as_secs_f64() * policy.multiplier).min(max.as_secs_f64()),
                );
            }
            let expect_cap = if policy.multiplier > 1.0 { max } else { base };
            assert_eq!(b.next_nominal(), expect_cap, "{policy:?}");
        }
    }

    #[test]
    fn client_delays_never_exceed_the_users_ceiling() {
        let max = Duration::from_secs(2);
        let mut b = Backoff::new(CLIENT_RECONNECT, Duration::from_millis(300), max);
        for _ in 0..200 {
            assert!(b.next_delay() <= max);
        }
    }

    #[test]
    fn resets_only_after_staying_up_for_the_policys_stretch() {
        let t0 = Instant::now();
        let mut b = Backoff::new(
            AGENT_RECONNECT,
            Duration::from_secs(1),
            Duration::from_secs(60),
        );
        for _ in 0..4 {
            b.next_delay();
        }
        let grown = b.next_nominal();
        assert!(grown > Duration::from_secs(6), "{grown:?}");
        // Up for half a second, then lost: keep backing off from where it
        // was (no quick retry for a link that drops at once).
        b.connected(t0);
        b.lost(t0 + Duration::from_millis(500));
        assert_eq!(b.next_nominal(), grown);
        // Up for 5 s, then lost: one quick retry at the base, and if it
        // fails, on from where the schedule was.
        b.connected(t0);
        b.lost(t0 + Duration::from_secs(5));
        assert_eq!(b.next_nominal(), Duration::from_secs(1));
        let d = b.next_delay();
        assert!(d <= Duration::from_millis(1500), "{d:?}");
        assert_eq!(b.next_nominal(), grown);
        // Up for the policy's stretch: the next loss starts from base.
        b.connected(t0 + Duration::from_secs(20));
        b.lost(t0 + Duration::from_secs(20) + AGENT_RECONNECT.reset_after);
        assert_eq!(b.next_nominal(), Duration::from_secs(1));
        // A loss without a connection in between changes nothing.
        b.next_delay();
        let n = b.next_nominal();
        b.lost(t0 + Duration::from_secs(100));
        assert_eq!(b.next_nominal(), n);
    }

    #[test]
    fn a_zero_base_never_spins_and_a_low_max_is_raised() {
        let mut b = Backoff::new(AGENT_RECONNECT, Duration::ZERO, Duration::ZERO);
        assert_eq!(b.next_nominal(), Duration::from_millis(1));
        assert!(b.next_delay() >= Duration::from_micros(500));
        assert_eq!(b.next_nominal(), Duration::from_millis(1));
    }
}
