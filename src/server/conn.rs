//! One HTTP/1.1 connection: read, parse (sans-IO), route, write, in order.
//!
//! Hostile clients are bounded here (issue 13):
//! * the request head must arrive whole within `header_timeout` (a byte trickle does
//!   not reset it), and a body at `body_rate_min` bytes/s after the same grace; late
//!   requests get 408 and the connection is closed. A connection's first request has
//!   the deadline from the accept (issue 20): a connection that sends nothing at all is
//!   closed at `header_timeout`, without a response (as nginx's `client_header_timeout`
//!   does: there is no request to answer, and a browser's unused preconnect must not
//!   read a 408 as the answer to its next request); between keep-alive requests the
//!   idle timeout applies until the first byte of the next request, whatever it is:
//!   empty lines (which a server may skip before a request line) start the header
//!   deadline too, and a connection that sent only those is closed at it without a
//!   response (review of issue 20: `\r\n` every 200 ms held a connection forever);
//! * each client IP may hold `connections_per_ip_max` plain HTTP connections per
//!   shard; more get 503 and are closed ([`admit`]);
//! * every early close after an error response is a *lingering* close (`linger::linger_close`):
//!   the write side is shut and what the client is still sending is read and dropped,
//!   bounded in time and bytes, so the client reads its 4xx instead of a reset;
//! * graceful shutdown: requests already received are answered (`connection: close`),
//!   idle keep-alive connections close after [`SHUTDOWN_IDLE_GRACE`] and half-sent
//!   requests after [`SHUTDOWN_REQUEST_GRACE`];
//! * when the process runs out of file descriptors the accept loop asks every idle
//!   keep-alive connection of the shard to close ([`HttpShard::shed_idle`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use reactor::recv_ring::RecvRing;
use reactor::timer::{select2, select2_pinned, Either};
use reactor::LocalEvent;

use crate::http::{Event, Method, Parser, Response};
use crate::server::linger::{linger_close, linger_close_within};
use crate::server::metrics::ShardCounters;
use crate::server::msg::{AdoptHttp, Msg};
use crate::server::steer::{move_out, Moved, Steer};
use crate::server::{router, ShardCtx};
use crate::tls::Transport;

/// Bytes asked for per read. 4 KiB holds a typical API request (headers and a small
/// JSON body) in one read; larger bodies take several. It bounds one read, not the
/// request: the parser enforces the header and body limits.
const READ_CHUNK_SIZE: usize = 4096;

/// The most read- or write-buffer capacity a connection keeps between reads (a burst
/// can hand it a larger inbox, or fill a write batch: see `serve`); beyond it the buffer
/// is replaced by a small one.
const READ_BUFFER_KEPT_MAX: usize = 4 * READ_CHUNK_SIZE;

/// Output buffered before it is written: responses to pipelined requests are batched
/// into one write until this many bytes are pending; then the connection writes before
/// parsing more, so a client that pipelines without reading cannot grow our memory.
const WRITE_BATCH_SIZE_MAX: usize = 64 * 1024;

/// Writing a refusal (503 before serving, 408 after a deadline) is bounded by this: a
/// refused client that does not read must not hold the task and its fd.
const REFUSE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Graceful shutdown: how long a connection idle between requests is still read from
/// once shutdown begins. A keep-alive client may have a request on the wire already;
/// closing at once would reset it unanswered. Any request arriving within this is
/// answered with `connection: close`; a connection with nothing is closed after it.
const SHUTDOWN_IDLE_GRACE: Duration = Duration::from_millis(250);

/// Graceful shutdown: the lingering close of an idle connection after its grace lasts
/// at most this: long enough for a request crossing our FIN to arrive (and be dropped
/// without a reset), short enough not to hold the exit.
const SHUTDOWN_LINGER_TIME_MAX: Duration = Duration::from_secs(1);

/// Graceful shutdown: how long a half-received request may take to complete once
/// shutdown begins (rather than the whole `--shutdown-timeout`); then it is closed.
const SHUTDOWN_REQUEST_GRACE: Duration = Duration::from_secs(2);

