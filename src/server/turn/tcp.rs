//! TURN over TCP (RFC 8656 §3.1) and over TLS (RFC 7065 `turns:`, RFC 7443 ALPN
//! `stun.turn`): a client's STUN and ChannelData messages framed on a TCP connection,
//! or on TLS over one, relayed to peers over UDP. One task per connection reads and
//! frames (`::turn::framing::StreamFramer`); a writer task drains the connection's
//! bounded outbound buffer. The connection is the allocation's 5-tuple: when it closes,
//! the allocation ends.
//!
//! TLS is `crate::tls`'s: the handshake (`tls::accept::handshake_with`, within
//! `--http-header-timeout`, counted with the HTTPS listeners' in `/metrics`) on the
//! accepting shard, then the [`Transport`] split in two halves that share its session.
//! The framer and the server see the same bytes over TCP and TLS. Connections come
//! from the `--turn-listen` (plain) and `--turn-tls-listen` listeners, and from the
//! HTTPS listener when a client's ALPN is `stun.turn` ([`adopt_tls`]); all count
//! against `--turn-tcp-connections-max` from their accept on.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use ::turn::framing::StreamFramer;
use ::turn::server::{Action, ClientKey, Dropped};
use monoio::net::TcpListener;
use reactor::timer::{select2, select2_pinned, Either};
use slab::Slab;

use super::{Kick, TurnShard};
use crate::server::tls_accept::{handshake_with, PlainHttp};
use crate::server::ShardCtx;
use crate::tls::transport::WriteHalf;
use crate::tls::{ShardTls, Transport};

/// Bytes read at once from a TURN TCP connection.
pub const READ_BYTES: usize = 4096;

/// Bytes queued for one TCP client (answers, and ChannelData from its peers): about 50
/// full-size media datagrams, 50 ms at 10 Mbit/s. A client that does not read has what
/// does not fit dropped (counted as `tcp_queue`), as a UDP path would lose it. With a
/// partial message in its framer (at most 64 KiB) and its read buffer, a connection
/// holds at most about 132 KiB, so `--turn-tcp-connections-max` bounds a shard's.
pub const TCP_OUT_BYTES_MAX: usize = 64 * 1024;

/// A connection that has no allocation and completes no message for this long is
/// closed (RFC 8656 §3.1 suggests closing connections that do not allocate; a trickle
/// of bytes that never makes a message does not keep one open). With an allocation,
/// its lifetime decides: the allocation's end is noticed at the next idle check.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause after a failed accept (out of fds): the listener stays readable.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// How long a closing TLS connection may take to send its last TLS bytes (the alert of
/// a broken connection, or `close_notify`) to a client that does not read.
const TLS_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) struct TcpConn {
    /// The client's address (its per-address count, `TcpSide::per_ip`).
    ip: std::net::IpAddr,
    /// Over TLS (counted in `TcpSide::tls`).
    tls: bool,
    out: RefCell<Vec<u8>>,
    /// Wakes the writer: bytes were queued.
    kick: Kick,
    /// Set once: the connection is closing (its reader, its writer or shutdown).
    closing: reactor::LocalEvent,
}

/// The shard's TURN TCP connections (their outbound buffers, by id), and how many each
/// client address holds (at most `--turn-tcp-connections-per-ip-max`; the map has at
/// most one entry per connection, so it is bounded by `--turn-tcp-connections-max`).
#[derive(Default)]
pub(crate) struct TcpSide {
    conns: RefCell<Slab<Rc<TcpConn>>>,
    /// Of `conns`, those over TLS.
    tls: Cell<usize>,
    per_ip: RefCell<std::collections::HashMap<std::net::IpAddr, usize>>,
}

