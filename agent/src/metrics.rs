//! The agent's Prometheus metrics: one registry per process, every metric
//! name defined here once. No label carries a command, a path, an id or a
//! hostname. `cmdop agent --metrics-listen ADDR` serves [`encode`] on
//! `/metrics`.

use std::{sync::LazyLock, time::Duration};

use prometheus_client::{
    metrics::{
        counter::Counter,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::{Registry, Unit},
};

struct Metrics {
    registry: Registry,
    commands_running: Gauge,
    spawn_duration: Histogram,
    reconnects: Counter,
    orphans_reaped: Counter,
    connected: Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("cmdop_agent");
    let commands_running = Gauge::default();
    // 50 µs to about 1.6 s.
    let spawn_duration = Histogram::new(exponential_buckets(0.00005, 2.0, 16));
    let reconnects = Counter::default();
    let orphans_reaped = Counter::default();
    let connected = Gauge::default();
    registry.register(
        "commands_running",
        "Native Exec commands running now",
        commands_running.clone(),
    );
    registry.register_with_unit(
        "spawn_duration",
        "Time to start one command's shell (fork and exec)",
        Unit::Seconds,
        spawn_duration.clone(),
    );
    registry.register(
        "reconnects",
        "Connections to the control plane opened again after one ended or failed",
        reconnects.clone(),
    );
    registry.register(
        "orphans_reaped",
        "Process groups of commands a previous agent left running, killed at start-up",
        orphans_reaped.clone(),
    );
    registry.register(
        "connected",
        "1 while the agent's link to a control plane is up",
        connected.clone(),
    );
    Metrics {
        registry,
        commands_running,
        spawn_duration,
        reconnects,
        orphans_reaped,
        connected,
    }
});

/// The registry in Prometheus/OpenMetrics text format.
pub fn encode() -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &METRICS.registry);
    out
}

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Counts a command as running until dropped.
pub(crate) struct Running(());

impl Running {
    pub(crate) fn start() -> Running {
        METRICS.commands_running.inc();
        Running(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        METRICS.commands_running.dec();
    }
}

pub(crate) fn spawned(took: Duration) {
    METRICS.spawn_duration.observe(took.as_secs_f64());
}

pub(crate) fn reconnect() {
    METRICS.reconnects.inc();
}

pub(crate) fn orphans_reaped(groups: usize) {
    METRICS.orphans_reaped.inc_by(groups as u64);
}

pub(crate) fn connected(up: bool) {
    METRICS.connected.set(i64::from(up));
}

/// Whether the link to a control plane is up (the agent's `/readyz`).
pub fn is_connected() -> bool {
    METRICS.connected.get() == 1
}
