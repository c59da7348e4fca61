//! The gate every gRPC call passes before its request body is read:
//!
//! - authentication: the credential the method needs (API key or access
//!   token, agent secret) is checked from the headers alone, so a caller
//!   without one never gets a byte of its message decoded;
//! - a message size limit per method (large only where a large message is
//!   legitimate), checked from each message's length prefix;
//! - a global budget of request bytes being received at once, taken by
//!   clients' messages above [`UNBUDGETED_MESSAGE_BYTES`] (agents' messages
//!   and small ones never wait on it, so one key filling it cannot stop
//!   agents or ordinary calls);
//! - a [`Ticket`] in the open-stream registry, which ends the call when its
//!   credential is revoked or expires, and holds the per-key slot of Exec,
//!   attach and transfer calls.
//!
//! Handlers take the caller the gate found from the request's extensions
//! ([`auth::Checked`]); a call that reaches a handler without it (public
//! methods) is authenticated there as before.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use cmdop_proto::scope::Operation;
use tokio::sync::Semaphore;
use tonic::{body::Body, metadata::MetadataMap, Status};

use crate::{
    auth,
    cluster::{self, Caller, Forwarded},
    conns::Tracker,
    limits,
    state::SharedState,
    streams::{OpenStreams, SlotKind, Ticket},
};

/// Shared by every connection's copy of the gate service.
pub struct Gate {
    state: SharedState,
    tracker: Arc<Tracker>,
    streams: Arc<OpenStreams>,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    /// This gate guards the peer port ([`cluster::peer_gate`]).
    peer: bool,
}

impl Gate {
    pub fn new(state: SharedState, tracker: Arc<Tracker>, streams: Arc<OpenStreams>) -> Arc<Gate> {
        Self::with_role(state, tracker, streams, false)
    }

    /// The gate of the peer port: only replicas with the peer secret.
    pub fn peer(state: SharedState, tracker: Arc<Tracker>, streams: Arc<OpenStreams>) -> Arc<Gate> {
        Self::with_role(state, tracker, streams, true)
    }

    fn with_role(
        state: SharedState,
        tracker: Arc<Tracker>,
        streams: Arc<OpenStreams>,
        peer: bool,
    ) -> Arc<Gate> {
        // One largest message must always fit, or it could never be sent.
        let budget_bytes = state
            .config
            .limits
            .inflight_request_bytes
            .max(limits::MAX_MESSAGE_BYTES);
        Arc::new(Gate {
            state,
            tracker,
            streams,
            budget: Arc::new(Semaphore::new(budget_bytes)),
            budget_bytes,
            peer,
        })
    }

    /// Admits a call on the peer port: the peer secret, then the caller the
    /// forwarding replica vouches for. Agents and public methods are not
    /// served here.
    fn admit_peer(&self, req: &http::request::Parts) -> Result<Pass, Status> {
        let Some(cluster) = &self.state.cluster else {
            return Err(Status::unavailable("cluster mode is off"));
        };
        let meta = MetadataMap::from_headers(req.headers.clone());
        let vouched = cluster::peer_gate::admit(cluster, &meta)?;
        if let Some(conn) = self.tracker.of_request(&req.extensions) {
            self.tracker.saw_request(&conn);
            self.tracker.authenticated(&conn);
        }
        let route = route(req.uri.path(), self.state.config.extensions);
        let (slot_kind, max_message) =
            match route.need {
                Need::Client => (route.slot, route.max_message),
                Need::AgentOrClient => (Some(SlotKind::Attach), INPUT_MESSAGE_BYTES),
                _ => return Err(Status::permission_denied(
                    "the peer port serves only forwarded client calls; agents and unauthenticated \
                     calls go to the public port (--listen)",
                )),
            };
        // A call forwarded to the machine's replica: the forwarding replica
        // checked the operation too; the scope travels with the call, so
        // this replica holds it to the same. Other peer calls are lookups
        // a replica makes to serve a call it checked itself (an ExecFleet
        // asks every replica what is live there): they need no operation
        // of their own, and the scope still limits what they see.
        let op = match route.need {
            Need::AgentOrClient => Some(Operation::Shell),
            _ if cluster::forward::is_targeted(req.uri.path()) => route.op,
            _ => None,
        };
        if let Some(op) = op {
            vouched.workspace.scope.check(op)?;
        }
        let slot = match (slot_kind, vouched.key_hash) {
            (Some(kind), Some(key)) => Some((kind, key)),
            _ => None,
        };
        let ticket = self.streams.open(vouched.credential, slot)?;
        Ok(Pass {
            max_message,
            budgeted: true,
            ticket: Some(ticket),
            checked: Some(auth::Checked::Client(vouched.workspace)),
            caller: None,
            forwarded: true,
        })
    }

