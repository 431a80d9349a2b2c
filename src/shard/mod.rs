//! The shard layer: what every service stands on, knowing nothing of any service.
//!
//! A service (registry, hub, pairing, auth, signaling, dashboard) is written against the
//! [`Shard`] trait: the shard's clock, asking the owner of a key and awaiting its reply
//! under one back-pressure policy ([`ask`]), room reserved ahead for the follow-ups a
//! workflow must send ([`reserve`]), commits to the durable store ([`Shard::commit`]),
//! and the state a service keeps on this shard ([`Owns`]); each service's owner side
//! notes what it changed in the shard's [`ChangeLog`]. Its workflows return typed
//! [`Outcome`]s and [`Error`]s; `server/` maps them to HTTP in one place.
//!
//! Two implementations: the server's shard context (reactor mailboxes, the storage
//! thread) and [`sim`], N shards in one thread on simulated time, where tests drive the
//! same workflows with full mailboxes, failing commits and chosen interleavings.
//!
//! The owner seam: [`Shard::shard_of`] names the shard that owns a key and [`ask`] sends
//! it an operation. A key owned by another node is one more kind of owner behind the same
//! two calls (issue 25), not a change in the services.

pub mod ask;
pub mod backoff;
pub mod changes;
pub mod clock;
pub mod nodes;
pub mod outcome;
pub mod paging;
pub mod sim;

use std::future::Future;
use std::time::Duration;

pub use ask::{ask, ask_all, ask_owner, reserve, settle, tell, FollowUp, Request, ASK_PATIENCE};
pub use backoff::Backoff;
pub use changes::{Change, ChangeLog, ChangesSince, Delta, Topic};
pub use clock::Clock;
pub use outcome::{Error, Kind, Outcome};
/// The hash that routes a key to its owner shard (`shard_of_hash` of it over a node's
/// shard count), for what names the owner shard at another node.
pub use reactor::stable_hash as key_hash;
pub use reactor::ShardId;

use crate::time::UnixTime;
use chatixia_store::{Mutation, WriteClass};

/// How a change is made durable ([`Shard::commit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledged once committed; refused (503) when the store cannot take it, its
    /// size bound of this class included.
    Now(WriteClass),
    /// A change already in effect that must not be lost to a disk outage (a
    /// revocation): while the store is unavailable it is kept and written on recovery
    /// ([`Saved::Deferred`]). The size bound never refuses it.
    Retained,
}

/// How a committed change stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Saved {
    /// Durable.
    Durable,
    /// Not yet durable: the store is unavailable; a [`Durability::Retained`] change is
    /// kept and written when it recovers. The reason.
    Deferred(String),
}

/// Counters of the shard layer on one shard (shown in `/metrics`).
#[derive(Debug, Default)]
pub struct LayerStats {
    /// Asks that found the target's mailbox full and waited ([`ASK_PATIENCE`]).
    pub asks_waited: std::cell::Cell<u64>,
    /// Asks given up on after [`ASK_PATIENCE`] (answered 503).
    pub asks_refused: std::cell::Cell<u64>,
    /// Workflows refused because no follow-up room could be reserved (503).
    pub reservations_refused: std::cell::Cell<u64>,
}

impl LayerStats {
    pub(crate) fn inc(c: &std::cell::Cell<u64>) {
        c.set(c.get() + 1);
    }
}

/// What a service needs from the shard it runs on (see the [module docs](self)).
pub trait Shard {
    /// The message every shard's mailbox carries (the server's names every service;
    /// a service only wraps its own operations, see [`Request`]).
    type Msg: 'static;
    /// Room for one follow-up tell ([`reserve`]).
    type Room: FollowUp<Self::Msg>;

    /// This shard's index.
    fn id(&self) -> ShardId;
    /// The number of shards.
    fn count(&self) -> usize;
    /// The shard that owns `key`.
    fn shard_of(&self, key: &[u8]) -> ShardId;
    /// The shard's clock.
    fn now(&self) -> UnixTime;

    /// Sends an ask to `to`: a future of the reply (`None`: the owner gave none), or the
    /// message back when `to`'s mailbox is full. Services use [`ask`], which applies the
    /// back-pressure policy.
    fn try_ask(
        &self,
        to: ShardId,
        msg: Self::Msg,
    ) -> Result<impl Future<Output = Option<Self::Msg>>, Self::Msg>;
    /// Sends a tell to `to` without waiting; the message back when the mailbox is full.
    fn try_tell(&self, to: ShardId, msg: Self::Msg) -> Result<(), Self::Msg>;
    /// Room for one tell to `to` later, or `None` (see [`reserve`]).
    fn try_reserve(&self, to: ShardId) -> Option<Self::Room>;
    /// Whether a message from shard `from` waits unread in this shard's mailbox: what
    /// this shard knows of `from`'s state may be older than something `from` already
    /// said. Tells from one shard arrive in the order sent. Where it cannot tell: `true`.
    fn mail_waiting_from(&self, from: ShardId) -> bool {
        let _ = from;
        true
    }
    /// Waits `d` of this shard's time.
    fn sleep(&self, d: Duration) -> impl Future<Output = ()>;
    /// The shard layer's counters.
    fn stats(&self) -> &LayerStats;

    /// Makes `mutations` durable as one atomic write. Without a store, at once.
    fn commit(
        &self,
        mutations: Vec<Mutation>,
        how: Durability,
    ) -> impl Future<Output = Result<Saved, Error>>;
    /// Submits `mutations` without waiting (housekeeping that a restart would redo).
    fn commit_later(&self, mutations: Vec<Mutation>);

    /// This node's link to the other nodes of its cluster (`--cluster`, issue 25):
    /// Redis commands and scripts, and publishes to another node's channel, none of
    /// which blocks. `None` on a node alone.
    fn cluster(&self) -> Option<&chatixia_cluster::ShardLink> {
        None
    }
}

/// State of type `T` that this shard owns, reached without a message: a service's own
/// local part of a workflow (the failure budget's view of an address, the signaling
/// connections of this shard). `T` is the service's type (usually in a `RefCell`: one
/// thread); the server and the simulator both provide it.
pub trait Owns<T> {
    fn owned(&self) -> &T;
}

/// Fills `buf` from the OS; `Err` (500) when it has no randomness.
pub fn random(buf: &mut [u8]) -> Result<(), Error> {
    getrandom::getrandom(buf).map_err(|e| {
        tracing::error!(error = %e, "getrandom failed");
        Error::internal("no randomness available")
    })
}

/// Fills `buf` from the OS for the services' `Rng` closures; on failure the buffer is
/// left as is (callers check with [`random`] first).
pub fn fill_random(buf: &mut [u8]) {
    if getrandom::getrandom(buf).is_err() {
        tracing::error!("getrandom failed");
    }
}
