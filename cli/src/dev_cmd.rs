//! `cmdop dev`: a throw-away control plane plus an agent for this machine,
//! in one process, with a ready API key. For trying things out and for the
//! README's demo; not for production.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::Args;
use cmdop_controlplane::{store::Store, ServerConfig};

#[derive(Args)]
pub struct DevArgs {
    /// Address for the control plane; loopback only (it serves plaintext
    /// with a ready API key).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Once everything is up, write `CMDOP_API_KEY=…` and `CMDOP_SERVER=…`
    /// lines (sourceable by sh) to this file.
    #[arg(long)]
    pub env_file: Option<PathBuf>,
    /// Serve only the official protocol (to try the fallback execute path).
    #[arg(long)]
    pub no_extensions: bool,
    /// Hostname the agent reports.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Start a cluster instead: a private PostgreSQL (from the system's
    /// packages), N control-plane replicas on consecutive ports from
    /// --listen, and an agent that knows them all.
    #[arg(long, value_name = "N")]
    pub cluster: Option<u16>,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "`cmdop dev` listens on loopback only (it serves plaintext with a ready API key); \
             use --listen 127.0.0.1:PORT, or run `cmdop server` with TLS to serve a network"
        );
    }
    if let Some(replicas) = args.cluster {
        if args.no_extensions {
            anyhow::bail!("--no-extensions does not combine with --cluster; leave one out");
        }
        return crate::dev_cluster::run(
            replicas,
            args.listen,
            args.hostname.as_deref(),
            args.env_file.as_deref(),
        )
        .await;
    }
    // Private from the start (0700), as the control plane wants its state:
    // otherwise it tightens the directory itself and warns about it.
    let dir = tempfile::Builder::new()
        .prefix("cmdop-dev-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .context("cannot create a temporary data dir")?;
    let store = Store::open(dir.path())?;
    let ws = store.create_workspace("dev")?;
    let api_key = store.create_api_key(&ws.id, "dev")?;
    let enroll = store.create_enrollment_token(&ws.id)?;
    drop(store);

    let (listener, local) = crate::server_cmd::bind(args.listen).await?;
    let config = ServerConfig {
        data_dir: dir.path().to_path_buf(),
        extensions: !args.no_extensions,
        ..ServerConfig::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(cmdop_controlplane::serve(
        listener,
        config,
        wait_for(stop_rx.clone()),
    ));

    let agent_config = cmdop_agent::AgentConfig {
        server: format!("http://{local}"),
        enrollment_token: Some(enroll),
        state_file: dir.path().join("agent.json"),
        hostname: args.hostname.clone(),
        reaper: crate::agent_cmd::reaper_argv(),
        ..cmdop_agent::AgentConfig::default()
    };
    let mut agent = tokio::spawn(cmdop_agent::run(agent_config, wait_for(stop_rx)));

    // The agent may give up (enrollment refused, no shell) or keep
    // retrying; either way the user sees its own words.
    tokio::select! {
        ready = crate::readiness::wait_for_agent(local, &api_key) => {
            if let Err(e) = ready {
                match crate::logging::last_agent_problem() {
                    Some(problem) => anyhow::bail!(
                        "the agent for this machine did not connect within 20 s; its last problem: \
                         {problem}; run `cmdop -v dev` for its whole log"
                    ),
                    None => return Err(e),
                }
            }
        }
        ended = &mut agent => {
            let why = match ended {
                Ok(Ok(())) => "it stopped without an error".to_string(),
                Ok(Err(e)) => format!("{e:#}"),
                Err(e) => format!("it crashed: {e}"),
            };
            anyhow::bail!(
                "the agent for this machine could not start: {why}; fix that and run `cmdop dev` \
                 again (`cmdop -v dev` shows its whole log)"
            );
        }
    }

    let env = format!("CMDOP_API_KEY={api_key}\nCMDOP_SERVER={local}\n");
    println!(
        "cmdop dev: control plane on {local} (plaintext, loopback), agent for this machine started"
    );
    println!("use it with:\n  export CMDOP_API_KEY={api_key} CMDOP_SERVER={local}");
    if let Some(path) = &args.env_file {
        crate::readiness::write_ready_file(path, &env)?;
    }

    tokio::select! {
        _ = crate::shutdown_signal() => {}
        res = server => { res.context("control plane task")?.context("control plane stopped")?; }
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), agent).await;
    Ok(())
}

async fn wait_for(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