    /// Decides from the headers alone whether the call may go on, and with
    /// what limits.
    fn admit(&self, req: &http::request::Parts) -> Result<Pass, Status> {
        if self.peer {
            return self.admit_peer(req);
        }
        let conn = self.tracker.of_request(&req.extensions);
        if let Some(conn) = &conn {
            self.tracker.saw_request(conn);
        }
        let route = route(req.uri.path(), self.state.config.extensions);
        if route.need == Need::Nothing {
            return Ok(Pass {
                max_message: route.max_message,
                budgeted: true,
                ticket: None,
                checked: None,
                caller: None,
                forwarded: false,
            });
        }
        let meta = MetadataMap::from_headers(req.headers.clone());
        let store = &self.state.store;
        let agent = match route.need {
            Need::Agent => true,
            Need::AgentOrClient => auth::is_agent_credential(&meta),
            _ => false,
        };
        let memory = &self.state.remembered;
        let (credential, key_hash, checked) = if agent {
            let (machine, credential) = auth::check_agent(store, memory, &meta)?;
            (credential, None, auth::Checked::Agent(machine))
        } else {
            let pass = match auth::check_client(store, memory, &meta) {
                Ok(pass) => pass,
                // Health checks work without credentials (load balancers).
                Err(_) if route.need == Need::OptionalClient => {
                    return Ok(Pass {
                        max_message: route.max_message,
                        budgeted: true,
                        ticket: None,
                        checked: None,
                        caller: None,
                        forwarded: false,
                    })
                }
                Err(status) => return Err(status),
            };
            let op = match route.need {
                Need::AgentOrClient => Some(Operation::Shell),
                _ => route.op,
            };
            let source = crate::conns::remote_addr(&req.extensions)
                .map(|a| a.to_string())
                .unwrap_or_default();
            if let Some(op) = op {
                if let Err(refused) = pass.workspace.scope.check(op) {
                    // Refused calls are on the record too (without a wait:
                    // nothing proceeds).
                    let ws = crate::store::Workspace {
                        source,
                        ..pass.workspace
                    };
                    let detail = serde_json::json!({
                        "method": req.uri.path(),
                        "missing": op.name(),
                    });
                    let audit = &self.state.audit;
                    audit.note(audit.entry(&ws, "denied", "", "", detail));
                    crate::metrics::scope_denied();
                    return Err(refused);
                }
            }
            if let Some(key) = &pass.key_hash {
                self.state.key_uses.note(key);
            }
            if let Some(until) = pass.expires_ms {
                self.streams.expires_at(until);
            }
            let mut workspace = pass.workspace;
            workspace.source = source;
            (
                pass.credential,
                pass.key_hash,
                auth::Checked::Client(workspace),
            )
        };
        if let Some(conn) = &conn {
            self.tracker.authenticated(conn);
        }
        let (slot_kind, max_message) = match route.need {
            // ConnectTerminal: agents send output and file contents; clients
            // (attach) send keystrokes.
            Need::AgentOrClient if agent => (None, limits::MAX_MESSAGE_BYTES),
            Need::AgentOrClient => (Some(SlotKind::Attach), INPUT_MESSAGE_BYTES),
            _ => (route.slot, route.max_message),
        };
        let slot = match (slot_kind, key_hash) {
            (Some(kind), Some(key)) => Some((kind, key)),
            _ => None,
        };
        // In cluster mode a client call may be forwarded: it carries who
        // is calling to the replica that serves it.
        let caller = match (&self.state.cluster, &checked) {
            (Some(_), auth::Checked::Client(ws)) => Some(Caller {
                workspace: ws.clone(),
                credential: credential.clone(),
                key_hash: slot.as_ref().map(|(_, k)| k.clone()),
            }),
            _ => None,
        };
        let ticket = self.streams.open(credential, slot)?;
        Ok(Pass {
            max_message,
            budgeted: !agent,
            ticket: Some(ticket),
            checked: Some(checked),
            caller,
            forwarded: false,
        })
    }
}

/// Messages up to this size do not take from the byte budget.
const UNBUDGETED_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest message of calls that carry no bulk data.
const DEFAULT_MESSAGE_BYTES: usize = 1024 * 1024;
/// Largest message of calls that need no credential (Enroll, RefreshToken,
/// HealthCheck, unknown methods).
const PUBLIC_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest message carrying terminal input (SendInput, attach). Input above
/// MAX_INPUT_BYTES but below this gets the handler's own INVALID_ARGUMENT.
const INPUT_MESSAGE_BYTES: usize = 4 * limits::MAX_INPUT_BYTES;
/// Largest Exec request: command, stdin and environment.
const EXEC_MESSAGE_BYTES: usize = limits::MAX_COMMAND_BYTES
    + limits::MAX_EXEC_STDIN_BYTES
    + limits::MAX_EXEC_ENV_ENTRIES * limits::MAX_EXEC_ENV_ENTRY_BYTES
    + 64 * 1024;
