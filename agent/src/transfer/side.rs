//! A download's data on a side connection (capability
//! [`CAPABILITY`](cmdop_proto::caps::FILES_RAW); see "Side connections" at
//! the end of `cmdop_ext.proto`).
//!
//! When the control plane's `DownloadRequest` carries a ticket and the file
//! is large enough, the agent echoes the ticket in `DownloadStart` (the
//! offer) and opens its side connection in the background, the way a big
//! stdout does ([`crate::exec_raw::SideTarget`]). Data keeps going as
//! `data` chunks meanwhile; once the control plane answers and (with a pin)
//! the TLS handshake is done, the agent says `raw_switched` and sends the
//! rest of the file on the side connection: with sendfile(2) on a plain
//! one (no copy through user space), sealed into TLS records on a TLS one,
//! ending with close_notify. `raw_end` then gives the bytes it carried.
//! Any failure before the switch leaves the download on gRPC.

use std::{
    fs,
    io::{self, Read},
    net::{Shutdown, TcpStream},
    sync::atomic::{AtomicBool, Ordering},
};

use cmdop_proto::{
    ext::{file_downlink::Op, file_uplink::Event},
    raw_tls::rustls::ServerConnection,
};
use futures::FutureExt;
use tokio::{sync::mpsc, task::JoinHandle};

use super::Reporter;
use crate::{
    exec_raw::{flush_records, SideConn, SideTarget, StopOnDrop},
    files::error::{FileError, FileResult},
};

/// Bytes a download must have before the agent offers a side connection:
/// a small file is gone on gRPC before a connection would be up.
pub const SIDE_AFTER_BYTES: u64 = 1024 * 1024;
/// Most bytes one sendfile(2) call moves.
const MAX_SENDFILE: usize = 4 * 1024 * 1024;
/// File bytes read per round on a TLS side connection.
const TLS_READ: usize = 256 * 1024;

/// A download's side connection, from offer to the handshake's end.
pub(super) struct SideDownload {
    handshake: Option<JoinHandle<io::Result<SideConn>>>,
}

impl SideDownload {
    /// Starts opening the side connection for `target`.
    pub(super) fn open(target: SideTarget) -> Self {
        SideDownload {
            handshake: Some(tokio::spawn(async move { target.connect().await })),
        }
    }

    /// The side connection once it is ready; never waits. After a failed
    /// handshake always `None` (the download stays on gRPC).
    pub(super) fn ready(&mut self) -> Option<SideConn> {
        let task = self.handshake.as_mut()?;
        let outcome = task.now_or_never()?;
        self.handshake = None;
        match outcome {
            Ok(Ok(conn)) => Some(conn),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "no side connection; the download stays on gRPC");
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, "side connection task failed; the download stays on gRPC");
                None
            }
        }
    }
}

impl Drop for SideDownload {
    fn drop(&mut self) {
        // A handshake still running is of no use once the data went on
        // gRPC: its socket closes and the caller sees EOF.
        if let Some(task) = &self.handshake {
            task.abort();
        }
    }
}

/// Sends the `rest` bytes of `file` (at its current position) on `conn`,
/// after telling the control plane so (`raw_switched`), then `raw_end`.
/// An abort from the control plane (or its queue closing) stops the copy
/// at once, even one blocked on a full socket.
pub(super) async fn send_rest(
    file: (fs::File, std::path::PathBuf),
    rest: u64,
    conn: SideConn,
    steps: &mut mpsc::Receiver<Op>,
    report: &Reporter,
) -> FileResult<()> {
    report.send(Event::RawSwitched(true)).await?;
    let mut guard = StopOnDrop::new(conn.socket()).map_err(|e| side_broke(&e))?;
    let stop = guard.stop();
    let path = file.1.clone();
    let copy = tokio::task::spawn_blocking(move || match conn {
        SideConn::Plain(socket) => send_plain(&file.0, rest, &socket, &stop),
        SideConn::Tls(socket, mut tls) => send_tls(&file.0, rest, &socket, &mut tls, &stop),
    });
    tokio::pin!(copy);
    let sent = loop {
        tokio::select! {
            done = &mut copy => break done,
            step = steps.recv() => match step {
                Some(Op::Abort(reason)) => {
                    tracing::debug!(%reason, "download aborted on its side connection");
                    return Ok(());
                }
                // The control plane went away; the guard stops the copy.
                None => return Ok(()),
                // Credits mean nothing on a side connection.
                Some(_) => {}
            },
        }
    };
    guard.disarm();
    let sent = sent
        .map_err(|e| FileError::new("INTERNAL", format!("side connection task failed: {e}")))?
        .map_err(|e| side_broke(&e))?;
    if sent < rest {
        return Err(FileError::new(
            "DATA_LOSS",
            format!(
                "{} shrank while it was read ({} bytes short); try again",
                path.display(),
                rest - sent
            ),
        ));
    }
    report.send(Event::RawEnd(sent)).await
}

fn side_broke(e: &io::Error) -> FileError {
    FileError::new(
        "UNAVAILABLE",
        format!("the download's side connection broke: {e}; try again"),
    )
}

/// Moves `rest` bytes from `file` into the plain `socket` with
/// sendfile(2), then half-closes it. Returns the bytes moved (fewer when
/// the file shrank).
#[cfg(target_os = "linux")]
fn send_plain(
    file: &fs::File,
    rest: u64,
    socket: &TcpStream,
    stop: &AtomicBool,
) -> io::Result<u64> {
    use nix::errno::Errno;
    let mut sent = 0u64;
    while sent < rest {
        if stop.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "stopped"));
        }
        let want = usize::try_from(rest - sent)
            .unwrap_or(usize::MAX)
            .min(MAX_SENDFILE);
        match nix::sys::sendfile::sendfile(socket, file, None, want) {
            Ok(0) => break,
            Ok(n) => sent += n as u64,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    socket.shutdown(Shutdown::Write)?;
    Ok(sent)
}

/// Never used off Linux: [`SideTarget`] offers nothing there.
#[cfg(not(target_os = "linux"))]
fn send_plain(
    _file: &fs::File,
    _rest: u64,
    socket: &TcpStream,
    _stop: &AtomicBool,
) -> io::Result<u64> {
    let _ = socket.shutdown(Shutdown::Both);
    Err(io::Error::other("no side connections on this platform"))
}

/// Reads `rest` bytes of `file` in [`TLS_READ`] pieces, seals them and
/// writes the records to `socket`; a complete copy ends with close_notify,
/// so the caller can tell the end from a cut connection. Returns the bytes
/// sent (fewer when the file shrank: then without close_notify).
fn send_tls(
    mut file: &fs::File,
    rest: u64,
    socket: &TcpStream,
    tls: &mut ServerConnection,
    stop: &AtomicBool,
) -> io::Result<u64> {
    use std::io::Write;
    let mut buf = vec![0u8; TLS_READ];
    let mut sent = 0u64;
    while sent < rest {
        if stop.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "stopped"));
        }
        let want = usize::try_from(rest - sent)
            .unwrap_or(usize::MAX)
            .min(TLS_READ);
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut piece = &buf[..n];
        while !piece.is_empty() {
            // Takes what fits under the buffer limit; the flush makes room.
            let k = tls.writer().write(piece)?;
            piece = &piece[k..];
            flush_records(tls, socket)?;
        }
        sent += n as u64;
    }
    if sent == rest {
        tls.send_close_notify();
        flush_records(tls, socket)?;
        socket.shutdown(Shutdown::Write)?;
    } else {
        let _ = socket.shutdown(Shutdown::Both);
    }
    Ok(sent)
}
