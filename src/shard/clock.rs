//! The shard's clock: the wall clock plus an offset that only the test clock
//! (`POST /debug/clock`, a build with the `test-switches` feature) moves.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::time::UnixTime;

/// Wall time plus a test offset (nanoseconds). One per shard; `Cell`: one thread.
#[derive(Debug, Default)]
pub struct Clock {
    offset: Cell<u64>,
}

impl Clock {
    pub fn now(&self) -> UnixTime {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        UnixTime(wall.saturating_add(self.offset.get()))
    }

    /// The test offset.
    pub fn offset(&self) -> u64 {
        self.offset.get()
    }

    /// Sets the test offset (the test clock only).
    pub fn set_offset(&self, nanos: u64) {
        self.offset.set(nanos);
    }
}
