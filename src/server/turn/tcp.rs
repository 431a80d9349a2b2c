//! TURN over TCP (RFC 8656 §3.1): a client's STUN and ChannelData messages framed on a
//! TCP connection, relayed to peers over UDP. One task per connection reads and frames
//! (`::turn::framing::StreamFramer`); a writer task drains the connection's bounded
//! outbound buffer. The connection is the allocation's 5-tuple: when it closes, the
//! allocation ends.
//!
//! TLS (`turns:`) will be this same loop over a TLS stream once the server has TLS: the
//! framer and the server see bytes either way.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use ::turn::framing::StreamFramer;
use ::turn::server::{Action, ClientKey, Dropped, Transport};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::{TcpListener, TcpStream};
use reactor::timer::{select2, Either};
use slab::Slab;

use super::{Kick, TurnShard};
use crate::server::ShardCtx;

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

#[derive(Default)]
pub(crate) struct TcpConn {
    out: RefCell<Vec<u8>>,
    /// Wakes the writer: bytes were queued.
    kick: Kick,
    /// Set once: the connection is closing (its reader, its writer or shutdown).
    closing: reactor::LocalEvent,
}

/// The shard's TURN TCP connections (their outbound buffers, by id).
#[derive(Default)]
pub(crate) struct TcpSide {
    conns: RefCell<Slab<Rc<TcpConn>>>,
}

impl TcpSide {
    pub fn open(&self) -> usize {
        self.conns.borrow().len()
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

pub(crate) fn spawn(
    ctx: &Rc<ShardCtx>,
    turn: &Rc<TurnShard>,
    listeners: Vec<std::net::TcpListener>,
) {
    for l in listeners {
        match TcpListener::from_std(l) {
            Ok(l) => {
                monoio::spawn(accept_loop(ctx.clone(), turn.clone(), l));
            }
            Err(e) => tracing::error!(error = %e, "TURN: cannot register a TCP listener"),
        }
    }
}

async fn accept_loop(ctx: Rc<ShardCtx>, turn: Rc<TurnShard>, listener: TcpListener) {
    let stop = ctx.shard.shutdown_event().clone();
    let max = ctx
        .config
        .turn_server
        .as_ref()
        .map_or(0, |t| t.tcp_connections_max);
    loop {
        match select2(listener.accept(), stop.wait()).await {
            Either::Right(()) => return,
            Either::Left(Ok((stream, peer))) => {
                if turn.tcp.open() >= max {
                    let r = &turn.counters.tcp_refused;
                    r.set(r.get() + 1);
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                monoio::spawn(connection(ctx.clone(), turn.clone(), stream, peer));
            }
            Either::Left(Err(e)) => {
                tracing::debug!(error = %e, "TURN: accept failed");
                monoio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

async fn connection(ctx: Rc<ShardCtx>, turn: Rc<TurnShard>, stream: TcpStream, addr: SocketAddr) {
    let conn = Rc::new(TcpConn::default());
    let id = turn.tcp.conns.borrow_mut().insert(conn.clone());
    let key = ClientKey {
        transport: Transport::Tcp(id as u32),
        addr,
    };
    let (mut rd, wr) = stream.into_split();
    let writer = monoio::spawn(writer(wr, conn.clone()));
    let mut framer = StreamFramer::new();
    let mut out = Vec::new();
    let mut buf = Vec::with_capacity(READ_BYTES);
    let mut idle_deadline = std::time::Instant::now() + TCP_IDLE_TIMEOUT;
    'read: loop {
        let read = rd.read(buf);
        let wait = idle_deadline.saturating_duration_since(std::time::Instant::now());
        let r = match select2(
            select2(read, monoio::time::sleep(wait)),
            conn.closing.wait(),
        )
        .await
        {
            Either::Left(Either::Left(r)) => r,
            Either::Left(Either::Right(())) => {
                // Idle: keep a connection that holds an allocation.
                if turn.server.borrow().relayed_address(&key).is_some() {
                    idle_deadline = std::time::Instant::now() + TCP_IDLE_TIMEOUT;
                    buf = Vec::with_capacity(READ_BYTES);
                    continue;
                }
                break;
            }
            Either::Right(()) => break,
        };
        let (res, b) = r;
        buf = b;
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
                Action::Reply(r) => turn.tcp.enqueue(&turn, id as u32, &out[r]),
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
    turn.tcp.conns.borrow_mut().remove(id);
    conn.closing.set();
    writer.await;
}

/// Writes what is queued for the connection until it closes. A write blocked by a
/// client that does not read is abandoned when the connection closes.
async fn writer(mut wr: monoio::io::OwnedWriteHalf<TcpStream>, conn: Rc<TcpConn>) {
    let mut spare = Vec::new();
    loop {
        if conn.out.borrow().is_empty() {
            if let Either::Right(()) = select2(conn.kick.wait(), conn.closing.wait()).await {
                return;
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
}
