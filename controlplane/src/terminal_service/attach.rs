//! SDK attach streams: a client registers with a version containing
//! "attach" and the id of an existing session; it then receives that
//! session's live output (as `input`) and its typed `output` goes to the
//! agent's PTY.

use std::sync::Arc;

use cmdop_proto::terminal::{
    agent_message, control_message, AgentMessage, ControlMessage, ResizeCommand, SessionConfig,
    SignalCommand, StartSessionCommand, TerminalInput, TerminalSize,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::ControlStream;
use crate::{limits, recording::Recorder, sessions::Session, state::SharedState, store::Workspace};

/// Subscribes the stream to `first.session_id` of the caller's workspace.
pub async fn start(
    state: SharedState,
    workspace: Workspace,
    first: AgentMessage,
    inbound: Streaming<AgentMessage>,
) -> Result<ControlStream, Status> {
    let session = state
        .sessions
        .get(&workspace, &first.session_id)
        .ok_or_else(|| Status::not_found(format!("session '{}' not found", first.session_id)))?;
    if !session.is_live() {
        return Err(session.offline_status());
    }
    // Opening the shell is on the record first; its close is the outcome.
    let record = state
        .audit
        .begin(state.audit.entry(
            &workspace,
            "shell.attach",
            &session.machine_id,
            &session.info.hostname,
            serde_json::json!({ "session_id": session.id }),
        ))
        .await?;
    let (tx, rx) = mpsc::channel(limits::ATTACH_QUEUE);
    let start = ControlMessage {
        payload: Some(control_message::Payload::StartSession(
            StartSessionCommand {
                config: Some(SessionConfig {
                    session_id: session.id.clone(),
                    shell: session.info.shell.clone(),
                    working_directory: session.info.home_dir.clone(),
                    env: Default::default(),
                    size: Some(session.info.size),
                }),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let _ = tx.try_send(Box::new(Ok(start)));
    // What the user sees from here on, for the trail.
    let recorder = state.audit.recording_limit().map(|limit| {
        Arc::new(parking_lot::Mutex::new(Recorder::new(
            u32::try_from(session.info.size.cols).unwrap_or(80),
            u32::try_from(session.info.size.rows).unwrap_or(24),
            limit,
        )))
    });
    // From here the session's subscriber table holds the only sender: the
    // response stream ends when the client detaches, half-closes, or the
    // agent goes away.
    let subscriber = session.subscribe(tx)?;
    tracing::info!(session = %session.id, subscriber, "attach client subscribed");
    let seen = recorder.clone();
    tokio::spawn(async move {
        let typed = pump(session, subscriber, inbound).await;
        if let Some(recorder) = &recorder {
            record.attach_recording(recorder.lock().finish());
        }
        record.finish(crate::store::AuditOutcome {
            outcome: "detached".into(),
            bytes_in: i64::try_from(typed).unwrap_or(i64::MAX),
            ..Default::default()
        });
    });
    Ok(Box::pin(ReceiverStream::new(rx).map(move |item| {
        if let (
            Some(recorder),
            Ok(ControlMessage {
                payload: Some(control_message::Payload::Input(shown)),
                ..
            }),
        ) = (&seen, &*item)
        {
            recorder.lock().output(&shown.data);
        }
        *item
    })))
}

/// Moves the client's keystrokes to the agent until it detaches; returns
/// how many bytes it typed.
async fn pump(
    session: Arc<Session>,
    subscriber: u64,
    mut inbound: Streaming<AgentMessage>,
) -> usize {
    let mut typed = 0usize;
    loop {
        let next = tokio::select! {
            next = inbound.message() => next,
            _ = session.closed() => break,
        };
        let msg = match next {
            Ok(Some(msg)) => msg,
            Ok(None) | Err(_) => break,
        };
        match msg.payload {
            Some(agent_message::Payload::Output(out)) if !out.data.is_empty() => {
                if out.data.len() > limits::MAX_INPUT_BYTES {
                    tracing::warn!(session = %session.id, "dropping oversized attach input");
                    continue;
                }
                session.record_input(&out.data);
                typed += out.data.len();
                let input = control_message::Payload::Input(TerminalInput {
                    data: out.data,
                    sequence: out.sequence,
                });
                if session.send_control(input).await.is_err() {
                    break;
                }
            }
            Some(agent_message::Payload::Status(status))
                if !apply_status(&session, &status.reason).await =>
            {
                break
            }
            // Heartbeats, a repeated register and unknown members are ignored.
            _ => {}
        }
    }
    session.unsubscribe(subscriber);
    tracing::info!(session = %session.id, subscriber, "attach client detached");
    typed
}

/// What an attach client asked for in `status.reason`.
#[derive(Debug, PartialEq, Eq)]
enum Reason {
    Resize { cols: i32, rows: i32 },
    Signal(i32),
    Detach,
    Other,
}

fn parse_reason(reason: &str) -> Reason {
    if let Some(size) = reason.strip_prefix("resize:") {
        if let Some((c, r)) = size.split_once('x') {
            if let (Ok(cols), Ok(rows)) = (c.trim().parse(), r.trim().parse()) {
                if (1..=10_000).contains(&cols) && (1..=10_000).contains(&rows) {
                    return Reason::Resize { cols, rows };
                }
            }
        }
    } else if let Some(n) = reason.strip_prefix("signal:") {
        if let Ok(sig) = n.trim().parse() {
            if (1..=64).contains(&sig) {
                return Reason::Signal(sig);
            }
        }
    } else if reason == "detach" {
        return Reason::Detach;
    }
    Reason::Other
}

/// Applies a status reason; false when the client detached or the agent is gone.
async fn apply_status(session: &Session, reason: &str) -> bool {
    let payload = match parse_reason(reason) {
        Reason::Resize { cols, rows } => control_message::Payload::Resize(ResizeCommand {
            size: Some(TerminalSize {
                rows,
                cols,
                width: 0,
                height: 0,
            }),
        }),
        Reason::Signal(signal) => control_message::Payload::Signal(SignalCommand { signal }),
        Reason::Detach => return false,
        Reason::Other => return true,
    };
    session.send_control(payload).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_reasons() {
        assert_eq!(
            parse_reason("resize:120x40"),
            Reason::Resize {
                cols: 120,
                rows: 40
            }
        );
        assert_eq!(parse_reason("signal:2"), Reason::Signal(2));
        assert_eq!(parse_reason("detach"), Reason::Detach);
        assert_eq!(parse_reason("history:10:0"), Reason::Other);
        assert_eq!(parse_reason("resize:0x40"), Reason::Other);
        assert_eq!(parse_reason("resize:axb"), Reason::Other);
        assert_eq!(parse_reason("signal:999"), Reason::Other);
    }
}
