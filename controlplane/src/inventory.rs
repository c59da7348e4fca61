//! The fleet's inventory: ListMachines (every machine of a workspace with
//! its labels, facts and presence, chosen by a selector and a host list),
//! and what agents tell it (facts at registration, declared labels at
//! hello). Facts become `cmdop.io/…` labels, so a selector reads them like
//! any label; nobody can set that prefix.

use std::collections::{BTreeMap, HashMap};

use cmdop_proto::{
    ext::{ListMachinesRequest, ListMachinesResponse, Machine, MachineFacts},
    limits::{FACT_LABEL_PREFIX, MAX_LABELS_PER_SOURCE, MAX_MACHINES_PAGE},
    selector::{self, Selector},
};
use tonic::Status;

use crate::{
    sessions::Session,
    state::{SharedState, State},
    store::{unix_ms, Facts, InventoryRow, Labels, MachineRow, Workspace},
};

/// Who answers a ListMachines.
pub enum Scope {
    /// The machines connected to this replica only, from its sessions (a
    /// call another replica forwarded to ask what is live here; selector
    /// and hosts do not apply).
    ThisReplica,
    /// The whole workspace, with presence from this server and, in a
    /// cluster, the machines live on the other replicas (given).
    Workspace(Vec<Machine>),
}

/// Longest fact text kept (an agent's os_version, kernel …).
const MAX_FACT_BYTES: usize = 256;

/// Answers ListMachines for `ws`.
pub async fn list(
    state: &SharedState,
    ws: &Workspace,
    req: ListMachinesRequest,
    scope: Scope,
) -> Result<ListMachinesResponse, Status> {
    let page_size = match req.page_size as usize {
        0 => MAX_MACHINES_PAGE,
        n => n.min(MAX_MACHINES_PAGE),
    };
    let offset = parse_page_token(&req.page_token)?;
    let machines = select(state, ws, &req.selector, &req.hosts, scope).await?;
    let total = machines.len();
    let page: Vec<Machine> = machines.into_iter().skip(offset).take(page_size).collect();
    let next = offset + page.len();
    Ok(ListMachinesResponse {
        machines: page,
        next_page_token: if next < total {
            format!("o{next}")
        } else {
            String::new()
        },
    })
}

/// Every machine of `ws` that `selector` and `hosts` (ListMachines'
/// grammar) choose, sorted by hostname: what ListMachines pages through,
/// and what ExecFleet runs on. INVALID_ARGUMENT for a bad selector or
/// host list.
pub async fn select(
    state: &SharedState,
    ws: &Workspace,
    selector: &str,
    hosts: &str,
    scope: Scope,
) -> Result<Vec<Machine>, Status> {
    let invalid = |e: selector::SelectorError| Status::invalid_argument(e.to_string());
    let sel = Selector::parse(selector).map_err(invalid)?;
    let hosts = if hosts.trim().is_empty() {
        Vec::new()
    } else {
        selector::parse_host_list(hosts).map_err(invalid)?
    };
    let mut machines = match scope {
        // What is live here, from this replica's sessions alone (no
        // database: the asking replica has the labels and facts).
        Scope::ThisReplica => state
            .sessions
            .live_machines(ws)
            .into_iter()
            .map(|s| of_session(s.machine_id.clone(), &s))
            .collect(),
        Scope::Workspace(remote) => {
            let rows = {
                let ws_id = ws.id.clone();
                crate::db::with_store(&state.store, move |s| s.inventory(&ws_id))
                    .await
                    .map_err(crate::db::internal)?
            };
            let elsewhere: HashMap<String, Machine> = remote
                .into_iter()
                .map(|m| (m.machine_id.clone(), m))
                .collect();
            rows.into_iter()
                // A scoped key sees the machines its selector chooses by
                // admin labels (never by what a machine declares).
                .filter(|row| ws.scope.sees(Some(&row.labels.admin)))
                .map(|row| {
                    let remote = elsewhere.get(&row.machine.machine_id);
                    machine_of(state, ws, row, remote)
                })
                .filter(|m| sel.matches(|k| m.labels.get(k).map(String::as_str)))
                .filter(|m| {
                    hosts.is_empty()
                        || hosts
                            .iter()
                            .any(|p| selector::hostname_matches(p, &m.hostname))
                })
                .collect::<Vec<Machine>>()
        }
    };
    machines.sort_by(|a, b| {
        (a.hostname.to_lowercase(), &a.machine_id).cmp(&(b.hostname.to_lowercase(), &b.machine_id))
    });
    Ok(machines)
}

