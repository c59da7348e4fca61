//! `cmdop-bench-cluster`: the cluster benchmarks of issue 11 — a private
//! PostgreSQL, three `cmdop server` replicas sharing it (forwarding to each
//! other over their peer ports) and one real agent that knows all three,
//! measured through the Rust client core.
//!
//! ```text
//! cmdop-bench-cluster --cmdop PATH --hostname NAME
//!     [--latency-runs N] [--warmup N] [--stream-bytes N] [--stream-runs N]
//!     [--failover-runs N] [--failover-steady-ms N] [--db-runs N]
//!     [--agents N --agents-bin PATH [--agents-lat-runs N]]
//!     [--timeout-ms N] [--log-level L] [--keep-logs DIR] [--store postgres|sqlite]
//! ```
//!
//! `--store sqlite` (replicas sharing one SQLite data directory instead of
//! PostgreSQL) is for trying the harness on builds without PostgreSQL
//! support; the database case needs PostgreSQL and is skipped then.
//!
//! Prints one JSON record per measurement on stdout (format in
//! `bench/c/bench_common.h`), progress on stderr:
//!
//! - `cluster-latency`: `execute("true")` with the client on the agent's
//!   replica (`same-replica`) and on another one (`cross-replica`),
//!   interleaved call by call;
//! - `cluster-stream`: `head -c N /dev/zero` through a cross-replica
//!   client, bytes counted in the streaming callback;
//! - `cluster-failover`: SIGKILL of the replica holding the agent, time
//!   until an execute on the machine succeeds through a survivor; the killed
//!   replica is restarted (same arguments) before the next run, which starts
//!   `--failover-steady-ms` after the recovery (default 12 s: the agent
//!   resets its reconnect backoff once a link stayed up 10 s);
//! - `cluster-db`: database statements per execute on the hot path
//!   (`pg_stat_statements`, or transactions from `pg_stat_database` when the
//!   extension is not available), minus the background rate of an idle
//!   window of the same length;
//! - `cluster-agents` (with `--agents N`): `cmdop-bench-agents` connects N
//!   simulated idle agents spread over the replicas; the replicas' resident
//!   memory before and after (summed), and cross-replica `execute("true")`
//!   without (`exec-1`) and with them (`exec-n`).
//!
//! A part that cannot run prints a record with `"skipped"` and the run exits
//! with status 1; status 2 means the cluster itself did not start.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use cmdop::client::{CancelToken, Client, ClientOptions, Credentials};
use cmdop_localpg::{free_port, LocalPostgres};
use tokio::process::{Child, Command};

const REPLICAS: usize = 3;
/// How long a replica may take to write its ready file.
const REPLICA_START: Duration = Duration::from_secs(30);
/// How long the agent may take to show up after the replicas started.
const MACHINE_WAIT: Duration = Duration::from_secs(30);
/// Longest a failover run may take before it counts as failed.
const FAILOVER_GIVE_UP: Duration = Duration::from_secs(30);
/// Bound of one execute attempt during failover (a call through the dead
/// replica must end, not hang; this keeps a hung one from hiding recovery).
const FAILOVER_ATTEMPT: Duration = Duration::from_millis(1500);
/// How long, before a failover run, the survivors may take to serve the
/// machine (following the previous run's move).
const SETTLE_WAIT: Duration = Duration::from_secs(15);
/// Time from one failover run's recovery to the next kill: the agent resets its
/// reconnect backoff once a link stayed up 10 s (`AGENT_RECONNECT.reset_after`).
const DEFAULT_FAILOVER_STEADY: Duration = Duration::from_secs(12);
/// Pause between failover attempts.
const FAILOVER_PAUSE: Duration = Duration::from_millis(10);
/// Shortest idle window for the database background rate.
const MIN_IDLE_WINDOW: Duration = Duration::from_secs(2);

const USAGE: &str = "usage: cmdop-bench-cluster --cmdop PATH --hostname NAME \
[--latency-runs N] [--warmup N] [--stream-bytes N] [--stream-runs N] [--failover-runs N] \
[--db-runs N] [--agents N --agents-bin PATH [--agents-lat-runs N]] [--failover-steady-ms N] \
[--timeout-ms N] [--log-level L] \
[--keep-logs DIR] [--store postgres|sqlite]";

struct Args {
    cmdop: PathBuf,
    hostname: String,
    latency_runs: usize,
    warmup: usize,
    stream_bytes: u64,
    stream_runs: usize,
    failover_runs: usize,
    db_runs: usize,
    timeout: Duration,
    log_level: String,
    keep_logs: Option<PathBuf>,
    sqlite: bool,
    agents: usize,
    agents_bin: Option<PathBuf>,
    agents_lat_runs: usize,
    failover_steady: Duration,
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

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        cmdop: PathBuf::new(),
        hostname: String::new(),
        latency_runs: 100,
        warmup: 10,
        stream_bytes: 16 << 20,
        stream_runs: 2,
        failover_runs: 2,
        db_runs: 100,
        timeout: Duration::from_secs(60),
        log_level: "warn".into(),
        keep_logs: None,
        sqlite: false,
        agents: 0,
        agents_bin: None,
        agents_lat_runs: 200,
        failover_steady: DEFAULT_FAILOVER_STEADY,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
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

// ------------------------------------------------------------ records

fn round_us(samples: &[f64]) -> Vec<f64> {
    samples
        .iter()
        .map(|v| (v * 1000.0).round() / 1000.0)
        .collect()
}

fn p50(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len().saturating_sub(1) / 2).copied().unwrap_or(0.0)
}

fn emit(record: serde_json::Value) {
    println!("{record}");
}

fn emit_skip(case: &str, subject: &str, label: &str, why: &str) {
    eprintln!("cmdop-bench-cluster: {case}/{subject} not measured: {why}");
    emit(serde_json::json!({"case": case, "subject": subject, "label": label, "skipped": why}));
}

