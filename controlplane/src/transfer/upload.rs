//! `Cmdop.Upload`: client chunks → agent, at most a window ahead of what
//! the agent reports written; commit when the client half-closes.

use cmdop_proto::ext::{
    file_downlink::Op, file_uplink::Event, upload_chunk::Part, UploadChunk, UploadResult,
    UploadStart,
};
use tonic::{Status, Streaming};

use super::{
    Target, Transfer, MAX_CHUNK_BYTES, MAX_UPLOAD_BYTES, TRANSFER_IDLE_TIMEOUT,
    UPLOAD_WINDOW_BYTES, UPLOAD_WINDOW_CHUNKS,
};
use crate::{
    limits,
    state::State,
    store::{AuditOutcome, Workspace},
};

/// What the relay loop saw next.
enum Step {
    Client(Result<Option<UploadChunk>, Status>),
    Agent(Result<Event, Status>),
}

/// Runs one upload for workspace `ws` to completion.
pub async fn upload(
    state: &State,
    ws: &Workspace,
    mut chunks: Streaming<UploadChunk>,
) -> Result<UploadResult, Status> {
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
    let result = run(target, start, chunks).await;
    record.finish(match &result {
        Ok(r) => AuditOutcome {
            outcome: "ok".into(),
            bytes_in: i64::try_from(r.bytes_written).unwrap_or(i64::MAX),
            ..AuditOutcome::default()
        },
        Err(status) => AuditOutcome {
            outcome: format!("failed: {}", status.message()),
            ..AuditOutcome::default()
        },
    });
    result
}

/// Moves an upload's data from its call to the agent until committed.
async fn run(
    target: Target,
    start: UploadStart,
    mut chunks: Streaming<UploadChunk>,
) -> Result<UploadResult, Status> {
    let total = start.total_size;
    let hostname = target.session.info.hostname.clone();
    let mut xfer = Transfer::open(target)?;
    tracing::info!(transfer = %xfer.id, path = %start.path, ?total, "upload started");
    xfer.send(Op::Upload(UploadStart {
        machine_id: String::new(),
        session_id: String::new(),
        ..start
    }))
    .await?;

    let (mut sent, mut written) = (0u64, 0u64);
    // Data chunks sent that the agent has not reported written yet.
    let mut in_flight = 0usize;
    let mut committed = false;
    loop {
        let may_read =
            !committed && sent - written < UPLOAD_WINDOW_BYTES && in_flight < UPLOAD_WINDOW_CHUNKS;
        let step = tokio::time::timeout(TRANSFER_IDLE_TIMEOUT, async {
            tokio::select! {
                chunk = chunks.message(), if may_read => Step::Client(chunk),
                event = xfer.next_event() => Step::Agent(event),
            }
        })
        .await
        .map_err(|_| xfer.stalled())?;
        match step {
            Step::Client(Ok(Some(UploadChunk {
                part: Some(Part::Data(data)),
            }))) => {
                limits::check_len("upload chunk", data.len(), MAX_CHUNK_BYTES)?;
                sent += data.len() as u64;
                let cap = total.unwrap_or(MAX_UPLOAD_BYTES).min(MAX_UPLOAD_BYTES);
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
            Step::Client(Ok(Some(_))) => {
                return Err(Status::invalid_argument(
                    "only the first upload chunk may carry `start`; later ones carry `data`",
                ))
            }
            Step::Client(Ok(None)) => {
                if let Some(total) = total.filter(|t| *t != sent) {
                    return Err(Status::invalid_argument(format!(
                        "the upload ended after {sent} of its declared {total} bytes; nothing was written"
                    )));
                }
                committed = true;
                xfer.send(Op::Commit(true)).await?;
            }
            // The client broke the stream: dropping `xfer` aborts the upload.
            Step::Client(Err(status)) => return Err(status),
            Step::Agent(Ok(Event::Written(n))) => {
                written = n.min(sent);
                in_flight = in_flight.saturating_sub(1);
            }
            Step::Agent(Ok(Event::Done(result))) if committed => {
                xfer.finish();
                tracing::info!(transfer = %xfer.id, bytes = result.bytes_written, "upload finished");
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
    Ok(())
}
