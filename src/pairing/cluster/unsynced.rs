//! Revocations whose cluster records Redis has not taken yet, kept per shard and sent
//! again while the link is up ([`Unsynced`], [`retry_unsynced`]); the connect's removals
//! run again when Redis did not take them all (issue 25). A part of `pairing::cluster`,
//! with its scripts and its batch splitting.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use chatixia_cluster::{ShardLink, Value};

#[cfg(doc)]
use super::{assert_all, revoke};
use super::{
    keys, one_by_one, removed, unapprove_batch_args, Removal, ASSERT_BATCH_MAX, UNAPPROVE,
};
use crate::pairing::EntryId;
use crate::shard::{Backoff, Owns, Shard};

/// Revocations made at this shard whose records the cluster has not confirmed removed
/// ([`revoke`] failed: Redis unreachable, refusing the script, not confirmed by a
/// replica, the reply lost, the link too busy): entry id → (token key, peer). Tried
/// again by [`retry_unsynced`] until [`UNAPPROVE`] answers; one shard's, in its
/// `RefCell` (`Owns`). Also whether this shard's connect-time removals
/// ([`assert_all`]) were not all taken while the link stayed up (`reassert`): the
/// server then runs them again (a `Due::reassert` of [`Unsynced::tick`]).
#[derive(Debug, Default)]
pub struct Unsynced {
    pending: BTreeMap<EntryId, (Option<String>, String)>,
    /// Where the next try starts (the entry after the last one tried): a table longer
    /// than one batch is gone through in turn, not its first batch again and again.
    next: Option<EntryId>,
    /// A retry is under way (one at a time per shard).
    retrying: bool,
    /// The connect's removals must run again.
    reassert: bool,
    /// A re-run of them is under way (one at a time per shard).
    reasserting: bool,
    /// The retries' back-off and the re-runs' (each its own: one kind taken does not
    /// cut the other's).
    retry_backoff: Backoff<UNSYNCED_BACKOFF_TICKS_MAX>,
    reassert_backoff: Backoff<UNSYNCED_BACKOFF_TICKS_MAX>,
    /// Revocations not kept because [`UNSYNCED_REVOCATIONS_MAX`] were already waiting.
    dropped: u64,
    /// Re-runs of the connect's removals started.
    reasserts: u64,
}

/// The longest back-off between two tries, in [`UNSYNCED_RETRY_INTERVAL`]s: a Redis
/// that keeps refusing (or, under Sentinel without a replica, keeps answering
/// `NOREPLICAS` after each write's `WAIT`) is asked about every 8 s instead of every
/// second, and a revocation reaches the cluster at most that long after Redis takes
/// writes again (a reconnect asserts everything at once anyway).
pub const UNSYNCED_BACKOFF_TICKS_MAX: u32 = 8;

/// What the server's tick is to start ([`Unsynced::tick`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// [`retry_unsynced`].
    pub retry: bool,
    /// The connect's removals again ([`assert_all`] of the revoked entries, then
    /// [`Unsynced::reasserted`]).
    pub reassert: bool,
}

/// Revocations one shard keeps for [`retry_unsynced`]: a few hundred bytes each (a
/// token key, a peer id), so about 1 MiB at most. Thousands waiting means Redis has
/// refused every operator's revocation for a long while; one more is then not kept
/// (counted in `chatixia_pairing_cluster_revocations_unkept_total`, logged, and said in
/// the revoke's answer): its records go at this node's next connect ([`assert_all`]),
/// and this node refuses its token meanwhile.
pub const UNSYNCED_REVOCATIONS_MAX: usize = 4_096;

/// How often a shard sends its [`Unsynced`] removals again while its link is up: a
/// revoked device may be admitted at another node until then, so seconds, not minutes;
/// each try is one script of at most [`ASSERT_BATCH_MAX`] removals.
pub const UNSYNCED_RETRY_INTERVAL: Duration = Duration::from_secs(1);

impl Unsynced {
    /// The connect's removals were not all taken while the link stayed up: run them
    /// again at a coming tick ([`assert_all`]).
    pub(super) fn reassert_later(&mut self) {
        self.reassert = true;
    }

    /// Revocations waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Revocations not kept (the table was full).
    pub fn unkept(&self) -> u64 {
        self.dropped
    }

    /// Re-runs of the connect's removals started.
    pub fn reasserts(&self) -> u64 {
        self.reasserts
    }

