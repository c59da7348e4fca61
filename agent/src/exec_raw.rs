//! Side connections for bulk Exec stdout (capability [`CAPABILITY`]; see
//! "Side connections" at the end of `cmdop_ext.proto`).
//!
//! A command's stdout starts out as ordinary `ExecOutput` messages. Once
//! [`RAW_SWITCH_AFTER`] bytes of it went that way and the `ExecStart`
//! carried a ticket, the agent says `raw_offered`, opens a plain TCP
//! connection to the control plane's own address and sends the opening. The
//! stdout pump keeps sending `ExecOutput` meanwhile; when the control plane
//! answers [`raw::ACCEPTED`], the pump says `raw_switched` and hands the pipe to
//! `send_rest`, which moves every further byte into the socket with
//! splice(2) on a blocking thread: no copies through user space, and TCP
//! does the flow control (no credit is spent on these bytes). Any other
//! answer, an error or a timeout leaves the command on gRPC for good.
//!
//! Only for `http://` control planes (the side connection is plaintext) and
//! only on Linux (splice).

use std::{
    io,
    net::{Shutdown, TcpStream},
    os::fd::{AsFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use cmdop_proto::{
    ext::{agent_uplink, AgentUplink, ExecRawOffered, ExecRawSwitched},
    raw::{self, Role, OPENING_LEN},
};
use futures::FutureExt;
use tokio::{
    process::ChildStdout,
    sync::{mpsc, watch},
    task::JoinHandle,
};

pub use cmdop_proto::raw::CAPABILITY;

/// Stdout bytes a command sends as ordinary `ExecOutput` before the agent
/// offers a side connection, so that small outputs never pay for one.
pub const RAW_SWITCH_AFTER: u64 = 1024 * 1024;
/// Longest wait in poll(2) for more output before the loop looks at the
/// stop flag and the command's exit again.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// Most bytes moved by one splice(2) call.
const MAX_SPLICE: usize = 1024 * 1024;

/// Whether this agent opens side connections when its control plane URL is
/// `server_url`: only plaintext `http://` URLs, only where splice exists.
pub fn usable_with(server_url: &str) -> bool {
    cfg!(target_os = "linux") && ServerAddr::from_url(server_url).is_some()
}

/// Host and port of a plaintext control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerAddr {
    host: String,
    port: u16,
}

impl ServerAddr {
    /// `http://host[:port][/...]`; `None` for any other scheme or garbage.
    fn from_url(url: &str) -> Option<Self> {
        let uri: http::Uri = url.parse().ok()?;
        if uri.scheme_str() != Some("http") {
            return None;
        }
        // IPv6 literals come bracketed; connecting wants the bare address.
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return None;
        }
        Some(ServerAddr {
            host: host.to_owned(),
            port: uri.port_u16().unwrap_or(80),
        })
    }
}

/// One command's way from gRPC to a side connection, driven by its stdout
/// pump: offer once enough stdout went over gRPC, then watch the handshake.
pub(crate) struct RawSwitch {
    exec_id: String,
    addr: ServerAddr,
    opening: [u8; OPENING_LEN],
    stage: Stage,
}

enum Stage {
    /// Less than [`RAW_SWITCH_AFTER`] bytes sent so far.
    Waiting,
    /// `raw_offered` sent; the handshake runs in this task.
    Handshaking(JoinHandle<Option<TcpStream>>),
    /// Switched, or given up: nothing more to do.
    Over,
}

impl RawSwitch {
    /// A switch for this command, when it carries a ticket and the agent
    /// talks to a plaintext control plane (`server_url`).
    pub(crate) fn new(exec_id: &str, ticket: &str, server_url: Option<&str>) -> Option<Self> {
        if ticket.is_empty() || !cfg!(target_os = "linux") {
            return None;
        }
        let addr = server_url.and_then(ServerAddr::from_url)?;
        let Some(opening) = raw::opening(Role::Agent, ticket) else {
            tracing::debug!(exec_id, "malformed raw ticket; stdout stays on gRPC");
            return None;
        };
        Some(RawSwitch {
            exec_id: exec_id.to_owned(),
            addr,
            opening,
            stage: Stage::Waiting,
        })
    }