/// Largest Upload message: one chunk.
const UPLOAD_MESSAGE_BYTES: usize = crate::transfer::MAX_CHUNK_BYTES + 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// No credential (the handler decides).
    Nothing,
    /// A client credential if any; the call goes on without one.
    OptionalClient,
    /// An API key or access token.
    Client,
    /// An agent secret.
    Agent,
    /// ConnectTerminal: an agent secret, or a client credential (attach).
    AgentOrClient,
}

struct Route {
    need: Need,
    max_message: usize,
    slot: Option<SlotKind>,
    /// What a client's key must be allowed (see [`crate::scope`]); `None`:
    /// any key may call (lookups by name, server info, tokens), still only
    /// seeing the machines in its scope.
    op: Option<Operation>,
}

/// What each method needs. `extensions` says whether `cmdop.ext.v1.Cmdop`
/// is served (when not, its calls go on to UNIMPLEMENTED).
fn route(path: &str, extensions: bool) -> Route {
    let r = |need, max_message| Route {
        need,
        max_message,
        slot: None,
        op: None,
    };
    let with = |op, route: Route| Route {
        op: Some(op),
        ..route
    };
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", ""));
    match service {
        "terminal.TerminalStreamingService" => match method {
            // Agents need no operation; a client attaching needs `shell`
            // (checked in `Gate::admit`).
            "ConnectTerminal" => r(Need::AgentOrClient, limits::MAX_MESSAGE_BYTES),
            "HealthCheck" => r(Need::OptionalClient, PUBLIC_MESSAGE_BYTES),
            "FileWrite" => with(
                Operation::FilesWrite,
                r(Need::Client, limits::MAX_MESSAGE_BYTES),
            ),
            "SendInput" => with(Operation::Shell, r(Need::Client, INPUT_MESSAGE_BYTES)),
            "CreateSession" | "CloseSession" | "SendResize" | "SendSignal" | "GetHistory"
            | "GetOutput" => with(Operation::Shell, r(Need::Client, DEFAULT_MESSAGE_BYTES)),
            "FileListDirectory" | "FileRead" | "FileGetInfo" => {
                with(Operation::FilesRead, r(Need::Client, DEFAULT_MESSAGE_BYTES))
            }
            "FileCreateDirectory" | "FileDelete" | "FileMove" | "FileCopy" => with(
                Operation::FilesWrite,
                r(Need::Client, DEFAULT_MESSAGE_BYTES),
            ),
            "ListSessions" => with(
                Operation::SessionsList,
                r(Need::Client, DEFAULT_MESSAGE_BYTES),
            ),
            // GetSessionByHostname, GetSessionStatus: lookups.
            _ => r(Need::Client, DEFAULT_MESSAGE_BYTES),
        },
        "cmdop.ext.v1.Cmdop" if extensions => match method {
            "RefreshToken" => r(Need::Nothing, PUBLIC_MESSAGE_BYTES),
            // ExecWithStdin: the first message is an Exec request; the rest
            // carry stdin chunks of at most TRANSFER_CHUNK_BYTES. ExecFleet:
            // one slot to start; the fan-out takes up to `parallel - 1`
            // more of its key's free exec slots for its machines.
            "Exec" | "ExecWithStdin" | "ExecFleet" => Route {
                slot: Some(SlotKind::Exec),
                ..with(Operation::Exec, r(Need::Client, EXEC_MESSAGE_BYTES))
            },
            "Upload" | "UploadWithSide" => Route {
                slot: Some(SlotKind::Transfer),
                ..with(Operation::FilesWrite, r(Need::Client, UPLOAD_MESSAGE_BYTES))
            },
            "Download" => Route {
                slot: Some(SlotKind::Transfer),
                ..with(Operation::FilesRead, r(Need::Client, DEFAULT_MESSAGE_BYTES))
            },
            "ListMachines" => with(
                Operation::MachinesList,
                r(Need::Client, DEFAULT_MESSAGE_BYTES),
            ),
            // ServerInfo, ResolveMachine, IssueToken (tokens carry the
            // key's scope).
            _ => r(Need::Client, DEFAULT_MESSAGE_BYTES),
        },
        "cmdop.ext.v1.AgentLink" => match method {
            "Enroll" => r(Need::Nothing, PUBLIC_MESSAGE_BYTES),
            _ => r(Need::Agent, limits::MAX_MESSAGE_BYTES),
        },
        _ => r(Need::Nothing, PUBLIC_MESSAGE_BYTES),
    }
}

