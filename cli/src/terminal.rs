//! The local terminal of the interactive commands (`attach`, `shell`,
//! `exec -t`): raw mode that is undone on every way out, ssh's `~.` escape
//! in what is typed, the terminal's size, and stdin read as it comes.

use std::io::Read;

/// What the escape reader makes of the bytes typed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Typed {
    /// Send these bytes to the session.
    Send(Vec<u8>),
    /// `~.`: leave.
    Leave,
}

/// ssh's escape: `~` right after a newline (or at the start) waits for the
/// next byte; `.` leaves, `~` sends one `~`, anything else sends both.
pub(crate) struct Escape {
    at_line_start: bool,
    after_tilde: bool,
}

impl Escape {
    pub(crate) fn new() -> Escape {
        Escape {
            at_line_start: true,
            after_tilde: false,
        }
    }

    pub(crate) fn feed(&mut self, data: &[u8]) -> Typed {
        let mut out = Vec::with_capacity(data.len() + 1);
        for &b in data {
            if self.after_tilde {
                self.after_tilde = false;
                match b {
                    b'.' => return Typed::Leave,
                    b'~' => out.push(b'~'),
                    other => out.extend_from_slice(&[b'~', other]),
                }
                self.at_line_start = matches!(b, b'\r' | b'\n');
                continue;
            }
            if self.at_line_start && b == b'~' {
                self.after_tilde = true;
                continue;
            }
            out.push(b);
            self.at_line_start = matches!(b, b'\r' | b'\n');
        }
        Typed::Send(out)
    }
}

/// Raw mode for as long as it lives; the terminal is restored on drop,
/// on every way out (errors included).
pub(crate) struct RawMode;

impl RawMode {
    /// Raw mode for `command` (named in the error).
    pub(crate) fn enable(command: &str) -> anyhow::Result<RawMode> {
        crossterm::terminal::enable_raw_mode().map_err(|e| {
            anyhow::anyhow!(
                "cannot put the terminal into raw mode ({e}); run {command} from a terminal"
            )
        })?;
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// The local terminal's size as (rows, columns), if stdout or stdin is one.
pub(crate) fn size() -> Option<(u16, u16)> {
    crossterm::terminal::size()
        .ok()
        .map(|(cols, rows)| (rows, cols))
}

/// Reads stdin on a thread of its own (reading blocks) and hands each read
/// on as it comes; the receiver ends at EOF or a read error. The thread
/// stays blocked in its read when the command ends first; the process's
/// exit ends it.
pub(crate) fn stdin_reads() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilde_dot_after_a_newline_leaves() {
        let mut e = Escape::new();
        assert_eq!(e.feed(b"~."), Typed::Leave, "at the very start");
        let mut e = Escape::new();
        assert_eq!(e.feed(b"ls\r"), Typed::Send(b"ls\r".to_vec()));
        assert_eq!(e.feed(b"~"), Typed::Send(vec![]), "waits for the next byte");
        assert_eq!(e.feed(b"."), Typed::Leave);
    }

    #[test]
    fn other_tildes_pass_through() {
        let mut e = Escape::new();
        assert_eq!(
            e.feed(b"a~.b"),
            Typed::Send(b"a~.b".to_vec()),
            "not after a newline"
        );
        let mut e = Escape::new();
        assert_eq!(e.feed(b"~~"), Typed::Send(b"~".to_vec()), "~~ sends one ~");
        let mut e = Escape::new();
        assert_eq!(e.feed(b"~x"), Typed::Send(b"~x".to_vec()));
        assert_eq!(e.feed(b"\n~."), Typed::Leave);
    }
}