/// Deadlines and caps for plain HTTP clients (`--http-header-timeout`,
/// `--http-body-rate-min`, `--max-http-connections-per-ip`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// The request line and headers must arrive in full within this (from the first
    /// byte of the request); later: 408 and close. Also the grace a body gets.
    pub header_timeout: Duration,
    /// A body must arrive at this many bytes per second on average, after a grace of
    /// `header_timeout` from its first byte; slower: 408 and close. 0 disables it
    /// (the idle timeout still applies to each read).
    pub body_rate_min: u64,
    /// Plain HTTP connections one client IP may hold open on one shard (a WebSocket
    /// leaves this count once upgraded; it has its own cap). More: 503 and close.
    pub connections_per_ip_max: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            header_timeout: Duration::from_secs(10),
            body_rate_min: 1024,
            connections_per_ip_max: 1024,
        }
    }
}

/// Per-shard HTTP connection bookkeeping: open connections per client IP and the
/// event that asks idle keep-alive connections to close.
#[derive(Default)]
pub struct HttpShard {
    /// Open plain HTTP connections per client IP. Bounded by the shard's open
    /// connections (an entry exists only while it counts at least one), which the
    /// file-descriptor limit and the per-IP cap bound in turn.
    per_ip: RefCell<HashMap<IpAddr, usize>>,
    /// Set (and replaced by a fresh one) to close every idle keep-alive connection.
    shed: RefCell<LocalEvent>,
}

impl HttpShard {
    /// Closes every keep-alive connection of this shard that waits between requests
    /// (requests in progress are not touched). Used when file descriptors run out.
    pub fn shed_idle(&self) {
        let old = std::mem::take(&mut *self.shed.borrow_mut());
        old.set();
    }

    fn shed_event(&self) -> LocalEvent {
        self.shed.borrow().clone()
    }
}

/// One admitted connection's place in the per-IP count; released on drop.
pub struct HttpSlot {
    ctx: Rc<ShardCtx>,
    ip: IpAddr,
}