    /// Called after each stdout `ExecOutput`, with the stdout bytes sent
    /// that way so far. The first time they reach [`RAW_SWITCH_AFTER`], it
    /// queues `raw_offered` behind that output and starts the handshake.
    /// False when the uplink is gone.
    pub(crate) async fn after_output(
        &mut self,
        sent: u64,
        sink: &mpsc::Sender<AgentUplink>,
    ) -> bool {
        if !matches!(self.stage, Stage::Waiting) || sent < RAW_SWITCH_AFTER {
            return true;
        }
        let offered = AgentUplink {
            msg: Some(agent_uplink::Msg::RawOffered(ExecRawOffered {
                exec_id: self.exec_id.clone(),
            })),
        };
        if sink.send(offered).await.is_err() {
            self.stage = Stage::Over;
            return false;
        }
        let (exec_id, addr, opening) = (self.exec_id.clone(), self.addr.clone(), self.opening);
        self.stage = Stage::Handshaking(tokio::spawn(async move {
            match handshake(&addr, &opening).await {
                Ok(socket) => Some(socket),
                Err(e) => {
                    tracing::debug!(exec_id, host = %addr.host, port = addr.port, error = %e,
                        "no side connection; stdout stays on gRPC");
                    None
                }
            }
        }));
        true
    }

    /// The accepted side connection, once the handshake has succeeded;
    /// never waits. After it returned a socket (or the handshake failed),
    /// always `None`.
    pub(crate) fn accepted(&mut self) -> Option<TcpStream> {
        let Stage::Handshaking(task) = &mut self.stage else {
            return None;
        };
        let outcome = task.now_or_never()?;
        self.stage = Stage::Over;
        outcome.ok().flatten()
    }

    /// The message that tells the control plane every later stdout byte
    /// goes to the side connection.
    pub(crate) fn switched_msg(&self) -> AgentUplink {
        AgentUplink {
            msg: Some(agent_uplink::Msg::RawSwitched(ExecRawSwitched {
                exec_id: self.exec_id.clone(),
            })),
        }
    }
}

impl Drop for RawSwitch {
    fn drop(&mut self) {
        // A handshake still running when the pump ends is of no use: its
        // socket (if any) is closed and the control plane sees EOF.
        if let Stage::Handshaking(task) = &self.stage {
            task.abort();
        }
    }
}

/// The agent's handshake ([`raw::connect`]); the socket comes back in
/// blocking mode, ready for splice.
async fn handshake(addr: &ServerAddr, opening: &[u8; OPENING_LEN]) -> io::Result<TcpStream> {
    let socket = raw::connect((addr.host.as_str(), addr.port), opening).await?;
    let socket = socket.into_std()?;
    socket.set_nonblocking(false)?;
    Ok(socket)
}

/// Moves the rest of the command's stdout into `socket` until EOF, the end
/// of the drain grace after the command exited (`exited`; `grace` is what
/// the pump left of [`DRAIN_GRACE`](crate::exec::DRAIN_GRACE)), or the loss
/// of the side connection; then half-closes the socket (except when the
/// connection was lost). Returns the bytes moved; `moved` follows them as
/// they go, for a caller that has to stop this early.
///
/// Dropping the returned future (the pump being aborted on cancel) stops
/// the copy promptly, even one blocked on a full socket.
pub(crate) async fn send_rest(
    stdout: ChildStdout,
    socket: TcpStream,
    exited: watch::Receiver<bool>,
    grace: Duration,
    moved: Arc<AtomicU64>,
) -> u64 {
    let pipe = match stdout.into_owned_fd() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "cannot take the stdout pipe; the side connection gets no data");
            let _ = socket.shutdown(Shutdown::Write);
            return 0;
        }
    };
    let mut guard = match StopOnDrop::new(&socket) {
        Ok(guard) => guard,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the side connection; it gets no data");
            let _ = socket.shutdown(Shutdown::Write);
            return 0;
        }
    };
    let stop = Arc::clone(&guard.stop);
    let counter = Arc::clone(&moved);
    let copy = tokio::task::spawn_blocking(move || {
        splice_until_done(&pipe, &socket, &exited, grace, &stop, &counter)
    });
    match copy.await {
        Ok(end) => tracing::debug!(?end, "side connection done"),
        Err(e) => tracing::warn!(error = %e, "the side connection copy failed"),
    }
    guard.disarm();
    moved.load(Ordering::Relaxed)
}

