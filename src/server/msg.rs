//! Messages between shards: one request enum and one reply enum per service, each
//! service's own (`registry::ops`, `hub::ops`, `pairing::ops`, `auth::ops`,
//! `signaling::ops`). The owner shard applies a request to the state it owns (see
//! docs/ARCHITECTURE.md, "State placement") with that service's `Op::apply`, whose
//! return type is the service's reply: no request can get a reply of another kind.
//!
//! Every payload is at most one word (a box or a small copy), so a service enum is two
//! words and the message (every ring slot) three.

use std::net::IpAddr;

use crate::server::metrics::ShardMetrics;
use crate::tls::Detached;
use crate::ws::handshake;
use crate::{auth, dashboard, hub, pairing, registry, signaling};

pub enum Msg {
    Registry(registry::ops::Op),
    RegistryReply(registry::ops::Reply),
    Hub(hub::ops::Op),
    HubReply(hub::ops::Reply),
    Pairing(pairing::ops::Op),
    PairingReply(pairing::ops::Reply),
    Auth(auth::ops::Op),
    AuthReply(auth::ops::Reply),
    Signaling(signaling::ops::Op),
    SignalingReply(signaling::ops::Reply),
    /// Signaling: run this upgraded connection here (owner: `shard_of(peer_id)`). Tell.
    Adopt(Box<Adopt>),
    /// A keep-alive HTTP connection whose requests name state this shard owns: serve it
    /// here (`server::conn`'s steering). Ask → `AdoptHttpReply`.
    AdoptHttp(Box<AdoptHttp>),
    /// `None`: taken; else the connection handed back (not taken).
    AdoptHttpReply(Option<Box<AdoptHttp>>),
    /// The operator dashboard's gathers (pages, counts, events).
    Dashboard(dashboard::ops::Op),
    DashboardReply(dashboard::ops::Reply),
    /// About the shard itself (counters, test clock).
    Shard(ShardOp),
    ShardReply(ShardReply),
    /// The embedded TURN server (a revocation, told to every shard). Tell.
    Turn(crate::server::turn::ops::Op),
}

/// A connection handed to its owner shard (`server::ws`): the signaling upgrade, once
/// authorized on the shard that accepted it.
pub struct Adopt {
    /// The connection (its socket, and its TLS state if any).
    pub conn: Detached,
    /// Bytes the client sent after the upgrade request.
    pub leftover: Vec<u8>,
    pub peer_id: String,
    pub client_ip: IpAddr,
    pub upgrade: handshake::Upgrade,
    /// The `/ws-echo` test endpoint: messages are echoed, not interpreted.
    pub echo: bool,
}

/// A keep-alive HTTP connection handed to the shard its requests name (`server::conn`,
/// `server::steer`), between two requests.
pub struct AdoptHttp {
    /// The connection (its socket, and its TLS state if any).
    pub conn: Detached,
    /// Bytes of the next request already received (a request pipelined behind the
    /// last one answered), if any.
    pub leftover: Vec<u8>,
    pub peer: std::net::SocketAddr,
    /// Moves made so far (`steer::Steer::moved`).
    pub moves: u32,
}

/// Requests about a shard rather than a service.
pub enum ShardOp {
    /// The shard's counters. → `Metrics`.
    Metrics,
    /// Test clock: set the clock offset (nanoseconds) and run every periodic job once.
    /// → `ClockSet`.
    SetClock(u64),
    /// The shard's changes after this sequence (`shard::ChangesSince`). → `Changes`.
    Changes(u64),
}

pub enum ShardReply {
    Metrics(Box<ShardMetrics>),
    ClockSet,
    Changes(Box<crate::shard::Delta>),
}

macro_rules! request {
    ($op:ty => $reply:ty, $req:ident, $rep:ident) => {
        impl crate::shard::Request<Msg> for $op {
            type Reply = $reply;
            fn into_msg(self) -> Msg {
                Msg::$req(self)
            }
            fn reply(msg: Msg) -> Option<$reply> {
                match msg {
                    Msg::$rep(r) => Some(r),
                    _ => None,
                }
            }
        }
    };
}

request!(registry::ops::Op => registry::ops::Reply, Registry, RegistryReply);
request!(hub::ops::Op => hub::ops::Reply, Hub, HubReply);
request!(pairing::ops::Op => pairing::ops::Reply, Pairing, PairingReply);
request!(auth::ops::Op => auth::ops::Reply, Auth, AuthReply);
request!(signaling::ops::Op => signaling::ops::Reply, Signaling, SignalingReply);
request!(ShardOp => ShardReply, Shard, ShardReply);
request!(dashboard::ops::Op => dashboard::ops::Reply, Dashboard, DashboardReply);

impl crate::shard::Request<Msg> for crate::shard::ChangesSince {
    type Reply = crate::shard::Delta;
    fn into_msg(self) -> Msg {
        Msg::Shard(ShardOp::Changes(self.0))
    }
    fn reply(msg: Msg) -> Option<crate::shard::Delta> {
        match msg {
            Msg::ShardReply(ShardReply::Changes(d)) => Some(*d),
            _ => None,
        }
    }
}

// Every ring slot holds one `Msg`: keep it at three words.
const _: () = assert!(std::mem::size_of::<Msg>() <= 24);