/// Every enrolled machine of the caller's workspace that its scope sees,
/// as the store knows them.
pub fn known_machines(state: &State, ws: &Workspace) -> anyhow::Result<Vec<MachineRow>> {
    let rows = crate::db::read_store(&state.store, |s| s.list_machines(&ws.id))?;
    if !ws.scope.limits_machines() {
        return Ok(rows);
    }
    let labels = crate::db::read_store(&state.store, |s| s.admin_labels_in(&ws.id))?;
    let none = BTreeMap::new();
    Ok(rows
        .into_iter()
        .filter(|m| {
            ws.scope
                .sees(Some(labels.get(&m.machine_id).unwrap_or(&none)))
        })
        .collect())
}

/// When a scoped caller asked for a machine (`asked`: its id or hostname)
/// that exists but is out of its scope, puts the attempt on the audit
/// trail as refused. The caller's answer stays "not found": nothing tells
/// it the machine exists.
pub fn note_hidden(state: &State, ws: &Workspace, method: &str, asked: &str) {
    if !ws.scope.limits_machines() || asked.is_empty() {
        return;
    }
    let store = &state.store;
    let Ok(all) = crate::db::read_store(store, |s| s.list_machines(&ws.id)) else {
        return;
    };
    let Some(m) = all
        .iter()
        .find(|m| m.machine_id == asked || m.hostname.eq_ignore_ascii_case(asked))
    else {
        return;
    };
    // In scope by the store's labels: the session here has not read them
    // yet (a label change moments ago), not a refusal.
    let Ok(labels) = crate::db::read_store(store, |s| s.admin_labels(&m.machine_id)) else {
        return;
    };
    if ws.scope.sees(Some(&labels)) {
        return;
    }
    let detail = serde_json::json!({ "method": method, "missing": "machine scope" });
    let audit = &state.audit;
    audit.note(audit.entry(ws, "denied", &m.machine_id, &m.hostname, detail));
    crate::metrics::scope_denied();
}

/// The answer for a call to machine `machine_id` that has no session
/// here: UNAVAILABLE naming it when it is enrolled (offline), NOT_FOUND
/// when the caller cannot see such a machine.
pub fn absent_machine(state: &State, ws: &Workspace, machine_id: &str) -> Status {
    note_hidden(state, ws, "a call on a machine", machine_id);
    match known_machines(state, ws) {
        Ok(known) => match known.iter().find(|m| m.machine_id == machine_id) {
            Some(m) => Status::unavailable(format!(
                "machine {} is offline; it will show as connected again when its agent reconnects",
                m.hostname
            )),
            None => Status::not_found(format!("machine '{machine_id}' not found")),
        },
        Err(err) => crate::db::internal(err),
    }
}

/// Reads the admin labels of the machines connected here into their
/// sessions (what scoped keys are checked against). Blocking: run on the
/// blocking pool.
pub fn refresh_admin_labels(state: &State) -> anyhow::Result<()> {
    let mut by_workspace: HashMap<String, Vec<std::sync::Arc<Session>>> = HashMap::new();
    for s in state.sessions.live() {
        by_workspace
            .entry(s.workspace_id.clone())
            .or_default()
            .push(s);
    }
    for (ws, sessions) in by_workspace {
        let mut labels = state.store.admin_labels_in(&ws)?;
        for s in sessions {
            let mine = labels.remove(&s.machine_id).unwrap_or_default();
            s.set_admin_labels(std::sync::Arc::new(mine));
        }
    }
    Ok(())
}

