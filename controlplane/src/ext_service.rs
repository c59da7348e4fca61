//! `cmdop.ext.v1.Cmdop`: the gRPC facade of libcmdop's client-side
//! extensions. Each handler authenticates the call and answers it or hands
//! it on: server info, machine lookup (asking the replica that holds the
//! machine in a cluster), access/refresh tokens here; native exec to
//! [`crate::exec_relay`], fan-out over a selection to
//! [`crate::fleet_exec`], uploads and downloads to [`crate::transfer`].

use std::{sync::Arc, time::Duration};

use cmdop_proto::ext::{
    cmdop_server::Cmdop, exec_input, ExecFleetRequest, ExecInput, ExecRequest, IssueTokenRequest,
    ListMachinesRequest, ListMachinesResponse, Machine, RefreshTokenRequest, ResolveMachineRequest,
    ResolveMachineResponse, ServerInfoRequest, ServerInfoResponse, TokenPair,
};
use tonic::{Request, Response, Status};

use crate::{
    auth,
    exec_relay::{forward_stdin, start_exec, ExecStream},
    limits, raw,
    sessions::{
        hostname::{match_hostname, Candidate, HostnameMatch},
        Session,
    },
    state::{SharedState, State},
    store::{now_ms, secrets, RefreshOutcome, Workspace},
};

/// Capabilities advertised by ServerInfo in every configuration; side
/// connections ([`raw::CAPABILITY`]) and server-side fan-out
/// ([`cmdop_proto::caps::EXEC_FLEET`]) are added when they are on.
pub const CAPABILITIES: [&str; 8] = [
    cmdop_proto::caps::EXEC,
    cmdop_proto::caps::MACHINES,
    cmdop_proto::caps::EXEC_STDIN,
    cmdop_proto::caps::EXEC_OUTCOME,
    cmdop_proto::caps::MACHINE_ID,
    cmdop_proto::caps::TOKENS,
    cmdop_proto::caps::FILES,
    cmdop_proto::caps::EXEC_TTY,
];

/// The service implementation.
pub struct CmdopService {
    state: SharedState,
}

impl CmdopService {
    pub fn new(state: SharedState) -> Self {
        CmdopService { state }
    }

    fn client<T>(&self, req: &Request<T>) -> Result<Workspace, Status> {
        auth::client_of(&self.state.store, req)
    }
}

/// A machine as reported to clients, with its current session if any.
type MachineWithSession = (Machine, Option<Arc<Session>>);

/// Every machine of a workspace with its current session, if any, and
/// whether that is all of them (false: the database cannot be reached and
/// only the machines connected here are listed).
fn machines(state: &State, ws: &Workspace) -> Result<(Vec<MachineWithSession>, bool), Status> {
    let mut complete = true;
    let rows = match crate::inventory::known_machines(state, ws) {
        Ok(rows) => rows,
        // The database cannot be reached: the machines connected here are
        // still known (what they report themselves), so lookups of those
        // keep working; the others are missing until it is back.
        Err(err) if crate::store::is_unavailable_error(&err) => {
            tracing::debug!(error = %format!("{err:#}"), "listing only the machines connected here");
            complete = false;
            state
                .sessions
                .live_machines(ws)
                .into_iter()
                .map(|s| crate::store::MachineRow {
                    machine_id: s.machine_id.clone(),
                    hostname: s.info.hostname.clone(),
                    workspace_id: ws.id.clone(),
                    last_seen_unix_ms: s.last_activity_ms(),
                    enrolled_at_unix_ms: 0,
                })
                .collect()
        }
        Err(err) => return Err(crate::db::internal(err)),
    };
    let all = rows
        .into_iter()
        .map(|row| {
            let session = state.sessions.by_machine(ws, &row.machine_id);
            let machine = match &session {
                Some(s) => crate::inventory::of_session(row.machine_id, s),
                None => Machine {
                    machine_id: row.machine_id,
                    hostname: row.hostname,
                    status: "disconnected".into(),
                    last_seen_unix_ms: row.last_seen_unix_ms,
                    ..Default::default()
                },
            };
            (machine, session)
        })
        .collect();
    Ok((all, complete))
}

