//! A chatixia-core node's link to Redis (issue 25, docs/ARCHITECTURE.md "Cluster").
//!
//! One **link thread** per node (a `mio` poll loop: no busy wait, no blocking on a
//! shard's behalf) holds the node's connections to Redis: one for commands
//! (pipelined: every shard's commands go out in order on it, replies come back in that
//! order) and one subscribed to the node's own sharded pub/sub channel
//! (`SSUBSCRIBE {prefix}n:{node}`). Shards never touch a socket of it: a shard submits a
//! command through its [`ShardLink`] without blocking and awaits a future woken on its own
//! thread (the store's pattern: a bounded queue to the thread, a ring of completions back
//! and the shard's doorbell). Messages published to this node arrive on the shard that
//! owns their route key (the `route` function given at start: the reactor's
//! `shard_of`) as [`Inbound::Message`].
//!
//! The link thread also keeps the node's **lease**: a sorted set `{prefix}nodes` scored
//! by each node's lease expiry (Redis's own clock, `TIME`), renewed every `lease / 3`;
//! the nodes whose lease runs are the live ones ([`Inbound::Members`]). A node that dies
//! loses its lease after `lease` and is then reported as **gone** (still in the set, its
//! lease run out) by every renewal until the server removes it (`ZREM {prefix}nodes
//! NODE`, by [`ShardLink::command_nowait`]) once it has cleaned up what that node held:
//! the link never removes another node itself, so a server that crashes mid-cleanup
//! leaves the node listed as gone and the cleanup is done again. [`Node::stop`] hands
//! this node's lease back (`ZREM`), so a node that stops cleanly just leaves `live`.
//!
//! A node id's lease belongs to one **incarnation** (128 random bits per [`Node::start`],
//! in `{prefix}holders`): the lease script never renews or takes an id whose lease runs
//! under another incarnation. Refused before it was ever up, the link waits for that
//! lease to run out (a process that died without handing it back) and stops for good
//! ([`Node::fatal`]) as soon as it sees it renewed (another live process has this id);
//! refused once up (paused past its lease, the id taken meanwhile), it stays down and
//! retries. The connect and stop scripts run only while this incarnation holds the id.
//!
//! Bounds: shards submit through one bounded queue ([`REQUEST_QUEUE_MAX`]; full →
//! [`Refused::Busy`]); a shard has at most `inflight_max` commands in flight (its
//! completion ring holds that many, so it never overflows); its inbound ring holds
//! `inbound_max` messages (past it a message is dropped and counted) plus
//! [`CONTROL_RESERVE`] slots kept for Up/Down/Members; the link keeps at most
//! [`REPLY_BYTES_MAX`] of a reply (a larger one is read past and its command gets a
//! [`DISCARDED`] error reply; the connection carries on). A shard's doorbell is rung once per batch of the loop.
//!
//! Faults: a connection that fails is reconnected with backoff (100 ms doubling to 5 s);
//! meanwhile commands are refused ([`Refused::Down`]) and every shard is told
//! ([`Inbound::Down`]); once both connections are back, the scripts are loaded again, the
//! subscription and the lease re-asserted and every shard told ([`Inbound::Up`] with a new
//! generation) so that the services re-assert what they hold. A subscription that
//! silently stops delivering is detected: the link publishes a probe to its own channel
//! every `probe_interval`, and one not seen within `3 × probe_interval` reconnects.
//!
//! **Sentinel** (`redis+sentinel://S1,S2/MASTER`): before each connect the link asks the
//! Sentinels in order (`SENTINEL get-master-addr-by-name`, each bounded by the connect
//! and command timeouts) for the primary, connects both connections there and checks
//! `ROLE` says `master` (a replica, or a primary just demoted, fails the connect: backoff
//! and ask again). It also keeps a connection to the Sentinel that answered subscribed to
//! `+switch-master`: when the Sentinels promote a replica the link reconnects at once
//! instead of at its next backoff step. Worst case to follow a failover: Sentinel's
//! `down-after-milliseconds` + its failover (promotion, about a second or two, plus up
//! to 1 s of random delay before it starts) + one connect; without the watch (its
//! Sentinel gone) + one backoff step (at most 5 s). Measured on loopback with
//! down-after 1 s: the link is up on the promoted replica about 3.1 s after `kill -9` of
//! the primary, within 5 ms of `+switch-master`.
//!
//! **Durable writes** ([`ShardLink::eval_durable`]): the script's reply resolves only once
//! `WAIT replicas_min wait_timeout` (on the same connection, after it) reports that many
//! replicas, else with a `NOREPLICAS …` error value. One `WAIT` is in flight at a time
//! and covers every durable eval written before it; a `WAIT` holds the connection, so
//! what is written behind it gets `wait_timeout` more before the command timeout or the
//! probe declares the link dead, and `wait_timeout` must stay under two thirds of the
//! lease.
//!
//! Nothing here knows chatixia: keys, scripts and message bodies are the services'.

