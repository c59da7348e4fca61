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
//! When the `ExecStart` also carries the caller's certificate pin
//! (`raw_tls_peer_sha256`, capability [`CAPABILITY_TLS`]), the agent runs
//! TLS 1.3 as server on the side connection right after the answer,
//! requiring that certificate ([`cmdop_proto::raw_tls`]), says its own pin
//! in `raw_offered`, and `send_rest` encrypts instead of splicing: it reads
//! the pipe in big pieces, seals them into records and writes many records
//! per system call, ending with close_notify. An agent whose link is
//! `https://` uses no side connection without a pin, and plain ones only
//! over `http://`. Only on Linux.

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
    raw_tls::{self, rustls::ServerConnection, Identity, Pin},
};
use futures::FutureExt;
use tokio::{
    process::ChildStdout,
    sync::{mpsc, watch},
    task::JoinHandle,
};

pub use cmdop_proto::raw::CAPABILITY;
pub use cmdop_proto::raw_tls::CAPABILITY as CAPABILITY_TLS;

/// Stdout bytes a command sends as ordinary `ExecOutput` before the agent
/// offers a side connection, so that small outputs never pay for one.
pub const RAW_SWITCH_AFTER: u64 = 1024 * 1024;
/// Longest wait in poll(2) for more output before the loop looks at the
/// stop flag and the command's exit again.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// Most bytes moved by one splice(2) call.
const MAX_SPLICE: usize = 1024 * 1024;
/// Stdout bytes read from the pipe per round on a TLS side connection.
const TLS_READ: usize = 256 * 1024;
/// Sealed records held before they must be written to the socket: several
/// per writev(2), bounded memory per command.
const TLS_BUFFER: usize = 512 * 1024;

/// This agent's side-connection identity: one throwaway key and
/// certificate for its lifetime, in memory only. `None` if it cannot be
/// made (then no TLS side connections).
pub fn identity() -> Option<&'static Identity> {
    static IDENTITY: std::sync::OnceLock<Option<Identity>> = std::sync::OnceLock::new();
    IDENTITY
        .get_or_init(|| match Identity::generate() {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(error = %e, "no TLS side connections; bulk stdout stays on gRPC");
                None
            }
        })
        .as_ref()
}

/// The side-connection capabilities this agent lists when its control
/// plane URL is `server_url` (empty: none, it would not use them): plain
/// ones only over `http://`, TLS ones over either; only where splice
/// exists.
pub fn capabilities_for(server_url: &str) -> Vec<&'static str> {
    let Some(addr) = ServerAddr::from_url(server_url).filter(|_| cfg!(target_os = "linux")) else {
        return Vec::new();
    };
    let mut caps = Vec::with_capacity(2);
    if !addr.tls {
        caps.push(CAPABILITY);
    }
    if identity().is_some() {
        caps.push(CAPABILITY_TLS);
    }
    caps
}

/// Host and port of the control plane, and whether the agent's link to it
/// is TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerAddr {
    host: String,
    port: u16,
    tls: bool,
}

impl ServerAddr {
    /// `http://host[:port][/...]` or `https://...`; `None` for any other
    /// scheme or garbage.
    fn from_url(url: &str) -> Option<Self> {
        let uri: http::Uri = url.parse().ok()?;
        let (tls, default_port) = match uri.scheme_str() {
            Some("http") => (false, 80),
            Some("https") => (true, 443),
            _ => return None,
        };
        // IPv6 literals come bracketed; connecting wants the bare address.
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return None;
        }
        Some(ServerAddr {
            host: host.to_owned(),
            port: uri.port_u16().unwrap_or(default_port),
            tls,
        })
    }
}

/// An accepted side connection, blocking, ready for [`send_rest`].
pub(crate) enum SideConn {
    /// Plain bytes, moved with splice(2).
    Plain(TcpStream),
    /// TLS after a completed handshake with the pinned caller.
    Tls(TcpStream, Box<ServerConnection>),
}

