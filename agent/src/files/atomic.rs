//! A file written in steps and published atomically: the content goes to a
//! temp file in the target's directory, is fsynced, and is renamed over the
//! target only by [`AtomicFile::commit`]. Dropping an uncommitted
//! [`AtomicFile`] removes the temp file, so readers see the old file or the
//! new one, never a partial one; [`super::journal`] removes it after a crash.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use rand::Rng;

use super::{
    error::{FileError, FileResult},
    journal,
};

/// Start disk writeback every this many bytes of a large write.
const WRITEBACK_STEP: u64 = 8 * 1024 * 1024;

/// How to create the file.
#[derive(Debug, Clone, Copy)]
pub struct AtomicOptions {
    /// Replace an existing file (false: ALREADY_EXISTS if there is one).
    pub overwrite: bool,
    /// Create missing parent directories.
    pub create_parents: bool,
    /// Permission bits; `None` keeps the replaced file's, new files get 0644.
    pub mode: Option<u32>,
}

/// A temp file on its way to replacing `target`.
pub struct AtomicFile {
    target: PathBuf,
    tmp: PathBuf,
    file: Option<fs::File>,
    written: u64,
    overwrite: bool,
    /// Dropped after the temp file is gone (fields drop after `Drop::drop`).
    _journal: journal::Entry,
}

impl AtomicFile {
    /// Creates the temp file for `path` (already resolved). A symlink is
    /// followed to the file it names, as editors do.
    pub fn create(path: &Path, opts: AtomicOptions) -> FileResult<AtomicFile> {
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
            Ok(_) if !opts.overwrite => {
                return Err(FileError::io(
                    "write",
                    &target,
                    &io::Error::from(io::ErrorKind::AlreadyExists),
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
            if opts.create_parents {
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
        let (mode, exact) = match (opts.mode, &existing) {
            (Some(mode), _) => (mode & 0o7777, true),
            (None, Some(m)) => (m.permissions().mode() & 0o7777, true),
            (None, None) => (0o644, false),
        };
        let nonce: u64 = rand::rng().random();
        let tmp = temp_path(dir, &target, nonce);
        let journal = journal::Entry::record(&tmp, nonce);
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| FileError::io("write", &target, &e))?;
        let atomic = AtomicFile {
            target,
            tmp,
            file: Some(file),
            written: 0,
            overwrite: opts.overwrite,
            _journal: journal,
        };
        if exact {
            // The mode given to open() was filtered by the umask; set the
            // exact bits asked for (or kept from the replaced file).
            atomic
                .file()?
                .set_permissions(fs::Permissions::from_mode(mode))
                .map_err(|e| atomic.error(&e))?;
        }
        Ok(atomic)
    }

    /// The file that commit will replace.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Bytes appended so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `data` to the temp file.
    pub fn write(&mut self, data: &[u8]) -> FileResult<()> {
        let result = self.file()?.write_all(data);
        result.map_err(|e| self.error(&e))?;
        let before = self.written;
        self.written += data.len() as u64;
        if before / WRITEBACK_STEP != self.written / WRITEBACK_STEP {
            self.start_writeback(before - before % WRITEBACK_STEP);
        }
        Ok(())
    }

    /// Asks the kernel to start writing `from..` to disk now, without
    /// waiting, so that the fsync in [`commit`](Self::commit) finds little
    /// left to flush: a large upload then overlaps network and disk instead
    /// of paying for the whole flush at the end.
    #[cfg(target_os = "linux")]
    fn start_writeback(&self, from: u64) {
        use std::os::fd::AsRawFd;
        if let Some(file) = &self.file {
            let len = self.written.saturating_sub(from);
            // SAFETY: a valid open descriptor and plain integers; the call
            // only schedules I/O. Failure is harmless (commit still fsyncs).
            unsafe {
                nix::libc::sync_file_range(
                    file.as_raw_fd(),
                    from as nix::libc::off64_t,
                    len as nix::libc::off64_t,
                    nix::libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn start_writeback(&self, _from: u64) {}

    /// Fsyncs the temp file and renames it over the target.
    pub fn commit(mut self) -> FileResult<PathBuf> {
        let file = self
            .file
            .take()
            .ok_or_else(|| FileError::invalid("the file was already committed"))?;
        file.sync_all().map_err(|e| self.error(&e))?;
        drop(file);
        let published = if self.overwrite {
            fs::rename(&self.tmp, &self.target)
        } else {
            // link() fails if the target appeared meanwhile: never replace it.
            fs::hard_link(&self.tmp, &self.target).and_then(|()| fs::remove_file(&self.tmp))
        };
        published.map_err(|e| self.error(&e))?;
        if let Some(dir) = self.target.parent() {
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        // Published: nothing left for Drop to remove.
        self.tmp = PathBuf::new();
        Ok(self.target.clone())
    }

    fn file(&self) -> FileResult<&fs::File> {
        self.file
            .as_ref()
            .ok_or_else(|| FileError::invalid("the file was already committed"))
    }

    fn error(&self, e: &io::Error) -> FileError {
        FileError::io("write", &self.target, e)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn temp_path(dir: &Path, target: &Path, nonce: u64) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(".{name}{}{nonce:016x}", journal::TEMP_MARKER))
}
