//! What one shard's signaling must tell the other nodes of a cluster (issue 25), noted by
//! the connection table as it happens, sans-IO: a peer of this node joined the directory
//! (authorized, in its mesh) or left it, or a relay's target is not on this node. The
//! shard's directory task ([`super::remote::run`]) drains it into the cluster link.
//! Without `--cluster` the table keeps no outbox and notes nothing.

use std::collections::VecDeque;
use std::task::Waker;

/// Items waiting for the directory task. It drains the outbox every time it is woken (a
/// turn of the shard's loop), so what waits is what one turn produced; a burst beyond
/// this (thousands of connects, or relays to remote peers, within one turn) is refused:
/// a relay is dropped and counted as refused, a join or leave sets [`Outbox::resync`]
/// (the shard asserts all its peers again).
pub const OUTBOX_ITEMS_MAX: usize = 16 * 1024;

/// Bytes of relayed frames the outbox holds: frames are up to `--ws-message-max` (64 KiB)
/// each, so the item count alone would let a relay flood to remote peers hold a gigabyte
/// per shard while Redis is slow. Past it a relay is refused like one past
/// [`OUTBOX_ITEMS_MAX`] (dropped, counted as refused).
pub const OUTBOX_BYTES_MAX: usize = 16 * 1024 * 1024;

/// One thing to tell the cluster.
#[derive(Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// `peer` of `mesh` is connected here and may signal.
    Join {
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
    /// Queues `item`; `false` when the outbox is full (see [`OUTBOX_ITEMS_MAX`]).
    pub fn push(&mut self, item: Outgoing) -> bool {
        let size = item.frame_len();
        if self.items.len() >= OUTBOX_ITEMS_MAX || self.bytes + size > OUTBOX_BYTES_MAX {
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

    /// Puts items the link could not take yet back in front, in order.
    pub fn put_back(&mut self, mut rest: VecDeque<Outgoing>) {
        self.bytes += rest.iter().map(Outgoing::frame_len).sum::<usize>();
        rest.append(&mut self.items);
        self.items = rest;
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
}