    /// One [`UNSYNCED_RETRY_INTERVAL`] passed: what to start now (each marked under way
    /// here, one of each at a time, none while a back-off runs).
    pub fn tick(&mut self) -> Due {
        let due = Due {
            retry: !self.pending.is_empty() && !self.retrying && self.retry_backoff.ready(),
            reassert: self.reassert && !self.reasserting && self.reassert_backoff.ready(),
        };
        self.retrying |= due.retry;
        if due.reassert {
            self.reassert = false;
            self.reasserting = true;
            self.reasserts += 1;
        }
        due
    }

    /// A re-run of the connect's removals ended; `taken`: Redis took them all (else it
    /// runs again after the back-off: `assert_all` marked it).
    pub fn reasserted(&mut self, taken: bool) {
        self.reasserting = false;
        self.reassert_backoff.outcome(taken);
    }

    /// A retry ended; `taken`: Redis took what it sent.
    fn retried(&mut self, taken: bool) {
        self.retrying = false;
        self.retry_backoff.outcome(taken);
    }

    /// Keeps a removal for [`retry_unsynced`]; `false` when the table is full (its
    /// records then go at this node's next connect: the entry may live on another
    /// shard, whose revoked entries this one cannot run again).
    pub(super) fn keep(&mut self, id: EntryId, key: Option<&str>, peer: &str) -> bool {
        if self.pending.len() >= UNSYNCED_REVOCATIONS_MAX && !self.pending.contains_key(&id) {
            self.dropped += 1;
            tracing::error!(
                entry = %id,
                "a revocation's cluster records are not kept for a retry: {UNSYNCED_REVOCATIONS_MAX} already wait; they go at this node's next connect to Redis"
            );
            return false;
        }
        self.pending
            .insert(id, (key.map(str::to_owned), peer.to_owned()));
        true
    }

    /// Up to `n` waiting removals, from where the last try stopped (then from the
    /// start).
    fn batch(&mut self, n: usize) -> Vec<Removal> {
        let from = self.next.take().unwrap_or(EntryId::from_u32(0));
        let out: Vec<_> = (self.pending.range(from..))
            .chain(self.pending.range(..from))
            .take(n)
            .map(|(id, (k, p))| (k.clone(), p.clone(), *id))
            .collect();
        if let Some((_, _, last)) = out.last() {
            self.next = last.value().checked_add(1).map(EntryId::from_u32);
        }
        out
    }

    /// `id`'s removal was taken: it leaves the table unless it was noted again
    /// differently meanwhile.
    fn done(&mut self, (key, peer, id): &Removal) {
        if self
            .pending
            .get(id)
            .is_some_and(|(k, p)| k == key && p == peer)
        {
            self.pending.remove(id);
        }
    }
}

/// Sends up to [`ASSERT_BATCH_MAX`] of this shard's [`Unsynced`] removals again, in one
/// [`UNAPPROVE`] (idempotent), if the link is up: those Redis took leave the table, and
/// the peers whose last approval went are told to the other nodes. A batch the script
/// refused is sent again one removal at a time, so that one removal Redis keeps
/// refusing does not hold the others back (not on `NOREPLICAS`: the script ran, only
/// its confirmation is missing); any other failure (no reply, not confirmed by a
/// replica) leaves them for the next try (a peer a write no replica confirmed may have
/// left unapproved is looked at, as in [`revoke`]). The server starts it when
/// [`Unsynced::tick`] says so; a try Redis did not take backs the next one off.
pub async fn retry_unsynced<S: Shard + Owns<RefCell<Unsynced>>>(sh: &S) {
    let batch = match sh.cluster() {
        Some(link) if link.is_up() => sh.owned().borrow_mut().batch(ASSERT_BATCH_MAX),
        _ => Vec::new(),
    };
    let mut taken = true;
    if let Some(link) = sh.cluster().filter(|_| !batch.is_empty()) {
        match unapprove_again(sh, link, &batch).await {
            Ok(()) => {}
            Err(Some(Value::Error(e))) if batch.len() > 1 && !e.starts_with("NOREPLICAS") => {
                taken = one_by_one(&batch, |one| unapprove_again(sh, link, one)).await;
            }
            Err(_) => taken = false,
        }
    }
    sh.owned().borrow_mut().retried(taken);
}

