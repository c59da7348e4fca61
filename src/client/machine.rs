//! Machine selection: by hostname (ext ResolveMachine, or the official
//! GetSessionByHostname) or by stable machine id (ext only).

use cmdop_proto::ext::{Machine, ResolveMachineRequest};
use cmdop_proto::terminal::{GetSessionByHostnameRequest, ListSessionsRequest};

use super::connection::CallPolicy;
use super::{Client, Error, LogLevel, Result};

/// How many candidate names an ambiguity error lists.
const MAX_LISTED_MATCHES: usize = 10;

/// The machine later calls act on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MachineInfo {
    /// Stable id (`mach_…`); empty when the server has no extension.
    pub machine_id: String,
    pub hostname: String,
    /// Live session; empty when the machine is offline.
    pub session_id: String,
    pub status: String,
    pub os: String,
    pub shell: String,
    /// The agent serves native Exec.
    pub native_exec: bool,
}

impl From<Machine> for MachineInfo {
    fn from(m: Machine) -> MachineInfo {
        MachineInfo {
            machine_id: m.machine_id,
            hostname: m.hostname,
            session_id: m.session_id,
            status: m.status,
            os: m.os,
            shell: m.shell,
            native_exec: m.native_exec,
        }
    }
}

fn ambiguous(what: &str, names: Vec<String>, count: usize) -> Error {
    let shown = names
        .iter()
        .take(MAX_LISTED_MATCHES)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let more = if count > MAX_LISTED_MATCHES {
        format!(" and {} more", count - MAX_LISTED_MATCHES)
    } else {
        String::new()
    };
    let listing = if shown.is_empty() {
        format!("{count} machines")
    } else {
        format!("{shown}{more}")
    };
    Error::Ambiguous {
        message: format!("machine '{what}' is ambiguous: matches {listing}; pass a full hostname or a machine id"),
        matches: names,
    }
}

impl Client {
    /// Select the machine whose hostname is `hostname` (exact, else a unique
    /// case-insensitive substring). Replaces any earlier selection.
    pub async fn set_machine(&self, hostname: &str) -> Result<MachineInfo> {
        if hostname.trim().is_empty() {
            return Err(Error::InvalidArgument("hostname is empty".into()));
        }
        let m = self
            .resolve(Some(hostname), None)
            .await
            .map_err(|e| self.inner.report(e))?;
        self.inner.log(LogLevel::Info, || {
            format!(
                "selected machine {} (session {})",
                m.hostname,
                if m.session_id.is_empty() {
                    "none"
                } else {
                    &m.session_id
                }
            )
        });
        *self.inner.machine.lock() = Some(m.clone());
        Ok(m)
    }

    /// Select a machine by its stable id. Needs the server extension.
    pub async fn set_machine_id(&self, machine_id: &str) -> Result<MachineInfo> {
        if machine_id.trim().is_empty() {
            return Err(Error::InvalidArgument("machine id is empty".into()));
        }
        let m = self
            .resolve(None, Some(machine_id))
            .await
            .map_err(|e| self.inner.report(e))?;
        *self.inner.machine.lock() = Some(m.clone());
        Ok(m)
    }

    /// Look the selected machine up again (its session id changes when the
    /// agent reconnects). Returns the refreshed selection.
    pub(crate) async fn refresh_machine(&self) -> Result<MachineInfo> {
        let current = self.machine().ok_or_else(Error::no_machine)?;
        let m = if !current.machine_id.is_empty() {
            self.resolve(None, Some(&current.machine_id)).await?
        } else {
            self.resolve(Some(&current.hostname), None).await?
        };
        *self.inner.machine.lock() = Some(m.clone());
        Ok(m)
    }

