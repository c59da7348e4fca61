//! The files the harness writes to tell the simulator that something
//! happened: a number (a pid, a server's index) and when, as
//! `NUMBER EPOCH_SECONDS`.

use std::{
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context};

/// Waits up to `within` for `path` to hold `NUMBER EPOCH_SECONDS`; `what`
/// names the number in errors, `waiting_for` what the harness was to do.
pub async fn wait_for(
    path: &Path,
    within: Duration,
    what: &str,
    waiting_for: &str,
) -> anyhow::Result<(u64, SystemTime)> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            let mut words = text.split_whitespace();
            if let (Some(number), Some(at)) = (words.next(), words.next()) {
                let number: u64 = number
                    .parse()
                    .with_context(|| format!("{}: '{number}' is not a {what}", path.display()))?;
                let at: f64 = at
                    .parse()
                    .with_context(|| format!("{}: '{at}' is not a time", path.display()))?;
                return Ok((number, UNIX_EPOCH + Duration::from_secs_f64(at)));
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the harness did not {waiting_for} within {} s ({} never appeared)",
                within.as_secs(),
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
