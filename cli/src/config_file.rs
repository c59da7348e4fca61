//! `--config FILE` of `cmdop server` and `cmdop agent`: a TOML file whose
//! keys are the command's long flags with `_` for `-` (`listen`,
//! `data_dir`, `metrics_listen`, `label = ["env=prod"]`, `log_level`).
//!
//! Precedence: a flag on the command line wins over its environment
//! variable, which wins over the file, which wins over the default. This
//! is done by asking clap where each value came from, and giving the file's
//! value only to arguments that came from neither the command line nor the
//! environment; the command line is then parsed again with those added. A
//! key that is no flag of the command is an error naming it.
//!
//! `--check` prints the effective settings ([`render`]) as a config file,
//! secrets masked, each with where it came from.

use std::{collections::BTreeSet, ffi::OsString, path::Path};

use anyhow::{bail, Context};
use clap::{parser::ValueSource, ArgMatches, FromArgMatches};

use crate::{Cli, Command};

/// Flags a config file cannot set: the file itself, and what only makes
/// sense on a command line (`-v`/`-vv` is a count, for one run).
const NOT_IN_FILES: &[&str] = &["config", "check", "help", "version", "verbose"];

/// Applies the `--config` file of `cmdop server` / `cmdop agent`, if any,
/// and fills in what `--check` prints. Other commands pass through.
pub fn apply(command: &clap::Command, cli: Cli, matches: &ArgMatches) -> anyhow::Result<Cli> {
    let Some((name, sub_matches)) = matches.subcommand() else {
        return Ok(cli);
    };
    if !matches!(name, "server" | "agent") {
        return Ok(cli);
    }
    let mut built = command.clone();
    built.build();
    let sub = built
        .find_subcommand(name)
        .context("subcommand vanished")?
        .clone();
    let Some(path) = sub_matches.get_one::<std::path::PathBuf>("config").cloned() else {
        return with_effective(cli, &sub, sub_matches, &BTreeSet::new());
    };
    let extra = file_arguments(&sub, sub_matches, &path, name)?;
    let from_file: BTreeSet<String> = extra.iter().map(|(id, _)| id.clone()).collect();
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    argv.extend(extra.into_iter().flat_map(|(_, args)| args));
    let matches = built
        .clone()
        .try_get_matches_from(argv)
        .map_err(|e| anyhow::anyhow!("{} (from --config {})", e.render(), path.display()))?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (_, sub_matches) = matches.subcommand().context("subcommand vanished")?;
    with_effective(cli, &sub, sub_matches, &from_file)
}

/// `--check`: the effective settings, kept for the command to print once
/// it has validated them.
fn with_effective(
    mut cli: Cli,
    sub: &clap::Command,
    matches: &ArgMatches,
    from_file: &BTreeSet<String>,
) -> anyhow::Result<Cli> {
    let text = render(sub, matches, from_file);
    match &mut cli.command {
        Command::Server(args) => args.effective = text,
        Command::Agent(args) => args.effective = text,
        _ => {}
    }
    Ok(cli)
}

