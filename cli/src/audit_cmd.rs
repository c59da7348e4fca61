//! `cmdop admin audit`: read the audit trail (a table, or JSON lines for a
//! SIEM, optionally following new records), verify its hash chains, prune
//! old records; and the records of the admin CLI's own actions, written
//! before each action like the server's.

use std::{
    io::Write,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use cmdop_controlplane::store::{AuditEntry, AuditFilter, AuditOutcome, AuditRecord, Store};

#[derive(Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Only this workspace's records.
    #[arg(long)]
    pub workspace: Option<String>,
    /// Only records of the last LIFETIME (e.g. 90s, 30m, 1h, 7d).
    #[arg(long, value_parser = crate::lifetime::parse, value_name = "LIFETIME")]
    pub since: Option<Duration>,
    /// Only records on this machine (its id or hostname).
    #[arg(long, value_name = "MACHINE")]
    pub machine: Option<String>,
    /// Only records of keys whose name or prefix contains this.
    #[arg(long, value_name = "NAME")]
    pub key: Option<String>,
    /// Only this action (exec, shell.input, file.read, denied …), or every
    /// action starting with a prefix ending in `.` (file.).
    #[arg(long)]
    pub action: Option<String>,
    /// One JSON object per record instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Keep printing new records as they are written (Ctrl-C ends).
    #[arg(long, short = 'f')]
    pub follow: bool,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check every workspace's hash chain (or --workspace's): exits 1 and
    /// names the first record changed, removed or reordered.
    Verify,
    /// Delete records older than --older-than; the chains stay verifiable.
    Prune {
        #[arg(long, value_parser = crate::lifetime::parse, value_name = "LIFETIME")]
        older_than: Duration,
    },
    /// Replay the recording of an attached shell session (record ID from
    /// `cmdop admin audit --action shell.attach`) as its user saw it.
    Play {
        id: i64,
        /// Print the asciicast v2 recording itself (for asciinema and
        /// other players) instead of replaying it.
        #[arg(long)]
        raw: bool,
        /// Replay this many times faster (pauses are also cut to 2 s).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
    },
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub fn run(store: &Store, args: AuditArgs) -> anyhow::Result<std::process::ExitCode> {
    let workspace_id = match &args.workspace {
        Some(name) => Some(
            store
                .workspace_by_name(name)?
                .with_context(|| format!("no workspace named '{name}'"))?
                .id,
        ),
        None => None,
    };
    match args.command {
        Some(AuditCommand::Verify) => {
            let report = store.verify_audit(workspace_id.as_deref())?;
            return Ok(match report.problem {
                None => {
                    println!(
                        "audit trail intact: {} records in {} workspaces",
                        report.records, report.workspaces
                    );
                    std::process::ExitCode::SUCCESS
                }
                Some(p) => {
                    eprintln!(
                        "audit trail of workspace {} is broken: {}",
                        p.workspace_id, p.what
                    );
                    std::process::ExitCode::from(1)
                }
            });
        }
        Some(AuditCommand::Play { id, raw, speed }) => {
            let Some(cast) = store.recording(id)? else {
                bail!(
                    "record {id} has no recording; recordings belong to shell.attach records \
                     (`cmdop admin audit --action shell.attach` lists them)"
                );
            };
            if raw {
                print!("{cast}");
            } else {
                play(&cast, speed)?;
            }
            return Ok(std::process::ExitCode::SUCCESS);
        }
        Some(AuditCommand::Prune { older_than }) => {
            let gone = store.prune_audit(now_ms() - ms(older_than))?;
            println!("pruned {gone} records");
            return Ok(std::process::ExitCode::SUCCESS);
        }
        None => {}
    }
    let mut filter = AuditFilter {
        workspace_id,
        since_ms: args.since.map(|d| now_ms() - ms(d)),
        machine: args.machine.clone(),
        actor: args.key.clone(),
        action: args.action.clone(),
        limit: 10_000,
        ..AuditFilter::default()
    };
    let mut header = !args.json;
    loop {
        // Matching records past the last id looked at.
        let (batch, scanned_to) = store.audit_records(&filter)?;
        let mut out = std::io::stdout().lock();
        if header {
            writeln!(
                out,
                "{:<6} {:<20} {:<34} {:<22} {:<24} {:<14} {:<36} OUTCOME",
                "ID", "TIME (UTC)", "ACTOR", "SOURCE", "MACHINE", "ACTION", "WHAT"
            )?;
            header = false;
        }
        for r in &batch {
            if args.json {
                writeln!(out, "{}", record_json(r))?;
            } else {
                writeln!(out, "{}", record_line(r))?;
            }
        }
        out.flush()?;
        if scanned_to == filter.after_id {
            // Caught up: done, or wait for more.
            if !args.follow {
                return Ok(std::process::ExitCode::SUCCESS);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        filter.after_id = scanned_to;
    }
}

/// Writes a recording's output with its timing (pauses cut to 2 s).
fn play(cast: &str, speed: f64) -> anyhow::Result<()> {
    if !(speed > 0.0 && speed.is_finite()) {
        bail!("--speed must be more than 0");
    }
    let mut out = std::io::stdout().lock();
    let mut last = 0.0f64;
    for line in cast.lines().skip(1) {
        let event: serde_json::Value =
            serde_json::from_str(line).context("the recording is not asciicast v2")?;
        let (Some(at), Some(kind), Some(text)) =
            (event[0].as_f64(), event[1].as_str(), event[2].as_str())
        else {
            continue;
        };
        if kind != "o" {
            continue;
        }
        let pause = ((at - last) / speed).clamp(0.0, 2.0);
        last = at;
        if pause > 0.0 {
            out.flush()?;
            std::thread::sleep(Duration::from_secs_f64(pause));
        }
        out.write_all(text.as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

fn record_json(r: &AuditRecord) -> serde_json::Value {
    let e = &r.entry;
    serde_json::json!({
        "id": r.id,
        "seq": r.seq,
        "time_unix_ms": e.at_ms,
        "time": humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(e.at_ms.max(0) as u64)).to_string(),
        "workspace_id": e.workspace_id,
        "replica": e.replica,
        "actor": e.actor,
        "source": e.source,
        "action": e.action,
        "machine_id": e.machine_id,
        "hostname": e.hostname,
        "detail": serde_json::from_str::<serde_json::Value>(&e.detail).unwrap_or(serde_json::Value::Null),
        "outcome": r.outcome.as_ref().map(|o| serde_json::json!({
            "outcome": o.outcome,
            "exit_code": o.exit_code,
            "bytes_in": o.bytes_in,
            "bytes_out": o.bytes_out,
            "duration_ms": o.duration_ms,
        })),
    })
}

/// What a record's details say in one short phrase: the command, the
/// path, the method refused.
fn what(r: &AuditRecord) -> String {
    let detail: serde_json::Value = serde_json::from_str(&r.entry.detail).unwrap_or_default();
    for field in ["command", "input", "path", "from", "method", "name"] {
        if let Some(v) = detail.get(field).and_then(|v| v.as_str()) {
            return v.replace('\n', "⏎");
        }
    }
    String::new()
}

fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut s: String = text.chars().take(width.saturating_sub(1)).collect();
    s.push('…');
    s
}

fn record_line(r: &AuditRecord) -> String {
    let e = &r.entry;
    let time = humantime::format_rfc3339_seconds(
        UNIX_EPOCH + Duration::from_millis(e.at_ms.max(0) as u64),
    )
    .to_string()
    .replace('T', " ")
    .trim_end_matches('Z')
    .to_string();
    let outcome = match &r.outcome {
        Some(o) => format!("{} ({} ms)", o.outcome, o.duration_ms),
        None => "-".into(),
    };
    let machine = if e.hostname.is_empty() {
        e.machine_id.clone()
    } else {
        e.hostname.clone()
    };
    format!(
        "{:<6} {:<20} {:<34} {:<22} {:<24} {:<14} {:<36} {}",
        r.id,
        time,
        cut(&e.actor, 34),
        cut(&e.source, 22),
        cut(&machine, 24),
        e.action,
        cut(&what(r), 36),
        outcome
    )
}

/// Who runs the admin CLI, as its records name it.
fn admin_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid {}", nix::unistd::getuid()));
    format!("admin CLI ({user})")
}

/// Writes the record of an admin action on `workspace_id` before it runs.
pub fn begin_admin(
    store: &Store,
    workspace_id: &str,
    action: &str,
    machine: (&str, &str),
    detail: serde_json::Value,
) -> anyhow::Result<i64> {
    let entry = AuditEntry {
        workspace_id: workspace_id.to_string(),
        at_ms: now_ms(),
        replica: "admin-cli".into(),
        actor: admin_actor(),
        source: "local".into(),
        action: action.to_string(),
        machine_id: machine.0.to_string(),
        hostname: machine.1.to_string(),
        detail: detail.to_string(),
    };
    let ids = store
        .append_audit(&[entry])
        .context("cannot write the audit record of this action, so it was not done")?;
    match ids.first() {
        Some(id) => Ok(*id),
        None => bail!("the audit trail returned no record id"),
    }
}

/// Records what an admin action came to.
pub fn finish_admin(store: &Store, id: i64, result: &anyhow::Result<()>) {
    let outcome = AuditOutcome {
        outcome: match result {
            Ok(()) => "ok".into(),
            Err(e) => format!("failed: {e:#}"),
        },
        ..AuditOutcome::default()
    };
    if let Err(e) = store.finish_audit(&[(id, outcome)]) {
        eprintln!("warning: the action's outcome was not recorded in the audit trail: {e:#}");
    }
}
