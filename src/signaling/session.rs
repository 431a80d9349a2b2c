//! One signaling connection on its owner shard: the long-lived task that waits for
//! readability or output, decodes frames (sans-IO codec), acts on signaling messages and
//! writes what its slot's bounded queue holds. An idle connection allocates nothing: the
//! read buffer is borrowed from the shard's pool only while bytes are decoded.
//!
//! I/O over a monoio socket, generic over the shard layer: the connection table is the
//! shard's ([`Owns`]), a relay to a peer of another shard is a tell to its owner and
//! the peer list of `register` an ask to every shard, under the layer's one
//! back-pressure policy.

use std::borrow::Cow;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use reactor::recv_ring::{MultiRecv, RecvRing};
use std::os::fd::AsRawFd;

use crate::shard::{self, Owns, Request, Shard};
use crate::signaling::api::{peers, release_ip, table};
use crate::signaling::ops::{Op, Relay, Reply};
use crate::signaling::store::{inc, take_output, ConnTable, PeerSlot};
use crate::tls::Transport;
use crate::ws::codec::{self, close_code, Decoder, WsEvent};
use crate::ws::signaling::{self, Action};

/// What the connection loop needs of the shard it runs on.
pub trait Host: Shard + Owns<ConnTable> + 'static {}

impl<S: Shard + Owns<ConnTable> + 'static> Host for S {}

/// The long-lived task of one signaling connection: writes the 101 (`switching`), runs
/// the connection, then gives its slot in the table and its client IP's count back. Its
/// future is what an idle connection costs, so everything that is not
/// waiting-while-idle is boxed, and the connection's state is held once: in [`Conn`],
/// captured by the task's block and lent to [`run_peer`] (an `async fn` keeps both
/// its arguments and their moved copies in its state; a block used in place does not).
pub fn serve_peer<S: Host>(
    sh: Rc<S>,
    stream: Transport,
    key: usize,
    switching: Vec<u8>,
    leftover: Vec<u8>,
    client_ip: IpAddr,
    echo: bool,
) -> impl Future<Output = ()>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let mut decoder = Decoder::new(table(&*sh).limits().message_size_max);
    // Bytes that came with the upgrade are decoded now (and acted on once the 101 is
    // out), so that the task does not keep their buffer.
    let events = if leftover.is_empty() {
        Some(Decoded::default())
    } else {
        decode(&*sh, key, &mut decoder, &leftover)
    };
    drop(leftover);
    let mut conn = Conn {
        sh,
        stream,
        key,
        decoder,
        events,
        rx: None,
        client_ip,
        echo,
    };
    async move {
        let fut = Box::pin(write_bounded(
            &*conn.sh,
            &mut conn.stream,
            conn.key,
            switching,
        ));
        if fut.await {
            run_peer(&mut conn).await;
        }
        // Cleanup: the slot is this task's. (Boxed: a release that waits for room in a
        // full mailbox must not grow every idle connection's future.)
        drop(conn.rx.take());
        table(&*conn.sh).unregister(conn.key);
        let fut = Box::pin(release_ip(&*conn.sh, conn.client_ip));
        fut.await;
    }
}

/// One signaling connection's state, owned by its task ([`serve_peer`]).
struct Conn<S> {
    sh: Rc<S>,
    stream: Transport,
    key: usize,
    decoder: Decoder,
    /// Decoded input not yet acted on; `None` when the connection is done.
    events: Option<Decoded>,
    /// On io_uring, bytes arrive through the shard's multishot receive (no poll + read
    /// per wakeup; the inbox is empty, unallocated, while the peer is idle).
    rx: Option<MultiRecv>,
    client_ip: IpAddr,
    echo: bool,
}

/// Completes when `ready` holds for connection `key`'s slot (or the slot is gone);
/// until then the slot holds the task's waker. What the session waits on while idle
/// ([`output_or_close`]) and while it writes ([`write_abort`]).
struct SlotWait<'a, F> {
    ws: &'a ConnTable,
    key: usize,
    /// A closure with no captures: no space in the (idle) task's frame.
    ready: F,
}

