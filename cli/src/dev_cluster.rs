//! `cmdop dev --cluster N`: a throw-away cluster on this machine — a
//! private PostgreSQL, N control-plane replicas (separate `cmdop server`
//! processes sharing it, forwarding to each other over their peer ports)
//! and one agent that knows all of them. Kill a replica to watch the agent
//! and clients move to another. Everything stops with Ctrl-C or SIGTERM.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{bail, Context};
use cmdop_localpg::{free_port, LocalPostgres};
use tokio::process::{Child, Command};

/// Most replicas `--cluster` starts.
pub const MAX_REPLICAS: u16 = 9;

struct Replica {
    listen: SocketAddr,
    child: Child,
    exited: bool,
}

pub async fn run(
    replicas: u16,
    first_listen: SocketAddr,
    hostname: Option<&str>,
    env_file: Option<&Path>,
) -> anyhow::Result<()> {
    if !(2..=MAX_REPLICAS).contains(&replicas) {
        bail!("--cluster takes 2 to {MAX_REPLICAS} replicas; for one, leave --cluster out");
    }
    let dir = tempfile::Builder::new()
        .prefix("cmdop-dev-cluster-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    println!("cmdop dev: starting PostgreSQL from the system's packages…");
    // The server dies with this process even on SIGKILL (see
    // LocalPostgres), whichever thread starts it.
    let pg = LocalPostgres::start().context("cannot start PostgreSQL for the cluster")?;
    let url = pg.url();

    admin(&url, &["create-workspace", "dev"]).await?;
    let api_key = admin(
        &url,
        &["create-key", "--workspace", "dev", "--label", "dev"],
    )
    .await?;
    let enroll = admin(&url, &["enroll-token", "--workspace", "dev"]).await?;
    let peer_secret = cmdop_controlplane::store::secrets::random_hex("", 24);

    let mut nodes = Vec::new();
    for i in 0..replicas {
        // Consecutive ports from --listen's, or free ones for port 0.
        let port = match first_listen.port() {
            0 => 0,
            p => p
                .checked_add(i)
                .context("--listen's port is too high for the cluster")?,
        };
        let listen = SocketAddr::new(first_listen.ip(), port);
        let peer = SocketAddr::new(first_listen.ip(), free_port()?);
        let ready = dir.path().join(format!("ready-{i}"));
        let child = cmdop(&[
            "--log-level",
            "warn",
            "server",
            "--listen",
            &listen.to_string(),
            "--peer-listen",
            &peer.to_string(),
            "--replica-id",
            &format!("rep_dev{}", i + 1),
            "--ready-file",
            &ready.display().to_string(),
        ])
        // Secrets through the environment, which only this user can read
        // (/proc/PID/environ), never the command line, which every user can.
        .env("CMDOP_DATABASE_URL", &url)
        .env("CMDOP_PEER_SECRET", &peer_secret)
        .spawn()
        .context("cannot start a replica")?;
        let mut node = Replica {
            listen,
            child,
            exited: false,
        };
        // The address it bound (port 0 picks a free one for each).
        node.listen = wait_for_file(&ready, &mut node)
            .await
            .with_context(|| format!("replica {} on {listen} did not start", i + 1))?;
        nodes.push(node);
    }
    let servers: Vec<String> = nodes.iter().map(|n| n.listen.to_string()).collect();
    let agent_servers: Vec<String> = servers.iter().map(|s| format!("http://{s}")).collect();
    let mut agent = cmdop(&[
        "--log-level",
        "warn",
        "agent",
        "--server",
        &agent_servers.join(","),
        "--state-file",
        &dir.path().join("agent.json").display().to_string(),
    ]);
    if let Some(name) = hostname {
        agent.args(["--hostname", name]);
    }
    let mut agent = agent
        .env("CMDOP_ENROLL_TOKEN", &enroll)
        .spawn()
        .context("cannot start the agent")?;
    // An agent that gives up (enrollment refused, say) ends at once, its
    // error printed above; no need to wait out the readiness timeout.
    tokio::select! {
        ready = crate::readiness::wait_for_agent(nodes[0].listen, &api_key) => ready?,
        status = agent.wait() => bail!(
            "the agent for this machine exited ({}) before it connected; its error is above",
            status.map_or_else(|e| e.to_string(), |s| s.to_string())
        ),
    }

    let server_list = servers.join(",");
    println!(
        "cmdop dev: PostgreSQL on 127.0.0.1:{}, {replicas} replicas on {server_list} \
         (plaintext, loopback), agent for this machine connected",
        pg.port()
    );
    println!("use it with:\n  export CMDOP_API_KEY={api_key} CMDOP_SERVER={server_list}");
    println!("every replica serves every call; kill one to watch the agent and clients move on");
    if let Some(path) = env_file {
        crate::readiness::write_ready_file(
            path,
            &format!("CMDOP_API_KEY={api_key}\nCMDOP_SERVER={server_list}\n"),
        )?;
    }

    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = crate::shutdown_signal() => break,
            _ = tick.tick() => {
                for (i, node) in nodes.iter_mut().enumerate() {
                    if !node.exited {
                        if let Ok(Some(status)) = node.child.try_wait() {
                            node.exited = true;
                            println!("cmdop dev: replica {} on {} exited ({status})", i + 1, node.listen);
                        }
                    }
                }
            }
        }
    }
    println!("cmdop dev: stopping the agent, the replicas and PostgreSQL");
    stop(&mut agent).await;
    for node in &mut nodes {
        stop(&mut node.child).await;
    }
    drop(pg);
    Ok(())
}

/// `cmdop ARGS` (this very binary), killed if this process dies. It
/// inherits no secret variable of ours: each is passed where it is meant.
fn cmdop(args: &[&str]) -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("cmdop"));
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    for var in [
        "CMDOP_DATABASE_URL",
        "CMDOP_DATABASE_URL_FILE",
        "CMDOP_PEER_SECRET",
        "CMDOP_PEER_SECRET_FILE",
        "CMDOP_ENROLL_TOKEN",
        "CMDOP_ENROLL_TOKEN_FILE",
        "CMDOP_API_KEY",
        "CMDOP_API_KEY_FILE",
    ] {
        cmd.env_remove(var);
    }
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls prctl(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    cmd
}

/// Runs `cmdop admin ARGS` on database `url` (given in the environment)
/// and returns what it printed.
async fn admin(url: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = cmdop(&["admin"])
        .args(args)
        .env("CMDOP_DATABASE_URL", url)
        .output()
        .await
        .context("cannot run cmdop admin")?;
    if !out.status.success() {
        bail!(
            "cmdop admin {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Waits for a replica's ready file; returns the address it names.
async fn wait_for_file(path: &Path, node: &mut Replica) -> anyhow::Result<SocketAddr> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(addr) = text.trim().parse() {
                return Ok(addr);
            }
        }
        if let Ok(Some(status)) = node.child.try_wait() {
            node.exited = true;
            bail!("it exited ({status}); its error is above");
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("not ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM (the replicas' graceful shutdown), then SIGKILL after 5 s.
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}
