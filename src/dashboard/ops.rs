//! What the dashboard asks every shard (`ask_all`), and the shard's answer. The owner
//! side is [`apply`], run by `ShardCtx::on_message` with the shard's whole state.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::dashboard::paging::{
    agents_part, tasks_part, AgentQuery, AgentRow, Part, TaskQuery, TaskRow,
};
use crate::metrics::ShardMetrics;
use crate::pairing::Status;
use crate::registry::Health;
use crate::server::ShardCtx;
use crate::shard::Delta;

/// A request to one shard's dashboard side. Every payload is one word.
pub enum Op {
    /// This shard's part of an agents page. → `Agents`.
    Agents(Box<AgentQuery>),
    /// This shard's part of a tasks page. → `Tasks`.
    Tasks(Box<TaskQuery>),
    /// Counts and counters. → `Summary`.
    Summary,
    /// Events after this sequence, with the counts when `true`. → `Poll`.
    Poll(Box<(u64, bool)>),
}

pub enum Reply {
    Agents(Box<Part<AgentRow>>),
    Tasks(Box<Part<TaskRow>>),
    Summary(Box<ShardSummary>),
    Poll(Box<(Delta, Option<ShardSummary>)>),
}

/// One shard's counts (the page adds them up) and counters (shown per shard).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ShardSummary {
    pub agents: HealthCounts,
    /// Tasks by state.
    pub tasks: BTreeMap<String, u64>,
    pub pairing_pending: u64,
    pub pairing_approved: u64,
    #[serde(skip)]
    pub metrics: Option<ShardMetrics>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HealthCounts {
    pub active: u64,
    pub stale: u64,
    pub offline: u64,
}

fn summary(ctx: &ShardCtx) -> ShardSummary {
    let st = &ctx.state;
    let mut s = ShardSummary::default();
    for r in st.agents.borrow().list() {
        match r.health {
            Health::Active => s.agents.active += 1,
            Health::Stale => s.agents.stale += 1,
            Health::Offline => s.agents.offline += 1,
        }
    }
    for t in st.hub.borrow().tasks.list() {
        *s.tasks.entry(t.state.clone()).or_default() += 1;
    }
    for e in st.pairing.borrow().entries.list_all() {
        match e.status {
            Status::PendingApproval => s.pairing_pending += 1,
            Status::Approved => s.pairing_approved += 1,
            _ => {}
        }
    }
    s.metrics = Some(ctx.metrics_snapshot());
    s
}

/// Answers `op` from this shard's state.
pub fn apply(ctx: &ShardCtx, op: Op) -> Reply {
    let st = &ctx.state;
    match op {
        Op::Agents(q) => Reply::Agents(Box::new(agents_part(st.agents.borrow().list(), &q))),
        Op::Tasks(q) => Reply::Tasks(Box::new(tasks_part(st.hub.borrow().tasks.list(), &q))),
        Op::Summary => Reply::Summary(Box::new(summary(ctx))),
        Op::Poll(b) => {
            let (since, with_summary) = *b;
            let delta = st.changes.borrow().since(since);
            Reply::Poll(Box::new((delta, with_summary.then(|| summary(ctx)))))
        }
    }
}
