//! Client commands (`exec`, `sessions`, `ls`), built on the same
//! client core as libcmdop.

use std::{
    io::{IsTerminal, Write},
    time::Duration,
};

use clap::Args;

use crate::{
    connect::ConnectArgs,
    remote_run::{exit_status, forward_stdin, MachineArgs, NO_TIME_LIMIT},
};
use cmdop::client::{Error, FileKind};

#[derive(Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub machine: MachineArgs,
    /// Kill the remote command if it runs longer than this: `30s`, `5m`,
    /// `1h30m` (a bare number is seconds). Default: no time limit.
    #[arg(long, alias = "kill-after", value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// Set an environment variable for the command (repeatable): --env K=V.
    #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Directory to run in (relative paths: from the agent's home).
    #[arg(long)]
    pub cwd: Option<String>,
    /// Do not forward stdin (it is forwarded when it is a pipe or a file).
    #[arg(long, short = 'n')]
    pub no_stdin: bool,
    /// Run the command in a pseudo-terminal, for interactive programs (as
    /// `ssh -t`): the local terminal goes into raw mode, keys (Ctrl-C
    /// included) go to the remote terminal, its size follows the local one,
    /// and `~.` after a newline disconnects (exit status 255). Stdout and
    /// stderr are then one stream. When stdin is not a terminal, cmdop
    /// warns and runs the command without one, as ssh does.
    #[arg(long = "tty", short = 't', conflicts_with_all = ["no_stdin", "json", "selector"])]
    pub tty: bool,
    /// Run on every online machine matching this label selector (k=v,
    /// k!=v, 'k in (a,b)', k, !k; comma = AND), each output line prefixed
    /// with its hostname.
    #[arg(
        long = "selector",
        short = 'l',
        value_name = "SELECTOR",
        conflicts_with = "machine_id"
    )]
    pub selector: Option<String>,
    /// With several machines: how many run the command at once (at most
    /// 256 when the server fans out, as current servers do).
    #[arg(long, default_value_t = cmdop::client::DEFAULT_PARALLEL, value_name = "N")]
    pub parallel: usize,
    /// With several machines: start no more machines once this many failed.
    #[arg(long, value_name = "K")]
    pub max_failures: Option<usize>,
    /// With several machines: rolling batches of N machines (or P% of
    /// them); the next batch starts when the previous one has finished.
    #[arg(long, value_name = "N|P%", value_parser = crate::fleet_cmd::parse_batch)]
    pub batch: Option<cmdop::client::Batch>,
    /// Print one JSON object (with several machines: one per machine and
    /// line) with machine_id, hostname, status, exit_code, stdout, stderr
    /// and duration_ms, instead of the command's output as it comes.
    #[arg(long)]
    pub json: bool,
    /// The command, run by the remote shell (`sh -c`).
    #[arg(trailing_var_arg = true, required = true)]
    pub command: Vec<String>,
}

/// True when stdin is a pipe, a socket or a regular file: something the
/// user meant the command to read (a terminal, /dev/null or a closed stdin
/// is not forwarded).
fn stdin_has_data() -> bool {
    use std::os::unix::fs::FileTypeExt;
    if std::io::stdin().is_terminal() {
        return false;
    }
    match std::fs::metadata("/dev/stdin") {
        Ok(m) => {
            let t = m.file_type();
            t.is_fifo() || t.is_socket() || t.is_file()
        }
        Err(_) => false,
    }
}

/// `--timeout`: a humantime duration (`90s`, `5m`, `1h30m`) or bare seconds.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = match s.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s.trim()).map_err(|e| {
            format!("'{s}' is not a duration ({e}); write e.g. --timeout 30s or --timeout 5m")
        })?,
    };
    if d.is_zero() {
        return Err(
            "a zero --timeout would kill every command; leave --timeout out for no limit".into(),
        );
    }
    if d > NO_TIME_LIMIT {
        return Err(format!(
            "--timeout {s} is longer than the longest limit cmdop can set (49 days); leave --timeout out for no limit"
        ));
    }
    Ok(d)
}

