//! What one shard's signaling must tell the other nodes of a cluster (issue 25), noted by
//! the connection table as it happens, sans-IO: a peer of this node joined the directory
//! (authorized, in its mesh) or left it, or a relay's target is not on this node. The
//! shard's directory task ([`super::remote::run`]) drains it into the cluster link.
//! Without `--cluster` the table keeps no outbox and notes nothing.

use std::collections::VecDeque;
use std::task::Waker;

/// Items waiting for the directory task. It drains the outbox every time it is woken (a
/// turn of the shard's loop), so what waits is what one turn produced, or, while the
/// link is down, the joins and leaves since (relays are dropped then); a burst beyond
/// this (thousands of connects, or relays to remote peers, within one turn; or an outage
/// that long) is refused: a relay is dropped and counted as refused, a join or leave
/// sets [`Outbox::resync`] (the shard asserts all its peers again: a peer whose join
/// was refused so is asserted, which takes no entry from another live node).
pub const OUTBOX_ITEMS_MAX: usize = 16 * 1024;

/// Bytes of relayed frames the outbox holds: frames are up to `--ws-message-max` (64 KiB)
/// each, so the item count alone would let a relay flood to remote peers hold a gigabyte
/// per shard while Redis is slow. Past it a relay is refused like one past
/// [`OUTBOX_ITEMS_MAX`] (dropped, counted as refused).
pub const OUTBOX_BYTES_MAX: usize = 16 * 1024 * 1024;

/// One thing to tell the cluster.
#[derive(Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// `peer` of `mesh` came here (connected and authorized, or approved while
    /// connected) and may signal: its entry is set to this node, whichever node held it
    /// (that node closes its older connection, 4000).
    Join {
        peer: Box<str>,
        mesh: Option<Box<str>>,
    },
    /// `peer` of `mesh` has been held here since before the link came back: never noted
    /// by the table, built by the directory task's resync for every authorized peer
    /// without a `Join` waiting. Its entry is set to this node unless another live node
    /// holds the peer (a newer connection went there while this node was cut off, or
    /// paused): then this node closes its own connection of the peer instead (4000).
    Assert {
        peer: Box<str>,
        mesh: Option<Box<str>>,
    },
    /// `peer` of `mesh` is no longer here.
    Leave {
        peer: Box<str>,
        mesh: Option<Box<str>>,
    },
    /// A relay to `target` (of the sender's `mesh`) that no shard of this node holds: the
    /// WebSocket frame, built for the target.
    Relay {
        target: Box<str>,
        mesh: Option<Box<str>>,
        frame: Box<[u8]>,
    },
}

impl Outgoing {
    /// Bytes of the frame a relay carries (0 for a join or a leave).
    fn frame_len(&self) -> usize {
        match self {
            Outgoing::Relay { frame, .. } => frame.len(),
            _ => 0,
        }
    }
}

/// The bounded queue of [`Outgoing`] items and the directory task's waker.
#[derive(Debug, Default)]
pub struct Outbox {
    items: VecDeque<Outgoing>,
    /// Bytes of the relayed frames in `items`.
    bytes: usize,
    /// Joins or leaves were refused (the outbox was full, or the link was down): the
    /// shard's whole directory must be asserted again.
    pub resync: bool,
    waker: Option<Waker>,
}

impl Outbox {
    /// Queues `item`; `false` when the outbox is full (see [`OUTBOX_ITEMS_MAX`]). A leave
    /// is never refused: a resync asserts the peers still here but cannot know whom to
    /// remove, so a lost leave would leave a ghost entry at every other node. Leaves are
    /// bounded all the same: at most one per connection that ended, so by the shard's
    /// connections (`--max-connections-per-shard`), a few hundred bytes each.
    pub fn push(&mut self, item: Outgoing) -> bool {
        let size = item.frame_len();
        let leave = matches!(item, Outgoing::Leave { .. });
        if !leave && (self.items.len() >= OUTBOX_ITEMS_MAX || self.bytes + size > OUTBOX_BYTES_MAX)
        {
            if !matches!(item, Outgoing::Relay { .. }) {
                self.resync = true;
            }
            return false;
        }
        self.bytes += size;
        self.items.push_back(item);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
        true
    }

    /// Takes everything queued.
    pub fn take(&mut self) -> VecDeque<Outgoing> {
        self.bytes = 0;
        std::mem::take(&mut self.items)
    }

    /// Puts items the link could not take yet back in front, in order. Past
    /// [`OUTBOX_ITEMS_MAX`] the newest go and a resync is asked for (a join dropped so
    /// is asserted by it instead).
    pub fn put_back(&mut self, mut rest: VecDeque<Outgoing>) {
        self.bytes += rest.iter().map(Outgoing::frame_len).sum::<usize>();
        rest.append(&mut self.items);
        self.items = rest;
        if self.items.len() > OUTBOX_ITEMS_MAX {
            // The newest go, but never a leave (see `push`).
            let mut excess = self.items.len() - OUTBOX_ITEMS_MAX;
            let mut i = self.items.len();
            while excess > 0 && i > 0 {
                i -= 1;
                if !matches!(self.items[i], Outgoing::Leave { .. }) {
                    self.items.remove(i);
                    excess -= 1;
                }
            }
            self.resync = true;
            self.bytes = self.items.iter().map(Outgoing::frame_len).sum();
        }
    }

