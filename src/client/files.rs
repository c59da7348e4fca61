//! File operations on the selected machine: official File*Rpc calls, and
//! for whole-file reads and writes the streaming transfers of
//! [`super::transfer`] when the server offers them.

use std::future::Future;

use cmdop_proto::terminal::{
    FileListDirectoryRpcRequest, FileReadResult, FileReadRpcRequest, FileWriteRpcRequest,
    StreamFileEntry, StreamFileType,
};

use super::connection::CallPolicy;
use super::{Client, Error, ErrorKind, LogLevel, Result};

/// Entries asked per page (the official SDKs' default).
const PAGE_SIZE: i32 = 100;
/// Largest file [`Client::read_file`] assembles (both paths).
pub(crate) const MAX_READ_BYTES: usize = 512 * 1024 * 1024;
/// Largest file `write_file` sends on the official path: one FileWrite
/// message, which servers cap at 32 MiB including the envelope (path,
/// session id). The streaming path has no such limit.
pub(crate) const MAX_WRITE_BYTES: usize = cmdop_proto::limits::MAX_INLINE_FILE_BYTES;

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Unknown = 0,
    File = 1,
    Directory = 2,
    Symlink = 3,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq)]
pub struct FileEntry {
    pub name: String,
    pub path: String,
    pub kind: FileKind,
    pub size: i64,
    /// Permission bits parsed from `permissions` (e.g. 0o755).
    pub mode: u32,
    /// As the agent sent it, e.g. "rwxr-xr-x".
    pub permissions: String,
    /// Unix seconds; 0 when unknown.
    pub mtime: i64,
    pub is_hidden: bool,
    pub symlink_target: String,
}

/// One page of a directory listing.
#[derive(Debug, Clone, PartialEq)]
pub struct FileList {
    pub path: String,
    pub entries: Vec<FileEntry>,
    /// Pass to the next call for the next page; empty on the last page.
    pub next_page_token: String,
    pub total_count: i32,
}

/// Parse "rwxr-xr-x" (optionally with a leading type letter, and s/t/S/T
/// special bits) into permission bits.
pub(crate) fn parse_mode(perms: &str) -> u32 {
    let b = perms.as_bytes();
    let b = if b.len() == 10 { &b[1..] } else { b };
    if b.len() != 9 {
        return 0;
    }
    let mut mode = 0u32;
    for (i, &c) in b.iter().enumerate() {
        let bit = 1 << (8 - i);
        match c {
            b'r' | b'w' | b'x' => mode |= bit,
            b's' | b't' => {
                mode |= bit;
                mode |= special_bit(i);
            }
            b'S' | b'T' => mode |= special_bit(i),
            _ => {}
        }
    }
    mode
}

fn special_bit(index: usize) -> u32 {
    match index {
        2 => 0o4000,
        5 => 0o2000,
        8 => 0o1000,
        _ => 0,
    }
}

impl From<StreamFileEntry> for FileEntry {
    fn from(e: StreamFileEntry) -> FileEntry {
        let kind = match StreamFileType::try_from(e.r#type) {
            Ok(StreamFileType::StreamFile) => FileKind::File,
            Ok(StreamFileType::StreamDirectory) => FileKind::Directory,
            Ok(StreamFileType::StreamSymlink) => FileKind::Symlink,
            _ => FileKind::Unknown,
        };
        FileEntry {
            mode: parse_mode(&e.permissions),
            name: e.name,
            path: e.path,
            kind,
            size: e.size,
            permissions: e.permissions,
            mtime: e.modified_at.map(|t| t.seconds).unwrap_or(0),
            is_hidden: e.is_hidden,
            symlink_target: e.symlink_target,
        }
    }
}