impl Drop for HttpSlot {
    fn drop(&mut self) {
        let mut per_ip = self.ctx.http.per_ip.borrow_mut();
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Counts a new connection from `peer`; `None` when its IP is over the cap.
pub fn admit(ctx: &Rc<ShardCtx>, peer: SocketAddr) -> Option<HttpSlot> {
    let ip = peer.ip();
    let max = ctx.config.http_client_limits.connections_per_ip_max;
    let mut per_ip = ctx.http.per_ip.borrow_mut();
    let n = per_ip.entry(ip).or_insert(0);
    if *n >= max {
        return None;
    }
    *n += 1;
    Some(HttpSlot {
        ctx: ctx.clone(),
        ip,
    })
}

/// Answers a connection refused by [`admit`]: 503 with a JSON reason, then close.
pub async fn refuse_over_cap(ctx: &Rc<ShardCtx>, mut stream: Transport) {
    let max = ctx.config.http_client_limits.connections_per_ip_max;
    let mut out = Vec::new();
    Response::error(
        503,
        format!("too many HTTP connections from this address (limit {max} per shard)"),
    )
    .encode(false, false, &mut out);
    if let Ok((Ok(_), _)) = monoio::time::timeout(REFUSE_WRITE_TIMEOUT, stream.write_all(out)).await
    {
        linger_close(stream).await;
    }
}

/// Where a request in progress stands against its deadline.
#[derive(Default)]
struct Progress {
    /// When the header deadline of the next request started: the first byte read since
    /// the previous request (an empty line too, review of issue 20), or, before a
    /// connection's first request, when the connection was accepted. `None`: nothing
    /// read since the previous request (the idle timeout applies).
    head_start: Option<Instant>,
    /// When the body started, and body bytes read since.
    body: Option<(Instant, u64)>,
}

impl Progress {
    /// A connection accepted at `accepted`, before its first request: the header
    /// deadline runs from the accept, bytes or not.
    fn accepted(accepted: Instant) -> Progress {
        Progress {
            head_start: Some(accepted),
            body: None,
        }
    }

    /// Whether a connection whose deadline passed is closed without a response: no
    /// request has begun (`parser` holds nothing but empty lines), so there is nothing
    /// to answer, and a 408 would be read as the answer to the client's next request.
    fn silent(&self, parser: &Parser) -> bool {
        self.body.is_none() && parser.is_idle()
    }

    /// The instant the request in progress must be complete by (or its body must have
    /// made more progress by), `None` between requests before any byte of the next.
    fn deadline(&self, limits: &ClientLimits) -> Option<Instant> {
        match self.body {
            Some(_) if limits.body_rate_min == 0 => None,
            Some((start, bytes)) => {
                let credit = Duration::from_secs_f64(bytes as f64 / limits.body_rate_min as f64);
                Some(start + limits.header_timeout + credit)
            }
            None => self.head_start.map(|s| s + limits.header_timeout),
        }
    }

    /// Updates the state after the parser has consumed what it could.
    fn after_parse(&mut self, parser: &Parser, now: Instant) {
        if parser.is_idle() {
            // Nothing of a request, or only empty lines (which RFC 9112 §2.2 lets a
            // server skip): they do not stop the deadline that their first byte began.
            return;
        }
        if self.head_start.is_none() {
            self.head_start = Some(now);
        }
        if parser.is_reading_body() {
            if self.body.is_none() {
                self.body = Some((now, 0));
            }
        } else {
            self.body = None;
        }
    }

    /// `n` bytes were read at `now`. The first byte after the previous response starts
    /// the next request's header deadline, whatever it is: a client sending empty lines
    /// (`\r\n` every 200 ms) no longer holds the connection past it by renewing the
    /// idle timeout with each read.
    fn read(&mut self, n: usize, now: Instant) {
        if n > 0 && self.head_start.is_none() {
            self.head_start = Some(now);
        }
        if let Some((_, bytes)) = &mut self.body {
            *bytes = bytes.saturating_add(n as u64);
        }
    }
}

/// Serves one connection until the client closes it, an error, the idle timeout, or a
/// graceful shutdown (which lets a request in progress finish). `slot` is its place in
/// the per-IP count, given up when the connection becomes a WebSocket.
pub fn serve(
    ctx: &Rc<ShardCtx>,
    stream: Transport,
    peer: SocketAddr,
    slot: HttpSlot,
) -> impl std::future::Future<Output = ()> + '_ {
    // Not an `async fn` around it: that would keep the arguments a second time in
    // every idle connection's task.
    serve_from(ctx, stream, peer, slot, Arrival::Accepted)
}

/// How a connection came to this shard's [`serve_from`].
enum Arrival {
    /// Accepted here: its first request is still to come.
    Accepted,
    /// Handed over by another shard (steering) between two requests, with the bytes of
    /// the next one already received, if any.
    Moved { leftover: Vec<u8>, steer: Steer },
}

/// Takes a keep-alive HTTP connection another shard offers (`Msg::AdoptHttp`, an ask):
/// its requests name state this shard owns. The reply is `AdoptHttpReply(None)` when it
/// is served here from now on, or the connection back when this shard may not take it:
/// it is shutting down, or the client's address holds as many plain HTTP connections
/// here as it may (`connections_per_ip_max`: moves must not let one address hold more).
pub fn on_adopt(ctx: &Rc<ShardCtx>, a: Box<AdoptHttp>) -> Msg {
    if ctx.shard.is_shutting_down() {
        return Msg::AdoptHttpReply(Some(a));
    }
    let Some(slot) = admit(ctx, a.peer) else {
        return Msg::AdoptHttpReply(Some(a));
    };
    let ctx = ctx.clone();
    ShardCounters::inc(&ctx.counters.connections_open);
    monoio::spawn(async move {
        let AdoptHttp {
            conn,
            leftover,
            peer,
            moves,
        } = *a;
        if let Ok(stream) = Transport::attach(conn) {
            let arrival = Arrival::Moved {
                leftover,
                steer: Steer::moved(moves),
            };
            serve_from(&ctx, stream, peer, slot, arrival).await;
        }
        ShardCounters::dec(&ctx.counters.connections_open);
    });
    Msg::AdoptHttpReply(None)
}

/// Serves a connection, fresh or moved here (see [`serve`]).
async fn serve_from(
    ctx: &Rc<ShardCtx>,
    mut stream: Transport,
    peer: SocketAddr,
    slot: HttpSlot,
    arrival: Arrival,
) {
    // On io_uring, a keep-alive connection's bytes arrive through the shard's multishot
    // receive (one receive armed for the connection's life, buffers from the shard's
    // ring: no `recv` per request), from its second request on: the first request of
    // a connection is often its last, or an upgrade to a WebSocket, which would have
    // to cancel it again. Elsewhere, or if arming fails, one-shot reads.
    let mut rx: Option<reactor::recv_ring::MultiRecv> = None;
    let mut multishot = RecvRing::current();
    let limits = ctx.config.http_client_limits;
    let mut parser = Parser::new(ctx.config.http_limits);
    let mut out: Vec<u8> = Vec::new();
    let mut rbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK_SIZE);
    let shutdown = ctx.shard.shutdown_event().clone();
    let (mut progress, mut answered, mut steer) = match arrival {
        // The first request's header deadline runs from here (see `Progress::accepted`).
        Arrival::Accepted => (Progress::accepted(Instant::now()), false, Steer::default()),
        // Between two requests of a keep-alive connection: the idle timeout applies,
        // or the header deadline from now if bytes of the next request came along.
        Arrival::Moved { leftover, steer } => {
            let mut progress = Progress::default();
            if !leftover.is_empty() {
                progress.read(leftover.len(), Instant::now());
                parser.feed_vec(leftover);
            }
            (progress, true, steer)
        }
    };
    loop {
        // Answer everything the parser can produce from what has been read.
        let mut close = false;
        let mut linger = false;
        let mut batch_full = false;
        while let Some(ev) = parser.poll() {
            match ev {
                Event::SendContinue => out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n"),
                Event::Request(req) if router::is_ws(&req, &ctx.config) => {
                    // The signaling WebSocket: the connection leaves the HTTP loop (and,
                    // once authorized, this shard). Answer what was pipelined before it.
                    ShardCounters::inc(&ctx.counters.requests_served);
                    if !out.is_empty() && !write_bounded(ctx, &mut stream, out).await {
                        return;
                    }
                    // Bytes after the upgrade request: what the parser holds, then what
                    // the multishot receive took in since (in that order).
                    let mut leftover = parser.take_remaining();
                    if let Some(rx) = rx.take() {
                        let mut rest = rx.stop().await;
                        let n = rest.len();
                        match stream.open(&mut rest, n) {
                            Ok(m) => leftover.extend_from_slice(&rest[..m]),
                            Err(_) => return,
                        }
                    }
                    drop(slot);
                    // Boxed, as every handler below: an idle keep-alive connection's
                    // task keeps no room for what a request needs while it runs.
                    Box::pin(router::route_ws(ctx, stream, &req, leftover, peer)).await;
                    return;
                }
                Event::Request(req) if router::takes_connection(&req) => {
                    // The dashboard's event stream, a backup: they keep the connection
                    // until they end.
                    ShardCounters::inc(&ctx.counters.requests_served);
                    if !out.is_empty() && !write_bounded(ctx, &mut stream, out).await {
                        return;
                    }
                    // The stream's reads are its own from here.
                    drop(rx.take());
                    Box::pin(router::stream_route(ctx, stream, &req, peer)).await;
                    return;
                }
                Event::Request(req) => {
                    // Its deadline is met; the next request's starts with its bytes.
                    progress = Progress::default();
                    answered = true;
                    // Boxed: the handler's state (up to ~4 KiB: the largest route's)
                    // lives only while it runs, not in every idle connection's task;
                    // in a block the shard recycles (`reactor::pool`), made there (not
                    // copied in).
                    let home = Cell::new(None);
                    let handler =
                        reactor::pool::boxed_with(|| router::handle(ctx, &req, peer, &home));
                    debug_assert!(
                        handler.is_pooled(),
                        "the handler outgrew the pool's classes"
                    );
                    let resp = handler.await;
                    ShardCounters::inc(&ctx.counters.requests_served);
                    steer.answered(ctx.shard.id(), home.get());
                    let keep_alive = req.keep_alive && !shutdown.is_set();
                    let resp = if req.version_minor == 0 && keep_alive {
                        resp.with_header("connection", "keep-alive")
                    } else {
                        resp
                    };
                    resp.encode(keep_alive, req.method == Method::Head, &mut out);
                    if !keep_alive {
                        close = true;
                        // Pipelined bytes we will not answer: drain them rather than
                        // reset the response away.
                        linger = parser.buffered_len() > 0;
                        break;
                    }
                }
                Event::Error(err) => {
                    Response::from(err).encode(false, false, &mut out);
                    close = true;
                    linger = true;
                    break;
                }
            }
            if out.len() >= WRITE_BATCH_SIZE_MAX {
                batch_full = true;
                break;
            }
        }
        if !out.is_empty() {
            // A client that pipelines and never reads must not hold the connection
            // forever: writes are bounded by the idle timeout too.
            match monoio::time::timeout(ctx.config.http_idle_timeout, stream.write_all(out)).await {
                Ok((Ok(_), buf)) => {
                    // A pipelined burst fills a batch up to WRITE_BATCH_SIZE_MAX; a
                    // connection keeps only a small one between batches, and none
                    // once it has nothing more to answer (idle memory).
                    out = if buf.capacity() > READ_BUFFER_KEPT_MAX || parser.buffered_len() == 0 {
                        Vec::new()
                    } else {
                        buf
                    };
                    out.clear();
                }
                _ => return,
            }
        }
        if close {
            if linger {
                drop(rx.take());
                Box::pin(linger_close(stream)).await;
            }
            return;
        }
        if batch_full {
            // The batch limit stopped us with requests possibly still buffered: parse
            // again before reading more.
            continue;
        }
        if let Some(to) = steer.due() {
            // Between requests, nothing of the next one parsed: the connection goes to
            // the shard its requests name. A partial request waits for the next turn
            // (the move stays due).
            if parser.buffered_len() == 0 && !parser.is_reading_body() && !shutdown.is_set() {
                match Box::pin(move_out(ctx, stream, rx.take(), peer, &steer, to)).await {
                    Moved::Gone => {
                        drop(slot);
                        return;
                    }
                    Moved::Closed => return,
                    Moved::Kept(s, leftover) => {
                        // The other shard could not take it: served here, as before.
                        stream = s;
                        steer.refused();
                        multishot = RecvRing::current();
                        rbuf = Vec::with_capacity(READ_CHUNK_SIZE);
                        if !leftover.is_empty() {
                            progress.read(leftover.len(), Instant::now());
                            parser.feed_vec(leftover);
                            continue;
                        }
                    }
                }
            }
        }
        let now = Instant::now();
        progress.after_parse(&parser, now);
        // Between requests: wait for bytes, the idle timeout, shutdown, or a shed. In a
        // request: wait for bytes until its deadline (a request in progress is allowed
        // to finish during a shutdown).
        let deadline = progress.deadline(&limits);
        let wait = match deadline {
            Some(d) if d <= now => {
                drop(rx.take());
                if progress.silent(&parser) {
                    return;
                }
                return Box::pin(late(ctx, stream, &progress)).await;
            }
            Some(d) => (d - now).min(ctx.config.http_idle_timeout),
            None => ctx.config.http_idle_timeout,
        };
        if answered && rx.is_none() {
            if let Some(ring) = multishot.take() {
                rx = ring.recv(stream.as_raw_fd()).ok();
            }
        }
        if rx.is_some() {
            // The multishot receive brings its own buffer (its inbox, allocated as
            // bytes arrive): a connection waiting on it holds none, and the parser
            // none between requests.
            rbuf = Vec::new();
            parser.release_idle();
        }
        let outcome = {
            let buf = std::mem::take(&mut rbuf);
            let read = async {
                match rx.as_mut() {
                    Some(rx) => recv_open(rx, &mut stream, buf).await,
                    None => stream.read(buf).await,
                }
            };
            let mut read = std::pin::pin!(monoio::time::timeout(wait, read));
            if parser.is_idle() {
                let shed = ctx.http.shed_event();
                let woke = if shutdown.is_set() {
                    Either::Right(Either::Left(()))
                } else {
                    let other = std::pin::pin!(select2(shutdown.wait(), shed.wait()));
                    select2_pinned(read.as_mut(), other).await
                };
                match woke {
                    Either::Left(r) => Some(r),
                    // Out of fds: idle connections make room at once.
                    Either::Right(Either::Right(())) => return,
                    // Shutdown: answer a request already on its way, else close.
                    Either::Right(Either::Left(())) => {
                        monoio::time::timeout(SHUTDOWN_IDLE_GRACE, read).await.ok()
                    }
                }
            } else {
                // A request in progress may finish during a shutdown, within a grace.
                let grace = std::pin::pin!(async {
                    shutdown.wait().await;
                    monoio::time::sleep(SHUTDOWN_REQUEST_GRACE).await;
                });
                match select2_pinned(read.as_mut(), grace).await {
                    Either::Left(r) => Some(r),
                    Either::Right(()) => return,
                }
            }
        };
        let Some(outcome) = outcome else {
            // Idle through the shutdown grace: close with a FIN first, so that a
            // request crossing our close finds an orderly end (nothing was read of it:
            // the client may send it again elsewhere) rather than a reset.
            drop(rx.take());
            Box::pin(linger_close_within(stream, SHUTDOWN_LINGER_TIME_MAX)).await;
            return;
        };
        match outcome {
            Err(_elapsed) => {
                if deadline.is_some_and(|d| d <= Instant::now()) && !progress.silent(&parser) {
                    drop(rx.take());
                    return Box::pin(late(ctx, stream, &progress)).await;
                }
                // Idle past the timeout, or silent since the accept: close.
                return;
            }
            Ok((Ok(0), _)) | Ok((Err(_), _)) => return,
            Ok((Ok(n), mut buf)) => {
                progress.read(n, Instant::now());
                if rx.is_some() {
                    // A multishot receive's inbox becomes the parser's buffer (no
                    // copy), released once its requests are answered (see above).
                    buf.truncate(n);
                    parser.feed_vec(buf);
                } else {
                    // A one-shot read's buffer is kept for the next read (one read's
                    // worth).
                    parser.feed(&buf[..n]);
                    rbuf = if buf.capacity() > READ_BUFFER_KEPT_MAX {
                        Vec::with_capacity(READ_CHUNK_SIZE)
                    } else {
                        buf
                    };
                }
            }
        }
    }
}