/// Current (VmRSS) or peak (VmHWM) resident set of `pid` in KiB; -1 if unknown.
fn rss_kb(pid: Option<u32>, field: &str) -> i64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".into(),
    };
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(-1)
}

/// Resets the peak resident set of `pid` (0 = this process) to its current size.
fn reset_peak(pid: Option<u32>) {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/clear_refs"),
        None => "/proc/self/clear_refs".into(),
    };
    let _ = std::fs::write(path, "5");
}

// ------------------------------------------------------------ PostgreSQL

/// Runs one SQL text through `psql` and returns its unaligned output
/// (fields separated by U+001F).
fn psql(url: &str, sql: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new("psql")
        .arg(url)
        .args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-F",
            "\x1f",
            "-c",
            sql,
        ])
        .env("PGCONNECT_TIMEOUT", "5")
        .env("PGOPTIONS", "-c statement_timeout=10000")
        .stdin(Stdio::null())
        .output()
        .context("cannot run psql; install it with apt-get install -y postgresql-client")?;
    if !out.status.success() {
        bail!(
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The replicas' shared state: a PostgreSQL URL or a SQLite data directory.
#[derive(Clone)]
enum Db {
    Postgres(String),
    Sqlite(PathBuf),
}

impl Db {
    /// Names it to a `cmdop server` / `cmdop admin` command: the data
    /// directory as a flag, the URL (with its password) in the environment,
    /// never on a command line other users can read.
    fn name_to(&self, cmd: &mut Command) {
        match self {
            Db::Postgres(url) => cmd.env("CMDOP_DATABASE_URL", url),
            Db::Sqlite(dir) => cmd.arg("--data-dir").arg(dir),
        };
    }

    /// One query; rows as lines, fields separated by U+001F.
    fn query(&self, sql: &str) -> anyhow::Result<String> {
        match self {
            Db::Postgres(url) => psql(url, sql),
            Db::Sqlite(dir) => {
                let out = std::process::Command::new("python3")
                    .arg("-c")
                    .arg(
                        "import sqlite3, sys\n\
                         c = sqlite3.connect(sys.argv[1], timeout=10)\n\
                         for r in c.execute(sys.argv[2]): print('\\x1f'.join(map(str, r)))",
                    )
                    .arg(dir.join("cmdop.db"))
                    .arg(sql)
                    .stdin(Stdio::null())
                    .output()
                    .context("cannot run python3 (for reading the SQLite store)")?;
                if !out.status.success() {
                    bail!(
                        "query failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
            }
        }
    }
}

/// Turns on `pg_stat_statements` (as the superuser; needs a restart of the
/// server, done here before any replica connects) and lets the application
/// user read every statement's counts. Returns why not when it cannot.
fn enable_statement_stats(pg: &mut LocalPostgres) -> Result<(), String> {
    let db = cmdop_localpg::DATABASE;
    pg.psql(
        "postgres",
        "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'",
    )
    .map_err(|e| format!("{e:#}"))?;
    pg.stop();
    pg.start_again()
        .map_err(|e| format!("PostgreSQL did not restart with pg_stat_statements: {e:#}"))?;
    pg.psql(db, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .map_err(|e| format!("{e:#}"))?;
    pg.psql(
        db,
        &format!("GRANT pg_read_all_stats TO {}", cmdop_localpg::USER),
    )
    .map(|_| ())
    .map_err(|e| format!("{e:#}"))
}

/// Statement counts per query of this database, leaving out the queries
/// that read the statistics themselves.
fn statement_counts(url: &str) -> anyhow::Result<HashMap<String, (u64, String)>> {
    let out = psql(
        url,
        "SELECT queryid, calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 160) \
         FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND query NOT LIKE '%pg_stat%'",
    )?;
    let mut counts = HashMap::new();
    for line in out.lines().filter(|l| !l.is_empty()) {
        let mut f = line.split('\x1f');
        let (Some(id), Some(calls), Some(text)) = (f.next(), f.next(), f.next()) else {
            bail!("unexpected pg_stat_statements line: {line}");
        };
        let calls = calls.parse().context("pg_stat_statements calls")?;
        counts.insert(id.to_string(), (calls, text.to_string()));
    }
    Ok(counts)
}

/// Committed plus rolled-back transactions of this database (the server
/// publishes these lazily, up to seconds late).
fn transaction_count(url: &str) -> anyhow::Result<u64> {
    psql(
        url,
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()",
    )?
    .parse()
    .context("pg_stat_database returned no number")
}

/// What the database did between two snapshots.
#[derive(Clone)]
enum DbCounter {
    Statements,
    Transactions,
}

enum DbSnapshot {
    Statements(HashMap<String, (u64, String)>),
    Transactions(u64),
}

impl DbCounter {
    fn snapshot(&self, url: &str) -> anyhow::Result<DbSnapshot> {
        Ok(match self {
            DbCounter::Statements => DbSnapshot::Statements(statement_counts(url)?),
            DbCounter::Transactions => DbSnapshot::Transactions(transaction_count(url)?),
        })
    }
}

/// Total growth from `a` to `b`, and the statements that grew most.
fn db_delta(a: &DbSnapshot, b: &DbSnapshot) -> (i64, Vec<(u64, String)>) {
    match (a, b) {
        (DbSnapshot::Statements(a), DbSnapshot::Statements(b)) => {
            let mut grown: Vec<(u64, String)> = b
                .iter()
                .filter_map(|(id, (calls, text))| {
                    let before = a.get(id).map(|(c, _)| *c).unwrap_or(0);
                    (*calls > before).then(|| (*calls - before, text.clone()))
                })
                .collect();
            grown.sort_by_key(|g| std::cmp::Reverse(g.0));
            (grown.iter().map(|(n, _)| *n as i64).sum(), grown)
        }
        // Each snapshot is one transaction of its own.
        (DbSnapshot::Transactions(a), DbSnapshot::Transactions(b)) => {
            (*b as i64 - *a as i64 - 1, Vec::new())
        }
        _ => (0, Vec::new()),
    }
}

// ------------------------------------------------------------ processes

struct Replica {
    id: String,
    listen: SocketAddr,
    peer: SocketAddr,
    ready: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

struct Cluster {
    cmdop: PathBuf,
    db: Db,
    log_level: String,
    peer_secret: String,
    replicas: Vec<Replica>,
    agent: Option<Child>,
    agent_log: PathBuf,
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

/// Runs `cmdop admin ARGS` on `db` and returns what it printed.
async fn admin(cmdop: &Path, db: &Db, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new(cmdop);
    cmd.arg("admin");
    db.name_to(&mut cmd);
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {}", cmdop.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        // On one line; clap's usage text after its error says nothing more.
        let err = if stderr.contains("unexpected argument") {
            lines.first().copied().unwrap_or_default().to_string()
        } else {
            lines.join(" | ")
        };
        let hint = if err.contains("--database") {
            "; this cmdop has no cluster mode yet (issue 11: `cmdop admin --database postgres://…`) — \
             build a version that has it"
        } else {
            ""
        };
        bail!(
            "cmdop admin {} failed: {}{hint}",
            args.first().copied().unwrap_or_default(),
            err
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Cluster {
    /// Starts (or restarts) replica `i` with its fixed arguments and waits
    /// for its ready file.
    async fn start_replica(&mut self, i: usize) -> anyhow::Result<()> {
        let r = &mut self.replicas[i];
        let _ = std::fs::remove_file(&r.ready);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&r.log)
            .with_context(|| format!("cannot open {}", r.log.display()))?;
        let mut cmd = Command::new(&self.cmdop);
        cmd.args(["--log-level", &self.log_level, "server"]);
        self.db.name_to(&mut cmd);
        let child = cmd
            .args(["--listen", &r.listen.to_string()])
            .args(["--peer-listen", &r.peer.to_string()])
            .args(["--replica-id", &r.id])
            .arg("--ready-file")
            .arg(&r.ready)
            .env("CMDOP_PEER_SECRET", &self.peer_secret)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {}", self.cmdop.display()))?;
        r.child = Some(child);
        let deadline = Instant::now() + REPLICA_START;
        while !r.ready.exists() {
            if let Some(Ok(Some(status))) = r.child.as_mut().map(|c| c.try_wait()) {
                r.child = None;
                let tail = log_tail(&r.log, 3);
                let hint = if tail.contains("--database")
                    || tail.contains("--peer-listen")
                    || tail.contains("--replica-id")
                {
                    " (this cmdop has no cluster mode yet: issue 11's `cmdop server --database \
                     … --peer-listen … --replica-id …`; build a version that has it)"
                } else {
                    ""
                };
                bail!(
                    "replica {} exited at start-up ({status}){hint}: {tail}",
                    r.id
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "replica {} wrote no ready file within {REPLICA_START:?}: {}",
                    r.id,
                    log_tail(&r.log, 3)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn pid(&self, i: usize) -> Option<u32> {
        self.replicas[i].child.as_ref().and_then(|c| c.id())
    }

    fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().and_then(|c| c.id())
    }

    /// SIGKILL to replica `i`, reaped before this returns.
    async fn kill_replica(&mut self, i: usize) {
        if let Some(mut child) = self.replicas[i].child.take() {
            let _ = child.kill().await;
        }
    }

    /// The replica index holding `machine_id`'s agent, by the routes table.
    fn route(&self, machine_id: &str) -> anyhow::Result<Option<usize>> {
        if !machine_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            bail!("unexpected machine id '{machine_id}'");
        }
        let out = self
            .db
            .query(&format!(
                "SELECT replica_id FROM routes WHERE machine_id = '{machine_id}' AND replica_id <> ''"
            ))
            .context("cannot read the routes table")?;
        let id = out.lines().next().unwrap_or("").trim();
        if id.is_empty() {
            return Ok(None);
        }
        Ok(self.replicas.iter().position(|r| r.id == id))
    }

    /// Waits until the routes table names a live replica for `machine_id`.
    async fn live_route(&self, machine_id: &str) -> anyhow::Result<usize> {
        let deadline = Instant::now() + MACHINE_WAIT;
        loop {
            if let Some(i) = self.route(machine_id)? {
                if self.replicas[i].child.is_some() {
                    return Ok(i);
                }
            }
            if Instant::now() > deadline {
                bail!("the routes table names no live replica for {machine_id} after {MACHINE_WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(&mut self) {
        let mut children: Vec<Child> = self.agent.take().into_iter().collect();
        children.extend(self.replicas.iter_mut().filter_map(|r| r.child.take()));
        for c in &children {
            if let Some(pid) = c.id() {
                // SIGTERM first: the replicas release their routes and leases.
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
        }
        for mut c in children {
            if tokio::time::timeout(Duration::from_secs(5), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
    }
}

struct Setup {
    cluster: Cluster,
    api_key: String,
    machine_id: String,
}

async fn start_cluster(args: &Args, dir: &Path, db: Db) -> anyhow::Result<Setup> {
    admin(&args.cmdop, &db, &["create-workspace", "bench"]).await?;
    let api_key = admin(
        &args.cmdop,
        &db,
        &["create-key", "--workspace", "bench", "--label", "bench"],
    )
    .await?;
    let token = admin(&args.cmdop, &db, &["enroll-token", "--workspace", "bench"]).await?;
    let mut replicas = Vec::new();
    for i in 0..REPLICAS {
        replicas.push(Replica {
            id: format!("rep_bench{}", i + 1),
            listen: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            peer: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            ready: dir.join(format!("ready-{}", i + 1)),
            log: dir.join(format!("replica-{}.log", i + 1)),
            child: None,
        });
    }
    let mut cluster = Cluster {
        cmdop: args.cmdop.clone(),
        db,
        log_level: args.log_level.clone(),
        peer_secret: cmdop_controlplane::store::secrets::random_hex("", 24),
        replicas,
        agent: None,
        agent_log: dir.join("agent.log"),
    };
    for i in 0..REPLICAS {
        cluster.start_replica(i).await?;
    }
    let servers: Vec<String> = cluster
        .replicas
        .iter()
        .map(|r| format!("http://{}", r.listen))
        .collect();
    let agent_log = std::fs::File::create(&cluster.agent_log)?;
    cluster.agent = Some(
        Command::new(&args.cmdop)
            .args(["--log-level", &args.log_level, "agent", "--server"])
            .arg(servers.join(","))
            .arg("--state-file")
            .arg(dir.join("agent.json"))
            .args(["--hostname", &args.hostname])
            .env("CMDOP_ENROLL_TOKEN", &token)
            .stdin(Stdio::null())
            .stdout(agent_log.try_clone()?)
            .stderr(agent_log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the agent")?,
    );
    let (client, machine) = match open_client(&cluster, 0, &api_key, &args.hostname).await {
        Ok(c) => c,
        Err(e) => {
            let agent_exit = cluster
                .agent
                .as_mut()
                .and_then(|a| a.try_wait().ok().flatten());
            bail!(
                "{e:#}; agent {}: {}",
                agent_exit.map_or("running".to_string(), |s| format!("exited ({s})")),
                log_tail(&cluster.agent_log, 3)
            );
        }
    };
    client.close().await;
    if machine.machine_id.is_empty() {
        bail!("the replicas report no machine id; they run without our extensions");
    }
    Ok(Setup {
        cluster,
        api_key,
        machine_id: machine.machine_id,
    })
}

/// A client on replica `i` with the machine selected (retried while the
/// agent comes up or moves).
async fn open_client(
    cluster: &Cluster,
    i: usize,
    key: &str,
    hostname: &str,
) -> anyhow::Result<(Client, cmdop::client::MachineInfo)> {
    let addr = cluster.replicas[i].listen;
    let mut opts = ClientOptions::local(&addr.ip().to_string(), addr.port());
    opts.credentials = Credentials::ApiKey(key.to_string());
    let client = Client::connect(opts).await.with_context(|| {
        format!(
            "cannot connect to replica {} on {addr}",
            cluster.replicas[i].id
        )
    })?;
    let deadline = Instant::now() + MACHINE_WAIT;
    loop {
        match client.set_machine(hostname).await {
            Ok(m) => return Ok((client, m)),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| {
                    format!(
                        "machine '{hostname}' not available on replica {}",
                        cluster.replicas[i].id
                    )
                })
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

// ------------------------------------------------------------ cases

/// One timed `execute("true")`; `Err` with the reason when it failed.
async fn timed_true(client: &Client, timeout: Duration) -> Result<f64, String> {
    let t0 = Instant::now();
    match client.execute("true", Some(timeout)).await {
        Ok(out) if out.exit_code == 0 => Ok(t0.elapsed().as_secs_f64() * 1e6),
        Ok(out) => Err(format!("'true' exited with {}", out.exit_code)),
        Err(e) => Err(e.to_string()),
    }
}

struct Samples {
    us: Vec<f64>,
    errors: usize,
    first_error: Option<String>,
}

impl Samples {
    fn new() -> Samples {
        Samples {
            us: Vec::new(),
            errors: 0,
            first_error: None,
        }
    }
    fn add(&mut self, r: Result<f64, String>) {
        match r {
            Ok(us) => self.us.push(us),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

fn latency_record(
    subject: &str,
    label: &str,
    s: &Samples,
    runs: usize,
    wall: Duration,
    note: &str,
) {
    if let Some(e) = &s.first_error {
        eprintln!(
            "cmdop-bench-cluster: {subject}: {} failed, first: {e}",
            s.errors
        );
    }
    eprintln!(
        "cmdop-bench-cluster: {subject}: p50 {:.0} µs over {} runs",
        p50(&s.us),
        s.us.len()
    );
    emit(serde_json::json!({
        "case": "cluster-latency",
        "subject": subject,
        "label": label,
        "runs": runs,
        "concurrency": 1,
        "wall_s": wall.as_secs_f64(),
        "ops_per_s": if wall.as_secs_f64() > 0.0 { s.us.len() as f64 / wall.as_secs_f64() } else { 0.0 },
        "errors": s.errors,
        "bytes": 0,
        "note": note,
        "samples_us": round_us(&s.us),
    }));
}

/// Same-replica and cross-replica `execute("true")`, interleaved call by call.
async fn latency(args: &Args, setup: &Setup) -> anyhow::Result<()> {
    let c = &setup.cluster;
    let home = c.live_route(&setup.machine_id).await?;
    let other = (home + 1) % REPLICAS;
    let (same, _) = open_client(c, home, &setup.api_key, &args.hostname).await?;
    let (cross, _) = open_client(c, other, &setup.api_key, &args.hostname).await?;
    for _ in 0..args.warmup {
        let _ = timed_true(&same, args.timeout).await;
        let _ = timed_true(&cross, args.timeout).await;
    }
    let (mut s_same, mut s_cross) = (Samples::new(), Samples::new());
    let t0 = Instant::now();
    for i in 0..args.latency_runs {
        // Alternate which goes first so neither always follows the other.
        if i % 2 == 0 {
            s_same.add(timed_true(&same, args.timeout).await);
            s_cross.add(timed_true(&cross, args.timeout).await);
        } else {
            s_cross.add(timed_true(&cross, args.timeout).await);
            s_same.add(timed_true(&same, args.timeout).await);
        }
    }
    let wall = t0.elapsed() / 2;
    let moved = c.route(&setup.machine_id)? != Some(home);
    let note = if moved {
        "the agent moved to another replica during the run"
    } else {
        ""
    };
    latency_record(
        "same-replica",
        "execute(\"true\"), client on the agent's replica",
        &s_same,
        args.latency_runs,
        wall,
        note,
    );
    latency_record(
        "cross-replica",
        "execute(\"true\"), client on another replica (forwarded)",
        &s_cross,
        args.latency_runs,
        wall,
        note,
    );
    same.close().await;
    cross.close().await;
    Ok(())
}

/// `head -c N /dev/zero` through a cross-replica client.
async fn stream(args: &Args, setup: &Setup) -> anyhow::Result<()> {
    let c = &setup.cluster;
    let home = c.live_route(&setup.machine_id).await?;
    let other = (home + 1) % REPLICAS;
    let (client, _) = open_client(c, other, &setup.api_key, &args.hostname).await?;
    let command = format!("head -c {} /dev/zero", args.stream_bytes);
    let timeout = args.timeout.max(Duration::from_secs(600));
    let run_once = |client: &Client| {
        let client = client.clone();
        let command = command.clone();
        async move {
            let counted = Arc::new(AtomicU64::new(0));
            let seen = counted.clone();
            let t0 = Instant::now();
            let out = client
                .execute_stream_discarding(
                    &command,
                    Some(timeout),
                    move |_, chunk| {
                        seen.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    },
                    CancelToken::new(),
                )
                .await;
            let took = t0.elapsed();
            let n = counted.load(Ordering::Relaxed);
            match out {
                Ok(o) if o.exit_code == 0 && n == args.stream_bytes => Ok(took.as_secs_f64() * 1e6),
                Ok(o) => Err(format!(
                    "exit {} after {n} of {} bytes",
                    o.exit_code, args.stream_bytes
                )),
                Err(e) => Err(format!("{e} after {n} bytes")),
            }
        }
    };
    let _ = run_once(&client).await; // warm-up
    let watched = [
        ("controlplane", c.pid(other)),
        ("controlplane_agent", c.pid(home)),
        ("agent", c.agent_pid()),
    ];
    reset_peak(None);
    for (_, pid) in &watched {
        if pid.is_some() {
            reset_peak(*pid);
        }
    }
    let mut s = Samples::new();
    let t0 = Instant::now();
    for _ in 0..args.stream_runs {
        s.add(run_once(&client).await);
    }
    let wall = t0.elapsed();
    let mut rss = serde_json::Map::new();
    rss.insert("client".into(), rss_kb(None, "VmHWM:").into());
    for (name, pid) in watched {
        let kb = if pid.is_some() {
            rss_kb(pid, "VmHWM:")
        } else {
            -1
        };
        rss.insert(name.into(), kb.into());
    }
    client.close().await;
    if let Some(e) = &s.first_error {
        eprintln!(
            "cmdop-bench-cluster: stream: {} failed, first: {e}",
            s.errors
        );
    }
    emit(serde_json::json!({
        "case": "cluster-stream",
        "subject": "cross-replica",
        "label": "Rust client, cross-replica (streaming callback)",
        "runs": args.stream_runs,
        "concurrency": 1,
        "wall_s": wall.as_secs_f64(),
        "ops_per_s": if wall.as_secs_f64() > 0.0 { s.us.len() as f64 / wall.as_secs_f64() } else { 0.0 },
        "errors": s.errors,
        "bytes": args.stream_bytes,
        "rss_kb": rss,
        "samples_us": round_us(&s.us),
    }));
    Ok(())
}

/// Retries `execute("true")` on `client` until it succeeds; returns the
/// attempts it took and the first error seen.
async fn until_success(client: Client, hostname: String) -> (usize, Option<String>) {
    let mut attempts = 0usize;
    let mut first_error = None;
    loop {
        attempts += 1;
        let outcome = tokio::time::timeout(
            FAILOVER_ATTEMPT,
            client.execute("true", Some(FAILOVER_ATTEMPT)),
        )
        .await;
        match outcome {
            Ok(Ok(out)) if out.exit_code == 0 => return (attempts, first_error),
            Ok(Ok(out)) => {
                first_error.get_or_insert(format!("'true' exited with {}", out.exit_code));
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e.to_string());
                // The machine may come back under a new session: select again.
                let _ = tokio::time::timeout(FAILOVER_ATTEMPT, client.set_machine(&hostname)).await;
            }
            Err(_) => {
                first_error.get_or_insert(format!("an attempt hung for {FAILOVER_ATTEMPT:?}"));
            }
        }
        tokio::time::sleep(FAILOVER_PAUSE).await;
    }
}

/// `runs` executes of `true` one after the other.
async fn measure(client: &Client, runs: usize, timeout: Duration) -> (Samples, Duration) {
    let mut s = Samples::new();
    let t0 = Instant::now();
    for _ in 0..runs {
        s.add(timed_true(client, timeout).await);
    }
    (s, t0.elapsed())
}

fn agents_latency_record(subject: &str, label: &str, s: &Samples, runs: usize, wall: Duration) {
    if let Some(e) = &s.first_error {
        eprintln!(
            "cmdop-bench-cluster: {subject}: {} failed, first: {e}",
            s.errors
        );
    }
    emit(serde_json::json!({
        "case": "cluster-agents",
        "subject": subject,
        "label": label,
        "runs": runs,
        "concurrency": 1,
        "wall_s": wall.as_secs_f64(),
        "ops_per_s": if wall.as_secs_f64() > 0.0 { s.us.len() as f64 / wall.as_secs_f64() } else { 0.0 },
        "errors": s.errors,
        "bytes": 0,
        "samples_us": round_us(&s.us),
    }));
}

/// Cross-replica execute latency without and with `--agents` simulated idle
/// agents spread over the replicas, and what they cost the replicas.
async fn idle_agents(args: &Args, setup: &Setup) -> anyhow::Result<()> {
    let bin = args
        .agents_bin
        .as_ref()
        .context("--agents needs --agents-bin (target/release/cmdop-bench-agents)")?;
    let c = &setup.cluster;
    let home = c.live_route(&setup.machine_id).await?;
    let (client, _) = open_client(c, (home + 1) % REPLICAS, &setup.api_key, &args.hostname).await?;
    let _ = measure(&client, args.warmup, args.timeout).await;
    let (s, wall) = measure(&client, args.agents_lat_runs, args.timeout).await;
    agents_latency_record(
        "exec-1",
        "cross-replica execute(\"true\"), no other agent",
        &s,
        args.agents_lat_runs,
        wall,
    );

    let servers: Vec<String> = c
        .replicas
        .iter()
        .map(|r| format!("http://{}", r.listen))
        .collect();
    let log_path = c.agent_log.with_file_name("agents.log");
    let log = std::fs::File::create(&log_path)?;
    let mut sim = Command::new(bin);
    sim.arg("--server").arg(servers.join(","));
    c.db.name_to(&mut sim);
    sim.args(["--workspace", "bench", "--agents", &args.agents.to_string()])
        .args(["--case", "cluster-agents"])
        .args([
            "--label",
            &format!("{} idle agents over {REPLICAS} replicas", args.agents),
        ]);
    for i in 0..REPLICAS {
        let pid = c.pid(i).context("a replica is not running")?;
        sim.args(["--control-plane-pid", &pid.to_string()]);
    }
    let mut sim = sim
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let stdout = sim.stdout.take().context("no stdout of the simulator")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let record = tokio::time::timeout(Duration::from_secs(900), lines.next_line()).await;
    let record = match record {
        Ok(Ok(Some(line))) => line,
        Ok(_) => bail!(
            "the simulated agents did not connect: {}",
            log_tail(&log_path, 2)
        ),
        Err(_) => bail!("the simulated agents did not all connect within 900 s"),
    };
    let parsed: serde_json::Value =
        serde_json::from_str(&record).context("the simulator printed no JSON record")?;
    emit(parsed);
    let (s, wall) = measure(&client, args.agents_lat_runs, args.timeout).await;
    agents_latency_record(
        "exec-n",
        &format!(
            "cross-replica execute(\"true\"), {} idle agents connected",
            args.agents
        ),
        &s,
        args.agents_lat_runs,
        wall,
    );
    client.close().await;
    if let Some(pid) = sim.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    if tokio::time::timeout(Duration::from_secs(30), sim.wait())
        .await
        .is_err()
    {
        let _ = sim.kill().await;
    }
    Ok(())
}

/// SIGKILL the agent's replica, time until an execute succeeds through a
/// survivor, restart the killed replica.
async fn failover(args: &Args, setup: &mut Setup) -> anyhow::Result<()> {
    let mut s = Samples::new();
    let mut notes = Vec::new();
    let mut restart_us = Vec::new();
    let mut settle_us = Vec::new();
    let t_all = Instant::now();
    for run in 0..args.failover_runs {
        if let Err(e) = failover_run(
            args,
            setup,
            run,
            &mut s,
            &mut notes,
            &mut restart_us,
            &mut settle_us,
        )
        .await
        {
            // What was measured so far is kept; the cluster is not in a
            // state to go on.
            s.add(Err(format!("{e:#}")));
            notes.push(format!("run {} could not complete: {e:#}", run + 1));
            if s.us.is_empty() {
                return Err(e);
            }
            break;
        }
    }
    if let Some(e) = &s.first_error {
        eprintln!(
            "cmdop-bench-cluster: failover: {} failed, first: {e}",
            s.errors
        );
    }
    emit(serde_json::json!({
        "case": "cluster-failover",
        "subject": "sigkill-agent-replica",
        "label": "SIGKILL of the agent's replica → execute succeeds through a survivor",
        "runs": args.failover_runs,
        "concurrency": 1,
        "wall_s": t_all.elapsed().as_secs_f64(),
        "ops_per_s": 0.0,
        "errors": s.errors,
        "bytes": 0,
        "note": notes.join("; "),
        "restart_us": round_us(&restart_us),
        "settle_us": round_us(&settle_us),
        "steady_s": args.failover_steady.as_secs_f64(),
        "samples_us": round_us(&s.us),
    }));
    Ok(())
}

/// One failover run: kill, time the recovery, restart.
async fn failover_run(
    args: &Args,
    setup: &mut Setup,
    run: usize,
    s: &mut Samples,
    notes: &mut Vec<String>,
    restart_us: &mut Vec<f64>,
    settle_us: &mut Vec<f64>,
) -> anyhow::Result<()> {
    let home = setup.cluster.live_route(&setup.machine_id).await?;
    let survivors: Vec<usize> = (0..REPLICAS).filter(|&i| i != home).collect();
    let mut clients = Vec::new();
    let settle_start = Instant::now();
    for &i in &survivors {
        let (client, _) = open_client(&setup.cluster, i, &setup.api_key, &args.hostname).await?;
        // The survivors serve the machine before the kill (after the
        // previous run, a replica may need a moment to follow the move).
        let deadline = Instant::now() + SETTLE_WAIT;
        loop {
            match timed_true(&client, args.timeout).await {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => bail!(
                    "execute through {} still fails {SETTLE_WAIT:?} before the kill: {e}",
                    setup.cluster.replicas[i].id
                ),
                Err(_) => {
                    let _ = client.set_machine(&args.hostname).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        clients.push(client);
    }
    settle_us.push(settle_start.elapsed().as_secs_f64() * 1e6);
    let killed_id = setup.cluster.replicas[home].id.clone();
    let t0 = Instant::now();
    setup.cluster.kill_replica(home).await;
    let tasks: Vec<_> = clients
        .iter()
        .map(|c| Box::pin(until_success(c.clone(), args.hostname.clone())))
        .collect();
    let outcome = tokio::time::timeout(FAILOVER_GIVE_UP, futures_select_first(tasks)).await;
    let took = t0.elapsed();
    let recovered = Instant::now();
    match outcome {
        Ok((which, attempts, first_error)) => {
            s.add(Ok(took.as_secs_f64() * 1e6));
            eprintln!(
                "cmdop-bench-cluster: failover {}: killed {killed_id}, execute through {} after {:.0} ms \
                 ({attempts} attempts; first error: {})",
                run + 1,
                setup.cluster.replicas[survivors[which]].id,
                took.as_secs_f64() * 1e3,
                first_error.as_deref().unwrap_or("none")
            );
        }
        Err(_) => {
            s.add(Err(format!(
                "no execute succeeded within {FAILOVER_GIVE_UP:?} after killing {killed_id}"
            )));
            notes.push(format!("run {} gave up", run + 1));
        }
    }
    for c in clients {
        c.close().await;
    }
    let t_restart = Instant::now();
    setup
        .cluster
        .start_replica(home)
        .await
        .with_context(|| format!("cannot restart {killed_id} after failover run {}", run + 1))?;
    restart_us.push(t_restart.elapsed().as_secs_f64() * 1e6);
    // Steady state before the next run: the agent resets its reconnect
    // backoff only after a link stayed up a while, so kills in quick
    // succession would measure a flapping server's growing backoff.
    if run + 1 < args.failover_runs {
        tokio::time::sleep(args.failover_steady.saturating_sub(recovered.elapsed())).await;
    }
    Ok(())
}

/// Polls the futures until the first finishes; returns its index and output.
async fn futures_select_first<F>(
    mut futs: Vec<std::pin::Pin<Box<F>>>,
) -> (usize, usize, Option<String>)
where
    F: std::future::Future<Output = (usize, Option<String>)>,
{
    std::future::poll_fn(move |cx| {
        for (i, f) in futs.iter_mut().enumerate() {
            if let std::task::Poll::Ready((a, e)) = f.as_mut().poll(cx) {
                return std::task::Poll::Ready((i, a, e));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Database work per execute: N executes, then an idle window of the same
/// length for the background (leases, heartbeats).
async fn db_queries(args: &Args, setup: &Setup, counter: &DbCounter) -> anyhow::Result<()> {
    let c = &setup.cluster;
    let Db::Postgres(url) = c.db.clone() else {
        bail!("needs PostgreSQL (run without --store sqlite)");
    };
    let home = c.live_route(&setup.machine_id).await?;
    for (subject, label, at) in [
        (
            "cross-replica",
            "database work per execute, client on another replica",
            (home + 1) % REPLICAS,
        ),
        (
            "same-replica",
            "database work per execute, client on the agent's replica",
            home,
        ),
    ] {
        let (client, _) = open_client(c, at, &setup.api_key, &args.hostname).await?;
        // The route is known after these.
        for _ in 0..args.warmup.max(3) {
            let _ = timed_true(&client, args.timeout).await;
        }
        let snap = |u: String, counter: DbCounter| async move {
            tokio::task::spawn_blocking(move || counter.snapshot(&u))
                .await
                .context("snapshot task failed")?
        };
        let s0 = snap(url.clone(), counter.clone()).await?;
        let mut s = Samples::new();
        let t0 = Instant::now();
        for _ in 0..args.db_runs {
            s.add(timed_true(&client, args.timeout).await);
        }
        let window = t0.elapsed();
        let s1 = snap(url.clone(), counter.clone()).await?;
        let idle = window.max(MIN_IDLE_WINDOW);
        tokio::time::sleep(idle).await;
        let s2 = snap(url.clone(), counter.clone()).await?;
        client.close().await;
        let (busy, top) = db_delta(&s0, &s1);
        let (background, _) = db_delta(&s1, &s2);
        // The background scaled to the execute window.
        let background_in_window = background as f64 * window.as_secs_f64() / idle.as_secs_f64();
        let per_execute = (busy as f64 - background_in_window) / args.db_runs as f64;
        let unit = match counter {
            DbCounter::Statements => "statements (pg_stat_statements)",
            DbCounter::Transactions => "transactions (pg_stat_database)",
        };
        eprintln!(
            "cmdop-bench-cluster: db {subject}: {busy} {unit} during {} executes ({:.2} s), \
             {background} in {:.2} s idle → {per_execute:.3} per execute",
            args.db_runs,
            window.as_secs_f64(),
            idle.as_secs_f64()
        );
        let top: Vec<_> = top
            .into_iter()
            .take(5)
            .map(|(n, q)| serde_json::json!({"calls": n, "query": q}))
            .collect();
        emit(serde_json::json!({
            "case": "cluster-db",
            "subject": subject,
            "label": label,
            "runs": args.db_runs,
            "concurrency": 1,
            "wall_s": window.as_secs_f64(),
            "ops_per_s": if window.as_secs_f64() > 0.0 { s.us.len() as f64 / window.as_secs_f64() } else { 0.0 },
            "errors": s.errors,
            "bytes": 0,
            "db": {
                "unit": unit,
                "during_executes": busy,
                "idle_window_s": idle.as_secs_f64(),
                "idle": background,
                "background_in_window": background_in_window,
                "per_execute": per_execute,
                "top_during_executes": top,
            },
            "samples_us": round_us(&s.us),
        }));
    }
    Ok(())
}

// ------------------------------------------------------------ main

async fn run(args: Args, dir: PathBuf, db: Db, counter: DbCounter) -> anyhow::Result<bool> {
    let mut setup = start_cluster(&args, &dir, db).await?;
    eprintln!(
        "cmdop-bench-cluster: cluster up: replicas {}, agent '{}' on {}",
        setup
            .cluster
            .replicas
            .iter()
            .map(|r| format!("{}={}", r.id, r.listen))
            .collect::<Vec<_>>()
            .join(" "),
        args.hostname,
        setup
            .cluster
            .live_route(&setup.machine_id)
            .await
            .map(|i| setup.cluster.replicas[i].id.clone())
            .unwrap_or_else(|e| format!("? ({e:#})"))
    );
    let mut all_ran = true;
    let mut part = |name: &str, labels: &[(&str, &str, &str)], r: anyhow::Result<()>| {
        if let Err(e) = r {
            eprintln!("cmdop-bench-cluster: {name} failed: {e:#}");
            for (case, subject, label) in labels {
                emit_skip(case, subject, label, &format!("{e:#}"));
            }
            all_ran = false;
        }
    };
    if args.latency_runs > 0 {
        let r = latency(&args, &setup).await;
        part(
            "latency",
            &[
                (
                    "cluster-latency",
                    "same-replica",
                    "execute(\"true\"), same replica",
                ),
                (
                    "cluster-latency",
                    "cross-replica",
                    "execute(\"true\"), cross-replica",
                ),
            ],
            r,
        );
    }
    if args.db_runs > 0 {
        let r = db_queries(&args, &setup, &counter).await;
        part(
            "database queries",
            &[("cluster-db", "cross-replica", "database work per execute")],
            r,
        );
    }
    if args.stream_runs > 0 {
        let r = stream(&args, &setup).await;
        part(
            "stream",
            &[(
                "cluster-stream",
                "cross-replica",
                "Rust client, cross-replica",
            )],
            r,
        );
    }
    if args.agents > 0 {
        let r = idle_agents(&args, &setup).await;
        part(
            "idle agents",
            &[(
                "cluster-agents",
                "idle-agents",
                "simulated idle agents over the replicas",
            )],
            r,
        );
    }
    if args.failover_runs > 0 {
        let r = failover(&args, &mut setup).await;
        part(
            "failover",
            &[(
                "cluster-failover",
                "sigkill-agent-replica",
                "SIGKILL of the agent's replica",
            )],
            r,
        );
    }
    setup.cluster.stop().await;
    Ok(all_ran)
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cmdop-bench-cluster: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let dir = match tempfile_dir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cmdop-bench-cluster: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let (pg, db, counter) = if args.sqlite {
        let data = dir.path().join("data");
        (None, Db::Sqlite(data), DbCounter::Transactions)
    } else {
        // Started on the main thread, which lives as long as the program:
        // the server dies with it even on SIGKILL.
        eprintln!("cmdop-bench-cluster: starting PostgreSQL from the system's packages");
        let mut pg = match LocalPostgres::start() {
            Ok(pg) => pg,
            Err(e) => {
                eprintln!("cmdop-bench-cluster: cannot start PostgreSQL: {e:#}");
                return std::process::ExitCode::from(2);
            }
        };
        let counter = match enable_statement_stats(&mut pg) {
            Ok(()) => DbCounter::Statements,
            Err(why) => {
                eprintln!(
                    "cmdop-bench-cluster: counting transactions instead of statements: {why}"
                );
                if let Err(e) = pg.start_again() {
                    eprintln!("cmdop-bench-cluster: PostgreSQL does not start again: {e:#}");
                    return std::process::ExitCode::from(2);
                }
                DbCounter::Transactions
            }
        };
        let url = pg.url();
        (Some(pg), Db::Postgres(url), counter)
    };
    let keep_logs = args.keep_logs.clone();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
        .and_then(|rt| {
            rt.block_on(async {
                // SIGTERM/SIGINT (bench/run's timeout): stop what was
                // started (the children die with their handles), remove
                // the directories.
                tokio::select! {
                    r = run(args, dir.path().to_path_buf(), db, counter) => r,
                    why = shutdown_signal() => Err(anyhow::anyhow!("stopped by {why}")),
                }
            })
        });
    if let Some(to) = keep_logs {
        let _ = std::fs::create_dir_all(&to);
        for entry in std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".log") {
                let _ = std::fs::copy(entry.path(), to.join(name));
            }
        }
    }
    drop(pg);
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cmdop-bench-cluster: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Resolves on SIGTERM or SIGINT, naming it.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

fn tempfile_dir() -> anyhow::Result<TempDir> {
    let base = std::env::temp_dir().join(format!("cmdop-bench-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    Ok(TempDir(base))
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

    #[test]
    fn statement_delta_counts_only_growth_and_orders_it() {
        let snap = |v: &[(&str, u64)]| {
            DbSnapshot::Statements(
                v.iter()
                    .map(|(q, n)| (q.to_string(), (*n, format!("query {q}"))))
                    .collect(),
            )
        };
        let a = snap(&[("1", 10), ("2", 5)]);
        let b = snap(&[("1", 10), ("2", 8), ("3", 4)]);
        let (total, top) = db_delta(&a, &b);
        assert_eq!(total, 7);
        assert_eq!(
            top,
            vec![(4, "query 3".to_string()), (3, "query 2".to_string())]
        );
    }

    #[test]
    fn transaction_delta_leaves_out_the_snapshot_itself() {
        let (total, top) = db_delta(
            &DbSnapshot::Transactions(100),
            &DbSnapshot::Transactions(101),
        );
        assert_eq!(total, 0);
        assert!(top.is_empty());
    }

    /// Against a real private PostgreSQL: the statistics are switched on
    /// and count the statements run between two snapshots (and not the
    /// snapshots themselves).
    #[test]
    fn statement_counts_of_a_real_postgres() {
        let mut pg = LocalPostgres::start().expect("start PostgreSQL (apt-get install postgresql)");
        enable_statement_stats(&mut pg).expect("pg_stat_statements");
        let url = pg.url();
        psql(&url, "CREATE TABLE t (v INT)").unwrap();
        let a = DbCounter::Statements.snapshot(&url).unwrap();
        for v in 0..3 {
            psql(&url, &format!("INSERT INTO t VALUES ({v})")).unwrap();
        }
        let b = DbCounter::Statements.snapshot(&url).unwrap();
        let (total, top) = db_delta(&a, &b);
        assert_eq!(total, 3, "{:?}", top);
        assert!(top[0].1.contains("INSERT INTO t"), "{:?}", top);
        let c = DbCounter::Statements.snapshot(&url).unwrap();
        assert_eq!(db_delta(&b, &c).0, 0, "the snapshots count themselves");
        let x0 = DbCounter::Transactions.snapshot(&url).unwrap();
        let DbSnapshot::Transactions(n) = x0 else {
            panic!("not a transaction count")
        };
        assert!(n > 0);
    }

    #[test]
    fn median_of_samples() {
        assert_eq!(p50(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(p50(&[]), 0.0);
    }
}
