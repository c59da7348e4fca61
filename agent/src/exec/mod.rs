//! Native Exec: run one command as a child process in its own process group,
//! stream its stdout and stderr apart, and report exactly how it ended.
//!
//! Killing always targets the whole process group (SIGKILL), so helpers the
//! command started in the background die with it on timeout, cancel, or loss
//! of the AgentLink channel. A command that exits normally but leaves a
//! background process holding its stdout/stderr gets [`DRAIN_GRACE`] for the
//! remaining output; that process keeps running, its later output is not
//! forwarded. Time spent waiting for the control plane's credit does not
//! count towards that grace.
//!
//! Flow control: when `ExecStart.window` is set (control planes that saw
//! [`CAPABILITY_CREDIT`] in hello), the output pumps of one command keep at
//! most that window of output un-credited and stop reading the pipes when it
//! is spent, so the command blocks on its own pipe and no other command or
//! transfer on the Channel waits for it.
//!
//! In a terminal: a command whose `ExecStart` carries `terminal` runs in a
//! pseudo-terminal of its own instead of pipes ([`tty`]).
//!
//! Bulk stdout: when `ExecStart.raw_ticket` is set and the control plane is
//! plaintext, stdout beyond the first [`exec_raw::RAW_SWITCH_AFTER`] bytes
//! may move to a side connection ([`exec_raw`]); stderr never does.

mod output;
mod tty;

use parking_lot::Mutex;
use std::{
    collections::HashMap,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    sync::{atomic::AtomicU64, Arc},
    time::{Duration, Instant},
};

use bytes::Bytes;
use cmdop_proto::ext::{
    agent_uplink, AgentUplink, ExecExit, ExecFinished, ExecSpawned, ExecStart, ExecStdin,
    ExecStdinWritten,
};
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::AsyncWriteExt,
    sync::{mpsc, oneshot, watch},
};

use crate::{
    exec_raw::{self, RawSwitch},
    files::path::resolve,
};

pub use output::DRAIN_GRACE;
use output::{grow_pipe, OutputWindow, Pump, PumpEnd};

/// Largest output chunk per uplink message.
pub use cmdop_proto::limits::OUTPUT_CHUNK_BYTES as MAX_OUTPUT_CHUNK;
/// Commands running at once; more are refused with an error.
pub const MAX_RUNNING: usize = 256;
/// Listed in the AgentLink hello: this agent honours `ExecStart.window` and
/// the control plane's `ExecCredit` messages.
pub use cmdop_proto::caps::EXEC_CREDIT as CAPABILITY_CREDIT;
/// Listed in the AgentLink hello: this agent reports each command's pid in
/// an `ExecSpawned` message before its output.
pub use cmdop_proto::caps::EXEC_SPAWNED as CAPABILITY_SPAWNED;
/// Listed in the AgentLink hello: this agent keeps stdin open for commands
/// started with `stdin_open` and writes what `ExecStdin` messages bring,
/// reporting progress with `ExecStdinWritten`.
pub use cmdop_proto::caps::EXEC_STDIN as CAPABILITY_STDIN;
/// Listed in the AgentLink hello: this agent runs commands whose
/// `ExecStart` carries `terminal` in a pseudo-terminal ([`tty`]).
pub use cmdop_proto::caps::EXEC_TTY as CAPABILITY_TTY;

/// Why a command was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillReason {
    Timeout,
    Cancel,
}

/// Runs one command to completion, sending its output to `sink` as it comes,
/// and returns the `finished` message (also for spawn failures).
///
/// The command is killed when `cancel` fires or its sender is dropped.
/// Output is not flow-controlled (`start.window` is ignored) and always
/// goes to `sink` (`start.raw_ticket` is ignored).
pub async fn run_exec(
    start: ExecStart,
    home: &Path,
    cancel: oneshot::Receiver<()>,
    sink: &mpsc::Sender<AgentUplink>,
) -> ExecFinished {
    run_exec_credited(start, home, cancel, sink, None, None).await
}

