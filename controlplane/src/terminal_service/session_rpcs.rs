//! The unary session RPCs of `TerminalStreamingService`. Per the SDKs'
//! expectations, ordinary failures go into response fields; status codes
//! are reserved for auth, unknown sessions and offline agents.

use std::sync::Arc;

use cmdop_proto::terminal::{
    control_message, CloseSessionCommand, CloseSessionRequest, CloseSessionResponse,
    CreateSessionResponse, GetHistoryRequest, GetHistoryResponse, GetOutputRequest,
    GetOutputResponse, GetSessionByHostnameRequest, GetSessionByHostnameResponse,
    GetSessionStatusRequest, GetSessionStatusResponse, HealthCheckResponse, ListSessionsRequest,
    ListSessionsResponse, ResizeCommand, SendInputRequest, SendInputResponse, SendResizeRequest,
    SendResizeResponse, SendSignalRequest, SendSignalResponse, SessionInfoItem, SessionStatus,
    SignalCommand, TerminalInput, TerminalSize,
};
use tonic::Status;

use crate::{
    limits,
    sessions::{
        hostname::{match_hostname, Candidate, HostnameMatch},
        Session,
    },
    state::State,
    store::{now_ms, MachineRow, Workspace},
    timestamps,
};

fn clamp_i32(n: impl TryInto<i32>) -> i32 {
    n.try_into().unwrap_or(i32::MAX)
}

fn item(s: &Session) -> SessionInfoItem {
    SessionInfoItem {
        session_id: s.id.clone(),
        machine_hostname: s.info.hostname.clone(),
        machine_name: s.info.hostname.clone(),
        status: s.status_text().to_string(),
        os: s.info.os.clone(),
        agent_version: s.info.version.clone(),
        heartbeat_age_seconds: s.heartbeat_age_seconds(),
        has_shell: s.info.has_shell,
        shell: s.info.shell.clone(),
        working_directory: s.info.home_dir.clone(),
        connected_at: Some(timestamps::from_system_time(s.connected_at)),
    }
}

/// A session of the caller's workspace that exists (live or not); the
/// message is the same for another workspace's session.
fn find(state: &State, ws: &Workspace, session_id: &str) -> Result<Arc<Session>, String> {
    if session_id.is_empty() {
        return Err("no session selected: pass a session_id (pick a machine first)".into());
    }
    state
        .sessions
        .get(ws, session_id)
        .ok_or_else(|| format!("session '{session_id}' not found"))
}

/// Like [`find`], but the session must be connected.
fn find_live(state: &State, ws: &Workspace, session_id: &str) -> Result<Arc<Session>, String> {
    let s = find(state, ws, session_id)?;
    if !s.is_live() {
        return Err(s.offline_status().message().to_string());
    }
    Ok(s)
}

/// Like [`find`] for RPCs that answer with status codes.
fn find_or_status(state: &State, ws: &Workspace, session_id: &str) -> Result<Arc<Session>, Status> {
    limits::check_len("session_id", session_id.len(), limits::MAX_SESSION_ID_BYTES)?;
    if session_id.is_empty() {
        return Err(Status::invalid_argument(
            "session_id is empty; pick a machine first",
        ));
    }
    state
        .sessions
        .get(ws, session_id)
        .ok_or_else(|| Status::not_found(format!("session '{session_id}' not found")))
}

/// An enrolled machine with no session in memory (e.g. not reconnected
/// since a restart), listed as disconnected without a session id.
fn offline_item(m: &MachineRow) -> SessionInfoItem {
    SessionInfoItem {
        machine_hostname: m.hostname.clone(),
        machine_name: m.hostname.clone(),
        status: "disconnected".into(),
        heartbeat_age_seconds: (now_ms() - m.last_seen_unix_ms).max(0) / 1000,
        connected_at: Some(timestamps::from_unix_ms(m.last_seen_unix_ms)),
        ..Default::default()
    }
}

/// What ListSessions covers.
pub enum ListScope {
    /// A single server: its sessions and the enrolled machines it has none of.
    Server,
    /// Cluster, asked by another replica: this replica's sessions only.
    ThisReplica,
    /// Cluster, asked by a client: this replica's sessions, the other
    /// replicas' (given), and the enrolled machines nobody has.
    Cluster(Vec<SessionInfoItem>),
}

