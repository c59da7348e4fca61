//! Agent configuration, filled in by the CLI (`cmdop agent`, `cmdop dev`) or
//! by tests.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

/// Everything [`crate::run`] needs to know. Start from [`AgentConfig::default`]
/// and override what differs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Control plane URL: `http://host:port` (plaintext) or
    /// `https://host:port` (TLS).
    pub server: String,
    /// More control planes (replicas of one cluster), written like
    /// `server`. With any, the agent fails over between all of them (see
    /// [`AgentConfig::servers`]); empty = `server` only, as always.
    pub more_servers: Vec<String>,
    /// Connect first to `server`, then the rest in the order given (a
    /// preferred control plane), instead of starting at a random entry of
    /// the list. Moving away from a lost or stopping server still picks a
    /// random other one.
    pub servers_in_order: bool,
    /// One-time enrollment token (`cmdenr_…`). Needed only when
    /// `state_file` does not exist yet.
    pub enrollment_token: Option<String>,
    /// Where the agent keeps its identity (JSON with `machine_id`,
    /// `agent_secret` and `server`). Written atomically with mode 0600.
    pub state_file: PathBuf,
    /// PEM file with the CA certificate(s) to trust for `https://` servers
    /// that use a private CA. System roots are trusted as well.
    pub ca_cert: Option<PathBuf>,
    /// Hostname to report instead of this machine's (tests run several
    /// agents on one host).
    pub hostname: Option<String>,
    /// Shell for the interactive PTY session. Default: `$SHELL` when it is a
    /// POSIX shell, else `/bin/bash`, else `/bin/sh`.
    pub shell: Option<String>,
    /// Open the `AgentLink.Channel` next to the terminal stream and serve
    /// native Exec.
    pub native_exec: bool,
    /// Labels this agent declares for its machine (`key=value`), sent when
    /// its exec channel opens. Shown and selectable, never trusted: admin
    /// labels win over them and access rules read admin labels only.
    pub labels: BTreeMap<String, String>,
    /// Time between heartbeats on the terminal stream.
    pub heartbeat_interval: Duration,
    /// First reconnect delay (before jitter).
    pub reconnect_base: Duration,
    /// Largest reconnect delay (before jitter). Kept short so an agent is
    /// back soon after a long outage heals; a connection that stayed up for
    /// `cmdop_proto::backoff::AGENT_RECONNECT.reset_after` starts the
    /// schedule over.
    pub reconnect_max: Duration,
    /// A program and its arguments that run
    /// [`crate::orphans::reap_when_closed`] on the directory appended to
    /// them (`cmdop agent-reaper`): started once, it kills this agent's
    /// commands the moment the agent dies, without waiting for a restart.
    /// Empty = no reaper (a restarted agent still sweeps).
    pub reaper: Vec<std::ffi::OsString>,
}

/// Default cap of the reconnect delay (before the spread): after an outage
/// of any length the agent's next attempt comes at most ~45 s after the
/// server is back; TCP probes during the wait ([`crate::probe`]) usually
/// cut that to ~1-3 s.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            server: "http://127.0.0.1:50051".to_owned(),
            more_servers: Vec::new(),
            servers_in_order: false,
            enrollment_token: None,
            state_file: PathBuf::from("cmdop-agent.json"),
            ca_cert: None,
            hostname: None,
            shell: None,
            native_exec: true,
            labels: BTreeMap::new(),
            heartbeat_interval: Duration::from_secs(25),
            reconnect_base: Duration::from_secs(1),
            reconnect_max: DEFAULT_RECONNECT_MAX,
            reaper: Vec::new(),
        }
    }
}

impl AgentConfig {
    /// Every server, `server` first. The agent starts with a random one
    /// (the first with `servers_in_order`) and,
    /// when the one it uses is unreachable or its link drops, waits its
    /// backoff delay, probes all of them over TCP and connects to the first
    /// that answers of the others in a random order (the lost one last), so
    /// that the agents of a lost server spread over the survivors.
    /// Enrollment goes round the list in order.
    pub fn servers(&self) -> Vec<String> {
        std::iter::once(&self.server)
            .chain(&self.more_servers)
            .cloned()
            .collect()
    }
}
