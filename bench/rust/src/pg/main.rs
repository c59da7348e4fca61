//! `cmdop-bench-pg`: a private PostgreSQL for the shell cases of bench/run
//! that compare the SQLite and PostgreSQL engines (the audit case).
//!
//! ```text
//! cmdop-bench-pg DIR NAME...
//! ```
//!
//! Starts a throwaway server ([`cmdop_localpg::LocalPostgres`]), creates
//! one database per NAME and writes its URL to `DIR/NAME.url` (mode 0600:
//! the URL carries the password, so it goes through a file, never argv),
//! then `DIR/ready`. Runs until SIGTERM or SIGINT, then stops the server
//! and deletes its data.

use std::{fs, io::Write, os::unix::fs::OpenOptionsExt, path::PathBuf};

use anyhow::{bail, Context};
use cmdop_localpg::LocalPostgres;

const USAGE: &str = "usage: cmdop-bench-pg DIR NAME...";

fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(file, "{text}").with_context(|| format!("cannot write {}", path.display()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().context(USAGE)?);
    let names: Vec<String> = args.collect();
    if names.is_empty() {
        bail!("{USAGE}");
    }
    for name in &names {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            bail!("database name '{name}': use lower-case letters and '_' only");
        }
    }
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let pg = LocalPostgres::start()?;
    for name in &names {
        let url = pg.create_database(name)?;
        write_private(&dir.join(format!("{name}.url")), &url)?;
    }
    write_private(&dir.join("ready"), &pg.port().to_string())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(pg);
    Ok(())
}
