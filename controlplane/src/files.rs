//! The eight File* RPCs: each becomes a `file_operation` with a fresh
//! request id on the agent's stream, and the matching
//! `file_operation_result` becomes the answer. On success `result` (and
//! `result.entry` where the SDKs read it) is always present: the Node SDK
//! dereferences them without checking.
//!
//! Every failure is a gRPC error status, never `success=false`: the
//! official Python SDK ignores `success` and would turn a failed list,
//! read or write into an empty listing, empty bytes or nothing at all.
//! The Node SDK throws on an error status just as it does on
//! `success=false`. The agent's error code is also sent in the
//! `x-cmdop-file-error` response header.

use std::time::Duration;

use cmdop_proto::terminal::{
    control_message, file_operation_request::Operation, file_operation_result,
    FileOperationRequest, FileOperationResult,
};
use tonic::Status;

use crate::{
    limits,
    state::State,
    store::{AuditOutcome, Workspace},
};
use file_operation_result as fres;

use cmdop_proto::headers::FILE_ERROR as FILE_ERROR_HEADER;

/// Checks a path field of a request that changes files: it must be given
/// (the agent would otherwise read an empty path as its home directory).
pub fn check_target_path(field: &str, path: &str) -> Result<(), Status> {
    check_path(field, path)?;
    if path.trim().is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field} is empty; name the file or directory to change"
        )));
    }
    Ok(())
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
) -> Result<FileOperationResult, Status> {
    if session_id.is_empty() {
        return Err(no_selection());
    }
    limits::check_len("session_id", session_id.len(), limits::MAX_SESSION_ID_BYTES)?;
    let session = state
        .sessions
        .get(ws, session_id)
        .ok_or_else(|| Status::not_found(format!("session '{session_id}' not found")))?;
    let (action, detail, bytes_in) = audit_of(&op);
    let record = state
        .audit
        .begin(state.audit.entry(
            ws,
            action,
            &session.machine_id,
            &session.info.hostname,
            detail,
        ))
        .await?;
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
            Ok(Ok(result)) => Ok(result),
            // The sender was dropped: the agent disconnected.
            Ok(Err(_)) => Err(session.disconnected_status()),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "machine {} did not answer the file operation within {} s; check that its agent is healthy",
                session.info.hostname,
                timeout.as_secs()
            ))),
        },
        _ = session.closed() => Err(session.disconnected_status()),
    };
    session.forget_file_op(&request_id);
    record.finish(match &outcome {
        Ok(result) if result.success => AuditOutcome {
            outcome: "ok".into(),
            bytes_in,
            bytes_out: match &result.result {
                Some(fres::Result::ReadFile(r)) => i64::try_from(r.content.len()).unwrap_or(0),
                _ => 0,
            },
            ..AuditOutcome::default()
        },
        Ok(result) => AuditOutcome {
            outcome: format!("failed: {} {}", result.error_code, result.error_message),
            ..AuditOutcome::default()
        },
        Err(status) => AuditOutcome {
            outcome: format!("failed: {}", status.message()),
            ..AuditOutcome::default()
        },
    });
    outcome
}

/// A file operation's audit action, details (paths, sizes; never
/// contents) and bytes sent to the machine.
fn audit_of(op: &Operation) -> (&'static str, serde_json::Value, i64) {
    use serde_json::json;
    match op {
        Operation::ListDirectory(r) => ("file.list", json!({ "path": r.path }), 0),
        Operation::ReadFile(r) => (
            "file.read",
            json!({ "path": r.path, "offset": r.offset, "length": r.length }),
            0,
        ),
        Operation::WriteFile(r) => (
            "file.write",
            json!({ "path": r.path, "bytes": r.content.len(), "overwrite": r.overwrite }),
            i64::try_from(r.content.len()).unwrap_or(0),
        ),
        Operation::CreateDirectory(r) => ("file.mkdir", json!({ "path": r.path }), 0),
        Operation::DeleteFile(r) => (
            "file.delete",
            json!({ "path": r.path, "recursive": r.recursive }),
            0,
        ),
        Operation::MoveFile(r) => (
            "file.move",
            json!({ "from": r.source_path, "to": r.destination_path }),
            0,
        ),
        Operation::CopyFile(r) => (
            "file.copy",
            json!({ "from": r.source_path, "to": r.destination_path, "recursive": r.recursive }),
            0,
        ),
        Operation::GetInfo(r) => ("file.info", json!({ "path": r.path }), 0),
    }
}

/// The error of a File* call with no session id on a connection that has
/// not picked a machine.
pub fn no_selection() -> Status {
    Status::failed_precondition(
        "no machine selected: pick a machine first with set_machine (GetSessionByHostname) on this \
         connection, or pass a session_id",
    )
}

/// This operation's result from the agent's answer; a failure is an error
/// status (see the module docs). `pick` extracts the result; on success a
/// missing result becomes its default value.
pub fn answer<T: Default>(
    r: FileOperationResult,
    pick: impl FnOnce(file_operation_result::Result) -> Option<T>,
) -> Result<T, Status> {
    if r.success {
        return Ok(r.result.and_then(pick).unwrap_or_default());
    }
    let message = if !r.error_message.is_empty() {
        r.error_message
    } else if !r.error_code.is_empty() {
        format!("the file operation failed: {}", r.error_code)
    } else {
        "the agent reported that the file operation failed".to_string()
    };
    let code = match r.error_code.as_str() {
        "NOT_FOUND" => tonic::Code::NotFound,
        "PERMISSION_DENIED" => tonic::Code::PermissionDenied,
        "ALREADY_EXISTS" => tonic::Code::AlreadyExists,
        "INVALID_ARGUMENT" => tonic::Code::InvalidArgument,
        "UNSUPPORTED" => tonic::Code::Unimplemented,
        // Not RESOURCE_EXHAUSTED for a full disk: the Node SDK turns that
        // into a rate-limit error.
        "NO_SPACE"
        | "IS_DIRECTORY"
        | "NOT_A_DIRECTORY"
        | "DIRECTORY_NOT_EMPTY"
        | "READ_ONLY"
        | "CROSS_DEVICE" => tonic::Code::FailedPrecondition,
        _ => tonic::Code::Unknown,
    };
    let mut status = Status::new(code, message);
    if let Ok(value) = r.error_code.parse() {
        if !r.error_code.is_empty() {
            status.metadata_mut().insert(FILE_ERROR_HEADER, value);
        }
    }
    Err(status)
}