/// `K=V` from `--env`.
fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not K=V; write --env NAME=value")),
    }
}

/// Runs the command remotely, streaming its output; exits with its status.
pub async fn exec(mut args: ExecArgs) -> anyhow::Result<std::process::ExitCode> {
    if args.machine.host.is_none() && args.machine.machine_id.is_none() && args.selector.is_none() {
        args.machine.host = args.connect.profile_host()?;
    }
    let client = args.connect.connect().await?;
    let command = args.command.join(" ");
    let mut opts = cmdop::client::ExecOptions {
        timeout: Some(args.timeout.unwrap_or(NO_TIME_LIMIT)),
        env: args.env,
        working_directory: args.cwd.unwrap_or_default(),
        discard_output: true,
        ..Default::default()
    };
    if crate::fleet_cmd::is_fan_out(args.selector.as_deref(), args.machine.host.as_deref()) {
        if args.tty {
            anyhow::bail!(
                "-t runs a command in one terminal on one machine: pass one -H HOST, or leave out -t"
            );
        }
        if !args.no_stdin && stdin_has_data() {
            anyhow::bail!(
                "stdin cannot go to several machines at once: pass -n, or one machine with -H HOST"
            );
        }
        let fan = crate::fleet_cmd::FanOut {
            fleet: cmdop::client::FleetExec {
                selector: args.selector.unwrap_or_default(),
                hosts: args.machine.host.unwrap_or_default(),
                parallel: args.parallel,
                max_failures: args.max_failures,
                batch: args.batch,
            },
            json: args.json,
        };
        return crate::fleet_cmd::exec_many(client, command, opts, fan).await;
    }
    args.machine.select(&client, &args.connect).await?;
    if args.tty {
        if std::io::stdin().is_terminal() {
            return crate::shell_cmd::run_in_terminal(client, &command, opts, args.timeout).await;
        }
        eprintln!(
            "cmdop: Pseudo-terminal will not be allocated because stdin is not a terminal; \
             running the command without one"
        );
    }
    // --json keeps the output for its object instead of printing it.
    let json = args.json;
    opts.discard_output = !json;
    let on_chunk = move |stream: cmdop::client::Stream, data: &[u8]| {
        if json {
            return;
        }
        let _ = match stream {
            cmdop::client::Stream::Stdout => std::io::stdout().write_all(data),
            cmdop::client::Stream::Stderr => std::io::stderr().write_all(data),
        };
    };
    let result = if !args.no_stdin && stdin_has_data() {
        let reader = forward_stdin();
        client
            .execute_piped(
                &command,
                &opts,
                reader,
                on_chunk,
                cmdop::client::CancelToken::new(),
            )
            .await
    } else {
        client
            .execute_with(&command, &opts, on_chunk, cmdop::client::CancelToken::new())
            .await
    };
    let _ = std::io::stdout().flush();
    let machine = client.machine();
    client.close().await;
    if json {
        let (status, out) = match &result {
            Ok(out) if out.signal == 0 && out.exit_code == 0 => ("ok", Some(out)),
            Ok(out) => ("failed", Some(out)),
            Err(Error::Timeout {
                partial: Some(p), ..
            }) if args.timeout.is_some() => ("timeout", Some(p.as_ref())),
            Err(_) => ("error", None),
        };
        if let Some(out) = out {
            let (machine_id, hostname) = machine
                .map(|m| (m.machine_id, m.hostname))
                .unwrap_or_default();
            println!(
                "{}",
                serde_json::json!({
                    "machine_id": machine_id,
                    "hostname": hostname,
                    "status": status,
                    "exit_code": (out.signal == 0 && status != "timeout").then_some(out.exit_code),
                    "signal": (out.signal != 0).then_some(out.signal),
                    "stdout": String::from_utf8_lossy(&out.stdout),
                    "stderr": String::from_utf8_lossy(&out.stderr),
                    "duration_ms": u64::try_from(out.duration.as_millis()).unwrap_or(u64::MAX),
                })
            );
        }
    }
    exit_status(result, args.timeout)
}