fn token_pair(p: crate::store::TokenPair) -> TokenPair {
    TokenPair {
        access_token: p.access_token,
        refresh_token: p.refresh_token,
        access_expires_unix_ms: p.access_expires_unix_ms,
        refresh_expires_unix_ms: p.refresh_expires_unix_ms,
    }
}

fn access_ttl(seconds: u32) -> Duration {
    if seconds == 0 {
        limits::DEFAULT_ACCESS_TTL
    } else {
        Duration::from_secs(u64::from(seconds)).min(limits::MAX_ACCESS_TTL)
    }
}

#[tonic::async_trait]
impl Cmdop for CmdopService {
    async fn list_machines(
        &self,
        request: Request<ListMachinesRequest>,
    ) -> Result<Response<ListMachinesResponse>, Status> {
        let ws = self.client(&request)?;
        let scope = if crate::cluster::is_forwarded(&request) {
            crate::inventory::Scope::ThisReplica
        } else {
            match crate::cluster::asking_caller(self.state.cluster.is_some(), &request) {
                Some(caller) => crate::inventory::Scope::Workspace(
                    crate::inventory::live_elsewhere(&self.state, &caller).await,
                ),
                None => crate::inventory::Scope::Workspace(Vec::new()),
            }
        };
        crate::inventory::list(&self.state, &ws, request.into_inner(), scope)
            .await
            .map(Response::new)
    }

    async fn server_info(
        &self,
        request: Request<ServerInfoRequest>,
    ) -> Result<Response<ServerInfoResponse>, Status> {
        let ws = self.client(&request)?;
        let mut capabilities: Vec<String> = CAPABILITIES.iter().map(|c| c.to_string()).collect();
        if self.state.side_connections.is_some() {
            capabilities.push(raw::capability(&self.state.config).to_string());
            capabilities.push(crate::transfer::CAPABILITY_RAW_WRITE.to_string());
        }
        if self.state.config.server_fanout {
            capabilities.push(cmdop_proto::caps::EXEC_FLEET.to_string());
        }
        Ok(Response::new(ServerInfoResponse {
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            capabilities,
            workspace_name: ws.name,
            server_time_unix_ms: now_ms(),
        }))
    }

    async fn resolve_machine(
        &self,
        request: Request<ResolveMachineRequest>,
    ) -> Result<Response<ResolveMachineResponse>, Status> {
        let ws = self.client(&request)?;
        let caller = crate::cluster::asking_caller(self.state.cluster.is_some(), &request);
        let req = request.into_inner();
        limits::check_len("hostname", req.hostname.len(), limits::MAX_HOSTNAME_BYTES)?;
        let asked = req.clone();
        let (all, complete) = machines(&self.state, &ws)?;
        let answer = if !req.machine_id.is_empty() {
            let found = all
                .into_iter()
                .map(|(m, _)| m)
                .find(|m| m.machine_id == req.machine_id);
            ResolveMachineResponse {
                found: found.is_some(),
                machine: found,
                ..Default::default()
            }
        } else {
            let candidates = all
                .into_iter()
                .map(|(m, s)| Candidate {
                    hostname: m.hostname.clone(),
                    activity: m.last_seen_unix_ms,
                    live: s.as_ref().is_some_and(|s| s.is_live()),
                    value: m,
                })
                .collect();
            match match_hostname(&req.hostname, req.partial_match, candidates) {
                HostnameMatch::One(m) => ResolveMachineResponse {
                    found: true,
                    machine: Some(m),
                    ..Default::default()
                },
                HostnameMatch::Ambiguous(matches) => ResolveMachineResponse {
                    ambiguous: true,
                    matches,
                    ..Default::default()
                },
                HostnameMatch::None => ResolveMachineResponse::default(),
            }
        };
        if !answer.found && !answer.ambiguous {
            let asked = if req.machine_id.is_empty() {
                &req.hostname
            } else {
                &req.machine_id
            };
            crate::inventory::note_hidden(&self.state, &ws, "ResolveMachine", asked);
        }
        // Not connected here, and the database that knows the others
        // cannot be reached: the live replicas answer for the machines
        // connected to them.
        if !complete && !answer.found && !answer.ambiguous {
            if let Some(caller) = &caller {
                if let Some(found) = self.resolve_on_peers(caller, asked.clone()).await {
                    return Ok(Response::new(found));
                }
            }
            return Err(Status::unavailable(format!(
                "{} (only machines connected to this server can be looked up meanwhile)",
                crate::db::DATABASE_UNAVAILABLE
            )));
        }
        // Cluster: a machine offline here may be connected to another
        // replica, which then answers: the one its route names, else
        // (no route, or its replica is gone or did not answer) whichever
        // live replica has it. Only when none has it is it offline.
        if let (Some(caller), Some(m)) = (caller, answer.machine.as_ref()) {
            if answer.found && m.session_id.is_empty() {
                if let Some(remote) = self
                    .resolve_elsewhere(&caller, &m.machine_id, asked)
                    .await?
                {
                    return Ok(Response::new(remote));
                }
                let by_id = ResolveMachineRequest {
                    machine_id: m.machine_id.clone(),
                    hostname: String::new(),
                    ..req.clone()
                };
                if let Some(found) = self.resolve_on_peers(&caller, by_id).await {
                    if found.found {
                        return Ok(Response::new(found));
                    }
                }
            }
        }
        Ok(Response::new(answer))
    }