mod channel;
mod conn;
mod lease;
pub mod pipe;
#[doc(hidden)]
pub mod resp;
mod shard;
mod thread;
mod url;

/// Entry points for the fuzz targets (`fuzz/fuzz_targets/cluster_inbound.rs`): the reply
/// decoder the link thread runs on whatever Redis (or an impostor) sends.
#[doc(hidden)]
pub mod fuzzing {

    /// [`crate::Value`] of the first complete reply in `buf` and the bytes it took.
    pub fn decode_reply(buf: &[u8]) -> Result<Option<(crate::Value, usize)>, String> {
        crate::resp::decode_reply(buf)
    }

    /// What a shard's own subscription ([`crate::pipe`]) does with the replies it
    /// decodes: each message of its channel split into route key and body (a probe, or a
    /// message too short for its key, is nothing).
    pub fn pipe_messages(buf: &[u8], channel: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        crate::pipe::fuzz_messages(buf, channel)
    }
}

pub use conn::{DISCARDED, REPLY_BYTES_MAX};
pub use shard::{Reply, ShardLink};
pub use thread::{Node, CONTROL_RESERVE, REQUEST_QUEUE_MAX};
pub use url::{
    parse_url, redact_url, Addr, RedisUrl, Sentinels, DEFAULT_PORT, DEFAULT_SENTINEL_PORT,
    SENTINELS_MAX,
};

use std::time::Duration;

/// Wakes a shard from the link thread. Must not block: the link thread calls it after
/// publishing completions or inbound messages for the shard.
pub trait Doorbell: Send + Sync + 'static {
    fn ring(&self);
}

/// How a node links to Redis.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub url: RedisUrl,
    /// This node's name (`--node-id`): its channel is `{prefix}n:{node_id}`.
    pub node_id: String,
    /// Namespace of every key and channel (`chx:`), so one Redis can hold several meshes.
    pub prefix: String,
    /// The node's lease: a node not renewing it for this long is gone.
    pub lease: Duration,
    /// How often the subscription is probed.
    pub probe_interval: Duration,
    /// Commands one shard may have in flight (submitted, reply not yet taken): past it a
    /// submission is refused ([`Refused::Busy`]), the caller answers 503.
    pub inflight_max: usize,
    /// Inbound messages waiting for one shard: past it a message is dropped and counted.
    pub inbound_max: usize,
    /// Bytes of the inbound messages waiting for one shard (keys and bodies): a message
    /// may be up to 64 KiB (a relayed frame), so `inbound_max` alone would let a flood
    /// from the other nodes queue gigabytes for a slow shard. Past it a message is
    /// dropped and counted (`inbound_dropped`).
    pub inbound_bytes_max: usize,
    /// A connection whose oldest command in flight has waited this long for its reply is
    /// declared dead: it is reconnected and the commands in flight fail
    /// ([`CmdError::Lost`]). Also bounds each step of connecting. A Redis that is stopped
    /// (SIGSTOP, a hung host) so never hangs a shard's request for longer.
    pub command_timeout: Duration,
    /// How long a TCP connect to Redis (or to a Sentinel) may take.
    pub connect_timeout: Duration,
    /// Replicas that must acknowledge a durable write ([`ShardLink::eval_durable`])
    /// before its reply resolves (`WAIT replicas_min wait_timeout`): 0 sends no `WAIT`
    /// (a durable eval is a plain one). [`ClusterConfig::new`] takes 1 for a
    /// `redis+sentinel://` URL, 0 for `redis://`.
    pub replicas_min: u32,
    /// How long a `WAIT` waits for `replicas_min` acknowledgements; fewer by then resolve
    /// the durable writes it covers with a `NOREPLICAS …` error value. A `WAIT` holds the
    /// command connection (every command behind it waits, up to this long, while a
    /// replica is missing), so keep it short; commands written behind one get this
    /// much more than `command_timeout` for their reply.
    pub wait_timeout: Duration,
    /// Scripts run on every connect, after the scripts are loaded and the lease taken,
    /// and before the shards are told [`Inbound::Up`] (a node clearing its stale entries
    /// before its shards assert what they hold). Each runs only while this incarnation
    /// holds the node id's lease (a process refused the id removes nothing of the
    /// holder's). A script that fails fails the connect.
    pub on_connect: Vec<OnConnect>,
    /// Scripts run by [`Node::stop`] after the commands already submitted and before the
    /// lease is handed back (a node removing what it holds); as `on_connect`, only while
    /// this incarnation holds the id.
    pub on_stop: Vec<OnConnect>,
}

