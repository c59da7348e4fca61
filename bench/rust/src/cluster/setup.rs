//! The cluster's processes: the replicas and the agent, started, killed,
//! restarted and stopped, and clients on a replica with the machine selected.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use cmdop::client::{Client, ClientOptions, Credentials};
use cmdop_localpg::free_port;
use tokio::process::{Child, Command};

use crate::{args::Args, database::Db};

pub const REPLICAS: usize = 3;
/// How long a replica may take to write its ready file.
const REPLICA_START: Duration = Duration::from_secs(30);
/// How long the agent may take to show up after the replicas started.
const MACHINE_WAIT: Duration = Duration::from_secs(30);

pub struct Replica {
    pub id: String,
    pub listen: SocketAddr,
    peer: SocketAddr,
    ready: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub struct Cluster {
    cmdop: PathBuf,
    pub db: Db,
    log_level: String,
    /// `--no-audit` on every replica.
    no_audit: bool,
    peer_secret: String,
    pub replicas: Vec<Replica>,
    agent: Option<Child>,
    pub agent_log: PathBuf,
}

pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

/// Runs `cmdop admin ARGS` on `db` and returns what it printed.
pub async fn admin(cmdop: &Path, db: &Db, args: &[&str]) -> anyhow::Result<String> {
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
    pub async fn start_replica(&mut self, i: usize) -> anyhow::Result<()> {
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
            .args(self.no_audit.then_some("--no-audit"))
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

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.replicas[i].child.as_ref().and_then(|c| c.id())
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().and_then(|c| c.id())
    }

    /// SIGTERM to replica `i` (a graceful stop: it drains and moves its
    /// agents), reaped before this returns; how long it took to exit.
    pub async fn stop_replica(&mut self, i: usize, within: Duration) -> anyhow::Result<Duration> {
        let Some(mut child) = self.replicas[i].child.take() else {
            bail!("replica {} is not running", self.replicas[i].id);
        };
        let started = Instant::now();
        if let Some(pid) = child.id() {
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .context("cannot run kill")?;
        }
        match tokio::time::timeout(within, child.wait()).await {
            Ok(_) => Ok(started.elapsed()),
            Err(_) => {
                let _ = child.kill().await;
                bail!(
                    "replica {} did not exit within {within:?} of SIGTERM",
                    self.replicas[i].id
                )
            }
        }
    }

    /// SIGKILL to replica `i`, reaped before this returns.
    pub async fn kill_replica(&mut self, i: usize) {
        if let Some(mut child) = self.replicas[i].child.take() {
            let _ = child.kill().await;
        }
    }

    /// The replica index holding `machine_id`'s agent, by the routes table.
    pub fn route(&self, machine_id: &str) -> anyhow::Result<Option<usize>> {
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
    pub async fn live_route(&self, machine_id: &str) -> anyhow::Result<usize> {
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

    pub async fn stop(&mut self) {
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

pub struct Setup {
    pub cluster: Cluster,
    pub api_key: String,
    pub machine_id: String,
}

pub async fn start_cluster(args: &Args, dir: &Path, db: Db) -> anyhow::Result<Setup> {
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
        no_audit: args.no_audit,
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
pub async fn open_client(
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
