//! `cmdop attach`: join a machine's live session the way ssh joins a
//! shell. On a terminal, the local terminal goes into raw mode (every key,
//! Ctrl-C and Ctrl-Z included, goes to the remote side, which echoes), the
//! session's terminal takes the local size and follows it on SIGWINCH, and
//! `~.` after a newline leaves without ending the session.

use std::io::{IsTerminal, Write};

use clap::Args;
use cmdop::client::AttachEvent;

use crate::{
    connect::ConnectArgs,
    remote_run::MachineArgs,
    terminal::{Escape, RawMode, Typed},
};

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
        Some(RawMode::enable("attach")?)
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

    let mut input_rx = crate::terminal::stdin_reads();

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