/// What an admitted call goes on with.
struct Pass {
    max_message: usize,
    /// Large messages take from the global byte budget (clients only).
    budgeted: bool,
    ticket: Option<Ticket>,
    /// Who is calling, for the handler (see [`auth::Checked`]).
    checked: Option<auth::Checked>,
    /// Cluster mode, public port, a client: who is calling, should the
    /// call be forwarded.
    caller: Option<Caller>,
    /// Arrived on the peer port.
    forwarded: bool,
}

/// The tower layer for `Server::layer`.
#[derive(Clone)]
pub struct GateLayer(pub Arc<Gate>);

impl<S> tower_layer::Layer<S> for GateLayer {
    type Service = GateService<S>;

    fn layer(&self, inner: S) -> GateService<S> {
        GateService {
            inner,
            gate: self.0.clone(),
        }
    }
}

/// [`Gate`] in front of the routes.
#[derive(Clone)]
pub struct GateService<S> {
    inner: S,
    gate: Arc<Gate>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S> tower_service::Service<http::Request<Body>> for GateService<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The clone that was made ready goes to this call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let gate = self.gate.clone();
        let (parts, body) = req.into_parts();
        // The peer port checks only the peer secret: no database.
        if gate.peer || !gate.state.store.is_networked() {
            let pass = gate.admit(&parts);
            return proceed(gate, inner, parts, body, pass);
        }
        // A networked database (PostgreSQL) may take a while to answer, or
        // not answer at all while it is down: check the credential on the
        // blocking pool, never on an async worker.
        Box::pin(async move {
            let checked = tokio::task::spawn_blocking({
                let gate = gate.clone();
                move || {
                    let pass = gate.admit(&parts);
                    (parts, pass)
                }
            })
            .await;
            match checked {
                Ok((parts, pass)) => proceed(gate, inner, parts, body, pass).await,
                Err(e) => {
                    tracing::error!(error = %e, "credential check failed");
                    Ok(Status::internal("the credential check failed; retry").into_http::<Body>())
                }
            }
        })
    }
}

/// Goes on with a call the gate admitted (or answers it with the gate's
/// refusal).
fn proceed<S>(
    gate: Arc<Gate>,
    mut inner: S,
    mut parts: http::request::Parts,
    body: Body,
    pass: Result<Pass, Status>,
) -> BoxFuture<Result<http::Response<Body>, S::Error>>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let pass = match pass {
        Ok(pass) => pass,
        // Answered without reading the body; dropping it resets the
        // stream, so the peer's data is discarded, not buffered.
        Err(status) => {
            let response = status.into_http::<Body>();
            return Box::pin(async move { Ok(response) });
        }
    };
    let ticket = pass.ticket.map(Arc::new);
    if let Some(ticket) = &ticket {
        // The handler may take more slots of the same key (ExecFleet).
        parts.extensions.insert(ticket.clone());
    }
    if let Some(checked) = pass.checked {
        parts.extensions.insert(checked);
    }
    if pass.forwarded {
        parts.extensions.insert(Forwarded);
    }
    let forwarding = match (&gate.state.cluster, pass.caller) {
        (Some(cluster), Some(caller)) if cluster::forward::is_targeted(parts.uri.path()) => {
            parts.extensions.insert(caller);
            Some(cluster.clone())
        }
        (_, Some(caller)) => {
            parts.extensions.insert(caller);
            None
        }
        _ => None,
    };
    let body = Body::new(RequestBody::new(
        body,
        pass.max_message,
        pass.budgeted
            .then(|| (gate.budget.clone(), gate.budget_bytes)),
        ticket.clone(),
    ));
    let request = http::Request::from_parts(parts, body);
    let state = gate.state.clone();
    Box::pin(async move {
        let response = match forwarding {
            None => inner.call(request).await?,
            Some(cluster) => match cluster::forward::route_call(state, cluster, request).await {
                Ok(cluster::forward::Decision::Local(request)) => inner.call(request).await?,
                Ok(cluster::forward::Decision::Done(response)) => response,
                Err(status) => status.into_http::<Body>(),
            },
        };
        Ok(match ticket {
            Some(ticket) => response.map(|body| Body::new(ResponseBody::new(body, ticket))),
            None => response,
        })
    })
}

mod body;
#[cfg(test)]
mod tests;

use body::{RequestBody, ResponseBody};