/// The flags (per argument id) that give the file's values to arguments
/// not set on the command line or in the environment.
fn file_arguments(
    sub: &clap::Command,
    matches: &ArgMatches,
    path: &Path,
    name: &str,
) -> anyhow::Result<Vec<(String, Vec<OsString>)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --config {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("--config {} is not valid TOML", path.display()))?;
    warn_if_readable(path, &table);
    let mut out = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            .filter(|_| !key.contains('-') && !NOT_IN_FILES.contains(&key.as_str()));
        let Some(arg) = arg else {
            if NOT_IN_FILES.contains(&key.as_str()) {
                bail!(
                    "`{key}` in --config {}: this setting only works on the command line; \
                     remove it from the file and pass --{long}",
                    path.display()
                );
            }
            if key.contains('-') {
                bail!(
                    "unknown key `{key}` in --config {}: keys are long flag names with `_` for \
                     `-`; write it as {}",
                    path.display(),
                    key.replace('-', "_")
                );
            }
            bail!(
                "unknown key `{key}` in --config {}: `cmdop {name}` has no --{long} flag; \
                 see `cmdop {name} --help` for the settings a config file can hold",
                path.display(),
            );
        };
        let id = arg.get_id().as_str();
        if matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let long = format!("--{long}");
        let takes_values = arg.get_action().takes_values();
        let mut args: Vec<OsString> = Vec::new();
        let bad = |what: &str| anyhow::anyhow!("`{key}` in --config {}: {what}", path.display());
        match value {
            toml::Value::Boolean(b) if !takes_values => {
                if *b {
                    args.push(long.clone().into());
                }
            }
            toml::Value::Array(items) => {
                for item in items {
                    args.push(long.clone().into());
                    args.push(
                        scalar(item)
                            .ok_or_else(|| bad("a list holds only strings and numbers"))?
                            .into(),
                    );
                }
            }
            other if takes_values => {
                args.push(long.clone().into());
                args.push(
                    scalar(other)
                        .ok_or_else(|| bad("expected a string or a number"))?
                        .into(),
                );
            }
            _ => return Err(bad("this flag takes no value: write true or false")),
        }
        out.push((id.to_string(), args));
    }
    Ok(out)
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The effective settings of `sub` as a config file: every flag a file
/// can set, its value (secrets masked) and where it came from.
pub fn render(sub: &clap::Command, matches: &ArgMatches, from_file: &BTreeSet<String>) -> String {
    let mut out = String::new();
    for arg in sub.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else {
            continue;
        };
        let key = long.replace('-', "_");
        if NOT_IN_FILES.contains(&key.as_str()) {
            continue;
        }
        let source = match matches.value_source(id) {
            _ if from_file.contains(id) => "config file".to_string(),
            Some(ValueSource::CommandLine) => "flag".to_string(),
            Some(ValueSource::EnvVariable) => match arg.get_env() {
                Some(env) => format!("environment {}", env.to_string_lossy()),
                None => "environment".to_string(),
            },
            Some(ValueSource::DefaultValue) => "default".to_string(),
            _ => "not set".to_string(),
        };
        let values: Vec<String> = matches
            .get_raw(id)
            .map(|raw| raw.map(|v| mask(id, &v.to_string_lossy())).collect())
            .unwrap_or_default();
        let line = if !arg.get_action().takes_values() {
            format!("{key} = {}", values.first().map_or("false", |v| v.as_str()))
        } else if values.is_empty() {
            format!("# {key} =")
        } else if matches!(arg.get_action(), clap::ArgAction::Append) || values.len() > 1 {
            let quoted: Vec<String> = values.iter().map(|v| quote(v)).collect();
            format!("{key} = [{}]", quoted.join(", "))
        } else {
            format!("{key} = {}", quote(&values[0]))
        };
        out.push_str(&format!("{line:<48} # {source}\n"));
    }
    out
}

/// A value as TOML: integers bare, everything else a string.
fn quote(s: &str) -> String {
    match s.parse::<i64>() {
        Ok(n) => n.to_string(),
        Err(_) => toml::Value::String(s.to_string()).to_string(),
    }
}

fn mask(id: &str, value: &str) -> String {
    if id == "database" {
        // A URL without its password still says where the state is.
        cmdop_controlplane::store::engine::postgres::redact(value)
    } else if crate::secret_flags::is_secret(id) {
        "***".to_string()
    } else {
        value.to_string()
    }
}

/// A config file holding a secret should be readable by its owner only.
fn warn_if_readable(path: &Path, table: &toml::Table) {
    use std::os::unix::fs::PermissionsExt;
    let holds_secret = |(key, value): &(&String, &toml::Value)| match (key.as_str(), value) {
        // A URL without a password is no secret.
        ("database", toml::Value::String(url)) => {
            cmdop_controlplane::store::engine::postgres::redact(url) != *url
        }
        _ => crate::secret_flags::is_secret(key),
    };
    let Some((secret, _)) = table.iter().find(holds_secret) else {
        return;
    };
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        eprintln!(
            "cmdop: warning: --config {} holds `{secret}` and can be read by other users \
             (mode {mode:04o}); run `chmod 600 {}`, or move the secret to its *_file setting",
            path.display(),
            path.display()
        );
    }
}
