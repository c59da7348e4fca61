//! The fleet as the server lists it: every machine of the workspace with
//! its labels, facts and presence, chosen by a label selector and a host
//! list (ext ListMachines, capability `machines.v1`).

use std::collections::BTreeMap;

use cmdop_proto::caps;
use cmdop_proto::ext::{ListMachinesRequest, Machine};

use super::connection::CallPolicy;
use super::{Client, Error, Result};

/// Most pages one listing reads (at most 1,000 machines each).
const MAX_PAGES: usize = 1000;

/// One machine of a listing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetMachine {
    /// Stable id (`mach_…`).
    pub machine_id: String,
    pub hostname: String,
    /// "connected" or "disconnected".
    pub status: String,
    /// Live session; empty when offline.
    pub session_id: String,
    /// Unix ms of the current connection (0 when offline).
    pub connected_at_unix_ms: i64,
    /// Unix ms the machine was last heard from.
    pub last_seen_unix_ms: i64,
    /// What selectors see: agent labels, admin labels over them, facts as
    /// `cmdop.io/…` labels.
    pub labels: BTreeMap<String, String>,
    /// Declared by the machine's agent (untrusted).
    pub agent_labels: BTreeMap<String, String>,
    /// Set by an admin (`cmdop admin label`); they win.
    pub admin_labels: BTreeMap<String, String>,
    pub os: String,
    pub os_version: String,
    pub kernel: String,
    pub arch: String,
    pub cpu_count: u32,
    pub memory_bytes: u64,
    pub agent_version: String,
    /// The agent serves native Exec.
    pub native_exec: bool,
}

impl FleetMachine {
    /// Online (connected to some replica) now.
    pub fn online(&self) -> bool {
        self.status == "connected"
    }
}

impl From<Machine> for FleetMachine {
    fn from(m: Machine) -> FleetMachine {
        let facts = m.facts.unwrap_or_default();
        let sorted = |map: std::collections::HashMap<String, String>| map.into_iter().collect();
        FleetMachine {
            machine_id: m.machine_id,
            hostname: m.hostname,
            status: m.status,
            session_id: m.session_id,
            connected_at_unix_ms: m.connected_at_unix_ms,
            last_seen_unix_ms: m.last_seen_unix_ms,
            labels: sorted(m.labels),
            agent_labels: sorted(m.agent_labels),
            admin_labels: sorted(m.admin_labels),
            os: if facts.os.is_empty() { m.os } else { facts.os },
            os_version: facts.os_version,
            kernel: facts.kernel,
            arch: facts.arch,
            cpu_count: facts.cpu_count,
            memory_bytes: facts.memory_bytes,
            agent_version: if facts.agent_version.is_empty() {
                m.agent_version
            } else {
                facts.agent_version
            },
            native_exec: m.native_exec,
        }
    }
}

impl Client {
    /// The workspace's machines matching `selector` (label selector, ""
    /// for all) and `hosts` (hostnames or globs, comma-separated, "" for
    /// any), online or not, sorted by hostname; every page. NotSupported
    /// when the server cannot list machines; InvalidArgument (the server's
    /// words) for a bad selector or host list.
    pub async fn list_machines(&self, selector: &str, hosts: &str) -> Result<Vec<FleetMachine>> {
        if !self.inner.facts.lock().has(caps::MACHINES) {
            return Err(Error::NotSupported(
                "this server cannot list machines by label (it lacks machines.v1): upgrade the control plane".into(),
            ));
        }
        let policy = CallPolicy {
            idempotent: true,
            timeout: self.inner.opts.timeout,
        };
        let mut all = Vec::new();
        let mut page_token = String::new();
        for _ in 0..MAX_PAGES {
            let req = ListMachinesRequest {
                selector: selector.to_string(),
                hosts: hosts.to_string(),
                page_size: 0,
                page_token: page_token.clone(),
            };
            let page = self
                .inner
                .unary("ListMachines", req, policy, |mut c, r| async move {
                    c.ext.list_machines(r).await
                })
                .await?;
            all.extend(page.machines.into_iter().map(FleetMachine::from));
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            page_token = page.next_page_token;
        }
        Err(Error::Protocol(format!(
            "ListMachines sent more than {MAX_PAGES} pages; the server keeps paging"
        )))
    }
}
