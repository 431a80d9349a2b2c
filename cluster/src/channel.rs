//! What the shards' links and the link thread send each other, and the state they share.
//! `shard` (the shard's side) and `thread` (the link thread's) both build on it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::{CmdError, Inbound, Stats, Value, ROUND_TRIP_BUCKETS_US};

/// A shard's command for the link thread.
pub(crate) struct Request {
    pub(crate) shard: usize,
    /// The shard's waiter slot, completed exactly once.
    pub(crate) key: usize,
    pub(crate) what: What,
    /// The reply is not awaited: the link thread drops it (an error reply is counted).
    pub(crate) discard: bool,
    /// When the shard submitted it (round trips are measured from here).
    pub(crate) at: Instant,
}

pub(crate) enum What {
    /// A command as given.
    Command(Vec<Vec<u8>>),
    /// `EVALSHA` of script `script` (index into the start's scripts).
    Eval {
        script: usize,
        keys: Vec<Vec<u8>>,
        args: Vec<Vec<u8>>,
        /// Its reply waits for `WAIT replicas_min` (when `replicas_min` > 0).
        durable: bool,
    },
    /// `SPUBLISH channel message`, counted as a publish.
    Publish { channel: Vec<u8>, message: Vec<u8> },
}

/// `(waiter key, result)`, pushed by the link thread into the shard's completion ring.
pub(crate) type Completion = (usize, Result<Value, CmdError>);

/// What the shards read and the link thread writes.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) stats: Counters,
    /// Both connections are up (scripts loaded, subscribed, lease renewed).
    pub(crate) up: AtomicBool,
    pub(crate) generation: AtomicU64,
    /// Unix ns of the last change of `up`.
    pub(crate) since_ns: AtomicU64,
    /// Why it is down: written by the link thread; a shard reads it with `try_lock` only.
    pub(crate) reason: Mutex<String>,
    /// Where the link's connections go while up, for a shard's own connections
    /// ([`crate::pipe`]): written by the link thread at each Up; a shard reads it with
    /// `try_lock` only.
    pub(crate) direct: Mutex<Option<crate::Direct>>,
    /// The last `WAIT` was answered by fewer replicas than `replicas_min` (always false
    /// when it is 0): durable writes will likely be refused (each still waits for its
    /// own `WAIT`), so `/readyz` turns 503 until a `WAIT` is answered in full. Probed
    /// after each lease renewal too, not only by the writes.
    pub(crate) replicas_short: AtomicBool,
    /// Unix ns of the last change of `replicas_short`.
    pub(crate) replicas_since_ns: AtomicU64,
    /// The last short `WAIT`'s error: written by the link thread; `/readyz` (a shard)
    /// reads it with `try_lock` only.
    pub(crate) replicas_reason: Mutex<String>,
    /// Set by [`Node::stop`](crate::Node::stop).
    pub(crate) stopping: AtomicBool,
    /// Why the link stopped for good (another live process holds the node id).
    pub(crate) fatal: Mutex<Option<String>>,
    /// Set once the link thread has stopped for good.
    pub(crate) exited: AtomicBool,
    /// A wake of the link thread is pending (shards skip the syscall while it is).
    pub(crate) wake_pending: AtomicBool,
}

/// Counters (relaxed atomics: monitoring, not synchronisation).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) commands: AtomicU64,
    pub(crate) round_trip_us_sum: AtomicU64,
    pub(crate) round_trips: AtomicU64,
    pub(crate) round_trip_buckets: [AtomicU64; ROUND_TRIP_BUCKETS_US.len() + 1],
    pub(crate) publishes: AtomicU64,
    pub(crate) deliveries: AtomicU64,
    pub(crate) inbound_dropped: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) lease_renewals: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) probes_missed: AtomicU64,
    pub(crate) nowait_errors: AtomicU64,
    pub(crate) lost: AtomicU64,
    pub(crate) control_dropped: AtomicU64,
    pub(crate) unreplicated: AtomicU64,
    pub(crate) replies_discarded: AtomicU64,
}

impl Counters {
    pub(crate) fn round_trip(&self, us: u64) {
        self.round_trip_us_sum.fetch_add(us, Ordering::Relaxed);
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let i = ROUND_TRIP_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(ROUND_TRIP_BUCKETS_US.len());
        self.round_trip_buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, up: bool) -> Stats {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            commands: r(&self.commands),
            round_trip_us_sum: r(&self.round_trip_us_sum),
            round_trips: r(&self.round_trips),
            round_trip_buckets: self.round_trip_buckets.iter().map(r).collect(),
            publishes: r(&self.publishes),
            deliveries: r(&self.deliveries),
            inbound_dropped: r(&self.inbound_dropped),
            refused: r(&self.refused),
            lease_renewals: r(&self.lease_renewals),
            reconnects: r(&self.reconnects),
            probes_missed: r(&self.probes_missed),
            nowait_errors: r(&self.nowait_errors),
            lost: r(&self.lost),
            control_dropped: r(&self.control_dropped),
            unreplicated: r(&self.unreplicated),
            replies_discarded: r(&self.replies_discarded),
            up,
            replicas_short: false,
        }
    }
}

/// What a shard's inbound ring holds: [`Inbound`] events in the order the link thread
/// produced them.
pub(crate) type InboundItem = Inbound;

pub(crate) fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
