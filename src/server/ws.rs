//! The signaling WebSocket (`/ws`, PROTOCOL.md §7) on the shards.
//!
//! * The shard that accepted the HTTP connection validates the upgrade and the JWT,
//!   admits the client IP (`shard_of(ip)` counts connections per IP), then hands the
//!   socket — descriptor and any bytes already read — to `shard_of(peer_id)`, which runs
//!   it from then on. Relaying to any peer is then one mailbox hop, computed from the
//!   target id with no lookup table.
//! * The owner checks revocation (the peer's pairing authorization lives on the same
//!   shard), its connection limit, answers 101, and runs the connection: one task per
//!   connection that waits for readability (no read buffer while idle: reads borrow a
//!   buffer from the shard's pool), decodes frames (sans-IO codec), acts on signaling
//!   messages, and writes what its bounded outbound queue holds.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use slab::Slab;

use crate::http::{Request, Response};
use crate::server::{Msg, ShardCtx};
use crate::ws::codec::{self, close_code, Decoder, WsEvent};
use crate::ws::handshake;
use crate::ws::signaling::{self, Action};

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
/// Times a relay waits (yielding) for room in a full mailbox before it is dropped with
/// an error frame to the sender: backpressure first, refusal when it persists.
const RELAY_RETRIES_MAX: usize = 64;
/// How long writing a refusal (an HTTP error on the upgrade path) may take.
const REFUSE_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Times a per-IP release waits (yielding) for room in a full mailbox. Far more
/// patient than a relay: the release must not be lost, and the owner is draining.
const RELEASE_RETRIES_MAX: usize = 100_000;

/// A connection handed to its owner shard.
pub struct Adopt {
    pub fd: OwnedFd,
    /// Bytes the client sent after the upgrade request.
    pub leftover: Vec<u8>,
    pub peer_id: String,
    pub client_ip: IpAddr,
    pub upgrade: handshake::Upgrade,
}

/// A frame relayed to a peer owned by the receiving shard.
pub struct Relay {
    pub target: Box<str>,
    /// The sender's mesh: the target must be in the same one.
    pub mesh: Option<Box<str>>,
    pub frame: Box<[u8]>,
}

/// One live signaling connection's state, in the owner shard's slab.
struct PeerSlot {
    peer_id: Box<str>,
    mesh: Option<Box<str>>,
    authorized: bool,
    /// Encoded frames waiting to be written.
    outq: VecDeque<Box<[u8]>>,
    outq_bytes: usize,
    waker: Option<Waker>,
    close: Option<(u16, Cow<'static, str>)>,
    /// Shard clock (seconds) of the last bytes received.
    last_seen: u64,
    ping_sent: bool,
}

/// The signaling state one shard owns.
#[derive(Default)]
pub struct WsShard {
    slots: RefCell<Slab<PeerSlot>>,
    by_id: RefCell<HashMap<Box<str>, usize>>,
    /// Open signaling connections per client IP, for the IPs this shard owns.
    ip_counts: RefCell<HashMap<IpAddr, u32>>,
    pool: RefCell<Vec<Vec<u8>>>,
    pub open: Cell<u64>,
    pub relayed: Cell<u64>,
    pub refused: Cell<u64>,
    pub closed_slow: Cell<u64>,
}

fn inc(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

impl WsShard {
    pub fn metrics(&self) -> crate::metrics::WsMetrics {
        crate::metrics::WsMetrics {
            open: self.open.get(),
            relayed: self.relayed.get(),
            refused: self.refused.get(),
            closed_slow: self.closed_slow.get(),
        }
    }

    fn take_buf(&self) -> Vec<u8> {
        self.pool
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(READ_BUFFER_SIZE))
    }

    fn put_buf(&self, mut b: Vec<u8>) {
        let mut pool = self.pool.borrow_mut();
        if pool.len() < READ_POOL_BUFFERS_MAX && b.capacity() == READ_BUFFER_SIZE {
            b.clear();
            pool.push(b);
        }
    }

    /// Queues a frame for connection `key`; a full queue closes the connection.
    fn enqueue(&self, key: usize, frame: Box<[u8]>, limits: &WsLimits) {
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
            slot.close = Some((
                close_code::POLICY_VIOLATION,
                "outbound queue full: the peer is not reading".into(),
            ));
            inc(&self.closed_slow);
        } else {
            slot.outq_bytes += frame.len();
            slot.outq.push_back(frame);
        }
        if let Some(w) = slot.waker.take() {
            w.wake();
        }
    }

