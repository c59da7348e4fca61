//! Atomic file writes: the content goes to a temp file in the same
//! directory, is fsynced, and is renamed over the target, so readers see
//! either the old or the new file, never a partial one.
//!
//! `overwrite=false` still replaces an existing file: the official Python SDK
//! never sets the flag, so honouring it would break every plain write.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use cmdop_proto::terminal::{FileWriteRequest, FileWriteResult};
use rand::Rng;

use super::{
    entry::{entry_for, OwnerNames},
    error::{FileError, FileResult},
};

/// Writes `req.content` to `path` (already resolved).
pub fn write_file(path: &Path, req: &FileWriteRequest) -> FileResult<FileWriteResult> {
    // Write through a symlink to the file it names, as editors do.
    let target = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    };
    let existing = match fs::metadata(&target) {
        Ok(m) if m.is_dir() => {
            return Err(FileError::new(
                "IS_DIRECTORY",
                format!("cannot write {}: it is a directory", target.display()),
            ))
        }
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(FileError::io("write", &target, &e)),
    };
    let dir = target
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| {
            FileError::invalid(format!(
                "cannot write {}: it has no parent directory",
                target.display()
            ))
        })?;
    if !dir.is_dir() {
        if req.create_parents {
            fs::create_dir_all(dir)
                .map_err(|e| FileError::io("create parent directories of", &target, &e))?;
        } else {
            return Err(FileError::new(
                "NOT_FOUND",
                format!(
                    "cannot write {}: directory {} does not exist",
                    target.display(),
                    dir.display()
                ),
            )
            .suggest("pass create_parents=true to create missing directories"));
        }
    }
    // Keep the permissions of the file being replaced; new files get 0644
    // (less the umask).
    let mode = existing
        .as_ref()
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    let tmp = temp_path(dir, &target);
    let result = write_and_rename(&tmp, &target, &req.content, mode, existing.is_some());
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| FileError::io("write", &target, &e))?;
    let entry = entry_for(&target, &mut OwnerNames::default())?;
    Ok(FileWriteResult {
        bytes_written: req.content.len() as i64,
        entry: Some(entry),
    })
}

fn temp_path(dir: &Path, target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nonce: u64 = rand::rng().random();
    dir.join(format!(".{name}.cmdop-tmp-{nonce:016x}"))
}

fn write_and_rename(
    tmp: &Path,
    target: &Path,
    content: &[u8],
    mode: u32,
    keep_mode: bool,
) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)?;
    if keep_mode {
        // `mode` above was filtered by the umask; restore the exact bits.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    file.write_all(content)?;
    file.sync_all()?;
    drop(file);
    fs::rename(tmp, target)?;
    if let Some(dir) = target.parent() {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
