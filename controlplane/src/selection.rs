//! The machine each client connection last picked with
//! `GetSessionByHostname`.
//!
//! The official Python SDK's walkthrough selects a machine on its terminal
//! service (`terminal.set_machine("host")`) and then calls its files
//! service, which has no session id of its own and sends File* requests
//! with an empty `session_id` on the same connection. Such a request goes
//! to the machine this connection (and workspace) selected last; with no
//! selection it fails with FAILED_PRECONDITION, never an empty success.
//!
//! A connection is known by its peer address, unique among open
//! connections. Entries are bounded in number and age; the stored value is
//! the machine id, so a selection survives its agent reconnecting.

use parking_lot::Mutex;
use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

/// Selections kept at most; the oldest go first beyond this.
const MAX_SELECTIONS: usize = 50_000;
/// A selection unused this long is forgotten.
const SELECTION_TTL: Duration = Duration::from_secs(24 * 3600);

type Key = (String, SocketAddr);

/// Connection → selected machine.
#[derive(Default)]
pub struct Selections {
    map: Mutex<HashMap<Key, (String, Instant)>>,
}

impl Selections {
    /// Records that the connection from `peer`, calling for `workspace_id`,
    /// selected `machine_id`; `None` clears its selection.
    pub fn select(&self, workspace_id: &str, peer: SocketAddr, machine_id: Option<&str>) {
        let mut map = self.map.lock();
        let key = (workspace_id.to_string(), peer);
        let Some(machine_id) = machine_id else {
            map.remove(&key);
            return;
        };
        let now = Instant::now();
        if map.len() >= MAX_SELECTIONS && !map.contains_key(&key) {
            map.retain(|_, (_, at)| now.duration_since(*at) < SELECTION_TTL);
            if map.len() >= MAX_SELECTIONS {
                if let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| k.clone())
                {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(key, (machine_id.to_string(), now));
    }

    /// The machine the connection from `peer` selected for `workspace_id`.
    pub fn selected(&self, workspace_id: &str, peer: SocketAddr) -> Option<String> {
        let mut map = self.map.lock();
        let key = (workspace_id.to_string(), peer);
        let entry = map.get_mut(&key)?;
        let now = Instant::now();
        if now.duration_since(entry.1) >= SELECTION_TTL {
            map.remove(&key);
            return None;
        }
        entry.1 = now;
        Some(entry.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_are_per_connection_and_workspace() {
        let s = Selections::default();
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        s.select("ws", a, Some("m1"));
        assert_eq!(s.selected("ws", a).as_deref(), Some("m1"));
        assert_eq!(s.selected("ws", b), None);
        assert_eq!(s.selected("other", a), None);
        s.select("ws", a, Some("m2"));
        assert_eq!(s.selected("ws", a).as_deref(), Some("m2"));
        s.select("ws", a, None);
        assert_eq!(s.selected("ws", a), None);
    }
}