    /// Drops the relays waiting (the link is down: they cannot go out) and says how
    /// many; joins and leaves wait for the link to come back.
    pub fn drop_relays(&mut self) -> usize {
        let before = self.items.len();
        self.items.retain(|i| !matches!(i, Outgoing::Relay { .. }));
        self.bytes = 0;
        before - self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The directory task waits for the next item (or a resync).
    pub fn set_waker(&mut self, w: &Waker) {
        match &self.waker {
            Some(old) if old.will_wake(w) => {}
            _ => self.waker = Some(w.clone()),
        }
    }

    /// Wakes the directory task (a resync was asked for from outside the table).
    pub fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(p: &str) -> Outgoing {
        Outgoing::Join {
            peer: p.into(),
            mesh: None,
        }
    }

    #[test]
    fn a_full_outbox_refuses_and_asks_for_a_resync_of_joins_not_of_relays() {
        let mut o = Outbox::default();
        for i in 0..OUTBOX_ITEMS_MAX {
            assert!(o.push(join(&i.to_string())));
        }
        let relay = Outgoing::Relay {
            target: "t".into(),
            mesh: None,
            frame: Box::new([1]),
        };
        assert!(!o.push(relay));
        assert!(!o.resync, "a dropped relay needs no resync");
        assert!(!o.push(join("x")));
        assert!(o.resync);
        let mut taken = o.take();
        assert_eq!(taken.len(), OUTBOX_ITEMS_MAX);
        assert!(o.is_empty());
        let first = taken.pop_front().unwrap();
        o.push(join("later"));
        o.put_back(VecDeque::from([first]));
        let order: Vec<_> = o.take().into_iter().collect();
        assert_eq!(order, vec![join("0"), join("later")]);
    }

    #[test]
    fn a_leave_is_never_refused_nor_dropped_by_a_put_back() {
        let mut o = Outbox::default();
        for i in 0..OUTBOX_ITEMS_MAX {
            assert!(o.push(join(&i.to_string())));
        }
        assert!(!o.push(join("x")), "full for joins");
        let leave = |p: &str| Outgoing::Leave {
            peer: p.into(),
            mesh: None,
        };
        assert!(o.push(leave("gone")), "a leave still goes in");
        let taken = o.take();
        for i in 0..10 {
            assert!(o.push(join(&format!("late{i}"))));
        }
        o.push(leave("gone-too"));
        o.put_back(taken);
        let all: Vec<_> = o.take().into_iter().collect();
        assert!(all.contains(&leave("gone")) && all.contains(&leave("gone-too")));
        assert!(all.len() <= OUTBOX_ITEMS_MAX + 2);
    }

    #[test]
    fn relayed_bytes_are_bounded_too() {
        let mut o = Outbox::default();
        let big = || Outgoing::Relay {
            target: "t".into(),
            mesh: None,
            frame: vec![0; 64 * 1024].into_boxed_slice(),
        };
        let fit = OUTBOX_BYTES_MAX / (64 * 1024);
        for _ in 0..fit {
            assert!(o.push(big()));
        }
        assert!(!o.push(big()), "past the byte bound");
        assert!(o.push(join("j")), "joins carry no frame");
        assert!(!o.resync);
        let taken = o.take();
        assert!(o.push(big()), "taking frees the bytes");
        o.put_back(taken);
        assert!(!o.push(big()), "putting back counts them again");
    }

    #[test]
    fn while_down_relays_go_and_joins_wait_and_a_put_back_stays_bounded() {
        let mut o = Outbox::default();
        o.push(join("a"));
        o.push(Outgoing::Relay {
            target: "t".into(),
            mesh: None,
            frame: Box::new([1]),
        });
        o.push(Outgoing::Leave {
            peer: "b".into(),
            mesh: None,
        });
        assert_eq!(o.drop_relays(), 1);
        assert_eq!(o.len(), 2);
        // Put back in front of what came since; past the bound the newest go and a
        // resync is asked for.
        let taken = o.take();
        for i in 0..OUTBOX_ITEMS_MAX {
            assert!(o.push(join(&i.to_string())));
        }
        assert!(!o.resync);
        o.put_back(taken);
        assert_eq!(o.len(), OUTBOX_ITEMS_MAX);
        assert!(o.resync);
        let all = o.take();
        assert_eq!(all[0], join("a"));
        assert_eq!(all[2], join("0"));
        assert_eq!(
            all[OUTBOX_ITEMS_MAX - 1],
            join(&(OUTBOX_ITEMS_MAX - 3).to_string())
        );
    }
}
