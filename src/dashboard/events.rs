//! The per-shard change ring: each shard notes what changed in the state it owns (an
//! agent registered, deleted or changing health; a task created, claimed, updated or
//! expired; a pairing entry created or changing state) with a sequence number. The
//! event stream's shard asks every shard for the events after the last sequence it saw
//! (`ops::Op::Poll`) and pushes them to the page, which then re-reads only what it shows.
//!
//! Heartbeats of an agent that stays `active` are not events: at 10,000 agents they
//! would be the whole stream, and the page computes heartbeat ages itself.

use std::collections::VecDeque;

use serde::Serialize;

use crate::{hub, pairing, registry};

/// Events one shard keeps. When the ring is full the oldest is dropped; a reader that
/// was further behind gets `lost = true` and re-reads its lists (nothing blocks).
pub const EVENT_RING_MAX: usize = 512;

/// What changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Agent,
    Task,
    Pairing,
}

/// One change: its kind and the id of the agent, task or entry (`""` for a bulk change
/// such as a health tick).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    pub seq: u64,
    pub kind: EventKind,
    pub id: String,
}

/// The events after a sequence number, as one shard answers a poll.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// The shard's last sequence number (pass it to the next poll).
    pub seq: u64,
    /// Events after the asked sequence, oldest first.
    pub events: Vec<Event>,
    /// Events after the asked sequence were dropped from the ring (re-read everything).
    pub lost: bool,
}

/// A bounded ring of [`Event`]s with a monotonic sequence (the first event is 1).
#[derive(Debug, Default)]
pub struct EventRing {
    seq: u64,
    ring: VecDeque<Event>,
}

impl EventRing {
    pub fn new() -> Self {
        EventRing::default()
    }

    /// The last sequence number handed out (0 before any event).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Notes a change.
    pub fn push(&mut self, kind: EventKind, id: &str) {
        self.seq += 1;
        if self.ring.len() == EVENT_RING_MAX {
            self.ring.pop_front();
        }
        self.ring.push_back(Event {
            seq: self.seq,
            kind,
            id: id.to_owned(),
        });
    }

    /// The events after `since`. `since` beyond the current sequence (a restarted
    /// server) counts as lost.
    pub fn since(&self, since: u64) -> Delta {
        let oldest = self.ring.front().map_or(self.seq + 1, |e| e.seq);
        let lost = since > self.seq || (since + 1 < oldest && since < self.seq);
        Delta {
            seq: self.seq,
            events: self
                .ring
                .iter()
                .filter(|e| e.seq > since)
                .cloned()
                .collect(),
            lost,
        }
    }
}

/// The event a registry operation makes if it succeeds.
pub fn of_registry(op: &registry::ops::Op) -> Option<(EventKind, String)> {
    match op {
        registry::ops::Op::Upsert(info) => Some((EventKind::Agent, info.agent_id.clone())),
        registry::ops::Op::DeleteBegin(id) | registry::ops::Op::DeleteFinish(id) => {
            Some((EventKind::Agent, (**id).clone()))
        }
        registry::ops::Op::BindingUndo(change) if change.created => {
            Some((EventKind::Agent, change.agent_id.clone()))
        }
        _ => None,
    }
}

/// The events a hub operation makes: `(agent event, task event)`. `agents` is the store
/// before the operation (a heartbeat is an event only for a new agent or one coming
/// back to `active`).
pub fn of_hub(
    op: &hub::ops::Op,
    agents: &registry::AgentStore,
) -> (Option<String>, Option<String>) {
    use hub::ops::Op;
    match op {
        Op::Heartbeat(b) => {
            let hb = &b.0;
            let changed = agents
                .get(&hb.agent_id)
                .is_none_or(|r| r.health != registry::Health::Active);
            (changed.then(|| hb.agent_id.clone()), None)
        }
        Op::Create(b) => (None, Some(b.0.to_string())),
        Op::Saved(id) | Op::Remove(id) => (None, Some((**id).clone())),
        Op::Restore(t) => (None, Some(t.id.to_string())),
        Op::Update(b) => (None, Some(b.0.clone())),
        Op::ClaimIds(_) | Op::ClaimFor(_) => (None, Some(String::new())),
        _ => (None, None),
    }
}

/// Whether a hub reply means its task event happened.
pub fn hub_task_changed(reply: &hub::ops::Reply) -> bool {
    use hub::ops::Reply;
    match reply {
        Reply::Done | Reply::Updated(_) => true,
        // A creation answers the new task (a `Get` makes no event, whatever it answers).
        Reply::Task(t) => t.is_some(),
        Reply::Tasks(t) => !t.is_empty(),
        Reply::HeartbeatDone(b) => !b.0.is_empty(),
        _ => false,
    }
}

/// The event a pairing operation makes if it changed an entry (see [`pairing_changed`]).
pub fn of_pairing(op: &pairing::ops::Op) -> Option<String> {
    use pairing::ops::Op;
    match op {
        Op::EntryCreate(b) => Some(b.0.to_string()),
        Op::EntryApprove(b) => Some(b.0.to_string()),
        Op::EntryReject(id) | Op::EntryRevoke(id) | Op::EntrySaved(id) => Some(id.to_string()),
        Op::EntryRestore(b) => Some(b.0.to_string()),
        _ => None,
    }
}

/// Whether a pairing reply means its entry changed (created, transitioned, saved or
/// put back).
pub fn pairing_changed(reply: &pairing::ops::Reply) -> bool {
    use pairing::ops::Reply;
    matches!(reply, Reply::Entry(_) | Reply::Changed(_) | Reply::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_since_a_sequence() {
        let mut r = EventRing::new();
        assert_eq!(r.since(0), Delta::default());
        r.push(EventKind::Agent, "a");
        r.push(EventKind::Task, "t");
        let d = r.since(0);
        assert_eq!(d.seq, 2);
        assert!(!d.lost);
        assert_eq!(d.events.len(), 2);
        let d = r.since(1);
        assert_eq!(d.events.len(), 1);
        assert_eq!(d.events[0].kind, EventKind::Task);
        assert!(r.since(2).events.is_empty());
        assert!(!r.since(2).lost);
    }

    #[test]
    fn a_reader_left_behind_is_told() {
        let mut r = EventRing::new();
        for i in 0..EVENT_RING_MAX + 10 {
            r.push(EventKind::Agent, &i.to_string());
        }
        let d = r.since(0);
        assert!(d.lost);
        assert_eq!(d.events.len(), EVENT_RING_MAX);
        assert!(!r.since(11).lost, "oldest kept is 11");
        assert!(r.since(9).lost);
        // A sequence from the future (server restarted): lost.
        assert!(r.since(10_000).lost);
    }
}
