//! Cheap reachability probes while the agent backs off, so it comes back
//! within seconds after a long outage heals instead of sleeping out a delay
//! of up to ~45 s.
//!
//! During a backoff wait the agent opens a plain TCP connection to the
//! server address every 1–2 s (jittered) and closes it at once: no TLS, no
//! gRPC, and a server that is down answers with a kernel RST. When the
//! server turns reachable again the rest of the wait is cut to a random
//! spread (at most [`MAX_SPREAD`]) so a fleet of agents does not reconnect
//! in the same instant: every waiting agent sees the heal within the same
//! 1–2 s, so this spread is what a restarted control plane gets as its
//! arrival window.
//!
//! A probe only shortcuts a wait after it saw the server *unreachable*
//! earlier in that same wait: the outage healed. A server that accepts TCP
//! but fails the full connection (TLS or gRPC handshake, refusal) is
//! reachable from the first probe on, so its waits are never cut and it
//! sees the normal growing backoff.

use std::time::Duration;

use rand::Rng;

/// Waits shorter than this are slept out without probing.
pub const MIN_PROBED_WAIT: Duration = Duration::from_secs(2);
/// Shortest time between two probes (before jitter spreads it).
pub const PROBE_EVERY_MIN: Duration = Duration::from_secs(1);
/// Longest time between two probes.
pub const PROBE_EVERY_MAX: Duration = Duration::from_secs(2);
/// How long one probe may take (name resolution and TCP handshake); a
/// blackholed address counts as unreachable after this.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest random delay between a successful probe and the full attempt.
/// Every waiting agent sees a heal within the same 1–2 s, so this is the
/// window a restarted control plane gets their attempts in: at 1 s, 18,000
/// simulated agents came back within ~3 s, several times what it registers
/// per second. It cannot grow much: one agent must still be back within 5 s
/// of a heal (probe interval + spread + connecting; issue 10).
pub const MAX_SPREAD: Duration = Duration::from_secs(2);

/// What to do after a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Still unreachable: probe again later.
    KeepProbing,
    /// Reachable again after being unreachable in this wait: attempt the
    /// full connection after [`spread`].
    ReconnectNow,
    /// Reachable from the start of the wait, so the failed attempt was not
    /// about reachability: sleep out the full backoff delay.
    WaitOut,
}

/// Tracks the probes of one backoff wait. Create a new one per wait.
#[derive(Debug, Default)]
pub struct HealWatch {
    seen_unreachable: bool,
}

impl HealWatch {
    /// Records one probe result and says what to do next.
    pub fn observe(&mut self, reachable: bool) -> Verdict {
        match (reachable, self.seen_unreachable) {
            (false, _) => {
                self.seen_unreachable = true;
                Verdict::KeepProbing
            }
            (true, true) => Verdict::ReconnectNow,
            (true, false) => Verdict::WaitOut,
        }
    }
}

/// Whether a backoff wait of `delay` is worth probing.
pub fn worth_probing(delay: Duration) -> bool {
    delay >= MIN_PROBED_WAIT
}

/// Time until the next probe: uniform in [`PROBE_EVERY_MIN`, `PROBE_EVERY_MAX`].
pub fn probe_interval() -> Duration {
    let s = rand::rng().random_range(PROBE_EVERY_MIN.as_secs_f64()..=PROBE_EVERY_MAX.as_secs_f64());
    Duration::from_secs_f64(s)
}

/// Random delay before the full attempt once the server is reachable again:
/// uniform in [0, [`MAX_SPREAD`]], never past what was `remaining` of the
/// backoff wait.
pub fn spread(remaining: Duration) -> Duration {
    let s = rand::rng().random_range(0.0..=MAX_SPREAD.as_secs_f64());
    Duration::from_secs_f64(s).min(remaining)
}

/// `host` and `port` to probe for a `http://` or `https://` server URL
/// (the address the agent dials). `None` when the URL has no host.
pub fn target(uri: &http::Uri) -> Option<(String, u16)> {
    let host = uri.host()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    Some((host.to_owned(), port))
}

/// One probe: true when a TCP connection to `host:port` opens within
/// [`PROBE_TIMEOUT`]. The connection is closed at once.
pub async fn reachable(host: &str, port: u16) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect((host, port))).await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heal_after_an_unreachable_probe_cuts_the_wait() {
        let mut w = HealWatch::default();
        assert_eq!(w.observe(false), Verdict::KeepProbing);
        assert_eq!(w.observe(false), Verdict::KeepProbing);
        assert_eq!(w.observe(true), Verdict::ReconnectNow);
    }

    #[test]
    fn a_server_reachable_from_the_first_probe_gets_the_full_backoff() {
        // Accepts TCP but failed the full attempt: no shortcut in this wait.
        let mut w = HealWatch::default();
        assert_eq!(w.observe(true), Verdict::WaitOut);
        // Each wait starts a fresh watch: the same server never cuts a
        // wait, however many attempts fail.
        for _ in 0..10 {
            assert_eq!(HealWatch::default().observe(true), Verdict::WaitOut);
        }
    }

    #[test]
    fn short_waits_are_not_probed() {
        assert!(!worth_probing(Duration::from_millis(1600)));
        assert!(worth_probing(Duration::from_secs(2)));
        assert!(worth_probing(Duration::from_secs(36)));
    }

    #[test]
    fn probes_are_spread_between_1_and_2_s() {
        let intervals: Vec<Duration> = (0..200).map(|_| probe_interval()).collect();
        assert!(intervals
            .iter()
            .all(|d| *d >= PROBE_EVERY_MIN && *d <= PROBE_EVERY_MAX));
        assert!(
            intervals.iter().any(|d| *d != intervals[0]),
            "no jitter: {intervals:?}"
        );
    }

    #[test]
    fn the_reconnect_spread_covers_up_to_2_s_and_never_past_the_wait() {
        let spreads: Vec<Duration> = (0..400).map(|_| spread(Duration::from_secs(30))).collect();
        assert!(spreads.iter().all(|d| *d <= MAX_SPREAD));
        assert!(
            spreads.iter().any(|d| *d < Duration::from_millis(500)),
            "never quick: {spreads:?}"
        );
        assert!(
            spreads.iter().any(|d| *d > Duration::from_millis(1500)),
            "never spread wide: {spreads:?}"
        );
        for _ in 0..50 {
            assert!(spread(Duration::from_millis(100)) <= Duration::from_millis(100));
        }
    }

    #[test]
    fn the_target_is_the_dialled_address() {
        let t = |s: &str| target(&s.parse().unwrap());
        assert_eq!(
            t("http://127.0.0.1:50051"),
            Some(("127.0.0.1".into(), 50051))
        );
        assert_eq!(
            t("https://cp.example.com"),
            Some(("cp.example.com".into(), 443))
        );
        assert_eq!(
            t("http://cp.example.com"),
            Some(("cp.example.com".into(), 80))
        );
        assert_eq!(t("http://[::1]:7000"), Some(("::1".into(), 7000)));
    }

    #[tokio::test]
    async fn a_probe_sees_a_listening_port_and_a_closed_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(reachable("127.0.0.1", port).await);
        drop(listener);
        assert!(!reachable("127.0.0.1", port).await);
    }
}