/// Output to write, or a close.
fn output_or_close(ws: &ConnTable, key: usize) -> SlotWait<'_, impl Fn(&PeerSlot) -> bool> {
    let ready = |s: &PeerSlot| !s.outq.is_empty() || s.close.is_some();
    SlotWait { ws, key, ready }
}

/// The idle sweep abandons the write in progress.
fn write_abort(ws: &ConnTable, key: usize) -> SlotWait<'_, impl Fn(&PeerSlot) -> bool> {
    let ready = |s: &PeerSlot| s.write_abort;
    SlotWait { ws, key, ready }
}

impl<F: Fn(&PeerSlot) -> bool> Future for SlotWait<'_, F> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut slots = self.ws.slots.borrow_mut();
        let Some(slot) = slots.get_mut(self.key) else {
            return Poll::Ready(());
        };
        if (self.ready)(slot) {
            return Poll::Ready(());
        }
        if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            slot.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

enum Wake {
    Readable(std::io::Result<()>),
    /// Bytes from the multishot receive (io_uring): the count and the buffer.
    Received(std::io::Result<usize>, Vec<u8>),
    Output,
}

async fn run_peer<S: Host>(c: &mut Conn<S>)
where
    Op: Request<S::Msg, Reply = Reply>,
{
    // This future is what every idle connection costs, so rare or large futures are
    // boxed, each in a statement of its own (a temporary in a statement with an
    // `.await` keeps its space in the frame for the whole statement).
    c.rx = RecvRing::current().and_then(|r| r.recv(c.stream.as_raw_fd()).ok());
    loop {
        // Most events are acted on at once; only what must wait (a `register` asking
        // every shard, a full mailbox) takes the boxed, async path. (Decided in a
        // statement of its own: the events and what waits are not kept in the frame
        // while the boxed future runs.)
        let ok = {
            let now = match c.events.take() {
                Some((evs, None)) if evs.is_empty() => Ok(true),
                None => Ok(false),
                Some((evs, violation)) => {
                    on_events_now(&*c.sh, c.key, evs.into_iter(), violation, c.echo)
                        .map_err(|wait| Box::pin(on_events_later(&*c.sh, c.key, wait, c.echo)))
                }
            };
            match now {
                Ok(ok) => ok,
                Err(fut) => fut.await,
            }
        };
        if !ok {
            let fut = Box::pin(flush_and_close(&*c.sh, &mut c.stream, c.key));
            fut.await;
            return;
        }
        let ws = table(&*c.sh);
        if ws.is_shutting_down() {
            ws.close_key(c.key, close_code::GOING_AWAY, "server shutting down".into());
        }
        // Write what is queued.
        let (batch, closing) = take_output(ws, c.key);
        if !batch.is_empty() {
            let fut = Box::pin(write_bounded(&*c.sh, &mut c.stream, c.key, batch));
            if !fut.await {
                return;
            }
            // Bytes that came in during the write are taken now, not only once the
            // queue is empty: a peer with output always queued (a busy relay target)
            // still has its own messages, pongs and heartbeats read (with the one-shot
            // reads of the epoll driver, they are read when its queue empties).
            let ready = c.rx.as_mut().is_some_and(|rx| rx.ready());
            c.events = match c.rx.as_mut() {
                Some(rx) if ready => match rx.recv(Vec::new()).await {
                    // The client half-closed: what is queued and the close frame
                    // still go out (it may be reading), as on the one-shot path.
                    (Ok(0), _) => None,
                    (Err(_), _) => return,
                    (Ok(n), mut buf) => open_decode(c, &mut buf, n),
                },
                _ => Some(Decoded::default()),
            };
            continue;
        }
        // Empty, but a value to drop: not kept across the wait below.
        drop(batch);
        if closing {
            let fut = Box::pin(flush_and_close(&*c.sh, &mut c.stream, c.key));
            fut.await;
            return;
        }
        // Wait for bytes or for output; shutdown reaches us as a close on the queue
        // (`ConnTable::close_all`). Both futures live in this frame: an idle connection
        // allocates nothing while it waits.
        let wake = {
            let pending = std::pin::pin!(output_or_close(table(&*c.sh), c.key));
            match c.rx.as_mut() {
                Some(rx) => {
                    let received = std::pin::pin!(rx.recv(Vec::new()));
                    match reactor::timer::select2_pinned(received, pending).await {
                        reactor::timer::Either::Left((r, buf)) => Wake::Received(r, buf),
                        reactor::timer::Either::Right(()) => Wake::Output,
                    }
                }
                None => {
                    let readable = std::pin::pin!(c.stream.readable(false));
                    match reactor::timer::select2_pinned(readable, pending).await {
                        reactor::timer::Either::Left(r) => Wake::Readable(r),
                        reactor::timer::Either::Right(()) => Wake::Output,
                    }
                }
            }
        };
        c.events = match wake {
            Wake::Output => Some(Decoded::default()),
            // A half-close: flushed and closed, as on the one-shot path.
            Wake::Received(Ok(0), _) => None,
            Wake::Received(Err(_), _) => return,
            Wake::Received(Ok(n), mut buf) => open_decode(c, &mut buf, n),
            Wake::Readable(Err(_)) => return,
            Wake::Readable(Ok(())) => {
                let buf = table(&*c.sh).take_buf();
                let fut = Box::pin(c.stream.read_raw(buf));
                let (res, mut buf) = fut.await;
                let events = match res {
                    Ok(0) | Err(_) => None,
                    Ok(n) => open_decode(c, &mut buf, n),
                };
                // The buffer goes back to the pool at once: a connection holds one only
                // while its bytes are decoded.
                table(&*c.sh).put_buf(buf);
                events
            }
        };
    }
}

