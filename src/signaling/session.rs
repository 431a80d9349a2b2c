//! One signaling connection on its owner shard: the long-lived task that waits for
//! readability or output, decodes frames (sans-IO codec), acts on signaling messages and
//! writes what its slot's bounded queue holds. An idle connection allocates nothing: the
//! read buffer is borrowed from the shard's pool only while bytes are decoded.

use std::borrow::Cow;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use reactor::recv_ring::RecvRing;
use std::os::fd::AsRawFd;

use crate::server::{Msg, ShardCtx};
use crate::signaling::api::release_ip;
use crate::signaling::ops::{Op, Relay, Reply};
use crate::signaling::store::{inc, take_output, ConnTable};
use crate::ws::codec::{self, close_code, Decoder, WsEvent};
use crate::ws::signaling::{self, Action};

/// Times a relay waits (yielding) for room in a full mailbox before it is dropped with
/// an error frame to the sender: backpressure first, refusal when it persists.
const RELAY_RETRIES_MAX: usize = 64;

/// The long-lived task of one signaling connection. Its future is what an idle
/// connection costs, so everything that is not waiting-while-idle is boxed.
pub(super) async fn serve_peer(
    ctx: Rc<ShardCtx>,
    mut stream: TcpStream,
    key: usize,
    switching: Vec<u8>,
    leftover: Vec<u8>,
    client_ip: IpAddr,
    echo: bool,
) {
    let fut = Box::pin(write_bounded(&ctx, &mut stream, switching));
    if fut.await {
        run_peer(&ctx, stream, key, leftover, echo).await;
    }
    // Cleanup: the slot is this task's.
    ctx.ws.unregister(key);
    release_ip(&ctx, client_ip).await;
}

/// Completes when connection `key` has output to write or must close.
struct Pending<'a> {
    ws: &'a ConnTable,
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
    /// Bytes from the multishot receive (io_uring): the count and the buffer.
    Received(std::io::Result<usize>, Vec<u8>),
    Output,
}

async fn run_peer(
    ctx: &Rc<ShardCtx>,
    mut stream: TcpStream,
    key: usize,
    leftover: Vec<u8>,
    echo: bool,
) {
    // This future is what every idle connection costs, so rare or large futures are
    // boxed, each in a statement of its own (a temporary in a statement with an
    // `.await` keeps its space in the frame for the whole statement).
    let limits = &ctx.config.ws;
    // On io_uring, bytes arrive through the shard's multishot receive (no poll + read
    // per wakeup; the inbox is empty, unallocated, while the peer is idle).
    let mut rx = RecvRing::current().and_then(|r| r.recv(stream.as_raw_fd()).ok());
    let mut decoder = Decoder::new(limits.message_size_max);
    let mut events = if leftover.is_empty() {
        Some(Decoded::default())
    } else {
        decode(ctx, key, &mut decoder, &leftover)
    };
    drop(leftover);
    loop {
        let ok = match events.take() {
            Some((evs, None)) if evs.is_empty() => true,
            evs => {
                let fut = Box::pin(on_events(ctx, key, evs, echo));
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
            events = Some(Decoded::default());
            continue;
        }
        if closing {
            let fut = Box::pin(flush_and_close(ctx, &mut stream, key));
            fut.await;
            return;
        }
        // Wait for bytes or for output; shutdown reaches us as a close on the queue
        // (`ConnTable::close_all`). Both futures live in this frame: an idle connection
        // allocates nothing while it waits.
        let wake = {
            let pending = std::pin::pin!(Pending { ws: &ctx.ws, key });
            match rx.as_mut() {
                Some(rx) => {
                    let received = std::pin::pin!(rx.recv(Vec::new()));
                    match reactor::timer::select2_pinned(received, pending).await {
                        reactor::timer::Either::Left((r, buf)) => Wake::Received(r, buf),
                        reactor::timer::Either::Right(()) => Wake::Output,
                    }
                }
                None => {
                    let readable = std::pin::pin!(stream.readable(false));
                    match reactor::timer::select2_pinned(readable, pending).await {
                        reactor::timer::Either::Left(r) => Wake::Readable(r),
                        reactor::timer::Either::Right(()) => Wake::Output,
                    }
                }
            }
        };
        events = match wake {
            Wake::Output => Some(Decoded::default()),
            Wake::Received(Ok(0) | Err(_), _) => return,
            Wake::Received(Ok(n), buf) => decode(ctx, key, &mut decoder, &buf[..n]),
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

/// Writes what is still queued (replies to messages that came before the client's
/// close, in the same read: an echo, a pong), then the close frame, and closes. The
/// queue is bounded (`outbound_bytes_max`); a close for a full queue emptied it.
async fn flush_and_close(ctx: &Rc<ShardCtx>, stream: &mut TcpStream, key: usize) {
    let mut out = Vec::new();
    loop {
        let (batch, _) = take_output(&ctx.ws, key);
        if batch.is_empty() {
            break;
        }
        out.extend_from_slice(&batch);
    }
    let close = ctx
        .ws
        .slots
        .borrow_mut()
        .get_mut(key)
        .and_then(|s| s.close.take());
    let (code, reason) = close.unwrap_or((close_code::NORMAL, Cow::Borrowed("")));
    codec::encode_close(code, &reason, &mut out);
    if write_bounded(ctx, stream, out).await {
        let _ = stream.shutdown().await;
    }
}

/// Decoded input: the complete messages and control frames, then the protocol
/// violation that ended decoding, if any.
type Decoded = (Vec<WsEvent>, Option<codec::WsError>);

/// Decodes received bytes into events; `None` when the connection is gone.
fn decode(ctx: &ShardCtx, key: usize, decoder: &mut Decoder, bytes: &[u8]) -> Option<Decoded> {
    let now = ctx.now().as_secs();
    if let Some(s) = ctx.ws.slots.borrow_mut().get_mut(key) {
        s.last_seen = now;
        s.ping_sent = false;
    }
    let mut events = Vec::new();
    let violation = decoder.decode(bytes, |ev| events.push(ev)).err();
    Some((events, violation))
}

/// Acts on decoded events; false when the connection must close. `echo`: messages
/// are sent back as they came (the `/ws-echo` test endpoint) instead of interpreted.
async fn on_events(ctx: &Rc<ShardCtx>, key: usize, events: Option<Decoded>, echo: bool) -> bool {
    let limits = &ctx.config.ws;
    let Some((events, violation)) = events else {
        return false;
    };
    for ev in events {
        match ev {
            WsEvent::Text(text) if echo => ctx.ws.enqueue(key, text_frame(&text), limits),
            WsEvent::Binary(bytes) if echo => {
                let mut f = Vec::with_capacity(codec::text_frame_len(bytes.len()));
                codec::encode_binary(&bytes, &mut f);
                ctx.ws.enqueue(key, f.into_boxed_slice(), limits);
            }
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
    // The messages before a violation are acted on (and answered: what they queued is
    // written before the close frame); then the connection closes with its code.
    if let Some(e) = violation {
        ctx.ws.close_key(key, e.code, e.reason.into());
        return false;
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
                    .ask_all(|_| {
                        Msg::Signaling(Op::PeerList(Box::new((mesh.clone(), identity.clone()))))
                    })
                    .await;
                let mut all = Vec::new();
                for r in replies {
                    if let Ok(Msg::SignalingReply(Reply::Peers(p))) = r {
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
            let mut msg = Msg::Signaling(Op::Relay(Box::new(Relay {
                target: target.into(),
                mesh,
                frame,
            })));
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
