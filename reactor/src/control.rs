//! What every shard thread shares with the runtime: the doorbells and the process
//! state. A leaf module (shard and runtime both use it; it uses neither).

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use crate::doorbell::Doorbell;

pub(crate) const STATE_RUNNING: u8 = 0;
pub(crate) const STATE_DRAINING: u8 = 1;
pub(crate) const STATE_EXIT: u8 = 2;

/// What every thread shares: the doorbells and the process state. Atomics only; no
/// application state crosses shards here.
pub(crate) struct Control {
    pub(crate) doorbells: Vec<Doorbell>,
    pub(crate) state: AtomicU8,
    /// Shards whose application future has finished (connections drained).
    pub(crate) drained: AtomicUsize,
}

impl Control {
    pub(crate) fn set_state(&self, state: u8) {
        self.state.store(state, Ordering::Release);
        for d in &self.doorbells {
            d.ring_always();
        }
    }
}