/// Writes `bytes`, giving up when the idle sweep finds the write in progress for the
/// whole idle timeout (`PeerSlot::write_abort`): a client that stops reading (a zero
/// TCP window) must not hold its connection, slot and per-IP count forever, since
/// nothing else can interrupt a write in progress. The sweep (which runs until the
/// shard has drained, shutdown included) bounds the write instead of a timer per write
/// (one fewer timer per relayed frame). False when the connection is done.
async fn write_bounded<S: Host, B: monoio::buf::IoBuf + AsRef<[u8]>>(
    sh: &S,
    stream: &mut Transport,
    key: usize,
    bytes: B,
) -> bool {
    table(sh).start_write(key, sh.now().as_secs());
    let write = std::pin::pin!(stream.write_all(bytes));
    let abort = std::pin::pin!(write_abort(table(sh), key));
    let done = reactor::timer::select2_pinned(write, abort).await;
    let mut slots = table(sh).slots.borrow_mut();
    if let Some(s) = slots.get_mut(key) {
        s.writing = None;
        // A write that finished after the sweep flagged it (but before the task saw
        // the flag) did not stall: the flag must not cut the next write (the close
        // frame the sweep's close asks for).
        if matches!(done, reactor::timer::Either::Left(_)) {
            s.write_abort = false;
        }
        // The abort's waker is done with; frames queued during the write are taken by
        // the caller's next turn (a waker left here would wake the task for nothing).
        s.waker = None;
    }
    drop(slots);
    match done {
        reactor::timer::Either::Left((Ok(_), _)) => true,
        reactor::timer::Either::Left((Err(_), _)) => false,
        reactor::timer::Either::Right(()) => {
            inc(&table(sh).closed_slow);
            false
        }
    }
}

/// Writes what is still queued (replies to messages that came before the client's
/// close, in the same read: an echo, a pong), then the close frame, and closes. The
/// queue is bounded (`outbound_bytes_max`); a close for a full queue emptied it.
async fn flush_and_close<S: Host>(sh: &S, stream: &mut Transport, key: usize) {
    let mut out = Vec::new();
    loop {
        let (batch, _) = take_output(table(sh), key);
        if batch.is_empty() {
            break;
        }
        out.extend_from_slice(&batch);
    }
    let close = table(sh).close_reason(key);
    let (code, reason) = close.unwrap_or((close_code::NORMAL, Cow::Borrowed("")));
    codec::encode_close(code, &reason, &mut out);
    if write_bounded(sh, stream, key, out).await {
        let _ = stream.shutdown().await;
    }
}

/// Decoded input: the complete messages and control frames, then the protocol
/// violation that ended decoding, if any.
type Decoded = (Vec<WsEvent>, Option<codec::WsError>);

