//! `terminal.TerminalStreamingService`: the official CMDOP protocol.

mod agent_stream;
mod attach;
mod session_rpcs;

use std::{pin::Pin, sync::Arc};

use cmdop_proto::terminal::{
    agent_message, file_operation_request::Operation, file_operation_result as fres,
    terminal_streaming_service_server::TerminalStreamingService, *,
};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{auth, files, limits, sessions::Session, state::SharedState, store::Workspace};

/// Response stream of ConnectTerminal.
pub type ControlStream =
    Pin<Box<dyn Stream<Item = Result<ControlMessage, Status>> + Send + 'static>>;

/// Ends an agent's response stream when its session closes (e.g. replaced
/// by a newer connection), even though the session still holds a sender.
fn until_closed(
    rx: mpsc::Receiver<crate::sessions::ControlItem>,
    session: Arc<Session>,
) -> ControlStream {
    Box::pin(
        ReceiverStream::new(rx)
            .map(|item| *item)
            .take_until(async move { session.closed().await }),
    )
}

/// The service implementation.
pub struct TerminalService {
    state: SharedState,
}

impl TerminalService {
    pub fn new(state: SharedState) -> Self {
        TerminalService { state }
    }

    fn client<T>(&self, req: &Request<T>) -> Result<Workspace, Status> {
        auth::client_of(&self.state.store, req)
    }

    /// The caller's workspace and the session a File* call goes to: its
    /// `session_id`, or when that is empty the current session of the
    /// machine this connection last picked with GetSessionByHostname
    /// (see [`crate::selection`]).
    fn file_target<T>(
        &self,
        req: &Request<T>,
        session_id: impl FnOnce(&T) -> &String,
    ) -> Result<(Workspace, String), Status> {
        let ws = self.client(req)?;
        let given = session_id(req.get_ref());
        if !given.is_empty() {
            return Ok((ws, given.clone()));
        }
        let machine = req
            .remote_addr()
            .and_then(|peer| self.state.selections.selected(&ws.id, peer))
            .ok_or_else(files::no_selection)?;
        let session = self
            .state
            .sessions
            .by_machine(&ws, &machine)
            .ok_or_else(files::no_selection)?;
        Ok((ws, session.id.clone()))
    }
}

/// Cluster lookups over the other replicas.
impl TerminalService {
    /// The sessions every other live replica holds for `caller`'s workspace.
    async fn list_elsewhere(&self, caller: &crate::cluster::Caller) -> Vec<SessionInfoItem> {
        let Some(cluster) = &self.state.cluster else {
            return Vec::new();
        };
        let answers = cluster
            .ask_all(|channel| {
                let req = cluster.peer_request(
                    caller,
                    ListSessionsRequest {
                        limit: i32::try_from(limits::MAX_LIST_LIMIT).unwrap_or(i32::MAX),
                        ..Default::default()
                    },
                );
                async move {
                    let mut client =
                        terminal_streaming_service_client::TerminalStreamingServiceClient::new(
                            channel,
                        );
                    Ok(client.list_sessions(req).await?.into_inner())
                }
            })
            .await;
        answers.into_iter().flat_map(|a| a.sessions).collect()
    }

    /// GetSessionByHostname answered by another replica with that machine
    /// connected, and the machine's id (for this connection's selection).
    async fn hostname_elsewhere(
        &self,
        caller: &crate::cluster::Caller,
        req: GetSessionByHostnameRequest,
    ) -> Result<Option<(GetSessionByHostnameResponse, String)>, Status> {
        let Some(cluster) = &self.state.cluster else {
            return Ok(None);
        };
        let answers = cluster
            .ask_all(|channel| {
                let req = cluster.peer_request(caller, req.clone());
                async move {
                    let mut client =
                        terminal_streaming_service_client::TerminalStreamingServiceClient::new(
                            channel,
                        );
                    Ok(client.get_session_by_hostname(req).await?.into_inner())
                }
            })
            .await;
        let Some(found) = answers.into_iter().find(|a| a.found) else {
            return Ok(None);
        };
        let sid = found.session_id.clone();
        let route =
            crate::db::with_store(&self.state.store, move |store| store.route_of_session(&sid))
                .await
                .map_err(crate::db::internal)?;
        Ok(route
            .filter(|r| r.workspace_id == caller.workspace.id)
            .map(|r| (found, r.machine_id)))
    }
}

#[tonic::async_trait]
impl TerminalStreamingService for TerminalService {
    type ConnectTerminalStream = ControlStream;