impl SideConn {
    pub(crate) fn socket(&self) -> &TcpStream {
        match self {
            SideConn::Plain(s) | SideConn::Tls(s, _) => s,
        }
    }
}

/// Where and how this agent opens one side connection: the control
/// plane's address, the opening with the ticket, and the caller's pin for a
/// TLS one. Shared by Exec stdout and downloads.
#[derive(Clone)]
pub(crate) struct SideTarget {
    addr: ServerAddr,
    opening: [u8; OPENING_LEN],
    /// The caller's pin, for a TLS side connection.
    tls: Option<Pin>,
}

impl SideTarget {
    /// The target for `ticket`, when the agent may use it with its control
    /// plane (`server_url`): with the caller's pin (`peer_pin`, 32 bytes) a
    /// TLS one, without it a plain one, but only when the agent's own link
    /// is plaintext. `what` names the exec or transfer in the log.
    pub(crate) fn new(
        what: &str,
        ticket: &str,
        peer_pin: &[u8],
        server_url: Option<&str>,
    ) -> Option<Self> {
        if ticket.is_empty() || !cfg!(target_os = "linux") {
            return None;
        }
        let addr = server_url.and_then(ServerAddr::from_url)?;
        let tls = match raw_tls::parse_pin(peer_pin) {
            Some(pin) if identity().is_some() => Some(pin),
            None if peer_pin.is_empty() && !addr.tls => None,
            _ => {
                tracing::debug!(what, "no usable caller pin over TLS; no side connection");
                return None;
            }
        };
        let Some(opening) = raw::opening(Role::Agent, ticket) else {
            tracing::debug!(what, "malformed raw ticket; no side connection");
            return None;
        };
        Some(SideTarget { addr, opening, tls })
    }

    /// This agent's pin, to send with the offer of a TLS side connection
    /// (empty for a plain one).
    pub(crate) fn agent_pin(&self) -> bytes::Bytes {
        match (self.tls, identity()) {
            (Some(_), Some(id)) => bytes::Bytes::copy_from_slice(&id.pin()),
            _ => bytes::Bytes::new(),
        }
    }

    /// Connects and, when paired, runs the TLS handshake if there is one;
    /// the socket comes back in blocking mode.
    pub(crate) async fn connect(&self) -> io::Result<SideConn> {
        handshake(&self.addr, &self.opening, self.tls).await
    }
}

/// One command's way from gRPC to a side connection, driven by its stdout
/// pump: offer once enough stdout went over gRPC, then watch the handshake.
pub(crate) struct RawSwitch {
    exec_id: String,
    target: SideTarget,
    stage: Stage,
}

enum Stage {
    /// Less than [`RAW_SWITCH_AFTER`] bytes sent so far.
    Waiting,
    /// `raw_offered` sent; the handshake runs in this task.
    Handshaking(JoinHandle<Option<SideConn>>),
    /// Switched, or given up: nothing more to do.
    Over,
}

