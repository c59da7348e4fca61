//! A throw-away PostgreSQL server from the system's packages, for
//! `cmdop dev --cluster` and the tests: `initdb` into a private temporary
//! directory, `postgres` on a free loopback port (its socket in that
//! directory), a superuser reached over the socket without a password and
//! an application user ([`USER`], password-authenticated over TCP) owning
//! the database [`DATABASE`]. Stopped and deleted on drop. Not for
//! production databases: durability is switched off for speed.
//!
//! PostgreSQL refuses to run as root, so under root the server runs as the
//! `postgres` user Debian's package creates, which then owns the temporary
//! directory (under /tmp, which that user can reach).
//!
//! The server is killed with this process, even on SIGKILL: it is started
//! from one thread that lives as long as the process, because the kernel's
//! parent-death signal follows the thread that spawned a child, not the
//! process.

use std::{
    fs,
    io::{self, Write},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{mpsc, OnceLock},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

/// What installs PostgreSQL on Debian.
pub const INSTALL_COMMAND: &str = "apt-get install -y postgresql";
/// The application user, owner of [`DATABASE`].
pub const USER: &str = "cmdop";
/// The database [`LocalPostgres::url`] names.
pub const DATABASE: &str = "cmdop";
/// The superuser `initdb` creates (socket only, no password).
const SUPERUSER: &str = "cmdop_admin";
/// Where Debian puts the server programs: `<root>/<major>/bin`.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
/// How long the server gets to accept connections after starting.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running (or stopped, see [`LocalPostgres::stop`]) private server.
pub struct LocalPostgres {
    bin: PathBuf,
    /// `None` when running as ourselves; the postgres user's (uid, gid) under root.
    owner: Option<(u32, u32)>,
    /// Always `Some` until drop, which stops the server before deleting it.
    dir: Option<tempfile::TempDir>,
    port: u16,
    password: String,
    child: Option<Child>,
}

impl LocalPostgres {
    /// `initdb`, start the server, create the user and the database.
    pub fn start() -> anyhow::Result<LocalPostgres> {
        let bin = bin_dir()?;
        let owner = server_owner()?;
        let mut builder = tempfile::Builder::new();
        builder.prefix("cmdop-pg-");
        // The postgres user must reach it: $TMPDIR may be under a directory
        // only root can enter, /tmp never is.
        let dir = match owner {
            Some(_) => builder.tempdir_in("/tmp"),
            None => builder.tempdir(),
        }
        .context("cannot create a temporary directory for PostgreSQL; check that $TMPDIR (or /tmp) is writable")?;
        if let Some((uid, gid)) = owner {
            chown(dir.path(), uid, gid)?;
        }
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))
            .context("cannot make PostgreSQL's temporary directory private")?;
        let mut pg = LocalPostgres {
            bin,
            owner,
            dir: Some(dir),
            port: free_port()?,
            password: random_password(),
            child: None,
        };
        let data = pg.data_dir();
        pg.tool(
            "initdb",
            |c| {
                c.arg("-D")
                    .arg(&data)
                    .args(["-U", SUPERUSER, "--auth-local=trust"])
                    .args(["--auth-host=scram-sha-256", "--encoding=UTF8"])
                    .args(["--locale=C", "--no-sync"]);
            },
            None,
        )?;
        pg.start_server()?;
        pg.psql(
            "postgres",
            &format!("CREATE ROLE {USER} LOGIN PASSWORD '{}'", pg.password),
        )?;
        pg.psql(
            "postgres",
            &format!("CREATE DATABASE {DATABASE} OWNER {USER}"),
        )?;
        Ok(pg)
    }

    /// `postgres://cmdop:PASSWORD@127.0.0.1:PORT/cmdop`.
    pub fn url(&self) -> String {
        self.url_of(DATABASE)
    }

    /// The URL of database `name` as the application user.
    pub fn url_of(&self, name: &str) -> String {
        format!(
            "postgres://{USER}:{}@127.0.0.1:{}/{name}",
            self.password, self.port
        )
    }

    /// The loopback port, kept across [`stop`](Self::stop) and
    /// [`start_again`](Self::start_again).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The application user's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Creates another empty database owned by the application user and
    /// returns its URL.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        self.psql("postgres", &format!("CREATE DATABASE {name} OWNER {USER}"))?;
        Ok(self.url_of(name))
    }

    /// Runs SQL as the superuser in database `db`; returns psql's output
    /// (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let sock = self.sock_dir();
        let port = self.port.to_string();
        let out = self.tool(
            "psql",
            |c| {
                c.arg("-h")
                    .arg(&sock)
                    .args(["-p", &port, "-U", SUPERUSER, "-d", db])
                    .args(["-v", "ON_ERROR_STOP=1", "-qAt", "-f", "-"]);
            },
            Some(sql.as_bytes()),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops the server (fast shutdown: connections are cut), keeping its
    /// data, and waits until it is gone.
    pub fn stop(&mut self) {
        self.shut_down("fast", "30");
    }

    /// Starts the server [`stop`](Self::stop) stopped again, on the same
    /// port with the same data.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_none() {
            self.start_server()?;
        }
        Ok(())
    }

    /// Freezes the server (SIGSTOP to the postmaster and its backends): it
    /// keeps its connections and port but answers nothing, like a database
    /// host that hangs. [`thaw`](Self::thaw) undoes it.
    pub fn freeze(&self) -> anyhow::Result<()> {
        self.signal_all(Signal::SIGSTOP)
            .context("cannot freeze PostgreSQL")
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) -> anyhow::Result<()> {
        self.signal_all(Signal::SIGCONT)
            .context("cannot thaw PostgreSQL")
    }

    /// The postmaster and its children (backends, background workers).
    fn signal_all(&self, signal: Signal) -> anyhow::Result<()> {
        let Some(child) = &self.child else {
            return Ok(());
        };
        let postmaster = child.id();
        for pid in std::iter::once(postmaster).chain(children_of(postmaster)) {
            match kill(Pid::from_raw(i32::try_from(pid)?), signal) {
                Ok(()) => {}
                // A backend that exited meanwhile.
                Err(nix::errno::Errno::ESRCH) if pid != postmaster => {}
                Err(e) => bail!("cannot send {signal} to process {pid}: {e}"),
            }
        }
        Ok(())
    }

    fn data_dir(&self) -> PathBuf {
        self.sock_dir().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.sock_dir().join("postgres.log")
    }

    fn sock_dir(&self) -> PathBuf {
        match &self.dir {
            Some(dir) => dir.path().to_path_buf(),
            None => PathBuf::new(),
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.owner {
            // The programs look for their home in the environment.
            c.uid(uid)
                .gid(gid)
                .env("HOME", self.sock_dir())
                .env_remove("PGDATA");
        }
        c.current_dir(self.sock_dir());
        c
    }

    /// Runs one of PostgreSQL's programs to completion, `input` on its
    /// stdin (SQL goes there, never on the command line, where every local
    /// user could read a password in it); an error unless it succeeds.
    fn tool(
        &self,
        program: &str,
        args: impl FnOnce(&mut Command),
        input: Option<&[u8]>,
    ) -> anyhow::Result<Output> {
        let mut c = self.command(program);
        args(&mut c);
        let cannot_run = || {
            format!(
                "cannot run {}; install PostgreSQL with `{INSTALL_COMMAND}`",
                self.bin.join(program).display()
            )
        };
        let out = match input {
            None => c.stdin(Stdio::null()).output().with_context(cannot_run)?,
            Some(input) => {
                let mut child = c
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .with_context(cannot_run)?;
                let mut stdin = child.stdin.take().context("no stdin pipe")?;
                // Small SQL fits the pipe; a failed write shows as psql's error.
                let _ = stdin.write_all(input);
                drop(stdin);
                child.wait_with_output().with_context(cannot_run)?
            }
        };
        if !out.status.success() {
            // psql may quote the statement, which may hold the password.
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .replace(&self.password, "***");
            bail!(
                "PostgreSQL's {program} failed ({}): {}; its server log is {}",
                out.status,
                said.trim(),
                self.log_path().display()
            );
        }
        Ok(out)
    }

    fn start_server(&mut self) -> anyhow::Result<()> {
        let log = fs::File::create(self.log_path()).context("cannot create PostgreSQL's log")?;
        if let Some((uid, gid)) = self.owner {
            chown(&self.log_path(), uid, gid)?;
        }
        let mut c = self.command("postgres");
        c.arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.sock_dir())
            .args(["-c", "listen_addresses=127.0.0.1"])
            // A scratch server: durability is not wanted, speed is.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(
            spawn_dying_with_process(c)
                .with_context(|| format!("cannot run {}", self.bin.join("postgres").display()))?,
        );
        let deadline = Instant::now() + START_TIMEOUT;
        let sock = self.sock_dir();
        let port = self.port.to_string();
        loop {
            // Through the socket: accepting TCP is not enough, the server
            // refuses logins until its start-up recovery is done.
            let ready = self.tool(
                "pg_isready",
                |c| {
                    c.arg("-h")
                        .arg(&sock)
                        .args(["-p", &port, "-U", SUPERUSER, "-d", "postgres", "-q"]);
                },
                None,
            );
            if ready.is_ok() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                bail!(
                    "PostgreSQL exited at start-up ({status}): {}",
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                self.shut_down("immediate", "10");
                bail!(
                    "PostgreSQL did not accept connections within {START_TIMEOUT:?}: {}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `pg_ctl stop` in `mode`, which stops the backends too (a SIGKILL of
    /// the postmaster alone would leave them running); SIGKILL if that fails.
    fn shut_down(&mut self, mode: &str, timeout_secs: &str) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let data = self.data_dir();
        let stopped = self.tool(
            "pg_ctl",
            |c| {
                c.arg("stop")
                    .arg("-D")
                    .arg(&data)
                    .args(["-m", mode, "-w", "-t", timeout_secs]);
            },
            None,
        );
        if stopped.is_err() {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        // A frozen server (a failed test) could not act on the stop.
        let _ = self.thaw();
        self.shut_down("immediate", "10");
        drop(self.dir.take());
    }
}

/// The directory holding `initdb` and `postgres`: `CMDOP_PG_BINDIR`, or
/// the newest of Debian's.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let Some(dir) = std::env::var_os("CMDOP_PG_BINDIR") else {
        return bin_dir_in(Path::new(DEBIAN_ROOT));
    };
    let dir = PathBuf::from(dir);
    if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
        return Ok(dir);
    }
    bail!(
        "CMDOP_PG_BINDIR={} holds no initdb and postgres: point it at PostgreSQL's bin directory, \
         or unset it and install PostgreSQL with `{INSTALL_COMMAND}`",
        dir.display()
    )
}