    /// Asks connection `key` to close with `code` and `reason`.
    fn close_key(&self, key: usize, code: u16, reason: Cow<'static, str>) {
        let mut slots = self.slots.borrow_mut();
        if let Some(slot) = slots.get_mut(key) {
            if slot.close.is_none() {
                slot.close = Some((code, reason));
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
        let key = self.by_id.borrow().get(peer).copied();
        let mut slots = self.slots.borrow_mut();
        if let Some(s) = key.and_then(|k| slots.get_mut(k)) {
            s.authorized = true;
            s.mesh = mesh.map(Box::from);
        }
    }

    /// Closes the live connection of `peer` (e.g. its pairing was revoked).
    pub fn close_peer(&self, peer: &str, code: u16, reason: &'static str) {
        let key = self.by_id.borrow().get(peer).copied();
        if let Some(k) = key {
            self.close_key(k, code, reason.into());
        }
    }

    /// Delivers a relayed frame to a local peer of the same mesh; unknown targets and
    /// other meshes are dropped silently, as the protocol says.
    fn deliver(&self, target: &str, mesh: Option<&str>, frame: Box<[u8]>, limits: &WsLimits) {
        let key = self.by_id.borrow().get(target).copied();
        let Some(key) = key else { return };
        let same_mesh = self
            .slots
            .borrow()
            .get(key)
            .is_some_and(|s| s.mesh.as_deref() == mesh);
        if same_mesh {
            inc(&self.relayed);
            self.enqueue(key, frame, limits);
        }
    }

    /// Authorized connected peers of `mesh`, but `exclude`.
    fn list(&self, mesh: Option<&str>, exclude: &str) -> Vec<Box<str>> {
        self.slots
            .borrow()
            .iter()
            .filter(|(_, s)| {
                s.authorized
                    && s.close.is_none()
                    && s.mesh.as_deref() == mesh
                    && &*s.peer_id != exclude
            })
            .map(|(_, s)| s.peer_id.clone())
            .collect()
    }

    /// The periodic idle check: ping connections silent for half the idle timeout,
    /// close those silent for all of it.
    pub fn sweep_idle(&self, now_secs: u64, limits: &WsLimits) {
        let idle = limits.idle_timeout.as_secs().max(1);
        let mut to_ping = Vec::new();
        let mut to_close = Vec::new();
        for (k, s) in self.slots.borrow_mut().iter_mut() {
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
            self.enqueue(k, f.into_boxed_slice(), limits);
        }
    }

    /// Closes every connection with 1001 (graceful shutdown).
    pub fn close_all(&self) {
        let keys: Vec<usize> = self.slots.borrow().iter().map(|(k, _)| k).collect();
        for k in keys {
            self.close_key(k, close_code::GOING_AWAY, "server shutting down".into());
        }
    }

    /// Owner side of the per-IP limit.
    pub fn ip_acquire(&self, ip: IpAddr, max: usize) -> bool {
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

/// Handles a signaling message addressed to this shard.
pub fn on_message(ctx: &Rc<ShardCtx>, msg: Msg) -> Option<Msg> {
    let limits = &ctx.config.ws;
    match msg {
        Msg::WsAdopt(a) => {
            let ctx = ctx.clone();
            monoio::spawn(async move { adopt(ctx, *a).await });
            None
        }
        Msg::WsRelay(r) => {
            ctx.ws
                .deliver(&r.target, r.mesh.as_deref(), r.frame, limits);
            None
        }
        Msg::WsPeerList(b) => {
            let (mesh, exclude) = *b;
            Some(Msg::WsPeers(Box::new(
                ctx.ws.list(mesh.as_deref(), &exclude),
            )))
        }
        Msg::IpAcquire(ip) => Some(Msg::Bool(
            ctx.ws.ip_acquire(*ip, limits.connections_per_ip_max),
        )),
        Msg::IpRelease(ip) => {
            ctx.ws.ip_release(*ip);
            None
        }
        _ => None,
    }
}

/// Writes an HTTP error response and closes.
async fn refuse(mut stream: TcpStream, status: u16, reason: &str) {
    let mut out = Vec::new();
    let mut resp = Response::error(status, reason);
    if status == 405 {
        resp = resp.with_header("allow", "GET");
    }
    if status == 426 {
        resp = resp.with_header("sec-websocket-version", "13");
    }
    resp.encode(false, false, &mut out);
    // Bounded: a refused client that does not read must not hold the task and its fd.
    let _ = monoio::time::timeout(REFUSE_WRITE_TIMEOUT, stream.write_all(out)).await;
}

/// The upgrade, on the shard that accepted the connection. Consumes the connection.
pub async fn upgrade(
    ctx: &Rc<ShardCtx>,
    stream: TcpStream,
    req: &Request,
    leftover: Vec<u8>,
    peer: SocketAddr,
) {
    let up = match handshake::parse_upgrade(req) {
        Ok(u) => u,
        Err(r) => return refuse(stream, r.status, r.reason).await,
    };
    let now = ctx.now();
    let claims = match crate::auth::jwt::verify(&ctx.config.jwt_secret, &up.token, now.as_secs()) {
        Ok(c) => c,
        Err(_) => return refuse(stream, 401, "invalid or expired token").await,
    };
    if ctx.shard.is_shutting_down() {
        return refuse(stream, 503, "server shutting down").await;
    }
    let ip = peer.ip();
    let ip_owner = ctx.shard.shard_of(ip.to_string());
    match ctx.shard.ask(ip_owner, Msg::IpAcquire(Box::new(ip))).await {
        Ok(Msg::Bool(true)) => {}
        Ok(_) => {
            inc(&ctx.ws.refused);
            return refuse(
                stream,
                503,
                "too many signaling connections from this address",
            )
            .await;
        }
        Err(_) => return refuse(stream, 503, "server overloaded (mailbox full)").await,
    }
    let adopt = Adopt {
        fd: reactor::net::detach(stream),
        leftover,
        peer_id: claims.sub,
        client_ip: ip,
        upgrade: up,
    };
    let owner = ctx.shard.shard_of(&adopt.peer_id);
    if owner == ctx.shard.id() {
        // A task of its own, so the HTTP connection's task (and its buffers) ends here.
        monoio::spawn(self::adopt(ctx.clone(), adopt));
        return;
    }
    if let Err(Msg::WsAdopt(a)) = ctx.shard.try_tell(owner, Msg::WsAdopt(Box::new(adopt))) {
        release_ip(ctx, a.client_ip).await;
        if let Ok(s) = reactor::net::attach(a.fd) {
            refuse(s, 503, "server overloaded (mailbox full)").await;
        }
    }
}

/// Gives a connection's slot back to its client IP's count. Local when this shard owns
/// the IP; otherwise a tell that waits (yielding) for room when the owner's mailbox is
/// full, as when thousands of connections close at once: a lost release would lock the
/// address out until restart.
async fn release_ip(ctx: &ShardCtx, ip: IpAddr) {
    let owner = ctx.shard.shard_of(ip.to_string());
    if owner == ctx.shard.id() {
        ctx.ws.ip_release(ip);
        return;
    }
    let mut msg = Msg::IpRelease(Box::new(ip));
    for _ in 0..RELEASE_RETRIES_MAX {
        match ctx.shard.try_tell(owner, msg) {
            Ok(()) => return,
            Err(back) => {
                msg = back;
                reactor::yield_now().await;
            }
        }
    }
    tracing::warn!(%ip, "per-IP connection count not released (mailbox full for too long)");
}

/// The owner's side: admit, answer 101, run.
async fn adopt(ctx: Rc<ShardCtx>, a: Adopt) {
    let Adopt {
        fd,
        leftover,
        peer_id,
        client_ip,
        upgrade,
    } = a;
    let Ok(stream) = reactor::net::attach(fd) else {
        release_ip(&ctx, client_ip).await;
        return;
    };
    if ctx.shard.is_shutting_down() {
        release_ip(&ctx, client_ip).await;
        return refuse(stream, 503, "server shutting down").await;
    }
    let (authorized, mesh, revoked) = {
        let authz = ctx.state.authorized.borrow();
        let (authorized, mesh) = match (ctx.config.api_keys.mesh_of(&peer_id), authz.mesh(&peer_id))
        {
            (Some(m), _) | (None, Some(m)) => (true, m.map(Box::<str>::from)),
            (None, None) => (false, None),
        };
        (authorized, mesh, !authorized && authz.is_revoked(&peer_id))
    };
    if revoked {
        release_ip(&ctx, client_ip).await;
        return refuse(stream, 401, "pairing revoked").await;
    }
    if ctx.ws.open.get() as usize >= ctx.config.ws.connections_per_shard_max {
        inc(&ctx.ws.refused);
        release_ip(&ctx, client_ip).await;
        return refuse(stream, 503, "too many signaling connections on this shard").await;
    }
    // Registered before anything is awaited: the authorization just read and the slot
    // are one step, so a revocation or an approval that arrives while the 101 is being
    // written finds the connection (and the shard's connection count already holds it).
    let now = ctx.now().as_secs();
    let peer_id: Box<str> = peer_id.into();
    let key = ctx.ws.slots.borrow_mut().insert(PeerSlot {
        peer_id: peer_id.clone(),
        mesh,
        authorized,
        outq: VecDeque::new(),
        outq_bytes: 0,
        waker: None,
        close: None,
        last_seen: now,
        ping_sent: false,
    });
    // A second connection with the same identity replaces the first, which is closed
    // with a reason (never left orphaned).
    if let Some(old) = ctx.ws.by_id.borrow_mut().insert(peer_id, key) {
        ctx.ws.close_key(
            old,
            close_code::REPLACED,
            "replaced by a newer connection of the same peer".into(),
        );
    }
    inc(&ctx.ws.open);
    let resp = handshake::switching_protocols(&upgrade);
    drop(upgrade); // the token is not kept for the life of the connection
                   // The connection's life runs in a task of its own, so this handshake task (and its
                   // larger state) is freed now.
    monoio::spawn(serve_peer(ctx, stream, key, resp, leftover, client_ip));
}

/// The long-lived task of one signaling connection. Its future is what an idle
/// connection costs, so everything that is not waiting-while-idle is boxed.
async fn serve_peer(
    ctx: Rc<ShardCtx>,
    mut stream: TcpStream,
    key: usize,
    switching: Vec<u8>,
    leftover: Vec<u8>,
    client_ip: IpAddr,
) {
    let fut = Box::pin(write_bounded(&ctx, &mut stream, switching));
    if fut.await {
        run_peer(&ctx, stream, key, leftover).await;
    }
    // Cleanup: the slot is this task's; the id maps to it only if not replaced.
    let slot = ctx.ws.slots.borrow_mut().remove(key);
    {
        let mut by_id = ctx.ws.by_id.borrow_mut();
        if by_id.get(&slot.peer_id) == Some(&key) {
            by_id.remove(&slot.peer_id);
        }
    }
    ctx.ws.open.set(ctx.ws.open.get() - 1);
    release_ip(&ctx, client_ip).await;
}

/// Completes when connection `key` has output to write or must close.
struct Pending<'a> {
    ws: &'a WsShard,
    key: usize,
}

impl Future for Pending<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut slots = self.ws.slots.borrow_mut();
        let Some(slot) = slots.get_mut(self.key) else {
            return Poll::Ready(());
        };
        if !slot.outq.is_empty() || slot.close.is_some() {
            return Poll::Ready(());
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

enum Wake {
    Readable(std::io::Result<()>),
    Output,
}

async fn run_peer(ctx: &Rc<ShardCtx>, mut stream: TcpStream, key: usize, leftover: Vec<u8>) {
    // This future is what every idle connection costs, so rare or large futures are
    // boxed, each in a statement of its own (a temporary in a statement with an
    // `.await` keeps its space in the frame for the whole statement).
    let limits = &ctx.config.ws;
    let mut decoder = Decoder::new(limits.message_size_max);
    let mut events = if leftover.is_empty() {
        Some(Vec::new())
    } else {
        decode(ctx, key, &mut decoder, &leftover)
    };
    drop(leftover);
    loop {
        let ok = match events.take() {
            Some(evs) if evs.is_empty() => true,
            evs => {
                let fut = Box::pin(on_events(ctx, key, evs));
                fut.await
            }
        };
        if !ok {
            let fut = Box::pin(flush_and_close(ctx, &mut stream, key));
            fut.await;
            return;
        }
        if ctx.shard.is_shutting_down() {
            ctx.ws
                .close_key(key, close_code::GOING_AWAY, "server shutting down".into());
        }
        // Write what is queued.
        let (batch, closing) = take_output(&ctx.ws, key);
        if !batch.is_empty() {
            let fut = Box::pin(write_bounded(ctx, &mut stream, batch));
            if !fut.await {
                return;
            }
            events = Some(Vec::new());
            continue;
        }
        if closing {
            let fut = Box::pin(flush_and_close(ctx, &mut stream, key));
            fut.await;
            return;
        }
        // Wait for bytes or for output; shutdown reaches us as a close on the queue
        // (`WsShard::close_all`). Both futures live in this frame: an idle connection
        // allocates nothing while it waits.
        let wake = {
            let readable = std::pin::pin!(stream.readable(false));
            let pending = std::pin::pin!(Pending { ws: &ctx.ws, key });
            match reactor::timer::select2_pinned(readable, pending).await {
                reactor::timer::Either::Left(r) => Wake::Readable(r),
                reactor::timer::Either::Right(()) => Wake::Output,
            }
        };
        events = match wake {
            Wake::Output => Some(Vec::new()),
            Wake::Readable(Err(_)) => return,
            Wake::Readable(Ok(())) => {
                let buf = ctx.ws.take_buf();
                let fut = Box::pin(stream.read(buf));
                let (res, buf) = fut.await;
                let events = match res {
                    Ok(0) | Err(_) => None,
                    Ok(n) => decode(ctx, key, &mut decoder, &buf[..n]),
                };
                // The buffer goes back to the pool at once: a connection holds one only
                // while its bytes are decoded.
                ctx.ws.put_buf(buf);
                events
            }
        };
    }
}

/// Drains the queue into one write batch; also says whether a close is pending.
fn take_output(ws: &WsShard, key: usize) -> (Vec<u8>, bool) {
    let mut slots = ws.slots.borrow_mut();
    let Some(slot) = slots.get_mut(key) else {
        return (Vec::new(), true);
    };
    let mut out = Vec::new();
    while let Some(f) = slot.outq.front() {
        if !out.is_empty() && out.len() + f.len() > WRITE_BATCH_SIZE_MAX {
            break;
        }
        let f = slot.outq.pop_front().expect("front");
        slot.outq_bytes -= f.len();
        out.extend_from_slice(&f);
    }
    if slot.outq.is_empty() {
        slot.outq = VecDeque::new(); // give the queue's memory back while idle
    }
    (out, slot.close.is_some())
}

/// Writes `bytes`, giving up after the idle timeout: a client that stops reading (a
/// zero TCP window) must not hold its connection, slot and per-IP count forever, since
/// nothing else can interrupt a write in progress. False when the connection is done.
async fn write_bounded(ctx: &ShardCtx, stream: &mut TcpStream, bytes: Vec<u8>) -> bool {
    match monoio::time::timeout(ctx.config.ws.idle_timeout, stream.write_all(bytes)).await {
        Ok((Ok(_), _)) => true,
        Ok((Err(_), _)) => false,
        Err(_) => {
            inc(&ctx.ws.closed_slow);
            false
        }
    }
}

/// Writes the close frame (if one is pending) and closes.
async fn flush_and_close(ctx: &Rc<ShardCtx>, stream: &mut TcpStream, key: usize) {
    let close = ctx
        .ws
        .slots
        .borrow_mut()
        .get_mut(key)
        .and_then(|s| s.close.take());
    let (code, reason) = close.unwrap_or((close_code::NORMAL, Cow::Borrowed("")));
    let mut out = Vec::new();
    codec::encode_close(code, &reason, &mut out);
    if write_bounded(ctx, stream, out).await {
        let _ = stream.shutdown().await;
    }
}

/// Decodes received bytes into events; `None` when the connection must close (the
/// close code is already set).
fn decode(ctx: &ShardCtx, key: usize, decoder: &mut Decoder, bytes: &[u8]) -> Option<Vec<WsEvent>> {
    let now = ctx.now().as_secs();
    if let Some(s) = ctx.ws.slots.borrow_mut().get_mut(key) {
        s.last_seen = now;
        s.ping_sent = false;
    }
    let mut events = Vec::new();
    if let Err(e) = decoder.decode(bytes, |ev| events.push(ev)) {
        // The messages before the violation are still acted on; the close code is set,
        // so the connection closes once they are handled.
        ctx.ws.close_key(key, e.code, e.reason.into());
    }
    Some(events)
}

/// Acts on decoded events; false when the connection must close.
async fn on_events(ctx: &Rc<ShardCtx>, key: usize, events: Option<Vec<WsEvent>>) -> bool {
    let limits = &ctx.config.ws;
    let Some(events) = events else { return false };
    for ev in events {
        match ev {
            WsEvent::Text(text) => on_text(ctx, key, &text).await,
            WsEvent::Binary(_) | WsEvent::Pong => {}
            WsEvent::Ping(p) => {
                let mut f = Vec::new();
                codec::encode_pong(&p, &mut f);
                ctx.ws.enqueue(key, f.into_boxed_slice(), limits);
            }
            WsEvent::Close(c) => {
                // Echo the client's code (RFC 6455 §5.5.1); refuse codes no endpoint
                // may send.
                let (code, reason) = match c {
                    None => (close_code::NORMAL, ""),
                    Some((code, _)) if codec::valid_close_code(code) => (code, ""),
                    Some(_) => (close_code::PROTOCOL_ERROR, "invalid close code"),
                };
                ctx.ws.close_key(key, code, reason.into());
                return false;
            }
        }
    }
    true
}

fn text_frame(payload: &[u8]) -> Box<[u8]> {
    let mut f = Vec::with_capacity(codec::text_frame_len(payload.len()));
    codec::encode_text(payload, &mut f);
    f.into_boxed_slice()
}

async fn on_text(ctx: &Rc<ShardCtx>, key: usize, text: &[u8]) {
    let limits = &ctx.config.ws;
    let (identity, mesh, authorized) = match ctx.ws.slots.borrow().get(key) {
        Some(s) => (s.peer_id.clone(), s.mesh.clone(), s.authorized),
        None => return,
    };
    match signaling::interpret(text, &identity) {
        Action::Register => {
            let peers: Vec<Box<str>> = if authorized {
                let replies = ctx
                    .shard
                    .ask_all(|_| Msg::WsPeerList(Box::new((mesh.clone(), identity.clone()))))
                    .await;
                let mut all = Vec::new();
                for r in replies {
                    if let Ok(Msg::WsPeers(p)) = r {
                        all.extend(*p);
                    }
                }
                all
            } else {
                Vec::new()
            };
            let frame = signaling::peer_list_frame(peers.iter().map(|p| &**p));
            ctx.ws.enqueue(key, text_frame(&frame), limits);
        }
        Action::Heartbeat | Action::Ignore(_) => {}
        Action::Relay {
            kind,
            target,
            frame,
        } => {
            if !authorized {
                let reason = format!(
                    "not authorized to send {}: this peer has no API key or approved pairing",
                    kind.as_str()
                );
                ctx.ws
                    .enqueue(key, text_frame(&signaling::error_frame(&reason)), limits);
                return;
            }
            let frame = text_frame(&frame);
            let owner = ctx.shard.shard_of(&target);
            if owner == ctx.shard.id() {
                ctx.ws.deliver(&target, mesh.as_deref(), frame, limits);
                return;
            }
            let mut msg = Msg::WsRelay(Box::new(Relay {
                target: target.into(),
                mesh,
                frame,
            }));
            for _ in 0..RELAY_RETRIES_MAX {
                match ctx.shard.try_tell(owner, msg) {
                    Ok(()) => return,
                    Err(back) => {
                        msg = back;
                        reactor::yield_now().await;
                    }
                }
            }
            inc(&ctx.ws.refused);
            let reason = "relay dropped: server overloaded";
            ctx.ws
                .enqueue(key, text_frame(&signaling::error_frame(reason)), limits);
        }
    }
}
