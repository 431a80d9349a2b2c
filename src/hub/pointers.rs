//! Pointers to targeted skill tasks: a task with both a target and a skill lives on the
//! skill's shard; a pointer on the target's shard lets the target's heartbeat find it.
//! Each pointer expires with its task's deadline (the task fails then anyway). Sans-IO.

use std::collections::HashMap;

use crate::hub::TaskId;
use crate::time::UnixTime;

/// The pointers one shard holds, for the agents it owns.
#[derive(Default)]
pub struct TaskPointers {
    by_agent: HashMap<String, Vec<(TaskId, UnixTime)>>,
    len: usize,
}

impl TaskPointers {
    /// Most pointers one shard holds (one per targeted skill task whose target lives
    /// here; tasks are capped per shard by `TaskStoreConfig::tasks_max`, the same
    /// number). Beyond it a pointer is dropped: the task stays claimable through its
    /// skill, only its target's heartbeat no longer finds it.
    pub const POINTERS_MAX: usize = 65_536;

    /// Adds a pointer; `false` when full.
    pub fn add(&mut self, agent: String, id: TaskId, deadline: UnixTime) -> bool {
        if self.len >= Self::POINTERS_MAX {
            return false;
        }
        self.by_agent.entry(agent).or_default().push((id, deadline));
        self.len += 1;
        true
    }

    /// Removes and returns the agent's pointers.
    pub fn take(&mut self, agent: &str) -> Vec<TaskId> {
        if self.len == 0 {
            return Vec::new(); // (the common case: no key hashed)
        }
        match self.by_agent.remove(agent) {
            Some(v) => {
                self.len -= v.len();
                v.into_iter().map(|(id, _)| id).collect()
            }
            None => Vec::new(),
        }
    }

    /// Drops pointers past their task's deadline.
    pub fn sweep(&mut self, now: UnixTime) -> usize {
        let mut removed = 0;
        self.by_agent.retain(|_, v| {
            let before = v.len();
            v.retain(|&(_, deadline)| now <= deadline);
            removed += before - v.len();
            !v.is_empty()
        });
        self.len -= removed;
        removed
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> UnixTime {
        UnixTime::from_secs(secs)
    }

    #[test]
    fn take_returns_an_agents_pointers_once() {
        let mut p = TaskPointers::default();
        assert!(p.add("a".into(), "t1".into(), t(100)));
        assert!(p.add("a".into(), "t2".into(), t(100)));
        assert!(p.add("b".into(), "t3".into(), t(100)));
        assert_eq!(p.len(), 3);
        assert_eq!(p.take("a"), vec![TaskId::from("t1"), TaskId::from("t2")]);
        assert_eq!(p.len(), 1);
        assert!(p.take("a").is_empty());
        assert_eq!(p.take("b"), vec![TaskId::from("t3")]);
        assert!(p.is_empty());
    }

    #[test]
    fn sweep_drops_only_pointers_past_their_deadline() {
        let mut p = TaskPointers::default();
        p.add("a".into(), "old".into(), t(10));
        p.add("a".into(), "new".into(), t(20));
        p.add("b".into(), "old2".into(), t(10));
        assert_eq!(p.sweep(t(10)), 0, "a deadline is inclusive");
        assert_eq!(p.sweep(t(11)), 2);
        assert_eq!(p.len(), 1);
        assert_eq!(p.take("a"), vec![TaskId::from("new")]);
        assert!(p.take("b").is_empty());
        assert!(p.is_empty());
    }

    #[test]
    fn full_table_drops_new_pointers() {
        let mut p = TaskPointers::default();
        for i in 0..TaskPointers::POINTERS_MAX {
            assert!(p.add(format!("agent-{}", i % 7), format!("t{i}"), t(5)));
        }
        assert!(!p.add("x".into(), "one-more".into(), t(5)));
        assert_eq!(p.len(), TaskPointers::POINTERS_MAX);
        // Room again once some are taken.
        let taken = p.take("agent-0").len();
        assert!(taken > 0);
        assert_eq!(p.len(), TaskPointers::POINTERS_MAX - taken);
        assert!(p.add("x".into(), "one-more".into(), t(5)));
    }
}