/// [`run_exec`], keeping the output within `start.window` of what `credit`
/// (cumulative bytes the control plane handed on) allows. Without a window
/// or without `credit`, output is sent as fast as `sink` takes it. Dropping
/// the credit sender stops the output pumps.
///
/// `server_url` is the control plane the agent talks to: when it is
/// `http://` and `start.raw_ticket` is set, bulk stdout may move to a side
/// connection there ([`exec_raw`]); `None` never does. The returned exit's
/// `raw_stdout_bytes` counts the bytes that went that way.
pub async fn run_exec_credited(
    start: ExecStart,
    home: &Path,
    cancel: oneshot::Receiver<()>,
    sink: &mpsc::Sender<AgentUplink>,
    credit: Option<watch::Receiver<u64>>,
    server_url: Option<&str>,
) -> ExecFinished {
    run_exec_piped(start, home, cancel, sink, credit, server_url, None).await
}

/// [`run_exec_credited`], with more stdin from `more_stdin` after
/// `start.stdin` (commands started with `stdin_open`): written in order,
/// each step acknowledged on `sink` with `ExecStdinWritten`, until a step
/// with `close` or the sender's drop closes stdin.
pub async fn run_exec_piped(
    start: ExecStart,
    home: &Path,
    mut cancel: oneshot::Receiver<()>,
    sink: &mpsc::Sender<AgentUplink>,
    credit: Option<watch::Receiver<u64>>,
    server_url: Option<&str>,
    more_stdin: Option<mpsc::UnboundedReceiver<ExecStdin>>,
) -> ExecFinished {
    let started = Instant::now();
    let exec_id = start.exec_id.clone();
    let cwd = if start.working_directory.is_empty() {
        home.to_path_buf()
    } else {
        resolve(&start.working_directory, home)
    };
    if start.command.len() > cmdop_proto::limits::MAX_COMMAND_BYTES {
        let message = format!(
            "the command is {} bytes; the limit is {} bytes (Linux's limit for \
             one argument); send a longer script as stdin of `sh -s` instead",
            start.command.len(),
            cmdop_proto::limits::MAX_COMMAND_BYTES
        );
        return finished(&exec_id, 0, started, -1, 0, false, message);
    }
    if let Some(terminal) = start.terminal.clone() {
        let io = tty::TtyIo {
            cancel,
            sink,
            credit,
            more_stdin,
        };
        return tty::run(start, terminal, &cwd, io, started).await;
    }
    let spawn_started = Instant::now();
    let spawned = crate::spawn::spawn_shell(&crate::spawn::ShellCommand {
        command: &start.command,
        cwd: &cwd,
        env: &start.env,
        stdin_piped: !start.stdin.is_empty() || more_stdin.is_some(),
    });
    let crate::spawn::Spawned {
        stdin,
        stdout,
        stderr,
        mut child,
    } = match spawned {
        Ok(spawned) => spawned,
        Err(e) => {
            return finished(&exec_id, 0, started, -1, 0, false, spawn_error(&e, &cwd));
        }
    };
    crate::metrics::spawned(spawn_started.elapsed());
    let _running = crate::metrics::Running::start();
    let pid = child.id();
    // Lets a restarted agent kill this command's group if we die first.
    let _record = crate::orphans::Record::new(pid);
    announce_spawned(sink, &exec_id, pid);

    if let Some(stdin) = stdin {
        let data = start.stdin.clone();
        // Stdin is closed (EOF) when this task ends.
        tokio::spawn(feed_stdin(
            stdin,
            data,
            more_stdin,
            exec_id.clone(),
            sink.clone(),
        ));
    }
    let window = match (start.window, credit) {
        (Some(w), Some(credit)) => Some(OutputWindow::new(w, credit)),
        _ => None,
    };
    let credited = window.is_some();
    let raw = RawSwitch::new(
        &exec_id,
        &start.raw_ticket,
        &start.raw_tls_peer_sha256,
        server_url,
    );
    let may_switch = raw.is_some();
    // Stdout bytes moved to a side connection, kept up to date as they go.
    let raw_moved = Arc::new(AtomicU64::new(0));
    let (exited_tx, exited) = watch::channel(false);
    // Each pump returns the bytes it moved to a side connection.
    let mut pumps: Vec<tokio::task::JoinHandle<u64>> = Vec::with_capacity(2);
    {
        let mut out = stdout;
        grow_pipe(&out);
        let pump = Pump {
            exec_id: exec_id.clone(),
            is_stderr: false,
            sink: sink.clone(),
            window: window.clone(),
            exited: exited.clone(),
            raw,
        };
        let (exited, moved) = (exited.clone(), Arc::clone(&raw_moved));
        pumps.push(tokio::spawn(async move {
            match pump.run(&mut out).await {
                PumpEnd::Done => 0,
                PumpEnd::Switched { socket, grace } => {
                    exec_raw::send_rest(out, socket, exited, grace, moved).await
                }
            }
        }));
    }
    {
        let mut err = stderr;
        grow_pipe(&err);
        let pump = Pump {
            exec_id: exec_id.clone(),
            is_stderr: true,
            sink: sink.clone(),
            window,
            exited,
            raw: None,
        };
        pumps.push(tokio::spawn(async move {
            pump.run(&mut err).await;
            0
        }));
    }

    let (status, killed) = wait_or_kill(&mut child, start.timeout_ms, &mut cancel).await;

    // Collect what is left in the pipes; don't wait forever on a background
    // process that inherited them. With credit or a side connection, each
    // pump bounds its own reads after the exit (waits for credit or for a
    // slow reader of the side connection don't count), and output nobody
    // will take after a cancel is not waited for.
    exited_tx.send_replace(true);
    let drained = if killed == Some(KillReason::Cancel) {
        None
    } else if credited || may_switch {
        Some(futures::future::join_all(pumps.iter_mut()).await)
    } else {
        let all = futures::future::join_all(pumps.iter_mut());
        tokio::time::timeout(DRAIN_GRACE, all).await.ok()
    };
    let raw_stdout_bytes = match drained {
        Some(ends) => ends.into_iter().map(|end| end.unwrap_or(0)).sum(),
        None => {
            // Stopped early: the side connection's copy stops when its pump
            // is dropped; report what it had moved by then.
            for p in &pumps {
                p.abort();
            }
            raw_moved.load(std::sync::atomic::Ordering::Relaxed)
        }
    };

    let mut done = ended(&exec_id, pid, started, status, killed);
    if let Some(exit) = done.exit.as_mut() {
        exit.raw_stdout_bytes = raw_stdout_bytes;
    }
    done
}

