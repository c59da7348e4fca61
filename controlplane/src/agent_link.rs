//! `cmdop.ext.v1.AgentLink`: enrollment, and the Channel that carries
//! native exec work next to an agent's ConnectTerminal stream.

use std::{pin::Pin, sync::Arc, time::Duration};

use cmdop_proto::ext::{
    agent_link_server::AgentLink, agent_uplink, AgentDownlink, AgentUplink, EnrollRequest,
    EnrollResponse,
};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    auth, limits,
    sessions::{ExecLink, ExecUpdate, Session},
    state::SharedState,
    store::{secrets, MachineRow, Workspace},
};

/// How long a Channel waits for its agent's ConnectTerminal session to be
/// registered (the agent opens both at nearly the same time).
const SESSION_WAIT: Duration = Duration::from_secs(5);

/// The service implementation.
pub struct AgentLinkService {
    state: SharedState,
}

impl AgentLinkService {
    pub fn new(state: SharedState) -> Self {
        AgentLinkService { state }
    }

    /// The live session of `machine`, waiting briefly for it to appear.
    async fn live_session(
        &self,
        machine: &MachineRow,
        hello_session: &str,
    ) -> Result<Arc<Session>, Status> {
        let deadline = tokio::time::Instant::now() + SESSION_WAIT;
        loop {
            if let Some(s) = self
                .state
                .sessions
                .current_of(&machine.workspace_id, &machine.machine_id)
            {
                if s.is_live() && (hello_session.is_empty() || s.id == hello_session) {
                    return Ok(s);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::failed_precondition(
                    "no live ConnectTerminal session for this machine (or hello.session_id does not match it); \
                     open ConnectTerminal first and send its session id in hello",
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Response stream of Channel.
pub type DownlinkStream =
    Pin<Box<dyn Stream<Item = Result<AgentDownlink, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AgentLink for AgentLinkService {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let source = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let req = request.into_inner();
        limits::check_len("hostname", req.hostname.len(), limits::MAX_HOSTNAME_BYTES)?;
        let invalid = || {
            Status::unauthenticated(
                "enrollment token is invalid, expired, revoked or already used; create a new one with `cmdop admin enroll-token`",
            )
        };
        if req.enrollment_token.len() > limits::MAX_CREDENTIAL_BYTES
            || !req
                .enrollment_token
                .starts_with(secrets::ENROLLMENT_TOKEN_PREFIX)
        {
            return Err(invalid());
        }
        let enrollment = {
            let (token, hostname) = (req.enrollment_token.clone(), req.hostname.clone());
            crate::db::with_store(&self.state.store, move |store| {
                store.enroll_machine(&token, &hostname)
            })
            .await
            .map_err(crate::db::internal)?
            .ok_or_else(invalid)?
        };
        tracing::info!(
            machine = %enrollment.machine_id, hostname = %req.hostname, workspace = %enrollment.workspace.name,
            "machine enrolled"
        );
        let audit = &self.state.audit;
        let mut entry = audit.entry(
            &Workspace {
                source,
                ..enrollment.workspace.clone()
            },
            "machine.enroll",
            &enrollment.machine_id,
            &req.hostname,
            serde_json::json!({}),
        );
        entry.actor = "enrollment token".into();
        audit.note(entry);
        Ok(Response::new(EnrollResponse {
            machine_id: enrollment.machine_id,
            agent_secret: enrollment.agent_secret,
            workspace_name: enrollment.workspace.name,
        }))
    }

    type ChannelStream = DownlinkStream;

    async fn channel(
        &self,
        request: Request<Streaming<AgentUplink>>,
    ) -> Result<Response<Self::ChannelStream>, Status> {
        let machine = auth::agent_of(&self.state.store, &request)?;
        let mut uplink = request.into_inner();
        let hello = match tokio::time::timeout(limits::FIRST_MESSAGE_TIMEOUT, uplink.message())
            .await
        {
            Ok(Ok(Some(AgentUplink {
                msg: Some(agent_uplink::Msg::Hello(hello)),
            }))) => hello,
            Ok(Ok(Some(_))) => {
                return Err(Status::invalid_argument(
                    "the first Channel message must be `hello`",
                ))
            }
            Ok(Ok(None)) => return Err(Status::invalid_argument("stream closed before `hello`")),
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(Status::deadline_exceeded("no `hello` within 30 s")),
        };
        limits::check_len(
            "hello.session_id",
            hello.session_id.len(),
            limits::MAX_SESSION_ID_BYTES,
        )?;
        let session = self.live_session(&machine, &hello.session_id).await?;
        // What the machine declares about itself: stored (validated and
        // bounded) in the background, never trusted for access.
        tokio::spawn({
            let (state, id) = (self.state.clone(), machine.machine_id.clone());
            let labels = crate::inventory::declared_labels(&id, hello.labels.clone());
            async move {
                let stored = crate::db::with_store(&state.store, {
                    let id = id.clone();
                    move |store| store.set_agent_labels(&id, &labels)
                })
                .await;
                if let Err(err) = stored {
                    tracing::warn!(error = %format!("{err:#}"), machine = %id, "cannot record the labels the agent declared");
                }
            }
        });
        let (tx, rx) = mpsc::channel(limits::AGENT_DOWNLINK_QUEUE);
        let link = ExecLink::new(tx);
        link.transfers().set_supported(&hello.capabilities);
        link.set_agent_capabilities(&hello.capabilities);
        session.set_exec_link(link.clone())?;
        tracing::info!(session = %session.id, machine = %machine.machine_id, agent_version = %hello.agent_version, "agent exec channel open");
        tokio::spawn(pump(session, link.clone(), uplink));
        let closed = async move { link.closed().await };
        Ok(Response::new(Box::pin(
            ReceiverStream::new(rx).map(|item| *item).take_until(closed),
        )))
    }
}

/// Routes the agent's exec events until its Channel or session ends.
async fn pump(session: Arc<Session>, link: Arc<ExecLink>, mut uplink: Streaming<AgentUplink>) {
    loop {
        let next = tokio::select! {
            next = uplink.message() => next,
            _ = link.closed() => break,
        };
        let msg = match next {
            Ok(Some(msg)) => msg,
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(session = %session.id, %status, "agent channel error");
                break;
            }
        };
        session.touch();
        match msg.msg {
            Some(agent_uplink::Msg::Output(out)) => {
                if out.data.len() > limits::MAX_AGENT_OUTPUT_CHUNK_BYTES {
                    tracing::warn!(session = %session.id, bytes = out.data.len(), "dropping oversized exec output chunk");
                    continue;
                }
                let update = ExecUpdate::Output {
                    data: out.data,
                    is_stderr: out.is_stderr,
                };
                link.deliver(&out.exec_id, update).await;
            }
            Some(agent_uplink::Msg::Spawned(spawned)) => {
                let update = ExecUpdate::Spawned { pid: spawned.pid };
                link.deliver(&spawned.exec_id, update).await;
            }
            Some(agent_uplink::Msg::RawOffered(offered)) => {
                let update = ExecUpdate::RawOffered {
                    agent_pin: offered.raw_tls_agent_sha256,
                };
                link.deliver(&offered.exec_id, update).await;
            }
            Some(agent_uplink::Msg::RawSwitched(switched)) => {
                link.deliver(&switched.exec_id, ExecUpdate::RawSwitched)
                    .await;
            }
            Some(agent_uplink::Msg::Finished(finished)) => {
                let exec_id = finished.exec_id.clone();
                link.deliver(&exec_id, ExecUpdate::Finished(finished)).await;
            }
            Some(agent_uplink::Msg::StdinWritten(w)) => link.stdin_written(&w.exec_id, w.written),
            Some(agent_uplink::Msg::Moved(moved)) => {
                tracing::info!(session = %session.id, machine = %session.machine_id, to = %moved.server,
                    "the agent's new link is up elsewhere; this one finishes its running work");
                session.note_moved();
            }
            Some(agent_uplink::Msg::File(event)) => link.transfers().deliver(event).await,
            // A repeated hello and unknown members are ignored.
            _ => {}
        }
    }
    session.clear_exec_link(&link);
    tracing::info!(session = %session.id, "agent exec channel closed");
}
