//! What the dashboard asks a shard about the shard itself rather than a service: its
//! counters, as the summary's row of that shard shows them. They are the shard's I/O,
//! mailbox and signaling counters, so the server answers ([`Op::Counters`]); what the
//! dashboard shows of the services it asks the services through their own typed ops
//! (registry, hub, pairing), and the change log through the shard layer
//! (`shard::ChangesSince`).

use serde::Serialize;

/// A request to one shard about itself. → [`Reply`].
pub enum Op {
    /// The shard's counters. → `Counters`.
    Counters,
}

pub enum Reply {
    Counters(Box<ShardRow>),
}

/// One shard's counters (the same ones `/metrics` renders).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ShardRow {
    pub shard: usize,
    /// `io_uring` or `epoll`.
    pub io_driver: &'static str,
    pub connections_open: u64,
    pub connections_accepted: u64,
    pub requests_served: u64,
    pub ws_open: u64,
    pub ws_relayed: u64,
    pub ws_refused: u64,
    pub ws_closed_slow: u64,
    pub mailbox_sent: u64,
    pub mailbox_received: u64,
    pub mailbox_refused_full: u64,
    pub mailbox_wakeups: u64,
}
