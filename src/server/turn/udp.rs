//! The UDP data path of one shard: listening sockets (clients), relay sockets (peers),
//! and the batched sends between them.
//!
//! * A listener's task waits for readability, then drains the socket with `recvmmsg`
//!   (until it has handled [`DRAIN_DATAGRAMS_MAX`] datagrams, then it lets other tasks
//!   run) and hands each datagram to the sans-IO server. Payloads for peers go out with one
//!   `sendmmsg` per relay socket per batch, straight from the receive buffer (no copy);
//!   answers for clients join the client queue.
//! * A relay's task does the same for its socket: what the server turns into ChannelData
//!   or Data indications joins the client queue, and the flusher task is kicked. The
//!   flusher runs after the other tasks woken in the same pass of the event loop, so
//!   datagrams from many relays leave in one `sendmmsg` per listener.
//! * The client queue is bounded: at [`reactor::udp::BATCH_MAX`] datagrams it is sent at
//!   once, from whichever task filled it.
//!
//! One receive batch and one send batch serve every socket of the shard (they are only
//! borrowed between two awaits), so a relay costs its socket, a small task and a table
//! slot, not buffers of its own.
//!
//! Every socket asks for `UDP_GRO` (off with `CHATIXIA_TURN_GRO=0`): a run of
//! datagrams of one flow arrives as one message (a NIC's GRO, or a sender's GSO run on
//! loopback) and is cut back into its datagrams here, each handled as if it had come
//! alone. The receive batch is then [`GRO_BATCH`] slots of
//! [`reactor::udp::GRO_BYTES_MAX`]: 1 MiB per shard, which stays resident once large
//! datagrams or long runs have filled it.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use ::turn::server::{Action, ClientKey, Dropped, OpenError, RelayId, Relays, Stats, Transport};
use monoio::net::udp::UdpSocket;
use reactor::timer::{select2, Either};
use reactor::udp::{RecvBatch, Segments, SendBatch, BATCH_MAX};
use socket2::{Domain, Protocol, Socket, Type};

use super::{Kick, TurnSettings, TurnShard};
use crate::server::ShardCtx;

/// Bytes of one received datagram. TURN traffic is WebRTC media and data, at most an
/// MTU (about 1,500 bytes); a longer datagram is dropped and counted as malformed (cut
/// by the kernel when the slot is this size, or found longer in a coalesced run).
/// Without GRO, 64 of these are the shard's one receive batch (256 KiB).
pub const DATAGRAM_BYTES_MAX: usize = 4096;

/// Datagrams one task handles before it lets the rest of the shard run (then it waits
/// for readability again, which is immediate while datagrams are queued): it stops
/// after the batch that reaches this, so with coalesced runs a drain may go past it by
/// at most one batch ([`GRO_BATCH`] runs).
pub const DRAIN_DATAGRAMS_MAX: usize = 8 * BATCH_MAX;

/// Messages one receive takes when the sockets ask for coalesced runs: a run holds up
/// to 128 datagrams (the kernel's `UDP_MAX_SEGMENTS`) in up to 64 KiB, so 16 runs bound
/// one batch to 2,048 datagrams (the time a shard spends on it before others run) and
/// its buffer to 1 MiB; one by one, 16 datagrams per system call.
pub const GRO_BATCH: usize = 16;

/// Pause after a readiness error (none is expected; this keeps one from spinning).
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// A TURN listening socket.
pub(crate) struct Listener {
    sock: Rc<UdpSocket>,
    fd: RawFd,
}

/// Stops a relay's task.
#[derive(Default)]
struct RelayCtl {
    stopped: Cell<bool>,
    kick: Kick,
}

struct RelaySock {
    id: RelayId,
    sock: Rc<UdpSocket>,
    fd: RawFd,
    ctl: Rc<RelayCtl>,
}

/// The relay sockets of a shard, by slot ([`RelayId::slot`]).
pub(crate) struct RelayTable {
    bind_ip: IpAddr,
    slots: Vec<Option<RelaySock>>,
    /// Opened since the last [`RelayTable::take_opened`]: their tasks are spawned by the
    /// caller (which holds the shard's `Rc`s).
    opened: Vec<RelayId>,
    /// New relay sockets ask for coalesced receives.
    gro: bool,
}

impl RelayTable {
    fn fd(&self, id: RelayId) -> Option<RawFd> {
        match self.slots.get(id.slot()) {
            Some(Some(r)) if r.id == id => Some(r.fd),
            _ => None,
        }
    }

