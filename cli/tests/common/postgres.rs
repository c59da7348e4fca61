//! A throwaway PostgreSQL server for tests: `initdb` into a temporary
//! directory, `postgres` on a free loopback port (its socket in that
//! directory too), one database and one password-authenticated user.
//! Stopped and deleted when dropped.
//!
//! PostgreSQL refuses to run as root, so under root (CI) the server runs as
//! the `postgres` user the Debian package creates, which then owns the
//! temporary directory. Without PostgreSQL installed, [`Postgres::start`]
//! panics with the command that installs it: the tests need it and must not
//! pass without it.
//!
//! Shared by `cli/tests` and the control plane's store tests (which include
//! this file by path), so it uses the standard library and `tempfile` only.

#![allow(dead_code)]

use std::{
    fs,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// What installs PostgreSQL on Debian (the suites' platform).
pub const INSTALL_COMMAND: &str = "apt-get install -y postgresql";
/// The superuser initdb creates (connects over the socket, no password).
const SUPERUSER: &str = "cmdop_test_admin";
/// The application user and database.
pub const USER: &str = "cmdop";
pub const DATABASE: &str = "cmdop";

/// A running (or stopped) PostgreSQL server of one test.
pub struct Postgres {
    bin: PathBuf,
    /// `None` when running as ourselves; the postgres user's (uid, gid) under root.
    user: Option<(u32, u32)>,
    dir: Option<tempfile::TempDir>,
    port: u16,
    password: String,
    child: Option<Child>,
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb`.
fn bin_dir() -> PathBuf {
    bin_dir_in(Path::new("/usr/lib/postgresql"))
}

/// The newest `<root>/<version>/bin` holding `initdb` (Debian's layout);
/// panics with the install command when there is none.
pub fn bin_dir_in(root: &Path) -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed (no {}/<version>/bin/initdb); these tests need it: \
             install it with `{INSTALL_COMMAND}` (scripts/deps.sh does)",
            root.display()
        ),
    }
}

/// uid and gid of `name` from /etc/passwd.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    l.local_addr().expect("local address").port()
}

fn random_password() -> String {
    let mut bytes = [0u8; 12];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Postgres {
    /// initdb, start, and create the user and database. Panics (with what
    /// to do) when PostgreSQL is missing or does not come up.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let user = if is_root() {
            Some(user_ids("postgres").unwrap_or_else(|| {
                panic!(
                    "running as root, PostgreSQL must run as another user, but there is no \
                     `postgres` user; install PostgreSQL with `{INSTALL_COMMAND}`, which creates it"
                )
            }))
        } else {
            None
        };
        let mut builder = tempfile::Builder::new();
        builder.prefix("cmdop-pg-");
        let dir = if user.is_some() {
            // The postgres user must reach it: $TMPDIR may be under a
            // directory only root can enter, /tmp never is.
            builder.tempdir_in("/tmp")
        } else {
            builder.tempdir()
        }
        .expect("temp dir for PostgreSQL");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("give the PostgreSQL temp dir to the postgres user");
        }
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))
            .expect("make the PostgreSQL temp dir private");
        let mut pg = Postgres {
            bin,
            user,
            dir: Some(dir),
            port: free_port(),
            password: random_password(),
            child: None,
        };
        let data = pg.data_dir();
        let out = pg.tool("initdb", |c| {
            c.arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    SUPERUSER,
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ])
                .args(["--encoding=UTF8", "--locale=C", "--no-sync"]);
        });
        check(&out, "initdb");
        pg.start_server();
        pg.psql(
            "postgres",
            &format!("CREATE ROLE {USER} LOGIN PASSWORD '{}'", pg.password),
        );
        pg.psql(
            "postgres",
            &format!("CREATE DATABASE {DATABASE} OWNER {USER}"),
        );
        pg
    }

    /// `postgres://cmdop:PASSWORD@127.0.0.1:PORT/cmdop`.
    pub fn url(&self) -> String {
        self.url_of(DATABASE)
    }

    /// The URL of database `name` (see [`Postgres::create_database`]).
    pub fn url_of(&self, name: &str) -> String {
        format!(
            "postgres://{USER}:{}@127.0.0.1:{}/{name}",
            self.password, self.port
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// Creates another empty database owned by the application user and
    /// returns its URL (one per test keeps tests apart).
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {name} OWNER {USER}"));
        self.url_of(name)
    }

    /// Runs SQL as the superuser in database `db`; returns psql's output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let sock = self.sock_dir();
        let port = self.port.to_string();
        let out = self.tool("psql", |c| {
            c.arg("-h")
                .arg(&sock)
                .args(["-p", &port, "-U", SUPERUSER, "-d", db])
                .args(["-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql]);
        });
        check(&out, "psql");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the server (fast shutdown: connections are cut) and waits
    /// until it is gone.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let data = self.data_dir();
        let out = self.tool("pg_ctl", |c| {
            c.arg("stop")
                .arg("-D")
                .arg(&data)
                .args(["-m", "fast", "-w", "-t", "30"]);
        });
        if !out.status.success() {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// Starts the server [`Postgres::stop`] stopped again, on the same port
    /// with the same data.
    pub fn start_again(&mut self) {
        if self.child.is_none() {
            self.start_server();
        }
    }

    /// Freezes the server (SIGSTOP to the postmaster and its backends): it
    /// keeps its connections and port but answers nothing, like a database
    /// host that hangs. [`Postgres::thaw`] undoes it.
    pub fn freeze(&self) {
        assert!(self.signal_all("-STOP"), "cannot freeze PostgreSQL");
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        assert!(self.signal_all("-CONT"), "cannot thaw PostgreSQL");
    }

    fn signal_all(&self, signal: &str) -> bool {
        let Some(child) = &self.child else {
            return true;
        };
        let postmaster = child.id();
        let mut pids = vec![postmaster];
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // "pid (comm) state ppid …": the command may hold spaces.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(postmaster) {
                pids.push(pid);
            }
        }
        Command::new("kill")
            .arg(signal)
            .args(pids.iter().map(u32::to_string))
            .status()
            .is_ok_and(|s| s.success())
    }

    fn data_dir(&self) -> PathBuf {
        self.sock_dir().join("data")
    }

    fn sock_dir(&self) -> PathBuf {
        self.dir
            .as_ref()
            .expect("the temp dir lives as long as the server")
            .path()
            .to_path_buf()
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid).env("HOME", self.sock_dir());
        }
        c.current_dir(self.sock_dir());
        c
    }

    fn tool(&self, program: &str, args: impl FnOnce(&mut Command)) -> Output {
        let mut c = self.command(program);
        args(&mut c);
        c.stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run PostgreSQL's {program}: {e}"))
    }

    fn start_server(&mut self) {
        let log = fs::File::create(self.sock_dir().join("postgres.log")).expect("postgres log");
        if let Some((uid, gid)) = self.user {
            let _ = std::os::unix::fs::chown(
                self.sock_dir().join("postgres.log"),
                Some(uid),
                Some(gid),
            );
        }
        let mut c = self.command("postgres");
        c.arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.sock_dir())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(c.spawn().expect("start postgres"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let sock = self.sock_dir();
        let port = self.port.to_string();
        loop {
            let out = self.tool("pg_isready", |c| {
                c.arg("-h")
                    .arg(&sock)
                    .args(["-p", &port, "-U", SUPERUSER, "-d", "postgres"]);
            });
            if out.status.success() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "postgres exited ({status}) at start-up: {}",
                    fs::read_to_string(self.sock_dir().join("postgres.log")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "postgres did not accept connections within 60 s: {}",
                    fs::read_to_string(self.sock_dir().join("postgres.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // A frozen server (a failed test) could not act on the stop.
        self.signal_all("-CONT");
        if let Some(mut child) = self.child.take() {
            // SIGKILL of the postmaster alone would leave its backends
            // running: an immediate shutdown stops them all.
            let data = self.data_dir();
            let _ = self.tool("pg_ctl", |c| {
                c.arg("stop")
                    .arg("-D")
                    .arg(&data)
                    .args(["-m", "immediate", "-w", "-t", "10"]);
            });
            let _ = child.kill();
            let _ = child.wait();
        }
        drop(self.dir.take());
    }
}

fn is_root() -> bool {
    // The effective uid from /proc, without a libc dependency.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "PostgreSQL's {what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
