//! Exponential backoff with jitter for reconnection attempts.

use std::time::{Duration, Instant};

/// How long a connection must stay up before a later loss starts the
/// backoff from `base` again. A connection that keeps dropping soon after
/// each recovery (a flapping server or link) keeps backing off instead of
/// hammering the server at the base rate.
pub const HEALTHY_RESET: Duration = Duration::from_secs(30);

/// Reconnect backoff across losses: the attempt count grows with every
/// failed attempt, survives a short-lived recovery, and resets once the
/// connection was healthy for [`HEALTHY_RESET`].
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    healthy_since: Option<Instant>,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            attempt: 0,
            healthy_since: None,
        }
    }

    /// The connection is up (again) as of `now`.
    pub fn connected(&mut self, now: Instant) {
        self.healthy_since = Some(now);
    }

    /// The connection was lost at `now`: if it had been healthy for
    /// [`HEALTHY_RESET`], the next delay starts from `base` again.
    pub fn lost(&mut self, now: Instant) {
        if let Some(since) = self.healthy_since.take() {
            if now.saturating_duration_since(since) >= HEALTHY_RESET {
                self.attempt = 0;
            }
        }
    }

    /// Number of attempts made since the last reset.
    #[cfg(test)]
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The jittered delay before the next attempt, counting it.
    pub fn next_delay(&mut self) -> Duration {
        let d = backoff_delay(self.base, self.max, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// The ceiling (before jitter) of the next delay.
    #[cfg(test)]
    pub fn next_ceiling(&self) -> Duration {
        backoff_ceiling(self.base, self.max, self.attempt)
    }
}

/// Delay before reconnection attempt `attempt` (0-based): `base * 2^attempt`
/// capped at `max`, then scaled by a random factor in [0.5, 1.0] ("equal
/// jitter") so that many clients dropped at once do not reconnect in step.
pub fn backoff_delay(base: Duration, max: Duration, attempt: u32) -> Duration {
    let ceiling = backoff_ceiling(base, max, attempt);
    let factor = 0.5 + rand::random::<f64>() * 0.5;
    ceiling.mul_f64(factor)
}

/// The delay before jitter: `base * 2^attempt`, never above `max`.
pub fn backoff_ceiling(base: Duration, max: Duration, attempt: u32) -> Duration {
    let multiplier = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    base.checked_mul(multiplier).unwrap_or(max).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_then_caps() {
        let base = Duration::from_millis(1000);
        let max = Duration::from_millis(30_000);
        assert_eq!(backoff_ceiling(base, max, 0), Duration::from_millis(1000));
        assert_eq!(backoff_ceiling(base, max, 1), Duration::from_millis(2000));
        assert_eq!(backoff_ceiling(base, max, 4), Duration::from_millis(16_000));
        assert_eq!(backoff_ceiling(base, max, 5), max);
        assert_eq!(backoff_ceiling(base, max, 40), max);
        assert_eq!(backoff_ceiling(base, max, u32::MAX), max);
    }

    #[test]
    fn backoff_resets_only_after_a_healthy_stretch() {
        let base = Duration::from_millis(1000);
        let max = Duration::from_millis(30_000);
        let t0 = Instant::now();
        let mut b = Backoff::new(base, max);
        b.lost(t0);
        for _ in 0..4 {
            b.next_delay();
        }
        assert_eq!(b.next_ceiling(), Duration::from_millis(16_000));
        // Back for 5 s, then lost again: keep backing off.
        b.connected(t0 + Duration::from_secs(10));
        b.lost(t0 + Duration::from_secs(15));
        assert_eq!(b.next_ceiling(), Duration::from_millis(16_000));
        b.next_delay();
        assert_eq!(b.next_ceiling(), max);
        // Healthy for HEALTHY_RESET: the next loss starts from base.
        b.connected(t0 + Duration::from_secs(60));
        b.lost(t0 + Duration::from_secs(60) + HEALTHY_RESET);
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.next_ceiling(), base);
        let d = b.next_delay();
        assert!(d <= base && d >= base / 2, "{d:?}");
    }

    #[test]
    fn jittered_delay_stays_within_half_and_full_ceiling() {
        let base = Duration::from_millis(100);
        let max = Duration::from_millis(1000);
        for attempt in 0..20 {
            let ceiling = backoff_ceiling(base, max, attempt);
            for _ in 0..50 {
                let d = backoff_delay(base, max, attempt);
                assert!(
                    d <= ceiling && d >= ceiling / 2,
                    "attempt {attempt}: {d:?} vs {ceiling:?}"
                );
            }
        }
    }
}