/// The multishot receive's next bytes, as the application's (TLS: decrypted; a receive
/// that completes no record is waited past). `Ok(0)` is the end of the stream.
async fn recv_open(
    rx: &mut reactor::recv_ring::MultiRecv,
    stream: &mut Transport,
    mut buf: Vec<u8>,
) -> monoio::BufResult<usize, Vec<u8>> {
    loop {
        let (r, mut b) = rx.recv(buf).await;
        match r {
            Ok(n) if n > 0 => match stream.open_received(&mut b, n) {
                // No whole record yet: wait holding no buffer (the inbox allocates).
                Ok(0) => buf = Vec::new(),
                r => return (r, b),
            },
            r => return (r, b),
        }
    }
}

/// The request in progress missed its deadline: 408 with a reason, then close.
async fn late(ctx: &ShardCtx, mut stream: Transport, progress: &Progress) {
    let limits = &ctx.config.http_client_limits;
    let reason = if progress.body.is_some() {
        format!(
            "request body too slow: below {} bytes/s after {:?}",
            limits.body_rate_min, limits.header_timeout
        )
    } else {
        format!(
            "request header not received within {:?}",
            limits.header_timeout
        )
    };
    let mut out = Vec::new();
    Response::error(408, reason).encode(false, false, &mut out);
    if let Ok((Ok(_), _)) = monoio::time::timeout(REFUSE_WRITE_TIMEOUT, stream.write_all(out)).await
    {
        linger_close(stream).await;
    }
}

