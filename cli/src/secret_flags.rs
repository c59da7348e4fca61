//! Flags that carry secrets: the database URL (its password), the peer
//! secret, enrollment tokens and API keys.
//!
//! A command line is readable by every local user (`ps`, /proc/PID/cmdline);
//! a process's environment and a 0600 file are not. Each secret flag
//! therefore has an environment variable and a `…-file` flag, and a secret
//! given on the command line gets a warning naming both.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};
use clap::{parser::ValueSource, ArgMatches};

/// One secret flag: its clap id, its long name, its environment variable
/// and the long name of the flag that reads it from a file.
struct SecretFlag {
    id: &'static str,
    long: &'static str,
    env: &'static str,
    file_long: &'static str,
}

/// Every flag of the CLI that carries a secret.
const SECRET_FLAGS: &[SecretFlag] = &[
    SecretFlag {
        id: "database",
        long: "database",
        env: "CMDOP_DATABASE_URL",
        file_long: "database-url-file",
    },
    SecretFlag {
        id: "peer_secret",
        long: "peer-secret",
        env: "CMDOP_PEER_SECRET",
        file_long: "peer-secret-file",
    },
    SecretFlag {
        id: "token",
        long: "token",
        env: "CMDOP_ENROLL_TOKEN",
        file_long: "token-file",
    },
    SecretFlag {
        id: "api_key",
        long: "api-key",
        env: "CMDOP_API_KEY",
        file_long: "api-key-file",
    },
];

/// Whether the argument with clap id `id` carries a secret.
pub fn is_secret(id: &str) -> bool {
    SECRET_FLAGS.iter().any(|flag| flag.id == id)
}

/// Warns on stderr about every secret given on the command line of the
/// (sub)command `matches` describes; an error when a secret flag and its
/// `…-file` flag are both on the command line.
pub fn check_command_line(cmd: &clap::Command, matches: &ArgMatches) -> anyhow::Result<()> {
    for flag in SECRET_FLAGS {
        // Only flags, not a positional of the same id (revoke-enroll-token).
        let is_flag = cmd
            .get_arguments()
            .any(|a| a.get_id() == flag.id && a.get_long() == Some(flag.long));
        if !is_flag || matches.value_source(flag.id) != Some(ValueSource::CommandLine) {
            continue;
        }
        let file_id = flag.file_long.replace('-', "_");
        if matches.value_source(&file_id) == Some(ValueSource::CommandLine) {
            bail!(
                "--{} and --{} both give the secret; pass only --{}",
                flag.long,
                flag.file_long,
                flag.file_long
            );
        }
        let value: Option<&String> = matches.get_one(flag.id);
        // A URL without a password is no secret.
        if flag.id == "database" && value.is_some_and(|url| !url_has_password(url)) {
            continue;
        }
        eprintln!(
            "cmdop: warning: --{} on the command line can be read by every user of this \
             machine (ps); set {} or pass --{} FILE (mode 0600) instead",
            flag.long, flag.env, flag.file_long
        );
    }
    if let Some((name, sub_matches)) = matches.subcommand() {
        if let Some(sub) = cmd.find_subcommand(name) {
            check_command_line(sub, sub_matches)?;
        }
    }
    Ok(())
}

/// A secret given as a positional argument (`cmdop admin revoke-key KEY`):
/// `-` reads it from the first line of stdin; a whole secret on the
/// command line (longer than `visible_prefix` characters, which identify it
/// without being it) gets a warning saying `how` to avoid that.
pub fn positional_secret(
    value: &str,
    what: &str,
    visible_prefix: usize,
    how: &str,
) -> anyhow::Result<String> {
    if value == "-" {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .with_context(|| format!("cannot read the {what} from stdin"))?;
        let secret = line.trim();
        if secret.is_empty() {
            bail!("stdin is empty: write the {what} on its first line");
        }
        return Ok(secret.to_string());
    }
    if value.len() > visible_prefix {
        eprintln!(
            "cmdop: warning: the {what} on the command line can be read by every user of this \
             machine (ps); pass - and write it on stdin, or {how}"
        );
    }
    Ok(value.to_string())
}

/// True when a PostgreSQL URL (or key=value string) holds a password.
fn url_has_password(url: &str) -> bool {
    cmdop_controlplane::store::engine::postgres::redact(url) != url
}

/// The secret of a flag pair: read from `file` (the `--{file_long}` flag)
/// when given, else `direct` (the flag itself or its environment variable).
pub fn resolve(
    direct: &Option<String>,
    file: &Option<PathBuf>,
    file_long: &str,
) -> anyhow::Result<Option<String>> {
    match file {
        Some(path) => read_secret_file(path, file_long).map(Some),
        None => Ok(direct.clone()),
    }
}

/// Reads a secret from `path` (given with `--{file_long}`): its first line,
/// without the line ending. Warns when other users may read the file.
pub fn read_secret_file(path: &Path, file_long: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --{file_long} {}", path.display()))?;
    let secret = text.lines().next().unwrap_or("").trim();
    if secret.is_empty() {
        bail!(
            "--{file_long} {} is empty: write the secret on its first line",
            path.display()
        );
    }
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            eprintln!(
                "cmdop: warning: --{file_long} {} can be read by other users (mode {mode:04o}); \
                 run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
    Ok(secret.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_a_password_is_a_secret_one_without_is_not() {
        assert!(url_has_password("postgres://u:p@127.0.0.1:5432/db"));
        assert!(url_has_password("host=/run/pg user=u password=p"));
        assert!(!url_has_password("postgres://u@127.0.0.1:5432/db"));
        assert!(!url_has_password("postgres:///db?host=/run/cmdop-pg"));
    }

    #[test]
    fn a_secret_file_gives_its_first_line_and_an_empty_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "cmdop_abc\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            read_secret_file(&path, "api-key-file").unwrap(),
            "cmdop_abc"
        );
        std::fs::write(&path, "\n").unwrap();
        let err = read_secret_file(&path, "api-key-file").unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        let err = read_secret_file(&dir.path().join("missing"), "api-key-file").unwrap_err();
        assert!(
            err.to_string().starts_with("cannot read --api-key-file"),
            "{err}"
        );
    }

    #[test]
    fn every_secret_flag_has_its_file_flag_and_hides_its_environment_value() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, seen: &mut Vec<&'static str>) {
            for flag in SECRET_FLAGS {
                let Some(arg) = cmd
                    .get_arguments()
                    .find(|a| a.get_long() == Some(flag.long))
                else {
                    continue;
                };
                seen.push(flag.long);
                assert_eq!(
                    arg.get_env().and_then(|e| e.to_str()),
                    Some(flag.env),
                    "--{} reads {}",
                    flag.long,
                    flag.env
                );
                assert!(
                    cmd.get_arguments()
                        .any(|a| a.get_long() == Some(flag.file_long)),
                    "{} has --{} but not --{}",
                    cmd.get_name(),
                    flag.long,
                    flag.file_long
                );
            }
            for sub in cmd.get_subcommands() {
                walk(sub, seen);
            }
        }
        let mut seen = Vec::new();
        walk(&crate::Cli::command(), &mut seen);
        for flag in SECRET_FLAGS {
            assert!(seen.contains(&flag.long), "no command has --{}", flag.long);
        }
    }
}