/// A script run by the link itself ([`ClusterConfig::on_connect`], `on_stop`): its name
/// (one of the scripts given at start), keys and args.
pub type OnConnect = (&'static str, Vec<Vec<u8>>, Vec<Vec<u8>>);

/// Picks the shard an inbound message goes to, by its route key (the reactor's
/// `shard_of` over the node's shard count).
pub type Route = std::sync::Arc<dyn Fn(&[u8]) -> usize + Send + Sync>;

/// The longest route key a message can carry (65534 bytes): a message on a channel is
/// framed `[u16 big-endian key length][key][body]`, and the length 65535
/// ([`LINK_KEY_LEN`]) marks the link's own messages (probes, hellos), so that no route
/// key a service uses (the empty one included: an agent may have the id `""`) is taken
/// for one of them. [`ShardLink::publish`] refuses a longer key.
pub const ROUTE_KEY_BYTES_MAX: usize = u16::MAX as usize - 1;

/// The key-length field of the link's own messages (no key follows): a length no route
/// key can have ([`ROUTE_KEY_BYTES_MAX`]).
pub const LINK_KEY_LEN: u16 = u16::MAX;

/// Frames a message for `route_key` as the link does (`[u16 key length][key][body]`):
/// for services whose scripts publish (the framing is built before the script runs).
/// `None` when the key is longer than [`ROUTE_KEY_BYTES_MAX`].
/// Whether an error value answering a durable write is the link's own `NOREPLICAS`
/// (its `WAIT` after the write saw fewer replicas than required: the write **ran** on
/// the primary), as opposed to Redis's refusal under `min-replicas-to-write`
/// (`NOREPLICAS Not enough good replicas to write…`: **nothing ran**). The link's
/// errors go on with a count or `WAIT` (`thread`'s `Origin::Wait`).
pub fn ran_unreplicated(error: &str) -> bool {
    error
        .strip_prefix("NOREPLICAS ")
        .is_some_and(|r| r.starts_with("WAIT") || r.starts_with(|c: char| c.is_ascii_digit()))
}

#[cfg(test)]
mod ran_unreplicated_tests {
    #[test]
    fn the_links_noreplicas_ran_and_redis_own_did_not() {
        assert!(super::ran_unreplicated(
            "NOREPLICAS 0 of the 1 replicas required acknowledged the write within wait_timeout (500 ms): it ran on the primary and may be lost if the primary fails"
        ));
        assert!(super::ran_unreplicated("NOREPLICAS WAIT failed: ERR x"));
        assert!(super::ran_unreplicated("NOREPLICAS WAIT answered Nil"));
        assert!(!super::ran_unreplicated(
            "NOREPLICAS Not enough good replicas to write. script: 1f2e…, on @user_script:12."
        ));
        assert!(!super::ran_unreplicated("ERR something"));
    }
}

pub fn frame(route_key: &[u8], body: &[u8]) -> Option<Vec<u8>> {
    if route_key.len() > ROUTE_KEY_BYTES_MAX {
        return None;
    }
    let len = u16::try_from(route_key.len()).ok()?;
    let mut v = Vec::with_capacity(2 + route_key.len() + body.len());
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(route_key);
    v.extend_from_slice(body);
    Some(v)
}

/// The key and channel namespace: one Redis can hold several meshes by prefix.
pub const DEFAULT_PREFIX: &str = "chx:";
/// A node that stops renewing is gone after this: long enough to ride out a Redis
/// failover or a paused process (a few seconds), short enough that a dead node's peers
/// leave the others' lists soon. Renewed every third of it, so two renewals may fail.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// A subscription that stopped delivering is found within 3 × this (6 s), for one tiny
/// publish per node every 2 s.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// Commands one shard may have in flight: far above what a shard's requests need at
/// sub-millisecond Redis round trips (4096 in flight at 0.2 ms each is 20 k commands/s per
/// shard), small enough that a stalled Redis holds a bounded amount per shard (each
/// slot is one small waiter).
pub const DEFAULT_INFLIGHT_MAX: usize = 4096;
/// Messages waiting for one shard: a second of a busy shard's cross-node relays; the
/// ring is allocated up front (one pointer-sized slot per message plus its bytes while
/// queued).
pub const DEFAULT_INBOUND_MAX: usize = 65_536;
/// Bytes of inbound messages waiting for one shard: a second of a busy shard's
/// cross-node relays at ~1 KiB each (an SDP or a candidate) fits several times over,
/// and a flood of 64 KiB frames stops at 32 MiB per shard.
pub const DEFAULT_INBOUND_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Redis answers in well under a millisecond; 3 s without any reply on a connection is
/// a stopped or unreachable Redis, not a slow one (a slow script is bounded by Redis's
/// own `busy-reply-threshold`, 5 s, after which it answers BUSY).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// A TCP connect on a LAN takes a millisecond; 1 s without one is an unreachable host
/// (then backoff and try again) rather than a slow one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A replica on a LAN acknowledges a write within a millisecond or two (the primary asks
/// for the acknowledgement as `WAIT` starts); 500 ms without one is a replica missing
/// or far behind, and holds the node's command pipeline no longer than that per `WAIT`.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_millis(500);

impl ClusterConfig {
    /// A node `node_id` linking to `url`, every other setting its default
    /// (`replicas_min` 1 in sentinel mode, 0 otherwise).
    pub fn new(url: RedisUrl, node_id: impl Into<String>) -> Self {
        let replicas_min = u32::from(url.sentinels().is_some());
        ClusterConfig {
            url,
            node_id: node_id.into(),
            prefix: DEFAULT_PREFIX.into(),
            lease: DEFAULT_LEASE,
            probe_interval: DEFAULT_PROBE_INTERVAL,
            inflight_max: DEFAULT_INFLIGHT_MAX,
            inbound_max: DEFAULT_INBOUND_MAX,
            inbound_bytes_max: DEFAULT_INBOUND_BYTES_MAX,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            replicas_min,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            on_connect: Vec::new(),
            on_stop: Vec::new(),
        }
    }
}

/// A RESP reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Nil,
    Int(i64),
    Bulk(Vec<u8>),
    Simple(String),
    Array(Vec<Value>),
    /// An error reply (`-ERR …`): the command ran and Redis refused it.
    Error(String),
}