    async fn resolve(
        &self,
        hostname: Option<&str>,
        machine_id: Option<&str>,
    ) -> Result<MachineInfo> {
        let ext = self.inner.facts.lock().ext;
        let policy = CallPolicy {
            idempotent: true,
            timeout: self.inner.opts.timeout,
        };
        if ext {
            let req = ResolveMachineRequest {
                machine_id: machine_id.unwrap_or_default().to_string(),
                hostname: hostname.unwrap_or_default().to_string(),
                partial_match: true,
            };
            let resp = self
                .inner
                .unary("ResolveMachine", req, policy, |mut c, r| async move {
                    c.ext.resolve_machine(r).await
                })
                .await;
            match resp {
                Ok(r) if r.found => {
                    return r.machine.map(MachineInfo::from).ok_or_else(|| {
                        Error::Protocol("ResolveMachine said found but sent no machine".into())
                    })
                }
                Ok(r) if r.ambiguous => {
                    // With the ids: two machines may report one hostname.
                    let names: Vec<String> = r
                        .matches
                        .into_iter()
                        .map(|m| format!("{} (machine {})", m.hostname, m.machine_id))
                        .collect();
                    let n = names.len();
                    return Err(ambiguous(hostname.or(machine_id).unwrap_or_default(), names, n));
                }
                Ok(_) => {
                    return Err(match machine_id {
                        Some(id) => Error::NotFound(format!("no machine with id '{id}' in this workspace: check the id (cmdop sessions lists machines)")),
                        None => not_found_host(hostname.unwrap_or_default()),
                    })
                }
                Err(Error::NotSupported(_)) => {} // fall through to the official path
                Err(e) => return Err(e),
            }
        }
        let Some(hostname) = hostname else {
            return Err(Error::NotSupported(
                "selecting a machine by id needs the cmdop.ext.v1 extension, which this server does not offer: select it by hostname instead".into(),
            ));
        };
        let req = GetSessionByHostnameRequest {
            hostname: hostname.to_string(),
            partial_match: true,
        };
        let r = self
            .inner
            .unary("GetSessionByHostname", req, policy, |mut c, r| async move {
                c.terminal.get_session_by_hostname(r).await
            })
            .await?;
        if r.found {
            return Ok(MachineInfo {
                machine_id: String::new(),
                hostname: r.machine_hostname,
                session_id: r.session_id,
                status: r.status,
                os: r.os,
                shell: r.shell,
                native_exec: false,
            });
        }
        if r.ambiguous {
            let names = self.matching_hostnames(hostname).await.unwrap_or_default();
            return Err(ambiguous(hostname, names, r.matches_count.max(0) as usize));
        }
        Err(not_found_host(hostname))
    }

    /// Hostnames of connected sessions containing `needle` (for messages).
    async fn matching_hostnames(&self, needle: &str) -> Result<Vec<String>> {
        let req = ListSessionsRequest {
            hostname_filter: needle.into(),
            status_filter: "connected".into(),
            limit: 50,
            offset: 0,
        };
        let policy = CallPolicy {
            idempotent: true,
            timeout: self.inner.opts.timeout,
        };
        let r = self
            .inner
            .unary("ListSessions", req, policy, |mut c, r| async move {
                c.terminal.list_sessions(r).await
            })
            .await?;
        let lower = needle.to_lowercase();
        let mut names: Vec<String> = r
            .sessions
            .into_iter()
            .map(|s| s.machine_hostname)
            .filter(|h| h.to_lowercase().contains(&lower))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
}

fn not_found_host(hostname: &str) -> Error {
    Error::NotFound(format!(
        "no connected machine matches '{hostname}': check the hostname and that its agent is running (cmdop sessions lists them)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ambiguity_message_lists_matches_and_says_what_to_do() {
        let e = ambiguous("web", vec!["web-1".into(), "web-2".into()], 2);
        assert_eq!(
            e.to_string(),
            "machine 'web' is ambiguous: matches web-1, web-2; pass a full hostname or a machine id"
        );
        let e = ambiguous("x", vec![], 3);
        assert!(e.to_string().contains("matches 3 machines"));
    }
}
