//! The command line of `cmdop-bench-agents`: its options, their defaults
//! and their checks.

use std::path::PathBuf;

use anyhow::{bail, Context};

const USAGE: &str = "usage: cmdop-bench-agents --server http://HOST:PORT[,http://HOST:PORT…] \
(--data-dir DIR | CMDOP_DATABASE_URL=postgres://… in the environment) --workspace NAME \
--agents N [--parallel N] \
[--per-source N] [--control-plane-pid PID]… [--ready-file F] [--restart-file F] \
[--failover-file F] \
[--label TEXT] [--case NAME] [--serve-exec K=V[,K=V…]]";

pub struct Args {
    pub servers: Vec<String>,
    pub data_dir: PathBuf,
    pub database: Option<String>,
    pub workspace: String,
    pub agents: usize,
    pub parallel: usize,
    pub per_source: usize,
    pub control_plane_pids: Vec<u32>,
    pub ready_file: Option<PathBuf>,
    pub restart_file: Option<PathBuf>,
    pub failover_file: Option<PathBuf>,
    pub label: String,
    pub case: String,
    /// `--serve-exec`: the agents open the exec channel declaring these
    /// labels and answer every command with exit 0 (spawning nothing).
    pub serve_exec: Option<std::collections::HashMap<String, String>>,
}

pub fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        servers: Vec::new(),
        data_dir: PathBuf::new(),
        // The URL holds a password: never on a command line.
        database: std::env::var("CMDOP_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty()),
        workspace: String::new(),
        agents: 0,
        parallel: 64,
        per_source: 10_000,
        control_plane_pids: Vec::new(),
        ready_file: None,
        restart_file: None,
        failover_file: None,
        label: String::new(),
        case: "agents-10k".into(),
        serve_exec: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value; {USAGE}"))?;
        let count = |v: &str| {
            v.parse::<usize>()
                .with_context(|| format!("{flag}: '{v}' is not a count"))
        };
        match flag.as_str() {
            "--server" => args.servers.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            ),
            "--data-dir" => args.data_dir = value.into(),
            "--case" => args.case = value,
            "--workspace" => args.workspace = value,
            "--agents" => args.agents = count(&value)?,
            "--parallel" => args.parallel = count(&value)?,
            "--per-source" => args.per_source = count(&value)?,
            "--restart-file" => args.restart_file = Some(value.into()),
            "--failover-file" => args.failover_file = Some(value.into()),
            "--control-plane-pid" => args.control_plane_pids.push(
                value
                    .parse()
                    .with_context(|| format!("--control-plane-pid: '{value}' is not a pid"))?,
            ),
            "--ready-file" => args.ready_file = Some(value.into()),
            "--label" => args.label = value,
            "--serve-exec" => {
                let mut labels = std::collections::HashMap::new();
                for pair in value.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').with_context(|| {
                        format!("--serve-exec: '{pair}' is not K=V; write --serve-exec fleet=sim")
                    })?;
                    labels.insert(k.to_string(), v.to_string());
                }
                args.serve_exec = Some(labels);
            }
            _ => bail!("unknown option {flag}; {USAGE}"),
        }
    }
    if args.servers.is_empty()
        || (args.data_dir.as_os_str().is_empty() == args.database.is_none())
        || args.workspace.is_empty()
    {
        bail!(
            "--server, one of --data-dir and CMDOP_DATABASE_URL, and --workspace are required; {USAGE}"
        );
    }
    if args.agents == 0 || args.parallel == 0 || args.per_source == 0 {
        bail!("--agents, --parallel and --per-source must be > 0");
    }
    if args.agents.div_ceil(args.per_source) > 250 {
        bail!("--agents / --per-source needs more than 250 source addresses; raise --per-source");
    }
    if args.failover_file.is_some() && args.servers.len() < 2 {
        bail!(
            "--failover-file needs at least two servers in --server (the agents move to another)"
        );
    }
    if args.failover_file.is_some() && args.restart_file.is_some() {
        bail!("give --failover-file or --restart-file, not both");
    }
    if args.label.is_empty() {
        args.label = format!("{} idle agents", args.agents);
    }
    Ok(args)
}