/// Announces the pid before any output (same queue, so it arrives first).
/// Not waiting here keeps the timeout and cancel in force; if the queue is
/// full, the control plane reports pid 0 instead.
fn announce_spawned(sink: &mpsc::Sender<AgentUplink>, exec_id: &str, pid: u32) {
    let spawned = AgentUplink {
        msg: Some(agent_uplink::Msg::Spawned(ExecSpawned {
            exec_id: exec_id.to_owned(),
            pid,
        })),
    };
    if sink.try_send(spawned).is_err() {
        tracing::debug!(exec_id, "uplink full; the pid is not announced");
    }
}

/// Waits for the command to exit, killing its process group when
/// `timeout_ms` (0 = none) passes or `cancel` fires first.
async fn wait_or_kill(
    child: &mut crate::spawn::Child,
    timeout_ms: u32,
    cancel: &mut oneshot::Receiver<()>,
) -> (
    std::io::Result<std::process::ExitStatus>,
    Option<KillReason>,
) {
    let pid = child.id();
    let timeout = (timeout_ms > 0).then(|| Duration::from_millis(u64::from(timeout_ms)));
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        status = child.wait() => (status, None),
        _ = deadline => {
            kill_group(pid);
            (child.wait().await, Some(KillReason::Timeout))
        }
        _ = cancel => {
            kill_group(pid);
            (child.wait().await, Some(KillReason::Cancel))
        }
    }
}

/// The `finished` message of a command that ran and ended with `status`.
fn ended(
    exec_id: &str,
    pid: u32,
    started: Instant,
    status: std::io::Result<std::process::ExitStatus>,
    killed: Option<KillReason>,
) -> ExecFinished {
    match status {
        Ok(status) => {
            let (code, signal) = match (status.code(), status.signal()) {
                (Some(code), _) => (code, 0),
                (None, Some(sig)) => (-1, sig),
                (None, None) => (-1, 0),
            };
            finished(
                exec_id,
                pid,
                started,
                code,
                signal,
                killed == Some(KillReason::Timeout),
                String::new(),
            )
        }
        Err(e) => finished(
            exec_id,
            pid,
            started,
            -1,
            0,
            false,
            format!("cannot wait for the command: {e}"),
        ),
    }
}

