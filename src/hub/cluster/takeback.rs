//! Task writes that may have run in Redis but could not be counted on, waiting to be
//! taken back (issue 25). A `PUT` whose connection failed after it was sent
//! (`PutError::MaybeRan`), or that no replica confirmed (`NOREPLICAS`), is taken back at
//! once ([`take_back`]: a compare-and-set that puts each item back as it
//! was, only where the version and the record are still the ones this node wrote). But
//! the link that just failed is usually still down at that moment: the take-back then
//! does not run either, and without a second try a claim the agent never got stayed
//! `assigned` until its TTL failed it, and a task whose post was answered 503 stayed in
//! Redis to be claimed and run beside the one the client's retry posted (a hostile
//! review reproduced both by killing the nodes' Redis connections under load).
//!
//! So a take-back that did not run is kept here, per shard ([`TakeBacks`], in its
//! `RefCell`: `Owns`), and sent again while the link is up ([`retry_take_backs`], every
//! [`TAKE_BACK_RETRY_INTERVAL`], backing off while Redis does not take it). Sending it
//! again is safe however late: an item another node has changed since (claimed,
//! updated, expired) is no longer ours and stays as it is. What Redis answered leaves
//! the table (taken back, or no longer ours); what failed again waits for the next try.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::Duration;

use chatixia_cluster::ShardLink;

use super::store::{put_once, unavailable, unlimited, Put, Put1, PutError};
use crate::limits::Budget;
use crate::shard::{Backoff, Error, Owns, Shard};

/// Items one shard keeps to take back. That many waiting means Redis has been out of
/// reach through thousands of writes; a take-back past it (or past
/// [`TAKE_BACKS_BYTES_MAX`]) is not kept (logged, counted in
/// `chatixia_hub_cluster_take_backs_unkept_total`) and stays as the failed write left
/// it: an unconfirmed claim until the claims' sweep (`sweep_unconfirmed`) puts it back,
/// a post as a task of its own.
pub const TAKE_BACKS_MAX: usize = 4_096;

/// Bytes of task records the kept take-backs may hold: each item holds the task before
/// and after (a record is up to the task size bound, hundreds of KiB with the largest
/// payload, result and error), so the item count alone would allow gigabytes.
pub const TAKE_BACKS_BYTES_MAX: usize = 64 << 20;

