//! A command's output on its way to the control plane: one pump per pipe
//! forwards what the command writes as `output` messages, within the window
//! of un-credited bytes the control plane allows (when it asked for one),
//! and may hand stdout over to a side connection.

use parking_lot::Mutex;
use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{BufMut, Bytes, BytesMut};
use cmdop_proto::{
    ext::{agent_uplink, AgentUplink, ExecOutput, ExecWindow},
    limits::OUTPUT_CHUNK_BYTES as MAX_OUTPUT_CHUNK,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    sync::{mpsc, watch},
};

use crate::exec_raw::{self, RawSwitch};

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
/// Smallest window accepted from the control plane, so that a zero or tiny
/// window cannot stop output altogether.
const MIN_WINDOW_BYTES: u64 = 64 * 1024;

/// Asks for a larger pipe buffer; the default size is kept if refused.
pub(super) fn grow_pipe(pipe: &impl std::os::fd::AsFd) {
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

/// One command's output not yet credited by the control plane, shared by
/// its stdout and stderr pumps.
#[derive(Clone)]
pub(super) struct OutputWindow {
    max_bytes: u64,
    max_chunks: usize,
    credit: watch::Receiver<u64>,
    sent: Arc<Mutex<SentOutput>>,
}

/// Output sent so far: total bytes, and where each un-credited chunk ended.
#[derive(Default)]
struct SentOutput {
    bytes: u64,
    chunk_ends: VecDeque<u64>,
}

impl OutputWindow {
    pub(super) fn new(window: ExecWindow, credit: watch::Receiver<u64>) -> Self {
        OutputWindow {
            max_bytes: window.bytes.max(MIN_WINDOW_BYTES),
            max_chunks: usize::try_from(window.chunks.max(2)).unwrap_or(usize::MAX),
            credit,
            sent: Arc::default(),
        }
    }

    /// Waits until more output may be sent. False when the credit sender is
    /// gone (the command was cancelled or the Channel closed).
    async fn wait_for_room(&mut self) -> bool {
        loop {
            let credited = *self.credit.borrow_and_update();
            {
                let mut sent = self.sent.lock();
                while sent.chunk_ends.front().is_some_and(|end| *end <= credited) {
                    sent.chunk_ends.pop_front();
                }
                let in_flight = sent.bytes.saturating_sub(credited);
                if in_flight < self.max_bytes && sent.chunk_ends.len() < self.max_chunks {
                    return true;
                }
            }
            if self.credit.changed().await.is_err() {
                return false;
            }
        }
    }

    /// Counts one chunk of `len` bytes as sent.
    fn record(&self, len: usize) {
        let mut sent = self.sent.lock();
        sent.bytes += len as u64;
        let end = sent.bytes;
        sent.chunk_ends.push_back(end);
    }
}

/// Forwards one pipe of a command as `output` messages.
pub(super) struct Pump {
    pub(super) exec_id: String,
    pub(super) is_stderr: bool,
    pub(super) sink: mpsc::Sender<AgentUplink>,
    /// Flow control, when the control plane asked for it.
    pub(super) window: Option<OutputWindow>,
    /// Turns true once the command exited; reads then get [`DRAIN_GRACE`]
    /// in total.
    pub(super) exited: watch::Receiver<bool>,
    /// Stdout only: the way to a side connection, when there is one.
    pub(super) raw: Option<RawSwitch>,
}

/// How a [`Pump`] ended.
pub(super) enum PumpEnd {
    /// Nothing more to forward from the pipe.
    Done,
    /// `raw_switched` is sent: the rest of the pipe goes to `socket`, with
    /// what is left of the drain grace.
    Switched {
        socket: exec_raw::SideConn,
        grace: Duration,
    },
}

impl Pump {
    /// Runs until EOF, a read error, the end of the drain grace, the loss
    /// of the uplink or of the credit, or a switch to a side connection.
    pub(super) async fn run(mut self, mut pipe: impl AsyncRead + Unpin) -> PumpEnd {
        let mut buf = BytesMut::new();
        let mut grace = DRAIN_GRACE;
        // Bytes of this pipe sent as `output` messages.
        let mut sent = 0u64;
        loop {
            if let Some(window) = self.window.as_mut() {
                if !window.wait_for_room().await {
                    return PumpEnd::Done;
                }
            }
            if let Some(raw) = self.raw.as_mut() {
                if let Some(socket) = raw.accepted() {
                    // Everything read so far is queued ahead of this.
                    return match self.sink.send(raw.switched_msg()).await {
                        Ok(()) => PumpEnd::Switched { socket, grace },
                        Err(_) => PumpEnd::Done,
                    };
                }
            }
            buf.clear();
            buf.reserve(MAX_OUTPUT_CHUNK);
            // `read_buf` fills at most the spare capacity; cap it at one chunk.
            let mut limited = (&mut buf).limit(MAX_OUTPUT_CHUNK);
            let read = pipe.read_buf(&mut limited);
            tokio::pin!(read);
            let mut result = None;
            if !*self.exited.borrow() {
                tokio::select! {
                    r = &mut read => result = Some(r),
                    _ = self.exited.wait_for(|exited| *exited) => {}
                }
            }
            let n = match result {
                Some(r) => r,
                None => {
                    // The command exited: spend what is left of the grace.
                    let began = Instant::now();
                    let r = tokio::time::timeout(grace, read).await;
                    grace = grace.saturating_sub(began.elapsed());
                    match r {
                        Ok(r) => r,
                        Err(_) => return PumpEnd::Done,
                    }
                }
            };
            let n = match n {
                Ok(0) | Err(_) => return PumpEnd::Done,
                Ok(n) => n,
            };
            let data = if n < COPY_BELOW {
                Bytes::copy_from_slice(&buf[..n])
            } else {
                buf.split().freeze()
            };
            if let Some(window) = &self.window {
                window.record(n);
            }
            let msg = AgentUplink {
                msg: Some(agent_uplink::Msg::Output(ExecOutput {
                    exec_id: self.exec_id.clone(),
                    data,
                    is_stderr: self.is_stderr,
                })),
            };
            if self.sink.send(msg).await.is_err() {
                return PumpEnd::Done;
            }
            sent += n as u64;
            if let Some(raw) = self.raw.as_mut() {
                if !raw.after_output(sent, &self.sink).await {
                    return PumpEnd::Done;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(bytes: u64, chunks: u32) -> (watch::Sender<u64>, OutputWindow) {
        let (tx, rx) = watch::channel(0);
        (tx, OutputWindow::new(ExecWindow { bytes, chunks }, rx))
    }

    async fn has_room(w: &mut OutputWindow) -> bool {
        tokio::time::timeout(Duration::from_millis(50), w.wait_for_room())
            .await
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn a_spent_byte_window_waits_for_credit() {
        let (credit, mut w) = window(MIN_WINDOW_BYTES, 100);
        assert!(has_room(&mut w).await);
        w.record(MIN_WINDOW_BYTES as usize);
        assert!(!has_room(&mut w).await, "the window is spent");
        credit.send_replace(1);
        assert!(has_room(&mut w).await, "one credited byte reopens it");
    }

    #[tokio::test]
    async fn a_spent_chunk_window_waits_for_credit() {
        let (credit, mut w) = window(1 << 20, 2);
        w.record(10);
        w.record(10);
        assert!(!has_room(&mut w).await, "two chunks in flight");
        credit.send_replace(9);
        assert!(
            !has_room(&mut w).await,
            "the first chunk is not fully credited"
        );
        credit.send_replace(10);
        assert!(has_room(&mut w).await);
    }

    #[tokio::test]
    async fn losing_the_credit_sender_stops_the_wait() {
        let (credit, mut w) = window(0, 0);
        w.record(MIN_WINDOW_BYTES as usize);
        drop(credit);
        let waited = tokio::time::timeout(Duration::from_secs(1), w.wait_for_room()).await;
        assert_eq!(waited, Ok(false));
    }
}
