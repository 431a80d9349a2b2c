//! Signaling's per-shard store, sans-IO: the connection table (one slot per live
//! connection: identity, mesh, authorization, bounded outbound queue, close reason, last
//! activity), the per-IP connection counts, the limits, the idle sweep and the
//! duplicate-identity log limiter. The connection tasks (`session`) only move bytes
//! between their socket and their slot; everything decided about a connection is here.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::num::NonZeroU64;
use std::task::Waker;
use std::time::Duration;

use slab::Slab;

use super::outbox::{Outbox, Outgoing};
use crate::ws::codec::{self, close_code};

/// Limits of the signaling endpoint (each a CLI flag).
#[derive(Clone, Debug)]
pub struct WsLimits {
    /// Largest message accepted; an SDP is a few KiB. Larger: close 1009.
    pub message_size_max: usize,
    /// Bytes queued for one connection. A peer that does not read its socket reaches
    /// it and is closed with 1008, so its queue never grows without bound.
    pub outbound_bytes_max: usize,
    /// Frames queued for one connection (same rule as the bytes).
    pub outbound_frames_max: usize,
    /// A connection silent this long is closed; a ping goes out at half of it.
    pub idle_timeout: Duration,
    /// Signaling connections one shard runs; more are refused with 503.
    pub connections_per_shard_max: usize,
    /// Signaling connections from one client IP (all shards); more: 503.
    pub connections_per_ip_max: usize,
}

impl Default for WsLimits {
    fn default() -> Self {
        WsLimits {
            message_size_max: 64 * 1024,
            outbound_bytes_max: 1024 * 1024,
            outbound_frames_max: 1024,
            idle_timeout: Duration::from_secs(60),
            connections_per_shard_max: 1 << 20,
            connections_per_ip_max: 16 * 1024,
        }
    }
}

/// Size of the pooled read buffers: one read takes at most this much.
const READ_BUFFER_SIZE: usize = 16 * 1024;
/// Read buffers kept for reuse per shard; more are freed after use. Only connections
/// with bytes ready hold one, and only during the read.
const READ_POOL_BUFFERS_MAX: usize = 64;
/// Output batched into one write (frames beyond wait for the next write).
const WRITE_BATCH_SIZE_MAX: usize = 256 * 1024;

/// The size of one connection slot (a test keeps it within issue 26's memory budget).
#[cfg(test)]
pub(crate) fn slot_bytes() -> usize {
    std::mem::size_of::<PeerSlot>()
}