/// The machines live on the other replicas of a cluster, as each answers
/// for itself (a replica that does not answer in time is left out, and
/// its machines show as this replica's database knows them).
pub async fn live_elsewhere(state: &State, caller: &crate::cluster::Caller) -> Vec<Machine> {
    let Some(cluster) = &state.cluster else {
        return Vec::new();
    };
    let answers = cluster
        .ask_all(|channel| {
            let caller = caller.clone();
            async move {
                let mut client = cmdop_proto::ext::cmdop_client::CmdopClient::new(channel);
                let mut all = Vec::new();
                let mut page_token = String::new();
                loop {
                    let req = cluster.peer_request(
                        &caller,
                        ListMachinesRequest {
                            page_token: page_token.clone(),
                            ..Default::default()
                        },
                    );
                    let page = client.list_machines(req).await?.into_inner();
                    all.extend(page.machines);
                    if page.next_page_token.is_empty() {
                        return Ok(all);
                    }
                    page_token = page.next_page_token;
                }
            }
        })
        .await;
    answers.into_iter().flatten().collect()
}

fn parse_page_token(token: &str) -> Result<usize, Status> {
    if token.is_empty() {
        return Ok(0);
    }
    token
        .strip_prefix('o')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            Status::invalid_argument(
                "page_token is not one this server gave; start again with an empty page_token",
            )
        })
}

/// One machine as ListMachines reports it: presence from this server's
/// session, else from the replica that has it (`remote`), else offline.
fn machine_of(
    state: &State,
    ws: &Workspace,
    row: InventoryRow,
    remote: Option<&Machine>,
) -> Machine {
    let session = state.sessions.by_machine(ws, &row.machine.machine_id);
    let mut m = match (&session, remote) {
        (Some(s), _) if s.is_live() => of_session(row.machine.machine_id.clone(), s),
        (_, Some(r)) if r.status == "connected" => Machine {
            labels: HashMap::new(),
            agent_labels: HashMap::new(),
            admin_labels: HashMap::new(),
            facts: None,
            ..r.clone()
        },
        _ => Machine {
            machine_id: row.machine.machine_id.clone(),
            hostname: row.machine.hostname.clone(),
            status: "disconnected".into(),
            os: row.facts.os.clone(),
            agent_version: row.facts.agent_version.clone(),
            last_seen_unix_ms: row.machine.last_seen_unix_ms,
            ..Default::default()
        },
    };
    m.facts = Some(MachineFacts {
        os: row.facts.os.clone(),
        os_version: row.facts.os_version.clone(),
        kernel: row.facts.kernel.clone(),
        arch: row.facts.arch.clone(),
        cpu_count: row.facts.cpu_count,
        memory_bytes: row.facts.memory_bytes,
        agent_version: row.facts.agent_version.clone(),
    });
    m.labels = selectable_labels(&m, &row.labels, &row.facts)
        .into_iter()
        .collect();
    m.agent_labels = row.labels.agent.into_iter().collect();
    m.admin_labels = row.labels.admin.into_iter().collect();
    m
}

/// A machine as its session here describes it (no labels or facts).
pub fn of_session(machine_id: String, s: &Session) -> Machine {
    Machine {
        machine_id,
        hostname: s.info.hostname.clone(),
        session_id: if s.is_live() {
            s.id.clone()
        } else {
            String::new()
        },
        status: s.status_text().to_string(),
        os: s.info.os.clone(),
        shell: s.info.shell.clone(),
        agent_version: s.info.version.clone(),
        connected_at_unix_ms: unix_ms(s.connected_at),
        last_seen_unix_ms: s.last_activity_ms(),
        native_exec: s.is_live() && s.exec_link().is_some(),
        ..Default::default()
    }
}

