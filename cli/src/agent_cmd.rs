//! `cmdop agent`: the machine agent.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Args;
use cmdop_agent::AgentConfig;

#[derive(Args)]
pub struct AgentArgs {
    /// Control plane URL: http://host:port (plaintext) or https://host:port
    /// (TLS). Several (replicas of one cluster): comma-separated or the flag
    /// repeated; the agent starts with the first and, when the one it uses
    /// is lost, moves to the first of the others that answers.
    #[arg(
        long,
        default_value = "http://127.0.0.1:50051",
        env = "CMDOP_AGENT_SERVER",
        hide_env_values = true,
        value_delimiter = ',',
        num_args = 1
    )]
    pub server: Vec<String>,
    /// With several --server: connect to them in the order given (the
    /// first that answers) instead of starting at a random one, so that
    /// this agent prefers the first. Leaving a lost or stopping server
    /// still picks a random other one.
    #[arg(long)]
    pub servers_in_order: bool,
    /// One-time enrollment token (from `cmdop admin enroll-token`); only needed
    /// on the first start, when the state file does not exist yet. Other
    /// local users can read a command line: prefer CMDOP_ENROLL_TOKEN or
    /// --token-file.
    #[arg(long, env = "CMDOP_ENROLL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read --token from the first line of this file (mode 0600).
    #[arg(long, env = "CMDOP_ENROLL_TOKEN_FILE", hide_env_values = true)]
    pub token_file: Option<PathBuf>,
    /// Where the agent keeps its identity (created with mode 0600).
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    /// PEM CA certificate to trust for https:// servers with a private CA.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Hostname to report instead of this machine's.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Shell for the interactive session (default: $SHELL, else bash, else sh).
    #[arg(long)]
    pub shell: Option<String>,
    /// Serve only the official terminal path, not native Exec.
    #[arg(long)]
    pub no_native_exec: bool,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = 25)]
    pub heartbeat_secs: u64,
    /// A label this machine declares, KEY=VALUE (repeat the flag, or
    /// comma-separate: env=prod,role=web). Shown by `cmdop machines` and
    /// selectable with `-l`; labels an admin sets with `cmdop admin label`
    /// win over them.
    #[arg(
        long = "label",
        env = "CMDOP_AGENT_LABELS",
        hide_env_values = true,
        value_delimiter = ',',
        value_name = "KEY=VALUE"
    )]
    pub labels: Vec<String>,
    /// Serve Prometheus metrics on http://ADDR/metrics, with /healthz
    /// (alive) and /readyz (connected to a control plane). Off by default;
    /// loopback only unless --metrics-allow-remote.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Let --metrics-listen take a non-loopback address (plain HTTP, no
    /// credential: only for a network you trust).
    #[arg(long, requires = "metrics_listen")]
    pub metrics_allow_remote: bool,
    /// Read settings from this TOML file: any flag above by its long name
    /// with `_` for `-` (server = ["https://cp:50051"], state_file = "…").
    /// Flags and environment variables win over the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the settings (flags, environment, --config file), print
    /// them with secrets masked, and exit without starting.
    #[arg(long)]
    pub check: bool,
    /// The effective settings `--check` prints (filled in by the CLI).
    #[arg(skip)]
    pub effective: String,
}

/// `cmdop agent-reaper DIR` (hidden; the agent starts it).
#[derive(clap::Args)]
pub struct ReaperArgs {
    /// The agent's directory of running-command records.
    pub dir: PathBuf,
}

/// This binary as the agent's reaper (`cmdop agent-reaper`), when its path
/// is known.
pub fn reaper_argv() -> Vec<std::ffi::OsString> {
    match std::env::current_exe() {
        Ok(exe) => vec![exe.into_os_string(), "agent-reaper".into()],
        Err(_) => Vec::new(),
    }
}

impl AgentArgs {
    pub fn config(&self) -> anyhow::Result<AgentConfig> {
        let mut servers = self
            .server
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let server = servers.next().context(
            "--server is empty: pass http://host:port (several: comma-separated or --server repeated)",
        )?;
        Ok(AgentConfig {
            server,
            more_servers: servers.collect(),
            servers_in_order: self.servers_in_order,
            enrollment_token: crate::secret_flags::resolve(
                &self.token,
                &self.token_file,
                "token-file",
            )?,
            state_file: self
                .state_file
                .clone()
                .unwrap_or_else(|| crate::data_dir::default_data_dir().join("agent.json")),
            ca_cert: self.ca_cert.clone(),
            hostname: self.hostname.clone(),
            shell: self.shell.clone(),
            native_exec: !self.no_native_exec,
            labels: crate::labels::parse_assignments(&self.labels, "--label")?,
            heartbeat_interval: Duration::from_secs(self.heartbeat_secs.max(1)),
            reaper: reaper_argv(),
            ..AgentConfig::default()
        })
    }
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    if let Some(addr) = args.metrics_listen {
        crate::metrics_http::check_exposure(
            addr,
            args.metrics_allow_remote,
            "pass --metrics-allow-remote if this network is trusted",
        )?;
    }
    if args.check {
        print!("{}", args.effective);
        eprintln!("cmdop: the settings are valid");
        return Ok(());
    }
    // `systemctl reload` (SIGHUP's default action would end the agent).
    crate::reload::on_hangup("agent", args.effective.clone());
    if let Some(addr) = args.metrics_listen {
        crate::metrics_http::start(
            addr,
            crate::metrics_http::Endpoints {
                metrics: cmdop_agent::metrics::encode,
                content_type: cmdop_agent::metrics::CONTENT_TYPE,
                ready: std::sync::Arc::new(cmdop_agent::metrics::is_connected),
            },
        )
        .await?;
    }
    if let Some(dir) = config
        .state_file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)?;
    }
    cmdop_agent::run(config, crate::shutdown_signal()).await
}
