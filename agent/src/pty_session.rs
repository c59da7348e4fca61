//! The interactive shell behind the official terminal path: a real PTY
//! owned by the agent process, independent of any control-plane connection.
//!
//! * A supervisor thread spawns the shell, waits for it and restarts it when
//!   it exits (bumping [`PtySession::generation`] so the connection can send
//!   a status update). Quick successive exits are spaced out so a broken
//!   shell cannot make the agent spin.
//! * A reader thread per shell copies PTY output into a bounded buffer.
//!   While the agent is disconnected the buffer keeps the newest
//!   [`OUTPUT_BUFFER_BYTES`] bytes and drops older ones, so the shell never
//!   blocks on a full terminal and a reconnect delivers the recent output.
//! * A writer thread feeds input to the PTY, so a shell that is not reading
//!   can never stall the async runtime.
//!
//! The shell is started for predictable, marker-friendly output (the
//! official SDKs' `execute()` types `printf` markers into it): bash runs
//! with `--noprofile --norc`, a plain `PS1='$ '`, bracketed paste off, and
//! `TERM=xterm-256color`, in the user's home directory.

use std::{
    collections::VecDeque,
    io::{Read, Write},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use parking_lot::Mutex;

use anyhow::Context;
use nix::{sys::signal::Signal, unistd::Pid};
use portable_pty::{native_pty_system, ChildKiller, CommandBuilder, MasterPty, PtySize};
use tokio::sync::{mpsc, watch, Notify};

/// Output kept while nobody consumes it (disconnected); oldest bytes go first.
pub const OUTPUT_BUFFER_BYTES: usize = 1024 * 1024;
/// Largest chunk handed out by [`PtySession::next_output`].
pub use cmdop_proto::limits::OUTPUT_CHUNK_BYTES as MAX_OUTPUT_CHUNK;
/// Pending input writes before `write_input` waits.
const INPUT_QUEUE: usize = 256;
/// A shell that lived shorter than this counts as a quick exit.
const QUICK_EXIT: Duration = Duration::from_secs(2);
/// Longest pause between restarts of a shell that keeps exiting at once.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
/// Initial terminal size, as the official agents report.
pub const DEFAULT_ROWS: u16 = 24;
pub const DEFAULT_COLS: u16 = 80;

/// How to start the shell.
#[derive(Debug, Clone)]
pub struct ShellSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub home: PathBuf,
    /// Extra environment for the shell.
    pub env: Vec<(String, String)>,
}

impl ShellSpec {
    /// Picks the shell (`configured`, else a POSIX `$SHELL`, else bash, else
    /// sh) and its arguments. `scratch_dir` receives a small inputrc that
    /// turns off bracketed paste for bash.
    pub fn choose(configured: Option<&str>, home: &Path, scratch_dir: Option<&Path>) -> Self {
        let program = configured
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("SHELL")
                    .map(PathBuf::from)
                    .filter(|p| is_posix_shell(p) && p.exists())
            })
            .or_else(|| Some(PathBuf::from("/bin/bash")).filter(|p| p.exists()))
            .unwrap_or_else(|| PathBuf::from("/bin/sh"));
        if !is_posix_shell(&program) {
            tracing::warn!(
                shell = %program.display(),
                "shell is not POSIX-compatible; the SDKs' execute() needs printf and $? and may not work"
            );
        }
        let name = shell_name(&program);
        let mut env = vec![
            ("TERM".to_owned(), "xterm-256color".to_owned()),
            ("HOME".to_owned(), home.display().to_string()),
            ("SHELL".to_owned(), program.display().to_string()),
        ];
        let args = match name.as_str() {
            "bash" => {
                env.push(("PS1".to_owned(), "$ ".to_owned()));
                if let Some(path) = scratch_dir.and_then(write_inputrc) {
                    env.push(("INPUTRC".to_owned(), path.display().to_string()));
                }
                vec!["--noprofile".into(), "--norc".into(), "-i".into()]
            }
            "zsh" => {
                env.push(("PS1".to_owned(), "$ ".to_owned()));
                vec!["-f".into(), "-i".into()]
            }
            "sh" | "dash" | "ash" | "ksh" | "mksh" => {
                env.push(("PS1".to_owned(), "$ ".to_owned()));
                vec!["-i".into()]
            }
            _ => vec!["-i".into()],
        };
        Self {
            program,
            args,
            home: home.to_path_buf(),
            env,
        }
    }
}

fn shell_name(program: &Path) -> String {
    program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn is_posix_shell(program: &Path) -> bool {
    matches!(
        shell_name(program).as_str(),
        "bash" | "sh" | "dash" | "ash" | "zsh" | "ksh" | "mksh"
    )
}

/// Readline settings for the agent's bash: keep the system file, turn off
/// bracketed paste (its escape sequences would wrap every typed line).
fn write_inputrc(dir: &Path) -> Option<PathBuf> {
    let path = dir.join("cmdop-agent.inputrc");
    let mut text = String::new();
    if Path::new("/etc/inputrc").exists() {
        text.push_str("$include /etc/inputrc\n");
    }
    text.push_str("set enable-bracketed-paste off\n");
    match crate::private_file::write_atomically(&path, text.as_bytes(), 0o600) {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::debug!(error = %e, "cannot write inputrc; bracketed paste stays on");
            None
        }
    }
}