/// One live signaling connection's state, in the owner shard's slab.
pub(super) struct PeerSlot {
    pub(super) peer_id: Box<str>,
    pub(super) mesh: Option<Box<str>>,
    pub(super) authorized: bool,
    /// Encoded frames waiting to be written.
    pub(super) outq: FrameQueue,
    pub(super) outq_bytes: usize,
    /// The session task's waker: while it waits, for output or a close; while it
    /// writes ([`PeerSlot::writing`]), only for the sweep's `write_abort`.
    pub(super) waker: Option<Waker>,
    /// When the write in progress began, if one is: shard clock seconds plus one (a
    /// `NonZeroU64`, whose niche keeps this 8 bytes). Queued frames wait for the write
    /// without waking the task.
    pub(super) writing: Option<NonZeroU64>,
    /// Set by the idle sweep when a write has been in progress for the whole idle
    /// timeout: the peer does not read (a zero TCP window), so the write is abandoned.
    /// This is what bounds a write in time (as a timer per write did, without one).
    pub(super) write_abort: bool,
    /// The code and reason the connection closes with, once it is closing. Boxed: rare,
    /// and 8 bytes instead of 32 in every slot.
    pub(super) close: Option<Box<(u16, Cow<'static, str>)>>,
    /// Shard clock (seconds) of the last bytes received.
    pub(super) last_seen: u64,
    pub(super) ping_sent: bool,
    /// Position in its mesh's member list ([`MeshIndex`]) while it is listed there
    /// (authorized), else `None`.
    mesh_pos: Option<usize>,
}

/// A connection's queued frames. The first lives inline: a relay target mostly has one
/// frame waiting, and queuing it then allocates nothing (a drained queue gives its
/// memory back, so a `VecDeque` alone would allocate for every frame after a drain).
/// Invariant: `rest` is empty while `head` is `None`.
#[derive(Default)]
pub(super) struct FrameQueue {
    head: Option<Box<[u8]>>,
    rest: VecDeque<Box<[u8]>>,
}

impl FrameQueue {
    pub(super) fn len(&self) -> usize {
        usize::from(self.head.is_some()) + self.rest.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    fn push_back(&mut self, frame: Box<[u8]>) {
        if self.head.is_none() {
            self.head = Some(frame);
        } else {
            self.rest.push_back(frame);
        }
    }

    fn pop_front(&mut self) -> Option<Box<[u8]>> {
        let f = self.head.take();
        self.head = self.rest.pop_front();
        if self.rest.is_empty() && self.rest.capacity() > 0 {
            self.rest = VecDeque::new(); // give the memory back while idle
        }
        f
    }

    fn clear(&mut self) {
        self.head = None;
        self.rest = VecDeque::new();
    }
}

/// The authorized connections of each mesh, so that answering `register` costs the
/// size of the peer's mesh, not a scan of every connection on the shard (with 10,000
/// peers in 100 meshes the scan was a third of the server's CPU while they connected:
/// O(n²) string comparisons). One `usize` per authorized connection; a mesh's entry
/// goes away with its last member, so the map is bounded by the connections.
#[derive(Default)]
struct MeshIndex {
    default_mesh: Vec<usize>,
    named: HashMap<Box<str>, Vec<usize>>,
}

impl MeshIndex {
    fn members(&self, mesh: Option<&str>) -> &[usize] {
        match mesh {
            None => &self.default_mesh,
            Some(m) => self.named.get(m).map(Vec::as_slice).unwrap_or(&[]),
        }
    }

    /// Lists `key` (whose slot is in `slots`) under its mesh.
    fn add(&mut self, slots: &mut Slab<PeerSlot>, key: usize) {
        let Some(slot) = slots.get_mut(key) else {
            return;
        };
        if slot.mesh_pos.is_some() {
            return;
        }
        let list = match &slot.mesh {
            None => &mut self.default_mesh,
            Some(m) => self.named.entry(m.clone()).or_default(),
        };
        slot.mesh_pos = Some(list.len());
        list.push(key);
    }