    type ExecStream = ExecStream;

    async fn exec(
        &self,
        request: Request<ExecRequest>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let ws = self.client(&request)?;
        let side = crate::cluster::side_ticket(&request);
        let (stream, _, _, _) =
            start_exec(&self.state, &ws, request.into_inner(), false, side).await?;
        Ok(Response::new(stream))
    }

    type ExecFleetStream = crate::fleet_exec::ExecFleetStream;

    async fn exec_fleet(
        &self,
        request: Request<ExecFleetRequest>,
    ) -> Result<Response<Self::ExecFleetStream>, Status> {
        let ws = self.client(&request)?;
        if !self.state.config.server_fanout {
            return Err(Status::unimplemented(
                "this server does not fan out (it runs with --no-server-fanout): run one Exec per machine",
            ));
        }
        let caller = crate::cluster::asking_caller(self.state.cluster.is_some(), &request);
        let ticket = request
            .extensions()
            .get::<Arc<crate::streams::Ticket>>()
            .cloned();
        crate::fleet_exec::start(
            Arc::clone(&self.state),
            ws,
            caller,
            ticket,
            request.into_inner(),
        )
        .await
        .map(Response::new)
    }

    type ExecWithStdinStream = ExecStream;

    async fn exec_with_stdin(
        &self,
        request: Request<tonic::Streaming<ExecInput>>,
    ) -> Result<Response<Self::ExecWithStdinStream>, Status> {
        let ws = self.client(&request)?;
        let side = crate::cluster::side_ticket(&request);
        let mut input = request.into_inner();
        let req = match input.message().await? {
            Some(ExecInput {
                part: Some(exec_input::Part::Start(req)),
            }) => req,
            _ => {
                return Err(Status::invalid_argument(
                    "ExecWithStdin must begin with `start`",
                ))
            }
        };
        let (stream, link, exec_id, acks) = start_exec(&self.state, &ws, req, true, side).await?;
        if let Some(acks) = acks {
            tokio::spawn(forward_stdin(link, exec_id, input, acks));
        }
        Ok(Response::new(stream))
    }

    async fn upload(
        &self,
        request: Request<tonic::Streaming<cmdop_proto::ext::UploadChunk>>,
    ) -> Result<Response<cmdop_proto::ext::UploadResult>, Status> {
        let ws = self.client(&request)?;
        crate::transfer::upload(&self.state, &ws, request.into_inner())
            .await
            .map(Response::new)
    }

    type UploadWithSideStream = crate::transfer::UploadEventStream;

