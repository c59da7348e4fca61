//! All sessions this process knows: live ones and, for a while, ended ones
//! (so they list as "disconnected" and their output stays readable).
//! At most one session per machine.

use parking_lot::{Mutex, MutexGuard};
use std::{collections::HashMap, sync::Arc};

use super::{
    history::History,
    ring::OutputRing,
    session::{AgentInfo, Carried, ControlSender, Session},
};
use crate::{
    limits,
    store::{now_ms, Workspace},
};

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Arc<Session>>,
    /// machine_id → id of its current (live or last) session.
    by_machine: HashMap<String, String>,
}

/// The in-memory session table.
pub struct Registry {
    inner: Mutex<Inner>,
    output_capacity: usize,
}

impl Registry {
    /// An empty registry whose sessions buffer up to `output_capacity` bytes each.
    pub fn new(output_capacity: usize) -> Self {
        Registry {
            inner: Mutex::new(Inner::default()),
            output_capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Registers a new agent connection of `machine_id`, replacing (and
    /// closing) its previous one. The agent's `requested_id` is kept when
    /// usable (non-empty, sane, not another machine's); otherwise a UUID is
    /// assigned. Reusing the previous id carries output and history over.
    pub fn register(
        &self,
        workspace_id: &str,
        machine_id: &str,
        requested_id: &str,
        info: AgentInfo,
        control: ControlSender,
    ) -> Arc<Session> {
        let mut inner = self.lock();
        Self::prune(&mut inner);
        let previous = inner
            .by_machine
            .get(machine_id)
            .and_then(|sid| inner.by_id.get(sid))
            .cloned();
        let usable = !requested_id.is_empty()
            && requested_id.len() <= limits::MAX_SESSION_ID_BYTES
            && requested_id.bytes().all(|b| b.is_ascii_graphic())
            && inner
                .by_id
                .get(requested_id)
                .is_none_or(|s| s.machine_id == machine_id);
        let id = if usable {
            requested_id.to_string()
        } else {
            uuid::Uuid::new_v4().to_string()
        };

        let mut carried = None;
        // A reconnect keeps what is known of the machine's admin labels
        // until they are read again.
        let labels = previous.as_ref().and_then(|p| p.admin_labels());
        if let Some(prev) = previous {
            prev.mark_closed("replaced by a new connection of the same machine");
            if prev.id == id {
                carried = Some(prev.carried());
            } else {
                inner.by_id.remove(&prev.id);
            }
        }
        let carried = carried.unwrap_or_else(|| Carried {
            output: Arc::new(Mutex::new(OutputRing::new(self.output_capacity))),
            history: Arc::new(Mutex::new(History::default())),
        });
        let session = Arc::new(Session::new(
            id.clone(),
            workspace_id.to_string(),
            machine_id.to_string(),
            info,
            control,
            carried,
        ));
        if let Some(labels) = labels {
            session.set_admin_labels(labels);
        }
        inner.by_id.insert(id.clone(), session.clone());
        inner.by_machine.insert(machine_id.to_string(), id);
        session
    }

    /// Drops ended sessions older than the retention period.
    fn prune(inner: &mut Inner) {
        let cutoff = now_ms()
            - i64::try_from(limits::DISCONNECTED_SESSION_RETENTION.as_millis()).unwrap_or(i64::MAX);
        let expired: Vec<(String, String)> = inner
            .by_id
            .values()
            .filter(|s| !s.is_live() && s.last_activity_ms() < cutoff)
            .map(|s| (s.id.clone(), s.machine_id.clone()))
            .collect();
        for (sid, machine) in expired {
            inner.by_id.remove(&sid);
            if inner.by_machine.get(&machine) == Some(&sid) {
                inner.by_machine.remove(&machine);
            }
        }
    }

    /// A session of the caller's workspace that its scope sees; another
    /// workspace's session, or one out of scope, is as absent as a missing one.
    pub fn get(&self, ws: &Workspace, session_id: &str) -> Option<Arc<Session>> {
        self.lock()
            .by_id
            .get(session_id)
            .filter(|s| s.workspace_id == ws.id && s.visible_to(&ws.scope))
            .cloned()
    }

    /// The current (live or last) session of a machine, if the caller's
    /// scope sees it.
    pub fn by_machine(&self, ws: &Workspace, machine_id: &str) -> Option<Arc<Session>> {
        self.current_of(&ws.id, machine_id)
            .filter(|s| s.visible_to(&ws.scope))
    }

    /// The current (live or last) session of a machine of `workspace_id`,
    /// for the server's own work (an agent's other links): no scope applies.
    pub fn current_of(&self, workspace_id: &str, machine_id: &str) -> Option<Arc<Session>> {
        let inner = self.lock();
        inner
            .by_machine
            .get(machine_id)
            .and_then(|sid| inner.by_id.get(sid))
            .filter(|s| s.workspace_id == workspace_id)
            .cloned()
    }

    /// Closes the live session of `machine_id` (any workspace), if any.
    /// Returns true when one was open.
    pub fn close_machine(&self, machine_id: &str, reason: &str) -> bool {
        let session = {
            let inner = self.lock();
            inner
                .by_machine
                .get(machine_id)
                .and_then(|sid| inner.by_id.get(sid))
                .filter(|s| s.is_live())
                .cloned()
        };
        match session {
            Some(s) => {
                s.mark_closed(reason);
                true
            }
            None => false,
        }
    }

    /// Closes every live session (server shutdown).
    pub fn close_all(&self, reason: &str) {
        let sessions: Vec<_> = self.lock().by_id.values().cloned().collect();
        for s in sessions {
            s.mark_closed(reason);
        }
    }

    /// `(machine_id, last activity in unix ms)` of every live session.
    pub fn live_activity(&self) -> Vec<(String, i64)> {
        self.lock()
            .by_id
            .values()
            .filter(|s| s.is_live())
            .map(|s| (s.machine_id.clone(), s.last_activity_ms()))
            .collect()
    }

    /// Every session of the caller's workspace that its scope sees, most
    /// recently active first.
    pub fn list(&self, ws: &Workspace) -> Vec<Arc<Session>> {
        let mut out = self.all_of(&ws.id);
        out.retain(|s| s.visible_to(&ws.scope));
        out
    }

    /// Every session of `workspace_id`, most recently active first, for the
    /// server's own work: no scope applies.
    pub fn all_of(&self, workspace_id: &str) -> Vec<Arc<Session>> {
        let mut inner = self.lock();
        Self::prune(&mut inner);
        let mut out: Vec<_> = inner
            .by_id
            .values()
            .filter(|s| s.workspace_id == workspace_id)
            .cloned()
            .collect();
        drop(inner);
        out.sort_by(|a, b| {
            b.last_activity_ms()
                .cmp(&a.last_activity_ms())
                .then_with(|| a.id.cmp(&b.id))
        });
        out
    }

    /// The live session of each machine of the caller's workspace connected
    /// here that its scope sees (its newest, when a machine has several),
    /// newest activity first.
    pub fn live_machines(&self, ws: &Workspace) -> Vec<Arc<Session>> {
        let mut seen = std::collections::HashSet::new();
        self.list(ws)
            .into_iter()
            .filter(|s| s.is_live() && seen.insert(s.machine_id.clone()))
            .collect()
    }

    /// Every live session (any workspace), for refreshing what the server
    /// knows of their machines.
    pub fn live(&self) -> Vec<Arc<Session>> {
        self.lock()
            .by_id
            .values()
            .filter(|s| s.is_live())
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn info(host: &str) -> AgentInfo {
        AgentInfo {
            hostname: host.into(),
            ..Default::default()
        }
    }

    #[test]
    fn reconnect_with_same_id_keeps_output_and_closes_the_old_connection() {
        let reg = Registry::new(1024);
        let (tx, _rx) = mpsc::channel(4);
        let first = reg.register("ws", "m1", "sid-1", info("a"), tx.clone());
        first.record_output(b"before");
        let second = reg.register("ws", "m1", "sid-1", info("a"), tx);
        assert!(!first.is_live());
        assert!(second.is_live());
        assert_eq!(second.read_output(0, 0).data, b"before");
        assert_eq!(reg.all_of("ws").len(), 1);
    }

    #[test]
    fn foreign_or_empty_ids_are_replaced() {
        let reg = Registry::new(1024);
        let (tx, _rx) = mpsc::channel(4);
        let a = reg.register("ws", "m1", "taken", info("a"), tx.clone());
        let b = reg.register("ws", "m2", "taken", info("b"), tx.clone());
        assert_eq!(a.id, "taken");
        assert_ne!(b.id, "taken");
        let c = reg.register("ws", "m3", "", info("c"), tx);
        assert_eq!(c.id.len(), 36);
    }

    #[test]
    fn workspaces_do_not_see_each_other() {
        let reg = Registry::new(1024);
        let (tx, _rx) = mpsc::channel(4);
        let a = reg.register("ws1", "m1", "s1", info("a"), tx);
        assert!(reg.get(&ws("ws1", None), &a.id).is_some());
        assert!(reg.get(&ws("ws2", None), &a.id).is_none());
        assert!(reg.by_machine(&ws("ws2", None), "m1").is_none());
        assert!(reg.list(&ws("ws2", None)).is_empty());
    }

    #[tokio::test]
    async fn only_agents_that_can_move_are_asked_and_a_move_counts_once_asked() {
        use crate::sessions::{ExecLink, Move};
        let reg = Registry::new(1024);
        let (tx, _rx) = mpsc::channel(4);
        let mover = reg.register("ws", "m1", "s1", info("a"), tx.clone());
        let stayer = reg.register("ws", "m2", "s2", info("b"), tx);
        let (down_tx, mut down_rx) = mpsc::channel(4);
        let link = ExecLink::new(down_tx);
        link.set_agent_capabilities(&[cmdop_proto::caps::LINK_MOVE.to_string()]);
        mover.set_exec_link(link).unwrap();
        let (old_tx, _old_rx) = mpsc::channel(4);
        stayer.set_exec_link(ExecLink::new(old_tx)).unwrap();

        // A LinkMoved nobody asked for changes nothing.
        mover.note_moved();
        assert_eq!(mover.move_state(), Move::Staying);
        assert!(!stayer.ask_to_move("stopping", std::time::Duration::from_secs(30)));
        assert_eq!(stayer.move_state(), Move::Staying);
        assert!(mover.ask_to_move("stopping", std::time::Duration::from_secs(30)));
        assert_eq!(mover.move_state(), Move::Asked);
        let sent = down_rx.recv().await.expect("a downlink message");
        match (*sent).expect("not an error").msg {
            Some(cmdop_proto::ext::agent_downlink::Msg::MoveLink(m)) => {
                assert_eq!(m.grace_ms, 30_000);
                assert_eq!(m.reason, "stopping");
            }
            other => panic!("expected MoveLink, got {other:?}"),
        }
        mover.note_moved();
        assert_eq!(mover.move_state(), Move::Moved);
    }

    fn ws(id: &str, machines: Option<&str>) -> Workspace {
        Workspace {
            id: id.into(),
            name: id.into(),
            scope: crate::scope::Scope::from_stored("k", "key k", None, machines).unwrap(),
            source: String::new(),
        }
    }

    #[test]
    fn scoped_callers_see_only_machines_their_selector_chooses() {
        let reg = Registry::new(1024);
        let (tx, _rx) = mpsc::channel(4);
        let staging = reg.register("ws", "m1", "s1", info("a"), tx.clone());
        let prod = reg.register("ws", "m2", "s2", info("b"), tx.clone());
        let unknown = reg.register("ws", "m3", "s3", info("c"), tx.clone());
        let label = |k: &str, v: &str| Arc::new([(k.to_string(), v.to_string())].into());
        staging.set_admin_labels(label("env", "staging"));
        prod.set_admin_labels(label("env", "prod"));
        let scoped = ws("ws", Some("env=staging"));
        assert!(reg.get(&scoped, "s1").is_some());
        assert!(reg.get(&scoped, "s2").is_none());
        assert!(reg.by_machine(&scoped, "m2").is_none());
        assert!(reg.by_machine(&scoped, &unknown.machine_id).is_none());
        let seen: Vec<_> = reg.list(&scoped).iter().map(|s| s.id.clone()).collect();
        assert_eq!(seen, ["s1"]);
        assert_eq!(reg.live_machines(&ws("ws", None)).len(), 3);
        // A reconnect keeps the labels known so far.
        let again = reg.register("ws", "m1", "s1-new", info("a"), tx);
        assert!(reg.get(&scoped, &again.id).is_some());
    }
}