/// One [`UNAPPROVE`] of `batch` for [`retry_unsynced`] (not waiting while the link is
/// busy: the next try comes anyway): [`removed`]; those taken leave the table.
async fn unapprove_again<S: Shard + Owns<RefCell<Unsynced>>>(
    sh: &S,
    link: &ShardLink,
    batch: &[Removal],
) -> Result<(), Option<Value>> {
    // Busy or down: the next try (down: the next connect removes them as well).
    let reply = match link.eval_durable(UNAPPROVE.name, keys(link), unapprove_batch_args(batch)) {
        Ok(reply) => reply.await.ok(),
        Err(_) => return Err(None),
    };
    let r = removed(link, batch, reply, "on a retry").await;
    if r.is_ok() {
        let mut u = sh.owned().borrow_mut();
        batch.iter().for_each(|r| u.done(r));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_revocations_are_bounded_and_counted() {
        let mut u = Unsynced::default();
        assert_eq!(u.tick(), Due::default());
        for i in 0..UNSYNCED_REVOCATIONS_MAX as u32 {
            assert!(u.keep(EntryId::from_u32(i), Some("k"), "peer"));
        }
        // The same entry again takes no second place, even when full.
        assert!(u.keep(EntryId::from_u32(0), None, "peer"));
        assert_eq!((u.len(), u.unkept()), (UNSYNCED_REVOCATIONS_MAX, 0));
        assert!(!u.keep(EntryId::from_u32(u32::MAX), Some("k"), "peer"));
        assert_eq!((u.len(), u.unkept()), (UNSYNCED_REVOCATIONS_MAX, 1));
        assert!(u.tick().retry);
        assert!(!u.tick().retry, "one retry at a time");
    }

    #[test]
    fn tries_back_off_while_redis_does_not_take_them_and_one_runs_at_a_time() {
        let mut u = Unsynced::default();
        u.keep(EntryId::from_u32(1), None, "p");
        u.reassert = true;
        let both = Due {
            retry: true,
            reassert: true,
        };
        assert_eq!(u.tick(), both);
        assert_eq!(u.reasserts(), 1);
        // Under way: neither starts again, even when marked again meanwhile.
        u.reassert = true;
        assert_eq!(u.tick(), Due::default());
        // Not taken: the next try comes 1, 2, 4, 8, 8 ticks after the last.
        let mut gaps = Vec::new();
        for _ in 0..5 {
            u.reasserted(false);
            u.reassert = true;
            let mut n = 1;
            while !u.tick().reassert {
                n += 1;
            }
            gaps.push(n);
        }
        assert_eq!(gaps, [1, 2, 4, 8, 8]);
        // The retry's back-off is its own: it never failed, so it is tried at once.
        u.retried(true);
        assert!(u.tick().retry);
        // Taken: the next re-run at the next tick.
        u.reasserted(true);
        u.reassert = true;
        assert!(u.tick().reassert);
        // A retry taken each round does not cut the re-runs' back-off (review).
        let mut u = Unsynced {
            reassert: true,
            ..Default::default()
        };
        let mut runs = Vec::new();
        for t in 0..40u32 {
            u.keep(EntryId::from_u32(t), None, "p");
            let d = u.tick();
            if d.reassert {
                runs.push(t);
                u.reassert = true;
                u.reasserted(false);
            }
            if d.retry {
                u.pending.clear();
                u.retried(true);
            }
        }
        assert_eq!(runs, [0, 1, 3, 7, 15, 23, 31, 39]);
    }

    #[test]
    fn unsynced_batches_go_round_the_table() {
        let mut u = Unsynced::default();
        for i in [3u32, 7, 9, 12, u32::MAX] {
            assert!(u.keep(EntryId::from_u32(i), None, "p"));
        }
        let ids = |b: Vec<Removal>| {
            b.into_iter()
                .map(|(_, _, id)| id.value())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(u.batch(2)), [3, 7]);
        assert_eq!(ids(u.batch(2)), [9, 12]);
        // The last id has no successor: the next batch starts from the beginning.
        assert_eq!(ids(u.batch(2)), [u32::MAX, 3]);
        assert_eq!(ids(u.batch(2)), [7, 9]);
        // One taken leaves; one noted again differently meanwhile stays.
        u.done(&(None, "p".into(), EntryId::from_u32(12)));
        u.done(&(Some("k".into()), "p".into(), EntryId::from_u32(3)));
        assert_eq!(ids(u.batch(10)), [u32::MAX, 3, 7, 9]);
    }
}
