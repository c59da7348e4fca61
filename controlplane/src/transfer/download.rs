//! `Cmdop.Download`: agent chunks → client, crediting the agent for each
//! chunk the client's stream accepted. With a caller that accepts a side
//! connection and an agent that can open one ([`super::CAPABILITY_RAW`]),
//! the download gets a ticket: the agent's offer in `start` goes to the
//! client, and after `raw_switched` the rest of the file bypasses this
//! stream ([`crate::raw`] splices it), its byte count coming in `raw_end`.

use std::pin::Pin;

use cmdop_proto::ext::{
    download_chunk::Part, file_downlink::Op, file_uplink::Event, DownloadChunk, DownloadRawSwitch,
    DownloadRequest, DownloadStart,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{Target, Transfer, DOWNLOAD_CLIENT_QUEUE, TRANSFER_IDLE_TIMEOUT};
use crate::{
    raw,
    state::State,
    store::{AuditOutcome, Workspace},
};

/// Response stream of Download.
pub type DownloadStream =
    Pin<Box<dyn Stream<Item = Result<DownloadChunk, Status>> + Send + 'static>>;

type ClientSender = mpsc::Sender<Result<DownloadChunk, Status>>;

/// Opens a download for workspace `ws`. Errors found before the first byte
/// (no such file, permissions) are the call's status; later ones end the
/// stream. `side` says under which ticket a side connection may be
/// offered (a forwarded call: only the one its replica relays).
pub async fn download(
    state: &State,
    ws: &Workspace,
    req: DownloadRequest,
    side: raw::SideTicket,
) -> Result<DownloadStream, Status> {
    let target = Target::resolve(state, ws, &req.machine_id, &req.session_id, &req.path)?;
    let agent_raw = target.link.transfers().raw_supported();
    let side_mode = raw::side_mode(
        state.config.tls.is_some(),
        req.accept_raw,
        &req.raw_tls_client_sha256,
        agent_raw && target.link.raw_stdout(),
        agent_raw && target.link.raw_stdout_tls(),
    );
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
    // Valid until the relay ends, however the call ends.
    let side = match (&state.side_connections, side_mode) {
        (Some(rendezvous), Some(mode)) => {
            raw::relay::register(rendezvous, &xfer.id, &side).map(|ticket| Side {
                ticket,
                mode,
                offered: false,
                switched: false,
            })
        }
        _ => None,
    };
    let peer_pin = match &side {
        Some(Side {
            mode: raw::SideMode::Tls(pin),
            ..
        }) => bytes::Bytes::copy_from_slice(pin),
        _ => bytes::Bytes::new(),
    };
    tracing::info!(transfer = %xfer.id, path = %req.path, side = side.is_some(), "download started");
    xfer.send(Op::Download(DownloadRequest {
        path: req.path,
        offset: req.offset,
        length: req.length,
        raw_ticket: side
            .as_ref()
            .map(|s| s.ticket.as_str().to_owned())
            .unwrap_or_default(),
        raw_tls_peer_sha256: peer_pin,
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
    let mut start = match tokio::time::timeout(TRANSFER_IDLE_TIMEOUT, xfer.next_event()).await {
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
    let mut side = side;
    Side::offer(&mut side, &mut start);
    let total = start.total_size;
    let (tx, rx) = mpsc::channel(DOWNLOAD_CLIENT_QUEUE);
    // The queue is empty; this cannot fail.
    let _ = tx.try_send(Ok(DownloadChunk {
        part: Some(Part::Start(start)),
    }));
    tokio::spawn(async move {
        let (outcome, delivered) = relay(xfer, total, tx, side).await;
        record.finish(AuditOutcome {
            outcome,
            bytes_out: i64::try_from(delivered).unwrap_or(i64::MAX),
            ..AuditOutcome::default()
        });
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// One download's side connection: the ticket (held until the relay
/// ends) and how far the agent got with it.
struct Side {
    ticket: raw::Ticket,
    mode: raw::SideMode,
    /// The client was told the ticket in `start`.
    offered: bool,
    /// The agent moved the rest of the file to the side connection.
    switched: bool,
}

impl Side {
    /// Passes the agent's offer in `start` on to the client, when it is
    /// the offer of this download's ticket (with a well-formed pin for a
    /// TLS one); otherwise strips it. Without a ticket nothing is offered.
    fn offer(side: &mut Option<Side>, start: &mut DownloadStart) {
        let agent_pin = std::mem::take(&mut start.raw_tls_agent_sha256);
        let agent_ticket = std::mem::take(&mut start.raw_ticket);
        let Some(side) = side.as_mut() else { return };
        if agent_ticket != side.ticket.as_str() {
            return;
        }
        match side.mode {
            raw::SideMode::Plain => {}
            raw::SideMode::Tls(_) => {
                if cmdop_proto::raw_tls::parse_pin(&agent_pin).is_none() {
                    return;
                }
                start.raw_tls_agent_sha256 = agent_pin;
            }
        }
        start.raw_ticket = agent_ticket;
        side.offered = true;
    }

    /// Bytes of the file delivered on the side connection so far: the
    /// spliced bytes (with TLS, records and their overhead).
    fn moved(side: &Option<Side>) -> u64 {
        side.as_ref()
            .filter(|s| s.switched)
            .map_or(0, |s| s.ticket.moved())
    }
}

/// Forwards data until the agent says `end` with exactly `total` bytes
/// delivered, or, after a switch to the side connection, `raw_end` with
/// the rest. A client that goes away aborts the transfer (by dropping it).
/// Returns what it came to and the bytes delivered.
async fn relay(
    mut xfer: Transfer,
    total: u64,
    tx: ClientSender,
    mut side: Option<Side>,
) -> (String, u64) {
    const GONE: &str = "cancelled: the caller went away";
    let mut delivered = 0u64;
    let gone =
        |delivered: u64, side: &Option<Side>| (GONE.to_string(), delivered + Side::moved(side));
    let result = loop {
        let switched = side.as_ref().is_some_and(|s| s.switched);
        // On a side connection the agent says nothing until the last byte
        // went out, however long that takes (tokio's timer takes
        // Duration::MAX as "never"); a dead caller or agent breaks the
        // connection, which the agent reports.
        let bound = if switched {
            std::time::Duration::MAX
        } else {
            TRANSFER_IDLE_TIMEOUT
        };
        let event = tokio::select! {
            event = tokio::time::timeout(bound, xfer.next_event()) => event,
            _ = tx.closed() => return gone(delivered, &side),
        };
        let event = match event {
            Err(_) => break Err(xfer.stalled()),
            Ok(Err(status)) => break Err(status),
            Ok(Ok(event)) => event,
        };
        match event {
            Event::Data(data) if !switched => {
                delivered += data.len() as u64;
                if delivered > total {
                    break Err(short_or_long(delivered, total));
                }
                let chunk = DownloadChunk {
                    part: Some(Part::Data(data)),
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return gone(delivered, &side);
                }
                if let Err(status) = xfer.send(Op::Credit(delivered)).await {
                    break Err(status);
                }
            }
            Event::End(_) if !switched && delivered == total => {
                xfer.finish();
                tracing::info!(transfer = %xfer.id, bytes = delivered, "download finished");
                break Ok(());
            }
            Event::End(_) if !switched => break Err(short_or_long(delivered, total)),
            Event::RawSwitched(_) if side.as_ref().is_some_and(|s| s.offered && !s.switched) => {
                if let Some(s) = side.as_mut() {
                    s.switched = true;
                }
                let chunk = DownloadChunk {
                    part: Some(Part::RawSwitch(DownloadRawSwitch {})),
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return gone(delivered, &side);
                }
                tracing::debug!(transfer = %xfer.id, before = delivered, "download continues on a side connection");
            }
            Event::RawEnd(rest) if switched => {
                delivered = delivered.saturating_add(rest);
                if delivered != total {
                    break Err(short_or_long(delivered, total));
                }
                xfer.finish();
                tracing::info!(transfer = %xfer.id, bytes = delivered, "download finished on a side connection");
                break Ok(());
            }
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
            let delivered = delivered + Side::moved(&side);
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