    /// Takes `key` off its mesh's list (if listed).
    fn remove(&mut self, slots: &mut Slab<PeerSlot>, key: usize) {
        let Some(slot) = slots.get_mut(key) else {
            return;
        };
        let Some(pos) = slot.mesh_pos.take() else {
            return;
        };
        let list = match &slot.mesh {
            None => &mut self.default_mesh,
            Some(m) => match self.named.get_mut(m) {
                Some(l) => l,
                None => return,
            },
        };
        list.swap_remove(pos);
        if let Some(&moved) = list.get(pos) {
            if let Some(s) = slots.get_mut(moved) {
                s.mesh_pos = Some(pos);
            }
        }
        if list.is_empty() {
            if let Some(m) = &slots[key].mesh {
                self.named.remove(m);
            }
        }
    }
}

/// Signaling counters of one shard ([`ConnTable::metrics`]): connections open, messages
/// relayed, upgrades or relays refused, connections closed for a full outbound queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WsMetrics {
    pub open: u64,
    pub relayed: u64,
    pub refused: u64,
    pub closed_slow: u64,
}

/// The live signaling connections one shard runs (those of the peers it owns), the
/// per-IP connection counts of the client IPs it owns, its read-buffer pool, and the
/// limits they are held to.
pub struct ConnTable {
    limits: WsLimits,
    /// Set by [`close_all`](Self::close_all) (graceful shutdown): no connection is
    /// admitted any more, and those running close with 1001.
    shutting_down: Cell<bool>,
    pub(super) slots: RefCell<Slab<PeerSlot>>,
    pub(super) by_id: RefCell<HashMap<Box<str>, usize>>,
    /// Authorized connections by mesh (what `register` lists).
    meshes: RefCell<MeshIndex>,
    /// Open signaling connections per client IP, for the IPs this shard owns.
    ip_counts: RefCell<HashMap<IpAddr, u32>>,
    pool: RefCell<Vec<Vec<u8>>>,
    /// When each replaced identity was last logged at warn.
    duplicates: RefCell<DuplicateLog>,
    /// What the other nodes of a cluster must be told (`None` without `--cluster`).
    pub(super) outbox: RefCell<Option<Outbox>>,
    /// The shard's own connections to the cluster's Redis (`--cluster`), for relays to
    /// other nodes ([`super::remote`]).
    pipe: RefCell<Option<chatixia_cluster::pipe::Pipe>>,
    pub open: Cell<u64>,
    pub relayed: Cell<u64>,
    pub refused: Cell<u64>,
    pub closed_slow: Cell<u64>,
}

pub(super) fn inc(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

impl Default for ConnTable {
    fn default() -> Self {
        ConnTable::new(WsLimits::default())
    }
}

impl ConnTable {
    /// Whether no borrow of the table is held (debug builds check it before a shard asks
    /// itself: `ShardState::is_unborrowed`).
    pub fn is_unborrowed(&self) -> bool {
        self.slots.try_borrow_mut().is_ok()
            && self.by_id.try_borrow_mut().is_ok()
            && self.meshes.try_borrow_mut().is_ok()
            && self.ip_counts.try_borrow_mut().is_ok()
            && self.pool.try_borrow_mut().is_ok()
            && self.duplicates.try_borrow_mut().is_ok()
            && self.outbox.try_borrow_mut().is_ok()
            && self.pipe.try_borrow_mut().is_ok()
    }

    /// An empty table held to `limits`.
    pub fn new(limits: WsLimits) -> ConnTable {
        ConnTable {
            limits,
            shutting_down: Cell::new(false),
            slots: RefCell::default(),
            by_id: RefCell::default(),
            meshes: RefCell::default(),
            ip_counts: RefCell::default(),
            pool: RefCell::default(),
            duplicates: RefCell::default(),
            outbox: RefCell::default(),
            pipe: RefCell::default(),
            open: Cell::new(0),
            relayed: Cell::new(0),
            refused: Cell::new(0),
            closed_slow: Cell::new(0),
        }
    }

    /// The limits of this shard's signaling connections.
    pub fn limits(&self) -> &WsLimits {
        &self.limits
    }

    /// Whether the shard is shutting down ([`close_all`](Self::close_all) ran).
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// Registers a new connection of `peer_id` and returns its key. A second connection
    /// with the same identity replaces the first, which is closed with 4000 and a reason
    /// (never left orphaned); that is logged at warn at most once per identity per
    /// [`DUPLICATE_WARN_INTERVAL_SECS`], the rest at debug.
    pub(crate) fn register(
        &self,
        peer_id: Box<str>,
        mesh: Option<Box<str>>,
        authorized: bool,
        now_secs: u64,
    ) -> usize {
        let key = self.slots.borrow_mut().insert(PeerSlot {
            peer_id: peer_id.clone(),
            mesh,
            authorized,
            outq: FrameQueue::default(),
            outq_bytes: 0,
            waker: None,
            writing: None,
            write_abort: false,
            close: None,
            last_seen: now_secs,
            ping_sent: false,
            mesh_pos: None,
        });
        if authorized {
            self.meshes
                .borrow_mut()
                .add(&mut self.slots.borrow_mut(), key);
            self.note_join(key);
        }
        let old = self.by_id.borrow_mut().insert(peer_id.clone(), key);
        if let Some(old) = old {
            if self.duplicates.borrow_mut().should_warn(&peer_id, now_secs) {
                tracing::warn!(
                    peer = %peer_id,
                    "a newer connection of the same peer replaces the open one (close 4000); \
                     more for this peer within a minute are logged at debug"
                );
            } else {
                tracing::debug!(peer = %peer_id, "connection replaced by a newer one of the same peer");
            }
            self.close_key(
                old,
                close_code::REPLACED,
                "replaced by a newer connection of the same peer".into(),
            );
        }
        inc(&self.open);
        key
    }

    /// Forgets connection `key` (its task ended). Its identity maps to it only if it was
    /// not replaced.
    pub(crate) fn unregister(&self, key: usize) {
        self.meshes
            .borrow_mut()
            .remove(&mut self.slots.borrow_mut(), key);
        let Some(slot) = self.slots.borrow_mut().try_remove(key) else {
            return;
        };
        let current = {
            let mut by_id = self.by_id.borrow_mut();
            let current = by_id.get(&slot.peer_id) == Some(&key);
            if current {
                by_id.remove(&slot.peer_id);
            }
            current
        };
        // A replaced connection leaves nothing: its successor holds the entry.
        if current && slot.authorized {
            self.note(Outgoing::Leave {
                peer: slot.peer_id,
                mesh: slot.mesh,
            });
        }
        self.open.set(self.open.get() - 1);
    }

    /// Whether the cluster outbox holds nothing (or there is none).
    pub fn outbox_is_empty(&self) -> bool {
        self.outbox.borrow().as_ref().is_none_or(|o| o.is_empty())
    }

    /// Keeps an outbox of what the other nodes of a cluster must be told (`--cluster`).
    pub fn enable_outbox(&self) {
        *self.outbox.borrow_mut() = Some(Outbox::default());
    }

    /// Relays to other nodes go through `pipe` while it is up.
    pub fn set_pipe(&self, pipe: chatixia_cluster::pipe::Pipe) {
        *self.pipe.borrow_mut() = Some(pipe);
    }

    /// The shard's own connections to the cluster's Redis, if any.
    pub fn pipe(&self) -> Option<chatixia_cluster::pipe::Pipe> {
        self.pipe.borrow().clone()
    }

    /// Notes `item` for the cluster, when there is one; `false` when the outbox refused
    /// it (full).
    fn note(&self, item: Outgoing) -> bool {
        match self.outbox.borrow_mut().as_mut() {
            Some(o) => o.push(item),
            None => true,
        }
    }

    fn note_join(&self, key: usize) {
        if self.outbox.borrow().is_none() {
            return;
        }
        let item = match self.slots.borrow().get(key) {
            Some(s) => Outgoing::Join {
                peer: s.peer_id.clone(),
                mesh: s.mesh.clone(),
            },
            None => return,
        };
        self.note(item);
    }

    /// The authorized peers connected here, with their meshes (what this shard asserts
    /// in the cluster's directory after the link comes back).
    pub(super) fn authorized_peers(&self) -> Vec<(Box<str>, Option<Box<str>>)> {
        let slots = self.slots.borrow();
        let by_id = self.by_id.borrow();
        by_id
            .iter()
            .filter_map(|(_, &k)| slots.get(k))
            .filter(|s| s.authorized && s.close.is_none())
            .map(|s| (s.peer_id.clone(), s.mesh.clone()))
            .collect()
    }

    /// Whether this shard may run one more connection (`connections_per_shard_max`;
    /// beyond it the upgrade is refused with 503).
    pub(super) fn has_room(&self) -> bool {
        (self.open.get() as usize) < self.limits.connections_per_shard_max
    }

    /// This shard's signaling counters (read into `/metrics` by the server).
    pub fn metrics(&self) -> WsMetrics {
        WsMetrics {
            open: self.open.get(),
            relayed: self.relayed.get(),
            refused: self.refused.get(),
            closed_slow: self.closed_slow.get(),
        }
    }

    pub(super) fn take_buf(&self) -> Vec<u8> {
        self.pool
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(READ_BUFFER_SIZE))
    }

    pub(super) fn put_buf(&self, mut b: Vec<u8>) {
        let mut pool = self.pool.borrow_mut();
        if pool.len() < READ_POOL_BUFFERS_MAX && b.capacity() == READ_BUFFER_SIZE {
            b.clear();
            pool.push(b);
        }
    }

    /// Queues a frame for connection `key`; a full queue closes the connection.
    pub(super) fn enqueue(&self, key: usize, frame: Box<[u8]>) {
        let limits = &self.limits;
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(key) else {
            return;
        };
        if slot.close.is_some() {
            return;
        }
        // The byte limit bounds what waits behind the frame being written: one frame
        // larger than it (a peer list of a huge mesh) still goes out into an empty queue.
        if slot.outq.len() >= limits.outbound_frames_max
            || (!slot.outq.is_empty() && slot.outq_bytes + frame.len() > limits.outbound_bytes_max)
        {
            slot.outq.clear();
            slot.outq_bytes = 0;
            slot.close = Some(Box::new((
                close_code::POLICY_VIOLATION,
                "outbound queue full: the peer is not reading".into(),
            )));
            inc(&self.closed_slow);
        } else {
            slot.outq_bytes += frame.len();
            slot.outq.push_back(frame);
        }
        // A writing task comes back for the queue when its write is done.
        if slot.writing.is_none() {
            if let Some(w) = slot.waker.take() {
                w.wake();
            }
        }
    }

    /// Marks connection `key` as writing since `now_secs` (shard clock).
    pub(super) fn start_write(&self, key: usize, now_secs: u64) {
        if let Some(s) = self.slots.borrow_mut().get_mut(key) {
            s.writing = Some(NonZeroU64::MIN.saturating_add(now_secs));
        }
    }

    /// Whether the connection `key` may signal, and in which mesh (the workflow tests of
    /// `server::sim`).
    #[cfg(test)]
    pub(crate) fn authorization(&self, key: usize) -> Option<(bool, Option<Box<str>>)> {
        let slots = self.slots.borrow();
        slots.get(key).map(|s| (s.authorized, s.mesh.clone()))
    }

    /// The code and reason connection `key` is closing with, for its close frame. Read,
    /// not taken: the slot stays closing (unlisted, refusing output) until its task
    /// unregisters it.
    pub(crate) fn close_reason(&self, key: usize) -> Option<(u16, Cow<'static, str>)> {
        self.slots
            .borrow()
            .get(key)
            .and_then(|s| s.close.as_deref().cloned())
    }

    /// Asks connection `key` to close with `code` and `reason`.
    pub(super) fn close_key(&self, key: usize, code: u16, reason: Cow<'static, str>) {
        let mut slots = self.slots.borrow_mut();
        if let Some(slot) = slots.get_mut(key) {
            if slot.close.is_none() {
                slot.close = Some(Box::new((code, reason)));
            }
            if let Some(w) = slot.waker.take() {
                w.wake();
            }
        }
    }

    /// A pairing approval arrived for `peer` while it is connected: from now on it is
    /// listed to its mesh and may signal, without reconnecting (as in the reference,
    /// which looks authorization up per message).
    pub fn set_authorized(&self, peer: &str, mesh: Option<&str>) {
        let Some(key) = self.by_id.borrow().get(peer).copied() else {
            return;
        };
        let left = {
            let mut slots = self.slots.borrow_mut();
            let mut meshes = self.meshes.borrow_mut();
            // Re-listed under its (possibly new) mesh.
            meshes.remove(&mut slots, key);
            let Some(s) = slots.get_mut(key) else { return };
            let new_mesh = mesh.map(Box::from);
            let left = (s.authorized && s.mesh != new_mesh).then(|| Outgoing::Leave {
                peer: s.peer_id.clone(),
                mesh: s.mesh.clone(),
            });
            s.authorized = true;
            s.mesh = new_mesh;
            meshes.add(&mut slots, key);
            left
        };
        if let Some(l) = left {
            self.note(l);
        }
        self.note_join(key);
    }

    /// Closes the live connection of `peer` (e.g. its pairing was revoked).
    pub fn close_peer(&self, peer: &str, code: u16, reason: &'static str) {
        let key = self.by_id.borrow().get(peer).copied();
        if let Some(k) = key {
            self.close_key(k, code, reason.into());
        }
    }

    /// Delivers a relayed frame to a local peer of mesh `mesh` (a relay from another
    /// shard); other meshes are dropped silently, as the protocol says, and so are
    /// unknown targets, but in a cluster, where a target no shard of this node holds is
    /// sent on to the other nodes (the outbox).
    pub(super) fn deliver(&self, target: &str, mesh: Option<&str>, frame: Box<[u8]>) {
        if let Some(frame) = self.deliver_if(target, frame, |_, to| to.mesh.as_deref() == mesh) {
            self.forward(target, mesh.map(Box::from), frame);
        }
    }

    /// [`ConnTable::deliver`] of a relay that came from another node: never sent on (a
    /// target that left meanwhile drops it).
    pub(super) fn deliver_here(&self, target: &str, mesh: Option<&str>, frame: Box<[u8]>) {
        let _ = self.deliver_if(target, frame, |_, to| to.mesh.as_deref() == mesh);
    }

    /// [`ConnTable::deliver`] from local connection `from`: the meshes are compared in
    /// place (nothing cloned).
    pub(super) fn deliver_from(&self, from: usize, target: &str, frame: Box<[u8]>) {
        let back = self.deliver_if(target, frame, |slots, to| {
            slots.get(from).is_some_and(|a| a.mesh == to.mesh)
        });
        if let Some(frame) = back {
            if self.outbox.borrow().is_some() {
                let mesh = self.slots.borrow().get(from).and_then(|s| s.mesh.clone());
                self.forward(target, mesh, frame);
            }
        }
    }

    /// A relay to a target no shard of this node holds: to the cluster when there is
    /// one (a full outbox drops it, counted as refused), else dropped.
    fn forward(&self, target: &str, mesh: Option<Box<str>>, frame: Box<[u8]>) {
        if self.outbox.borrow().is_none() {
            return;
        }
        let relay = Outgoing::Relay {
            target: target.into(),
            mesh,
            frame,
        };
        if !self.note(relay) {
            inc(&self.refused);
        }
    }

    /// Delivers to the local target when it is here; the frame back when no connection of
    /// `target` is on this shard.
    fn deliver_if(
        &self,
        target: &str,
        frame: Box<[u8]>,
        same_mesh: impl FnOnce(&Slab<PeerSlot>, &PeerSlot) -> bool,
    ) -> Option<Box<[u8]>> {
        let key = self.by_id.borrow().get(target).copied();
        let Some(key) = key else { return Some(frame) };
        let deliver = {
            let slots = self.slots.borrow();
            slots.get(key).is_some_and(|to| same_mesh(&slots, to))
        };
        if deliver {
            inc(&self.relayed);
            self.enqueue(key, frame);
        }
        None
    }

    /// Authorized connected peers of `mesh`, but `exclude`.
    pub(super) fn list(&self, mesh: Option<&str>, exclude: &str) -> Vec<Box<str>> {
        let slots = self.slots.borrow();
        let meshes = self.meshes.borrow();
        // The excluded peer by its key (one lookup), not by comparing every member's
        // id with it (a string comparison per member per `register`).
        let skip = self.by_id.borrow().get(exclude).copied();
        meshes
            .members(mesh)
            .iter()
            .filter(|&&k| Some(k) != skip)
            .filter_map(|&k| slots.get(k))
            .filter(|s| s.authorized && s.close.is_none())
            .map(|s| s.peer_id.clone())
            .collect()
    }

    /// The periodic idle check: ping connections silent for half the idle timeout,
    /// close those silent for all of it, and abandon writes in progress for all of it
    /// (the peer does not read; the task is woken to drop the write and close).
    pub fn sweep_idle(&self, now_secs: u64) {
        let idle = self.limits.idle_timeout.as_secs().max(1);
        let mut to_ping = Vec::new();
        let mut to_close = Vec::new();
        for (k, s) in self.slots.borrow_mut().iter_mut() {
            // A clock stepped back (the shard clock is the wall clock) makes a write
            // younger, never stalled.
            let stalled = s
                .writing
                .is_some_and(|t| now_secs.saturating_add(1).saturating_sub(t.get()) >= idle);
            if stalled && !s.write_abort {
                s.write_abort = true;
                if let Some(w) = s.waker.take() {
                    w.wake();
                }
            }
            let silent = now_secs.saturating_sub(s.last_seen);
            if silent >= idle {
                to_close.push(k);
            } else if silent * 2 >= idle && !s.ping_sent {
                s.ping_sent = true;
                to_ping.push(k);
            }
        }
        for k in to_close {
            self.close_key(k, close_code::GOING_AWAY, "idle timeout".into());
        }
        for k in to_ping {
            let mut f = Vec::with_capacity(2);
            codec::encode_ping(b"", &mut f);
            self.enqueue(k, f.into_boxed_slice());
        }
    }

    /// Closes every connection with 1001 (graceful shutdown); none is admitted after.
    pub fn close_all(&self) {
        self.shutting_down.set(true);
        let keys: Vec<usize> = self.slots.borrow().iter().map(|(k, _)| k).collect();
        for k in keys {
            self.close_key(k, close_code::GOING_AWAY, "server shutting down".into());
        }
    }

    /// Owner side of the per-IP limit (`connections_per_ip_max`): counts one more
    /// connection of `ip`, or `false` when it holds the most already.
    pub fn ip_acquire(&self, ip: IpAddr) -> bool {
        let max = self.limits.connections_per_ip_max;
        let mut m = self.ip_counts.borrow_mut();
        let n = m.entry(ip).or_insert(0);
        if *n as usize >= max {
            if *n == 0 {
                m.remove(&ip);
            }
            return false;
        }
        *n += 1;
        true
    }

    /// A connection of `ip` closed.
    pub fn ip_release(&self, ip: IpAddr) {
        let mut m = self.ip_counts.borrow_mut();
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// Drains the queue into one write batch (empty: nothing queued); also says whether a
/// close is pending. A lone frame is handed over as it is (no copy); several are
/// joined into one buffer of exactly their size, up to `WRITE_BATCH_SIZE_MAX`.
pub(crate) fn take_output(ws: &ConnTable, key: usize) -> (Box<[u8]>, bool) {
    let mut slots = ws.slots.borrow_mut();
    let Some(slot) = slots.get_mut(key) else {
        return (Box::default(), true);
    };
    let closing = slot.close.is_some();
    let Some(first) = slot.outq.pop_front() else {
        return (Box::default(), closing);
    };
    slot.outq_bytes -= first.len();
    let mut total = first.len();
    let mut n = 0;
    for f in slot.outq.head.iter().chain(slot.outq.rest.iter()) {
        if total + f.len() > WRITE_BATCH_SIZE_MAX {
            break;
        }
        total += f.len();
        n += 1;
    }
    if n == 0 {
        return (first, closing);
    }
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&first);
    for _ in 0..n {
        let f = slot.outq.pop_front().expect("counted above");
        slot.outq_bytes -= f.len();
        out.extend_from_slice(&f);
    }
    (out.into_boxed_slice(), closing)
}

/// Per identity, how often a replaced connection is logged at warn.
pub const DUPLICATE_WARN_INTERVAL_SECS: u64 = 60;

/// Decides whether a duplicate identity (a connection replaced by a newer one of the same
/// peer) is logged at warn: at most once per identity per
/// [`DUPLICATE_WARN_INTERVAL_SECS`]; the rest go to debug. Sans-IO (the caller passes the
/// shard clock).
#[derive(Default)]
pub struct DuplicateLog {
    /// Identity → shard clock (seconds) of its last warn.
    last_warn: HashMap<Box<str>, u64>,
}

impl DuplicateLog {
    /// Identities remembered at once. When full, those past their interval are forgotten;
    /// if none is, a new identity's duplicate is logged at debug: a storm of distinct
    /// duplicates neither floods the log nor grows this table.
    pub const IDS_MAX: usize = 4096;

    /// Whether this duplicate of `peer` at `now_secs` is logged at warn.
    pub fn should_warn(&mut self, peer: &str, now_secs: u64) -> bool {
        let due = |t: u64| now_secs.saturating_sub(t) >= DUPLICATE_WARN_INTERVAL_SECS;
        if let Some(t) = self.last_warn.get_mut(peer) {
            if !due(*t) {
                return false;
            }
            *t = now_secs;
            return true;
        }
        if self.last_warn.len() >= Self::IDS_MAX {
            self.last_warn.retain(|_, t| !due(*t));
            if self.last_warn.len() >= Self::IDS_MAX {
                return false;
            }
        }
        self.last_warn.insert(peer.into(), now_secs);
        true
    }

    pub fn len(&self) -> usize {
        self.last_warn.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_warn.is_empty()
    }
}

#[cfg(test)]
mod tests;
