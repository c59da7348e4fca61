//! Which agent a transfer goes to: the same machine/session rules and
//! workspace walls as `Exec`.

use std::sync::Arc;

use tonic::Status;

use crate::{
    files, limits,
    sessions::{ExecLink, Session},
    state::State,
    store::Workspace,
};

/// A live session whose agent serves streaming transfers.
pub struct Target {
    pub session: Arc<Session>,
    pub link: Arc<ExecLink>,
}

impl Target {
    /// Resolves `session_id` or `machine_id` within workspace `ws`. Another
    /// workspace's session or machine is NOT_FOUND, exactly like a missing
    /// one; an offline machine is UNAVAILABLE; an agent without streaming
    /// transfers is UNIMPLEMENTED (clients then use the official File* RPCs).
    pub fn resolve(
        state: &State,
        ws: &Workspace,
        machine_id: &str,
        session_id: &str,
        path: &str,
    ) -> Result<Target, Status> {
        limits::check_len("session_id", session_id.len(), limits::MAX_SESSION_ID_BYTES)?;
        limits::check_len("machine_id", machine_id.len(), limits::MAX_SESSION_ID_BYTES)?;
        files::check_path("path", path)?;
        if path.is_empty() {
            return Err(Status::invalid_argument(
                "path is empty; name the file to transfer",
            ));
        }
        let session = if !session_id.is_empty() {
            state
                .sessions
                .get(ws, session_id)
                .ok_or_else(|| Status::not_found(format!("session '{session_id}' not found")))?
        } else if !machine_id.is_empty() {
            state
                .sessions
                .by_machine(ws, machine_id)
                .ok_or_else(|| crate::inventory::absent_machine(state, ws, machine_id))?
        } else {
            return Err(Status::invalid_argument(
                "pass machine_id or session_id to choose the machine",
            ));
        };
        if !session.is_live() {
            return Err(session.offline_status());
        }
        let link = session
            .exec_link()
            .filter(|l| l.transfers().is_supported())
            .ok_or_else(|| {
                Status::unimplemented(format!(
                    "the agent on {} does not support streaming file transfers; update it, or use the FileRead/FileWrite RPCs",
                    session.info.hostname
                ))
            })?;
        Ok(Target { session, link })
    }
}