    async fn connect_terminal(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectTerminalStream>, Status> {
        let agent = if auth::is_agent_credential(request.metadata()) {
            Some(auth::agent_of(&self.state.store, &request)?)
        } else {
            None
        };
        let workspace = if agent.is_none() {
            Some(self.client(&request)?)
        } else {
            None
        };
        let mut inbound = request.into_inner();
        let first =
            match tokio::time::timeout(limits::FIRST_MESSAGE_TIMEOUT, inbound.message()).await {
                Ok(Ok(Some(msg))) => msg,
                Ok(Ok(None)) => {
                    return Err(Status::invalid_argument(
                        "stream closed before the register message",
                    ))
                }
                Ok(Err(status)) => return Err(status),
                Err(_) => return Err(Status::deadline_exceeded("no register message within 30 s")),
            };
        let Some(agent_message::Payload::Register(register)) = first.payload.clone() else {
            return Err(Status::invalid_argument(
                "the first ConnectTerminal message must be `register`",
            ));
        };
        limits::check_len(
            "session_id",
            first.session_id.len(),
            limits::MAX_SESSION_ID_BYTES,
        )?;
        let stream = match (agent, workspace) {
            (Some(machine), _) => agent_stream::start(self.state.clone(), machine, first, register, inbound)?,
            (None, Some(ws)) if register.version.contains("attach") => {
                attach::start(self.state.clone(), ws, first, inbound).await?
            }
            (None, _) => {
                return Err(Status::permission_denied(
                    "API keys can attach to sessions but not register machines; run `cmdop agent` with an \
                     enrollment token from `cmdop admin enroll-token` on the machine instead",
                ))
            }
        };
        Ok(Response::new(stream))
    }

    async fn create_session(
        &self,
        request: Request<CreateSessionRequest>,
    ) -> Result<Response<CreateSessionResponse>, Status> {
        self.client(&request)?;
        Ok(Response::new(session_rpcs::create_session()))
    }

    async fn close_session(
        &self,
        request: Request<CloseSessionRequest>,
    ) -> Result<Response<CloseSessionResponse>, Status> {
        let ws = self.client(&request)?;
        Ok(Response::new(
            session_rpcs::close_session(&self.state, &ws, request.into_inner()).await,
        ))
    }

    async fn get_session_status(
        &self,
        request: Request<GetSessionStatusRequest>,
    ) -> Result<Response<GetSessionStatusResponse>, Status> {
        let ws = self.client(&request)?;
        Ok(Response::new(session_rpcs::get_session_status(
            &self.state,
            &ws,
            request.into_inner(),
        )))
    }

    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        let ws = self.client(&request)?;
        let scope = if crate::cluster::is_forwarded(&request) {
            session_rpcs::ListScope::ThisReplica
        } else if let Some(caller) =
            crate::cluster::asking_caller(self.state.cluster.is_some(), &request)
        {
            session_rpcs::ListScope::Cluster(self.list_elsewhere(&caller).await)
        } else {
            session_rpcs::ListScope::Server
        };
        session_rpcs::list_sessions(&self.state, &ws, request.into_inner(), scope)
            .map(Response::new)
    }

    async fn get_session_by_hostname(
        &self,
        request: Request<GetSessionByHostnameRequest>,
    ) -> Result<Response<GetSessionByHostnameResponse>, Status> {
        let ws = self.client(&request)?;
        let peer = request.remote_addr();
        let caller = crate::cluster::asking_caller(self.state.cluster.is_some(), &request);
        let req = request.into_inner();
        let mut answer = session_rpcs::get_session_by_hostname(&self.state, &ws, req.clone());
        let mut machine = answer
            .found
            .then(|| self.state.sessions.get(&ws, &answer.session_id))
            .flatten()
            .map(|s| s.machine_id.clone());
        // Cluster: a machine not connected here may be connected elsewhere.
        if let Some(caller) = caller.filter(|_| !answer.found && !answer.ambiguous) {
            if let Some((remote, machine_id)) = self.hostname_elsewhere(&caller, req).await? {
                answer = remote;
                machine = Some(machine_id);
            }
        }
        if let Some(peer) = peer {
            // Remembered for File* calls on this connection without a
            // session id; a failed lookup clears the selection.
            self.state
                .selections
                .select(&ws.id, peer, machine.as_deref());
        }
        Ok(Response::new(answer))
    }

