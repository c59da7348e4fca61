//! Create directory, delete, move, copy and get-info.

use std::{fs, io, path::Path};

use cmdop_proto::terminal::{
    FileCopyRequest, FileCopyResult, FileCreateDirectoryRequest, FileCreateDirectoryResult,
    FileDeleteRequest, FileDeleteResult, FileGetInfoResult, FileMoveRequest, FileMoveResult,
};

use super::{
    entry::{entry_for, OwnerNames},
    error::{FileError, FileResult},
};

/// Creates `path`; with `create_parents` it behaves like `mkdir -p` (an
/// existing directory is fine).
pub fn create_directory(
    path: &Path,
    req: &FileCreateDirectoryRequest,
) -> FileResult<FileCreateDirectoryResult> {
    let made = if req.create_parents {
        fs::create_dir_all(path)
    } else {
        fs::create_dir(path)
    };
    made.map_err(|e| {
        let err = FileError::io("create directory", path, &e);
        if e.kind() == io::ErrorKind::NotFound {
            err.suggest("pass create_parents=true to create missing parent directories")
        } else {
            err
        }
    })?;
    Ok(FileCreateDirectoryResult {
        entry: Some(entry_for(path, &mut OwnerNames::default())?),
    })
}

/// Deletes a file, symlink or (empty, or with `recursive`) directory.
/// Symlinks are removed, never followed.
pub fn delete(path: &Path, req: &FileDeleteRequest) -> FileResult<FileDeleteResult> {
    if path.parent().is_none() {
        return Err(FileError::invalid("refusing to delete the root directory"));
    }
    let meta = fs::symlink_metadata(path).map_err(|e| FileError::io("delete", path, &e))?;
    let mut counts = (0i32, 0i32);
    if meta.is_dir() {
        if req.recursive {
            remove_tree(path, &mut counts)?;
        } else {
            fs::remove_dir(path).map_err(|e| FileError::io("delete", path, &e))?;
            counts.1 += 1;
        }
    } else {
        fs::remove_file(path).map_err(|e| FileError::io("delete", path, &e))?;
        counts.0 += 1;
    }
    Ok(FileDeleteResult {
        deleted_path: path.display().to_string(),
        files_deleted: counts.0,
        dirs_deleted: counts.1,
    })
}

/// Removes a directory tree, counting (files, dirs).
fn remove_tree(dir: &Path, counts: &mut (i32, i32)) -> FileResult<()> {
    for item in fs::read_dir(dir).map_err(|e| FileError::io("delete", dir, &e))? {
        let item = item.map_err(|e| FileError::io("delete", dir, &e))?;
        let path = item.path();
        let is_dir = item.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            remove_tree(&path, counts)?;
        } else {
            fs::remove_file(&path).map_err(|e| FileError::io("delete", &path, &e))?;
            counts.0 = counts.0.saturating_add(1);
        }
    }
    fs::remove_dir(dir).map_err(|e| FileError::io("delete", dir, &e))?;
    counts.1 = counts.1.saturating_add(1);
    Ok(())
}

/// Moves (renames) `from` to `to`; across file systems it copies and deletes.
pub fn move_path(from: &Path, to: &Path, req: &FileMoveRequest) -> FileResult<FileMoveResult> {
    let meta = fs::symlink_metadata(from).map_err(|e| FileError::io("move", from, &e))?;
    check_destination(from, to, req.overwrite, meta.is_dir())?;
    match fs::rename(from, to) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
            let mut copied = 0;
            copy_tree(from, to, &mut copied)?;
            delete(
                from,
                &FileDeleteRequest {
                    path: String::new(),
                    recursive: true,
                },
            )?;
        }
        Err(e) => return Err(FileError::io("move", from, &e)),
    }
    Ok(FileMoveResult {
        entry: Some(entry_for(to, &mut OwnerNames::default())?),
    })
}

