//! The `cmdop.ext.v1.AgentLink/Channel` stream: receives native Exec work
//! and sends its output and results back. Every command still running when
//! the stream ends is killed (its process group).

use std::collections::BTreeMap;
use std::path::PathBuf;
use tokio_util::task::AbortOnDropHandle;

use cmdop_proto::ext::{
    agent_downlink, agent_link_client::AgentLinkClient, agent_uplink, AgentHello, AgentUplink,
    LinkMoved, MoveLink,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::{
    exec::{self, ExecRunner},
    exec_raw,
    transfer::{self, Transfers},
    transport::{AuthedChannel, MAX_MESSAGE},
};

/// Uplink messages queued before command output waits (backpressure on
/// the commands' pipes).
const UPLINK_QUEUE: usize = 64;

/// How the channel ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkEnd {
    /// The control plane does not offer AgentLink; serve only the official path.
    Unsupported,
    /// The control plane closed the stream.
    Closed,
}

/// What a link tells the connection around it, and hears from it.
#[derive(Default)]
pub struct Hooks {
    /// Told the control plane's URL once the Channel is open (the new
    /// link of a move: the old link then reports `LinkMoved`).
    pub ready: Option<oneshot::Sender<String>>,
    /// Set when the agent can move (it has other servers): the link lists
    /// `link-move.v1`, passes each `MoveLink` to `asked`, and reports
    /// `LinkMoved` once `moved` tells the URL of the new link.
    pub moves: Option<MoveHooks>,
}

/// See [`Hooks::moves`].
pub struct MoveHooks {
    pub asked: mpsc::Sender<MoveLink>,
    pub moved: oneshot::Receiver<String>,
}

/// Opens the channel, says hello and serves Exec until the stream ends.
/// `server_url` is the control plane's URL the channel goes to; commands
/// may open side connections there (plain ones only when it is `http://`).
///
/// The work runs in a task of its own on the runtime's worker threads, next
/// to the connection it reads from: the caller may be a thread blocked in
/// `Runtime::block_on`, where every downlink message would cost a wakeup
/// across threads. Dropping the returned future stops the task (and with it
/// every command it runs).
pub async fn serve(
    channel: AuthedChannel,
    session_id: String,
    agent_version: String,
    labels: BTreeMap<String, String>,
    home: PathBuf,
    server_url: String,
    hooks: Hooks,
) -> Result<LinkEnd, tonic::Status> {
    let mut task = AbortOnDropHandle::new(tokio::spawn(serve_here(
        channel,
        session_id,
        agent_version,
        labels,
        home,
        server_url,
        hooks,
    )));
    match (&mut task).await {
        Ok(end) => end,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(tonic::Status::cancelled(
            "the exec channel task was stopped",
        )),
    }
}

/// [`serve`], on the current task.
async fn serve_here(
    channel: AuthedChannel,
    session_id: String,
    agent_version: String,
    labels: BTreeMap<String, String>,
    home: PathBuf,
    server_url: String,
    hooks: Hooks,
) -> Result<LinkEnd, tonic::Status> {
    let Hooks { ready, moves } = hooks;
    let mut client = AgentLinkClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::channel(UPLINK_QUEUE);
    let mut capabilities = vec![
        transfer::CAPABILITY.to_string(),
        exec::CAPABILITY_SPAWNED.to_string(),
        exec::CAPABILITY_CREDIT.to_string(),
        exec::CAPABILITY_STDIN.to_string(),
        exec::CAPABILITY_TTY.to_string(),
    ];
    // Offered only where the agent would use it, so that the control
    // plane does not hand out tickets for nothing.
    let raw_caps = exec_raw::capabilities_for(&server_url);
    let raw_usable = !raw_caps.is_empty();
    capabilities.extend(raw_caps.iter().map(|c| c.to_string()));
    let (asked, mut moved) = match moves {
        Some(MoveHooks { asked, moved }) => {
            capabilities.push(cmdop_proto::caps::LINK_MOVE.to_string());
            (Some(asked), Some(moved))
        }
        None => (None, None),
    };
    if raw_usable {
        capabilities.push(transfer::CAPABILITY_RAW.to_string());
        capabilities.push(transfer::CAPABILITY_RAW_WRITE.to_string());
    }
    let hello = AgentUplink {
        msg: Some(agent_uplink::Msg::Hello(AgentHello {
            session_id,
            agent_version,
            capabilities,
            labels: labels.into_iter().collect(),
        })),
    };
    // The receiver is alive right here; the send cannot fail.
    let _ = tx.send(hello).await;
    let mut downlink = match client.channel(ReceiverStream::new(rx)).await {
        Ok(resp) => resp.into_inner(),
        Err(status) if status.code() == Code::Unimplemented => return Ok(LinkEnd::Unsupported),
        Err(status) => return Err(status),
    };
    tracing::info!("native exec channel open");
    if let Some(ready) = ready {
        let _ = ready.send(server_url.clone());
    }
    let transfers = Transfers::new(
        home.clone(),
        tx.clone(),
        raw_usable.then_some(server_url.as_str()),
    );
    let moved_tx = tx.clone();
    let runner = ExecRunner::new(home, tx, raw_usable.then_some(server_url));
    loop {
        let next = tokio::select! {
            next = downlink.message() => next,
            to = async {
                match moved.as_mut() {
                    Some(rx) => rx.await,
                    None => std::future::pending().await,
                }
            } => {
                moved = None;
                if let Ok(server) = to {
                    let msg = AgentUplink {
                        msg: Some(agent_uplink::Msg::Moved(LinkMoved { server })),
                    };
                    let _ = moved_tx.send(msg).await;
                }
                continue;
            }
        };
        match next {
            Ok(Some(msg)) => match msg.msg {
                Some(agent_downlink::Msg::Start(start)) => runner.start(start),
                Some(agent_downlink::Msg::Cancel(cancel)) => {
                    tracing::debug!(exec_id = %cancel.exec_id, "exec cancel");
                    runner.cancel(&cancel.exec_id);
                }
                Some(agent_downlink::Msg::Credit(credit)) => {
                    runner.credit(&credit.exec_id, credit.delivered);
                }
                Some(agent_downlink::Msg::Stdin(step)) => runner.stdin(step),
                Some(agent_downlink::Msg::File(step)) => transfers.handle(step),
                Some(agent_downlink::Msg::MoveLink(ask)) => match &asked {
                    Some(asked) => {
                        let _ = asked.try_send(ask);
                    }
                    None => tracing::debug!("asked to move with nowhere to go; staying"),
                },
                None => tracing::debug!("ignoring an unknown downlink message"),
            },
            Ok(None) => return Ok(LinkEnd::Closed),
            Err(status) if status.code() == Code::Unimplemented => return Ok(LinkEnd::Unsupported),
            Err(status) => return Err(status),
        }
    }
    // `runner` and `transfers` drop here on every path: running commands are
    // killed and unfinished uploads removed.
}