/// Why a command was not submitted (nothing was sent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The link is down (Redis unreachable); the reason.
    Down(String),
    /// This shard's commands in flight are at `inflight_max`.
    Busy,
    /// The link thread has stopped.
    Closed,
}

/// Why a submitted command has no reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CmdError {
    /// The connection failed after the command was written: it may or may not have run.
    Lost(String),
    /// The link thread has stopped.
    Closed,
}

/// What the link thread tells a shard, taken by [`ShardLink::on_doorbell`].
#[derive(Debug)]
pub enum Inbound {
    /// A message published to this node for a key this shard owns.
    Message { route_key: Vec<u8>, body: Vec<u8> },
    /// The live nodes changed (this node included while its lease runs): all of them,
    /// and those whose lease ran out since the last report.
    Members {
        live: Vec<String>,
        gone: Vec<String>,
    },
    /// The link is up again (or for the first time), generation `n`: re-assert.
    Up { generation: u64 },
    /// The link is down; the reason.
    Down { reason: String },
}

/// A Lua script, loaded by the link thread on every connect and run by `EVALSHA`.
#[derive(Clone, Debug)]
pub struct Script {
    pub name: &'static str,
    pub source: &'static str,
}

/// The link's counters (relaxed atomics), for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub commands: u64,
    /// Sum and count of command round trips (submission to completion), microseconds.
    pub round_trip_us_sum: u64,
    pub round_trips: u64,
    /// Round trips by bucket (upper bounds in [`ROUND_TRIP_BUCKETS_US`]; the last is +Inf).
    pub round_trip_buckets: Vec<u64>,
    pub publishes: u64,
    pub deliveries: u64,
    pub inbound_dropped: u64,
    pub refused: u64,
    pub lease_renewals: u64,
    pub reconnects: u64,
    pub probes_missed: u64,
    /// Replies to `_nowait` commands (and publishes) that were error replies.
    pub nowait_errors: u64,
    /// Commands in flight when a connection failed (each failed with [`CmdError::Lost`]).
    pub lost: u64,
    /// Up/Down/Members events dropped because a shard's inbound ring was full.
    pub control_dropped: u64,
    /// Durable writes resolved with `NOREPLICAS`: their `WAIT` saw fewer than
    /// `replicas_min` replicas acknowledge them within `wait_timeout`.
    pub unreplicated: u64,
    /// Replies over [`REPLY_BYTES_MAX`] read past and dropped (their command got a
    /// `CHXDISCARDED` error reply; a pushed message was dropped, also counted in
    /// `inbound_dropped`).
    pub replies_discarded: u64,
    pub up: bool,
    /// The last `WAIT` was answered by too few replicas (see [`Health::replicas_short`]).
    pub replicas_short: bool,
}

