//! The CMDOP machine agent.
//!
//! [`run`] enrolls the machine once (keeping its identity in a 0600 state
//! file), then keeps a connection to the control plane alive forever:
//!
//! * the official `TerminalStreamingService/ConnectTerminal` stream carries a
//!   real PTY shell ([`pty_session`]) and file operations ([`files`]);
//! * next to it, `cmdop.ext.v1.AgentLink/Channel` carries native Exec
//!   ([`exec`]) when the control plane offers it; bulk stdout of a command
//!   may leave it for a side connection ([`exec_raw`]).
//!
//! Connection loss is never fatal: the agent reconnects with exponential
//! backoff and jitter (`cmdop_proto::backoff`, agent policy), probes cheaply for the control plane's
//! return while it waits ([`probe`]), and the shell keeps running meanwhile.

pub mod config;
pub mod connection;
pub mod enroll;
pub mod exec;
pub mod exec_link;
pub mod exec_raw;
pub mod files;
pub mod host_info;
pub mod metrics;
pub mod orphans;
pub mod private_file;
pub mod probe;
pub mod pty_session;
mod spawn;
pub mod state;
pub mod transfer;
pub mod transport;

use std::future::Future;

use anyhow::Context;

pub use config::AgentConfig;

/// Enrolls if needed, then connects and serves until `shutdown` resolves;
/// reconnects forever with backoff.
///
/// Returns `Err` only for unrecoverable problems: no state file and no
/// enrollment token, enrollment refused, state file unwritable, invalid
/// server URL or CA file, or no PTY support on this machine.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let host = host_info::HostInfo::gather(config.hostname.as_deref());
    tokio::pin!(shutdown);
    // Before serving anything: kill what a killed predecessor left running,
    // and start the reaper that does the same the moment this agent dies.
    let orphan_dir = orphans::dir_for(&config.state_file);
    orphans::init(&orphan_dir);
    if let Err(e) = orphans::start_reaper(&config.reaper, &orphan_dir) {
        tracing::warn!(error = %e,
            "cannot start the reaper; commands left by this agent if it is killed die only when it restarts");
    }
    let state = tokio::select! {
        state = enroll::load_or_enroll(&config, &host.hostname) => state?,
        () = &mut shutdown => return Ok(()),
    };
    let scratch_dir = config
        .state_file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| std::path::Path::new("."));
    // Named after the state file: agents sharing a directory never sweep
    // each other's writes.
    let mut journal_dir = config.state_file.clone().into_os_string();
    journal_dir.push(".writes");
    let journal_dir = std::path::PathBuf::from(journal_dir);
    if let Err(e) = files::journal::open(&journal_dir) {
        tracing::warn!(dir = %journal_dir.display(), error = %e,
            "cannot keep a record of writes in progress; temp files of writes cut short by a crash will stay");
    }
    let spec =
        pty_session::ShellSpec::choose(config.shell.as_deref(), &host.home_dir, Some(scratch_dir));
    let pty =
        pty_session::PtySession::start(spec).context("cannot start the agent's terminal shell")?;
    let agent = connection::Agent {
        config: &config,
        state: &state,
        host: &host,
        pty: &pty,
    };
    agent.serve_forever(shutdown).await
}