impl Client {
    /// Run `op` with the selected machine's session id; when the server no
    /// longer knows that session (the agent reconnected), look the machine
    /// up again and retry once.
    pub(crate) async fn with_session<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let machine = self.machine().ok_or_else(Error::no_machine)?;
        let session = if machine.session_id.is_empty() {
            self.refresh_machine().await?.session_id
        } else {
            machine.session_id
        };
        if session.is_empty() {
            return Err(Error::Unavailable(format!(
                "machine '{}' is offline: start its agent, or select another machine",
                machine.hostname
            )));
        }
        match op(session).await {
            Err(e) if e.kind() == ErrorKind::NotFound && e.to_string().contains("session") => {
                let fresh = self.refresh_machine().await?;
                if fresh.session_id.is_empty() {
                    return Err(e);
                }
                op(fresh.session_id).await
            }
            other => other,
        }
    }

    /// List one page of directory `path` on the selected machine.
    pub async fn list_files(
        &self,
        path: &str,
        page_token: Option<&str>,
        include_hidden: bool,
    ) -> Result<FileList> {
        let policy = CallPolicy {
            idempotent: true,
            timeout: self.inner.opts.timeout,
        };
        let result = self
            .with_session(|session_id| async move {
                let req = FileListDirectoryRpcRequest {
                    session_id,
                    path: path.to_string(),
                    include_hidden,
                    page_size: PAGE_SIZE,
                    page_token: page_token.unwrap_or_default().to_string(),
                };
                let r = self
                    .inner
                    .unary("FileListDirectory", req, policy, |mut c, r| async move {
                        c.terminal.file_list_directory(r).await
                    })
                    .await?;
                if !r.success {
                    return Err(Error::from_remote_text(
                        &format!("listing '{path}'"),
                        &r.error,
                    ));
                }
                r.result.ok_or_else(|| {
                    Error::Protocol("FileListDirectory succeeded without a result".into())
                })
            })
            .await
            .map_err(|e| self.inner.report(e))?;
        Ok(FileList {
            path: result.current_path,
            entries: result.entries.into_iter().map(FileEntry::from).collect(),
            next_page_token: result.next_page_token,
            total_count: result.total_count,
        })
    }

    /// Read the whole file at `path` (at most [`MAX_READ_BYTES`]) on the
    /// selected machine: one streaming Download when the server offers it,
    /// else repeated official FileRead calls.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        if self.offers_file_streams() {
            let streamed = self
                .with_session(|session_id| self.download(session_id, path, MAX_READ_BYTES))
                .await;
            match streamed {
                Err(e) if e.kind() == ErrorKind::NotSupported => self.stream_fallback(&e),
                other => return other.map_err(|e| self.inner.report(e)),
            }
        }
        let policy = CallPolicy {
            idempotent: true,
            timeout: self.inner.opts.timeout,
        };
        self.with_session(|session_id| async move {
            let mut content = Vec::new();
            loop {
                let res = self
                    .official_read(&session_id, path, content.len() as u64, 0, policy)
                    .await?;
                let got = res.content.len();
                if content.len() + got > MAX_READ_BYTES {
                    return Err(Error::InvalidArgument(format!(
                        "'{path}' is larger than {} MiB: read it in parts with a command instead",
                        MAX_READ_BYTES >> 20
                    )));
                }
                content.extend_from_slice(&res.content);
                let total = usize::try_from(res.total_size).unwrap_or(0);
                if !res.is_truncated || got == 0 || content.len() >= total {
                    return Ok(content);
                }
            }
        })
        .await
        .map_err(|e| self.inner.report(e))
    }

    /// One official FileRead of `path` from `offset` (`length` 0: as much
    /// as the server sends at once); a failure answered as `success=false`
    /// (older servers) becomes an error like a failure status does.
    pub(crate) async fn official_read(
        &self,
        session_id: &str,
        path: &str,
        offset: u64,
        length: i64,
        policy: CallPolicy,
    ) -> Result<FileReadResult> {
        let req = FileReadRpcRequest {
            session_id: session_id.to_string(),
            path: path.to_string(),
            offset: i64::try_from(offset).unwrap_or(i64::MAX),
            length,
            transcode: false,
        };
        let r = self
            .inner
            .unary("FileRead", req, policy, |mut c, r| async move {
                c.terminal.file_read(r).await
            })
            .await?;
        if !r.success {
            return Err(Error::from_remote_text(
                &format!("reading '{path}'"),
                &r.error,
            ));
        }
        r.result
            .ok_or_else(|| Error::Protocol("FileRead succeeded without a result".into()))
    }

    /// Create or replace the file at `path` on the selected machine,
    /// atomically: readers see the old or the new file, never a mix. With a
    /// server that offers streaming transfers any size works (the data goes
    /// up in 1 MiB chunks); otherwise one official FileWrite carries at most
    /// [`MAX_WRITE_BYTES`].
    pub async fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        if self.offers_file_streams() {
            let streamed = self
                .with_session(|session_id| self.upload(session_id, path, data))
                .await;
            match streamed {
                Err(e) if e.kind() == ErrorKind::NotSupported => self.stream_fallback(&e),
                other => return other.map_err(|e| self.inner.report(e)),
            }
        }
        if data.len() > MAX_WRITE_BYTES {
            return Err(self.inner.report(Error::InvalidArgument(format!(
                "{} bytes is more than one write can carry ({} bytes) because the server or agent does not offer streaming transfers (files.v1); update them, or write it in parts of at most 32 MiB to separate files",
                data.len(),
                MAX_WRITE_BYTES
            ))));
        }
        self.write_file_official(path, data, false)
            .await
            .map_err(|e| self.inner.report(e))
    }

    /// One official FileWrite of `data` to `path` (the caller checks the
    /// size against [`MAX_WRITE_BYTES`]).
    pub(crate) async fn write_file_official(
        &self,
        path: &str,
        data: &[u8],
        create_parents: bool,
    ) -> Result<()> {
        let policy = CallPolicy {
            idempotent: true,
            timeout: self.inner.opts.timeout,
        };
        let content = bytes::Bytes::copy_from_slice(data);
        self.with_session(|session_id| {
            let content = content.clone();
            async move {
                let req = FileWriteRpcRequest {
                    session_id,
                    path: path.to_string(),
                    content,
                    overwrite: true,
                    create_parents,
                };
                let r = self
                    .inner
                    .unary("FileWrite", req, policy, |mut c, r| async move {
                        c.terminal.file_write(r).await
                    })
                    .await?;
                if !r.success {
                    return Err(Error::from_remote_text(
                        &format!("writing '{path}'"),
                        &r.error,
                    ));
                }
                Ok(())
            }
        })
        .await
    }

    /// Notes that the machine's agent cannot stream and the official path follows.
    fn stream_fallback(&self, why: &Error) {
        self.inner.log(LogLevel::Debug, || {
            format!("streaming transfer unavailable ({why}); using the official File* calls")
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_strings_become_mode_bits() {
        assert_eq!(parse_mode("rwxr-xr-x"), 0o755);
        assert_eq!(parse_mode("-rw-r--r--"), 0o644);
        assert_eq!(parse_mode("drwxrwxrwt"), 0o1777);
        assert_eq!(parse_mode("rwsr-xr-x"), 0o4755);
        assert_eq!(parse_mode(""), 0);
        assert_eq!(parse_mode("garbage"), 0);
    }
}
