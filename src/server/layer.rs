//! The server's shard context as the shard layer a service runs on
//! ([`crate::shard::Shard`]): the reactor's mailboxes, the shard's clock, the storage
//! thread, the change log.

use std::future::Future;
use std::time::Duration;

use super::{Msg, ShardCtx};
use crate::shard::{self, Durability, Error, FollowUp, LayerStats, Saved, ShardId};
use crate::time::UnixTime;
use chatixia_store::{Mutation, StoreError, WriteClass};

impl FollowUp<Msg> for reactor::Reservation<Msg> {
    fn to(&self) -> ShardId {
        reactor::Reservation::to(self)
    }

    fn tell(self, msg: Msg) {
        reactor::Reservation::tell(self, msg)
    }
}

/// The refusal of a write the store did not acknowledge (nothing of it is on disk). The
/// store being unavailable (a disk that refuses writes) is not logged here, per request:
/// the control thread logs it once per interval (`main.rs`, `StoreWatch`).
pub fn store_error(e: &StoreError) -> Error {
    if let StoreError::Full { .. } = e {
        // The size bound (`--data-bytes-max`): the store's own words name it.
        return Error::unavailable(e.to_string());
    }
    if e.is_unavailable() {
        tracing::debug!(error = %e, "write refused: state store unavailable");
        Error::unavailable(format!("{e}; try again later"))
    } else {
        tracing::error!(error = %e, "store commit failed");
        Error::unavailable("could not save the change; try again later")
    }
}

impl shard::Shard for ShardCtx {
    type Msg = Msg;
    type Room = reactor::Reservation<Msg>;

    #[inline]
    fn id(&self) -> ShardId {
        self.shard.id()
    }

    #[inline]
    fn count(&self) -> usize {
        self.shard.count()
    }

    #[inline]
    fn shard_of(&self, key: &[u8]) -> ShardId {
        self.shard.shard_of(key)
    }

    #[inline]
    fn now(&self) -> UnixTime {
        self.clock.now()
    }

    fn try_ask(&self, to: ShardId, msg: Msg) -> Result<impl Future<Output = Option<Msg>>, Msg> {
        // An ask of this shard may apply at once, inside the call: a borrow of the state
        // held here would panic, but only when the mailbox is empty. Always, in tests.
        debug_assert!(
            to != self.shard.id() || self.state.is_unborrowed(),
            "an ask of this shard made while its state is borrowed"
        );
        let ask = self.shard.try_ask(to, msg)?;
        Ok(async move { ask.await.ok() })
    }

    #[inline]
    fn try_tell(&self, to: ShardId, msg: Msg) -> Result<(), Msg> {
        self.shard.try_tell(to, msg)
    }

    fn try_reserve(&self, to: ShardId) -> Option<reactor::Reservation<Msg>> {
        self.shard.reserve(to)
    }

    #[inline]
    fn mail_waiting_from(&self, from: ShardId) -> bool {
        self.shard.has_mail_from(from)
    }

    async fn sleep(&self, d: Duration) {
        if d.is_zero() {
            reactor::yield_now().await
        } else {
            monoio::time::sleep(d).await
        }
    }

    fn stats(&self) -> &LayerStats {
        &self.layer
    }

    fn commit(
        &self,
        mutations: Vec<Mutation>,
        how: Durability,
    ) -> impl Future<Output = Result<Saved, Error>> {
        let submitted = match (&self.store, mutations.is_empty()) {
            (None, _) | (_, true) => None,
            (Some(link), false) => Some(match how {
                Durability::Retained => link.submit_retained(mutations),
                Durability::Now(class) => link.submit_as(mutations, class),
            }),
        };
        async move {
            let Some(submitted) = submitted else {
                return Ok(Saved::Durable);
            };
            let ack = submitted.map_err(|e| {
                tracing::debug!(error = %e, "store refused a write");
                Error::unavailable(format!("state store busy: {e}; try again later"))
            })?;
            match ack.await {
                Ok(()) => Ok(Saved::Durable),
                Err(e @ StoreError::Deferred { .. }) => Ok(Saved::Deferred(e.to_string())),
                Err(e) => Err(store_error(&e)),
            }
        }
    }

    fn cluster(&self) -> Option<&chatixia_cluster::ShardLink> {
        self.cluster.as_ref()
    }

    fn commit_later(&self, mutations: Vec<Mutation>) {
        if let (Some(link), false) = (&self.store, mutations.is_empty()) {
            if let Err(e) = link.submit_as(mutations, WriteClass::Progress) {
                tracing::warn!(error = %e, "store refused a housekeeping write");
            }
        }
    }
}

impl<T> shard::Owns<T> for ShardCtx
where
    super::ShardState: shard::Owns<T>,
{
    #[inline]
    fn owned(&self) -> &T {
        self.state.owned()
    }
}
