//! Exponential backoff with jitter for reconnection attempts.

use std::time::Duration;

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
