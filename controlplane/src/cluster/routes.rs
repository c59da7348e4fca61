//! Where machines' agents are: answered from this replica's own sessions
//! first, then from a cache of the `routes` table, then from the table. A
//! known route costs no query; an entry is forgotten when the owner
//! answers that it no longer has the session, when a call to it fails, or
//! when its replica's lease runs out.

use parking_lot::{Mutex, MutexGuard};
use std::{collections::HashMap, sync::Arc};

use tonic::Status;

use super::Cluster;
use crate::{
    db::{internal, with_store},
    sessions::Registry,
    store::{cluster::RouteRow, Store, Workspace},
};

/// Where a call goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// Served here (this replica has the agent, or nobody has it and the
    /// handler answers as usual).
    Local,
    /// Forwarded to the replica at `addr`.
    Remote { route: RouteRow, addr: String },
}

#[derive(Default)]
struct Inner {
    by_session: HashMap<String, RouteRow>,
    by_machine: HashMap<String, RouteRow>,
}

/// Routes seen lately.
#[derive(Default)]
pub struct RouteCache {
    inner: Mutex<Inner>,
}

impl RouteCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    fn remember(&self, route: &RouteRow) {
        let mut inner = self.lock();
        inner
            .by_session
            .insert(route.session_id.clone(), route.clone());
        inner
            .by_machine
            .insert(route.machine_id.clone(), route.clone());
    }

    /// Forgets the route of `machine_id` (both indexes).
    pub fn forget(&self, route: &RouteRow) {
        let mut inner = self.lock();
        if inner
            .by_session
            .get(&route.session_id)
            .is_some_and(|r| r.generation == route.generation)
        {
            inner.by_session.remove(&route.session_id);
        }
        if inner
            .by_machine
            .get(&route.machine_id)
            .is_some_and(|r| r.generation == route.generation)
        {
            inner.by_machine.remove(&route.machine_id);
        }
    }

    /// Forgets every route through a replica that is not in `live`.
    pub fn retain_replicas(&self, live: &HashMap<String, String>) {
        let mut inner = self.lock();
        inner
            .by_session
            .retain(|_, r| live.contains_key(&r.replica_id));
        inner
            .by_machine
            .retain(|_, r| live.contains_key(&r.replica_id));
    }

    /// Every cached route (one per machine).
    pub fn cached(&self) -> Vec<RouteRow> {
        self.lock().by_machine.values().cloned().collect()
    }

    /// Forgets each cached route that no longer matches the table's row
    /// (`current`, by machine): the agent moved or left.
    pub fn refresh(&self, cached: &[RouteRow], current: &[RouteRow]) {
        for route in cached {
            let same = current.iter().any(|c| {
                c.machine_id == route.machine_id
                    && c.generation == route.generation
                    && c.replica_id == route.replica_id
            });
            if !same {
                self.forget(route);
            }
        }
    }

    fn by_session(&self, session_id: &str) -> Option<RouteRow> {
        self.lock().by_session.get(session_id).cloned()
    }

    fn by_machine(&self, machine_id: &str) -> Option<RouteRow> {
        self.lock().by_machine.get(machine_id).cloned()
    }
}

/// UNAVAILABLE for a machine whose agent's replica is gone.
/// Nothing of the call reached the machine.
pub fn replica_gone(route: &RouteRow) -> Status {
    crate::sessions::not_started(Status::unavailable(format!(
        "the call was refused before it reached machine {}: its agent was connected to \
         replica {}, which is gone; nothing ran. The agent reconnects to a live replica within \
         seconds — retry then",
        route.machine_id, route.replica_id
    )))
}

impl Cluster {
    fn target_of(&self, ws: &Workspace, route: RouteRow) -> Result<Target, Status> {
        if route.workspace_id != ws.id || route.replica_id == self.replica_id {
            return Ok(Target::Local);
        }
        match self.live_addr(&route.replica_id) {
            Some(addr) => {
                self.routes.remember(&route);
                Ok(Target::Remote { route, addr })
            }
            None => {
                self.routes.forget(&route);
                Err(replica_gone(&route))
            }
        }
    }

    /// Remembers that replica `route.replica_id` holds `route`'s session,
    /// as that replica itself answered (a lookup during a database outage),
    /// so calls for the machine are forwarded there meanwhile. The table's
    /// row replaces it once the database is back.
    pub fn learn_route(&self, route: RouteRow) {
        if route.replica_id != self.replica_id && self.live_addr(&route.replica_id).is_some() {
            self.routes.remember(&route);
        }
    }

    /// Where a call for `session_id` of `ws` goes.
    pub async fn resolve_session(
        &self,
        sessions: &Registry,
        store: &Arc<Store>,
        ws: &Workspace,
        session_id: &str,
    ) -> Result<Target, Status> {
        if session_id.is_empty() || sessions.get(ws, session_id).is_some_and(|s| s.is_live()) {
            return Ok(Target::Local);
        }
        let route = match self.routes.by_session(session_id) {
            Some(r) => Some(r),
            None => {
                let sid = session_id.to_string();
                with_store(store, move |store| store.route_of_session(&sid))
                    .await
                    .map_err(internal)?
            }
        };
        match route {
            Some(route) => self.target_of(ws, route),
            None => Ok(Target::Local),
        }
    }

    /// Where a call for machine `machine_id` of `ws` goes.
    pub async fn resolve_machine(
        &self,
        sessions: &Registry,
        store: &Arc<Store>,
        ws: &Workspace,
        machine_id: &str,
    ) -> Result<Target, Status> {
        if machine_id.is_empty()
            || sessions
                .by_machine(ws, machine_id)
                .is_some_and(|s| s.is_live())
        {
            return Ok(Target::Local);
        }
        let route = match self.routes.by_machine(machine_id) {
            Some(r) => Some(r),
            None => {
                let mid = machine_id.to_string();
                with_store(store, move |store| store.route_of_machine(&mid))
                    .await
                    .map_err(internal)?
            }
        };
        match route {
            Some(route) => self.target_of(ws, route),
            None => Ok(Target::Local),
        }
    }
}
