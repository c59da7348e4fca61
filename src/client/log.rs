//! Library logging: every message goes to `tracing` and, when the
//! application installed one, to a log sink (the C log callback).
//!
//! Debug-level messages (request/response summaries) are only produced by
//! clients created with `debug = true`. Messages never contain keys or tokens.

use parking_lot::RwLock;
use std::sync::Arc;

/// Severity, ordered from most to least severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

/// Receives `(level, message)`; may run on any thread.
pub type LogSink = Arc<dyn Fn(LogLevel, &str) + Send + Sync>;

static SINK: RwLock<Option<(LogLevel, LogSink)>> = RwLock::new(None);

/// Install the process-wide sink receiving messages up to `max_level`
/// (`None` removes it).
pub fn set_log_sink(sink: Option<(LogLevel, LogSink)>) {
    let old = {
        let mut slot = SINK.write();
        std::mem::replace(&mut *slot, sink)
    };
    // Dropped outside the lock: dropping the last reference runs the
    // application's finaliser, which may log or install a new sink.
    drop(old);
}

/// Log `message()` at `level`; `debug` is the client's debug option.
pub(crate) fn log(debug: bool, level: LogLevel, message: impl FnOnce() -> String) {
    if level == LogLevel::Debug && !debug {
        return;
    }
    // Clone the sink out of the lock so that a sink may replace itself.
    let sink = {
        let slot = SINK.read();
        match slot.as_ref() {
            Some((max, sink)) if level <= *max => Some(sink.clone()),
            _ => None,
        }
    };
    let tracing_wants = match level {
        LogLevel::Error => tracing::enabled!(tracing::Level::ERROR),
        LogLevel::Warn => tracing::enabled!(tracing::Level::WARN),
        LogLevel::Info => tracing::enabled!(tracing::Level::INFO),
        LogLevel::Debug => tracing::enabled!(tracing::Level::DEBUG),
    };
    if sink.is_none() && !tracing_wants {
        return;
    }
    let text = message();
    match level {
        LogLevel::Error => tracing::error!("{text}"),
        LogLevel::Warn => tracing::warn!("{text}"),
        LogLevel::Info => tracing::info!("{text}"),
        LogLevel::Debug => tracing::debug!("{text}"),
    }
    if let Some(sink) = sink {
        sink(level, &text);
    }
}