pub fn list_sessions(
    state: &State,
    ws: &Workspace,
    req: ListSessionsRequest,
    scope: ListScope,
) -> Result<ListSessionsResponse, Status> {
    let status = req.status_filter.trim().to_ascii_lowercase();
    let host = req.hostname_filter.trim().to_ascii_lowercase();
    let sessions = state.sessions.list(ws);
    let mut rows: Vec<(i64, SessionInfoItem)> = sessions
        .iter()
        .map(|s| (s.last_activity_ms(), item(s)))
        .collect();
    let (remote, this_replica_only, cluster) = match scope {
        ListScope::Server => (Vec::new(), false, false),
        ListScope::ThisReplica => (Vec::new(), true, false),
        ListScope::Cluster(remote) => (remote, false, true),
    };
    let now = now_ms();
    for r in remote {
        let at = now - r.heartbeat_age_seconds.max(0) * 1000;
        match rows.iter_mut().find(|(_, i)| i.session_id == r.session_id) {
            // The same session on two replicas (its agent moved): the
            // connected one counts.
            Some(row) => {
                if row.1.status != "connected" && r.status == "connected" {
                    *row = (at, r);
                }
            }
            None => rows.push((at, r)),
        }
    }
    if cluster {
        // A machine that reconnected to another replica under a new session
        // id leaves its old, ended session behind on the first one; a
        // single server would have dropped it.
        let connected: Vec<String> = rows
            .iter()
            .filter(|(_, i)| i.status == "connected")
            .map(|(_, i)| i.machine_hostname.clone())
            .collect();
        rows.retain(|(_, i)| i.status == "connected" || !connected.contains(&i.machine_hostname));
    }
    if !this_replica_only {
        let retention =
            i64::try_from(limits::DISCONNECTED_SESSION_RETENTION.as_millis()).unwrap_or(i64::MAX);
        let recent = now.saturating_sub(retention);
        let known = match crate::inventory::known_machines(state, ws) {
            Ok(known) => known,
            // The database cannot be reached: the sessions connected here
            // are still listed (calls on them keep working); the offline
            // machines it knows are missing until it is back.
            Err(err) if crate::store::is_unavailable_error(&err) => {
                tracing::debug!(error = %format!("{err:#}"), "listing only the sessions known here");
                Vec::new()
            }
            Err(err) => return Err(crate::db::internal(err)),
        };
        for m in known {
            let listed = sessions.iter().any(|s| s.machine_id == m.machine_id)
                || rows.iter().any(|(_, i)| i.machine_hostname == m.hostname);
            if m.last_seen_unix_ms >= recent && !listed {
                rows.push((m.last_seen_unix_ms, offline_item(&m)));
            }
        }
    }
    rows.sort_by_key(|(seen, _)| std::cmp::Reverse(*seen));
    let matching: Vec<SessionInfoItem> = rows
        .into_iter()
        .map(|(_, item)| item)
        .filter(|i| status.is_empty() || i.status == status)
        .filter(|i| host.is_empty() || i.machine_hostname.to_ascii_lowercase().contains(&host))
        .collect();
    let limit = usize::try_from(req.limit)
        .ok()
        .filter(|&l| l > 0)
        .unwrap_or(limits::DEFAULT_LIST_LIMIT);
    let offset = usize::try_from(req.offset).unwrap_or(0);
    Ok(ListSessionsResponse {
        total: clamp_i32(matching.len()),
        sessions: matching
            .into_iter()
            .skip(offset)
            .take(limit.min(limits::MAX_LIST_LIMIT))
            .collect(),
        workspace_name: ws.name.clone(),
        error: String::new(),
    })
}