fn spawn_error(e: &std::io::Error, cwd: &Path) -> String {
    if !cwd.is_dir() {
        format!(
            "cannot start the command: working directory {} does not exist or is not a directory",
            cwd.display()
        )
    } else {
        format!("cannot start /bin/sh for the command: {e}")
    }
}

fn finished(
    exec_id: &str,
    pid: u32,
    started: Instant,
    exit_code: i32,
    signal: i32,
    timed_out: bool,
    error: String,
) -> ExecFinished {
    ExecFinished {
        exec_id: exec_id.to_owned(),
        exit: Some(ExecExit {
            exit_code,
            signal,
            timed_out,
            duration_us: started.elapsed().as_micros().min(u128::from(u64::MAX)) as u64,
            error,
            raw_stdout_bytes: 0,
            outcome_unknown: false,
        }),
        pid,
    }
}

/// SIGKILLs the process group led by `pid` (the command's own group).
fn kill_group(pid: u32) {
    if pid == 0 {
        return;
    }
    if let Err(e) = nix::sys::signal::killpg(Pid::from_raw(pid as i32), Signal::SIGKILL) {
        tracing::debug!(pid, error = %e, "killpg failed (group already gone?)");
    }
}

/// Writes `first`, then each step of `more` in order, acknowledging every
/// step's bytes on `sink` (also when the command stopped reading and they
/// were discarded, so that the sender never waits for a reader that is
/// gone). Returning drops `stdin`: the command sees EOF.
async fn feed_stdin(
    mut stdin: tokio::process::ChildStdin,
    first: Bytes,
    more: Option<mpsc::UnboundedReceiver<ExecStdin>>,
    exec_id: String,
    sink: mpsc::Sender<AgentUplink>,
) {
    let mut broken = stdin.write_all(&first).await.is_err();
    let Some(mut more) = more else { return };
    let mut written = 0u64;
    while let Some(step) = more.recv().await {
        if !broken && !step.data.is_empty() {
            broken = stdin.write_all(&step.data).await.is_err();
        }
        if !step.data.is_empty() {
            written += step.data.len() as u64;
            let ack = AgentUplink {
                msg: Some(agent_uplink::Msg::StdinWritten(ExecStdinWritten {
                    exec_id: exec_id.clone(),
                    written,
                })),
            };
            if sink.send(ack).await.is_err() {
                return;
            }
        }
        if step.close {
            return;
        }
    }
}

/// The commands running for one AgentLink channel. Dropping it (or
/// [`ExecRunner::kill_all`]) kills every one of them.
pub struct ExecRunner {
    home: PathBuf,
    uplink: mpsc::Sender<AgentUplink>,
    /// The control plane's URL, for side connections (`http://` only).
    server_url: Option<Arc<str>>,
    running: Arc<Mutex<HashMap<String, Running>>>,
}

/// Handles on one running command. Dropping them kills it.
struct Running {
    cancel: oneshot::Sender<()>,
    /// Output bytes the control plane handed on (flow-controlled commands).
    credit: Option<watch::Sender<u64>>,
    /// More stdin (commands started with `stdin_open`). Unbounded: the
    /// control plane keeps at most a window of it unacknowledged.
    stdin: Option<mpsc::UnboundedSender<ExecStdin>>,
}

impl ExecRunner {
    /// A runner whose output and `finished` messages go to `uplink`.
    /// `server_url` is the control plane's URL: when it is `http://`,
    /// commands whose `ExecStart` carries a `raw_ticket` may move bulk
    /// stdout to a side connection there ([`exec_raw`]); `None` never does.
    pub fn new(
        home: PathBuf,
        uplink: mpsc::Sender<AgentUplink>,
        server_url: Option<String>,
    ) -> Self {
        Self {
            home,
            uplink,
            server_url: server_url.map(Arc::from),
            running: Arc::default(),
        }
    }