    async fn upload_with_side(
        &self,
        request: Request<tonic::Streaming<cmdop_proto::ext::UploadChunk>>,
    ) -> Result<Response<Self::UploadWithSideStream>, Status> {
        let ws = self.client(&request)?;
        let forwarded = crate::cluster::is_forwarded(&request);
        crate::transfer::upload_with_side(&self.state, &ws, request.into_inner(), forwarded)
            .await
            .map(Response::new)
    }

    type DownloadStream = crate::transfer::DownloadStream;

    async fn download(
        &self,
        request: Request<cmdop_proto::ext::DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let ws = self.client(&request)?;
        let side = crate::cluster::side_ticket(&request);
        crate::transfer::download(&self.state, &ws, request.into_inner(), side)
            .await
            .map(Response::new)
    }

    async fn issue_token(
        &self,
        request: Request<IssueTokenRequest>,
    ) -> Result<Response<TokenPair>, Status> {
        let key = auth::bearer(request.metadata())
            .ok_or_else(|| {
                Status::unauthenticated("missing API key: pass one or set CMDOP_API_KEY")
            })?
            .to_string();
        if !key.starts_with(secrets::API_KEY_PREFIX) || key.len() > limits::MAX_CREDENTIAL_BYTES {
            return Err(Status::unauthenticated(
                "IssueToken needs an API key (cmdop_…), not a token",
            ));
        }
        let ws = self.client(&request)?;
        let ttl = access_ttl(request.get_ref().access_ttl_seconds);
        let audit = &self.state.audit;
        let record = audit
            .begin(audit.entry(
                &ws,
                "token.issue",
                "",
                "",
                serde_json::json!({ "access_ttl_s": ttl.as_secs() }),
            ))
            .await?;
        let pair = crate::db::with_store(&self.state.store, move |store| {
            store.issue_tokens(&key, ttl)
        })
        .await
        .map_err(crate::db::internal)?
        .ok_or_else(|| {
            Status::unauthenticated(
                "API key is invalid or revoked; create a new one with `cmdop admin create-key`",
            )
        })?;
        record.finish(crate::store::AuditOutcome {
            outcome: "ok".into(),
            ..Default::default()
        });
        Ok(Response::new(token_pair(pair)))
    }

    async fn refresh_token(
        &self,
        request: Request<RefreshTokenRequest>,
    ) -> Result<Response<TokenPair>, Status> {
        let source = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let token = request.into_inner().refresh_token;
        let invalid = || {
            Status::unauthenticated(
                "refresh token is invalid or revoked — sign in again with your API key",
            )
        };
        if token.len() > limits::MAX_CREDENTIAL_BYTES
            || !token.starts_with(secrets::REFRESH_TOKEN_PREFIX)
        {
            return Err(invalid());
        }
        let presented = token.clone();
        match crate::db::with_store(&self.state.store, move |store| {
            store.refresh_tokens(&token, limits::DEFAULT_ACCESS_TTL)
        })
        .await
        .map_err(crate::db::internal)?
        {
            RefreshOutcome::Rotated(pair) => Ok(Response::new(token_pair(pair))),
            RefreshOutcome::ReuseDetected => {
                tracing::warn!("refresh token reused; token family revoked");
                // On the record: whose family went, and from where.
                let family = crate::db::with_store(&self.state.store, move |store| {
                    store.family_of_refresh_token(&presented)
                })
                .await;
                if let Ok(Some((workspace_id, family))) = family {
                    let ws = Workspace {
                        id: workspace_id,
                        name: String::new(),
                        scope: crate::scope::Scope::full(),
                        source,
                    };
                    let audit = &self.state.audit;
                    let mut entry = audit.entry(
                        &ws,
                        "token.revoke",
                        "",
                        "",
                        serde_json::json!({
                            "family": family,
                            "reason": "a used refresh token was presented again",
                        }),
                    );
                    entry.actor = "control plane (refresh-token reuse)".into();
                    audit.note(entry);
                }
                // End the streams its access tokens opened now, not at the
                // next periodic full check.
                self.state.open_streams.recheck();
                // Answer once no server's credential cache trusts the
                // family's access tokens any more (bounded by the lease).
                let waited = crate::db::with_store(&self.state.store, |store| {
                    let generation = store.revocation_generation()?;
                    store.wait_for_revocation_acks(generation, crate::revocations::ACK_WAIT)
                })
                .await;
                match waited {
                    Ok(r) if !r.pending.is_empty() => tracing::warn!(
                        servers = ?r.pending,
                        "a revoked token family may still be accepted from these servers' caches until their lease runs out"
                    ),
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(error = %format!("{err:#}"), "cannot wait for servers to apply a token family's revocation")
                    }
                }
                Err(Status::unauthenticated(
                    "refresh token reuse detected; the token family is revoked — sign in again",
                ))
            }
            RefreshOutcome::Expired => Err(Status::unauthenticated(
                "refresh token expired — sign in again with your API key",
            )),
            RefreshOutcome::Invalid => Err(invalid()),
        }
    }
}