impl TcpSide {
    pub fn open(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Of [`open`](Self::open), the connections over TLS.
    pub fn open_tls(&self) -> usize {
        self.tls.get()
    }

    /// A slot for a connection just accepted (it counts against
    /// `--turn-tcp-connections-max` from now, its TLS handshake included); `None` when
    /// the shard holds its maximum (counted as `tcp_refused`).
    fn reserve(
        &self,
        turn: &TurnShard,
        (max, per_ip_max): (usize, usize),
        ip: std::net::IpAddr,
        tls: bool,
    ) -> Option<(u32, Rc<TcpConn>)> {
        let mut conns = self.conns.borrow_mut();
        let mut per_ip = self.per_ip.borrow_mut();
        let held = per_ip.get(&ip).copied().unwrap_or(0);
        if conns.len() >= max || held >= per_ip_max {
            let r = &turn.counters.tcp_refused;
            r.set(r.get() + 1);
            return None;
        }
        let conn = Rc::new(TcpConn {
            ip,
            tls,
            out: RefCell::default(),
            kick: Kick::default(),
            closing: reactor::LocalEvent::default(),
        });
        let id = conns.insert(conn.clone());
        per_ip.insert(ip, held + 1);
        if tls {
            self.tls.set(self.tls.get() + 1);
        }
        Some((id as u32, conn))
    }

    /// Gives connection `id`'s slot back (and its address's count).
    fn release(&self, id: u32) {
        let Some(conn) = self.conns.borrow_mut().try_remove(id as usize) else {
            return;
        };
        if conn.tls {
            self.tls.set(self.tls.get().saturating_sub(1));
        }
        let mut per_ip = self.per_ip.borrow_mut();
        if let Some(n) = per_ip.get_mut(&conn.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&conn.ip);
            }
        }
    }

    /// Queues `bytes` for connection `id` (dropped and counted when its buffer is full).
    pub fn enqueue(&self, turn: &TurnShard, id: u32, bytes: &[u8]) {
        let conns = self.conns.borrow();
        let Some(c) = conns.get(id as usize) else {
            return;
        };
        let mut out = c.out.borrow_mut();
        if out.len() + bytes.len() > TCP_OUT_BYTES_MAX {
            let d = &turn.counters.tcp_dropped;
            d.set(d.get() + bytes.len() as u64);
            return;
        }
        out.extend_from_slice(bytes);
        c.kick.kick();
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self) {
        for (_, c) in self.conns.borrow().iter() {
            c.closing.set();
        }
    }
}

/// Serves the shard's TURN listeners: `plain` (`--turn-listen`, TCP) and `tls`
/// (`--turn-tls-listen`, with the shard's certificate `certs`).
pub(crate) fn spawn(
    ctx: &Rc<ShardCtx>,
    turn: &Rc<TurnShard>,
    plain: Vec<std::net::TcpListener>,
    tls: Vec<std::net::TcpListener>,
    certs: Option<Rc<ShardTls>>,
) {
    if !tls.is_empty() && certs.is_none() {
        // `main` refuses --turn-tls-listen without --tls-cert: not reached.
        tracing::error!("TURN: TLS listeners without a certificate");
        return;
    }
    let listeners = plain
        .into_iter()
        .map(|l| (l, None))
        .chain(tls.into_iter().map(|l| (l, certs.clone())));
    for (l, certs) in listeners {
        match TcpListener::from_std(l) {
            Ok(l) => {
                monoio::spawn(accept_loop(ctx.clone(), turn.clone(), l, certs));
            }
            Err(e) => tracing::error!(error = %e, "TURN: cannot register a TCP listener"),
        }
    }
}

/// `(--turn-tcp-connections-max, --turn-tcp-connections-per-ip-max)`.
fn connections_max(ctx: &ShardCtx) -> (usize, usize) {
    ctx.config.turn_server.as_ref().map_or((0, 0), |t| {
        (t.tcp_connections_max, t.tcp_connections_per_ip_max)
    })
}