/// Decodes `buf[..n]`, bytes just received from the socket (TLS: decrypted first, see
/// `Transport::open`), into events; `None` when the connection is gone.
fn open_decode<S: Host>(c: &mut Conn<S>, buf: &mut Vec<u8>, n: usize) -> Option<Decoded> {
    match c.stream.open(buf, n) {
        Ok(m) => decode(&*c.sh, c.key, &mut c.decoder, &buf[..m]),
        Err(_) => None,
    }
}

/// Decodes received bytes into events; `None` when the connection is gone.
fn decode<S: Host>(sh: &S, key: usize, decoder: &mut Decoder, bytes: &[u8]) -> Option<Decoded> {
    let now = sh.now().as_secs();
    if let Some(s) = table(sh).slots.borrow_mut().get_mut(key) {
        s.last_seen = now;
        s.ping_sent = false;
    }
    let mut events = Vec::new();
    let violation = decoder.decode(bytes, |ev| events.push(ev)).err();
    Some((events, violation))
}

/// Decoded events that wait on something before they can be acted on: the first
/// one's pending work, then the rest of the batch and the violation that ended it.
struct Waiting<M> {
    later: Later<M>,
    rest: std::vec::IntoIter<WsEvent>,
    violation: Option<codec::WsError>,
}

/// The part of acting on a text frame that has to wait.
enum Later<M> {
    /// `register`: the peer lists of every shard.
    Register,
    /// A relay for another shard whose mailbox was full: its owner and the message.
    Relay(shard::ShardId, M),
}

/// Acts on decoded events, in order, as far as it can without waiting; `Ok(false)`
/// when the connection must close, `Err` with what must wait (and what comes after).
fn on_events_now<S: Host>(
    sh: &S,
    key: usize,
    mut events: std::vec::IntoIter<WsEvent>,
    violation: Option<codec::WsError>,
    echo: bool,
) -> Result<bool, Waiting<S::Msg>>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let ws = table(sh);
    while let Some(ev) = events.next() {
        match ev {
            WsEvent::Text(text) if echo => ws.enqueue(key, text_frame(text.as_bytes())),
            WsEvent::Binary(bytes) if echo => {
                let mut f = Vec::with_capacity(codec::text_frame_len(bytes.len()));
                codec::encode_binary(&bytes, &mut f);
                ws.enqueue(key, f.into_boxed_slice());
            }
            WsEvent::Text(text) => {
                if let Some(later) = on_text_now(sh, key, &text) {
                    return Err(Waiting {
                        later,
                        rest: events,
                        violation,
                    });
                }
            }
            WsEvent::Binary(_) | WsEvent::Pong => {}
            WsEvent::Ping(p) => {
                let mut f = Vec::new();
                codec::encode_pong(&p, &mut f);
                ws.enqueue(key, f.into_boxed_slice());
            }
            WsEvent::Close(c) => {
                // Echo the client's code (RFC 6455 §5.5.1); refuse codes no endpoint
                // may send.
                let (code, reason) = match c {
                    None => (close_code::NORMAL, ""),
                    Some((code, _)) if codec::valid_close_code(code) => (code, ""),
                    Some(_) => (close_code::PROTOCOL_ERROR, "invalid close code"),
                };
                ws.close_key(key, code, reason.into());
                return Ok(false);
            }
        }
    }
    // The messages before a violation are acted on (and answered: what they queued is
    // written before the close frame); then the connection closes with its code.
    if let Some(e) = violation {
        ws.close_key(key, e.code, e.reason.into());
        return Ok(false);
    }
    Ok(true)
}

/// Does what had to wait, then acts on the rest of the batch (which may wait again).
async fn on_events_later<S: Host>(sh: &S, key: usize, mut wait: Waiting<S::Msg>, echo: bool) -> bool
where
    Op: Request<S::Msg, Reply = Reply>,
{
    loop {
        match wait.later {
            Later::Register => register(sh, key).await,
            Later::Relay(owner, msg) => relay_to_full_mailbox(sh, key, owner, msg).await,
        }
        match on_events_now(sh, key, wait.rest, wait.violation, echo) {
            Ok(ok) => return ok,
            Err(next) => wait = next,
        }
    }
}

