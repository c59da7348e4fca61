//! Reading (part of) a file.

use std::{
    io::{Read, Seek, SeekFrom},
    path::Path,
};

use cmdop_proto::terminal::{FileReadRequest, FileReadResult};

use super::{
    error::{FileError, FileResult},
    mime,
};

/// Most bytes one read returns. It stays below the 32 MiB gRPC message
/// limit with room for the envelope, so a capped read always fits.
pub const MAX_READ_BYTES: u64 = cmdop_proto::limits::MAX_INLINE_FILE_BYTES as u64;

/// Reads `path` (already resolved) from `offset`, `length` bytes (0 = to the
/// end), capped at [`MAX_READ_BYTES`] with `is_truncated`.
pub fn read_file(path: &Path, req: &FileReadRequest) -> FileResult<FileReadResult> {
    if req.offset < 0 || req.length < 0 {
        return Err(FileError::invalid("offset and length must not be negative"));
    }
    let meta = std::fs::metadata(path).map_err(|e| FileError::io("read", path, &e))?;
    if meta.is_dir() {
        return Err(FileError::new(
            "IS_DIRECTORY",
            format!("cannot read {}: it is a directory", path.display()),
        )
        .suggest("use list_directory for directories"));
    }
    let mut file = std::fs::File::open(path).map_err(|e| FileError::io("read", path, &e))?;
    let offset = req.offset as u64;
    if offset > 0 {
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| FileError::io("seek in", path, &e))?;
    }
    let wanted = if req.length == 0 {
        u64::MAX
    } else {
        req.length as u64
    };
    let limit = wanted.min(MAX_READ_BYTES);
    let mut content = Vec::new();
    // When the cap applies, read one byte past it to learn whether the file
    // really goes on (and the result is truncated).
    let capped = wanted > MAX_READ_BYTES;
    file.by_ref()
        .take(if capped { limit + 1 } else { limit })
        .read_to_end(&mut content)
        .map_err(|e| FileError::io("read", path, &e))?;
    let is_truncated = capped && content.len() as u64 > limit;
    content.truncate(limit as usize);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mime_type = mime::guess(&name).to_owned();
    let is_text = std::str::from_utf8(&content).is_ok();
    Ok(FileReadResult {
        encoding: if is_text {
            "utf-8".into()
        } else {
            "binary".into()
        },
        total_size: meta.len() as i64,
        viewer_type: mime::viewer_for(&mime_type) as i32,
        mime_type,
        is_truncated,
        content: content.into(),
        ..Default::default()
    })
}