#[derive(Args)]
pub struct SessionsArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// One JSON object per session and line (session_id, machine_id,
    /// hostname, status, os, shell, agent_version, connected_at_unix,
    /// heartbeat_age_seconds) instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Lists the workspace's sessions, newest activity first.
pub async fn sessions(args: SessionsArgs) -> anyhow::Result<std::process::ExitCode> {
    let client = args.connect.connect().await?;
    let sessions = client.list_sessions().await?;
    client.close().await;
    let mut out = std::io::stdout().lock();
    if args.json {
        for s in &sessions {
            writeln!(
                out,
                "{}",
                serde_json::json!({
                    "session_id": s.session_id,
                    "machine_id": s.machine_id,
                    "hostname": s.hostname,
                    "machine_name": s.machine_name,
                    "status": s.status,
                    "os": s.os,
                    "shell": s.shell,
                    "agent_version": s.agent_version,
                    "working_directory": s.working_directory,
                    "has_shell": s.has_shell,
                    "connected_at_unix": s.connected_at,
                    "heartbeat_age_seconds": s.heartbeat_age_seconds,
                })
            )?;
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let now = crate::table::now_ms();
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            vec![
                s.session_id.clone(),
                s.hostname.clone(),
                s.status.clone(),
                crate::table::ago(now, s.connected_at.saturating_mul(1000)),
                crate::table::ago(now, now - s.heartbeat_age_seconds.saturating_mul(1000)),
                s.os.clone(),
                s.shell.clone(),
            ]
        })
        .collect();
    crate::table::print(
        &mut out,
        &[
            "SESSION",
            "HOSTNAME",
            "STATUS",
            "CONNECTED",
            "HEARTBEAT",
            "OS",
            "SHELL",
        ],
        &rows,
    )?;
    Ok(std::process::ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub machine: MachineArgs,
    /// Include hidden files.
    #[arg(long, short = 'a')]
    pub all: bool,
    /// One JSON object per entry and line (name, path, kind, size, mode,
    /// permissions, mtime_unix, symlink_target) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Directory on the remote machine (relative paths: from its home).
    #[arg(default_value = ".")]
    pub path: String,
}

/// Lists a remote directory, following pages.
pub async fn ls(args: LsArgs) -> anyhow::Result<std::process::ExitCode> {
    let client = args.connect.connect().await?;
    args.machine.select(&client, &args.connect).await?;
    let mut entries = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .list_files(&args.path, token.as_deref(), args.all)
            .await?;
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        token = Some(page.next_page_token);
    }
    client.close().await;
    let mut out = std::io::stdout().lock();
    let kind_name = |k: &FileKind| match k {
        FileKind::Directory => "directory",
        FileKind::Symlink => "symlink",
        FileKind::File => "file",
        _ => "other",
    };
    if args.json {
        for e in &entries {
            writeln!(
                out,
                "{}",
                serde_json::json!({
                    "name": e.name,
                    "path": e.path,
                    "kind": kind_name(&e.kind),
                    "size": e.size,
                    "mode": e.mode,
                    "permissions": e.permissions,
                    "mtime_unix": e.mtime,
                    "symlink_target": e.symlink_target,
                })
            )?;
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let now = crate::table::now_ms();
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let kind = match e.kind {
                FileKind::Directory => 'd',
                FileKind::Symlink => 'l',
                _ => '-',
            };
            let name = if e.symlink_target.is_empty() {
                e.name.clone()
            } else {
                format!("{} -> {}", e.name, e.symlink_target)
            };
            vec![
                format!("{kind}{}", e.permissions),
                e.size.to_string(),
                crate::table::ago(now, e.mtime.saturating_mul(1000)),
                name,
            ]
        })
        .collect();
    crate::table::print(&mut out, &["MODE", "SIZE", "MODIFIED", "NAME"], &rows)?;
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_arguments_are_name_equals_value() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_env("A="), Ok(("A".into(), String::new())));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
    }
}