/// Bytes the shell printed, bounded; see the module docs.
#[derive(Default)]
struct OutputBuffer {
    bytes: Mutex<VecDeque<u8>>,
    ready: Notify,
}

impl OutputBuffer {
    fn push(&self, data: &[u8]) {
        let mut bytes = self.bytes.lock();
        bytes.extend(data);
        let excess = bytes.len().saturating_sub(OUTPUT_BUFFER_BYTES);
        if excess > 0 {
            bytes.drain(..excess);
        }
        drop(bytes);
        self.ready.notify_one();
    }

    fn take(&self, max: usize) -> Option<Vec<u8>> {
        let mut bytes = self.bytes.lock();
        if bytes.is_empty() {
            return None;
        }
        let n = bytes.len().min(max);
        Some(bytes.drain(..n).collect())
    }
}

/// The PTY of the currently running shell.
struct CurrentShell {
    master: Box<dyn MasterPty + Send>,
    pid: Option<u32>,
    killer: Box<dyn ChildKiller + Send + Sync>,
}

struct Shared {
    spec: ShellSpec,
    output: OutputBuffer,
    current: Mutex<Option<CurrentShell>>,
    writer: Mutex<Option<Box<dyn Write + Send>>>,
    size: Mutex<PtySize>,
    generation: watch::Sender<u64>,
    stopping: AtomicBool,
}

/// A supervised shell on a PTY. Dropping it stops the shell.
pub struct PtySession {
    shared: Arc<Shared>,
    input: mpsc::Sender<Vec<u8>>,
}

impl PtySession {
    /// Starts the shell and its helper threads. Fails only if the first
    /// shell cannot be started at all (no PTY support, missing shell).
    pub fn start(spec: ShellSpec) -> anyhow::Result<Self> {
        let (generation, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            spec,
            output: OutputBuffer::default(),
            current: Mutex::new(None),
            writer: Mutex::new(None),
            size: Mutex::new(PtySize {
                rows: DEFAULT_ROWS,
                cols: DEFAULT_COLS,
                pixel_width: 0,
                pixel_height: 0,
            }),
            generation,
            stopping: AtomicBool::new(false),
        });
        // Start the first shell here so that errors reach the caller.
        let child = spawn_shell(&shared)?;
        let sup = Arc::clone(&shared);
        thread::Builder::new()
            .name("cmdop-pty-supervisor".into())
            .spawn(move || supervise(sup, child))
            .context("cannot start the PTY supervisor thread")?;

        let (input, mut input_rx) = mpsc::channel::<Vec<u8>>(INPUT_QUEUE);
        let wr = Arc::clone(&shared);
        thread::Builder::new()
            .name("cmdop-pty-writer".into())
            .spawn(move || {
                while let Some(data) = input_rx.blocking_recv() {
                    let mut writer = wr.writer.lock();
                    if let Some(w) = writer.as_mut() {
                        if let Err(e) = w.write_all(&data).and_then(|()| w.flush()) {
                            tracing::debug!(error = %e, "PTY input write failed (shell restarting?)");
                        }
                    }
                }
            })
            .context("cannot start the PTY writer thread")?;
        Ok(Self { shared, input })
    }

    /// The shell program in use.
    pub fn shell(&self) -> &Path {
        &self.shared.spec.program
    }

    /// The directory the shell starts in.
    pub fn working_directory(&self) -> &Path {
        &self.shared.spec.home
    }

    /// Waits for the next chunk of output (at most [`MAX_OUTPUT_CHUNK`]
    /// bytes). Meant for a single consumer at a time.
    pub async fn next_output(&self) -> Vec<u8> {
        loop {
            if let Some(chunk) = self.shared.output.take(MAX_OUTPUT_CHUNK) {
                return chunk;
            }
            self.shared.output.ready.notified().await;
        }
    }

    /// Queues bytes for the shell's input.
    pub async fn write_input(&self, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        // The writer thread lives as long as the session; a send error is impossible.
        let _ = self.input.send(data).await;
    }

    /// Resizes the terminal (kept for future shells as well).
    pub fn resize(&self, rows: u16, cols: u16) -> anyhow::Result<()> {
        anyhow::ensure!(
            rows > 0 && cols > 0,
            "terminal size must be positive, got {rows}x{cols}"
        );
        let size = PtySize {
            rows,
            cols,
            pixel_width: 0,
            pixel_height: 0,
        };
        *self.shared.size.lock() = size;
        if let Some(cur) = self.shared.current.lock().as_ref() {
            cur.master
                .resize(size)
                .map_err(|e| anyhow::anyhow!("cannot resize the terminal: {e}"))?;
        }
        Ok(())
    }

    /// Sends `signal` to the terminal's foreground process group (the
    /// running command), or to the shell if that is unknown.
    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let sig =
            Signal::try_from(signal).with_context(|| format!("unknown signal number {signal}"))?;
        let guard = self.shared.current.lock();
        let cur = guard.as_ref().context("no shell is running right now")?;
        let pgid = cur
            .master
            .process_group_leader()
            .filter(|p| *p > 0)
            .or_else(|| cur.pid.map(|p| p as i32))
            .context("the shell's process group is unknown")?;
        nix::sys::signal::killpg(Pid::from_raw(pgid), sig)
            .with_context(|| format!("cannot send signal {signal} to process group {pgid}"))
    }

    /// Incremented each time the shell was restarted after exiting.
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.shared.generation.subscribe()
    }

    /// Process id of the running shell, if any.
    pub fn shell_pid(&self) -> Option<u32> {
        self.shared.current.lock().as_ref().and_then(|c| c.pid)
    }
}

