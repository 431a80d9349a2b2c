//! A chatixia-core node's link to Redis (issue 25, docs/ARCHITECTURE.md "Cluster").
//!
//! One **link thread** per node holds the node's connections to Redis: one for commands
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
//! loses its lease after `lease`.
//!
//! Faults: a connection that fails is reconnected with backoff (100 ms doubling to 5 s);
//! meanwhile commands are refused ([`Refused::Down`]) and every shard is told
//! ([`Inbound::Down`]); once both connections are back, the scripts are loaded again, the
//! subscription and the lease re-asserted and every shard told ([`Inbound::Up`] with a new
//! generation) so that the services re-assert what they hold. A subscription that
//! silently stops delivering is detected: the link publishes a probe to its own channel
//! every `probe_interval`, and one not seen within `3 × probe_interval` reconnects.
//!
//! Nothing here knows chatixia: keys, scripts and message bodies are the services'.

mod url;

pub use url::{parse_url, RedisUrl};

use std::sync::Arc;
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
    /// Scripts run on every connect before [`Inbound::Up`] (a node clearing its stale
    /// entries before its shards assert what they hold).
    pub on_connect: Vec<OnConnect>,
}

/// Picks the shard an inbound message goes to, by its route key.
pub type Route = Arc<dyn Fn(&[u8]) -> usize + Send + Sync>;

/// A script run on every connect, before the shards are told the link is up: its name
/// (one of the scripts given at start), keys and args.
pub type OnConnect = (&'static str, Vec<Vec<u8>>, Vec<Vec<u8>>);

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
    pub up: bool,
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
}

/// The link thread, held by the process (Send + Sync).
pub struct Node {
    _inner: Arc<()>,
}

/// What a shard needs to build its [`ShardLink`] on its own thread (Send).
pub struct LinkParts {
    _private: (),
}

/// One shard's side of the link (`!Send`: build it on the shard's thread).
#[derive(Clone)]
pub struct ShardLink {
    _private: std::rc::Rc<()>,
}

// --- integrator's stand-ins until the link lands (replaced wholesale by the i25-cluster merge) ---
impl ClusterConfig {
    pub fn new(url: RedisUrl, node_id: String) -> Self {
        ClusterConfig {
            url,
            node_id,
            prefix: "chx:".into(),
            lease: Duration::from_secs(10),
            probe_interval: Duration::from_secs(2),
            inflight_max: 4096,
            inbound_max: 65536,
            on_connect: Vec::new(),
        }
    }
}

/// The future of a command's reply.
pub struct Reply;
impl std::future::Future for Reply {
    type Output = Result<Value, CmdError>;
    fn poll(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::task::Poll::Ready(Err(CmdError::Closed))
    }
}

impl Node {
    pub fn start(
        _cfg: ClusterConfig,
        _scripts: Vec<Script>,
        _bells: Vec<Arc<dyn Doorbell>>,
        _route: Route,
    ) -> std::io::Result<(Node, Vec<LinkParts>)> {
        Err(std::io::Error::other("not yet"))
    }
    pub fn stats(&self) -> Stats {
        Stats::default()
    }
    pub fn health(&self) -> Health {
        Health {
            up: false,
            since_ns: 0,
            reason: None,
            generation: 0,
        }
    }
    pub fn stop(&self, _within: Duration) {}
}

impl ShardLink {
    pub fn new(_parts: LinkParts) -> ShardLink {
        ShardLink {
            _private: std::rc::Rc::new(()),
        }
    }
    pub fn node_id(&self) -> &str {
        ""
    }
    pub fn prefix(&self) -> &str {
        ""
    }
    pub fn is_up(&self) -> bool {
        false
    }
    pub fn generation(&self) -> u64 {
        0
    }
    pub fn live_nodes(&self) -> Vec<String> {
        Vec::new()
    }
    pub fn command(&self, _args: Vec<Vec<u8>>) -> Result<Reply, Refused> {
        Err(Refused::Closed)
    }
    pub fn command_nowait(&self, _args: Vec<Vec<u8>>) -> Result<(), Refused> {
        Err(Refused::Closed)
    }
    pub fn eval(&self, _s: &str, _k: Vec<Vec<u8>>, _a: Vec<Vec<u8>>) -> Result<Reply, Refused> {
        Err(Refused::Closed)
    }
    pub fn eval_nowait(&self, _s: &str, _k: Vec<Vec<u8>>, _a: Vec<Vec<u8>>) -> Result<(), Refused> {
        Err(Refused::Closed)
    }
    pub fn publish(&self, _node: &str, _key: &[u8], _body: &[u8]) -> Result<(), Refused> {
        Err(Refused::Closed)
    }
    pub fn on_doorbell(&self, _f: impl FnMut(Inbound)) -> usize {
        0
    }
    pub fn inflight(&self) -> usize {
        0
    }
}
