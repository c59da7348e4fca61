//! Directory listing with paging: directories first, then by name; the page
//! token is an opaque cursor ("" on the last page).

use std::path::Path;

use cmdop_proto::terminal::{FileListDirectoryRequest, FileListDirectoryResult};

use super::{
    entry::{entry_from_metadata, OwnerNames},
    error::{FileError, FileResult},
};

/// Page size when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page we hand out, whatever was asked.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Entries a listing may hold at all (beyond this, the directory is refused).
pub const MAX_ENTRIES: usize = 1_000_000;
const TOKEN_PREFIX: &str = "cursor:";

/// Lists `dir` (already resolved).
pub fn list_directory(
    dir: &Path,
    req: &FileListDirectoryRequest,
) -> FileResult<FileListDirectoryResult> {
    let meta = std::fs::metadata(dir).map_err(|e| FileError::io("list", dir, &e))?;
    if !meta.is_dir() {
        return Err(FileError::new(
            "NOT_A_DIRECTORY",
            format!("cannot list {}: it is not a directory", dir.display()),
        )
        .suggest("use read or get_info for files"));
    }
    let page_size = match req.page_size {
        n if n <= 0 => DEFAULT_PAGE_SIZE,
        n => (n as usize).min(MAX_PAGE_SIZE),
    };
    let start = parse_token(&req.page_token)?;

    // Sort keys only; full metadata is fetched for the requested page alone.
    let mut names: Vec<(bool, String)> = Vec::new();
    for item in std::fs::read_dir(dir).map_err(|e| FileError::io("list", dir, &e))? {
        let item = item.map_err(|e| FileError::io("list", dir, &e))?;
        let name = item.file_name().to_string_lossy().into_owned();
        if !req.include_hidden && name.starts_with('.') {
            continue;
        }
        let is_dir = item.file_type().map(|t| t.is_dir()).unwrap_or(false);
        names.push((!is_dir, name));
        if names.len() > MAX_ENTRIES {
            return Err(FileError::new(
                "TOO_MANY_ENTRIES",
                format!(
                    "{} has more than {MAX_ENTRIES} entries; list a subdirectory instead",
                    dir.display()
                ),
            ));
        }
    }
    names.sort();
    let total = names.len();
    let end = start.saturating_add(page_size).min(total);
    let mut owners = OwnerNames::default();
    let entries = names
        .get(start.min(total)..end)
        .unwrap_or_default()
        .iter()
        .filter_map(|(_, name)| {
            let path = dir.join(name);
            // An entry deleted between readdir and stat is skipped.
            let meta = std::fs::symlink_metadata(&path).ok()?;
            Some(entry_from_metadata(&path, &meta, &mut owners))
        })
        .collect();
    let has_more = end < total;
    Ok(FileListDirectoryResult {
        current_path: dir.display().to_string(),
        entries,
        next_page_token: if has_more {
            format!("{TOKEN_PREFIX}{end}")
        } else {
            String::new()
        },
        total_count: total.min(i32::MAX as usize) as i32,
        has_more,
    })
}

fn parse_token(token: &str) -> FileResult<usize> {
    if token.is_empty() {
        return Ok(0);
    }
    token
        .strip_prefix(TOKEN_PREFIX)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            FileError::invalid(format!("page_token {token:?} is not one this agent issued"))
                .suggest(
                    "pass the next_page_token of the previous page, or \"\" for the first page",
                )
        })
}