    fn take_opened(&mut self) -> Vec<(RelayId, Rc<UdpSocket>, Rc<RelayCtl>)> {
        let ids = std::mem::take(&mut self.opened);
        ids.into_iter()
            .filter_map(|id| match self.slots.get(id.slot()) {
                Some(Some(r)) if r.id == id => Some((id, r.sock.clone(), r.ctl.clone())),
                _ => None,
            })
            .collect()
    }
}

impl Relays for RelayTable {
    fn open(&mut self, id: RelayId, port: u16) -> Result<(), OpenError> {
        let addr = SocketAddr::new(self.bind_ip, port);
        let s = Socket::new(
            Domain::for_address(addr),
            Type::DGRAM.cloexec(),
            Some(Protocol::UDP),
        )
        .map_err(|_| OpenError::Failed)?;
        s.set_nonblocking(true).map_err(|_| OpenError::Failed)?;
        if let Err(e) = s.bind(&addr.into()) {
            return Err(if e.kind() == io::ErrorKind::AddrInUse {
                OpenError::InUse
            } else {
                tracing::warn!(%addr, error = %e, "TURN: cannot bind a relay socket");
                OpenError::Failed
            });
        }
        let sock = UdpSocket::from_std(s.into()).map_err(|e| {
            tracing::warn!(%addr, error = %e, "TURN: cannot register a relay socket");
            OpenError::Failed
        })?;
        let fd = sock.as_raw_fd();
        if self.gro {
            ask_gro(fd);
        }
        let slot = id.slot();
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, || None);
        }
        self.slots[slot] = Some(RelaySock {
            id,
            sock: Rc::new(sock),
            fd,
            ctl: Rc::default(),
        });
        self.opened.push(id);
        Ok(())
    }

    fn close(&mut self, id: RelayId) {
        if let Some(slot) = self.slots.get_mut(id.slot()) {
            if slot.as_ref().is_some_and(|r| r.id == id) {
                if let Some(r) = slot.take() {
                    r.ctl.stopped.set(true);
                    r.ctl.kick.kick();
                }
            }
        }
        self.opened.retain(|o| *o != id);
    }
}

/// A relay table for start-up work that must not open sockets (revocations loaded
/// before any allocation exists).
pub(crate) struct NoRelays;

impl Relays for NoRelays {
    fn open(&mut self, _: RelayId, _: u16) -> Result<(), OpenError> {
        Err(OpenError::Failed)
    }
    fn close(&mut self, _: RelayId) {}
}

/// Datagrams waiting for the client side: bytes in one buffer, and per datagram its
/// listener, range and destination. At most [`BATCH_MAX`] (then sent at once).
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    items: Vec<(usize, usize, usize, SocketAddr)>,
}

/// A client → peer send of the current batch: relay slot and fd, message index in the
/// receive batch, payload range in that message, peer. A batch holds at most one per
/// datagram it received: [`GRO_BATCH`] runs of at most the kernel's 128 datagrams.
type RelaySend = (usize, RawFd, usize, std::ops::Range<usize>, SocketAddr);

pub(crate) struct UdpSide {
    listeners: Vec<Listener>,
    pub relays: RefCell<RelayTable>,
    rx: RefCell<RecvBatch>,
    tx: RefCell<SendBatch>,
    pending: RefCell<Pending>,
    sends: RefCell<Vec<RelaySend>>,
    flush: Kick,
    /// Runs to one destination leave as UDP GSO sends (off after the kernel refuses
    /// one; `CHATIXIA_TURN_GSO=0` turns it off, for measurements).
    gso: Cell<bool>,
}

/// Whether the shard's UDP sockets ask for coalesced receives (`CHATIXIA_TURN_GRO=0`
/// turns it off, for measurements).
fn gro_wanted() -> bool {
    std::env::var_os("CHATIXIA_TURN_GRO").is_none_or(|v| v != "0")
}

/// Asks for coalesced receives on `fd`: false when the kernel refuses (before 5.0: it
/// refuses every socket), which then delivers datagrams one by one.
fn ask_gro(fd: RawFd) -> bool {
    match reactor::udp::enable_gro(fd) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "TURN: UDP GRO refused; datagrams arrive one by one");
            false
        }
    }
}

