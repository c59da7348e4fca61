//! `cmdop shell`: an interactive login shell on a machine, as `ssh host`
//! gives, and the terminal driver it shares with `cmdop exec -t`.
//!
//! In a terminal, the command runs in a pseudo-terminal of its own on the
//! machine (native exec with `exec-tty.v1`): the local terminal goes into
//! raw mode, every key goes there as typed (Ctrl-C, Ctrl-Z and Ctrl-\ are
//! bytes that the remote terminal turns into signals for its foreground
//! process group), the remote terminal takes the local size and follows it
//! on SIGWINCH, and `~.` after a newline disconnects. The client exits with
//! the command's status (`exit 3` in the shell: 3), or 255 after `~.`; the
//! local terminal is restored on every way out.

use std::{
    io::{IsTerminal, Write},
    time::Duration,
};

use clap::Args;
use cmdop::client::{CancelToken, Client, ExecOptions, Stream, Terminal};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    connect::ConnectArgs,
    remote_run::{exit_status, forward_stdin, MachineArgs, NO_TIME_LIMIT},
    report::CMDOP_FAILED,
    terminal::{Escape, RawMode, Typed},
};

/// What `cmdop shell` runs: the user's login shell, in place of the
/// `sh -c` that runs every command.
pub const LOGIN_SHELL: &str = r#"exec "${SHELL:-/bin/sh}" -l"#;

#[derive(Args)]
pub struct ShellArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub machine: MachineArgs,
}

/// Opens the login shell. Without a local terminal (stdin a pipe or a
/// file) it runs without one and reads its commands from stdin, as
/// `ssh host < script` does.
pub async fn shell(args: ShellArgs) -> anyhow::Result<std::process::ExitCode> {
    let client = args.connect.connect().await?;
    args.machine.select(&client, &args.connect).await?;
    let opts = ExecOptions {
        timeout: Some(NO_TIME_LIMIT),
        discard_output: true,
        ..Default::default()
    };
    if std::io::stdin().is_terminal() {
        return run_in_terminal(client, LOGIN_SHELL, opts, None).await;
    }
    let on_chunk = |stream: Stream, data: &[u8]| {
        let _ = match stream {
            Stream::Stdout => std::io::stdout().write_all(data),
            Stream::Stderr => std::io::stderr().write_all(data),
        };
    };
    let result = client
        .execute_piped(
            LOGIN_SHELL,
            &opts,
            forward_stdin(),
            on_chunk,
            CancelToken::new(),
        )
        .await;
    let _ = std::io::stdout().flush();
    client.close().await;
    exit_status(result, None)
}

/// Why the client left before the command ended.
#[derive(Debug, Clone, Copy)]
enum Left {
    Escape,
    Signal(&'static str),
}

/// Runs `command` in a remote pseudo-terminal driven by the local one (see
/// the module documentation); stdin must be a terminal. `timeout` is the
/// `--timeout` given, if any, for the exit status.
pub(crate) async fn run_in_terminal(
    client: Client,
    command: &str,
    mut opts: ExecOptions,
    timeout: Option<Duration>,
) -> anyhow::Result<std::process::ExitCode> {
    let (rows, cols) = crate::terminal::size().unwrap_or((0, 0));
    opts.terminal = Some(Terminal {
        rows,
        cols,
        term: std::env::var("TERM").unwrap_or_default(),
    });
    opts.discard_output = true;
    let hostname = client.machine().map(|m| m.hostname).unwrap_or_default();
    let mut winch = signal(SignalKind::window_change())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let raw = RawMode::enable("cmdop shell or exec -t")?;

    let (writer, reader) = cmdop::client::stdin_pipe();
    // Typed keys go to the command as they come, in a task of their own so
    // that a command that does not read them never holds up its output.
    let (leave_tx, mut leave_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut keys = crate::terminal::stdin_reads();
    let typing = {
        let writer = writer.clone();
        tokio::spawn(async move {
            let mut escape = Escape::new();
            while let Some(bytes) = keys.recv().await {
                match escape.feed(&bytes) {
                    Typed::Leave => {
                        let _ = leave_tx.send(()).await;
                        return;
                    }
                    Typed::Send(bytes) if bytes.is_empty() => {}
                    Typed::Send(bytes) => {
                        if writer.write(&bytes).await.is_err() {
                            return;
                        }
                    }
                }
            }
            // The local terminal is gone; the command's stdin ends.
            let _ = writer.close().await;
        })
    };

    let cancel = CancelToken::new();
    let on_chunk = |_: Stream, data: &[u8]| {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(data);
        let _ = out.flush();
    };
    let run = client.execute_piped(command, &opts, reader, on_chunk, cancel.clone());
    tokio::pin!(run);
    let mut left = None;
    let mut leave_open = true;
    let result = loop {
        tokio::select! {
            result = &mut run => break result,
            _ = winch.recv() => {
                if let Some((rows, cols)) = crate::terminal::size() {
                    let size = Terminal { rows, cols, term: String::new() };
                    // Fails only once the call is over; its result follows.
                    let _ = writer.resize(size).await;
                }
            }
            leave = leave_rx.recv(), if leave_open && left.is_none() => match leave {
                Some(()) => {
                    left = Some(Left::Escape);
                    cancel.cancel();
                }
                None => leave_open = false,
            },
            _ = hangup.recv(), if left.is_none() => {
                left = Some(Left::Signal("SIGHUP"));
                cancel.cancel();
            }
            _ = terminate.recv(), if left.is_none() => {
                left = Some(Left::Signal("SIGTERM"));
                cancel.cancel();
            }
        }
    };
    typing.abort();
    drop(raw);
    let _ = std::io::stdout().flush();
    client.close().await;
    match left {
        Some(Left::Escape) => {
            eprintln!(
                "\ncmdop: connection to {hostname} closed (~.); the remote command was stopped"
            );
            Ok(std::process::ExitCode::from(CMDOP_FAILED))
        }
        Some(Left::Signal(name)) => {
            eprintln!("\ncmdop: {name} received; the remote command was stopped");
            Ok(std::process::ExitCode::from(CMDOP_FAILED))
        }
        None => exit_status(result, timeout),
    }
}
