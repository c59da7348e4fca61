//! `Cmdop.Download`: agent chunks → client, crediting the agent for each
//! chunk the client's stream accepted.

use std::pin::Pin;

use cmdop_proto::ext::{
    download_chunk::Part, file_downlink::Op, file_uplink::Event, DownloadChunk, DownloadRequest,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{Target, Transfer, DOWNLOAD_CLIENT_QUEUE, TRANSFER_IDLE_TIMEOUT};
use crate::{state::State, store::Workspace};

/// Response stream of Download.
pub type DownloadStream =
    Pin<Box<dyn Stream<Item = Result<DownloadChunk, Status>> + Send + 'static>>;

type ClientSender = mpsc::Sender<Result<DownloadChunk, Status>>;

/// Opens a download for workspace `ws`. Errors found before the first byte
/// (no such file, permissions) are the call's status; later ones end the
/// stream.
pub async fn download(
    state: &State,
    ws: &Workspace,
    req: DownloadRequest,
) -> Result<DownloadStream, Status> {
    let target = Target::resolve(state, ws, &req.machine_id, &req.session_id, &req.path)?;
    let mut xfer = Transfer::open(target)?;
    tracing::info!(transfer = %xfer.id, path = %req.path, "download started");
    xfer.send(Op::Download(DownloadRequest {
        path: req.path,
        offset: req.offset,
        length: req.length,
        ..Default::default()
    }))
    .await?;
    let start = match tokio::time::timeout(TRANSFER_IDLE_TIMEOUT, xfer.next_event()).await {
        Err(_) => return Err(xfer.stalled()),
        Ok(Err(status)) => return Err(status),
        Ok(Ok(Event::Start(start))) => start,
        Ok(Ok(_)) => {
            return Err(Status::internal(
                "the agent answered the download out of order; update the agent",
            ))
        }
    };
    let total = start.total_size;
    let (tx, rx) = mpsc::channel(DOWNLOAD_CLIENT_QUEUE);
    // The queue is empty; this cannot fail.
    let _ = tx.try_send(Ok(DownloadChunk {
        part: Some(Part::Start(start)),
    }));
    tokio::spawn(relay(xfer, total, tx));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Forwards data until the agent says `end` with exactly `total` bytes
/// delivered. A client that goes away aborts the transfer (by dropping it).
async fn relay(mut xfer: Transfer, total: u64, tx: ClientSender) {
    let mut delivered = 0u64;
    let result = loop {
        let event = tokio::select! {
            event = tokio::time::timeout(TRANSFER_IDLE_TIMEOUT, xfer.next_event()) => event,
            _ = tx.closed() => return,
        };
        let event = match event {
            Err(_) => break Err(xfer.stalled()),
            Ok(Err(status)) => break Err(status),
            Ok(Ok(event)) => event,
        };
        match event {
            Event::Data(data) => {
                delivered += data.len() as u64;
                if delivered > total {
                    break Err(short_or_long(delivered, total));
                }
                let chunk = DownloadChunk {
                    part: Some(Part::Data(data)),
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
                if let Err(status) = xfer.send(Op::Credit(delivered)).await {
                    break Err(status);
                }
            }
            Event::End(_) if delivered == total => {
                xfer.finish();
                tracing::info!(transfer = %xfer.id, bytes = delivered, "download finished");
                break Ok(());
            }
            Event::End(_) => break Err(short_or_long(delivered, total)),
            _ => {
                break Err(Status::internal(
                    "the agent answered the download out of order; update the agent",
                ))
            }
        }
    };
    if let Err(status) = result {
        tracing::info!(transfer = %xfer.id, %status, "download failed");
        let _ = tx.send(Err(status)).await;
    }
}

fn short_or_long(delivered: u64, total: u64) -> Status {
    Status::data_loss(format!(
        "the agent sent {delivered} bytes of an announced {total}; the file changed while it was read — try again"
    ))
}