/// How often a shard sends its waiting take-backs again while the link is up: a
/// created task waiting to be taken back may be claimed by another node meanwhile (and
/// then stays, run once), so the sooner the better; each try is one `PUT` of at most
/// [`TAKE_BACK_BATCH_MAX`] items.
pub const TAKE_BACK_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Items per try: one script of a bounded size (each item is a task's record).
pub const TAKE_BACK_BATCH_MAX: usize = 64;

/// The longest back-off between two tries, in [`TAKE_BACK_RETRY_INTERVAL`]s, while
/// Redis does not take them (the same as the pairing's revocations).
const BACKOFF_TICKS_MAX: u32 = 8;

/// The take-backs one shard keeps until Redis answers them.
#[derive(Default)]
pub struct TakeBacks {
    pending: VecDeque<Put>,
    /// Task bytes the waiting items hold ([`item_bytes`]).
    bytes: usize,
    /// Items and bytes of the try under way (out of `pending`, still counted against
    /// the bounds: they come back if the try fails).
    inflight: (usize, usize),
    /// A try is under way (one at a time per shard).
    retrying: bool,
    backoff: Backoff<BACKOFF_TICKS_MAX>,
    /// Items not kept: they did not fit [`TAKE_BACKS_MAX`] or [`TAKE_BACKS_BYTES_MAX`].
    dropped: u64,
    /// Items Redis answered on a later try (taken back, or no longer ours).
    settled: u64,
}

impl TakeBacks {
    /// Items waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Items not kept (the table was full).
    pub fn unkept(&self) -> u64 {
        self.dropped
    }

    /// Items settled by a later try.
    pub fn settled(&self) -> u64 {
        self.settled
    }

    /// Keeps the take-backs that did not run, in order, group by group: a group (one
    /// item, or the two take-backs of one unconfirmed claim, only one of which can
    /// match) is kept whole or not at all, as far as the bounds allow
    /// ([`TAKE_BACKS_MAX`], [`TAKE_BACKS_BYTES_MAX`], the try under way counted).
    pub(super) fn keep(&mut self, groups: Vec<Vec<Put>>) {
        for back in groups {
            let bytes: usize = back.iter().map(item_bytes).sum();
            if self.pending.len() + self.inflight.0 + back.len() > TAKE_BACKS_MAX
                || self.bytes + self.inflight.1 + bytes > TAKE_BACKS_BYTES_MAX
            {
                self.dropped += back.len() as u64;
                tracing::error!(
                    items = back.len(),
                    "an unconfirmed task write is not kept to be taken back: {} items ({} bytes) already wait",
                    self.pending.len() + self.inflight.0,
                    self.bytes + self.inflight.1
                );
                continue;
            }
            self.bytes += bytes;
            self.pending.extend(back);
        }
    }

    /// One [`TAKE_BACK_RETRY_INTERVAL`] passed (with the link up): whether to start a
    /// try now ([`retry_take_backs`]), marked under way here.
    pub fn tick(&mut self) -> bool {
        if self.pending.is_empty() || self.retrying || !self.backoff.ready() {
            return false;
        }
        self.retrying = true;
        true
    }

    /// The next try's items, oldest first.
    fn batch(&mut self) -> Vec<Put> {
        let n = self.pending.len().min(TAKE_BACK_BATCH_MAX);
        let b: Vec<Put> = self.pending.drain(..n).collect();
        let bytes = b.iter().map(item_bytes).sum::<usize>();
        self.bytes -= bytes;
        self.inflight = (b.len(), bytes);
        b
    }

    /// A try ended: `failed` holds its items when Redis did not answer them (they go
    /// back first, and the next try waits 1, 2, 4, … [`BACKOFF_TICKS_MAX`] ticks); else
    /// they are settled and the next try comes at the next tick.
    fn retried(&mut self, failed: Option<Vec<Put>>) {
        self.retrying = false;
        self.inflight = (0, 0);
        self.backoff.outcome(failed.is_none());
        if let Some(back) = failed {
            self.bytes += back.iter().map(item_bytes).sum::<usize>();
            for p in back.into_iter().rev() {
                self.pending.push_front(p);
            }
        }
    }

    /// Items of a try Redis answered.
    fn settle(&mut self, n: usize) {
        self.settled += n as u64;
    }
}

/// Runs a batch of [`Put`]s, durably (before a 2xx), and what became of each. `Err`
/// (503) when Redis could not be asked or did not confirm the write. A batch that ran
/// on the primary but that no replica confirmed (`NOREPLICAS`), or whose connection
/// failed after it was sent, is taken back: each item that was written (its version is
/// one past the one read) goes back as it was, so that a client's retry does not find
/// its task twice, or claimed by an agent that never got it. A take-back that cannot run
/// now (the link that failed is still down) is kept by the shard and sent again while
/// the link is up (`takeback`).
pub(super) async fn put<S: Owns<RefCell<TakeBacks>>>(
    sh: &S,
    link: &ShardLink,
    budget: &Budget,
    puts: &[Put],
) -> Result<Vec<Put1>, Error> {
    match put_once(link, budget, puts).await {
        Err(PutError::NotReplicated(e)) => {
            take_back(sh, link, puts).await;
            Err(unavailable(format!("the write was not replicated: {e}")))
        }
        Err(PutError::MaybeRan(e)) => {
            take_back(sh, link, puts).await;
            Err(e)
        }
        Err(PutError::Unavailable(e)) => Err(e),
        Ok(r) => Ok(r),
    }
}

/// Puts back each item of a batch that was written but cannot be counted on: an item
/// is ours if its version is one past the one read *and* its record is the one we
/// wrote (at that version it may instead be another node's write, after ours lost a
/// race: that one stays). Never refused by a budget. When Redis does not answer it
/// (down, the reply lost, not confirmed by a replica), the take-back is kept by the
/// shard ([`TakeBacks`]) and sent again while the link is up.
pub(super) async fn take_back<S: Owns<RefCell<TakeBacks>>>(sh: &S, link: &ShardLink, puts: &[Put]) {
    let groups = puts.iter().map(|p| vec![p.inverse()]).collect();
    take_back_these(sh, link, groups).await;
}

/// Runs the take-backs `groups` (made by [`Put::inverse`]) in one `PUT`; when Redis does
/// not answer them they are kept for [`retry_take_backs`], each group whole or not at
/// all ([`TakeBacks::keep`]).
pub(super) async fn take_back_these<S: Owns<RefCell<TakeBacks>>>(
    sh: &S,
    link: &ShardLink,
    groups: Vec<Vec<Put>>,
) {
    let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
    let back: Vec<Put> = groups.into_iter().flatten().collect();
    if let Err(e) = put_once(link, &unlimited(), &back).await {
        tracing::warn!(error = ?e, "an unconfirmed task write was not taken back yet: kept, sent again while the link is up");
        let mut rest = back.into_iter();
        let groups = sizes
            .into_iter()
            .map(|n| rest.by_ref().take(n).collect())
            .collect();
        sh.owned().borrow_mut().keep(groups);
    }
}

/// The task bytes one kept item holds (its records before and after).
fn item_bytes(p: &Put) -> usize {
    [&p.before, &p.after]
        .into_iter()
        .flatten()
        .map(crate::hub::task_bytes)
        .sum()
}

/// Sends up to [`TAKE_BACK_BATCH_MAX`] of this shard's waiting take-backs again, in one
/// `PUT` (each item a compare-and-set on the version and the record this node wrote),
/// if the link is up: Redis's answer settles each item (taken back, or changed by
/// another node since and left as it is), a failure keeps them all for the next try.
/// The server starts it when [`TakeBacks::tick`] says so.
pub async fn retry_take_backs<S: Shard + Owns<RefCell<TakeBacks>>>(sh: &S) {
    let batch = match sh.cluster() {
        Some(link) if link.is_up() => sh.owned().borrow_mut().batch(),
        _ => Vec::new(),
    };
    let mut failed = None;
    if let Some(link) = sh.cluster().filter(|_| !batch.is_empty()) {
        match put_once(link, &unlimited(), &batch).await {
            // The link's NOREPLICAS: the script ran on the primary (only a replica's
            // confirmation is missing, as it will be for every try while no replica is
            // there): settled, not tried again and again until the table is full. (A
            // failover before a replica has it loses it, as it loses any write no
            // replica confirmed. Redis's own NOREPLICAS, under min-replicas-to-write,
            // ran nothing and is a failure like any other: kept.)
            Ok(_) | Err(PutError::NotReplicated(_)) => sh.owned().borrow_mut().settle(batch.len()),
            Err(e) => {
                tracing::debug!(error = ?e, items = batch.len(), "task take-backs not taken yet");
                failed = Some(batch);
            }
        }
    }
    sh.owned().borrow_mut().retried(failed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::TaskId;

    fn item(n: u32) -> Put {
        Put::new(
            TaskId::from(format!("{n:08x}-000")),
            format!("m{n}"),
            2,
            None,
            None,
        )
    }

    fn ids(v: &[Put]) -> Vec<String> {
        v.iter().map(|p| p.member.clone()).collect()
    }

    #[test]
    fn take_backs_are_bounded_kept_in_order_and_one_try_runs_at_a_time() {
        let mut t = TakeBacks::default();
        assert!(!t.tick(), "nothing waits");
        for n in 0..TAKE_BACKS_MAX as u32 + 3 {
            t.keep(vec![vec![item(n)]]);
        }
        assert_eq!((t.len(), t.unkept()), (TAKE_BACKS_MAX, 3));
        assert!(t.tick());
        assert!(!t.tick(), "one try at a time");
        let b = t.batch();
        assert_eq!(b.len(), TAKE_BACK_BATCH_MAX);
        assert_eq!(b[0].member, "m0");
        // Not taken: back in front, in order.
        t.retried(Some(b));
        assert_eq!(t.len(), TAKE_BACKS_MAX);
        assert!(t.tick());
        let b = t.batch();
        assert_eq!(ids(&b[..2]), ["m0", "m1"]);
        t.settle(b.len());
        t.retried(None);
        assert_eq!(t.len(), TAKE_BACKS_MAX - TAKE_BACK_BATCH_MAX);
        assert_eq!(t.settled(), TAKE_BACK_BATCH_MAX as u64);
        assert_eq!(t.batch()[0].member, format!("m{TAKE_BACK_BATCH_MAX}"));
    }

    #[test]
    fn take_backs_are_bounded_by_bytes_and_kept_whole() {
        let mut t = TakeBacks::default();
        let big = || {
            let mut p = item(1);
            let mut task = crate::hub::Task::new_pending(
                Default::default(),
                "00000001-000".into(),
                crate::limits::Charge::Anonymous("127.0.0.1".into()),
                None,
                crate::time::UnixTime::from_secs(1),
            );
            task.result = "x".repeat(TAKE_BACKS_BYTES_MAX / 3);
            p.before = Some(task.clone());
            p.after = Some(task);
            p
        };
        // One item holding two records of a third of the budget each: kept.
        t.keep(vec![vec![big()]]);
        assert_eq!((t.len(), t.unkept()), (1, 0));
        // A pair that does not fit is dropped whole, not half.
        t.keep(vec![vec![item(2), big()]]);
        assert_eq!((t.len(), t.unkept()), (1, 2));
        // Small ones still fit; taking a batch gives its bytes back.
        t.keep(vec![vec![item(3)], vec![item(4)]]);
        assert_eq!(t.len(), 3);
        assert!(t.tick());
        let b = t.batch();
        assert_eq!(t.bytes, 0);
        // The try under way still counts against the bounds.
        t.keep(vec![vec![big()]]);
        assert_eq!((t.len(), t.unkept()), (0, 3));
        t.retried(Some(b));
        assert!(t.bytes > 2 * (TAKE_BACKS_BYTES_MAX / 3));
    }

    #[test]
    fn a_create_taken_back_before_it_arrived_leaves_a_tombstone_for_a_while() {
        let put = super::super::store::PUT.source;
        assert!(put.contains(&format!(
            "redis.call('PEXPIRE', tk, {})",
            super::super::TOMBSTONE_MS
        )));
    }

    #[test]
    fn tries_back_off_while_redis_does_not_take_them() {
        let mut t = TakeBacks::default();
        t.keep(vec![vec![item(1)]]);
        // Each failed try doubles the wait (in ticks), up to the maximum.
        let mut waits = Vec::new();
        for _ in 0..6 {
            let mut skipped = 0;
            while !t.tick() {
                skipped += 1;
            }
            waits.push(skipped);
            let b = t.batch();
            t.retried(Some(b));
        }
        assert_eq!(waits, [0, 0, 1, 3, 7, 7]);
        // One taken: the next try comes at the next tick.
        while !t.tick() {}
        let b = t.batch();
        t.retried(None);
        drop(b);
        t.keep(vec![vec![item(2)]]);
        assert!(t.tick());
    }
}