    async fn send_input(
        &self,
        request: Request<SendInputRequest>,
    ) -> Result<Response<SendInputResponse>, Status> {
        let ws = self.client(&request)?;
        session_rpcs::send_input(&self.state, &ws, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn send_resize(
        &self,
        request: Request<SendResizeRequest>,
    ) -> Result<Response<SendResizeResponse>, Status> {
        let ws = self.client(&request)?;
        Ok(Response::new(
            session_rpcs::send_resize(&self.state, &ws, request.into_inner()).await,
        ))
    }

    async fn send_signal(
        &self,
        request: Request<SendSignalRequest>,
    ) -> Result<Response<SendSignalResponse>, Status> {
        let ws = self.client(&request)?;
        Ok(Response::new(
            session_rpcs::send_signal(&self.state, &ws, request.into_inner()).await,
        ))
    }

    async fn get_history(
        &self,
        request: Request<GetHistoryRequest>,
    ) -> Result<Response<GetHistoryResponse>, Status> {
        let ws = self.client(&request)?;
        session_rpcs::get_history(&self.state, &ws, request.into_inner()).map(Response::new)
    }

    async fn get_output(
        &self,
        request: Request<GetOutputRequest>,
    ) -> Result<Response<GetOutputResponse>, Status> {
        let ws = self.client(&request)?;
        session_rpcs::get_output(&self.state, &ws, request.into_inner()).map(Response::new)
    }

    async fn health_check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        // Health checks work without credentials (load balancers); counts are
        // only reported to callers of a workspace.
        let ws = self.client(&request).ok();
        Ok(Response::new(session_rpcs::health_check(
            &self.state,
            ws.as_ref(),
        )))
    }

    async fn file_list_directory(
        &self,
        request: Request<FileListDirectoryRpcRequest>,
    ) -> Result<Response<FileListDirectoryRpcResponse>, Status> {
        let (ws, sid) = self.file_target(&request, |r| &r.session_id)?;
        let r = request.into_inner();
        files::check_path("path", &r.path)?;
        let op = Operation::ListDirectory(FileListDirectoryRequest {
            path: r.path,
            page_size: r.page_size,
            page_token: r.page_token,
            include_hidden: r.include_hidden,
            visibility_mode: 0,
        });
        let outcome = files::run(&self.state, &ws, &sid, op, limits::FILE_OP_TIMEOUT).await?;
        let result = files::answer(outcome, |r| match r {
            fres::Result::ListDirectory(x) => Some(x),
            _ => None,
        })?;
        Ok(Response::new(FileListDirectoryRpcResponse {
            success: true,
            error: String::new(),
            result: Some(result),
        }))
    }

    async fn file_read(
        &self,
        request: Request<FileReadRpcRequest>,
    ) -> Result<Response<FileReadRpcResponse>, Status> {
        let (ws, sid) = self.file_target(&request, |r| &r.session_id)?;
        let r = request.into_inner();
        files::check_path("path", &r.path)?;
        if r.offset < 0 || r.length < 0 {
            return Err(Status::invalid_argument(
                "offset and length must not be negative",
            ));
        }
        let op = Operation::ReadFile(FileReadRequest {
            path: r.path,
            offset: r.offset,
            length: r.length,
            transcode: r.transcode,
        });
        let outcome = files::run(&self.state, &ws, &sid, op, limits::FILE_READ_TIMEOUT).await?;
        let result = files::answer(outcome, |r| match r {
            fres::Result::ReadFile(x) => Some(x),
            _ => None,
        })?;
        Ok(Response::new(FileReadRpcResponse {
            success: true,
            error: String::new(),
            result: Some(result),
        }))
    }

    async fn file_write(
        &self,
        request: Request<FileWriteRpcRequest>,
    ) -> Result<Response<FileWriteRpcResponse>, Status> {
        let (ws, sid) = self.file_target(&request, |r| &r.session_id)?;
        let r = request.into_inner();
        files::check_target_path("path", &r.path)?;
        if r.content.len() > limits::MAX_FILE_WRITE_BYTES {
            return Err(Status::resource_exhausted(format!(
                "file content is {} bytes; the limit is {} bytes",
                r.content.len(),
                limits::MAX_FILE_WRITE_BYTES
            )));
        }
        // The SDKs leave `overwrite` false for plain writes; forward it as
        // given and let the agent treat false as "may replace" (docs/PROTOCOL.md).
        let op = Operation::WriteFile(FileWriteRequest {
            path: r.path,
            content: r.content,
            overwrite: r.overwrite,
            create_parents: r.create_parents,
        });
        let outcome = files::run(&self.state, &ws, &sid, op, limits::FILE_OP_TIMEOUT).await?;
        let mut result = files::answer(outcome, |r| match r {
            fres::Result::WriteFile(x) => Some(x),
            _ => None,
        })?;
        result.entry.get_or_insert_with(Default::default);
        Ok(Response::new(FileWriteRpcResponse {
            success: true,
            error: String::new(),
            result: Some(result),
        }))
    }

    async fn file_create_directory(
        &self,
        request: Request<FileCreateDirectoryRpcRequest>,
    ) -> Result<Response<FileCreateDirectoryRpcResponse>, Status> {
        let (ws, sid) = self.file_target(&request, |r| &r.session_id)?;
        let r = request.into_inner();
        files::check_target_path("path", &r.path)?;
        let op = Operation::CreateDirectory(FileCreateDirectoryRequest {
            path: r.path,
            create_parents: r.create_parents,
        });
        let outcome = files::run(&self.state, &ws, &sid, op, limits::FILE_OP_TIMEOUT).await?;
        let mut result = files::answer(outcome, |r| match r {
            fres::Result::CreateDirectory(x) => Some(x),
            _ => None,
        })?;
        result.entry.get_or_insert_with(Default::default);
        Ok(Response::new(FileCreateDirectoryRpcResponse {
            success: true,
            error: String::new(),
            result: Some(result),
        }))
    }

    async fn file_delete(
        &self,
        request: Request<FileDeleteRpcRequest>,
    ) -> Result<Response<FileDeleteRpcResponse>, Status> {
        let (ws, sid) = self.file_target(&request, |r| &r.session_id)?;
        let r = request.into_inner();
        files::check_target_path("path", &r.path)?;
        let op = Operation::DeleteFile(FileDeleteRequest {
            path: r.path,
            recursive: r.recursive,
        });
        let outcome = files::run(&self.state, &ws, &sid, op, limits::FILE_OP_TIMEOUT).await?;
        let result = files::answer(outcome, |r| match r {
            fres::Result::DeleteFile(x) => Some(x),
            _ => None,
        })?;
        Ok(Response::new(FileDeleteRpcResponse {
            success: true,
            error: String::new(),
            result: Some(result),
        }))
    }

    async fn file_move(
        &self,
        request: Request<FileMoveRpcRequest>,
    ) -> Result<Response<FileMoveRpcResponse>, Status> {
        let (ws, sid) = self.file_target(&request, |r| &r.session_id)?;
        let r = request.into_inner();
        files::check_target_path("source_path", &r.source_path)?;
        files::check_target_path("destination_path", &r.destination_path)?;
        let op = Operation::MoveFile(FileMoveRequest {
            source_path: r.source_path,
            destination_path: r.destination_path,
            overwrite: r.overwrite,
        });
        let outcome = files::run(&self.state, &ws, &sid, op, limits::FILE_OP_TIMEOUT).await?;
        let mut result = files::answer(outcome, |r| match r {
            fres::Result::MoveFile(x) => Some(x),
            _ => None,
        })?;
        result.entry.get_or_insert_with(Default::default);
        Ok(Response::new(FileMoveRpcResponse {
            success: true,
            error: String::new(),
            result: Some(result),
        }))
    }

    async fn file_copy(
        &self,
        request: Request<FileCopyRpcRequest>,
    ) -> Result<Response<FileCopyRpcResponse>, Status> {
        let (ws, sid) = self.file_target(&request, |r| &r.session_id)?;
        let r = request.into_inner();
        files::check_target_path("source_path", &r.source_path)?;
        files::check_target_path("destination_path", &r.destination_path)?;
        let op = Operation::CopyFile(FileCopyRequest {
            source_path: r.source_path,
            destination_path: r.destination_path,
            overwrite: r.overwrite,
            recursive: r.recursive,
        });
        let outcome = files::run(&self.state, &ws, &sid, op, limits::FILE_OP_TIMEOUT).await?;
        let mut result = files::answer(outcome, |r| match r {
            fres::Result::CopyFile(x) => Some(x),
            _ => None,
        })?;
        result.entry.get_or_insert_with(Default::default);
        Ok(Response::new(FileCopyRpcResponse {
            success: true,
            error: String::new(),
            result: Some(result),
        }))
    }

    async fn file_get_info(
        &self,
        request: Request<FileGetInfoRpcRequest>,
    ) -> Result<Response<FileGetInfoRpcResponse>, Status> {
        let (ws, sid) = self.file_target(&request, |r| &r.session_id)?;
        let r = request.into_inner();
        files::check_path("path", &r.path)?;
        let op = Operation::GetInfo(FileGetInfoRequest { path: r.path });
        let outcome = files::run(&self.state, &ws, &sid, op, limits::FILE_OP_TIMEOUT).await?;
        let mut result = files::answer(outcome, |r| match r {
            fres::Result::GetInfo(x) => Some(x),
            _ => None,
        })?;
        result.entry.get_or_insert_with(Default::default);
        Ok(Response::new(FileGetInfoRpcResponse {
            success: true,
            error: String::new(),
            result: Some(result),
        }))
    }
}