impl CmdopService {
    /// ResolveMachine asked of every other live replica (a database
    /// outage, or a machine offline here with no usable route: only they
    /// know the machines connected to them); their answers merged: one
    /// machine found, several (ambiguous), or `None`.
    async fn resolve_on_peers(
        &self,
        caller: &crate::cluster::Caller,
        req: ResolveMachineRequest,
    ) -> Option<ResolveMachineResponse> {
        let cluster = self.state.cluster.as_ref()?;
        let answers = cluster
            .ask_each(|channel| {
                let req = cluster.peer_request(caller, req.clone());
                async move {
                    let mut client = cmdop_proto::ext::cmdop_client::CmdopClient::new(channel);
                    Ok(client.resolve_machine(req).await?.into_inner())
                }
            })
            .await;
        let mut found: Vec<Machine> = Vec::new();
        for (replica_id, a) in answers {
            let machines = a.machine.into_iter().filter(|_| a.found).chain(a.matches);
            for m in machines {
                if m.session_id.is_empty() || found.iter().any(|f| f.machine_id == m.machine_id) {
                    continue;
                }
                // Calls for it go to the replica that has it meanwhile.
                cluster.learn_route(crate::store::cluster::RouteRow {
                    machine_id: m.machine_id.clone(),
                    workspace_id: caller.workspace.id.clone(),
                    replica_id: replica_id.clone(),
                    session_id: m.session_id.clone(),
                    generation: 0,
                });
                found.push(m);
            }
        }
        match found.len() {
            0 => None,
            1 => Some(ResolveMachineResponse {
                found: true,
                machine: found.pop(),
                ..Default::default()
            }),
            _ => Some(ResolveMachineResponse {
                ambiguous: true,
                matches: found,
                ..Default::default()
            }),
        }
    }

    /// ResolveMachine answered by the replica that holds `machine_id`'s
    /// agent, if another one does.
    async fn resolve_elsewhere(
        &self,
        caller: &crate::cluster::Caller,
        machine_id: &str,
        mut req: ResolveMachineRequest,
    ) -> Result<Option<ResolveMachineResponse>, Status> {
        let Some(cluster) = &self.state.cluster else {
            return Ok(None);
        };
        let target = match cluster
            .resolve_machine(
                &self.state.sessions,
                &self.state.store,
                &caller.workspace,
                machine_id,
            )
            .await
        {
            Ok(t) => t,
            // The owner is gone: the machine is offline as answered here.
            Err(_) => return Ok(None),
        };
        let crate::cluster::routes::Target::Remote { addr, .. } = target else {
            return Ok(None);
        };
        req.machine_id = machine_id.to_string();
        let channel = cluster.channel(&addr)?;
        let mut client = cmdop_proto::ext::cmdop_client::CmdopClient::new(channel);
        match tokio::time::timeout(
            crate::cluster::PEER_LOOKUP_TIMEOUT,
            client.resolve_machine(cluster.peer_request(caller, req)),
        )
        .await
        {
            Ok(Ok(resp)) => Ok(Some(resp.into_inner())),
            _ => Ok(None),
        }
    }
}
