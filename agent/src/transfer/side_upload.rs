//! An upload's data on a side connection (capability
//! [`CAPABILITY`](cmdop_proto::caps::FILES_RAW_WRITE); see "Side
//! connections" at the end of `cmdop_ext.proto`).
//!
//! When the control plane's `UploadStart` carries a ticket, the agent
//! answers `upload_offer` (with its pin for a TLS one) and opens its side
//! connection in the background, as for a download; the control plane
//! splices what the client sends on its own connection into this one. The
//! client keeps sending `data` until its end is up, then `raw_switch`
//! (which reaches the agent as `FileDownlink.raw_switch`) and the rest of
//! the file on the side connection. The agent appends everything it reads
//! there to the temp file until EOF (with TLS, close_notify: an EOF
//! without it is a broken connection), never more than the declared size
//! or the upload limit, and reports `written`; `commit` publishes the file
//! as on gRPC. Each read waits at most [`READ_IDLE`]: a sender that stops
//! fails the upload instead of holding it open.

use std::{
    io::{self, Read},
    net::TcpStream,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use cmdop_proto::{
    ext::file_downlink::Op,
    raw::ANSWER_TIMEOUT,
    raw_tls::{rustls::ServerConnection, HANDSHAKE_TIMEOUT},
};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    exec_raw::{SideConn, SideTarget, StopOnDrop},
    files::{
        atomic::AtomicFile,
        error::{FileError, FileResult},
    },
};

/// Bytes read from the side connection per write to the file.
const READ_BYTES: usize = 1024 * 1024;
/// Longest wait for the next bytes on the side connection.
pub const READ_IDLE: Duration = Duration::from_secs(60);

/// An upload's side connection, from offer to the handshake's end.
pub(super) struct SideUpload {
    handshake: Option<JoinHandle<io::Result<SideConn>>>,
}

impl SideUpload {
    /// Starts opening the side connection for `target`.
    pub(super) fn open(target: SideTarget) -> Self {
        SideUpload {
            handshake: Some(tokio::spawn(async move { target.connect().await })),
        }
    }

    /// The side connection, once paired (and with TLS, handshaken). The
    /// client switched only after its own end was ready, so this is a
    /// matter of moments; it fails if this end never came up.
    pub(super) async fn take(&mut self) -> FileResult<SideConn> {
        let task = self
            .handshake
            .as_mut()
            .ok_or_else(|| FileError::invalid("the upload switched twice"))?;
        let outcome = tokio::time::timeout(ANSWER_TIMEOUT + HANDSHAKE_TIMEOUT, task).await;
        self.handshake = None;
        match outcome {
            Ok(Ok(Ok(conn))) => Ok(conn),
            Ok(Ok(Err(e))) => Err(side_broke(&e)),
            Ok(Err(e)) => Err(FileError::new(
                "INTERNAL",
                format!("side connection task failed: {e}"),
            )),
            Err(_) => Err(side_broke(&io::Error::new(
                io::ErrorKind::TimedOut,
                "the side connection did not come up",
            ))),
        }
    }
}

impl Drop for SideUpload {
    fn drop(&mut self) {
        // A handshake still running is of no use once the data came on
        // gRPC: its socket closes and the control plane drops the pairing.
        if let Some(task) = &self.handshake {
            task.abort();
        }
    }
}

fn side_broke(e: &io::Error) -> FileError {
    FileError::new(
        "UNAVAILABLE",
        format!("the upload's side connection broke: {e}; try again"),
    )
}

/// Appends what arrives on `conn` to `file` until EOF, at most `cap`
/// bytes in all. Returns the file and whether `commit` already arrived
/// meanwhile, or `None` when the control plane aborted (the copy then
/// drops the temp file). An abort (or the Channel closing) stops the copy
/// at once, even one blocked on a read.
pub(super) async fn receive(
    file: AtomicFile,
    conn: SideConn,
    cap: u64,
    steps: &mut mpsc::Receiver<Op>,
) -> FileResult<Option<(AtomicFile, bool)>> {
    let mut guard = StopOnDrop::new(conn.socket()).map_err(|e| side_broke(&e))?;
    let stop = guard.stop();
    conn.socket()
        .set_read_timeout(Some(READ_IDLE))
        .map_err(|e| side_broke(&e))?;
    let copy = tokio::task::spawn_blocking(move || {
        let mut file = file;
        let read = match conn {
            SideConn::Plain(socket) => copy_plain(&mut file, &socket, cap, &stop),
            SideConn::Tls(socket, mut tls) => copy_tls(&mut file, &socket, &mut tls, cap, &stop),
        };
        read.map(|()| file)
    });
    tokio::pin!(copy);
    let mut commit = false;
    let done = loop {
        tokio::select! {
            done = &mut copy => break done,
            step = steps.recv(), if !commit => match step {
                Some(Op::Abort(reason)) => {
                    tracing::debug!(%reason, "upload aborted on its side connection");
                    return Ok(None);
                }
                // The control plane went away; the guard stops the copy.
                None => return Ok(None),
                // The client half-closed after its last byte, which may
                // still be on its way here.
                Some(Op::Commit(_)) => commit = true,
                Some(_) => {}
            },
        }
    };
    guard.disarm();
    let file =
        done.map_err(|e| FileError::new("INTERNAL", format!("side connection task failed: {e}")))??;
    Ok(Some((file, commit)))
}

/// Reads the plain `socket` into `file` until EOF.
fn copy_plain(
    file: &mut AtomicFile,
    mut socket: &TcpStream,
    cap: u64,
    stop: &AtomicBool,
) -> FileResult<()> {
    let mut buf = vec![0u8; READ_BYTES];
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        let n = match socket.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(side_broke(&e)),
        };
        append(file, &buf[..n], cap)?;
    }
}

/// Reads TLS records from `socket`, opens them and appends the plaintext
/// to `file` until close_notify.
fn copy_tls(
    file: &mut AtomicFile,
    socket: &TcpStream,
    tls: &mut ServerConnection,
    cap: u64,
    stop: &AtomicBool,
) -> FileResult<()> {
    let mut buf = vec![0u8; READ_BYTES];
    let mut socket = socket;
    let mut stream = cmdop_proto::raw_tls::rustls::Stream::new(tls, &mut socket);
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(side_broke(&e)),
        };
        append(file, &buf[..n], cap)?;
    }
}

fn append(file: &mut AtomicFile, data: &[u8], cap: u64) -> FileResult<()> {
    if file.written() + data.len() as u64 > cap {
        return Err(FileError::invalid(format!(
            "the upload to {} sent more than {cap} bytes (its declared size or the limit); nothing was written",
            file.target().display()
        )));
    }
    file.write(data)
}

fn stopped() -> FileError {
    FileError::new("ABORTED", "the upload was stopped")
}
