//! Stdin streamed into a running command (`cmdop.ext.v1.Cmdop/ExecWithStdin`,
//! capability `exec-stdin.v1`): the caller writes through a [`StdinWriter`]
//! while the command runs and closes it for EOF.

use std::sync::Arc;

use bytes::Bytes;
use cmdop_proto::ext::{exec_input, ExecInput};
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};

use super::{Error, Result};

/// Capability the server lists when it serves ExecWithStdin.
pub(crate) use cmdop_proto::caps::EXEC_STDIN as CAP_EXEC_STDIN;
/// Largest stdin message: one transfer chunk, as the control plane's
/// message limit for ExecWithStdin expects.
const CHUNK_BYTES: usize = cmdop_proto::limits::TRANSFER_CHUNK_BYTES;
/// Messages buffered between the writer and the call.
const QUEUE: usize = 4;

enum Step {
    Data(Bytes),
    Close,
    Resize(super::Terminal),
}

/// The writing end of a command's stdin. Cloneable; stdin is closed (the
/// command sees EOF) by [`close`](Self::close) or once every clone is
/// dropped. Writes wait while the command does not keep up: memory stays
/// bounded by a few MiB.
#[derive(Clone)]
pub struct StdinWriter {
    tx: mpsc::Sender<Step>,
}

/// The reading end, handed to [`super::Client::execute_piped`].
pub struct StdinReader {
    rx: mpsc::Receiver<Step>,
}

/// A new stdin pipe for [`super::Client::execute_piped`].
pub fn stdin_pipe() -> (StdinWriter, StdinReader) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (StdinWriter { tx }, StdinReader { rx })
}

fn gone() -> Error {
    Error::OperationFailed(
        "the command no longer takes stdin: its call ended (see the execute's result)".into(),
    )
}

impl StdinWriter {
    /// Sends `data` to the command's stdin, waiting for room.
    pub async fn write(&self, data: &[u8]) -> Result<()> {
        for piece in data.chunks(CHUNK_BYTES) {
            self.tx
                .send(Step::Data(Bytes::copy_from_slice(piece)))
                .await
                .map_err(|_| gone())?;
        }
        Ok(())
    }

    /// [`write`](Self::write) for threads outside the async runtime.
    pub fn write_blocking(&self, data: &[u8]) -> Result<()> {
        for piece in data.chunks(CHUNK_BYTES) {
            self.tx
                .blocking_send(Step::Data(Bytes::copy_from_slice(piece)))
                .map_err(|_| gone())?;
        }
        Ok(())
    }

    /// Closes the command's stdin after what was written.
    pub async fn close(&self) -> Result<()> {
        self.tx.send(Step::Close).await.map_err(|_| gone())
    }

    /// [`close`](Self::close) for threads outside the async runtime.
    pub fn close_blocking(&self) -> Result<()> {
        self.tx.blocking_send(Step::Close).map_err(|_| gone())
    }

    /// Gives the command's terminal ([`super::ExecOptions::terminal`]) a
    /// new size (`term` is not used), in order with what was written
    /// before; ignored for a command without a terminal.
    pub async fn resize(&self, size: super::Terminal) -> Result<()> {
        self.tx.send(Step::Resize(size)).await.map_err(|_| gone())
    }
}

/// The request side of one ExecWithStdin call, cheap to clone so that the
/// call can be retried after a token refresh. Stdin is taken only once the
/// server accepted the call (`opened`), so a refused attempt loses none.
#[derive(Clone)]
pub(crate) struct PipedInput {
    start: ExecInput,
    reader: Arc<tokio::sync::Mutex<Option<StdinReader>>>,
    opened: watch::Receiver<bool>,
}

impl PipedInput {
    /// The input for `start` and stdin from `reader`, and the switch that
    /// lets stdin flow once the call is accepted.
    pub(crate) fn new(
        start: cmdop_proto::ext::ExecRequest,
        reader: StdinReader,
    ) -> (PipedInput, watch::Sender<bool>) {
        let (open_tx, opened) = watch::channel(false);
        let input = PipedInput {
            start: ExecInput {
                part: Some(exec_input::Part::Start(start)),
            },
            reader: Arc::new(tokio::sync::Mutex::new(Some(reader))),
            opened,
        };
        (input, open_tx)
    }

    /// The message stream of one attempt: `start`, then (once opened) the
    /// stdin steps; it ends after `close` or when every writer is gone.
    pub(crate) fn into_stream(self) -> impl Stream<Item = ExecInput> + Send + 'static {
        let PipedInput {
            start,
            reader,
            mut opened,
        } = self;
        let rest = futures::stream::once(async move {
            if opened.wait_for(|o| *o).await.is_err() {
                return None;
            }
            reader.lock().await.take()
        })
        .filter_map(|r| async move { r })
        .flat_map(|r| {
            futures::stream::unfold(Some(r), |state| async move {
                let mut r = state?;
                match r.rx.recv().await {
                    Some(Step::Data(data)) => Some((
                        ExecInput {
                            part: Some(exec_input::Part::Stdin(data)),
                        },
                        Some(r),
                    )),
                    Some(Step::Resize(size)) => Some((
                        ExecInput {
                            part: Some(exec_input::Part::Resize(size.to_wire())),
                        },
                        Some(r),
                    )),
                    // Dropped writers close stdin as `close` does.
                    Some(Step::Close) | None => Some((
                        ExecInput {
                            part: Some(exec_input::Part::CloseStdin(true)),
                        },
                        None,
                    )),
                }
            })
        });
        futures::stream::once(async move { start }).chain(rest)
    }
}
