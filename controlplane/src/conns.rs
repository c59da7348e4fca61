//! Connections from accept to close. Every gRPC connection is wrapped in a
//! [`Guarded`] stream so the server can close it from outside:
//!
//! - a connection that has not sent its first gRPC request (so has not
//!   finished the TLS and HTTP/2 handshakes) within
//!   [`Limits::handshake_timeout`] is closed;
//! - connections that have not made an authenticated call yet are capped at
//!   [`Limits::max_unauthenticated_connections`]: a new one beyond the cap
//!   closes the oldest of them, so idle strangers cannot hold every file
//!   descriptor while real clients (which authenticate on their first call)
//!   are never the ones pushed out.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Weak,
    },
    task::{Context, Poll},
    time::Duration,
};

use parking_lot::{Mutex, MutexGuard};

use futures::task::AtomicWaker;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use crate::config::Limits;

/// What the server knows about one open connection.
pub struct ConnState {
    id: u64,
    remote: Option<SocketAddr>,
    /// A gRPC request arrived on it: the handshakes are done.
    handshaken: AtomicBool,
    /// A call on it passed authentication.
    authenticated: AtomicBool,
    killed: AtomicBool,
    waker: AtomicWaker,
}

impl ConnState {
    /// Closes the connection: its next (or pending) read or write fails.
    fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// Resolves when the connection is closed by the limits. For use only
    /// before the connection is handed to the server (they share a waker).
    async fn killed(&self) {
        futures::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.is_killed() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// Every open gRPC connection of one server.
pub struct Tracker {
    handshake_timeout: Duration,
    max_unauthenticated: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    by_remote: HashMap<SocketAddr, Arc<ConnState>>,
    /// Not yet authenticated, oldest first.
    unauthenticated: BTreeMap<u64, Arc<ConnState>>,
}

impl Tracker {
    pub fn new(limits: &Limits) -> Arc<Tracker> {
        Arc::new(Tracker {
            handshake_timeout: limits.handshake_timeout,
            max_unauthenticated: limits.max_unauthenticated_connections.max(1),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain bookkeeping: still consistent after a panic elsewhere.
        self.inner.lock()
    }

    /// How long a new connection has to finish its handshakes.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// Starts tracking a freshly accepted connection: it is closed unless it
    /// sends a request within the handshake bound, and it may push the
    /// oldest unauthenticated connection out.
    pub fn admit(self: &Arc<Self>, stream: TcpStream) -> Guarded {
        let remote = stream.peer_addr().ok();
        let (conn, evicted) = {
            let mut inner = self.lock();
            inner.next_id += 1;
            let conn = Arc::new(ConnState {
                id: inner.next_id,
                remote,
                handshaken: AtomicBool::new(false),
                authenticated: AtomicBool::new(false),
                killed: AtomicBool::new(false),
                waker: AtomicWaker::new(),
            });
            if let Some(addr) = remote {
                inner.by_remote.insert(addr, conn.clone());
            }
            let mut evicted = None;
            if inner.unauthenticated.len() >= self.max_unauthenticated {
                evicted = inner.unauthenticated.pop_first().map(|(_, c)| c);
            }
            inner.unauthenticated.insert(conn.id, conn.clone());
            (conn, evicted)
        };
        crate::metrics::connections_open(1);
        if let Some(old) = evicted {
            crate::metrics::limit_hit(crate::metrics::Limit::UnauthenticatedConnections);
            tracing::debug!(
                cap = self.max_unauthenticated,
                "too many unauthenticated connections; closing the oldest"
            );
            old.kill();
        }
        let watched: Weak<ConnState> = Arc::downgrade(&conn);
        let timeout = self.handshake_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            if let Some(conn) = watched.upgrade() {
                if !conn.handshaken.load(Ordering::SeqCst) {
                    crate::metrics::limit_hit(crate::metrics::Limit::HandshakeTimeout);
                    tracing::debug!(
                        timeout_ms = timeout.as_millis() as u64,
                        "closing a connection that did not finish its handshake in time"
                    );
                    conn.kill();
                }
            }
        });
        Guarded {
            inner: stream,
            reg: Registration {
                conn,
                tracker: self.clone(),
            },
        }
    }

    /// The connection a request came in on, from the request's extensions.
    pub fn of_request(&self, ext: &http::Extensions) -> Option<Arc<ConnState>> {
        let remote = remote_addr(ext)?;
        self.lock().by_remote.get(&remote).cloned()
    }

    /// A request arrived on `conn`: its handshakes are done.
    pub fn saw_request(&self, conn: &ConnState) {
        conn.handshaken.store(true, Ordering::SeqCst);
    }

    /// A call on `conn` passed authentication: it no longer counts against
    /// the cap on unauthenticated connections.
    pub fn authenticated(&self, conn: &ConnState) {
        if !conn.authenticated.swap(true, Ordering::SeqCst) {
            self.lock().unauthenticated.remove(&conn.id);
        }
    }

    fn forget(&self, conn: &ConnState) {
        let mut inner = self.lock();
        inner.unauthenticated.remove(&conn.id);
        if let Some(addr) = conn.remote {
            if inner.by_remote.get(&addr).is_some_and(|c| c.id == conn.id) {
                inner.by_remote.remove(&addr);
            }
        }
    }
}

/// A TCP connection the server can close from outside (see [`Tracker`]).
pub struct Guarded {
    inner: TcpStream,
    reg: Registration,
}

/// Keeps a connection in its tracker until dropped.
struct Registration {
    conn: Arc<ConnState>,
    tracker: Arc<Tracker>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        crate::metrics::connections_open(-1);
        self.tracker.forget(&self.conn);
    }
}

impl Guarded {
    /// The socket, for peeking at the first byte.
    pub fn tcp(&self) -> &TcpStream {
        &self.inner
    }

    /// Resolves when the limits close this connection (see
    /// [`ConnState::killed`]).
    pub async fn killed(&self) {
        self.reg.conn.killed().await
    }

    /// Stops tracking (a side connection, which has its own time limits)
    /// and hands the socket back.
    pub fn into_tcp(self) -> TcpStream {
        let Guarded { inner, reg } = self;
        drop(reg);
        inner
    }

    fn closed() -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "connection closed by the server's connection limits",
        )
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.reg.conn.is_killed() {
            return Poll::Ready(Err(Self::closed()));
        }
        self.reg.conn.waker.register(cx.waker());
        // Killed between the check and the registration: seen here.
        if self.reg.conn.is_killed() {
            return Poll::Ready(Err(Self::closed()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.reg.conn.is_killed() {
            return Poll::Ready(Err(Self::closed()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.reg.conn.is_killed() {
            return Poll::Ready(Err(Self::closed()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Raises this process's soft limit on open files to its hard limit, so
/// connection limits (not the default 1024 descriptors) decide how many
/// peers are served. Logs what it got.
pub fn raise_fd_limit() {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok((soft, hard)) if soft < hard => {
                match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                    Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-file limit"),
                    Err(e) => {
                        tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit; raise it with `ulimit -n`")
                    }
                }
            }
            Ok((soft, _)) => tracing::info!(limit = soft, "open-file limit"),
            Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
        }
    }
}

/// The peer address of the connection a request arrived on (plain or TLS).
pub fn remote_addr(ext: &http::Extensions) -> Option<SocketAddr> {
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|t| t.get_ref().remote_addr())
        })
}
