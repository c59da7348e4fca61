//! Fleets from the command line: `cmdop machines` (the inventory with
//! labels, facts and presence) and `cmdop exec` on many machines at once
//! (`-l SELECTOR`, `-H a,b`, `-H 'web-*'`), each output line prefixed with
//! its machine's hostname.

use parking_lot::Mutex;
use std::{
    collections::BTreeMap,
    io::Write,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use clap::Args;
use cmdop::client::{CancelToken, Client, Error, ExecOptions, FleetMachine, MachineInfo, Stream};

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
    let rows: Vec<[String; 6]> = list
        .iter()
        .map(|m| {
            let presence = if m.online() {
                format!("online {}", ago(now, m.connected_at_unix_ms))
            } else {
                format!("offline, seen {}", ago(now, m.last_seen_unix_ms))
            };
            [
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
    let header = ["HOSTNAME", "MACHINE", "PRESENCE", "OS", "AGENT", "LABELS"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    writeln!(out, "{}", line(&header))?;
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        writeln!(out, "{}", line(&cells))?;
    }
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// "3 min ago", "2 h ago", "never".
fn ago(now_ms: i64, then_ms: i64) -> String {
    if then_ms <= 0 {
        return "never".into();
    }
    let secs = (now_ms - then_ms).max(0) / 1000;
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

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

/// How a fan-out runs.
pub struct FanOut {
    pub selector: String,
    pub hosts: String,
    pub parallel: usize,
    pub max_failures: Option<usize>,
    /// Rolling batches: the next starts when the previous has finished.
    pub batch: Option<Batch>,
    pub json: bool,
}

/// The size of a rolling batch: a count or a share of the selected machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    Machines(usize),
    Percent(usize),
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

/// One machine's end.
enum Outcome {
    Exited(i32),
    Signal(i32),
    Timeout,
    Unknown(String),
    Failed(String),
    NotRun(String),
}

impl Outcome {
    fn ok(&self) -> bool {
        matches!(self, Outcome::Exited(0))
    }
    fn ran(&self) -> bool {
        !matches!(self, Outcome::NotRun(_))
    }
    fn status(&self) -> &'static str {
        match self {
            Outcome::Exited(0) => "ok",
            Outcome::Exited(_) | Outcome::Signal(_) => "failed",
            Outcome::Timeout => "timeout",
            Outcome::Unknown(_) => "outcome_unknown",
            Outcome::Failed(_) => "error",
            Outcome::NotRun(_) => "not_run",
        }
    }
    fn describe(&self) -> String {
        match self {
            Outcome::Exited(code) => format!("exit {code}"),
            Outcome::Signal(sig) => format!("killed by signal {sig}"),
            Outcome::Timeout => "timed out (killed)".into(),
            Outcome::Unknown(why) => format!("outcome unknown: {why}"),
            Outcome::Failed(why) => why.clone(),
            Outcome::NotRun(why) => format!("did not run: {why}"),
        }
    }
}

/// One machine of a fan-out and how it ended.
struct MachineResult {
    machine: FleetMachine,
    outcome: Outcome,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    duration_ms: u64,
}

impl MachineResult {
    /// A machine the command never reached.
    fn not_run(machine: FleetMachine, why: &str) -> MachineResult {
        MachineResult {
            machine,
            outcome: Outcome::NotRun(why.into()),
            stdout: Vec::new(),
            stderr: Vec::new(),
            duration_ms: 0,
        }
    }
}

/// Prefixes complete lines with `host: ` and writes them whole, so lines
/// of different machines never mix.
struct Prefixer {
    prefix: String,
    partial: [Vec<u8>; 2],
}

impl Prefixer {
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
    opts: ExecOptions,
    fan: FanOut,
) -> anyhow::Result<std::process::ExitCode> {
    let machines = client
        .list_machines(&fan.selector, &fan.hosts)
        .await
        .map_err(|e| flag_words(e, "-l"))?;
    if machines.is_empty() {
        anyhow::bail!(
            "no machine matches -l/-H; `cmdop machines` lists the machines with their labels"
        );
    }
    let client = Arc::new(client);
    let limiter = Arc::new(tokio::sync::Semaphore::new(fan.parallel.max(1)));
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = CancelToken::new();
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut targets = Vec::new();
    for m in machines {
        if !m.online() {
            results.lock().push(MachineResult::not_run(m, "offline"));
            continue;
        }
        targets.push(m);
    }
    let batch_size = match fan.batch {
        Some(Batch::Machines(n)) => n.max(1),
        Some(Batch::Percent(p)) => (targets.len() * p).div_ceil(100).max(1),
        None => targets.len().max(1),
    };
    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut pending = targets.into_iter().peekable();
    while pending.peek().is_some() {
        // A rolling batch: the next starts once this one has finished.
        let mut tasks = tokio::task::JoinSet::new();
        for m in pending.by_ref().take(batch_size) {
            let (client, limiter, failures, stop, results) = (
                client.clone(),
                limiter.clone(),
                failures.clone(),
                stop.clone(),
                results.clone(),
            );
            let (command, mut opts) = (command.clone(), opts.clone());
            let (json, max_failures) = (fan.json, fan.max_failures);
            tasks.spawn(async move {
                let _slot = limiter.acquire_owned().await;
                let skip = max_failures
                    .is_some_and(|k| failures.load(std::sync::atomic::Ordering::SeqCst) >= k);
                if stop.is_cancelled() {
                    results
                        .lock()
                        .push(MachineResult::not_run(m, "interrupted"));
                    return;
                }
                if skip {
                    let why = "skipped after --max-failures";
                    results.lock().push(MachineResult::not_run(m, why));
                    return;
                }
                opts.machine = Some(MachineInfo {
                    machine_id: m.machine_id.clone(),
                    hostname: m.hostname.clone(),
                    session_id: m.session_id.clone(),
                    status: m.status.clone(),
                    os: m.os.clone(),
                    shell: String::new(),
                    native_exec: m.native_exec,
                });
                opts.discard_output = !json;
                let mut prefixer = Prefixer {
                    prefix: format!("{}: ", m.hostname),
                    partial: [Vec::new(), Vec::new()],
                };
                let started = std::time::Instant::now();
                let result = if json {
                    client
                        .execute_with(&command, &opts, |_, _| {}, stop.clone())
                        .await
                } else {
                    client
                        .execute_with(&command, &opts, |s, d| prefixer.push(s, d), stop.clone())
                        .await
                };
                prefixer.finish();
                let took = started.elapsed().as_millis() as u64;
                let (outcome, out, err) = match result {
                    Ok(o) if o.signal != 0 => (Outcome::Signal(o.signal), o.stdout, o.stderr),
                    Ok(o) => (Outcome::Exited(o.exit_code), o.stdout, o.stderr),
                    Err(Error::Timeout { partial, .. }) => {
                        let p = partial.map(|p| *p).unwrap_or_default();
                        (Outcome::Timeout, p.stdout, p.stderr)
                    }
                    Err(Error::OutcomeUnknown { message, partial }) => {
                        let p = partial.map(|p| *p).unwrap_or_default();
                        (Outcome::Unknown(message), p.stdout, p.stderr)
                    }
                    Err(Error::Unavailable(msg)) if !msg.is_empty() => {
                        (Outcome::NotRun(msg), Vec::new(), Vec::new())
                    }
                    Err(e) => (Outcome::Failed(e.to_string()), Vec::new(), Vec::new()),
                };
                if outcome.ran() && !outcome.ok() {
                    failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                results.lock().push(MachineResult {
                    machine: m,
                    outcome,
                    stdout: out,
                    stderr: err,
                    duration_ms: took,
                });
            });
        }
        loop {
            tokio::select! {
                next = tasks.join_next() => if next.is_none() { break },
                _ = &mut ctrl_c, if !interrupted => {
                    interrupted = true;
                    eprintln!("cmdop: interrupted: stopping the command on every machine");
                    stop.cancel();
                }
            }
        }
    }
    let _ = std::io::stdout().flush();
    let mut results = std::mem::take(&mut *results.lock());
    results.sort_by_key(|r| r.machine.hostname.to_lowercase());
    let (mut ok, mut failed, mut not_run) = (0, 0, 0);
    for MachineResult {
        machine: m,
        outcome,
        stdout: out,
        stderr: err,
        duration_ms: took,
    } in &results
    {
        if fan.json {
            let exit_code = match outcome {
                Outcome::Exited(c) => Some(*c),
                _ => None,
            };
            println!(
                "{}",
                serde_json::json!({
                    "machine_id": m.machine_id,
                    "hostname": m.hostname,
                    "status": outcome.status(),
                    "exit_code": exit_code,
                    "detail": outcome.describe(),
                    "stdout": String::from_utf8_lossy(out),
                    "stderr": String::from_utf8_lossy(err),
                    "duration_ms": took,
                })
            );
        }
        if outcome.ok() {
            ok += 1;
        } else if outcome.ran() {
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
            r.outcome.describe()
        ));
    }
    eprintln!("{summary}");
    if let Ok(client) = Arc::try_unwrap(client) {
        client.close().await;
    }
    Ok(std::process::ExitCode::from(if failed > 0 {
        1
    } else if not_run > 0 {
        2
    } else {
        0
    }))
}

/// `--parallel`'s default: enough to keep a few hundred machines busy
/// without opening a stream per machine at once.
pub const DEFAULT_PARALLEL: usize = 64;

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
    fn ages_read_like_a_person_would_say_them() {
        assert_eq!(ago(100_000, 99_000), "1 s ago");
        assert_eq!(ago(10_000_000, 10_000_000 - 180_000), "3 min ago");
        assert_eq!(ago(1, 0), "never");
    }

    #[test]
    fn timeouts_keep_their_exact_meaning() {
        assert_eq!(Outcome::Timeout.status(), "timeout");
        assert!(!Outcome::NotRun("offline".into()).ran());
        assert!(Outcome::Exited(0).ok());
    }
}
