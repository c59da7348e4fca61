//! The async client core: one [`Client`] per control plane and set of
//! credentials. Cheap to clone (an `Arc` inside) and safe to use from many
//! tasks and threads at once; all clones share one HTTP/2 connection.

mod attach;
mod cancel;
mod connection;
pub(crate) mod delivery;
mod disk;
mod error;
mod events;
mod exec;
mod exec_native;
mod exec_side;
mod exec_stdin;
mod exec_terminal;
mod exec_tty;
mod fanout;
mod fanout_server;
mod files;
mod fleet;
mod log;
mod machine;
mod marker;
mod sessions;
mod transfer;
mod transfer_side;

#[cfg(test)]
mod live_tests;

use parking_lot::{Mutex, RwLock};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

pub use attach::{AttachEvent, AttachHandle};
pub use cancel::CancelToken;
pub use connection::{ConnState, ConnectionInfo};
pub use disk::TransferOptions;
pub use error::{Error, ErrorKind, NextStep, Result};
pub use events::{Event, EventHandler, EventKind};
pub use exec::{ExecOptions, ExecOutput, Stream};
pub use exec_stdin::{stdin_pipe, StdinReader, StdinWriter};
pub use exec_tty::Terminal;
pub(crate) use fanout::{fleet_feed, FleetMsg};
pub use fanout::{
    Batch, FleetEvent, FleetExec, MachineResult, NotRun, Outcome, DEFAULT_PARALLEL,
    MAX_FLEET_PARALLEL,
};
pub use files::{FileEntry, FileKind, FileList};
pub(crate) use files::{MAX_READ_BYTES, MAX_WRITE_BYTES};
pub use fleet::FleetMachine;
pub use log::{set_log_sink, LogLevel, LogSink};
pub use machine::MachineInfo;
pub use options::{
    tls_by_default, ClientOptions, Credentials, TlsRuleError, DEFAULT_REMOTE_SERVER,
};
pub use sessions::SessionInfo;

mod options;

use connection::{Conn, ServerFacts};
use events::EventDispatcher;

/// A connection to one CMDOP control plane. See the module docs.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// Small number used to tell clients apart in logs and thread names.
    id: u64,
    opts: ClientOptions,
    /// The live channel and stubs; `None` before connecting and after close.
    conn: RwLock<Option<Conn>>,
    state: watch::Sender<ConnState>,
    /// Current credentials; tokens are swapped by refreshes.
    creds: Mutex<Credentials>,
    /// Serialises token refreshes (one refresh for many failing calls).
    refresh_lock: tokio::sync::Mutex<()>,
    /// What the server told us at connect time.
    facts: Mutex<ServerFacts>,
    /// The selected machine.
    machine: Mutex<Option<MachineInfo>>,
    events: EventDispatcher,
    /// Pokes the supervisor to check the connection now.
    trouble: Arc<Notify>,
    /// The servers to use, as URIs, in the order given (one without a list).
    servers: Vec<String>,
    /// Index in `servers` of the one in use (or last tried).
    current: Mutex<usize>,
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// One lock per terminal session: commands typed into one shell must
    /// not interleave, so terminal-path executes on a session take turns.
    terminals: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Cancelled (and replaced by a fresh token) when the application
    /// closes the client: calls in flight take the current one when they
    /// start and stop when it fires.
    closing: Mutex<CancelToken>,
    /// This client's side-connection key and certificate, made on first
    /// use over TLS and kept in memory only (`None` if that failed).
    side_identity: std::sync::OnceLock<Option<Arc<cmdop_proto::raw_tls::Identity>>>,
}

static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

impl Client {
    /// Create a client without touching the network; call
    /// [`open`](Self::open) to connect. Installing event handlers between the
    /// two lets the application see the first `Connected` event.
    pub fn new(opts: ClientOptions) -> Result<Client> {
        if opts.servers.is_empty() && opts.server.trim().is_empty() {
            return Err(Error::InvalidArgument(
                "server address is empty: pass host:port".into(),
            ));
        }
        if let Some(i) = opts.servers.iter().position(|s| s.trim().is_empty()) {
            return Err(Error::InvalidArgument(format!(
                "entry {i} of the server list is empty: pass host:port for every server"
            )));
        }
        let servers = opts.endpoint_uris();
        if opts.timeout.is_zero() {
            return Err(Error::InvalidArgument(
                "timeout must be greater than zero".into(),
            ));
        }
        let id = NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed);
        let events = EventDispatcher::spawn(id)
            .map_err(|e| Error::Internal(format!("cannot start the event thread: {e}")))?;
        let (state, _) = watch::channel(ConnState::Idle);
        Ok(Client {
            inner: Arc::new(Inner {
                id,
                creds: Mutex::new(opts.credentials.clone()),
                opts,
                conn: RwLock::new(None),
                state,
                refresh_lock: tokio::sync::Mutex::new(()),
                facts: Mutex::new(ServerFacts::default()),
                machine: Mutex::new(None),
                events,
                trouble: Arc::new(Notify::new()),
                servers,
                current: Mutex::new(0),
                supervisor: Mutex::new(None),
                terminals: Mutex::new(std::collections::HashMap::new()),
                closing: Mutex::new(CancelToken::new()),
                side_identity: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Create a client and connect it.
    pub async fn connect(opts: ClientOptions) -> Result<Client> {
        let client = Client::new(opts)?;
        client.open().await?;
        Ok(client)
    }

    /// The options this client was created with (credentials as given).
    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// Install or remove the handler of one event kind. Handlers run on this
    /// client's event thread, one at a time, in order.
    pub fn set_event_handler(&self, kind: EventKind, handler: Option<EventHandler>) -> Result<()> {
        if self.inner.events.set_handler(kind, handler) {
            Ok(())
        } else {
            Err(Error::Unavailable(
                "the event queue is full; try again".into(),
            ))
        }
    }

    /// The machine selected by [`set_machine`](Self::set_machine), if any.
    pub fn machine(&self) -> Option<MachineInfo> {
        self.inner.machine.lock().clone()
    }

    /// Current credentials (e.g. to persist rotated tokens).
    pub fn credentials(&self) -> Credentials {
        self.inner.creds.lock().clone()
    }
}

impl Inner {
    fn log(&self, level: LogLevel, message: impl FnOnce() -> String) {
        log::log(self.opts.debug, level, || {
            format!("client {}: {}", self.id, message())
        });
    }

    /// URI of the server in use (or last tried).
    /// This client's side-connection identity, made on first use.
    fn side_identity(&self) -> Option<Arc<cmdop_proto::raw_tls::Identity>> {
        self.side_identity
            .get_or_init(|| match cmdop_proto::raw_tls::Identity::generate() {
                Ok(id) => Some(Arc::new(id)),
                Err(e) => {
                    self.log(LogLevel::Warn, || {
                        format!("{e}; large stdout stays on the Exec stream")
                    });
                    None
                }
            })
            .clone()
    }

    fn current_server(&self) -> String {
        let i = *self.current.lock();
        self.servers.get(i).cloned().unwrap_or_default()
    }

    fn emit(&self, event: Event) {
        self.events.emit(event);
    }

    /// Report a failed call to the error handler and return it.
    fn report(&self, err: Error) -> Error {
        if err.kind() != ErrorKind::Cancelled {
            self.log(LogLevel::Debug, || format!("error: {err}"));
            self.emit(Event::Error {
                kind: err.kind(),
                message: err.to_string(),
            });
        }
        err
    }
}