impl UdpSide {
    pub fn new(settings: &TurnSettings, socks: Vec<std::net::UdpSocket>) -> io::Result<UdpSide> {
        let mut gro = gro_wanted();
        let mut listeners = Vec::with_capacity(socks.len());
        for s in socks {
            let sock = UdpSocket::from_std(s)?;
            let fd = sock.as_raw_fd();
            if gro && !ask_gro(fd) {
                gro = false;
            }
            listeners.push(Listener {
                sock: Rc::new(sock),
                fd,
            });
        }
        Ok(UdpSide {
            listeners,
            relays: RefCell::new(RelayTable {
                bind_ip: settings.relay_bind,
                slots: Vec::new(),
                opened: Vec::new(),
                gro,
            }),
            rx: RefCell::new(if gro {
                RecvBatch::new(GRO_BATCH, reactor::udp::GRO_BYTES_MAX)
            } else {
                RecvBatch::new(BATCH_MAX, DATAGRAM_BYTES_MAX)
            }),
            tx: RefCell::new(SendBatch::new()),
            pending: RefCell::new(Pending::default()),
            sends: RefCell::new(Vec::with_capacity(BATCH_MAX)),
            flush: Kick::default(),
            gso: Cell::new(std::env::var_os("CHATIXIA_TURN_GSO").is_none_or(|v| v != "0")),
        })
    }
}

/// Starts the listeners' tasks and the flusher.
pub(crate) fn spawn(ctx: &Rc<ShardCtx>, turn: &Rc<TurnShard>) {
    for li in 0..turn.udp.listeners.len() {
        monoio::spawn(listener_task(ctx.clone(), turn.clone(), li));
    }
    let t = turn.clone();
    monoio::spawn(async move {
        loop {
            t.udp.flush.wait().await;
            flush_pending(&t);
        }
    });
}

async fn listener_task(ctx: Rc<ShardCtx>, turn: Rc<TurnShard>, li: usize) {
    let sock = turn.udp.listeners[li].sock.clone();
    let stop = ctx.shard.shutdown_event().clone();
    loop {
        match select2(sock.readable(false), stop.wait()).await {
            Either::Right(()) => return,
            Either::Left(Err(e)) => {
                tracing::debug!(error = %e, "TURN: listener readiness failed");
                monoio::time::sleep(ERROR_PAUSE).await;
            }
            Either::Left(Ok(())) => drain_listener(&ctx, &turn, li),
        }
    }
}

async fn relay_task(
    ctx: Rc<ShardCtx>,
    turn: Rc<TurnShard>,
    id: RelayId,
    sock: Rc<UdpSocket>,
    ctl: Rc<RelayCtl>,
) {
    let fd = sock.as_raw_fd();
    loop {
        let r = select2(sock.readable(false), ctl.kick.wait()).await;
        if ctl.stopped.get() {
            return;
        }
        match r {
            Either::Left(Ok(())) => drain_relay(&ctx, &turn, id, fd),
            Either::Left(Err(e)) => {
                tracing::debug!(error = %e, "TURN: relay readiness failed");
                monoio::time::sleep(ERROR_PAUSE).await;
            }
            Either::Right(()) => {}
        }
    }
}

/// Spawns the tasks of relays opened by the last server call.
pub(crate) fn spawn_opened(ctx: &Rc<ShardCtx>, turn: &Rc<TurnShard>) {
    let opened = turn.udp.relays.borrow_mut().take_opened();
    for (id, sock, ctl) in opened {
        monoio::spawn(relay_task(ctx.clone(), turn.clone(), id, sock, ctl));
    }
}

/// Sends `msgs` on `fd` (all of them, in `sendmmsg` calls of at most a batch; runs to
/// one destination as GSO sends while the kernel takes them), skipping a datagram the
/// kernel refuses and dropping the rest when the socket buffer is full; counts what
/// was not sent.
fn send_all(turn: &TurnShard, tx: &mut SendBatch, fd: RawFd, msgs: &[(&[u8], SocketAddr)]) {
    let failed = |n: usize| {
        let c = &turn.counters.send_failed;
        c.set(c.get() + n as u64);
    };
    let mut rest = msgs;
    while !rest.is_empty() {
        let gso = turn.udp.gso.get();
        let r = if gso {
            tx.send_gso(fd, rest.iter().copied())
        } else {
            tx.send(fd, rest.iter().copied())
        };
        match r {
            Ok(n) if n >= rest.len() => return,
            Ok(0) => return,
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return failed(rest.len()),
            Err(e) => {
                // The first message failed: a GSO run the kernel cannot do (sent again
                // one by one), or a datagram it refuses (an ICMP error reported on the
                // socket, say): skipped.
                let k = if gso {
                    tx.last_segments(0).min(rest.len())
                } else {
                    1
                };
                if gso && k > 1 && reactor::udp::gso_refused(&e) {
                    if e.raw_os_error() != Some(libc::EINVAL) {
                        tracing::warn!(error = %e, "TURN: UDP GSO refused; sending datagrams one by one");
                        turn.udp.gso.set(false);
                    }
                    let mut part = &rest[..k];
                    while !part.is_empty() {
                        match tx.send(fd, part.iter().copied()) {
                            Ok(n) if n > 0 => part = &part[n.min(part.len())..],
                            _ => {
                                failed(1);
                                part = &part[1..];
                            }
                        }
                    }
                } else {
                    failed(k);
                }
                rest = &rest[k..];
            }
        }
    }
}

