//! `systemctl reload` (`ExecReload=` sends SIGHUP) for `cmdop server` and
//! `cmdop agent`: the command line, the environment and the `--config` file
//! are read again, exactly as at start. What can change in a running
//! process changes at once — the log level (`log_level`, `-v`, `CMDOP_LOG`)
//! — and every other setting that differs is named in a warning saying it
//! takes effect at the next restart. A file that no longer parses changes
//! nothing: the error is logged and the running settings stay.
//!
//! Hand-rolled rather than a crate: it is the same parse as at start
//! ([`crate::config_file::apply`]) plus a diff of the `--check` text.

use std::collections::BTreeMap;

use clap::{CommandFactory, FromArgMatches};

use crate::{config_file, logging, Cli, Command};

/// Settings a reload applies without a restart.
const LIVE: &[&str] = &["log_level"];

/// What one read of the settings gave: the `--check` text and the log
/// filter.
struct Settings {
    effective: String,
    filter: String,
}

/// Reads the settings of `cmdop NAME` again from this process's command
/// line, environment and `--config` file.
fn read(name: &str) -> anyhow::Result<Settings> {
    let command = Cli::command();
    let matches = command
        .clone()
        .try_get_matches_from(std::env::args_os())
        .map_err(|e| anyhow::anyhow!("{}", e.render()))?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cli = config_file::apply(&command, cli, &matches)?;
    let filter = logging::filter_for(cli.log_level.as_deref(), cli.verbose, "info");
    let effective = match cli.command {
        Command::Server(args) if name == "server" => args.effective,
        Command::Agent(args) if name == "agent" => args.effective,
        _ => anyhow::bail!("the command line no longer runs `cmdop {name}`"),
    };
    Ok(Settings { effective, filter })
}

/// `key -> value` of a `--check` text (the "# from …" part dropped).
fn values(effective: &str) -> BTreeMap<String, String> {
    effective
        .lines()
        .filter_map(|line| {
            let line = line.trim_start_matches("# ");
            let (key, rest) = line.split_once(" =")?;
            let value = rest.rsplit_once(" # ").map_or(rest, |(v, _)| v).trim();
            Some((key.trim().to_string(), value.to_string()))
        })
        .collect()
}

/// The settings that differ between two `--check` texts, in key order.
fn changed(before: &str, after: &str) -> Vec<String> {
    let (before, after) = (values(before), values(after));
    let keys: std::collections::BTreeSet<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    keys.into_iter().cloned().collect()
}

/// Tells systemd a reload is under way (`Type=notify-reload` waits for the
/// READY=1 that follows); nothing without `$NOTIFY_SOCKET`.
fn notify(reloading: bool) {
    let mut states = vec![if reloading {
        sd_notify::NotifyState::Reloading
    } else {
        sd_notify::NotifyState::Ready
    }];
    if reloading {
        if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
            states.push(now);
        }
    }
    if let Err(e) = sd_notify::notify(&states) {
        tracing::warn!(error = %e, "cannot notify the service manager ($NOTIFY_SOCKET)");
    }
}

/// Applies one reload; `current` is what the process runs with and
/// becomes what the reload read (the restart-only settings included, so
/// each change is reported once).
fn reload(name: &str, current: &mut String) {
    let unit = format!("cmdop-{name}");
    let next = match read(name) {
        Ok(next) => next,
        Err(err) => {
            tracing::error!(
                error = %format!("{err:#}"),
                "reload refused: the settings did not parse; the running settings stay. Fix the file, check it with `cmdop {name} --config FILE --check`, then `systemctl reload {unit}`"
            );
            return;
        }
    };
    let keys = changed(current, &next.effective);
    match logging::set_filter(&next.filter) {
        Ok(()) => {}
        Err(err) => {
            tracing::error!(error = %err, "reload: the log level did not change");
        }
    }
    for key in keys.iter().filter(|k| !LIVE.contains(&k.as_str())) {
        tracing::warn!(
            setting = %key,
            "reload: `{key}` changed; it takes effect at the next restart (`systemctl restart {unit}`)"
        );
    }
    tracing::info!(log_level = %next.filter, changed = keys.len(), "settings reloaded");
    *current = next.effective;
}

/// Reloads on every SIGHUP from now until the process ends (the handler
/// is in place when this returns). `effective` is the `--check` text the
/// process started with.
pub fn on_hangup(name: &'static str, effective: String) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch for SIGHUP; `systemctl reload` will not work");
            return;
        }
    };
    tokio::spawn(async move {
        let mut current = effective;
        while hangup.recv().await.is_some() {
            notify(true);
            reload(name, &mut current);
            notify(false);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_changed_settings() {
        let before = "listen = \"127.0.0.1:1\"     # flag\n# metrics_listen =     # not set\nlog_level = \"info\"  # config file\nlabel = [\"a=b\"] # config file\n";
        let after = "listen = \"127.0.0.1:1\"     # flag\nmetrics_listen = \"127.0.0.1:9\" # config file\nlog_level = \"debug\"  # config file\nlabel = [\"a=b\"] # default\n";
        assert_eq!(changed(before, after), vec!["log_level", "metrics_listen"]);
        assert!(changed(before, before).is_empty());
    }
}
