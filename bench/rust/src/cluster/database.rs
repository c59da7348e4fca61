//! The replicas' shared database (PostgreSQL or a SQLite directory) and the
//! counters of the work done in it: `pg_stat_statements`, or transactions.

use std::{collections::HashMap, path::PathBuf, process::Stdio};

use anyhow::{bail, Context};
use cmdop_localpg::LocalPostgres;
use tokio::process::Command;

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
pub enum Db {
    Postgres(String),
    Sqlite(PathBuf),
}

impl Db {
    /// Names it to a `cmdop server` / `cmdop admin` command: the data
    /// directory as a flag, the URL (with its password) in the environment,
    /// never on a command line other users can read.
    pub fn name_to(&self, cmd: &mut Command) {
        match self {
            Db::Postgres(url) => cmd.env("CMDOP_DATABASE_URL", url),
            Db::Sqlite(dir) => cmd.arg("--data-dir").arg(dir),
        };
    }

    /// One query; rows as lines, fields separated by U+001F.
    pub fn query(&self, sql: &str) -> anyhow::Result<String> {
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
pub fn enable_statement_stats(pg: &mut LocalPostgres) -> Result<(), String> {
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
pub enum DbCounter {
    Statements,
    Transactions,
}

pub enum DbSnapshot {
    Statements(HashMap<String, (u64, String)>),
    Transactions(u64),
}

impl DbCounter {
    pub fn snapshot(&self, url: &str) -> anyhow::Result<DbSnapshot> {
        Ok(match self {
            DbCounter::Statements => DbSnapshot::Statements(statement_counts(url)?),
            DbCounter::Transactions => DbSnapshot::Transactions(transaction_count(url)?),
        })
    }
}

/// Total growth from `a` to `b`, and the statements that grew most.
pub fn db_delta(a: &DbSnapshot, b: &DbSnapshot) -> (i64, Vec<(u64, String)>) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
