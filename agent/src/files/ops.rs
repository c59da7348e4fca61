//! Create directory, delete, move, copy and get-info.

use std::{
    fs, io,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use rand::Rng;

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

/// Directories a delete refuses unless the request explicitly allows them.
pub struct Protected {
    /// Canonical forms of the home directory and `/`; empty when allowed.
    paths: Vec<PathBuf>,
}

impl Protected {
    /// Refuses the agent's home directory and `/`.
    pub fn refuse(home: &Path) -> Protected {
        let mut paths = vec![PathBuf::from("/")];
        paths.extend(fs::canonicalize(home).ok());
        paths.push(home.to_path_buf());
        Protected { paths }
    }

    /// Refuses nothing (the caller asked for it explicitly).
    pub fn allow() -> Protected {
        Protected { paths: Vec::new() }
    }

    fn check(&self, path: &Path, meta: &fs::Metadata) -> FileResult<()> {
        if self.paths.is_empty() || meta.file_type().is_symlink() || !meta.is_dir() {
            return Ok(());
        }
        let canonical = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if self.paths.contains(&canonical) {
            return Err(FileError::new(
                "PERMISSION_DENIED",
                format!(
                    "refusing to delete {} (the agent's home directory or /)",
                    path.display()
                ),
            )
            .suggest("delete the entries inside it one by one instead"));
        }
        Ok(())
    }
}

/// Deletes a file, symlink or (empty, or with `recursive`) directory.
/// Symlinks are removed, never followed. `/` and the home directory are
/// refused unless `protected` allows them.
pub fn delete(
    path: &Path,
    req: &FileDeleteRequest,
    protected: Protected,
) -> FileResult<FileDeleteResult> {
    if path.parent().is_none() {
        return Err(FileError::invalid("refusing to delete the root directory"));
    }
    let meta = fs::symlink_metadata(path).map_err(|e| FileError::io("delete", path, &e))?;
    protected.check(path, &meta)?;
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
                Protected::allow(),
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
fn canonical_or_same(p: &Path) -> PathBuf {
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
        let n = copy_file(from, to, &meta)?;
        *bytes = bytes.saturating_add(n as i64);
    }
    Ok(())
}

/// Copies a regular file to a new, randomly named temp file next to `to`
/// (`O_EXCL|O_NOFOLLOW`) and renames it over `to`: a symlink at `to` is
/// replaced, never written through.
fn copy_file(from: &Path, to: &Path, meta: &fs::Metadata) -> FileResult<u64> {
    let dir = to
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nonce: u64 = rand::rng().random();
    let tmp = dir.join(format!(".{name}.copy-{nonce:016x}"));
    let mut source = fs::File::open(from).map_err(|e| FileError::io("copy", from, &e))?;
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| FileError::io("copy to", to, &e))?;
    let result = (|| {
        let n = io::copy(&mut source, &mut out)?;
        out.set_permissions(fs::Permissions::from_mode(
            meta.permissions().mode() & 0o7777,
        ))?;
        drop(out);
        fs::rename(&tmp, to)?;
        Ok(n)
    })();
    result.map_err(|e: io::Error| {
        let _ = fs::remove_file(&tmp);
        FileError::io("copy to", to, &e)
    })
}
