//! Streaming file transfers (`Cmdop.Upload` / `Cmdop.Download`, capability
//! `files.v1`), relayed to the agent over its AgentLink Channel.
//!
//! Nothing here holds a whole file: each transfer keeps at most
//! [`UPLOAD_WINDOW_BYTES`] of upload data in flight towards the agent, and
//! download data moves one chunk at a time from the agent to the client, the
//! agent sending more only as the control plane credits what it delivered.
//! A large download may move to a side connection ([`crate::raw`]) that
//! agents listing [`CAPABILITY_RAW`] open, as Exec stdout does; a large
//! upload (`Cmdop.UploadWithSide`) may move to one that agents listing
//! [`CAPABILITY_RAW_WRITE`] take, the bytes then going the other way.

mod download;
mod routes;
mod target;
mod upload;

use std::{sync::Arc, time::Duration};

use cmdop_proto::ext::{agent_downlink, file_downlink, file_uplink, AgentDownlink, FileDownlink};
use tokio::sync::mpsc;
use tonic::Status;

use crate::sessions::{ExecLink, Session};

pub use download::{download, DownloadStream};
pub use routes::TransferRoutes;
pub use target::Target;
pub use upload::{upload, upload_with_side, UploadEventStream};

/// Capability the control plane advertises, and agents announce in their
/// hello, for streaming transfers.
pub use cmdop_proto::caps::FILES as CAPABILITY;
/// Agents that list it may move a download to a side connection.
pub use cmdop_proto::caps::FILES_RAW as CAPABILITY_RAW;
/// Agents that list it may take an upload's data from a side connection;
/// servers with side connections list it for `UploadWithSide`.
pub use cmdop_proto::caps::FILES_RAW_WRITE as CAPABILITY_RAW_WRITE;
/// Largest upload accepted.
pub use cmdop_proto::limits::MAX_UPLOAD_BYTES;
/// Largest data chunk in either direction.
pub use cmdop_proto::limits::TRANSFER_CHUNK_BYTES as MAX_CHUNK_BYTES;
/// Upload bytes sent to the agent but not yet reported written.
pub const UPLOAD_WINDOW_BYTES: u64 = 4 * 1024 * 1024;
/// Upload chunks sent to the agent but not yet reported written (small
/// chunks would otherwise pile up messages inside the byte window). Agents
/// queue more steps than this per transfer.
pub const UPLOAD_WINDOW_CHUNKS: usize = 16;
/// Transfers in flight per agent.
pub const MAX_TRANSFERS_PER_AGENT: usize = 16;
/// Agent events queued per transfer. The agent sends at most its window of
/// data ahead of our credit, so this never fills with a well-behaved agent.
pub const TRANSFER_EVENT_QUEUE: usize = 32;
/// Download chunks queued towards one client.
pub const DOWNLOAD_CLIENT_QUEUE: usize = 2;
/// How long either peer may make no progress before the transfer fails.
pub const TRANSFER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One transfer registered on an agent's Channel. Dropping it before
/// [`Transfer::finish`] tells the agent to abort (an upload's temp file is
/// removed) and unregisters it.
pub struct Transfer {
    id: String,
    session: Arc<Session>,
    link: Arc<ExecLink>,
    events: mpsc::Receiver<file_uplink::Event>,
    finished: bool,
}

impl Transfer {
    /// Registers a new transfer on the target's Channel.
    fn open(target: Target) -> Result<Transfer, Status> {
        let id = format!("xfer_{}", uuid::Uuid::new_v4().simple());
        let events = target.link.transfers().open(&id)?;
        Ok(Transfer {
            id,
            session: target.session,
            link: target.link,
            events,
            finished: false,
        })
    }

    /// Sends one step to the agent; UNAVAILABLE if the agent is gone.
    async fn send(&self, op: file_downlink::Op) -> Result<(), Status> {
        let msg = AgentDownlink {
            msg: Some(agent_downlink::Msg::File(FileDownlink {
                transfer_id: self.id.clone(),
                op: Some(op),
            })),
        };
        tokio::select! {
            res = self.link.send(msg) => res.map_err(|_| self.session.disconnected_status()),
            _ = self.link.closed() => Err(self.session.disconnected_status()),
            _ = tokio::time::sleep(TRANSFER_IDLE_TIMEOUT) => Err(self.stalled()),
        }
    }

    /// The agent's next event. An agent error becomes its status;
    /// UNAVAILABLE if the agent goes away. Callers bound the wait with
    /// [`TRANSFER_IDLE_TIMEOUT`] and [`Transfer::stalled`].
    async fn next_event(&mut self) -> Result<file_uplink::Event, Status> {
        let event = tokio::select! {
            event = self.events.recv() => event,
            _ = self.link.closed() => None,
        };
        match event {
            Some(file_uplink::Event::Error(e)) => {
                self.finished = true; // the agent already dropped it
                Err(agent_error(&e.code, &e.message))
            }
            Some(event) => Ok(event),
            None => Err(self.session.disconnected_status()),
        }
    }

    /// Marks the transfer complete: dropping it no longer aborts.
    fn finish(&mut self) {
        self.finished = true;
    }

    fn stalled(&self) -> Status {
        Status::deadline_exceeded(format!(
            "the file transfer with machine {} made no progress for {} s; check the network, and that the agent is healthy and its disk not full",
            self.session.info.hostname,
            TRANSFER_IDLE_TIMEOUT.as_secs()
        ))
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.link.transfers().forget(&self.id);
        if !self.finished {
            // Best effort: if the downlink is full the agent is not reading,
            // and it drops every transfer when its Channel ends anyway.
            let _ = self.link.try_send(AgentDownlink {
                msg: Some(agent_downlink::Msg::File(FileDownlink {
                    transfer_id: self.id.clone(),
                    op: Some(file_downlink::Op::Abort(
                        "the client ended the transfer".into(),
                    )),
                })),
            });
        }
    }
}

/// Maps an agent's file error code to the status the client sees.
fn agent_error(code: &str, message: &str) -> Status {
    let message = if message.is_empty() {
        format!("the agent reported {code}")
    } else {
        message.to_string()
    };
    match code {
        "NOT_FOUND" => Status::not_found(message),
        "PERMISSION_DENIED" => Status::permission_denied(message),
        "ALREADY_EXISTS" => Status::already_exists(message),
        "INVALID_ARGUMENT" | "IS_DIRECTORY" | "NOT_A_DIRECTORY" => {
            Status::invalid_argument(message)
        }
        "NO_SPACE" => Status::resource_exhausted(message),
        "DATA_LOSS" => Status::data_loss(message),
        _ => Status::aborted(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_error_codes_map_to_statuses() {
        use tonic::Code;
        assert_eq!(agent_error("NOT_FOUND", "x").code(), Code::NotFound);
        assert_eq!(
            agent_error("ALREADY_EXISTS", "x").code(),
            Code::AlreadyExists
        );
        assert_eq!(agent_error("NO_SPACE", "x").code(), Code::ResourceExhausted);
        assert_eq!(
            agent_error("IO_ERROR", "").message(),
            "the agent reported IO_ERROR"
        );
        assert_eq!(agent_error("IO_ERROR", "disk").code(), Code::Aborted);
    }
}