/// Writes `bytes` within the idle timeout; false when the connection is done.
async fn write_bounded(ctx: &ShardCtx, stream: &mut Transport, bytes: Vec<u8>) -> bool {
    matches!(
        monoio::time::timeout(ctx.config.http_idle_timeout, stream.write_all(bytes)).await,
        Ok((Ok(_), _))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u64) -> ClientLimits {
        ClientLimits {
            header_timeout: Duration::from_secs(10),
            body_rate_min: rate,
            connections_per_ip_max: 4,
        }
    }

    fn parser_with(bytes: &[u8]) -> Parser {
        let mut p = Parser::new(crate::http::Limits::default());
        p.feed(bytes);
        while p.poll().is_some() {}
        p
    }

    #[test]
    fn header_deadline_is_fixed_from_the_first_byte() {
        let t0 = Instant::now();
        let mut pr = Progress::default();
        pr.after_parse(&parser_with(b""), t0);
        assert_eq!(pr.deadline(&limits(1024)), None, "idle: no deadline");
        let p = parser_with(b"GET / HTTP/1.1\r\nHost: a\r\nX: ");
        pr.after_parse(&p, t0);
        // More bytes of the same head later do not move it.
        pr.read(1, t0 + Duration::from_secs(9));
        pr.after_parse(&p, t0 + Duration::from_secs(9));
        assert_eq!(
            pr.deadline(&limits(1024)),
            Some(t0 + Duration::from_secs(10))
        );
    }

    #[test]
    fn first_request_deadline_runs_from_the_accept() {
        let t0 = Instant::now();
        let mut pr = Progress::accepted(t0);
        // Nothing read yet: the deadline is the accept's, and stays so.
        pr.after_parse(&parser_with(b""), t0 + Duration::from_secs(3));
        assert_eq!(
            pr.deadline(&limits(1024)),
            Some(t0 + Duration::from_secs(10))
        );
        assert!(pr.silent(&parser_with(b"")));
        // The first bytes do not move it either.
        let p = parser_with(b"GET / HTTP/1.1\r\n");
        pr.after_parse(&p, t0 + Duration::from_secs(5));
        assert_eq!(
            pr.deadline(&limits(1024)),
            Some(t0 + Duration::from_secs(10))
        );
        assert!(!pr.silent(&p));
        // After the first request, idle means no deadline (the idle timeout applies).
        let mut pr = Progress::default();
        pr.after_parse(&parser_with(b""), t0);
        assert_eq!(pr.deadline(&limits(1024)), None);
    }

    /// Review of issue 20: empty lines between keep-alive requests start the header
    /// deadline; more of them do not move it; a connection that sent only those is
    /// closed at it without a response.
    #[test]
    fn empty_lines_start_the_header_deadline() {
        let t0 = Instant::now();
        let mut pr = Progress::default();
        let mut p = parser_with(b"");
        p.feed(b"\r\n");
        assert!(p.poll().is_none());
        pr.read(2, t0);
        pr.after_parse(&p, t0);
        let at = Some(t0 + Duration::from_secs(10));
        assert_eq!(pr.deadline(&limits(1024)), at);
        for k in 1..40 {
            p.feed(b"\r\n");
            assert!(p.poll().is_none());
            let now = t0 + Duration::from_millis(200 * k);
            pr.read(2, now);
            pr.after_parse(&p, now);
            assert_eq!(pr.deadline(&limits(1024)), at, "{k}");
        }
        assert!(pr.silent(&p));
        // The request that follows keeps that deadline, and is not silent.
        p.feed(b"GET / HTTP/1.1\r\n");
        assert!(p.poll().is_none());
        pr.read(16, t0 + Duration::from_secs(9));
        pr.after_parse(&p, t0 + Duration::from_secs(9));
        assert_eq!(pr.deadline(&limits(1024)), at);
        assert!(!pr.silent(&p));
    }

    #[test]
    fn body_deadline_grows_with_the_bytes_received() {
        let t0 = Instant::now();
        let mut pr = Progress::default();
        let p = parser_with(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n");
        assert!(p.is_reading_body());
        pr.after_parse(&p, t0);
        assert_eq!(
            pr.deadline(&limits(1000)),
            Some(t0 + Duration::from_secs(10))
        );
        pr.read(5000, t0);
        assert_eq!(
            pr.deadline(&limits(1000)),
            Some(t0 + Duration::from_secs(15))
        );
        // A later parse of the same body keeps its start and count.
        pr.after_parse(&p, t0 + Duration::from_secs(3));
        assert_eq!(
            pr.deadline(&limits(1000)),
            Some(t0 + Duration::from_secs(15))
        );
        // No minimum rate: no body deadline.
        assert_eq!(pr.deadline(&limits(0)), None);
        // (A request that is complete is answered, and `serve` starts the next one
        // from `Progress::default()`.)
    }
}
