//! `cmdop attach`: join a machine's live session the way ssh joins a
//! shell. On a terminal, the local terminal goes into raw mode (every key,
//! Ctrl-C and Ctrl-Z included, goes to the remote side, which echoes), the
//! session's terminal takes the local size and follows it on SIGWINCH, and
//! `~.` after a newline leaves without ending the session.

use std::io::{IsTerminal, Read, Write};

use clap::Args;
use cmdop::client::AttachEvent;

use crate::{client_cmd::MachineArgs, connect::ConnectArgs};

#[derive(Args)]
pub struct AttachArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub machine: MachineArgs,
    /// Session id (see `cmdop sessions`); instead of -H or --machine-id.
    #[arg(conflicts_with_all = ["host", "machine_id"])]
    pub session_id: Option<String>,
}

/// What the escape reader makes of the bytes typed.
#[derive(Debug, PartialEq, Eq)]
enum Typed {
    /// Send these bytes to the session.
    Send(Vec<u8>),
    /// `~.`: leave.
    Leave,
}

/// ssh's escape: `~` right after a newline (or at the start) waits for the
/// next byte; `.` leaves, `~` sends one `~`, anything else sends both.
struct Escape {
    at_line_start: bool,
    after_tilde: bool,
}

impl Escape {
    fn new() -> Escape {
        Escape {
            at_line_start: true,
            after_tilde: false,
        }
    }

    fn feed(&mut self, data: &[u8]) -> Typed {
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
struct RawMode;

impl RawMode {
    fn enable() -> anyhow::Result<RawMode> {
        crossterm::terminal::enable_raw_mode().map_err(|e| {
            anyhow::anyhow!(
                "cannot put the terminal into raw mode ({e}); run attach from a terminal"
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

/// Attaches to the session until `~.`, the end of stdin, or the end of the
/// session.
pub async fn attach(args: AttachArgs) -> anyhow::Result<std::process::ExitCode> {
    let client = args.connect.connect().await?;
    let session_id = match &args.session_id {
        Some(id) => id.clone(),
        None => {
            args.machine.select(&client, &args.connect).await?;
            let machine = client.machine().unwrap_or_default();
            anyhow::ensure!(
                !machine.session_id.is_empty(),
                "machine '{}' has no live session; start its agent (`cmdop agent`), or see \
                 `cmdop machines`",
                machine.hostname
            );
            machine.session_id
        }
    };
    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let handle = client
        .attach(&session_id, move |ev| match ev {
            AttachEvent::Output(data) => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(data);
                let _ = out.flush();
            }
            AttachEvent::Ended(reason) => {
                let _ = ended_tx.send(reason.to_string());
            }
        })
        .await?;

    let terminal = std::io::stdin().is_terminal();
    let raw = if terminal {
        Some(RawMode::enable()?)
    } else {
        None
    };
    if terminal {
        if let Ok((cols, rows)) = crossterm::terminal::size() {
            handle.resize(cols, rows).await?;
        }
        // A first Enter shows the prompt as the session stands.
        eprint!("cmdop: attached to session {session_id}; ~. leaves it running\r\n");
    }
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;

    // Reading stdin blocks: a thread of its own, bytes as they come.
    let (input_tx, mut input_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if input_tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });

    let mut escape = Escape::new();
    let outcome: anyhow::Result<String> = loop {
        tokio::select! {
            reason = ended_rx.recv() => break Ok(format!("the session ended: {}", reason.unwrap_or_default())),
            _ = winch.recv() => {
                if let Ok((cols, rows)) = crossterm::terminal::size() {
                    if let Err(e) = handle.resize(cols, rows).await {
                        break Err(e.into());
                    }
                }
            }
            input = input_rx.recv() => match input {
                Some(bytes) => match escape.feed(&bytes) {
                    Typed::Leave => break Ok("detached; the session goes on".into()),
                    Typed::Send(bytes) if bytes.is_empty() => {}
                    Typed::Send(bytes) => {
                        if let Err(e) = handle.send_input(&bytes).await {
                            break Err(e.into());
                        }
                    }
                },
                None => break Ok("stdin closed; detached, the session goes on".into()),
            },
        }
    };
    drop(raw);
    handle.close().await;
    client.close().await;
    let reason = outcome?;
    eprintln!("\ncmdop: {reason}");
    Ok(std::process::ExitCode::SUCCESS)
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
