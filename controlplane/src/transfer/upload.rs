//! `Cmdop.Upload` and `Cmdop.UploadWithSide`: client chunks → agent, at
//! most a window ahead of what the agent reports written; commit when the
//! client half-closes. With UploadWithSide, a caller that accepts a side
//! connection and an agent that can take one ([`super::CAPABILITY_RAW_WRITE`])
//! get a ticket: the agent's offer goes to the client as `raw_offer`, and
//! after the client's `raw_switch` the rest of the file bypasses this call
//! ([`crate::raw`] splices it from the client to the agent).

use std::pin::Pin;

use cmdop_proto::ext::{
    file_downlink::Op, file_uplink::Event, upload_chunk::Part, upload_event, UploadChunk,
    UploadEvent, UploadRawOffer, UploadResult, UploadStart,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::{
    Target, Transfer, MAX_CHUNK_BYTES, MAX_UPLOAD_BYTES, TRANSFER_IDLE_TIMEOUT,
    UPLOAD_WINDOW_BYTES, UPLOAD_WINDOW_CHUNKS,
};
use crate::{
    audit::Begun,
    limits, raw,
    state::State,
    store::{AuditOutcome, Workspace},
};

/// Response stream of UploadWithSide.
pub type UploadEventStream =
    Pin<Box<dyn Stream<Item = Result<UploadEvent, Status>> + Send + 'static>>;

type EventSender = mpsc::Sender<Result<UploadEvent, Status>>;

/// What the relay loop saw next.
enum Step {
    Client(Result<Option<UploadChunk>, Status>),
    Agent(Result<Event, Status>),
    /// The UploadWithSide caller stopped listening (cancelled, revoked).
    Gone,
}

/// Runs one upload for workspace `ws` to completion.
pub async fn upload(
    state: &State,
    ws: &Workspace,
    mut chunks: Streaming<UploadChunk>,
) -> Result<UploadResult, Status> {
    let (start, target, record) = open(state, ws, &mut chunks).await?;
    let result = run(target, start, chunks, None).await;
    finish(record, &result, None);
    result
}

/// Opens an UploadWithSide call for workspace `ws`. Errors found before
/// the first byte (bad start, no such machine, refused target) are the
/// call's status; later ones end the stream. A `forwarded` call (its
/// client is connected to another replica) gets no side connection.
pub async fn upload_with_side(
    state: &State,
    ws: &Workspace,
    mut chunks: Streaming<UploadChunk>,
    forwarded: bool,
) -> Result<UploadEventStream, Status> {
    let (mut start, target, record) = open(state, ws, &mut chunks).await?;
    let agent_raw = target.link.transfers().raw_write_supported();
    let mode = raw::side_mode(
        state.config.tls.is_some(),
        std::mem::take(&mut start.accept_raw),
        &std::mem::take(&mut start.raw_tls_client_sha256),
        agent_raw && target.link.raw_stdout(),
        agent_raw && target.link.raw_stdout_tls(),
    );
    let (tx, rx) = mpsc::channel(2);
    let side = match (&state.side_connections, mode) {
        (Some(rendezvous), Some(mode)) if !forwarded => Some(Side {
            rendezvous: rendezvous.clone(),
            ticket: None,
            mode,
            offered: false,
            switched: false,
        }),
        _ => None,
    };
    let events = tx.clone();
    tokio::spawn(async move {
        let mut side = side.map(|s| (s, events));
        let result = run(target, start, chunks, side.as_mut()).await;
        finish(record, &result, side.as_ref().map(|(s, _)| s));
        let _ = tx
            .send(result.map(|r| UploadEvent {
                event: Some(upload_event::Event::Result(r)),
            }))
            .await;
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Reads and checks the `start` chunk, finds the agent and opens the
/// audit record.
async fn open(
    state: &State,
    ws: &Workspace,
    chunks: &mut Streaming<UploadChunk>,
) -> Result<(UploadStart, Target, Begun), Status> {
    let first = tokio::time::timeout(limits::FIRST_MESSAGE_TIMEOUT, chunks.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no upload `start` chunk within 30 s"))??;
    let start = match first {
        Some(UploadChunk {
            part: Some(Part::Start(start)),
        }) => start,
        _ => {
            return Err(Status::invalid_argument(
                "the first upload chunk must carry `start`",
            ))
        }
    };
    validate(&start)?;
    let target = Target::resolve(state, ws, &start.machine_id, &start.session_id, &start.path)?;
    let record = state
        .audit
        .begin(state.audit.entry(
            ws,
            "transfer.upload",
            &target.session.machine_id,
            &target.session.info.hostname,
            serde_json::json!({
                "path": start.path,
                "direction": "to machine",
                "declared_bytes": start.total_size,
                "overwrite": start.overwrite,
            }),
        ))
        .await?;
    Ok((start, target, record))
}

/// Closes the audit record: the bytes written, or on failure those that
/// reached the agent's side connection.
fn finish(record: Begun, result: &Result<UploadResult, Status>, side: Option<&Side>) {
    record.finish(match result {
        Ok(r) => AuditOutcome {
            outcome: "ok".into(),
            bytes_in: i64::try_from(r.bytes_written).unwrap_or(i64::MAX),
            ..AuditOutcome::default()
        },
        Err(status) => AuditOutcome {
            outcome: format!("failed: {}", status.message()),
            bytes_in: i64::try_from(side.map_or(0, Side::moved)).unwrap_or(i64::MAX),
            ..AuditOutcome::default()
        },
    });
}

/// One upload's side connection: the ticket (held until the relay ends)
/// and how far the client got with it.
struct Side {
    rendezvous: std::sync::Arc<raw::Rendezvous>,
    ticket: Option<raw::Ticket>,
    mode: raw::SideMode,
    /// The client was told the ticket.
    offered: bool,
    /// The client moved the rest of the file to the side connection.
    switched: bool,
}

impl Side {
    /// Bytes spliced to the agent so far (with TLS, records and their
    /// overhead).
    fn moved(&self) -> u64 {
        self.ticket.as_ref().map_or(0, raw::Ticket::moved)
    }

    /// The agent's offer as the client gets it, when it is the offer of
    /// this upload's ticket (with a well-formed pin for a TLS one).
    fn offer(&mut self, offer: UploadRawOffer) -> Option<UploadEvent> {
        let ticket = self.ticket.as_ref()?;
        if self.offered || offer.ticket != ticket.as_str() {
            return None;
        }
        let pin = match self.mode {
            raw::SideMode::Plain => bytes::Bytes::new(),
            raw::SideMode::Tls(_) => {
                cmdop_proto::raw_tls::parse_pin(&offer.raw_tls_agent_sha256)?;
                offer.raw_tls_agent_sha256
            }
        };
        self.offered = true;
        Some(UploadEvent {
            event: Some(upload_event::Event::RawOffer(UploadRawOffer {
                ticket: offer.ticket,
                raw_tls_agent_sha256: pin,
            })),
        })
    }
}

/// Moves an upload's data from its call to the agent until committed;
/// with `side` (an UploadWithSide call that may get a side connection, and
/// where its events go) the rest may come on a side connection.
async fn run(
    target: Target,
    mut start: UploadStart,
    mut chunks: Streaming<UploadChunk>,
    mut side: Option<&mut (Side, EventSender)>,
) -> Result<UploadResult, Status> {
    let total = start.total_size;
    let cap = total.unwrap_or(MAX_UPLOAD_BYTES).min(MAX_UPLOAD_BYTES);
    let hostname = target.session.info.hostname.clone();
    let mut xfer = Transfer::open(target)?;
    if let Some((s, _)) = side.as_deref_mut() {
        let ticket = s.rendezvous.register_upload(&xfer.id);
        start.raw_ticket = ticket.as_str().to_owned();
        if let raw::SideMode::Tls(pin) = s.mode {
            start.raw_tls_peer_sha256 = bytes::Bytes::copy_from_slice(&pin);
        }
        s.ticket = Some(ticket);
    }
    tracing::info!(transfer = %xfer.id, path = %start.path, ?total, side = side.is_some(), "upload started");
    xfer.send(Op::Upload(UploadStart {
        machine_id: String::new(),
        session_id: String::new(),
        accept_raw: false,
        raw_tls_client_sha256: bytes::Bytes::new(),
        ..start
    }))
    .await?;

    let (mut sent, mut written) = (0u64, 0u64);
    // Data chunks sent that the agent has not reported written yet.
    let mut in_flight = 0usize;
    let mut committed = false;
    loop {
        let switched = side.as_ref().is_some_and(|(s, _)| s.switched);
        let may_read = !committed
            && (switched
                || (sent - written < UPLOAD_WINDOW_BYTES && in_flight < UPLOAD_WINDOW_CHUNKS));
        // On a side connection neither the client nor the agent says
        // anything until the last byte went through, however long that
        // takes (tokio's timer takes Duration::MAX as "never"); the agent
        // bounds each read on it and reports a stalled or broken one.
        let bound = if switched {
            std::time::Duration::MAX
        } else {
            TRANSFER_IDLE_TIMEOUT
        };
        let events = side.as_ref().map(|(_, tx)| tx.clone());
        let step = tokio::time::timeout(bound, async {
            tokio::select! {
                chunk = chunks.message(), if may_read => Step::Client(chunk),
                event = xfer.next_event() => Step::Agent(event),
                () = closed(events) => Step::Gone,
            }
        })
        .await
        .map_err(|_| xfer.stalled())?;
        match step {
            Step::Client(Ok(Some(UploadChunk {
                part: Some(Part::Data(data)),
            }))) if !switched => {
                limits::check_len("upload chunk", data.len(), MAX_CHUNK_BYTES)?;
                sent += data.len() as u64;
                if sent > cap {
                    return Err(Status::invalid_argument(format!(
                        "the upload sent more than {cap} bytes ({}); nothing was written",
                        if total.is_some() {
                            "its declared total_size"
                        } else {
                            "the limit"
                        }
                    )));
                }
                if !data.is_empty() {
                    in_flight += 1;
                    xfer.send(Op::Data(data)).await?;
                }
            }
            Step::Client(Ok(Some(UploadChunk {
                part: Some(Part::RawSwitch(_)),
            }))) if side.as_ref().is_some_and(|(s, _)| s.offered && !s.switched) => {
                if let Some((s, _)) = side.as_deref_mut() {
                    s.switched = true;
                }
                tracing::debug!(transfer = %xfer.id, before = sent, "upload continues on a side connection");
                xfer.send(Op::RawSwitch(true)).await?;
            }
            Step::Client(Ok(Some(_))) => {
                return Err(Status::invalid_argument(
                    "only the first upload chunk may carry `start`, and `raw_switch` only once after a `raw_offer`; no `data` follows it",
                ))
            }
            Step::Client(Ok(None)) => {
                if let Some(total) = total.filter(|t| *t != sent && !switched) {
                    return Err(Status::invalid_argument(format!(
                        "the upload ended after {sent} of its declared {total} bytes; nothing was written"
                    )));
                }
                committed = true;
                xfer.send(Op::Commit(true)).await?;
            }
            // The client broke the stream: dropping `xfer` aborts the upload.
            Step::Client(Err(status)) => return Err(status),
            Step::Gone => return Err(Status::cancelled("the caller went away")),
            Step::Agent(Ok(Event::Written(n))) if !switched => {
                written = n.min(sent);
                in_flight = in_flight.saturating_sub(1);
            }
            // After the switch: the bytes on disk so far, the side
            // connection's too; nothing to pace.
            Step::Agent(Ok(Event::Written(_))) => {}
            Step::Agent(Ok(Event::UploadOffer(offer))) => {
                let Some((s, tx)) = side.as_deref_mut() else {
                    continue;
                };
                if let Some(event) = s.offer(offer) {
                    if tx.send(Ok(event)).await.is_err() {
                        return Err(Status::cancelled("the caller went away"));
                    }
                }
            }
            Step::Agent(Ok(Event::Done(result))) if committed => {
                if result.bytes_written > cap || (!switched && result.bytes_written != sent) {
                    return Err(Status::internal(format!(
                        "the agent on {hostname} reported {} bytes written of an upload of {}; update the agent",
                        result.bytes_written,
                        if switched { cap } else { sent }
                    )));
                }
                xfer.finish();
                tracing::info!(transfer = %xfer.id, bytes = result.bytes_written, switched, "upload finished");
                return Ok(result);
            }
            Step::Agent(Ok(_)) => {
                return Err(Status::internal(format!(
                    "the agent on {hostname} answered the upload out of order; update the agent"
                )))
            }
            Step::Agent(Err(status)) => return Err(status),
        }
    }
}

/// Resolves when the UploadWithSide caller's stream is gone; never for a
/// plain Upload (its end shows in the request stream).
async fn closed(events: Option<EventSender>) {
    match events {
        Some(tx) => tx.closed().await,
        None => std::future::pending().await,
    }
}

fn validate(start: &UploadStart) -> Result<(), Status> {
    if start.mode > 0o7777 {
        return Err(Status::invalid_argument(format!(
            "mode {:o} is not a set of permission bits (at most 7777 octal)",
            start.mode
        )));
    }
    if let Some(total) = start.total_size.filter(|t| *t > MAX_UPLOAD_BYTES) {
        return Err(Status::invalid_argument(format!(
            "the upload is {total} bytes; the limit is {MAX_UPLOAD_BYTES} bytes"
        )));
    }
    if !start.raw_ticket.is_empty() || !start.raw_tls_peer_sha256.is_empty() {
        return Err(Status::invalid_argument(
            "raw_ticket and raw_tls_peer_sha256 are for the agent; leave them empty",
        ));
    }
    Ok(())
}