/// Stops a copy thread when dropped: sets its stop flag and shuts its
/// socket down, so that a splice blocked on a full socket returns.
struct StopOnDrop {
    stop: Arc<AtomicBool>,
    socket: Option<TcpStream>,
}

impl StopOnDrop {
    fn new(socket: &TcpStream) -> io::Result<Self> {
        Ok(StopOnDrop {
            stop: Arc::default(),
            socket: Some(socket.try_clone()?),
        })
    }

    /// The copy ended by itself; leave its socket alone.
    fn disarm(&mut self) {
        self.socket = None;
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(socket) = self.socket.take() {
            self.stop.store(true, Ordering::Relaxed);
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

/// Why [`splice_until_done`] ended.
#[derive(Debug, PartialEq, Eq)]
enum CopyEnd {
    /// The pipe reached EOF, or the drain grace ran out: the socket is
    /// half-closed so the reader sees the end.
    Finished,
    /// The stop flag was set (cancel).
    Stopped,
    /// The side connection or the pipe failed.
    Failed,
}

/// The blocking copy loop of [`send_rest`].
///
/// The socket stays blocking: a splice waits while the reader is slow, and
/// that time does not count against the drain grace. The pipe is
/// non-blocking, and after the command exited only the time spent in poll
/// waiting for more output counts.
#[cfg(target_os = "linux")]
fn splice_until_done(
    pipe: &OwnedFd,
    socket: &TcpStream,
    exited: &watch::Receiver<bool>,
    mut grace: Duration,
    stop: &AtomicBool,
    moved: &AtomicU64,
) -> CopyEnd {
    use nix::{
        errno::Errno,
        fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags},
        poll::{poll, PollFd, PollFlags, PollTimeout},
    };

    let nonblocking = fcntl(pipe, FcntlArg::F_GETFL)
        .map(|bits| OFlag::from_bits_truncate(bits) | OFlag::O_NONBLOCK)
        .and_then(|flags| fcntl(pipe, FcntlArg::F_SETFL(flags)));
    if let Err(e) = nonblocking {
        tracing::warn!(error = %e, "cannot make the stdout pipe non-blocking");
        return CopyEnd::Failed;
    }
    let flags =
        SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_MORE;
    // Bytes handed to the socket with SPLICE_F_MORE may wait there for
    // more; when the pipe runs dry they are pushed out (see below).
    let mut held_back = false;
    let end = loop {
        if stop.load(Ordering::Relaxed) {
            break CopyEnd::Stopped;
        }
        match splice(pipe, None, socket, None, MAX_SPLICE, flags) {
            Ok(0) => break CopyEnd::Finished,
            Ok(n) => {
                moved.fetch_add(n as u64, Ordering::Relaxed);
                held_back = true;
            }
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                if held_back {
                    // Setting TCP_NODELAY again sends whatever MSG_MORE held
                    // back, so a pause in the output does not delay the
                    // reader.
                    let _ = socket.set_nodelay(true);
                    held_back = false;
                }
                let after_exit = *exited.borrow();
                if after_exit && grace.is_zero() {
                    break CopyEnd::Finished;
                }
                let wait = if after_exit {
                    IDLE_POLL.min(grace)
                } else {
                    IDLE_POLL
                };
                let millis = u16::try_from(wait.as_millis().max(1)).unwrap_or(u16::MAX);
                let began = Instant::now();
                let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::from(millis)) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot wait for the stdout pipe");
                        break CopyEnd::Failed;
                    }
                }
                if after_exit {
                    grace = grace.saturating_sub(began.elapsed());
                }
            }
            // The guard shut the socket down: any error is the cancel.
            Err(_) if stop.load(Ordering::Relaxed) => break CopyEnd::Stopped,
            Err(e @ (Errno::EPIPE | Errno::ECONNRESET)) => {
                tracing::debug!(error = %e, "the side connection closed; its caller went away");
                break CopyEnd::Failed;
            }
            Err(e) => {
                tracing::warn!(error = %e, "splice to the side connection failed");
                break CopyEnd::Failed;
            }
        }
    };
    if end == CopyEnd::Finished {
        if let Err(e) = socket.shutdown(Shutdown::Write) {
            tracing::debug!(error = %e, "cannot half-close the side connection");
        }
    }
    end
}