async fn accept_loop(
    ctx: Rc<ShardCtx>,
    turn: Rc<TurnShard>,
    listener: TcpListener,
    certs: Option<Rc<ShardTls>>,
) {
    let stop = ctx.shard.shutdown_event().clone();
    let max = connections_max(&ctx);
    loop {
        match select2(listener.accept(), stop.wait()).await {
            Either::Right(()) => return,
            Either::Left(Ok((stream, peer))) => {
                let Some((id, conn)) = turn.tcp.reserve(&turn, max, peer.ip(), certs.is_some())
                else {
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let cfg = certs.as_ref().map(|c| c.turn_config(&ctx.tls));
                let (c, t) = (ctx.clone(), turn.clone());
                monoio::spawn(async move {
                    let stream = match cfg {
                        None => Some(Transport::plain(stream)),
                        // Plain HTTP is not told apart: a ChannelData frame may start
                        // with an upper-case letter; TLS refuses both with an alert.
                        Some(cfg) => handshake_with(&c, stream, cfg, PlainHttp::Refuse).await,
                    };
                    match stream {
                        Some(s) => connection(c, t, s, peer, id, conn).await,
                        None => {
                            t.tcp.release(id);
                        }
                    }
                });
            }
            Either::Left(Err(e)) => {
                tracing::debug!(error = %e, "TURN: accept failed");
                monoio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Serves a TLS connection of the HTTPS listener whose client chose ALPN `stun.turn`
/// (RFC 7443), handshake done, in a task of its own; closed at once when this shard
/// has no TURN server or holds `--turn-tcp-connections-max` connections.
pub fn adopt_tls(ctx: &Rc<ShardCtx>, stream: Transport, peer: SocketAddr) {
    let Some(turn) = super::shard_turn() else {
        return;
    };
    let Some((id, conn)) = turn
        .tcp
        .reserve(&turn, connections_max(ctx), peer.ip(), true)
    else {
        return;
    };
    monoio::spawn(connection(ctx.clone(), turn, stream, peer, id, conn));
}

async fn connection(
    ctx: Rc<ShardCtx>,
    turn: Rc<TurnShard>,
    stream: Transport,
    addr: SocketAddr,
    id: u32,
    conn: Rc<TcpConn>,
) {
    let key = ClientKey {
        transport: ::turn::server::Transport::Tcp(id),
        addr,
    };
    let (mut rd, wr) = stream.into_split();
    let writer = monoio::spawn(writer(wr, conn.clone()));
    let mut framer = StreamFramer::new();
    let mut out = Vec::new();
    let mut buf = Vec::with_capacity(READ_BYTES);
    let mut idle_deadline = std::time::Instant::now() + TCP_IDLE_TIMEOUT;
    'read: loop {
        // One read, kept across idle checks (a read given up could lose bytes already
        // received, which on TLS breaks the stream).
        let r = {
            let mut read = std::pin::pin!(rd.read(buf));
            loop {
                let wait = idle_deadline.saturating_duration_since(std::time::Instant::now());
                let sleep = std::pin::pin!(monoio::time::sleep(wait));
                let either = select2_pinned(read.as_mut(), sleep);
                match select2(either, conn.closing.wait()).await {
                    Either::Left(Either::Left(r)) => break Some(r),
                    Either::Left(Either::Right(())) => {
                        // Idle: keep a connection that holds an allocation.
                        if turn.server.borrow().relayed_address(&key).is_some() {
                            idle_deadline = std::time::Instant::now() + TCP_IDLE_TIMEOUT;
                            continue;
                        }
                        break None;
                    }
                    Either::Right(()) => break None,
                }
            }
        };
        let Some((res, b)) = r else { break };
        buf = b;
        if rd.owes() {
            // A TLS key update to answer: the writer sends it.
            conn.kick.kick();
        }
        let n = match res {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        framer.push(&buf[..n]);
        buf.clear();
        let now = ctx.now().0;
        loop {
            let msg = match framer.next() {
                Ok(Some(m)) => {
                    idle_deadline = std::time::Instant::now() + TCP_IDLE_TIMEOUT;
                    m
                }
                Ok(None) => break,
                Err(_) => {
                    turn.server.borrow_mut().stats.dropped[Dropped::Malformed as usize] += 1;
                    break 'read;
                }
            };
            out.clear();
            let action = {
                let mut server = turn.server.borrow_mut();
                let mut relays = turn.udp.relays.borrow_mut();
                server.on_client(now, key, msg, &mut *relays, &mut out)
            };
            match action {
                Action::Reply(r) => turn.tcp.enqueue(&turn, id, &out[r]),
                Action::Relay {
                    relay,
                    peer,
                    payload,
                } => super::udp::send_from_relay(&turn, relay, peer, &msg[payload]),
                Action::None => {}
            }
            super::udp::spawn_opened(&ctx, &turn);
        }
    }
    {
        let mut relays = turn.udp.relays.borrow_mut();
        turn.server.borrow_mut().client_closed(&key, &mut *relays);
    }
    turn.tcp.release(id);
    conn.closing.set();
    // A TLS alert owed for a broken connection goes out with the writer's close.
    drop(rd);
    writer.await;
}

/// Writes what is queued for the connection until it closes (TLS: encrypted, and what
/// the session owes the client). A write blocked by a client that does not read is
/// abandoned when the connection closes; otherwise a TLS connection ends with its
/// alert or `close_notify`, for at most [`TLS_CLOSE_TIMEOUT`].
async fn writer(mut wr: WriteHalf, conn: Rc<TcpConn>) {
    let mut spare = Vec::new();
    loop {
        if conn.out.borrow().is_empty() {
            if let Either::Right(()) = select2(conn.kick.wait(), conn.closing.wait()).await {
                break;
            }
            if conn.out.borrow().is_empty() {
                // Kicked for TLS bytes the session owes (a key update).
                match select2(wr.flush_owed(), conn.closing.wait()).await {
                    Either::Left(Ok(())) => continue,
                    Either::Left(Err(_)) | Either::Right(()) => {
                        conn.closing.set();
                        return;
                    }
                }
            }
            continue;
        }
        std::mem::swap(&mut *conn.out.borrow_mut(), &mut spare);
        match select2(wr.write_all(spare), conn.closing.wait()).await {
            Either::Left((Ok(_), b)) => {
                spare = b;
                spare.clear();
            }
            Either::Left((Err(_), _)) | Either::Right(()) => {
                conn.closing.set();
                return;
            }
        }
    }
    // Closed between writes: the stream is whole, its TLS end can go out.
    let _ = monoio::time::timeout(TLS_CLOSE_TIMEOUT, wr.shutdown()).await;
}
