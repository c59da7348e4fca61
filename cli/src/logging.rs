//! Structured logs to stderr via `tracing`.

use tracing_subscriber::EnvFilter;

/// Installs a stderr subscriber. `level` is a tracing filter such as
/// `info` or `cmdop_controlplane=debug,info`; `RUST_LOG` overrides it.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
