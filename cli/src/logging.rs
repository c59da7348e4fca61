//! Logs to stderr via `tracing`: text (coloured only on a terminal) or one
//! JSON object per line, at a level chosen by `--log-level` or `-v`/`-vv`.

use std::{
    io::IsTerminal,
    sync::atomic::{AtomicU8, Ordering},
};

use parking_lot::Mutex;
use tracing_subscriber::{
    filter::Targets, layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter, Layer,
    Registry,
};

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line with the fields `timestamp`, `level`,
    /// `target` and `message` (plus the event's own fields).
    Json,
}

/// How many `-v` were given; the client commands read it to turn on the
/// library's own debug messages.
static VERBOSITY: AtomicU8 = AtomicU8::new(0);

/// The number of `-v` flags given (0 without any).
pub fn verbosity() -> u8 {
    VERBOSITY.load(Ordering::Relaxed)
}

/// The crates whose debug messages `-v` shows: ours (the library and this
/// binary are both `cmdop`), not the HTTP/2, gRPC and TLS stacks underneath
/// (those need `-vv`).
const OUR_CRATES: &[&str] = &[
    "cmdop",
    "cmdop_controlplane",
    "cmdop_agent",
    "cmdop_localpg",
];

/// The tracing filter for `--log-level` (wins when given), else `-v`
/// (`verbose` = 1: our crates at debug; 2 or more: everything at debug,
/// HTTP/2 internals included), else `default`.
pub fn filter_for(log_level: Option<&str>, verbose: u8, default: &str) -> String {
    if let Some(level) = log_level {
        return level.to_string();
    }
    match verbose {
        0 => default.to_string(),
        1 => {
            let mut f = default.to_string();
            for c in OUR_CRATES {
                f.push_str(&format!(",{c}=debug"));
            }
            f
        }
        _ => "debug".to_string(),
    }
}

/// Changes the filter of the installed subscriber ([`init`]), for
/// `systemctl reload` ([`crate::reload`]).
static FILTER: Mutex<Option<reload::Handle<EnvFilter, Registry>>> = Mutex::new(None);

/// Replaces the log filter (same syntax as `--log-level`; `RUST_LOG`, when
/// set, still wins as at start).
pub fn set_filter(filter: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .map_err(|e| anyhow::anyhow!("--log-level {filter}: {e}"))?;
    match FILTER.lock().as_ref() {
        Some(handle) => handle
            .reload(filter)
            .map_err(|e| anyhow::anyhow!("cannot change the log level: {e}")),
        None => anyhow::bail!("no log subscriber is installed"),
    }
}

/// Installs a stderr subscriber. `filter` is a tracing filter such as
/// `info` or `cmdop_controlplane=debug,info`; `RUST_LOG` overrides it.
/// Colours only when stderr is a terminal and `NO_COLOR` is not set, so a
/// log written to a file or a pipe holds no escape codes.
pub fn init(filter: &str, verbose: u8, format: LogFormat) {
    VERBOSITY.store(verbose, Ordering::Relaxed);
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let lines = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // The agent's warnings are kept whatever the level shown, so that
    // `cmdop dev` can say why its agent did not connect.
    let agent_problems = Targets::new().with_target("cmdop_agent", tracing::Level::WARN);
    let (filter, handle) = reload::Layer::new(filter);
    *FILTER.lock() = Some(handle);
    let _ = tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(LastAgentProblem.with_filter(agent_problems))
        .try_init();
}

/// The last warning or error an agent in this process logged.
static LAST_AGENT_PROBLEM: Mutex<Option<String>> = Mutex::new(None);

/// The last warning or error the agent running in this process (`cmdop
/// dev`) logged, as "message (field: value, …)".
pub fn last_agent_problem() -> Option<String> {
    LAST_AGENT_PROBLEM.lock().clone()
}

/// Records each event it sees in [`LAST_AGENT_PROBLEM`].
struct LastAgentProblem;

impl<S: tracing::Subscriber> Layer<S> for LastAgentProblem {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut text = EventText::default();
        event.record(&mut text);
        let line = if text.fields.is_empty() {
            text.message
        } else {
            format!("{} ({})", text.message, text.fields.join(", "))
        };
        *LAST_AGENT_PROBLEM.lock() = Some(line);
    }
}

/// An event's message and its other fields as `name: value`.
#[derive(Default)]
struct EventText {
    message: String,
    fields: Vec<String>,
}

impl tracing::field::Visit for EventText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields.push(format!("{}: {value:?}", field.name()));
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields.push(format!("{}: {value}", field.name()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_level_wins_then_verbosity_then_the_default() {
        assert_eq!(filter_for(Some("trace"), 2, "warn"), "trace");
        assert_eq!(filter_for(None, 0, "warn"), "warn");
        let one = filter_for(None, 1, "warn");
        assert!(one.starts_with("warn,"), "{one}");
        assert!(one.contains("cmdop=debug"), "{one}");
        assert!(!one.contains("h2"), "HTTP/2 internals only at -vv: {one}");
        assert_eq!(filter_for(None, 2, "warn"), "debug");
    }
}
