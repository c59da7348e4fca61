//! Whether this server should be sent new work, for load balancers: the
//! standard gRPC health service (`grpc.health.v1.Health`) on the main port,
//! and [`Serving::is_ready`] for `/readyz` on the metrics port.
//!
//! A server is ready once it listens, and stops being ready while it
//! drains before stopping, or while its (networked) database has been
//! unreachable for longer than `--db-outage-grace-secs`. The health
//! service needs no credential (load balancers have none); the gate lets
//! it through like any method it does not guard.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;
use tonic_health::{server::HealthReporter, ServingStatus};

use crate::store::Store;

/// How often a networked database is probed.
const DATABASE_PROBE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Flags {
    listening: bool,
    draining: bool,
    database_down: bool,
}

impl Flags {
    fn ready(self) -> bool {
        self.listening && !self.draining && !self.database_down
    }
}

/// The serving state of one server, shared with whoever reports it
/// (`ServerConfig::serving`; cloning shares it).
#[derive(Clone)]
pub struct Serving(Arc<watch::Sender<Flags>>);

impl Default for Serving {
    fn default() -> Self {
        Serving(Arc::new(watch::Sender::new(Flags::default())))
    }
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Serving").field(&*self.0.borrow()).finish()
    }
}

impl Serving {
    /// Listening, not draining, database reachable (or within its grace).
    pub fn is_ready(&self) -> bool {
        self.0.borrow().ready()
    }

    fn set(&self, change: impl FnOnce(&mut Flags)) {
        self.0.send_if_modified(|flags| {
            let before = *flags;
            change(flags);
            *flags != before
        });
    }

    pub(crate) fn listening(&self) {
        self.set(|f| f.listening = true);
    }

    pub(crate) fn draining(&self) {
        self.set(|f| f.draining = true);
    }

    fn database_down(&self, down: bool) {
        self.set(|f| f.database_down = down);
    }
}

/// Keeps the health service's overall status (service name "") in step
/// with `serving` until the server stops.
pub async fn report(serving: Serving, reporter: HealthReporter) {
    let mut rx = serving.0.subscribe();
    loop {
        let ready = rx.borrow_and_update().ready();
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        reporter.set_service_status("", status).await;
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Probes a networked database (PostgreSQL) every second; when it has been
/// unreachable for longer than `grace`, the server is not ready until it
/// answers again. Returns at once for SQLite.
pub async fn watch_database(store: Arc<Store>, serving: Serving, grace: Duration) {
    if !store.is_networked() {
        return;
    }
    let mut down_since: Option<Instant> = None;
    let mut ticker = tokio::time::interval(DATABASE_PROBE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let st = Arc::clone(&store);
        // Any cheap statement does; an unknown id reads one index entry.
        let probe = tokio::task::spawn_blocking(move || st.workspace_by_id("")).await;
        let unreachable = matches!(&probe, Ok(Err(e)) if crate::store::is_unavailable_error(e));
        if unreachable {
            let since = *down_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= grace && !serving.0.borrow().database_down {
                tracing::warn!(
                    grace = ?grace,
                    "the database has been unreachable longer than --db-outage-grace-secs; \
                     reporting NOT_SERVING until it answers"
                );
                serving.database_down(true);
            }
        } else if down_since.take().is_some() && serving.0.borrow().database_down {
            tracing::info!("the database answers again; reporting SERVING");
            serving.database_down(false);
        }
    }
}