impl RawSwitch {
    /// A switch for this command, when it carries a ticket and the agent
    /// may use it with its control plane (`server_url`), see
    /// [`SideTarget::new`].
    pub(crate) fn new(
        exec_id: &str,
        ticket: &str,
        peer_pin: &[u8],
        server_url: Option<&str>,
    ) -> Option<Self> {
        let target = SideTarget::new(exec_id, ticket, peer_pin, server_url)?;
        Some(RawSwitch {
            exec_id: exec_id.to_owned(),
            target,
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
        let agent_pin = self.target.agent_pin();
        let offered = AgentUplink {
            msg: Some(agent_uplink::Msg::RawOffered(ExecRawOffered {
                exec_id: self.exec_id.clone(),
                raw_tls_agent_sha256: agent_pin,
            })),
        };
        if sink.send(offered).await.is_err() {
            self.stage = Stage::Over;
            return false;
        }
        let (exec_id, target) = (self.exec_id.clone(), self.target.clone());
        self.stage = Stage::Handshaking(tokio::spawn(async move {
            match target.connect().await {
                Ok(socket) => Some(socket),
                Err(e) => {
                    tracing::debug!(exec_id, host = %target.addr.host, port = target.addr.port, error = %e,
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
    pub(crate) fn accepted(&mut self) -> Option<SideConn> {
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

/// The agent's handshake ([`raw::connect`]), then with `tls` (the caller's
/// pin) the TLS one as server; the socket comes back in blocking mode,
/// ready for [`send_rest`].
async fn handshake(
    addr: &ServerAddr,
    opening: &[u8; OPENING_LEN],
    tls: Option<Pin>,
) -> io::Result<SideConn> {
    let socket = raw::connect((addr.host.as_str(), addr.port), opening).await?;
    let conn = match tls {
        None => SideConn::Plain(socket.into_std()?),
        Some(caller) => {
            let identity = identity().ok_or_else(|| io::Error::other("no side-connection key"))?;
            let (socket, mut tls) = raw_tls::accept(identity, caller, socket).await?;
            tls.set_buffer_limit(Some(TLS_BUFFER));
            SideConn::Tls(socket.into_std()?, Box::new(tls))
        }
    };
    conn.socket().set_nonblocking(false)?;
    Ok(conn)
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
    conn: SideConn,
    exited: watch::Receiver<bool>,
    grace: Duration,
    moved: Arc<AtomicU64>,
) -> u64 {
    let pipe = match stdout.into_owned_fd() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "cannot take the stdout pipe; the side connection gets no data");
            let _ = conn.socket().shutdown(Shutdown::Write);
            return 0;
        }
    };
    let mut guard = match StopOnDrop::new(conn.socket()) {
        Ok(guard) => guard,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the side connection; it gets no data");
            let _ = conn.socket().shutdown(Shutdown::Write);
            return 0;
        }
    };
    let stop = Arc::clone(&guard.stop);
    let counter = Arc::clone(&moved);
    let copy = tokio::task::spawn_blocking(move || match conn {
        SideConn::Plain(socket) => {
            splice_until_done(&pipe, &socket, &exited, grace, &stop, &counter)
        }
        SideConn::Tls(socket, mut tls) => {
            seal_until_done(&pipe, &socket, &mut tls, &exited, grace, &stop, &counter)
        }
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
pub(crate) struct StopOnDrop {
    stop: Arc<AtomicBool>,
    socket: Option<TcpStream>,
}

impl StopOnDrop {
    pub(crate) fn new(socket: &TcpStream) -> io::Result<Self> {
        Ok(StopOnDrop {
            stop: Arc::default(),
            socket: Some(socket.try_clone()?),
        })
    }

    /// The flag the copy thread watches.
    pub(crate) fn stop(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// The copy ended by itself; leave its socket alone.
    pub(crate) fn disarm(&mut self) {
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

/// Makes the stdout pipe non-blocking, for the copy loops.
#[cfg(target_os = "linux")]
fn pipe_nonblocking(pipe: &OwnedFd) -> bool {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let nonblocking = fcntl(pipe, FcntlArg::F_GETFL)
        .map(|bits| OFlag::from_bits_truncate(bits) | OFlag::O_NONBLOCK)
        .and_then(|flags| fcntl(pipe, FcntlArg::F_SETFL(flags)));
    if let Err(e) = nonblocking {
        tracing::warn!(error = %e, "cannot make the stdout pipe non-blocking");
        return false;
    }
    true
}

/// The pipe is empty: waits up to [`IDLE_POLL`] for more. After the
/// command exited only this waiting counts against `grace`; `Some` when the
/// copy is to end (grace spent, or poll failed).
#[cfg(target_os = "linux")]
fn wait_for_pipe(
    pipe: &OwnedFd,
    exited: &watch::Receiver<bool>,
    grace: &mut Duration,
) -> Option<CopyEnd> {
    use nix::{
        errno::Errno,
        poll::{poll, PollFd, PollFlags, PollTimeout},
    };
    let after_exit = *exited.borrow();
    if after_exit && grace.is_zero() {
        return Some(CopyEnd::Finished);
    }
    let wait = if after_exit {
        IDLE_POLL.min(*grace)
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
            return Some(CopyEnd::Failed);
        }
    }
    if after_exit {
        *grace = grace.saturating_sub(began.elapsed());
    }
    None
}

/// The blocking copy loop of [`send_rest`] for a plain side connection.
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
        fcntl::{splice, SpliceFFlags},
    };

    if !pipe_nonblocking(pipe) {
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
                if let Some(end) = wait_for_pipe(pipe, exited, &mut grace) {
                    break end;
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

/// Writes every sealed record `tls` holds to the blocking `socket`.
pub(crate) fn flush_records(tls: &mut ServerConnection, mut socket: &TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        tls.write_tls(&mut socket)?;
    }
    Ok(())
}

/// The blocking copy loop of [`send_rest`] for a TLS side connection:
/// like [`splice_until_done`], but each round reads up to [`TLS_READ`]
/// bytes of stdout, seals them and writes the records (several per
/// writev(2), at most [`TLS_BUFFER`] held). A finished copy ends with
/// close_notify, so the caller can tell the end from a cut connection.
#[cfg(target_os = "linux")]
fn seal_until_done(
    pipe: &OwnedFd,
    socket: &TcpStream,
    tls: &mut ServerConnection,
    exited: &watch::Receiver<bool>,
    mut grace: Duration,
    stop: &AtomicBool,
    moved: &AtomicU64,
) -> CopyEnd {
    use nix::errno::Errno;
    use std::io::Write;

    if !pipe_nonblocking(pipe) {
        return CopyEnd::Failed;
    }
    let mut buf = vec![0u8; TLS_READ];
    let end = loop {
        if stop.load(Ordering::Relaxed) {
            break CopyEnd::Stopped;
        }
        let n = match nix::unistd::read(pipe, &mut buf) {
            Ok(0) => break CopyEnd::Finished,
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => {
                if let Some(end) = wait_for_pipe(pipe, exited, &mut grace) {
                    break end;
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the stdout pipe");
                break CopyEnd::Failed;
            }
        };
        let mut rest = &buf[..n];
        let written = loop {
            // Takes what fits under the buffer limit; the flush makes room.
            match tls.writer().write(rest) {
                Ok(k) => rest = &rest[k..],
                Err(e) => break Err(e),
            }
            if let Err(e) = flush_records(tls, socket) {
                break Err(e);
            }
            if rest.is_empty() {
                break Ok(());
            }
        };
        match written {
            Ok(()) => {
                moved.fetch_add(n as u64, Ordering::Relaxed);
            }
            // The guard shut the socket down: any error is the cancel.
            Err(_) if stop.load(Ordering::Relaxed) => break CopyEnd::Stopped,
            Err(e) => {
                tracing::debug!(error = %e, "the TLS side connection failed; its caller went away");
                break CopyEnd::Failed;
            }
        }
    };
    if end == CopyEnd::Finished {
        tls.send_close_notify();
        let closed = flush_records(tls, socket).and_then(|()| socket.shutdown(Shutdown::Write));
        if let Err(e) = closed {
            tracing::debug!(error = %e, "cannot close the TLS side connection");
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

/// Never used off Linux: [`RawSwitch::new`] never switches there.
#[cfg(not(target_os = "linux"))]
fn seal_until_done(
    _pipe: &OwnedFd,
    socket: &TcpStream,
    _tls: &mut ServerConnection,
    _exited: &watch::Receiver<bool>,
    _grace: Duration,
    _stop: &AtomicBool,
    _moved: &AtomicU64,
) -> CopyEnd {
    let _ = socket.shutdown(Shutdown::Write);
    CopyEnd::Failed
}

#[cfg(test)]
mod tests;
