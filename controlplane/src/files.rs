//! The eight File* RPCs: each becomes a `file_operation` with a fresh
//! request id on the agent's stream, and the matching
//! `file_operation_result` becomes the answer. On success `result` (and
//! `result.entry` where the SDKs read it) is always present: the Node SDK
//! dereferences them without checking.

use std::time::Duration;

use cmdop_proto::terminal::{
    control_message, file_operation_request::Operation, file_operation_result,
    FileOperationRequest, FileOperationResult,
};
use tonic::Status;

use crate::{limits, state::State, store::Workspace};

/// How a file call ended, short of a status code.
pub enum FileOutcome {
    /// The agent answered (successfully or not). Boxed: results are large
    /// next to the error text.
    Answered(Box<FileOperationResult>),
    /// The call never reached an agent, or timed out; the text says why.
    Failed(String),
}

/// Checks a path field of a file request.
pub fn check_path(field: &str, path: &str) -> Result<(), Status> {
    limits::check_len(field, path.len(), limits::MAX_PATH_BYTES)?;
    if path.contains('\0') {
        return Err(Status::invalid_argument(format!(
            "{field} contains a NUL byte"
        )));
    }
    Ok(())
}

/// Sends `op` to the session's agent and waits (at most `timeout`) for its answer.
/// Unknown sessions are NOT_FOUND; an agent that is offline or drops
/// during the call is UNAVAILABLE.
pub async fn run(
    state: &State,
    ws: &Workspace,
    session_id: &str,
    op: Operation,
    timeout: Duration,
) -> Result<FileOutcome, Status> {
    if session_id.is_empty() {
        return Ok(FileOutcome::Failed(
            "no session selected: pass a session_id (pick a machine with set_machine / GetSessionByHostname first)".into(),
        ));
    }
    limits::check_len("session_id", session_id.len(), limits::MAX_SESSION_ID_BYTES)?;
    let session = state
        .sessions
        .get(&ws.id, session_id)
        .ok_or_else(|| Status::not_found(format!("session '{session_id}' not found")))?;
    let request_id = uuid::Uuid::new_v4().to_string();
    let answer = session.expect_file_result(&request_id)?;
    let request = FileOperationRequest {
        request_id: request_id.clone(),
        operation: Some(op),
    };
    if let Err(status) = session
        .send_control(control_message::Payload::FileOperation(request))
        .await
    {
        session.forget_file_op(&request_id);
        return Err(status);
    }
    let outcome = tokio::select! {
        res = tokio::time::timeout(timeout, answer) => match res {
            Ok(Ok(result)) => Ok(FileOutcome::Answered(Box::new(result))),
            // The sender was dropped: the agent disconnected.
            Ok(Err(_)) => Err(session.disconnected_status()),
            Err(_) => Ok(FileOutcome::Failed(format!(
                "machine {} did not answer the file operation within {} s; check that its agent is healthy",
                session.info.hostname,
                timeout.as_secs()
            ))),
        },
        _ = session.closed() => Err(session.disconnected_status()),
    };
    session.forget_file_op(&request_id);
    outcome
}

/// Splits an outcome into the `success`, `error`, `result` fields of a
/// File*RpcResponse. `pick` extracts this operation's result; on success a
/// missing result becomes its default value.
pub fn into_fields<T: Default>(
    outcome: FileOutcome,
    pick: impl FnOnce(file_operation_result::Result) -> Option<T>,
) -> (bool, String, Option<T>) {
    match outcome {
        FileOutcome::Failed(error) => (false, error, None),
        FileOutcome::Answered(r) if r.success => (
            true,
            String::new(),
            Some(r.result.and_then(pick).unwrap_or_default()),
        ),
        FileOutcome::Answered(r) => {
            let r = *r;
            let error = if !r.error_message.is_empty() {
                r.error_message
            } else if !r.error_code.is_empty() {
                r.error_code
            } else {
                "the agent reported that the file operation failed".to_string()
            };
            (false, error, None)
        }
    }
}