/// The newest `<root>/<version>/bin` holding `initdb` (Debian's layout);
/// the error names the install command when there is none.
pub fn bin_dir_in(root: &Path) -> anyhow::Result<PathBuf> {
    let newest = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max();
    match newest {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "PostgreSQL is not installed (no {}/<version>/bin/initdb): install it with \
             `{INSTALL_COMMAND}` (scripts/deps.sh does), or set CMDOP_PG_BINDIR to the \
             directory holding initdb and postgres",
            root.display()
        ),
    }
}

/// `None` when not root; as root, the `postgres` user's uid and gid.
fn server_owner() -> anyhow::Result<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")
        .context("cannot look up the postgres user")?
        .with_context(|| {
            format!(
                "running as root, PostgreSQL must run as another user, but there is no \
                 `postgres` user; install PostgreSQL with `{INSTALL_COMMAND}`, which creates it, \
                 or run as another user"
            )
        })?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

fn chown(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).with_context(|| {
        format!(
            "cannot hand {} to the postgres user; run as root or as another user",
            path.display()
        )
    })
}

/// The pids whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // "pid (comm) state ppid …": the command may hold spaces.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            pids.push(pid);
        }
    }
    pids
}

type SpawnJob = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that it is killed when this process ends, even on
/// SIGKILL. PR_SET_PDEATHSIG fires when the spawning *thread* exits, so the
/// spawning is done by one thread that lives as long as the process.
fn spawn_dying_with_process(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Result<mpsc::Sender<SpawnJob>, String>> = OnceLock::new();
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only prctl(2) and getppid(2), both async-signal-safe; it allocates
    // nothing and touches no memory of the parent but the copied `parent`.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            // The parent may have ended before the signal was armed.
            if u32::try_from(nix::unistd::getppid().as_raw()).ok() != Some(parent) {
                return Err(io::Error::from(nix::errno::Errno::ESRCH));
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("postgres-spawner".into())
            .spawn(move || {
                // Never ends: the sender lives in a static.
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .map(|_| tx)
            .map_err(|e| format!("cannot start a thread to run PostgreSQL: {e}"))
    });
    let spawner = spawner.as_ref().map_err(|e| io::Error::other(e.clone()))?;
    let (reply, answer) = mpsc::channel();
    spawner
        .send((cmd, reply))
        .map_err(|_| io::Error::other("the PostgreSQL spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("the PostgreSQL spawner thread is gone"))?
}

/// 32 random hex digits (rand's thread-local generator, seeded from the OS).
fn random_password() -> String {
    use rand::Rng;
    let mut buf = [0u8; 16];
    rand::rng().fill(&mut buf[..]);
    hex::encode(buf)
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, TcpStream};

    use super::*;

    /// Whether the application user logs in to `url` over TCP with its
    /// password (given in the environment, not on psql's command line).
    fn app_logs_in(pg: &LocalPostgres, url: &str) -> bool {
        let without_password = url.replacen(&format!(":{}@", pg.password()), "@", 1);
        Command::new(pg.bin.join("psql"))
            .env("PGPASSWORD", pg.password())
            .args(["-X", "-w", "-qAt", "-c", "SELECT 1"])
            .arg(without_password)
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "1")
    }

    fn state_of(pid: u32) -> Option<char> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    }

    /// Whether `pid` is stopped (`T`), once a signal sent to it has landed.
    fn stopped(pid: u32, expected: bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = state_of(pid) == Some('T');
            if now == expected || Instant::now() > deadline {
                return now;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn starts_serves_the_app_user_stops_starts_again_freezes_and_thaws() {
        // Started from a thread that then ends: the server must outlive it.
        let mut pg = std::thread::spawn(LocalPostgres::start)
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{e:#}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], pg.port()));
        assert_eq!(
            pg.url(),
            format!(
                "postgres://cmdop:{}@127.0.0.1:{}/cmdop",
                pg.password(),
                pg.port()
            )
        );
        // The application user logs in with its password and owns the
        // database, without being a superuser.
        assert!(app_logs_in(&pg, &pg.url()), "the application user logs in");
        assert_eq!(
            pg.psql(
                DATABASE,
                "SELECT rolsuper FROM pg_roles WHERE rolname = 'cmdop'"
            )
            .unwrap()
            .trim(),
            "f"
        );
        let other = pg.create_database("second").unwrap();
        assert_eq!(other, pg.url_of("second"));
        assert!(app_logs_in(&pg, &other), "the second database opens");
        let err = pg.psql(DATABASE, "SELEC 1").unwrap_err();
        assert!(format!("{err:#}").contains("psql failed"), "{err:#}");

        let postmaster = pg.child.as_ref().unwrap().id();
        pg.freeze().unwrap();
        assert!(stopped(postmaster, true), "freeze left it running");
        pg.thaw().unwrap();
        assert!(!stopped(postmaster, false), "thaw left it stopped");

        pg.stop();
        assert!(
            TcpStream::connect(addr).is_err(),
            "a stopped server still listens"
        );
        pg.start_again().unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            app_logs_in(&pg, &pg.url()),
            "the server is back after a restart"
        );

        let dir = pg.sock_dir();
        pg.freeze().unwrap();
        drop(pg);
        assert!(
            state_of(postmaster).is_none(),
            "the postmaster outlived drop"
        );
        assert!(!dir.exists(), "the temporary directory outlived drop");
    }

    #[test]
    fn without_postgresql_the_error_names_the_install_command() {
        let empty = tempfile::tempdir().unwrap();
        let err = bin_dir_in(empty.path()).unwrap_err();
        assert!(
            format!("{err:#}").contains("install it with `apt-get install -y postgresql`"),
            "{err:#}"
        );
    }
}