impl Drop for PtySession {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(cur) = self.shared.current.lock().as_mut() {
            // SIGHUP first, as a closing terminal would; bash passes it on to its jobs.
            if let Some(pid) = cur.pid {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGHUP);
            }
            let _ = cur.killer.kill();
        }
    }
}

/// Spawns one shell on a fresh PTY and installs it as the current one.
fn spawn_shell(shared: &Arc<Shared>) -> anyhow::Result<Box<dyn portable_pty::Child + Send + Sync>> {
    let size = *shared.size.lock();
    let pair = native_pty_system()
        .openpty(size)
        .map_err(|e| anyhow::anyhow!("cannot open a pseudo-terminal: {e}"))?;
    let spec = &shared.spec;
    let mut cmd = CommandBuilder::new(&spec.program);
    cmd.args(&spec.args);
    cmd.cwd(&spec.home);
    cmd.env_remove("CMDOP_ENROLL_TOKEN");
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let child = pair
        .slave
        .spawn_command(cmd)
        .map_err(|e| anyhow::anyhow!("cannot start shell {}: {e}", spec.program.display()))?;
    // Our copy of the slave must go, or the reader never sees the shell hang up.
    drop(pair.slave);
    let mut reader = pair
        .master
        .try_clone_reader()
        .map_err(|e| anyhow::anyhow!("cannot read from the pseudo-terminal: {e}"))?;
    let writer = pair
        .master
        .take_writer()
        .map_err(|e| anyhow::anyhow!("cannot write to the pseudo-terminal: {e}"))?;

    let out = Arc::clone(shared);
    thread::Builder::new()
        .name("cmdop-pty-reader".into())
        .spawn(move || {
            let mut buf = vec![0u8; MAX_OUTPUT_CHUNK];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => out.output.push(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // EIO: every slave descriptor is closed, the shell is gone.
                    Err(_) => break,
                }
            }
        })
        .context("cannot start the PTY reader thread")?;

    *shared.writer.lock() = Some(writer);
    *shared.current.lock() = Some(CurrentShell {
        master: pair.master,
        pid: child.process_id(),
        killer: child.clone_killer(),
    });
    tracing::info!(shell = %spec.program.display(), pid = ?child.process_id(), "shell started on PTY");
    Ok(child)
}

/// Waits for each shell to exit and starts the next one.
fn supervise(shared: Arc<Shared>, mut child: Box<dyn portable_pty::Child + Send + Sync>) {
    let mut delay = Duration::from_millis(500);
    loop {
        let started = Instant::now();
        let status = child.wait();
        if shared.stopping.load(Ordering::SeqCst) {
            *shared.current.lock() = None;
            *shared.writer.lock() = None;
            return;
        }
        tracing::info!(status = ?status, "shell exited; starting a new one");
        let notice = match &status {
            Ok(s) => format!("\r\n[cmdop] shell exited ({s}); starting a new one\r\n"),
            Err(e) => format!("\r\n[cmdop] shell ended ({e}); starting a new one\r\n"),
        };
        shared.output.push(notice.as_bytes());
        if started.elapsed() < QUICK_EXIT {
            thread::sleep(delay);
            delay = (delay * 2).min(MAX_RESTART_DELAY);
        } else {
            delay = Duration::from_millis(500);
        }
        loop {
            if shared.stopping.load(Ordering::SeqCst) {
                return;
            }
            match spawn_shell(&shared) {
                Ok(c) => {
                    child = c;
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, retry_in = ?delay, "cannot restart the shell");
                    thread::sleep(delay);
                    delay = (delay * 2).min(MAX_RESTART_DELAY);
                }
            }
        }
        shared.generation.send_modify(|g| *g += 1);
    }
}
