//! Native Exec: run one command as a child process in its own process group,
//! stream its stdout and stderr apart, and report exactly how it ended.
//!
//! Killing always targets the whole process group (SIGKILL), so helpers the
//! command started in the background die with it on timeout, cancel, or loss
//! of the AgentLink channel. A command that exits normally but leaves a
//! background process holding its stdout/stderr gets [`DRAIN_GRACE`] for the
//! remaining output; that process keeps running, its later output is not
//! forwarded.

use std::{
    collections::HashMap,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::{BufMut, Bytes, BytesMut};
use cmdop_proto::ext::{
    agent_uplink, AgentUplink, ExecExit, ExecFinished, ExecOutput, ExecSpawned, ExecStart,
};
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    sync::{mpsc, oneshot},
};

use crate::files::path::resolve;

/// Largest output chunk per uplink message.
pub const MAX_OUTPUT_CHUNK: usize = 64 * 1024;
/// Reads shorter than this are copied out so that the read buffer is reused;
/// longer ones are handed on without a copy.
const COPY_BELOW: usize = 8 * 1024;
/// Capacity asked for the command's stdout and stderr pipes (Linux; the
/// default is 64 KiB), so a fast writer is not stopped every 64 KiB while
/// the previous chunk is being sent. Pages are only used while data waits.
#[cfg(target_os = "linux")]
const PIPE_CAPACITY: i32 = 1024 * 1024;
/// How long output is still collected after the command itself exited.
pub const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// Commands running at once; more are refused with an error.
pub const MAX_RUNNING: usize = 256;
/// Listed in the AgentLink hello: this agent reports each command's pid in
/// an `ExecSpawned` message before its output.
pub const CAPABILITY_SPAWNED: &str = "exec-spawned.v1";

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
pub async fn run_exec(
    start: ExecStart,
    home: &Path,
    mut cancel: oneshot::Receiver<()>,
    sink: &mpsc::Sender<AgentUplink>,
) -> ExecFinished {
    let started = Instant::now();
    let exec_id = start.exec_id.clone();
    let cwd = if start.working_directory.is_empty() {
        home.to_path_buf()
    } else {
        resolve(&start.working_directory, home)
    };
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&start.command)
        .process_group(0)
        .current_dir(&cwd)
        .env_remove("CMDOP_ENROLL_TOKEN")
        .envs(&start.env)
        .stdin(if start.stdin.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            return finished(&exec_id, 0, started, -1, 0, false, spawn_error(&e, &cwd));
        }
    };
    let pid = child.id().unwrap_or(0);
    // Announce the pid before any output (same queue, so it arrives first).
    // Not waiting here keeps the timeout and cancel in force; if the queue
    // is full, the control plane reports pid 0 instead.
    let spawned = AgentUplink {
        msg: Some(agent_uplink::Msg::Spawned(ExecSpawned {
            exec_id: exec_id.clone(),
            pid,
        })),
    };
    if sink.try_send(spawned).is_err() {
        tracing::debug!(exec_id, "uplink full; the pid is not announced");
    }

    if let Some(mut stdin) = child.stdin.take() {
        let data = start.stdin.clone();
        // Stdin is closed (EOF) when this task ends.
        tokio::spawn(async move {
            let _ = stdin.write_all(&data).await;
        });
    }
    let mut pumps = Vec::with_capacity(2);
    if let Some(out) = child.stdout.take() {
        grow_pipe(&out);
        pumps.push(tokio::spawn(pump(
            out,
            exec_id.clone(),
            false,
            sink.clone(),
        )));
    }
    if let Some(err) = child.stderr.take() {
        grow_pipe(&err);
        pumps.push(tokio::spawn(pump(err, exec_id.clone(), true, sink.clone())));
    }

    let timeout =
        (start.timeout_ms > 0).then(|| Duration::from_millis(u64::from(start.timeout_ms)));
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let (status, killed) = tokio::select! {
        status = child.wait() => (status, None),
        _ = deadline => {
            kill_group(pid);
            (child.wait().await, Some(KillReason::Timeout))
        }
        _ = &mut cancel => {
            kill_group(pid);
            (child.wait().await, Some(KillReason::Cancel))
        }
    };

    // Collect what is left in the pipes; don't wait forever on a background
    // process that inherited them.
    let drained =
        tokio::time::timeout(DRAIN_GRACE, futures::future::join_all(pumps.iter_mut())).await;
    if drained.is_err() {
        for p in &pumps {
            p.abort();
        }
    }

    match status {
        Ok(status) => {
            let (code, signal) = match (status.code(), status.signal()) {
                (Some(code), _) => (code, 0),
                (None, Some(sig)) => (-1, sig),
                (None, None) => (-1, 0),
            };
            finished(
                &exec_id,
                pid,
                started,
                code,
                signal,
                killed == Some(KillReason::Timeout),
                String::new(),
            )
        }
        Err(e) => finished(
            &exec_id,
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

/// Asks for a larger pipe buffer; the default size is kept if refused.
fn grow_pipe(pipe: &impl std::os::fd::AsFd) {
    #[cfg(target_os = "linux")]
    {
        use nix::fcntl::{fcntl, FcntlArg};
        if let Err(e) = fcntl(pipe, FcntlArg::F_SETPIPE_SZ(PIPE_CAPACITY)) {
            tracing::debug!(error = %e, "cannot enlarge the output pipe; keeping its size");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = pipe;
}

/// Forwards one pipe as `output` messages until EOF.
async fn pump(
    mut pipe: impl AsyncRead + Unpin,
    exec_id: String,
    is_stderr: bool,
    sink: mpsc::Sender<AgentUplink>,
) {
    let mut buf = BytesMut::new();
    loop {
        buf.clear();
        buf.reserve(MAX_OUTPUT_CHUNK);
        // `read_buf` fills at most the spare capacity; cap it at one chunk.
        let mut limited = (&mut buf).limit(MAX_OUTPUT_CHUNK);
        match pipe.read_buf(&mut limited).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let data = if n < COPY_BELOW {
                    Bytes::copy_from_slice(&buf[..n])
                } else {
                    buf.split().freeze()
                };
                let msg = AgentUplink {
                    msg: Some(agent_uplink::Msg::Output(ExecOutput {
                        exec_id: exec_id.clone(),
                        data,
                        is_stderr,
                    })),
                };
                if sink.send(msg).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The commands running for one AgentLink channel. Dropping it (or
/// [`ExecRunner::kill_all`]) kills every one of them.
pub struct ExecRunner {
    home: PathBuf,
    uplink: mpsc::Sender<AgentUplink>,
    running: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>,
}

impl ExecRunner {
    /// A runner whose output and `finished` messages go to `uplink`.
    pub fn new(home: PathBuf, uplink: mpsc::Sender<AgentUplink>) -> Self {
        Self {
            home,
            uplink,
            running: Arc::default(),
        }
    }

    /// Starts `start` in the background.
    pub fn start(&self, start: ExecStart) {
        let exec_id = start.exec_id.clone();
        let (cancel_tx, cancel_rx) = oneshot::channel();
        {
            let mut running = lock(&self.running);
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
            running.insert(exec_id.clone(), cancel_tx);
        }
        tracing::debug!(exec_id, command = %start.command, "exec start");
        let home = self.home.clone();
        let uplink = self.uplink.clone();
        let running = Arc::clone(&self.running);
        tokio::spawn(async move {
            let done = run_exec(start, &home, cancel_rx, &uplink).await;
            lock(&running).remove(&exec_id);
            tracing::debug!(exec_id, exit = ?done.exit, "exec finished");
            let _ = uplink.send(finished_msg(done)).await;
        });
    }

    /// Kills the command `exec_id` (its process group); unknown ids are ignored.
    pub fn cancel(&self, exec_id: &str) {
        if let Some(tx) = lock(&self.running).remove(exec_id) {
            let _ = tx.send(());
        }
    }

    /// Kills every running command.
    pub fn kill_all(&self) {
        let all: Vec<_> = lock(&self.running).drain().collect();
        if !all.is_empty() {
            tracing::info!(count = all.len(), "killing running commands");
        }
        for (_, tx) in all {
            let _ = tx.send(());
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
