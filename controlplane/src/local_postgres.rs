//! A throw-away PostgreSQL server from the system's packages, for
//! `cmdop dev --cluster` and the tests: `initdb` into a temporary
//! directory, `postgres` on a loopback port with password authentication,
//! stopped and removed on drop. Not for production databases.
//!
//! PostgreSQL refuses to run as root; as root the server runs as the
//! `postgres` system user that Debian's package creates.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

/// Where Debian puts the server programs: `/usr/lib/postgresql/<major>/bin`.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
/// How to install them, for error messages.
pub const INSTALL_HINT: &str = "install PostgreSQL with `apt-get install -y postgresql` \
     (or set CMDOP_PG_BINDIR to the directory holding initdb and postgres)";
/// How long the server gets to accept connections after starting.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running (or stopped, see [`LocalPostgres::stop`]) private server.
pub struct LocalPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    port: u16,
    password: String,
    child: Option<Child>,
}

impl LocalPostgres {
    /// Creates a cluster in a new temporary directory and starts it on a
    /// free loopback port, with a database and a user both named `cmdop`.
    pub fn start() -> anyhow::Result<LocalPostgres> {
        let bin = bin_dir()?;
        let owner = server_owner()?;
        let dir = tempfile::Builder::new()
            .prefix("cmdop-pg-")
            .tempdir()
            .context("cannot create a temporary directory for PostgreSQL")?;
        let password = crate::store::secrets::random_hex("", 16);
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n")).context("cannot write pwfile")?;
        if let Some((uid, gid)) = owner {
            chown(dir.path(), uid, gid)?;
            chown(&pwfile, uid, gid)?;
        }
        let data = dir.path().join("data");
        let out = as_owner(Command::new(bin.join("initdb")), owner)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "cmdop",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .args(["-E", "UTF8", "--locale=C"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .with_context(|| format!("cannot run {}", bin.join("initdb").display()))?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let mut pg = LocalPostgres {
            dir,
            bin,
            owner,
            port: free_port()?,
            password,
            child: None,
        };
        pg.start_server()?;
        let out = as_owner(Command::new(pg.bin.join("createdb")), owner)
            .arg("-h")
            .arg(pg.dir.path())
            .args(["-p", &pg.port.to_string(), "-U", "cmdop", "cmdop"])
            .output()
            .context("cannot run createdb")?;
        if !out.status.success() {
            bail!(
                "createdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(pg)
    }

    /// `postgres://cmdop:…@127.0.0.1:PORT/cmdop`.
    pub fn url(&self) -> String {
        format!(
            "postgres://cmdop:{}@127.0.0.1:{}/cmdop",
            self.password, self.port
        )
    }

    /// The loopback port it listens on (kept across [`stop`](Self::stop)
    /// and [`resume`](Self::resume)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (fast shutdown), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT is PostgreSQL's "fast" shutdown: clients are
            // disconnected and the server exits cleanly.
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGINT,
                );
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped server again on the same port.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        if self.child.is_none() {
            self.start_server()?;
        }
        Ok(())
    }

    fn start_server(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.path().join("server.log"))
            .context("cannot create the PostgreSQL log")?;
        if let Some((uid, gid)) = self.owner {
            chown(&self.dir.path().join("server.log"), uid, gid)?;
        }
        let mut cmd = as_owner(Command::new(self.bin.join("postgres")), self.owner);
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            // A scratch server: durability is not wanted, speed is.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.join("postgres").display()))?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    bail!(
                        "PostgreSQL exited at start-up ({status}): {}",
                        self.log_tail()
                    );
                }
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() && self.ready()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                bail!(
                    "PostgreSQL did not accept connections within {START_TIMEOUT:?}: {}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `pg_isready` through the socket: accepting TCP is not enough, the
    /// server refuses logins until its start-up recovery is done.
    fn ready(&self) -> bool {
        as_owner(Command::new(self.bin.join("pg_isready")), self.owner)
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", "cmdop", "-q"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The directory holding `initdb` and `postgres`: `CMDOP_PG_BINDIR`, or
/// the newest `/usr/lib/postgresql/<major>/bin`.
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CMDOP_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if dir.join("postgres").is_file() {
            return Ok(dir);
        }
        bail!(
            "CMDOP_PG_BINDIR={} has no postgres program; {INSTALL_HINT}",
            dir.display()
        );
    }
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir(DEBIAN_ROOT)
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(major) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let bin = entry.path().join("bin");
        if bin.join("postgres").is_file() && best.as_ref().is_none_or(|(m, _)| major > *m) {
            best = Some((major, bin));
        }
    }
    best.map(|(_, bin)| bin)
        .with_context(|| format!("no PostgreSQL server programs found; {INSTALL_HINT}"))
}

/// `None` when not root; as root, the `postgres` user's uid and gid.
fn server_owner() -> anyhow::Result<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")
        .context("cannot look up the postgres user")?
        .with_context(|| {
            format!("PostgreSQL refuses to run as root and there is no postgres user; {INSTALL_HINT}, or run as another user")
        })?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

fn as_owner(mut cmd: Command, owner: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
        // The programs look for their home and locale in the environment.
        cmd.env("HOME", "/").env_remove("PGDATA");
    }
    cmd
}

fn chown(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("cannot hand {} to the postgres user", path.display()))
}

/// The server is killed with whoever started it, even on SIGKILL.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only prctl(2), which is async-signal-safe; it touches no memory of
    // the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_accepts_logins_stops_and_resumes() {
        let mut pg = LocalPostgres::start().expect("start PostgreSQL");
        let addr = SocketAddr::from(([127, 0, 0, 1], pg.port()));
        assert!(pg.url().starts_with("postgres://cmdop:"));
        assert!(TcpStream::connect(addr).is_ok());
        pg.stop();
        assert!(
            TcpStream::connect(addr).is_err(),
            "stopped server still listens"
        );
        pg.resume().expect("resume");
        assert!(TcpStream::connect(addr).is_ok());
    }
}