pub fn get_session_by_hostname(
    state: &State,
    ws: &Workspace,
    req: GetSessionByHostnameRequest,
) -> GetSessionByHostnameResponse {
    let not_found = |error: String| GetSessionByHostnameResponse {
        found: false,
        error,
        ..Default::default()
    };
    if req.hostname.trim().is_empty() {
        return not_found("hostname is empty; pass the machine's hostname".into());
    }
    if req.hostname.len() > limits::MAX_HOSTNAME_BYTES {
        return not_found(format!(
            "hostname is longer than {} bytes",
            limits::MAX_HOSTNAME_BYTES
        ));
    }
    let sessions = state.sessions.list(ws);
    let live = sessions
        .iter()
        .filter(|s| s.is_live())
        .map(|s| Candidate {
            hostname: s.info.hostname.clone(),
            activity: s.last_activity_ms(),
            live: true,
            value: s.clone(),
        })
        .collect();
    match match_hostname(&req.hostname, req.partial_match, live) {
        HostnameMatch::One(s) => GetSessionByHostnameResponse {
            found: true,
            session_id: s.id.clone(),
            machine_hostname: s.info.hostname.clone(),
            machine_name: s.info.hostname.clone(),
            status: s.status_text().to_string(),
            connected_at: Some(timestamps::from_system_time(s.connected_at)),
            heartbeat_age_seconds: clamp_i32(s.heartbeat_age_seconds()),
            has_shell: s.info.has_shell,
            shell: s.info.shell.clone(),
            working_directory: s.info.home_dir.clone(),
            os: s.info.os.clone(),
            agent_version: s.info.version.clone(),
            ..Default::default()
        },
        HostnameMatch::Ambiguous(all) => {
            let names: Vec<_> = all
                .iter()
                .map(|s| format!("{} [machine {}]", s.info.hostname, s.machine_id))
                .collect();
            GetSessionByHostnameResponse {
                found: false,
                ambiguous: true,
                matches_count: clamp_i32(all.len()),
                error: format!(
                    "hostname '{}' matches {} machines ({}); use a more specific hostname, or the machine id",
                    req.hostname,
                    all.len(),
                    names.join(", ")
                ),
                ..Default::default()
            }
        }
        HostnameMatch::None => {
            let offline = sessions
                .iter()
                .map(|s| Candidate {
                    hostname: s.info.hostname.clone(),
                    activity: s.last_activity_ms(),
                    live: false,
                    value: (),
                })
                .collect();
            if matches!(
                match_hostname(&req.hostname, req.partial_match, offline),
                HostnameMatch::None
            ) {
                crate::inventory::note_hidden(state, ws, "GetSessionByHostname", &req.hostname);
                not_found(format!(
                    "no machine with hostname '{}' is connected to workspace '{}'",
                    req.hostname, ws.name
                ))
            } else {
                not_found(format!(
                    "machine '{}' is offline; it will show as connected again when its agent reconnects",
                    req.hostname
                ))
            }
        }
    }
}

pub fn get_session_status(
    state: &State,
    ws: &Workspace,
    req: GetSessionStatusRequest,
) -> GetSessionStatusResponse {
    match find(state, ws, &req.session_id) {
        Err(_) => GetSessionStatusResponse {
            exists: false,
            ..Default::default()
        },
        Ok(s) => GetSessionStatusResponse {
            exists: true,
            status: if s.is_live() {
                SessionStatus::Connected
            } else {
                SessionStatus::Disconnected
            } as i32,
            agent_hostname: s.info.hostname.clone(),
            connected_at: Some(timestamps::from_system_time(s.connected_at)),
            last_heartbeat_at: Some(timestamps::from_unix_ms(s.last_activity_ms())),
            commands_count: clamp_i32(s.history(0, 0).1),
        },
    }
}

pub fn create_session() -> CreateSessionResponse {
    CreateSessionResponse {
        success: false,
        session_id: String::new(),
        error: "sessions are created by agents: install and start `cmdop agent` on the machine, then pick it with \
                ListSessions or GetSessionByHostname"
            .into(),
    }
}

pub async fn close_session(
    state: &State,
    ws: &Workspace,
    req: CloseSessionRequest,
) -> CloseSessionResponse {
    let result = async {
        let s = find_live(state, ws, &req.session_id)?;
        let reason = if req.reason.is_empty() {
            "closed by client".to_string()
        } else {
            req.reason
        };
        s.send_control(control_message::Payload::CloseSession(
            CloseSessionCommand {
                reason,
                force: req.force,
            },
        ))
        .await
        .map_err(|e| e.message().to_string())
    }
    .await;
    match result {
        Ok(()) => CloseSessionResponse {
            success: true,
            error: String::new(),
        },
        Err(error) => CloseSessionResponse {
            success: false,
            error,
        },
    }
}