/// Sends the client queue.
fn flush_pending(turn: &TurnShard) {
    let mut p = turn.udp.pending.borrow_mut();
    if p.items.is_empty() {
        return;
    }
    let mut tx = turn.udp.tx.borrow_mut();
    let mut msgs: Vec<(&[u8], SocketAddr)> = Vec::with_capacity(p.items.len());
    for (li, l) in turn.udp.listeners.iter().enumerate() {
        msgs.clear();
        msgs.extend(
            p.items
                .iter()
                .filter(|it| it.0 == li)
                .map(|&(_, a, b, to)| (&p.buf[a..b], to)),
        );
        send_all(turn, &mut tx, l.fd, &msgs);
    }
    drop(msgs);
    p.items.clear();
    p.buf.clear();
}

/// Message `i` of a drain's batch: its bytes, source and datagrams, with what both
/// drains count per message done — its datagrams against the drain's budget, a cut
/// message dropped as malformed (`None`), a coalesced run's datagrams.
fn message<'a>(
    turn: &TurnShard,
    stats: &mut Stats,
    rx: &'a RecvBatch,
    i: usize,
    handled: &mut usize,
) -> Option<(&'a [u8], SocketAddr, Segments)> {
    let (data, from) = rx.get(i);
    *handled += 1;
    let from = from?;
    if rx.truncated(i) {
        stats.dropped[Dropped::Malformed as usize] += 1;
        return None;
    }
    let segs = rx.segments(i);
    let k = segs.len();
    *handled += k.saturating_sub(1);
    if k > 1 {
        let c = &turn.counters.coalesced;
        c.set(c.get() + k as u64);
    }
    Some((data, from, segs))
}

/// Whether a datagram of a run is over [`DATAGRAM_BYTES_MAX`] (dropped and counted as
/// malformed, as one alone would be: cut by the kernel at that slot size).
fn too_long(stats: &mut Stats, seg: &std::ops::Range<usize>) -> bool {
    let long = seg.len() > DATAGRAM_BYTES_MAX;
    if long {
        stats.dropped[Dropped::Malformed as usize] += 1;
    }
    long
}

