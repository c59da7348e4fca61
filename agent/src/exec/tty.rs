//! Native Exec in a pseudo-terminal (`ExecStart.terminal`: `cmdop exec -t`,
//! `cmdop shell`). The command leads a session whose controlling terminal
//! is the slave end, which is also its stdin, stdout and stderr; the agent
//! keeps the master end. What the command writes to the terminal goes up
//! as stdout `output` (one stream: a terminal has no stderr of its own),
//! within the same credit window as piped output; streamed stdin is written
//! to the master, so the terminal's line discipline turns a typed Ctrl-C
//! (0x03) into SIGINT for the foreground process group, and a step's
//! `resize` sets the terminal's size (the kernel sends SIGWINCH).
//!
//! The output ends when no process holds the slave end any more (the
//! master then reads EIO), or [`super::DRAIN_GRACE`] after the command
//! exited. Cancel and timeout kill the command's process group; the other
//! process groups of its session get SIGHUP from the kernel when their
//! session leader dies.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use cmdop_proto::{
    ext::{
        agent_uplink, AgentUplink, ExecFinished, ExecStart, ExecStdin, ExecStdinWritten,
        ExecTerminal,
    },
    limits::{DEFAULT_TERM, DEFAULT_TERMINAL_COLS, DEFAULT_TERMINAL_ROWS, MAX_TERM_BYTES},
};
use nix::{
    fcntl::OFlag,
    libc,
    pty::{grantpt, posix_openpt, ptsname_r, unlockpt, PtyMaster},
};
use tokio::{
    io::{unix::AsyncFd, AsyncRead, ReadBuf},
    sync::{mpsc, oneshot, watch},
};

use super::output::{OutputWindow, Pump};
use super::{
    announce_spawned, ended, finished, spawn_error, wait_or_kill, KillReason, DRAIN_GRACE,
};

/// The channels of one command in a terminal, as [`super::run_exec_piped`]
/// got them.
pub(super) struct TtyIo<'a> {
    pub(super) cancel: oneshot::Receiver<()>,
    pub(super) sink: &'a mpsc::Sender<AgentUplink>,
    pub(super) credit: Option<watch::Receiver<u64>>,
    pub(super) more_stdin: Option<mpsc::UnboundedReceiver<ExecStdin>>,
}

/// Runs `start` in a new pseudo-terminal of `terminal`'s size in `cwd`,
/// as described in the module documentation.
pub(super) async fn run(
    start: ExecStart,
    terminal: ExecTerminal,
    cwd: &Path,
    io: TtyIo<'_>,
    started: Instant,
) -> ExecFinished {
    let TtyIo {
        mut cancel,
        sink,
        credit,
        more_stdin,
    } = io;
    let exec_id = start.exec_id.clone();
    let (master, slave) = match open_terminal(&terminal) {
        Ok(pair) => pair,
        Err(e) => {
            let message = format!("cannot open a pseudo-terminal for the command: {e}");
            return finished(&exec_id, 0, started, -1, 0, false, message);
        }
    };
    let mut env = start.env.clone();
    if !env.contains_key("TERM") {
        let term = if terminal.term.is_empty()
            || terminal.term.len() > MAX_TERM_BYTES
            || terminal.term.contains('\0')
        {
            DEFAULT_TERM.to_owned()
        } else {
            terminal.term.clone()
        };
        env.insert("TERM".to_owned(), term);
    }
    let spawn_started = Instant::now();
    let spawned = crate::spawn::spawn_shell_in_terminal(
        &crate::spawn::ShellCommand {
            command: &start.command,
            cwd,
            env: &env,
            stdin_piped: false,
        },
        &slave,
    );
    // Only the command holds the terminal now, so that its end is our EOF.
    drop(slave);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return finished(&exec_id, 0, started, -1, 0, false, spawn_error(&e, cwd)),
    };
    crate::metrics::spawned(spawn_started.elapsed());
    let _running = crate::metrics::Running::start();
    let pid = child.id();
    // Lets a restarted agent kill this command's group if we die first.
    let _record = crate::orphans::Record::new(pid);
    announce_spawned(sink, &exec_id, pid);

    let feeder = tokio::spawn(feed_terminal(
        Arc::clone(&master),
        start.stdin.clone(),
        more_stdin,
        exec_id.clone(),
        sink.clone(),
    ));
    // Whatever happens below, the feeder does not outlive the command.
    let _feeder = tokio_util::task::AbortOnDropHandle::new(feeder);
    let window = match (start.window, credit) {
        (Some(w), Some(credit)) => Some(OutputWindow::new(w, credit)),
        _ => None,
    };
    let credited = window.is_some();
    let (exited_tx, exited) = watch::channel(false);
    let pump = Pump {
        exec_id: exec_id.clone(),
        is_stderr: false,
        sink: sink.clone(),
        window,
        exited,
        raw: None,
    };
    let mut pump = tokio::spawn(pump.run(TerminalReader(master)));

    let (status, killed) = wait_or_kill(&mut child, start.timeout_ms, &mut cancel).await;
    exited_tx.send_replace(true);
    if killed == Some(KillReason::Cancel) {
        pump.abort();
    } else if credited {
        // The pump bounds its own reads after the exit.
        let _ = (&mut pump).await;
    } else if tokio::time::timeout(DRAIN_GRACE, &mut pump).await.is_err() {
        pump.abort();
    }
    ended(&exec_id, pid, started, status, killed)
}

