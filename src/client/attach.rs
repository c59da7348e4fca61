//! Attaching to a live session: the official ConnectTerminal stream with a
//! register version containing "attach" (docs/PROTOCOL.md, "Attach").

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use cmdop_proto::terminal::agent_message::Payload as Up;
use cmdop_proto::terminal::control_message::Payload as Down;
use cmdop_proto::terminal::{
    AgentMessage, HeartbeatUpdate, RegisterRequest, StatusUpdate, TerminalOutput, TerminalSize,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Client, ConnState, Error, Event, LogLevel, Result};

/// Messages queued towards the server.
const UPLINK_DEPTH: usize = 64;
/// Output chunks queued towards the callback; a slow callback slows the
/// stream down instead of growing memory.
const DELIVERY_DEPTH: usize = 256;
/// Idle heartbeat, as the official SDKs send it.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(25);

/// What an attach callback receives.
#[derive(Debug)]
pub enum AttachEvent<'a> {
    /// Terminal output of the session.
    Output(&'a [u8]),
    /// The stream ended (session closed, agent gone, or error); the last event.
    Ended(&'a str),
}

/// A live attachment; output flows to the callback until [`close`](Self::close).
pub struct AttachHandle {
    session_id: String,
    uplink: mpsc::Sender<AgentMessage>,
    reader: tokio::task::JoinHandle<()>,
    delivery: Mutex<Option<JoinHandle<()>>>,
    closed: Arc<AtomicBool>,
    /// The reader has stopped: writes fail from now on.
    ended: Arc<AtomicBool>,
}

enum Delivery {
    Output(bytes::Bytes),
    Ended(String),
}

impl Client {
    /// Attach to session `session_id`: `on_event` receives its live output
    /// on a dedicated thread, in order, until the handle is closed or the
    /// stream ends.
    pub async fn attach(
        &self,
        session_id: &str,
        mut on_event: impl FnMut(AttachEvent<'_>) + Send + 'static,
    ) -> Result<AttachHandle> {
        if session_id.trim().is_empty() {
            return Err(Error::InvalidArgument("session id is empty".into()));
        }
        let (uplink, rx) = mpsc::channel::<AgentMessage>(UPLINK_DEPTH);
        let register = AgentMessage {
            session_id: session_id.to_string(),
            payload: Some(Up::Register(RegisterRequest {
                version: concat!("libcmdop-", env!("CARGO_PKG_VERSION"), "-attach").into(),
                hostname: local_hostname(),
                platform: std::env::consts::OS.into(),
                initial_size: Some(TerminalSize {
                    rows: 24,
                    cols: 80,
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        uplink
            .send(register)
            .await
            .map_err(|_| Error::Internal("attach uplink closed before use".into()))?;

        let inner = &self.inner;
        let conn_deadline = std::time::Instant::now() + inner.opts.timeout;
        // The request body is a stream, so it cannot be replayed: no retries.
        let stream_rx = Mutex::new(Some(rx));
        let mut stream = inner
            .open_stream(
                "ConnectTerminal",
                (),
                None,
                |mut c, r: tonic::Request<()>| {
                    let rx = stream_rx.lock().take();
                    async move {
                        let Some(rx) = rx else {
                            return Err(tonic::Status::aborted("attach request already sent"));
                        };
                        let mut req = tonic::Request::new(ReceiverStream::new(rx));
                        *req.metadata_mut() = r.metadata().clone();
                        c.terminal.connect_terminal(req).await
                    }
                },
            )
            .await
            .map_err(|e| inner.report(e))?;

        // Wait for the server's start_session: the subscription is live.
        loop {
            let msg = tokio::time::timeout_at(conn_deadline.into(), stream.message())
                .await
                .map_err(|_| inner.report(Error::timeout("attaching", inner.opts.timeout)))?
                .map_err(|s| inner.report(Error::from_status("attaching", &s)))?;
            match msg.and_then(|m| m.payload) {
                Some(Down::StartSession(_)) => break,
                Some(Down::CloseSession(c)) => {
                    return Err(inner.report(Error::NotFound(format!(
                        "the server refused to attach to session '{session_id}': {}",
                        c.reason
                    ))))
                }
                Some(_) => continue,
                None => {
                    return Err(inner.report(Error::NotFound(format!(
                        "the server closed the attach stream for session '{session_id}': check the session id"
                    ))))
                }
            }
        }
        inner.log(LogLevel::Info, || {
            format!("attached to session {session_id}")
        });

        let closed = Arc::new(AtomicBool::new(false));
        // Set before the Ended event is delivered, so a caller told the
        // stream ended never sees a later write succeed.
        let ended = Arc::new(AtomicBool::new(false));
        let ended_in_reader = ended.clone();
        let (deliver_tx, mut deliver_rx) = mpsc::channel::<Delivery>(DELIVERY_DEPTH);
        let closed_for_thread = closed.clone();
        let delivery = std::thread::Builder::new()
            .name("cmdop-attach".into())
            .spawn(move || {
                while let Some(d) = deliver_rx.blocking_recv() {
                    if closed_for_thread.load(Ordering::SeqCst) {
                        break;
                    }
                    match d {
                        Delivery::Output(b) => on_event(AttachEvent::Output(&b)),
                        Delivery::Ended(why) => {
                            on_event(AttachEvent::Ended(&why));
                            break;
                        }
                    }
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the attach thread: {e}")))?;

        let up = uplink.clone();
        let sid = session_id.to_string();
        let weak = Arc::downgrade(&self.inner);
        // Closing the client ends its attachments too.
        let client_closed = client_closed(self.inner.state.subscribe());
        let reader = tokio::spawn(async move {
            tokio::pin!(client_closed);
            let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
            heartbeat.tick().await;
            let why = loop {
                tokio::select! {
                    _ = &mut client_closed => {
                        break "the client was closed".to_string();
                    }
                    m = stream.message() => match m {
                        Ok(Some(msg)) => match msg.payload {
                            Some(Down::Input(i)) => {
                                // Fails only once the handle was closed.
                                let Ok(()) = deliver_tx.send(Delivery::Output(i.data)).await else {
                                    break "closed".to_string();
                                };
                            }
                            Some(Down::Ping(_)) => { let _ = up.try_send(heartbeat_msg(&sid)); }
                            Some(Down::CloseSession(c)) => break format!("session closed: {}", c.reason),
                            _ => {}
                        },
                        Ok(None) => break "the server ended the stream".to_string(),
                        Err(s) => {
                            let e = Error::from_status("attach stream", &s);
                            if let Some(inner) = weak.upgrade() {
                                inner.emit(Event::Error { kind: e.kind(), message: e.to_string() });
                            }
                            break e.to_string();
                        }
                    },
                    _ = heartbeat.tick() => { let _ = up.try_send(heartbeat_msg(&sid)); }
                }
            };
            ended_in_reader.store(true, Ordering::SeqCst);
            let _ = deliver_tx.send(Delivery::Ended(why)).await;
        });

        Ok(AttachHandle {
            session_id: session_id.to_string(),
            uplink,
            reader,
            delivery: Mutex::new(Some(delivery)),
            closed,
            ended,
        })
    }
}

/// Resolves once the client is closed (or dropped).
async fn client_closed(mut state: tokio::sync::watch::Receiver<ConnState>) {
    loop {
        let closed = *state.borrow_and_update() == ConnState::Closed;
        if closed || state.changed().await.is_err() {
            return;
        }
    }
}

fn heartbeat_msg(session_id: &str) -> AgentMessage {
    AgentMessage {
        session_id: session_id.to_string(),
        payload: Some(Up::Heartbeat(HeartbeatUpdate::default())),
        ..Default::default()
    }
}

fn local_hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "libcmdop".into())
}

impl AttachHandle {
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    async fn send(&self, payload: Up) -> Result<()> {
        if self.ended.load(Ordering::SeqCst) || self.reader.is_finished() {
            return Err(Error::Disconnected(
                "the attach stream has ended: attach again".into(),
            ));
        }
        let msg = AgentMessage {
            session_id: self.session_id.clone(),
            payload: Some(payload),
            ..Default::default()
        };
        self.uplink
            .send(msg)
            .await
            .map_err(|_| Error::Disconnected("the attach stream has ended: attach again".into()))
    }

    /// Type `data` into the session's terminal.
    pub async fn send_input(&self, data: &[u8]) -> Result<()> {
        self.send(Up::Output(TerminalOutput {
            data: bytes::Bytes::copy_from_slice(data),
            ..Default::default()
        }))
        .await
    }

    /// Resize the session's terminal.
    pub async fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        self.send(Up::Status(StatusUpdate {
            reason: format!("resize:{cols}x{rows}"),
            ..Default::default()
        }))
        .await
    }

    /// Send a signal to the session's foreground job.
    pub async fn signal(&self, signal: i32) -> Result<()> {
        self.send(Up::Status(StatusUpdate {
            reason: format!("signal:{signal}"),
            ..Default::default()
        }))
        .await
    }

    /// Detach. No callback starts once this is called (even before the
    /// returned future runs, so a callback that closes its own stream, and
    /// only spawns the future, is the last one); after the future completes
    /// no callback is running either.
    pub fn close(self) -> impl std::future::Future<Output = ()> + Send {
        self.closed.store(true, Ordering::SeqCst);
        async move { self.detach().await }
    }

    async fn detach(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = tokio::time::timeout(
            Duration::from_millis(200),
            self.send(Up::Status(StatusUpdate {
                reason: "detach".into(),
                ..Default::default()
            })),
        )
        .await;
        self.reader.abort();
        let handle = self.delivery.lock().take();
        if let Some(h) = handle {
            if h.thread().id() != std::thread::current().id() {
                let _ = tokio::task::spawn_blocking(move || h.join()).await;
            }
        }
    }
}

impl Drop for AttachHandle {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        self.reader.abort();
    }
}
