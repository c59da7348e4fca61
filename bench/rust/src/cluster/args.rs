//! The command line of `cmdop-bench-cluster`: its options, their defaults
//! and their checks.

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context};

/// Time from one failover run's recovery to the next kill: the agent resets its
/// reconnect backoff once a link stayed up 10 s (`AGENT_RECONNECT.reset_after`).
const DEFAULT_FAILOVER_STEADY: Duration = Duration::from_secs(12);

const USAGE: &str = "usage: cmdop-bench-cluster --cmdop PATH --hostname NAME \
[--latency-runs N] [--warmup N] [--stream-bytes N] [--stream-runs N] [--failover-runs N] \
[--rolling-runs N] \
[--db-runs N] [--agents N --agents-bin PATH [--agents-lat-runs N]] [--failover-steady-ms N] \
[--timeout-ms N] [--log-level L] \
[--keep-logs DIR] [--store postgres|sqlite] [--no-audit]";

pub struct Args {
    pub cmdop: PathBuf,
    pub hostname: String,
    pub latency_runs: usize,
    pub warmup: usize,
    pub stream_bytes: u64,
    pub stream_runs: usize,
    pub failover_runs: usize,
    /// Rolling restarts (each: every replica stopped with SIGTERM and
    /// started again in turn) under execute loops; 0 = none.
    pub rolling_runs: usize,
    pub db_runs: usize,
    pub timeout: Duration,
    pub log_level: String,
    pub keep_logs: Option<PathBuf>,
    pub sqlite: bool,
    pub agents: usize,
    pub agents_bin: Option<PathBuf>,
    pub agents_lat_runs: usize,
    pub failover_steady: Duration,
    /// Replicas run without the audit trail (`cmdop server --no-audit`), so
    /// the database case shows the hot path's own statements.
    pub no_audit: bool,
}

fn parse_size(flag: &str, v: &str) -> anyhow::Result<u64> {
    let (digits, mult) = match v.chars().last() {
        Some('K' | 'k') => (&v[..v.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&v[..v.len() - 1], 1 << 20),
        Some('G' | 'g') => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .with_context(|| format!("{flag}: '{v}' is not a size (a number with K, M or G)"))
}

pub fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        cmdop: PathBuf::new(),
        hostname: String::new(),
        latency_runs: 100,
        warmup: 10,
        stream_bytes: 16 << 20,
        stream_runs: 2,
        failover_runs: 2,
        rolling_runs: 0,
        db_runs: 100,
        timeout: Duration::from_secs(60),
        log_level: "warn".into(),
        keep_logs: None,
        sqlite: false,
        agents: 0,
        agents_bin: None,
        agents_lat_runs: 200,
        failover_steady: DEFAULT_FAILOVER_STEADY,
        no_audit: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--no-audit" {
            args.no_audit = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value; {USAGE}"))?;
        let count = |v: &str| {
            v.parse::<usize>()
                .with_context(|| format!("{flag}: '{v}' is not a count"))
        };
        match flag.as_str() {
            "--cmdop" => args.cmdop = value.into(),
            "--hostname" => args.hostname = value,
            "--latency-runs" => args.latency_runs = count(&value)?,
            "--warmup" => args.warmup = count(&value)?,
            "--stream-bytes" => args.stream_bytes = parse_size(&flag, &value)?,
            "--stream-runs" => args.stream_runs = count(&value)?,
            "--failover-runs" => args.failover_runs = count(&value)?,
            "--rolling-runs" => args.rolling_runs = count(&value)?,
            "--db-runs" => args.db_runs = count(&value)?,
            "--timeout-ms" => args.timeout = Duration::from_millis(count(&value)?.max(1) as u64),
            "--log-level" => args.log_level = value,
            "--keep-logs" => args.keep_logs = Some(value.into()),
            "--agents" => args.agents = count(&value)?,
            "--agents-bin" => args.agents_bin = Some(value.into()),
            "--agents-lat-runs" => args.agents_lat_runs = count(&value)?,
            "--failover-steady-ms" => {
                args.failover_steady = Duration::from_millis(count(&value)? as u64)
            }
            "--store" => match value.as_str() {
                "postgres" => args.sqlite = false,
                "sqlite" => args.sqlite = true,
                _ => bail!("--store takes postgres or sqlite, not '{value}'"),
            },
            _ => bail!("unknown option {flag}; {USAGE}"),
        }
    }
    if args.cmdop.as_os_str().is_empty() || args.hostname.is_empty() {
        bail!("--cmdop and --hostname are required; {USAGE}");
    }
    if !args.cmdop.is_file() {
        bail!(
            "--cmdop {} is not a file; build it with cargo build --release -p cmdop-cli",
            args.cmdop.display()
        );
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("--stream-bytes", "16M").unwrap(), 16 << 20);
        assert_eq!(parse_size("--stream-bytes", "1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("--stream-bytes", "4096").unwrap(), 4096);
        assert!(parse_size("--stream-bytes", "1T").is_err());
        assert!(parse_size("--stream-bytes", "-1").is_err());
    }
}
