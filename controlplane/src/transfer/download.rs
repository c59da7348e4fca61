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
use crate::{
    state::State,
    store::{AuditOutcome, Workspace},
};

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
    let record = state
        .audit
        .begin(state.audit.entry(
            ws,
            "transfer.download",
            &target.session.machine_id,
            &target.session.info.hostname,
            serde_json::json!({
                "path": req.path,
                "direction": "from machine",
                "offset": req.offset,
                "length": req.length,
            }),
        ))
        .await?;
    let mut xfer = Transfer::open(target)?;
    tracing::info!(transfer = %xfer.id, path = %req.path, "download started");
    xfer.send(Op::Download(DownloadRequest {
        path: req.path,
        offset: req.offset,
        length: req.length,
        ..Default::default()
    }))
    .await?;
    let failed = |record: crate::audit::Begun, status: Status| {
        record.finish(AuditOutcome {
            outcome: format!("failed: {}", status.message()),
            ..AuditOutcome::default()
        });
        Err(status)
    };
    let start = match tokio::time::timeout(TRANSFER_IDLE_TIMEOUT, xfer.next_event()).await {
        Err(_) => return failed(record, xfer.stalled()),
        Ok(Err(status)) => return failed(record, status),
        Ok(Ok(Event::Start(start))) => start,
        Ok(Ok(_)) => {
            return failed(
                record,
                Status::internal("the agent answered the download out of order; update the agent"),
            )
        }
    };
    let total = start.total_size;
    let (tx, rx) = mpsc::channel(DOWNLOAD_CLIENT_QUEUE);
    // The queue is empty; this cannot fail.
    let _ = tx.try_send(Ok(DownloadChunk {
        part: Some(Part::Start(start)),
    }));
    tokio::spawn(async move {
        let (outcome, delivered) = relay(xfer, total, tx).await;
        record.finish(AuditOutcome {
            outcome,
            bytes_out: i64::try_from(delivered).unwrap_or(i64::MAX),
            ..AuditOutcome::default()
        });
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Forwards data until the agent says `end` with exactly `total` bytes
/// delivered. A client that goes away aborts the transfer (by dropping it).
/// Returns what it came to and the bytes delivered.
async fn relay(mut xfer: Transfer, total: u64, tx: ClientSender) -> (String, u64) {
    const GONE: &str = "cancelled: the caller went away";
    let mut delivered = 0u64;
    let result = loop {
        let event = tokio::select! {
            event = tokio::time::timeout(TRANSFER_IDLE_TIMEOUT, xfer.next_event()) => event,
            _ = tx.closed() => return (GONE.into(), delivered),
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
                    return (GONE.into(), delivered);
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
    match result {
        Ok(()) => ("ok".into(), delivered),
        Err(status) => {
            tracing::info!(transfer = %xfer.id, %status, "download failed");
            let outcome = format!("failed: {}", status.message());
            let _ = tx.send(Err(status)).await;
            (outcome, delivered)
        }
    }
}

fn short_or_long(delivered: u64, total: u64) -> Status {
    Status::data_loss(format!(
        "the agent sent {delivered} bytes of an announced {total}; the file changed while it was read — try again"
    ))
}
