//! Atomic file writes (see [`super::atomic`]): readers see either the old
//! or the new file, never a partial one.
//!
//! `overwrite=false` still replaces an existing file: the official Python SDK
//! never sets the flag, so honouring it would break every plain write.

use std::path::Path;

use cmdop_proto::terminal::{FileWriteRequest, FileWriteResult};

use super::{
    atomic::{AtomicFile, AtomicOptions},
    entry::{entry_for, OwnerNames},
    error::FileResult,
};

/// Writes `req.content` to `path` (already resolved).
pub fn write_file(path: &Path, req: &FileWriteRequest) -> FileResult<FileWriteResult> {
    let mut file = AtomicFile::create(
        path,
        AtomicOptions {
            overwrite: true,
            create_parents: req.create_parents,
            mode: None,
        },
    )?;
    file.write(&req.content)?;
    let target = file.commit()?;
    let entry = entry_for(&target, &mut OwnerNames::default())?;
    Ok(FileWriteResult {
        bytes_written: req.content.len() as i64,
        entry: Some(entry),
    })
}