/// What selectors see: agent labels, admin labels over them, and the
/// facts as `cmdop.io/…` labels (values made label-safe).
fn selectable_labels(m: &Machine, labels: &Labels, facts: &Facts) -> BTreeMap<String, String> {
    let mut all = labels.effective();
    let online = if m.status == "connected" {
        "online"
    } else {
        "offline"
    };
    let fact = |name: &str| format!("{FACT_LABEL_PREFIX}{name}");
    for (name, value) in [
        ("machine-id", m.machine_id.clone()),
        ("hostname", m.hostname.clone()),
        ("status", online.to_string()),
        ("os", facts.os.clone()),
        ("os-version", facts.os_version.clone()),
        ("kernel", facts.kernel.clone()),
        ("arch", facts.arch.clone()),
        ("cpus", facts.cpu_count.to_string()),
        ("memory-gib", (facts.memory_bytes >> 30).to_string()),
        ("agent-version", facts.agent_version.clone()),
    ] {
        let value = label_safe(&value);
        if !value.is_empty() {
            all.insert(fact(name), value);
        }
    }
    all
}

/// `text` as a label value: characters outside `[A-Za-z0-9._-]` become
/// `-`, at most 63 characters, starting and ending alphanumeric.
fn label_safe(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// The facts of a RegisterRequest, bounded.
pub fn facts_of(r: &cmdop_proto::terminal::RegisterRequest) -> Facts {
    let cut = |s: &str| {
        let mut end = s.len().min(MAX_FACT_BYTES);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_string()
    };
    Facts {
        os: cut(&r.platform),
        os_version: cut(&r.os_version),
        kernel: cut(&r.kernel_version),
        arch: cut(&r.architecture),
        cpu_count: r.cpu_count,
        memory_bytes: r.total_ram,
        agent_version: cut(&r.version),
    }
}

/// The labels an agent declares that may be stored: valid keys and values,
/// not in the reserved `cmdop.io/` prefix, at most
/// [`MAX_LABELS_PER_SOURCE`]. What is dropped is logged (a current agent
/// checks its labels before sending them).
pub fn declared_labels(
    machine_id: &str,
    declared: HashMap<String, String>,
) -> BTreeMap<String, String> {
    let mut kept = BTreeMap::new();
    let mut sorted: Vec<_> = declared.into_iter().collect();
    sorted.sort();
    for (key, value) in sorted {
        let refused = if key.starts_with(FACT_LABEL_PREFIX) {
            Some(format!("the prefix {FACT_LABEL_PREFIX} is reserved"))
        } else if kept.len() >= MAX_LABELS_PER_SOURCE {
            Some(format!("more than {MAX_LABELS_PER_SOURCE} labels"))
        } else {
            selector::check_label(&key, &value)
                .err()
                .map(|e| e.to_string())
        };
        match refused {
            Some(why) => tracing::warn!(
                machine = %machine_id, label = %key.chars().take(80).collect::<String>(), %why,
                "ignoring a label the agent declared"
            ),
            None => {
                kept.insert(key, value);
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fact_values_become_label_safe() {
        assert_eq!(
            label_safe("Debian GNU/Linux 12 (bookworm)"),
            "Debian-GNU-Linux-12--bookworm"
        );
        assert_eq!(label_safe("6.1.0-18-amd64"), "6.1.0-18-amd64");
        assert_eq!(label_safe(" ~weird~ "), "weird");
        assert_eq!(label_safe(&"x".repeat(100)).len(), 63);
    }

    #[test]
    fn declared_labels_drop_the_reserved_prefix_bad_syntax_and_excess() {
        let mut declared = HashMap::new();
        declared.insert("env".to_string(), "prod".to_string());
        declared.insert("cmdop.io/status".to_string(), "online".to_string());
        declared.insert("bad key".to_string(), "x".to_string());
        declared.insert("role".to_string(), "has space".to_string());
        let kept = declared_labels("mach_x", declared);
        assert_eq!(
            kept,
            BTreeMap::from([("env".to_string(), "prod".to_string())])
        );
        let many: HashMap<_, _> = (0..100)
            .map(|i| (format!("k{i:03}"), "v".to_string()))
            .collect();
        assert_eq!(declared_labels("mach_x", many).len(), MAX_LABELS_PER_SOURCE);
    }

    #[test]
    fn page_tokens_are_ours_or_refused() {
        assert_eq!(parse_page_token("").unwrap(), 0);
        assert_eq!(parse_page_token("o25").unwrap(), 25);
        assert!(parse_page_token("25").is_err());
        assert!(parse_page_token("ox").is_err());
    }
}
