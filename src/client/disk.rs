//! Files to and from local disk, of any size, with memory bounded by a few
//! 1 MiB chunks: uploads read the local file as gRPC takes it, downloads
//! write each chunk as it arrives. Both ends are atomic: the agent writes a
//! temp file and renames it into place after the last byte, and so does
//! this side; a failed or cancelled transfer leaves the target untouched.
//!
//! With a server or agent that lacks streaming transfers (`files.v1`),
//! downloads fall back to official FileRead calls of 4 MiB each and uploads
//! to one official FileWrite (at most [`MAX_WRITE_BYTES`]); options the
//! official calls cannot honour make such a call fail with NOT_SUPPORTED
//! rather than be dropped.

use parking_lot::Mutex;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use cmdop_proto::ext::{DownloadStart, UploadStart};

use super::connection::CallPolicy;
use super::files::MAX_WRITE_BYTES;
use super::transfer::Source;
use super::{CancelToken, Client, Error, ErrorKind, Result};

/// Bytes asked per official FileRead when streaming without `files.v1`.
const OFFICIAL_READ_BYTES: i64 = 4 * 1024 * 1024;

/// How a transfer to or from a local file treats its target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferOptions {
    /// Copy the permission bits of the source to the target. Otherwise a
    /// replaced target keeps its own bits and a new one gets the default
    /// (0644 on the machine; 0666 minus the umask locally).
    pub keep_mode: bool,
    /// Fail instead of replacing an existing target.
    pub no_clobber: bool,
    /// Create missing parent directories of the target.
    pub create_parents: bool,
}

/// A local temp file next to the target, removed on drop unless renamed
/// into place.
struct LocalTemp {
    path: PathBuf,
    file: Option<File>,
    committed: bool,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl LocalTemp {
    fn create(target: &Path) -> Result<LocalTemp> {
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = target
            .file_name()
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "'{}' names no file; give the local file's path",
                    target.display()
                ))
            })?
            .to_string_lossy();
        let path = dir.join(format!(
            ".{name}.cmdop-tmp-{}-{}",
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| local_error(&e, "create a temp file in", dir))?;
        Ok(LocalTemp {
            path,
            file: Some(file),
            committed: false,
        })
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        let file = self.file.as_mut().expect("open until commit");
        blocking(|| file.write_all(data)).map_err(|e| local_error(&e, "write", &self.path))
    }

    /// Flushes to disk, sets `mode`, and renames over `target`.
    fn commit(mut self, target: &Path, mode: u32) -> Result<()> {
        let file = self.file.take().expect("open until commit");
        blocking(|| {
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&self.path, target)
        })
        .map_err(|e| local_error(&e, "put the downloaded file in place at", target))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for LocalTemp {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Runs short blocking file I/O without stalling other tasks of a
/// multi-threaded runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn local_error(e: &std::io::Error, doing: &str, path: &Path) -> Error {
    let msg = format!("cannot {doing} '{}': {e}", path.display());
    match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound(format!(
            "{msg}; check the path (or ask for missing parents to be created)"
        )),
        std::io::ErrorKind::PermissionDenied => {
            Error::PermissionDenied(format!("{msg}; check its permissions"))
        }
        _ => Error::OperationFailed(msg),
    }
}

impl Client {
    /// Streams the file at `path` on the selected machine into `on_chunk`,
    /// chunk by chunk in order, without holding it in memory. Returns the
    /// bytes delivered. Cancelling `cancel` stops it with CANCELLED.
    pub async fn read_file_into(
        &self,
        path: &str,
        on_chunk: impl FnMut(&[u8]) + Send,
        cancel: CancelToken,
    ) -> Result<u64> {
        let on_chunk = Mutex::new(on_chunk);
        self.download_with(
            path,
            false,
            |_, _| Ok(()),
            |data| {
                (on_chunk.lock())(data);
                Ok(())
            },
            &cancel,
        )
        .await
        .map_err(|e| self.inner.report(e))
    }

