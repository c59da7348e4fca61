//! Fleets from the command line: `cmdop machines` (the inventory with
//! labels, facts and presence) and `cmdop exec` on many machines at once
//! (`-l SELECTOR`, `-H a,b`, `-H 'web-*'`), each output line prefixed with
//! its machine's hostname.

use std::{
    collections::{BTreeMap, HashMap},
    io::Write,
};

use clap::Args;
use cmdop::client::{
    Batch, CancelToken, Client, Error, ExecOptions, FleetEvent, FleetExec, FleetMachine, NotRun,
    Outcome, Stream,
};

use crate::connect::ConnectArgs;

#[derive(Args)]
pub struct MachinesArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Label selector: k=v, k!=v, 'k in (a,b)', 'k notin (a,b)', k, !k;
    /// comma = AND. Facts are labels too: cmdop.io/os, cmdop.io/arch,
    /// cmdop.io/status (online, offline), cmdop.io/hostname …
    #[arg(long = "selector", short = 'l', value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Hostnames or globs, comma-separated: -H web-1,web-2 or -H 'web-*'.
    #[arg(long = "host", short = 'H', value_name = "HOSTS")]
    pub hosts: Option<String>,
    /// One JSON object per machine and line instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// `cmdop machines`: the workspace's machines, online or not.
