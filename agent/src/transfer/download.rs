//! One download: `start`, then chunks read from the file, never more than
//! [`DOWNLOAD_WINDOW_BYTES`] ahead of the control plane's credit, then `end`;
//! or, once a side connection offered in `start` is up, the rest there
//! ([`super::side`]).

use std::{
    fs,
    io::{Read, Seek, SeekFrom},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::UNIX_EPOCH,
};

use cmdop_proto::ext::{file_downlink::Op, file_uplink::Event, DownloadRequest, DownloadStart};
use tokio::sync::mpsc::{self, error::TryRecvError};

use super::{
    blocking,
    side::{self, SideDownload},
    Reporter, CHUNK_BYTES, DOWNLOAD_WINDOW_BYTES,
};
use crate::{
    exec_raw::SideTarget,
    files::error::{FileError, FileResult},
};

/// Sends the file `req` names (resolved to `path`); with a ticket and the
/// control plane's address (`server_url`, when this agent may use side
/// connections) a large file moves to a side connection once it is up.
pub async fn run(
    req: DownloadRequest,
    path: PathBuf,
    mut steps: mpsc::Receiver<Op>,
    report: &Reporter,
    server_url: Option<&str>,
) -> FileResult<()> {
    let (ticket, peer_pin) = (req.raw_ticket.clone(), req.raw_tls_peer_sha256.clone());
    let (mut file, mut start) = blocking(move || open(&path, req.offset, req.length)).await?;
    let total = start.total_size;
    let target = (total >= side::SIDE_AFTER_BYTES)
        .then(|| SideTarget::new(&report.id, &ticket, &peer_pin, server_url))
        .flatten();
    if let Some(target) = &target {
        start.raw_ticket = ticket;
        start.raw_tls_agent_sha256 = target.agent_pin();
    }
    report.send(Event::Start(start)).await?;
    let mut side = target.map(SideDownload::open);
    let (mut sent, mut credited) = (0u64, 0u64);
    while sent < total {
        if let Some(conn) = side.as_mut().and_then(SideDownload::ready) {
            return side::send_rest(file, total - sent, conn, &mut steps, report).await;
        }
        // Take every step already queued; wait for one while the window is full.
        loop {
            let step = if sent - credited < DOWNLOAD_WINDOW_BYTES {
                match steps.try_recv() {
                    Ok(step) => step,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Ok(()),
                }
            } else {
                match steps.recv().await {
                    Some(step) => step,
                    None => return Ok(()),
                }
            };
            match step {
                Op::Credit(n) => credited = credited.max(n.min(sent)),
                Op::Abort(reason) => {
                    tracing::debug!(%reason, "download aborted");
                    return Ok(());
                }
                _ => {}
            }
        }
        let want = (total - sent).min(CHUNK_BYTES as u64);
        let (back, chunk) = blocking(move || {
            let mut chunk = Vec::with_capacity(want as usize);
            (&mut file.0)
                .take(want)
                .read_to_end(&mut chunk)
                .map_err(|e| FileError::io("read", &file.1, &e))?;
            Ok((file, chunk))
        })
        .await?;
        file = back;
        if chunk.is_empty() {
            return Err(FileError::new(
                "DATA_LOSS",
                format!(
                    "{} shrank while it was read ({sent} of {total} bytes sent); try again",
                    file.1.display()
                ),
            ));
        }
        sent += chunk.len() as u64;
        report.send(Event::Data(chunk.into())).await?;
    }
    report.send(Event::End(true)).await
}

/// Opens `path` at `offset`; the start message announces the bytes that
/// will follow (`length`, 0 = to the end, capped at the end of the file).
fn open(path: &Path, offset: u64, length: u64) -> FileResult<((fs::File, PathBuf), DownloadStart)> {
    let meta = fs::metadata(path).map_err(|e| FileError::io("read", path, &e))?;
    if meta.is_dir() {
        return Err(FileError::new(
            "IS_DIRECTORY",
            format!("cannot read {}: it is a directory", path.display()),
        )
        .suggest("list it instead"));
    }
    let mut file = fs::File::open(path).map_err(|e| FileError::io("read", path, &e))?;
    let size = meta.len();
    let offset = offset.min(size);
    if offset > 0 {
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| FileError::io("seek in", path, &e))?;
    }
    let rest = size - offset;
    let total = if length == 0 { rest } else { length.min(rest) };
    let mtime_unix_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let absolute = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let start = DownloadStart {
        total_size: total,
        file_size: size,
        mode: meta.permissions().mode() & 0o7777,
        mtime_unix_ms,
        path: absolute.to_string_lossy().into_owned(),
        ..Default::default()
    };
    Ok(((file, path.to_path_buf()), start))
}
