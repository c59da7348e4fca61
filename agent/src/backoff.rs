//! Reconnect delays following gRPC's connection-backoff algorithm: start at
//! `base`, multiply by 1.6 after each failed attempt up to `max`, and spread
//! every delay uniformly by ±50 % so a fleet of agents does not reconnect in
//! lockstep after a control-plane restart.
//!
//! The spread is wider than gRPC's ±20 %: agents that failed together (a
//! control plane overwhelmed by every agent coming back at once) retried
//! together again with ±20 %, wave after wave; the many-agents benchmark
//! (`bench/run`, agents case) measures the restart.

use std::time::Duration;

use rand::Rng;

/// Growth factor between consecutive attempts.
const MULTIPLIER: f64 = 1.6;
/// Relative jitter applied to each delay (±50 %).
pub const JITTER: f64 = 0.5;
/// A connection that stayed up at least this long resets the backoff.
pub const RESET_AFTER: Duration = Duration::from_secs(10);
/// Default cap of the delay (before jitter): after an outage of any length
/// the agent's next attempt comes at most ~45 s after the server is back;
/// TCP probes during the wait ([`crate::probe`]) usually cut that to ~1-3 s.
pub const DEFAULT_MAX: Duration = Duration::from_secs(30);

/// Exponential backoff state for one reconnect loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    /// Delay before jitter for the next attempt.
    current: Duration,
}

impl Backoff {
    /// A backoff starting at `base` and growing to at most `max`. A zero
    /// `base` is raised to 1 ms so the loop can never spin.
    pub fn new(base: Duration, max: Duration) -> Self {
        let base = base.max(Duration::from_millis(1));
        let max = max.max(base);
        Self {
            base,
            max,
            current: base,
        }
    }

    /// The delay to wait before the next attempt; advances the schedule.
    pub fn next_delay(&mut self) -> Duration {
        let unjittered = self.current;
        let grown = unjittered.as_secs_f64() * MULTIPLIER;
        self.current = Duration::from_secs_f64(grown.min(self.max.as_secs_f64()));
        let factor = 1.0 + rand::rng().random_range(-JITTER..=JITTER);
        Duration::from_secs_f64(unjittered.as_secs_f64() * factor)
    }

    /// Start over from `base` (after a connection that stayed up).
    pub fn reset(&mut self) {
        self.current = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(d: Duration, nominal: f64) -> bool {
        let s = d.as_secs_f64();
        s >= nominal * (1.0 - JITTER) - 1e-9 && s <= nominal * (1.0 + JITTER) + 1e-9
    }

    #[test]
    fn grows_by_1_6_within_jitter_and_caps_at_max() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(120));
        let mut nominal = 1.0_f64;
        for _ in 0..40 {
            let d = b.next_delay();
            assert!(within(d, nominal), "{d:?} not within ±50% of {nominal}");
            nominal = (nominal * MULTIPLIER).min(120.0);
        }
        // Far along the schedule every delay stays within the jittered cap.
        for _ in 0..100 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs_f64(120.0 * (1.0 + JITTER) + 1e-6));
            assert!(d >= Duration::from_secs_f64(120.0 * (1.0 - JITTER) - 1e-6));
        }
    }

    #[test]
    fn delays_of_agents_failing_together_spread_over_half_to_one_and_a_half_times() {
        // Many agents at the same point of the schedule (they all failed at
        // once): their next attempts must not bunch up.
        let delays: Vec<f64> = (0..2000)
            .map(|_| {
                let mut b = Backoff::new(Duration::from_secs(4), Duration::from_secs(30));
                b.next_delay().as_secs_f64()
            })
            .collect();
        assert!(delays
            .iter()
            .all(|&d| (2.0 - 1e-9..=6.0 + 1e-9).contains(&d)));
        let lo = delays.iter().copied().fold(f64::MAX, f64::min);
        let hi = delays.iter().copied().fold(f64::MIN, f64::max);
        assert!(lo < 2.4 && hi > 5.6, "spread only over {lo:.2}..{hi:.2} s");
        // Roughly uniform: each quarter of the window gets a fair share.
        for q in 0..4 {
            let (from, to) = (2.0 + q as f64, 3.0 + q as f64);
            let n = delays.iter().filter(|&&d| d >= from && d < to).count();
            assert!(n > 300, "{n} of 2000 delays in {from}..{to} s");
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        for _ in 0..10 {
            b.next_delay();
        }
        b.reset();
        assert!(within(b.next_delay(), 0.1));
    }

    #[test]
    fn default_schedule_caps_at_30_s_plus_jitter_and_resets_after_a_healthy_connection() {
        let config = crate::AgentConfig::default();
        let mut b = Backoff::new(config.reconnect_base, config.reconnect_max);
        // A long outage: many failed attempts in a row.
        for _ in 0..200 {
            let d = b.next_delay();
            assert!(
                d <= Duration::from_secs_f64(30.0 * (1.0 + JITTER) + 1e-6),
                "{d:?} exceeds the 30 s cap with jitter"
            );
        }
        // Jitter spreads the capped delays instead of repeating one value.
        let capped: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
        assert!(
            capped.iter().any(|d| *d != capped[0]),
            "no jitter: {capped:?}"
        );
        // After a connection that stayed up the first retry is quick again.
        b.reset();
        assert!(within(b.next_delay(), config.reconnect_base.as_secs_f64()));
    }

    #[test]
    fn zero_base_never_spins() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert!(b.next_delay() >= Duration::from_micros(400));
    }
}
