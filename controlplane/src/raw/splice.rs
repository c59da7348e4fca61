//! The byte mover of a paired side connection: everything the sender (the
//! agent, or the caller of an upload) sends goes to the receiver, on Linux
//! without passing through user space (socket → private pipe → socket with
//! splice(2)). The few bytes the receiver sends (its half of a TLS
//! handshake, an alert) go the other way on a thread of their own, at most
//! [`BACK_LIMIT`] of them.
//!
//! It blocks, so it runs on a blocking thread. The sender's half-close ends
//! it cleanly (the receiver then sees EOF); any error shuts both sockets
//! down so that neither peer is left writing into, or waiting on, a dead
//! pairing.

use std::{
    io,
    net::{Shutdown, TcpStream},
    sync::atomic::{AtomicU64, Ordering},
};

/// Most bytes taken from the sender per round, and the pipe size asked for.
pub const CHUNK: usize = 1024 * 1024;
/// Most bytes passed from the receiver to the sender: a TLS handshake with a
/// certificate takes a few KiB; anything beyond this is not forwarded.
pub const BACK_LIMIT: u64 = 256 * 1024;

/// How one side connection ended.
#[derive(Debug)]
pub struct Forwarded {
    /// Bytes delivered to the receiver's socket.
    pub bytes: u64,
    /// Why it stopped before the sender's EOF, if it did.
    pub error: Option<io::Error>,
}

/// Moves bytes from `sender` to `receiver` until the sender half-closes,
/// then half-closes the receiver. Both sockets are closed on return.
/// `counter` follows the bytes delivered as they go.
pub fn forward(sender: TcpStream, receiver: TcpStream, counter: &AtomicU64) -> Forwarded {
    let mut bytes = 0;
    let result = sender
        .set_nonblocking(false)
        .and_then(|()| receiver.set_nonblocking(false))
        .and_then(|()| {
            keep_alive(&sender);
            keep_alive(&receiver);
            pass_back(&receiver, &sender)
        })
        .and_then(|()| pump(&sender, &receiver, &mut bytes, counter));
    let error = match result {
        Ok(()) => {
            // Data still queued towards the receiver is sent before this FIN.
            let _ = receiver.shutdown(Shutdown::Write);
            // Ends the way back: its read sees EOF, its write fails.
            let _ = receiver.shutdown(Shutdown::Read);
            let _ = sender.shutdown(Shutdown::Write);
            None
        }
        Err(e) => {
            // Closing the sender's socket with unread data resets it, so its
            // writes fail at once instead of filling our receive buffer.
            let _ = sender.shutdown(Shutdown::Both);
            let _ = receiver.shutdown(Shutdown::Both);
            Some(e)
        }
    };
    Forwarded { bytes, error }
}

/// Starts copying what the receiver sends to the sender, on a thread of its
/// own, until the receiver's EOF, an error, or [`BACK_LIMIT`] bytes. The
/// main mover shuts the sockets down when it is done, which ends this too.
fn pass_back(receiver: &TcpStream, sender: &TcpStream) -> io::Result<()> {
    use std::io::{Read, Write};
    let (mut from, mut to) = (receiver.try_clone()?, sender.try_clone()?);
    std::thread::Builder::new()
        .name("cmdop-side-back".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            let mut passed = 0u64;
            while passed < BACK_LIMIT {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                passed += n as u64;
            }
        })?;
    Ok(())
}

#[cfg(target_os = "linux")]
fn pump(
    sender: &TcpStream,
    receiver: &TcpStream,
    bytes: &mut u64,
    counter: &AtomicU64,
) -> io::Result<()> {
    use nix::{
        errno::Errno,
        fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags},
        unistd::pipe2,
    };

    /// Retries a call interrupted by a signal.
    fn again(mut call: impl FnMut() -> nix::Result<usize>) -> io::Result<usize> {
        loop {
            match call() {
                Err(Errno::EINTR) => continue,
                other => return other.map_err(io::Error::from),
            }
        }
    }

    let (pipe_out, pipe_in) = pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    // The kernel may cap the size (fs.pipe-max-size, per-user page limits);
    // a smaller pipe only means more rounds.
    let capacity = fcntl(&pipe_in, FcntlArg::F_SETPIPE_SZ(CHUNK as i32))
        .or_else(|_| fcntl(&pipe_in, FcntlArg::F_GETPIPE_SZ))
        .map_or(64 * 1024, |n| usize::try_from(n).unwrap_or(64 * 1024));
    let read_flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_MORE;
    loop {
        // The pipe is empty here, so this takes whatever the sender has
        // queued, up to the pipe's size, and waits only while it has none.
        let filled = again(|| splice(sender, None, &pipe_in, None, CHUNK, read_flags))?;
        if filled == 0 {
            return Ok(());
        }
        // A full pipe means more is probably waiting: let the kernel hold a
        // partial segment for it. Otherwise send at once (a trickle of
        // output must not sit in the socket).
        let write_flags = if filled >= capacity {
            read_flags
        } else {
            SpliceFFlags::SPLICE_F_MOVE
        };
        let mut left = filled;
        while left > 0 {
            let sent = again(|| splice(&pipe_out, None, receiver, None, left, write_flags))?;
            if sent == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the receiver's socket took no bytes",
                ));
            }
            left -= sent;
            *bytes += sent as u64;
        }
        counter.fetch_add(filled as u64, Ordering::Relaxed);
    }
}

/// Without splice(2): an ordinary copy through a user-space buffer.
#[cfg(not(target_os = "linux"))]
fn pump(
    mut sender: &TcpStream,
    receiver: &TcpStream,
    bytes: &mut u64,
    counter: &AtomicU64,
) -> io::Result<()> {
    use std::io::{Read, Write};
    let mut buf = vec![0u8; 256 * 1024];
    let mut receiver = receiver;
    loop {
        let n = match sender.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        receiver.write_all(&buf[..n])?;
        *bytes += n as u64;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Lets the kernel notice a peer whose host vanished while the connection
/// is idle (a blocked splice would otherwise wait forever): probes after
/// 30 s of silence, every 10 s, giving up after 3 unanswered.
#[cfg(target_os = "linux")]
fn keep_alive(socket: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let result = setsockopt(socket, sockopt::KeepAlive, &true)
        .and_then(|()| setsockopt(socket, sockopt::TcpKeepIdle, &30))
        .and_then(|()| setsockopt(socket, sockopt::TcpKeepInterval, &10))
        .and_then(|()| setsockopt(socket, sockopt::TcpKeepCount, &3));
    if let Err(e) = result {
        tracing::debug!(error = %e, "cannot enable keepalive on a side connection");
    }
}

#[cfg(not(target_os = "linux"))]
fn keep_alive(_socket: &TcpStream) {}