/// Upper bounds of the round-trip histogram buckets, microseconds.
pub const ROUND_TRIP_BUCKETS_US: &[u64] = &[100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000];

/// The node's health as the control thread and `/readyz` see it.
#[derive(Clone, Debug)]
pub struct Health {
    pub up: bool,
    /// Unix nanoseconds since when it is in this state.
    pub since_ns: u64,
    pub reason: Option<String>,
    pub generation: u64,
    /// While up: the last `WAIT` was answered by fewer than `replicas_min` replicas (its
    /// error, and since when, Unix ns): durable writes are refused.
    pub replicas_short: Option<(String, u64)>,
}

/// What a shard needs to build its [`ShardLink`] on its own thread (Send).
pub struct LinkParts(pub(crate) thread::Parts);

/// The Redis the link is connected to (as of its last Up) and how to log in there: what
/// a shard needs to open its own connections ([`pipe`]).
#[derive(Clone, Debug)]
pub struct Direct {
    /// The address the link's command connection reached (resolved by the link thread:
    /// a shard never resolves a name).
    pub addr: std::net::SocketAddr,
    /// `AUTH` when the URL has a password.
    pub login: Vec<Vec<Vec<u8>>>,
    pub db: u32,
    /// The link's generation when it connected there: a newer one (a reconnect, a
    /// failover) means the shard's connections must be opened again.
    pub generation: u64,
}

impl std::fmt::Debug for LinkParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkParts({})", self.0.shard)
    }
}

#[cfg(test)]
mod frame_tests {
    use super::*;

    #[test]
    fn no_route_key_is_framed_as_the_links_own_message() {
        // The empty key (an agent `""`) is a key of length 0.
        assert_eq!(frame(b"", b"m"), Some(vec![0, 0, b'm']));
        let longest = vec![b'k'; ROUTE_KEY_BYTES_MAX];
        let f = frame(&longest, b"").unwrap();
        assert_ne!(u16::from_be_bytes([f[0], f[1]]), LINK_KEY_LEN);
        assert_eq!(frame(&vec![b'k'; ROUTE_KEY_BYTES_MAX + 1], b""), None);
    }
}
