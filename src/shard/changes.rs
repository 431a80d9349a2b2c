//! The shard's change log: each service notes, in its own operations, what changed in
//! the state the shard owns (an agent registered, deleted or changing health; a task
//! created, claimed, updated or expired; a pairing entry created or changing state), with
//! a sequence number. A reader (the dashboard's event stream) asks every shard for the
//! changes after the last sequence it saw and re-reads only what changed.
//!
//! Heartbeats of an agent that stays `active` are not changes: at 10,000 agents they
//! would be the whole log, and a reader computes heartbeat ages itself.

use std::collections::VecDeque;

use serde::Serialize;

/// Changes one shard keeps. When the ring is full the oldest is dropped; a reader that
/// was further behind gets `lost = true` and re-reads everything (nothing blocks).
pub const CHANGE_LOG_MAX: usize = 512;

/// What kind of thing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Topic {
    Agent,
    Task,
    Pairing,
}

/// One change: its topic and the id of the agent, task or entry (`""` for a bulk change
/// such as a health tick), with its sequence number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub seq: u64,
    #[serde(rename = "kind")]
    pub topic: Topic,
    pub id: String,
}

/// The changes after a sequence number, as one shard answers a reader.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// The shard's last sequence number (pass it to the next read).
    pub seq: u64,
    /// Changes after the asked sequence, oldest first.
    pub changes: Vec<Change>,
    /// Changes after the asked sequence were dropped from the ring (re-read everything).
    pub lost: bool,
}

/// A request for one shard's changes after a sequence number ([`ChangeLog::since`]):
/// the change log is the shard's, not a service's, so the request is the layer's, and
/// the server (or the simulator) answers it from the shard's log with a [`Delta`]. A
/// reader asks every shard (`shard::ask_all`) with the last sequence it saw of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangesSince(pub u64);

/// A bounded ring of [`Change`]s with a monotonic sequence (the first change is 1).
#[derive(Debug, Default)]
pub struct ChangeLog {
    seq: u64,
    ring: VecDeque<Change>,
}

impl ChangeLog {
    pub fn new() -> Self {
        ChangeLog::default()
    }

    /// The last sequence number handed out (0 before any change).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Notes a change.
    pub fn push(&mut self, topic: Topic, id: &str) {
        self.seq += 1;
        if self.ring.len() == CHANGE_LOG_MAX {
            self.ring.pop_front();
        }
        self.ring.push_back(Change {
            seq: self.seq,
            topic,
            id: id.to_owned(),
        });
    }

    /// The changes after `since`. `since` beyond the current sequence (a restarted
    /// server) counts as lost.
    pub fn since(&self, since: u64) -> Delta {
        let oldest = self.ring.front().map_or(self.seq + 1, |e| e.seq);
        let lost = since > self.seq || (since + 1 < oldest && since < self.seq);
        Delta {
            seq: self.seq,
            changes: self
                .ring
                .iter()
                .filter(|e| e.seq > since)
                .cloned()
                .collect(),
            lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_since_a_sequence() {
        let mut r = ChangeLog::new();
        assert_eq!(r.since(0), Delta::default());
        r.push(Topic::Agent, "a");
        r.push(Topic::Task, "t");
        let d = r.since(0);
        assert_eq!(d.seq, 2);
        assert!(!d.lost);
        assert_eq!(d.changes.len(), 2);
        let d = r.since(1);
        assert_eq!(d.changes.len(), 1);
        assert_eq!(d.changes[0].topic, Topic::Task);
        assert!(r.since(2).changes.is_empty());
        assert!(!r.since(2).lost);
    }

    #[test]
    fn a_reader_left_behind_is_told() {
        let mut r = ChangeLog::new();
        for i in 0..CHANGE_LOG_MAX + 10 {
            r.push(Topic::Agent, &i.to_string());
        }
        let d = r.since(0);
        assert!(d.lost);
        assert_eq!(d.changes.len(), CHANGE_LOG_MAX);
        assert!(!r.since(11).lost, "oldest kept is 11");
        assert!(r.since(9).lost);
        // A sequence from the future (server restarted): lost.
        assert!(r.since(10_000).lost);
    }
}