/// splice(2) is Linux only, and [`RawSwitch::new`] never switches elsewhere.
#[cfg(not(target_os = "linux"))]
fn splice_until_done(
    _pipe: &OwnedFd,
    socket: &TcpStream,
    _exited: &watch::Receiver<bool>,
    _grace: Duration,
    _stop: &AtomicBool,
    _moved: &AtomicU64,
) -> CopyEnd {
    let _ = socket.shutdown(Shutdown::Write);
    CopyEnd::Failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_give_an_address() {
        let addr = |url| ServerAddr::from_url(url).map(|a| (a.host, a.port));
        assert_eq!(
            addr("http://127.0.0.1:50051"),
            Some(("127.0.0.1".into(), 50051))
        );
        assert_eq!(addr("http://cp.example/"), Some(("cp.example".into(), 80)));
        assert_eq!(addr("http://[::1]:7000"), Some(("::1".into(), 7000)));
        assert_eq!(addr("https://127.0.0.1:50051"), None);
        assert_eq!(addr("unix:///run/cmdop.sock"), None);
        assert_eq!(addr("not a url"), None);
        assert_eq!(addr(""), None);
    }

    #[test]
    fn no_switch_without_a_good_ticket_or_a_plaintext_server() {
        let ticket = raw::new_ticket();
        let http = Some("http://127.0.0.1:1");
        assert_eq!(
            RawSwitch::new("e", &ticket, http).is_some(),
            cfg!(target_os = "linux")
        );
        assert!(RawSwitch::new("e", "", http).is_none());
        assert!(RawSwitch::new("e", "short", http).is_none());
        assert!(RawSwitch::new("e", &ticket, Some("https://127.0.0.1:1")).is_none());
        assert!(RawSwitch::new("e", &ticket, None).is_none());
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn dropping_the_copy_stops_it_even_when_blocked_on_a_full_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        // The reader never reads: the copy ends up blocked in splice.
        let (_reader, _) = listener.accept().unwrap();
        let mut child = tokio::process::Command::new("cat")
            .arg("/dev/zero")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (exited_tx, exited) = watch::channel(false);
        let moved = Arc::new(AtomicU64::new(0));
        let copy = tokio::spawn(send_rest(
            stdout,
            socket,
            exited,
            Duration::from_secs(1),
            Arc::clone(&moved),
        ));
        let mut last = u64::MAX;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = moved.load(Ordering::Relaxed);
            if now == last {
                break;
            }
            last = now;
        }
        assert!(last > 0 && last != u64::MAX, "the copy never stalled");
        copy.abort();
        // The copy thread holds the last receiver of `exited`.
        tokio::time::timeout(Duration::from_secs(2), exited_tx.closed())
            .await
            .expect("the copy thread ended");
    }
}