    /// Starts `start` in the background.
    pub fn start(&self, start: ExecStart) {
        let exec_id = start.exec_id.clone();
        let (cancel_tx, cancel_rx) = oneshot::channel();
        let (credit_tx, credit_rx) = match start.window {
            Some(_) => {
                let (tx, rx) = watch::channel(0u64);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let (stdin_tx, stdin_rx) = if start.stdin_open {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        {
            let mut running = self.running.lock();
            let refusal = if exec_id.is_empty() {
                Some("exec_id is empty")
            } else if running.contains_key(&exec_id) {
                Some("a command with this exec_id is already running")
            } else if running.len() >= MAX_RUNNING {
                Some("too many commands running on this machine; wait for some to finish")
            } else {
                None
            };
            if let Some(why) = refusal {
                tracing::warn!(exec_id, why, "refusing exec");
                let msg = finished(&exec_id, 0, Instant::now(), -1, 0, false, why.to_owned());
                let uplink = self.uplink.clone();
                tokio::spawn(async move {
                    let _ = uplink.send(finished_msg(msg)).await;
                });
                return;
            }
            running.insert(
                exec_id.clone(),
                Running {
                    cancel: cancel_tx,
                    credit: credit_tx,
                    stdin: stdin_tx,
                },
            );
        }
        tracing::debug!(
            exec_id,
            command_bytes = start.command.len(),
            command_prefix = %command_prefix(&start.command),
            "exec start"
        );
        let home = self.home.clone();
        let uplink = self.uplink.clone();
        let running = Arc::clone(&self.running);
        let server_url = self.server_url.clone();
        tokio::spawn(async move {
            let done = run_exec_piped(
                start,
                &home,
                cancel_rx,
                &uplink,
                credit_rx,
                server_url.as_deref(),
                stdin_rx,
            )
            .await;
            running.lock().remove(&exec_id);
            tracing::debug!(exec_id, exit = ?done.exit, "exec finished");
            let _ = uplink.send(finished_msg(done)).await;
        });
    }

    /// Kills the command `exec_id` (its process group); unknown ids are ignored.
    pub fn cancel(&self, exec_id: &str) {
        if let Some(running) = self.running.lock().remove(exec_id) {
            let _ = running.cancel.send(());
        }
    }

    /// Records that the control plane handed on `delivered` bytes of the
    /// command's output (cumulative); unknown ids and stale values are ignored.
    pub fn credit(&self, exec_id: &str, delivered: u64) {
        if let Some(Running {
            credit: Some(credit),
            ..
        }) = self.running.lock().get(exec_id)
        {
            credit.send_if_modified(|current| {
                let grows = delivered > *current;
                if grows {
                    *current = delivered;
                }
                grows
            });
        }
    }

    /// Queues more stdin for `step.exec_id`; unknown ids (finished
    /// commands) and commands without `stdin_open` are ignored.
    pub fn stdin(&self, step: ExecStdin) {
        if let Some(Running {
            stdin: Some(stdin), ..
        }) = self.running.lock().get(&step.exec_id)
        {
            let _ = stdin.send(step);
        }
    }

    /// Kills every running command.
    pub fn kill_all(&self) {
        let all: Vec<_> = self.running.lock().drain().collect();
        if !all.is_empty() {
            tracing::info!(count = all.len(), "killing running commands");
        }
        for (_, running) in all {
            let _ = running.cancel.send(());
        }
    }
}

impl Drop for ExecRunner {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn finished_msg(f: ExecFinished) -> AgentUplink {
    AgentUplink {
        msg: Some(agent_uplink::Msg::Finished(f)),
    }
}

/// Characters of a command that logs may show: commands carry passwords
/// and tokens, so a log never holds more than its length and this prefix.
pub const LOGGED_COMMAND_PREFIX_CHARS: usize = 6;

/// The part of `command` a log may show (see [`LOGGED_COMMAND_PREFIX_CHARS`]).
pub fn command_prefix(command: &str) -> String {
    let mut prefix: String = command
        .chars()
        .take(LOGGED_COMMAND_PREFIX_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if command.chars().count() > LOGGED_COMMAND_PREFIX_CHARS {
        prefix.push('…');
    }
    prefix
}