/// A new pseudo-terminal of `size`: its master (non-blocking, on the
/// reactor) and slave ends, both close-on-exec from the start, so that no
/// command spawned meanwhile on another thread inherits either.
fn open_terminal(size: &ExecTerminal) -> io::Result<(Arc<AsyncFd<PtyMaster>>, OwnedFd)> {
    let master =
        posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname_r(&master)?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    set_size(master.as_raw_fd(), size)?;
    // SAFETY: the AsyncFd owns `master`, whose descriptor stays open (and
    // is not replaced) until the AsyncFd drops it.
    let master = unsafe { AsyncFd::register(master) }.map_err(io::Error::from)?;
    Ok((Arc::new(master), slave))
}

/// Sets the terminal's size (0 = the default rows or columns); the kernel
/// sends SIGWINCH to its foreground process group when it changes.
fn set_size(master: RawFd, size: &ExecTerminal) -> io::Result<()> {
    let side = |v: u32, default: u16| match v {
        0 => default,
        v => u16::try_from(v).unwrap_or(u16::MAX),
    };
    let ws = libc::winsize {
        ws_row: side(size.rows, DEFAULT_TERMINAL_ROWS),
        ws_col: side(size.cols, DEFAULT_TERMINAL_COLS),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which points
    // to a live local; `master` is an open descriptor owned by the caller.
    if unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The master end read as the command's output.
struct TerminalReader(Arc<AsyncFd<PtyMaster>>);

impl AsyncRead for TerminalReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let read = guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from));
            match read {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Linux reports EIO once no process holds the slave end:
                // the end of the terminal's output.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Writes all of `data` to the master end (the command's typed input).
async fn write_all(master: &AsyncFd<PtyMaster>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = master.writable().await?;
        match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// Types `first`, then each step of `more` in order into the terminal,
/// acknowledging every step's bytes on `sink` (also once the terminal is
/// gone and they are discarded), and applies each step's `resize`. A
/// terminal has no EOF of its own: after `close` further bytes are
/// discarded, but resizes still apply.
async fn feed_terminal(
    master: Arc<AsyncFd<PtyMaster>>,
    first: Bytes,
    more: Option<mpsc::UnboundedReceiver<ExecStdin>>,
    exec_id: String,
    sink: mpsc::Sender<AgentUplink>,
) {
    let mut broken = write_all(&master, &first).await.is_err();
    let Some(mut more) = more else { return };
    let mut closed = false;
    let mut written = 0u64;
    while let Some(step) = more.recv().await {
        if !step.data.is_empty() {
            if !broken && !closed {
                broken = write_all(&master, &step.data).await.is_err();
            }
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
        if let Some(size) = &step.resize {
            if let Err(e) = set_size(master.as_raw_fd(), size) {
                tracing::debug!(exec_id, error = %e, "cannot resize the command's terminal");
            }
        }
        closed |= step.close;
    }
}