/// Copies a file, or a directory tree with `recursive`.
pub fn copy(from: &Path, to: &Path, req: &FileCopyRequest) -> FileResult<FileCopyResult> {
    let meta = fs::symlink_metadata(from).map_err(|e| FileError::io("copy", from, &e))?;
    if meta.is_dir() && !req.recursive {
        return Err(FileError::new(
            "IS_DIRECTORY",
            format!("cannot copy {}: it is a directory", from.display()),
        )
        .suggest("pass recursive=true to copy a directory with its contents"));
    }
    check_destination(from, to, req.overwrite, meta.is_dir())?;
    let mut bytes = 0i64;
    copy_tree(from, to, &mut bytes)?;
    Ok(FileCopyResult {
        entry: Some(entry_for(to, &mut OwnerNames::default())?),
        bytes_copied: bytes,
    })
}

/// Describes `path` (a symlink itself, not its target).
pub fn get_info(path: &Path) -> FileResult<FileGetInfoResult> {
    Ok(FileGetInfoResult {
        entry: Some(entry_for(path, &mut OwnerNames::default())?),
    })
}

/// Rejects a destination that exists (unless `overwrite`) or lies inside
/// the source directory; with `overwrite`, removes an existing destination
/// file so a rename or copy can take its place.
fn check_destination(from: &Path, to: &Path, overwrite: bool, from_is_dir: bool) -> FileResult<()> {
    if from_is_dir {
        let (f, t) = (canonical_or_same(from), canonical_or_same(to));
        if t.starts_with(&f) {
            return Err(FileError::invalid(format!(
                "cannot put {} inside itself ({})",
                from.display(),
                to.display()
            )));
        }
    }
    match fs::symlink_metadata(to) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FileError::io("inspect destination", to, &e)),
        Ok(_) if !overwrite => Err(FileError::new(
            "ALREADY_EXISTS",
            format!("destination {} already exists", to.display()),
        )
        .suggest("pass overwrite=true to replace it")),
        Ok(m) if m.is_dir() => Err(FileError::new(
            "IS_DIRECTORY",
            format!(
                "destination {} is an existing directory; it is not replaced",
                to.display()
            ),
        )
        .suggest("delete it first or choose another destination path")),
        Ok(_) => Ok(()),
    }
}

/// Canonical form of `p`, or of its parent joined with its name when `p`
/// does not exist yet.
fn canonical_or_same(p: &Path) -> std::path::PathBuf {
    if let Ok(c) = fs::canonicalize(p) {
        return c;
    }
    match (
        p.parent().and_then(|d| fs::canonicalize(d).ok()),
        p.file_name(),
    ) {
        (Some(d), Some(n)) => d.join(n),
        _ => p.to_path_buf(),
    }
}

/// Copies files, directories and symlinks (as symlinks) below `from`.
fn copy_tree(from: &Path, to: &Path, bytes: &mut i64) -> FileResult<()> {
    let meta = fs::symlink_metadata(from).map_err(|e| FileError::io("copy", from, &e))?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(from).map_err(|e| FileError::io("copy", from, &e))?;
        if fs::symlink_metadata(to).is_ok() {
            fs::remove_file(to).map_err(|e| FileError::io("replace", to, &e))?;
        }
        std::os::unix::fs::symlink(&target, to).map_err(|e| FileError::io("copy to", to, &e))?;
    } else if ft.is_dir() {
        fs::create_dir(to).map_err(|e| FileError::io("copy to", to, &e))?;
        fs::set_permissions(to, meta.permissions())
            .map_err(|e| FileError::io("copy to", to, &e))?;
        for item in fs::read_dir(from).map_err(|e| FileError::io("copy", from, &e))? {
            let item = item.map_err(|e| FileError::io("copy", from, &e))?;
            copy_tree(&item.path(), &to.join(item.file_name()), bytes)?;
        }
    } else {
        let n = fs::copy(from, to).map_err(|e| FileError::io("copy to", to, &e))?;
        *bytes = bytes.saturating_add(n as i64);
    }
    Ok(())
}