/// Drains listener `li`: clients' datagrams through the server.
fn drain_listener(ctx: &Rc<ShardCtx>, turn: &Rc<TurnShard>, li: usize) {
    let fd = turn.udp.listeners[li].fd;
    let mut handled = 0usize;
    // Each round handles at least one datagram or consumes one error: bounded.
    for _ in 0..DRAIN_DATAGRAMS_MAX {
        let now = ctx.now().0;
        let mut rx = turn.udp.rx.borrow_mut();
        let n = match rx.recv(fd) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                tracing::trace!(error = %e, "TURN: listener receive error");
                continue;
            }
        };
        let mut sends = turn.udp.sends.borrow_mut();
        sends.clear();
        {
            let mut server = turn.server.borrow_mut();
            let mut relays = turn.udp.relays.borrow_mut();
            let mut pending = turn.udp.pending.borrow_mut();
            for i in 0..n {
                let Some((data, from, segs)) =
                    message(turn, &mut server.stats, &rx, i, &mut handled)
                else {
                    continue;
                };
                let key = ClientKey {
                    transport: Transport::Udp(li as u16),
                    addr: from,
                };
                for seg in segs {
                    if too_long(&mut server.stats, &seg) {
                        continue;
                    }
                    let at = seg.start;
                    let dg = &data[seg];
                    match server.on_client(now, key, dg, &mut *relays, &mut pending.buf) {
                        Action::Reply(r) => pending.items.push((li, r.start, r.end, from)),
                        Action::Relay {
                            relay,
                            peer,
                            payload,
                        } => {
                            if let Some(rfd) = relays.fd(relay) {
                                // `payload` is a range of `dg`: made one of message `i`.
                                let payload = at + payload.start..at + payload.end;
                                sends.push((relay.slot(), rfd, i, payload, peer));
                            }
                        }
                        Action::None => {}
                    }
                    // A coalesced run of requests can queue more answers than a batch.
                    if pending.items.len() >= BATCH_MAX {
                        drop(pending);
                        flush_pending(turn);
                        pending = turn.udp.pending.borrow_mut();
                    }
                }
            }
        }
        // Client → peer, one sendmmsg per relay socket, from the receive buffer.
        sends.sort_by_key(|s| s.0);
        let mut tx = turn.udp.tx.borrow_mut();
        let mut msgs: Vec<(&[u8], SocketAddr)> = Vec::with_capacity(sends.len());
        for group in sends.chunk_by(|a, b| a.0 == b.0) {
            msgs.clear();
            msgs.extend(group.iter().map(|s| (&rx.get(s.2).0[s.3.clone()], s.4)));
            send_all(turn, &mut tx, group[0].1, &msgs);
        }
        drop(msgs);
        drop(tx);
        // A batch of coalesced runs can leave it long; keep it at a batch's size.
        if sends.capacity() > 4 * BATCH_MAX {
            sends.clear();
            sends.shrink_to(BATCH_MAX);
        }
        drop(sends);
        let full = n == rx.capacity();
        drop(rx);
        spawn_opened(ctx, turn);
        if turn.udp.pending.borrow().items.len() >= BATCH_MAX {
            flush_pending(turn);
        }
        if !full || handled >= DRAIN_DATAGRAMS_MAX {
            break;
        }
    }
    // Answers to these clients, with whatever relays queued meanwhile.
    flush_pending(turn);
}

/// Drains relay `id`: peers' datagrams through the server to the client queue.
fn drain_relay(ctx: &Rc<ShardCtx>, turn: &Rc<TurnShard>, id: RelayId, fd: RawFd) {
    let mut handled = 0usize;
    // Each round handles at least one datagram or consumes one error: bounded.
    for _ in 0..DRAIN_DATAGRAMS_MAX {
        let now = ctx.now().0;
        let mut rx = turn.udp.rx.borrow_mut();
        let n = match rx.recv(fd) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                // An ICMP error from an earlier send, reported once: keep reading.
                tracing::trace!(error = %e, "TURN: relay receive error");
                continue;
            }
        };
        {
            let mut server = turn.server.borrow_mut();
            let mut pending = turn.udp.pending.borrow_mut();
            for i in 0..n {
                let Some((data, from, segs)) =
                    message(turn, &mut server.stats, &rx, i, &mut handled)
                else {
                    continue;
                };
                for seg in segs {
                    if too_long(&mut server.stats, &seg) {
                        continue;
                    }
                    let start = pending.buf.len();
                    match server.on_peer(now, id, from, &data[seg], &mut pending.buf) {
                        Some(ClientKey {
                            transport: Transport::Udp(li),
                            addr,
                        }) => {
                            let end = pending.buf.len();
                            pending.items.push((usize::from(li), start, end, addr));
                        }
                        Some(ClientKey {
                            transport: Transport::Tcp(c),
                            ..
                        }) => {
                            turn.tcp.enqueue(turn, c, &pending.buf[start..]);
                            pending.buf.truncate(start);
                        }
                        None => pending.buf.truncate(start),
                    }
                    if pending.items.len() >= BATCH_MAX {
                        drop(pending);
                        flush_pending(turn);
                        pending = turn.udp.pending.borrow_mut();
                    }
                }
            }
        }
        let full = n == rx.capacity();
        drop(rx);
        if !full || handled >= DRAIN_DATAGRAMS_MAX {
            break;
        }
    }
    if !turn.udp.pending.borrow().items.is_empty() {
        turn.udp.flush.kick();
    }
}

/// Sends `payload` from relay `relay` to `peer` (the stream clients' path: one datagram
/// at a time).
pub(crate) fn send_from_relay(turn: &TurnShard, relay: RelayId, peer: SocketAddr, payload: &[u8]) {
    let fd = turn.udp.relays.borrow().fd(relay);
    if let Some(fd) = fd {
        if reactor::udp::send_to(fd, payload, peer).is_err() {
            let c = &turn.counters.send_failed;
            c.set(c.get() + 1);
        }
    }
}