    /// Downloads the file at `remote` on the selected machine to the local
    /// path `local`, atomically (temp file next to it, renamed into place
    /// when complete). `progress(done, total)` follows the bytes on disk.
    /// Returns the file's size.
    pub async fn download_to_path(
        &self,
        remote: &str,
        local: &Path,
        opts: TransferOptions,
        progress: impl Fn(u64, u64) + Send + Sync,
        cancel: CancelToken,
    ) -> Result<u64> {
        self.download_to_path_inner(remote, local, opts, &progress, &cancel)
            .await
            .map_err(|e| self.inner.report(e))
    }

    async fn download_to_path_inner(
        &self,
        remote: &str,
        local: &Path,
        opts: TransferOptions,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
        cancel: &CancelToken,
    ) -> Result<u64> {
        let existing = std::fs::metadata(local).ok();
        if existing.as_ref().is_some_and(|m| m.is_dir()) {
            return Err(Error::InvalidArgument(format!(
                "'{}' is a directory; give the path of the file to create in it",
                local.display()
            )));
        }
        if opts.no_clobber && existing.is_some() {
            // The same kind as the agent's ALREADY_EXISTS for uploads.
            return Err(Error::InvalidArgument(format!(
                "'{}' already exists; remove it or allow replacing it",
                local.display()
            )));
        }
        if opts.create_parents {
            if let Some(dir) = local.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| local_error(&e, "create the directory", dir))?;
            }
        }
        // Mode for the target: the remote file's when asked, else the one
        // replaced, else what a new file gets.
        let default_mode = existing
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or_else(|| 0o666 & !umask());
        struct State {
            temp: Option<LocalTemp>,
            mode: u32,
            total: u64,
            done: u64,
        }
        let state = Mutex::new(State {
            temp: None,
            mode: default_mode,
            total: 0,
            done: 0,
        });
        self.download_with(
            remote,
            opts.keep_mode,
            |total, mode| {
                let mut s = state.lock();
                // A restart (after a token refresh) begins a fresh temp file.
                s.temp = Some(LocalTemp::create(local)?);
                s.total = total;
                s.done = 0;
                if let Some(mode) = mode.filter(|_| opts.keep_mode) {
                    s.mode = mode & 0o7777;
                }
                progress(0, total);
                Ok(())
            },
            |data| {
                let mut s = state.lock();
                s.temp.as_mut().expect("created at start").write(data)?;
                s.done += data.len() as u64;
                progress(s.done, s.total);
                Ok(())
            },
            cancel,
        )
        .await?;
        // A cancel that came in with the last bytes (say, from a progress
        // callback) still wins: nothing is renamed into place after it.
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let s = state.into_inner();
        let temp = s
            .temp
            .ok_or_else(|| Error::Protocol("the download never started".into()))?;
        temp.commit(local, s.mode)?;
        Ok(s.done)
    }

    /// Streams `path`: over `files.v1` when offered, else official FileRead
    /// calls. `on_start(total, mode)`; mode is `None` on the official path,
    /// where `need_mode` makes the call NOT_SUPPORTED.
    async fn download_with(
        &self,
        path: &str,
        need_mode: bool,
        on_start: impl Fn(u64, Option<u32>) -> Result<()> + Send + Sync,
        on_data: impl Fn(&[u8]) -> Result<()> + Send + Sync,
        cancel: &CancelToken,
    ) -> Result<u64> {
        if self.offers_file_streams() {
            let streamed = self
                .with_session(|session_id| {
                    self.download_each(
                        session_id,
                        path,
                        |start: &DownloadStart| on_start(start.total_size, Some(start.mode)),
                        &on_data,
                        cancel,
                    )
                })
                .await;
            match streamed {
                Err(e) if e.kind() == ErrorKind::NotSupported => {}
                other => return other,
            }
        }
        if need_mode {
            return Err(Error::NotSupported(
                "keeping the mode bits needs streaming transfers (files.v1), which this server or agent does not offer; update them, or download without keeping the mode".into(),
            ));
        }
        let policy = CallPolicy {
            idempotent: true,
            timeout: self.inner.opts.timeout,
        };
        let read = self.with_session(|session_id| {
            let on_start = &on_start;
            let on_data = &on_data;
            async move {
                let mut got = 0u64;
                let mut started = false;
                loop {
                    let res = self
                        .official_read(&session_id, path, got, OFFICIAL_READ_BYTES, policy)
                        .await?;
                    let total = u64::try_from(res.total_size).unwrap_or(0);
                    if !started {
                        on_start(total, None)?;
                        started = true;
                    }
                    if !res.content.is_empty() {
                        on_data(&res.content)?;
                        got += res.content.len() as u64;
                    }
                    if res.content.is_empty() || got >= total {
                        return Ok(got);
                    }
                }
            }
        });
        tokio::select! {
            r = read => r,
            _ = cancel.cancelled() => Err(Error::Cancelled),
        }
    }

    /// Uploads the local file `local` to `remote` on the selected machine,
    /// atomically: the agent renames its temp file into place only after
    /// the last byte, so a failed or cancelled upload never leaves a
    /// partial file at `remote` (the agent deletes its hidden temp file
    /// when it sees the call end, moments after a cancel returns).
    /// `progress(done, total)` follows the bytes sent. Returns the
    /// bytes written.
    pub async fn upload_from_path(
        &self,
        local: &Path,
        remote: &str,
        opts: TransferOptions,
        progress: impl Fn(u64, u64) + Send + Sync,
        cancel: CancelToken,
    ) -> Result<u64> {
        self.upload_from_path_inner(local, remote, opts, &progress, &cancel)
            .await
            .map_err(|e| self.inner.report(e))
    }

    async fn upload_from_path_inner(
        &self,
        local: &Path,
        remote: &str,
        opts: TransferOptions,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
        cancel: &CancelToken,
    ) -> Result<u64> {
        let meta = std::fs::metadata(local).map_err(|e| local_error(&e, "read", local))?;
        if !meta.is_file() {
            return Err(Error::InvalidArgument(format!(
                "'{}' is not a regular file; upload files one by one",
                local.display()
            )));
        }
        let total = meta.len();
        let mode = if opts.keep_mode {
            meta.permissions().mode() & 0o7777
        } else {
            0
        };
        if self.offers_file_streams() {
            let start = UploadStart {
                path: remote.to_string(),
                mode,
                overwrite: !opts.no_clobber,
                create_parents: opts.create_parents,
                total_size: Some(total),
                ..Default::default()
            };
            progress(0, total);
            let sent = |n| progress(n, total);
            let streamed = self
                .with_session(|session_id| {
                    self.upload_from(
                        session_id,
                        start.clone(),
                        Source::File(local),
                        &sent,
                        cancel,
                    )
                })
                .await;
            match streamed {
                Err(e) if e.kind() == ErrorKind::NotSupported => {}
                other => return other,
            }
        }
        let missing = [
            (opts.keep_mode, "keeping the mode bits"),
            (opts.no_clobber, "refusing to replace an existing file"),
            (total > MAX_WRITE_BYTES as u64, "files over 32 MiB"),
        ];
        if let Some((_, what)) = missing.iter().find(|(asked, _)| *asked) {
            return Err(Error::NotSupported(format!(
                "{what} needs streaming transfers (files.v1), which this server or agent does not offer; update them"
            )));
        }
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let data = std::fs::read(local).map_err(|e| local_error(&e, "read", local))?;
        progress(0, total);
        let write = self.write_file_official(remote, &data, opts.create_parents);
        tokio::select! {
            r = write => r?,
            _ = cancel.cancelled() => return Err(Error::Cancelled),
        }
        progress(data.len() as u64, total);
        Ok(data.len() as u64)
    }
}

/// The process umask (read without changing it, via /proc).
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}