pub async fn machines(args: MachinesArgs) -> anyhow::Result<std::process::ExitCode> {
    let client = args.connect.connect().await?;
    let list = client
        .list_machines(
            args.selector.as_deref().unwrap_or(""),
            args.hosts.as_deref().unwrap_or(""),
        )
        .await
        .map_err(|e| flag_words(e, "-l"))?;
    client.close().await;
    let mut out = std::io::stdout().lock();
    if args.json {
        for m in &list {
            writeln!(out, "{}", machine_json(m))?;
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if list.is_empty() {
        eprintln!("cmdop: no machine matches; `cmdop machines` without -l/-H lists them all");
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let now = now_ms();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|m| {
            let presence = if m.online() {
                format!("online {}", ago(now, m.connected_at_unix_ms))
            } else {
                format!("offline, seen {}", ago(now, m.last_seen_unix_ms))
            };
            vec![
                m.hostname.clone(),
                m.machine_id.clone(),
                presence,
                [m.os.as_str(), m.arch.as_str()]
                    .iter()
                    .filter(|s| !s.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join("/"),
                m.agent_version.clone(),
                user_labels(m),
            ]
        })
        .collect();
    crate::table::print(
        &mut out,
        &["HOSTNAME", "MACHINE", "PRESENCE", "OS", "AGENT", "LABELS"],
        &rows,
    )?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Labels as `k=v,…`, admin ones marked with `*` where they override or add.
fn user_labels(m: &FleetMachine) -> String {
    let mut all: BTreeMap<&str, String> = BTreeMap::new();
    for (k, v) in &m.agent_labels {
        all.insert(k, format!("{k}={v}"));
    }
    for (k, v) in &m.admin_labels {
        all.insert(k, format!("{k}={v}*"));
    }
    all.into_values().collect::<Vec<_>>().join(",")
}

fn machine_json(m: &FleetMachine) -> serde_json::Value {
    serde_json::json!({
        "machine_id": m.machine_id,
        "hostname": m.hostname,
        "status": if m.online() { "online" } else { "offline" },
        "connected_at_unix_ms": m.connected_at_unix_ms,
        "last_seen_unix_ms": m.last_seen_unix_ms,
        "labels": m.labels,
        "agent_labels": m.agent_labels,
        "admin_labels": m.admin_labels,
        "os": m.os,
        "os_version": m.os_version,
        "kernel": m.kernel,
        "arch": m.arch,
        "cpu_count": m.cpu_count,
        "memory_bytes": m.memory_bytes,
        "agent_version": m.agent_version,
        "native_exec": m.native_exec,
    })
}

/// The listings' time helpers live in `table`; this module and `keys_cmd`
/// use them from here.
pub(crate) use crate::table::{ago, now_ms};

/// A server's refusal of a selector or host list, in the CLI's words.
fn flag_words(e: Error, flag: &str) -> anyhow::Error {
    match e {
        Error::InvalidArgument(msg) => anyhow::anyhow!("{msg} (in {flag} or -H)"),
        other => other.into(),
    }
}

/// With no -H/-l: the one online machine's id. `Ok(None)` when the server
/// cannot list machines (the caller falls back to its active session); an
/// error naming a few machines when several are online, none when none is.
pub async fn the_only_online_machine(client: &Client) -> anyhow::Result<Option<String>> {
    let list = match client.list_machines("", "").await {
        Ok(list) => list,
        Err(Error::NotSupported(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let online: Vec<&FleetMachine> = list.iter().filter(|m| m.online()).collect();
    match online.as_slice() {
        [one] => Ok(Some(one.machine_id.clone())),
        [] => anyhow::bail!(
            "no machine of this workspace is online: start an agent (`cmdop agent --server …`), \
             or see `cmdop machines`"
        ),
        several => {
            let names: Vec<&str> = several
                .iter()
                .take(5)
                .map(|m| m.hostname.as_str())
                .collect();
            let more = if several.len() > 5 { ", …" } else { "" };
            anyhow::bail!(
                "{} machines are online ({}{more}): pick one with -H HOST, or run on several with \
                 -l SELECTOR or -H HOST1,HOST2 (`cmdop machines` lists them)",
                several.len(),
                names.join(", ")
            )
        }
    }
}

/// Whether `exec` runs on several machines: a selector, or a host list or glob.
pub fn is_fan_out(selector: Option<&str>, hosts: Option<&str>) -> bool {
    selector.is_some() || hosts.is_some_and(|h| h.contains([',', '*', '?']))
}

/// How a fan-out runs: which machines and how fast (the library's
/// [`FleetExec`]), and how results are printed.
pub struct FanOut {
    pub fleet: FleetExec,
    pub json: bool,
}

/// `--batch N` or `--batch P%`.
pub fn parse_batch(text: &str) -> Result<Batch, String> {
    let bad = || {
        format!("'{text}' is not a batch size; write a count (--batch 10) or a share (--batch 25%)")
    };
    match text.trim().strip_suffix('%') {
        Some(p) => match p.trim().parse::<usize>() {
            Ok(p) if (1..=100).contains(&p) => Ok(Batch::Percent(p)),
            _ => Err(bad()),
        },
        None => match text.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(Batch::Machines(n)),
            _ => Err(bad()),
        },
    }
}

/// A machine's end in the CLI's words (its flags, not the library's).
fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::NotRun(NotRun::AfterMaxFailures) => {
            "did not run: skipped after --max-failures".into()
        }
        Outcome::NotRun(NotRun::Cancelled) => "did not run: interrupted".into(),
        Outcome::Timeout => "timed out: killed after --timeout".into(),
        other => other.to_string(),
    }
}

/// Prefixes complete lines with `host: ` and writes them whole, so lines
/// of different machines never mix.
struct Prefixer {
    prefix: String,
    partial: [Vec<u8>; 2],
}

impl Prefixer {
    fn new(hostname: &str) -> Prefixer {
        Prefixer {
            prefix: format!("{hostname}: "),
            partial: [Vec::new(), Vec::new()],
        }
    }

    fn push(&mut self, stream: Stream, data: &[u8]) {
        let i = usize::from(stream == Stream::Stderr);
        self.partial[i].extend_from_slice(data);
        let Some(last_nl) = self.partial[i].iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let rest = self.partial[i].split_off(last_nl + 1);
        let complete = std::mem::replace(&mut self.partial[i], rest);
        self.write(i, &complete);
    }

    fn finish(&mut self) {
        for i in 0..2 {
            if !self.partial[i].is_empty() {
                let mut tail = std::mem::take(&mut self.partial[i]);
                tail.push(b'\n');
                self.write(i, &tail);
            }
        }
    }

    fn write(&self, i: usize, lines: &[u8]) {
        let mut text = Vec::with_capacity(lines.len() + 16);
        for line in lines.split_inclusive(|&b| b == b'\n') {
            text.extend_from_slice(self.prefix.as_bytes());
            text.extend_from_slice(line);
        }
        let _ = if i == 0 {
            std::io::stdout().lock().write_all(&text)
        } else {
            std::io::stderr().lock().write_all(&text)
        };
    }
}

/// `cmdop exec` on every machine `fan` selects: output lines prefixed with
/// the hostname (or, with --json, one object per machine), a summary on
/// stderr. Exit status: 0 when every selected machine ran the command and
/// it exited 0; 1 when one failed (non-zero exit, signal, timeout, unknown
/// outcome, error); 2 when none failed but some did not run (offline,
/// skipped after --max-failures, or interrupted before it started).
pub async fn exec_many(
    client: Client,
    command: String,
    mut opts: ExecOptions,
    fan: FanOut,
) -> anyhow::Result<std::process::ExitCode> {
    // Text mode prints as chunks come and keeps nothing; --json keeps each
    // machine's output for its object.
    opts.discard_output = !fan.json;
    let stop = CancelToken::new();
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("cmdop: interrupted: stopping the command on every machine");
                stop.cancel();
            }
        })
    };
    let mut prefixers: HashMap<String, Prefixer> = HashMap::new();
    let json = fan.json;
    let ran = client
        .execute_on_fleet(
            &command,
            &opts,
            &fan.fleet,
            |event| match event {
                FleetEvent::Output { .. } if json => {}
                FleetEvent::Output {
                    machine,
                    stream,
                    data,
                } => prefixers
                    .entry(machine.machine_id.clone())
                    .or_insert_with(|| Prefixer::new(&machine.hostname))
                    .push(stream, data),
                FleetEvent::Finished(r) => {
                    if let Some(mut p) = prefixers.remove(&r.machine.machine_id) {
                        p.finish();
                    }
                }
            },
            stop,
        )
        .await;
    watcher.abort();
    let results = match ran {
        Ok(results) => results,
        Err(Error::NotFound(_)) => anyhow::bail!(
            "no machine matches -l/-H; `cmdop machines` lists the machines with their labels"
        ),
        Err(e) => return Err(flag_words(e, "-l")),
    };
    let _ = std::io::stdout().flush();
    let (mut ok, mut failed, mut not_run) = (0, 0, 0);
    for r in &results {
        if fan.json {
            let exit_code = match r.outcome {
                Outcome::Exited(c) => Some(c),
                _ => None,
            };
            println!(
                "{}",
                serde_json::json!({
                    "machine_id": r.machine.machine_id,
                    "hostname": r.machine.hostname,
                    "status": r.outcome.status(),
                    "exit_code": exit_code,
                    "detail": describe(&r.outcome),
                    "stdout": String::from_utf8_lossy(&r.stdout),
                    "stderr": String::from_utf8_lossy(&r.stderr),
                    "duration_ms": u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX),
                })
            );
        }
        if r.outcome.ok() {
            ok += 1;
        } else if r.outcome.ran() {
            failed += 1;
        } else {
            not_run += 1;
        }
    }
    let mut summary = format!("cmdop: {ok} ok, {failed} failed, {not_run} did not run");
    for r in results.iter().filter(|r| !r.outcome.ok()) {
        summary.push_str(&format!(
            "\n  {}: {}",
            r.machine.hostname,
            describe(&r.outcome)
        ));
    }
    eprintln!("{summary}");
    client.close().await;
    Ok(std::process::ExitCode::from(if failed > 0 {
        1
    } else if not_run > 0 {
        2
    } else {
        0
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_out_is_a_selector_a_list_or_a_glob() {
        assert!(is_fan_out(Some("env=prod"), None));
        assert!(is_fan_out(None, Some("a,b")));
        assert!(is_fan_out(None, Some("web-*")));
        assert!(!is_fan_out(None, Some("web-1")));
        assert!(!is_fan_out(None, None));
    }

    #[test]
    fn batches_are_counts_or_shares() {
        assert_eq!(parse_batch("10"), Ok(Batch::Machines(10)));
        assert_eq!(parse_batch("25%"), Ok(Batch::Percent(25)));
        for bad in ["0", "0%", "101%", "x", "-1", ""] {
            assert!(parse_batch(bad).unwrap_err().contains("--batch"), "{bad}");
        }
    }

    #[test]
    fn not_run_reasons_name_the_cli_flags() {
        assert!(describe(&Outcome::NotRun(NotRun::AfterMaxFailures)).contains("--max-failures"));
        assert!(describe(&Outcome::NotRun(NotRun::Cancelled)).contains("interrupted"));
        assert_eq!(
            describe(&Outcome::NotRun(NotRun::Offline)),
            "did not run: offline"
        );
    }
}
