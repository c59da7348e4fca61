//! Sessions: the live terminal connections of agents in the workspace.

use std::collections::HashMap;

use cmdop_proto::caps;
use cmdop_proto::terminal::{ListSessionsRequest, SessionInfoItem};

use super::connection::CallPolicy;
use super::{Client, Error, LogLevel, Result};

/// Rows asked per ListSessions page.
const PAGE: i32 = 100;
/// Upper bound of rows collected by [`Client::list_sessions`].
const MAX_SESSIONS: usize = 10_000;

/// One session as ListSessions reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionInfo {
    pub session_id: String,
    /// The machine's stable id (`mach_…`), for [`Client::set_machine_id`];
    /// empty when the server cannot tell (no `machines.v1`, an offline
    /// machine's row, or the listing failed).
    pub machine_id: String,
    pub hostname: String,
    pub machine_name: String,
    /// Lowercase: connected, disconnected, pending, background, error...
    pub status: String,
    pub os: String,
    pub shell: String,
    pub agent_version: String,
    pub working_directory: String,
    pub has_shell: bool,
    /// Unix seconds; 0 when unknown.
    pub connected_at: i64,
    pub heartbeat_age_seconds: i64,
}

impl From<SessionInfoItem> for SessionInfo {
    fn from(s: SessionInfoItem) -> SessionInfo {
        SessionInfo {
            session_id: s.session_id,
            machine_id: String::new(),
            hostname: s.machine_hostname,
            machine_name: s.machine_name,
            status: s.status,
            os: s.os,
            shell: s.shell,
            agent_version: s.agent_version,
            working_directory: s.working_directory,
            has_shell: s.has_shell,
            connected_at: s.connected_at.map(|t| t.seconds).unwrap_or(0),
            heartbeat_age_seconds: s.heartbeat_age_seconds,
        }
    }
}

impl Client {
    async fn list_page(&self, req: ListSessionsRequest) -> Result<(Vec<SessionInfo>, i32)> {
        let policy = CallPolicy {
            idempotent: true,
            timeout: self.inner.opts.timeout,
        };
        let resp = self
            .inner
            .unary("ListSessions", req, policy, |mut c, r| async move {
                c.terminal.list_sessions(r).await
            })
            .await
            .map_err(|e| self.inner.report(e))?;
        if !resp.error.is_empty() {
            return Err(self
                .inner
                .report(Error::from_remote_text("ListSessions", &resp.error)));
        }
        Ok((
            resp.sessions.into_iter().map(SessionInfo::from).collect(),
            resp.total,
        ))
    }

    /// Every session of the workspace (connected first, newest activity
    /// first, as the server orders them).
    pub async fn list_sessions(&self) -> Result<Vec<SessionInfo>> {
        let mut all = Vec::new();
        loop {
            let req = ListSessionsRequest {
                limit: PAGE,
                offset: all.len() as i32,
                ..Default::default()
            };
            let (page, total) = self.list_page(req).await?;
            let got = page.len();
            all.extend(page);
            if got < PAGE as usize
                || all.len() >= total.max(0) as usize
                || all.len() >= MAX_SESSIONS
            {
                self.fill_machine_ids(&mut all, "").await;
                return Ok(all);
            }
        }
    }

    /// The most recently active connected session, optionally of machines
    /// whose hostname matches `hostname`.
    pub async fn get_active_session(&self, hostname: Option<&str>) -> Result<SessionInfo> {
        let req = ListSessionsRequest {
            hostname_filter: hostname.unwrap_or_default().to_string(),
            status_filter: "connected".into(),
            limit: 1,
            offset: 0,
        };
        let (mut page, _) = self.list_page(req).await?;
        if page.is_empty() {
            let which = hostname.map(|h| format!(" for '{h}'")).unwrap_or_default();
            return Err(Error::NotFound(format!(
                "no connected session{which}: start an agent on the machine, or list sessions to see what is there"
            )));
        }
        let mut found = page.swap_remove(0);
        // The exact hostname as a host list, unless it has the list's own
        // metacharacters (then the whole fleet is read to join on).
        let exact = if found.hostname.contains([',', '*', '?', '[']) {
            ""
        } else {
            found.hostname.as_str()
        }
        .to_string();
        self.fill_machine_ids(std::slice::from_mut(&mut found), &exact)
            .await;
        Ok(found)
    }

    /// Sets each session's `machine_id` from the server's machine listing
    /// (ext ListMachines of the machines in `hosts`, "" = all), joined on
    /// the session id. The official ListSessions has no machine ids; a
    /// server without `machines.v1`, or a listing that fails, leaves them
    /// empty (the sessions themselves are still right).
    async fn fill_machine_ids(&self, sessions: &mut [SessionInfo], hosts: &str) {
        if sessions.iter().all(|s| s.session_id.is_empty())
            || !self.inner.facts.lock().has(caps::MACHINES)
        {
            return;
        }
        let machines = match self.list_machines("", hosts).await {
            Ok(m) => m,
            Err(e) => {
                self.inner.log(LogLevel::Debug, || {
                    format!("sessions listed without machine ids: {e}")
                });
                return;
            }
        };
        let by_session: HashMap<&str, &str> = machines
            .iter()
            .filter(|m| !m.session_id.is_empty())
            .map(|m| (m.session_id.as_str(), m.machine_id.as_str()))
            .collect();
        for s in sessions {
            if let Some(id) = by_session.get(s.session_id.as_str()) {
                s.machine_id = (*id).to_string();
            }
        }
    }
}
