//! File operations the official SDKs use, answered as `FileOperationResult`.
//!
//! Everything here is blocking file-system work; the connection runs
//! [`handle`] on tokio's blocking pool.

pub mod atomic;
pub mod entry;
pub mod error;
pub mod journal;
pub mod list;
pub mod mime;
pub mod ops;
pub mod path;
pub mod read;
pub mod write;

use std::path::Path;

use cmdop_proto::terminal::{
    file_operation_request::Operation, file_operation_result::Result as OpResult,
    FileOperationRequest, FileOperationResult,
};

use self::{
    error::{FileError, FileResult},
    path::resolve,
};

/// Runs one file operation; paths resolve against `home`. Never fails: a
/// failure is a result with `success=false` and an error code.
pub fn handle(req: FileOperationRequest, home: &Path) -> FileOperationResult {
    let request_id = req.request_id;
    match run(req.operation, home) {
        Ok(result) => FileOperationResult {
            request_id,
            success: true,
            result: Some(result),
            ..Default::default()
        },
        Err(err) => FileOperationResult {
            request_id,
            success: false,
            error_code: err.code.to_owned(),
            // The server passes only the message on to the SDKs, so it carries
            // the suggestions too.
            error_message: if err.suggestions.is_empty() {
                err.message
            } else {
                format!("{} ({})", err.message, err.suggestions.join("; "))
            },
            suggestions: err.suggestions,
            can_retry: err.can_retry,
            result: None,
        },
    }
}

fn run(op: Option<Operation>, home: &Path) -> FileResult<OpResult> {
    let op = op.ok_or_else(|| {
        FileError::new(
            "UNSUPPORTED",
            "this file operation is not supported by this agent",
        )
        .suggest(
            "update the agent, or use one of: list, read, write, mkdir, delete, move, copy, info",
        )
    })?;
    Ok(match op {
        Operation::ListDirectory(r) => {
            OpResult::ListDirectory(list::list_directory(&resolve(&r.path, home), &r)?)
        }
        Operation::ReadFile(r) => OpResult::ReadFile(read::read_file(&resolve(&r.path, home), &r)?),
        Operation::WriteFile(r) => {
            OpResult::WriteFile(write::write_file(&require(&r.path, "path", home)?, &r)?)
        }
        Operation::CreateDirectory(r) => {
            OpResult::CreateDirectory(ops::create_directory(&require(&r.path, "path", home)?, &r)?)
        }
        // The official FileDelete has no way to ask for the home directory
        // or `/` explicitly, so over it they are always refused.
        Operation::DeleteFile(r) => OpResult::DeleteFile(ops::delete(
            &require(&r.path, "path", home)?,
            &r,
            ops::Protected::refuse(home),
        )?),
        Operation::MoveFile(r) => OpResult::MoveFile(ops::move_path(
            &require(&r.source_path, "source_path", home)?,
            &require(&r.destination_path, "destination_path", home)?,
            &r,
        )?),
        Operation::CopyFile(r) => OpResult::CopyFile(ops::copy(
            &require(&r.source_path, "source_path", home)?,
            &require(&r.destination_path, "destination_path", home)?,
            &r,
        )?),
        Operation::GetInfo(r) => OpResult::GetInfo(ops::get_info(&resolve(&r.path, home))?),
    })
}

/// Resolves a path that a mutating operation needs: an empty one (which
/// reads as "home" elsewhere) is INVALID_ARGUMENT, never the home directory.
fn require(raw: &str, field: &str, home: &Path) -> FileResult<std::path::PathBuf> {
    if raw.trim().is_empty() {
        return Err(FileError::invalid(format!(
            "{field} is empty; name the file or directory to change"
        )));
    }
    Ok(resolve(raw, home))
}

#[cfg(test)]
mod tests;