fn text_frame(payload: &[u8]) -> Box<[u8]> {
    let mut f = Vec::with_capacity(codec::text_frame_len(payload.len()));
    codec::encode_text(payload, &mut f);
    f.into_boxed_slice()
}

/// Acts on a text frame as far as it can without waiting: a relay to a peer of this
/// shard or into another shard's mailbox, an error frame, nothing. The sender's id and
/// mesh are read in place (nothing cloned) and the relayed frame is built framed, in
/// one allocation. Returns what must wait.
fn on_text_now<S: Host>(sh: &S, key: usize, text: &str) -> Option<Later<S::Msg>>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let ws = table(sh);
    let slots = ws.slots.borrow();
    let slot = slots.get(key)?;
    match signaling::interpret_str(text, &slot.peer_id) {
        Action::Register => Some(Later::Register),
        Action::Heartbeat | Action::Ignore(_) => None,
        Action::TooDeep(e) => {
            // Refused like an unauthorized relay: an error frame, the connection stays
            // open (a peer that keeps sending them is bounded by the outbound queue).
            drop(slots);
            inc(&ws.refused);
            ws.enqueue(key, text_frame(&signaling::error_frame(&e.to_string())));
            None
        }
        Action::Relay {
            kind,
            target,
            payload,
        } => {
            if !slot.authorized {
                drop(slots);
                let reason = format!(
                    "not authorized to send {}: this peer has no API key or approved pairing",
                    kind.as_str()
                );
                ws.enqueue(key, text_frame(&signaling::error_frame(&reason)));
                return None;
            }
            let frame = signaling::relay_text_frame(kind, &slot.peer_id, &target, payload)
                .into_boxed_slice();
            let owner = sh.shard_of(target.as_bytes());
            if owner == sh.id() {
                drop(slots);
                ws.deliver_from(key, &target, frame);
                return None;
            }
            let mesh = slot.mesh.clone();
            drop(slots);
            let relay = Op::Relay(Box::new(Relay {
                target: target.into(),
                mesh,
                frame,
            }));
            // One try now (no future, nothing boxed: the common case); a full mailbox
            // takes the async path with the layer's policy (`relay_to_full_mailbox`).
            match sh.try_tell(owner, relay.into_msg()) {
                Ok(()) => None,
                Err(back) => Some(Later::Relay(owner, back)),
            }
        }
    }
}

/// Answers `register` with the authorized peers of the sender's mesh on every shard; an
/// error frame when a shard cannot be asked (its mailbox stayed full).
async fn register<S: Host>(sh: &S, key: usize)
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let (identity, mesh, authorized) = match table(sh).slots.borrow().get(key) {
        Some(s) => (s.peer_id.clone(), s.mesh.clone(), s.authorized),
        None => return,
    };
    let peers = if authorized {
        peers(sh, mesh, identity).await
    } else {
        Ok(Vec::new())
    };
    let frame = match peers {
        Ok(peers) => signaling::peer_list_frame(peers.iter().map(|p| &**p)),
        Err(e) => {
            inc(&table(sh).refused);
            let reason = format!("peer list unavailable: {}", e.message.unwrap_or_default());
            signaling::error_frame(&reason)
        }
    };
    table(sh).enqueue(key, text_frame(&frame));
}

/// A message already built, sent again under the layer's policy ([`shard::tell`]).
struct Built<M>(M);

impl<M> Request<M> for Built<M> {
    type Reply = ();
    fn into_msg(self) -> M {
        self.0
    }
    fn reply(_: M) -> Option<()> {
        None
    }
}

/// A relay whose owner shard's mailbox was full (its first try): a tell under the shard
/// layer's one policy (it waits up to `shard::ASK_PATIENCE` for room: backpressure
/// first), then dropped with an error frame to the sender (refusal when it persists).
async fn relay_to_full_mailbox<S: Host>(sh: &S, key: usize, owner: shard::ShardId, msg: S::Msg) {
    if shard::tell(sh, owner, Built(msg)).await.is_ok() {
        return;
    }
    let ws = table(sh);
    inc(&ws.refused);
    let reason = "relay dropped: server overloaded";
    ws.enqueue(key, text_frame(&signaling::error_frame(reason)));
}