pub async fn send_input(
    state: &State,
    ws: &Workspace,
    req: SendInputRequest,
) -> Result<SendInputResponse, Status> {
    limits::check_len("data", req.data.len(), limits::MAX_INPUT_BYTES)?;
    let req_len = req.data.len();
    // Typed input is how the official SDKs run commands: on the record
    // before it reaches the shell.
    let record = match find_live(state, ws, &req.session_id) {
        Ok(s) => Some(
            state
                .audit
                .begin(state.audit.entry(
                    ws,
                    "shell.input",
                    &s.machine_id,
                    &s.info.hostname,
                    serde_json::json!({ "input": String::from_utf8_lossy(&req.data) }),
                ))
                .await?,
        ),
        Err(_) => None,
    };
    let result = async {
        let s = find_live(state, ws, &req.session_id)?;
        s.record_input(&req.data);
        s.send_control(control_message::Payload::Input(TerminalInput {
            data: req.data,
            sequence: 0,
        }))
        .await
        .map_err(|e| e.message().to_string())
    }
    .await;
    if let Some(record) = record {
        record.finish(crate::store::AuditOutcome {
            outcome: match &result {
                Ok(()) => "ok".into(),
                Err(e) => format!("failed: {e}"),
            },
            bytes_in: i64::try_from(req_len).unwrap_or(0),
            ..Default::default()
        });
    }
    Ok(match result {
        Ok(()) => SendInputResponse {
            success: true,
            error: String::new(),
        },
        Err(error) => SendInputResponse {
            success: false,
            error,
        },
    })
}

pub async fn send_resize(
    state: &State,
    ws: &Workspace,
    req: SendResizeRequest,
) -> SendResizeResponse {
    let result = async {
        if !(1..=10_000).contains(&req.cols) || !(1..=10_000).contains(&req.rows) {
            return Err(format!(
                "invalid terminal size {}x{}: cols and rows must be 1 to 10000",
                req.cols, req.rows
            ));
        }
        let s = find_live(state, ws, &req.session_id)?;
        let size = TerminalSize {
            rows: req.rows,
            cols: req.cols,
            width: 0,
            height: 0,
        };
        s.send_control(control_message::Payload::Resize(ResizeCommand {
            size: Some(size),
        }))
        .await
        .map_err(|e| e.message().to_string())
    }
    .await;
    match result {
        Ok(()) => SendResizeResponse {
            success: true,
            error: String::new(),
        },
        Err(error) => SendResizeResponse {
            success: false,
            error,
        },
    }
}

pub async fn send_signal(
    state: &State,
    ws: &Workspace,
    req: SendSignalRequest,
) -> SendSignalResponse {
    let result = async {
        if !(1..=64).contains(&req.signal) {
            return Err(format!(
                "invalid signal {}: pass a signal number such as 2 (INT), 9 (KILL) or 15 (TERM)",
                req.signal
            ));
        }
        let s = find_live(state, ws, &req.session_id)?;
        s.send_control(control_message::Payload::Signal(SignalCommand {
            signal: req.signal,
        }))
        .await
        .map_err(|e| e.message().to_string())
    }
    .await;
    match result {
        Ok(()) => SendSignalResponse {
            success: true,
            error: String::new(),
        },
        Err(error) => SendSignalResponse {
            success: false,
            error,
        },
    }
}

pub fn get_output(
    state: &State,
    ws: &Workspace,
    req: GetOutputRequest,
) -> Result<GetOutputResponse, Status> {
    let s = find_or_status(state, ws, &req.session_id)?;
    let (Ok(offset), Ok(limit)) = (u64::try_from(req.offset), usize::try_from(req.limit)) else {
        return Err(Status::invalid_argument(
            "offset and limit must not be negative",
        ));
    };
    let slice = s.read_output(offset, limit);
    Ok(GetOutputResponse {
        data: slice.data.into(),
        total_bytes: clamp_i32(slice.total_bytes),
        has_more: slice.has_more,
    })
}

pub fn get_history(
    state: &State,
    ws: &Workspace,
    req: GetHistoryRequest,
) -> Result<GetHistoryResponse, Status> {
    let s = find_or_status(state, ws, &req.session_id)?;
    let limit = usize::try_from(req.limit)
        .ok()
        .filter(|&l| l > 0)
        .unwrap_or(100)
        .min(limits::MAX_HISTORY_COMMANDS);
    let offset = usize::try_from(req.offset).unwrap_or(0);
    let (commands, total) = s.history(offset, limit);
    Ok(GetHistoryResponse {
        commands,
        total: clamp_i32(total),
    })
}

pub fn health_check(state: &State, ws: Option<&Workspace>) -> HealthCheckResponse {
    let (active, clients) = match ws {
        Some(ws) => state
            .sessions
            .list(ws)
            .iter()
            .filter(|s| s.is_live())
            .fold((0usize, 0usize), |(a, c), s| {
                (a + 1, c + s.subscriber_count())
            }),
        None => (0, 0),
    };
    HealthCheckResponse {
        healthy: true,
        version: env!("CARGO_PKG_VERSION").to_string(),
        active_sessions: clamp_i32(active),
        connected_clients: clamp_i32(clients),
    }
}
