//! Asking the owner of a key, and the one back-pressure policy for a full mailbox.
//!
//! * [`ask`] sends an operation to a shard and awaits its typed reply. A full mailbox is
//!   waited on: a few yields, then sleeps doubling from 1 ms to 32 ms, for at most
//!   [`ASK_PATIENCE`] in all; then the ask gives up with a 503 naming the shard. Both
//!   are counted ([`LayerStats`](super::LayerStats)).
//! * [`reserve`] takes room for a follow-up before a workflow changes anything: putting
//!   back a change the store did not take, or marking one saved, must never be refused
//!   by a burst, or state would be left half done. The room is held in the target's
//!   mailbox (`reactor::Shard::reserve`); without any, the workflow is refused (503) up
//!   front, and a [`FollowUp::tell`] into it never fails.
//!
//! There is no other way for a service to reach another shard.

use std::time::Duration;

use super::outcome::Error;
use super::{LayerStats, Shard, ShardId};

/// A service's operation and its reply: how it travels in the shard message.
pub trait Request<M>: Sized {
    type Reply;
    fn into_msg(self) -> M;
    /// The typed reply; `None` for a reply of another kind (a bug, never input).
    fn reply(msg: M) -> Option<Self::Reply>;
}

/// Longest an ask or tell waits for room in a full mailbox before it gives up (503). A
/// mailbox stays full only while its shard is overloaded; a second of patience rides out
/// a burst (one shard answering a scatter-gather from every connection at once) while a
/// client still gets an answer well within its own timeouts.
pub const ASK_PATIENCE: Duration = Duration::from_secs(1);

/// Yields (no timer, no syscall) before the first sleep: a mailbox is usually drained
/// within a turn of its shard's loop.
const FULL_YIELDS_MAX: u32 = 16;
/// First and longest sleep between retries while a mailbox stays full.
const FULL_SLEEP_FIRST: Duration = Duration::from_millis(1);
const FULL_SLEEP_MAX: Duration = Duration::from_millis(32);

/// The wait between tries on a full mailbox (see the [module docs](self)).
struct Patience {
    tries: u32,
    sleep: Duration,
    waited: Duration,
}

impl Patience {
    fn new() -> Self {
        Patience {
            tries: 0,
            sleep: FULL_SLEEP_FIRST,
            waited: Duration::ZERO,
        }
    }

    /// Waits before the next try; `false` when patience is spent.
    async fn wait<S: Shard>(&mut self, sh: &S) -> bool {
        if self.tries == 0 {
            LayerStats::inc(&sh.stats().asks_waited);
        }
        self.tries += 1;
        if self.tries <= FULL_YIELDS_MAX {
            sh.sleep(Duration::ZERO).await;
            return true;
        }
        if self.waited >= ASK_PATIENCE {
            LayerStats::inc(&sh.stats().asks_refused);
            return false;
        }
        sh.sleep(self.sleep).await;
        self.waited += self.sleep;
        self.sleep = (self.sleep * 2).min(FULL_SLEEP_MAX);
        true
    }
}

fn typed<M, O: Request<M>>(to: ShardId, reply: Option<M>) -> Result<O::Reply, Error> {
    let msg = reply.ok_or_else(|| Error::internal(format!("shard {to} gave no reply")))?;
    O::reply(msg).ok_or_else(|| {
        tracing::error!(shard = to, "a reply of the wrong kind");
        Error::internal("internal error")
    })
}

/// Asks shard `to` to apply `op` and returns its reply, under the policy of the
/// [module docs](self).
pub async fn ask<S: Shard, O: Request<S::Msg>>(
    sh: &S,
    to: ShardId,
    op: O,
) -> Result<O::Reply, Error> {
    let mut msg = op.into_msg();
    let mut patience = Patience::new();
    loop {
        match sh.try_ask(to, msg) {
            Ok(reply) => return typed::<S::Msg, O>(to, reply.await),
            Err(back) => {
                msg = back;
                if !patience.wait(sh).await {
                    return Err(Error::overloaded(to));
                }
            }
        }
    }
}

/// Asks the shard that owns `key` ([`Shard::shard_of`]).
pub async fn ask_owner<S: Shard, O: Request<S::Msg>>(
    sh: &S,
    key: &str,
    op: O,
) -> Result<O::Reply, Error> {
    ask(sh, sh.shard_of(key.as_bytes()), op).await
}

/// Asks every shard (`make(shard)`) at once and returns the replies in shard order; the
/// first failure is the answer.
pub async fn ask_all<S: Shard, O: Request<S::Msg>>(
    sh: &S,
    make: impl Fn(ShardId) -> O,
) -> Result<Vec<O::Reply>, Error> {
    let n = sh.count();
    // Send to all first so the shards work in parallel; a full mailbox is retried
    // afterwards under the policy.
    let mut sent = Vec::with_capacity(n);
    for s in 0..n {
        sent.push(sh.try_ask(s, make(s).into_msg()));
    }
    let mut out = Vec::with_capacity(n);
    for (s, r) in sent.into_iter().enumerate() {
        let reply = match r {
            Ok(reply) => typed::<S::Msg, O>(s, reply.await)?,
            Err(_) => ask(sh, s, make(s)).await?,
        };
        out.push(reply);
    }
    Ok(out)
}

/// Sends `op` to shard `to` without awaiting a reply, under the same policy as [`ask`].
pub async fn tell<S: Shard, O: Request<S::Msg>>(sh: &S, to: ShardId, op: O) -> Result<(), Error> {
    let mut msg = op.into_msg();
    let mut patience = Patience::new();
    loop {
        match sh.try_tell(to, msg) {
            Ok(()) => return Ok(()),
            Err(back) => {
                msg = back;
                if !patience.wait(sh).await {
                    return Err(Error::overloaded(to));
                }
            }
        }
    }
}

/// Room for one follow-up to a shard, taken by [`reserve`] before a workflow changes
/// anything; [`tell`](Self::tell) into it never fails. Dropped unused, the room goes
/// back.
pub trait FollowUp<M> {
    /// The shard the room is on.
    fn to(&self) -> ShardId;
    /// Sends `msg` into the room.
    fn tell(self, msg: M);
}

/// Reserves room for one follow-up to shard `to` (see the [module docs](self)); 503
/// when none is left there, before anything was changed.
pub fn reserve<S: Shard>(sh: &S, to: ShardId) -> Result<S::Room, Error> {
    sh.try_reserve(to).ok_or_else(|| {
        LayerStats::inc(&sh.stats().reservations_refused);
        Error::overloaded(to)
    })
}

/// Sends `op` into reserved room.
pub fn settle<M, O: Request<M>, R: FollowUp<M>>(room: R, op: O) {
    room.tell(op.into_msg());
}
