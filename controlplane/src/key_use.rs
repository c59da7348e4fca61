//! When each API key was last used: noted in memory by the gate on every
//! call it admits (a token's use counts for its key), written to the store
//! by the revocation watch once per tick, so `cmdop admin keys` can show
//! it without a database write per call.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::store::now_ms;

/// Key hash → last use (ms since the epoch) not yet written.
#[derive(Default)]
pub struct KeyUses {
    pending: Mutex<HashMap<String, i64>>,
}

/// Keys remembered at most between two writes; beyond it, new keys wait
/// for the next tick (their use is still counted by later calls).
const MAX_PENDING: usize = 100_000;

impl KeyUses {
    /// Notes that the key with this hash was used now.
    pub fn note(&self, key_hash: &str) {
        let now = now_ms();
        let mut pending = self.pending.lock();
        let full = pending.len() >= MAX_PENDING;
        match pending.get_mut(key_hash) {
            Some(at) => *at = now,
            None if !full => {
                pending.insert(key_hash.to_string(), now);
            }
            None => {}
        }
    }

    /// What was noted since the last call.
    pub fn take(&self) -> Vec<(String, i64)> {
        std::mem::take(&mut *self.pending.lock())
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_each_key_once_until_taken() {
        let uses = KeyUses::default();
        uses.note("a");
        uses.note("b");
        uses.note("a");
        let mut taken = uses.take();
        taken.sort();
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[0].0, "a");
        assert!(uses.take().is_empty());
    }
}
