//! One HTTP/1.1 connection: read, parse (sans-IO), route, write, in order.

use std::net::SocketAddr;
use std::rc::Rc;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use reactor::timer::{select2, Either};

use crate::http::{Event, Method, Parser, Response};
use crate::metrics::ShardCounters;
use crate::server::{router, ShardCtx};

/// Bytes asked for per read. 4 KiB holds a typical API request (headers and a small
/// JSON body) in one read; larger bodies take several. It bounds one read, not the
/// request: the parser enforces the header and body limits.
const READ_CHUNK_SIZE: usize = 4096;

/// Output buffered before it is written: responses to pipelined requests are batched
/// into one write until this many bytes are pending; then the connection writes before
/// parsing more, so a client that pipelines without reading cannot grow our memory.
const WRITE_BATCH_SIZE_MAX: usize = 64 * 1024;

/// Serves one connection until the client closes it, an error, the idle timeout, or a
/// graceful shutdown (which lets a request in progress finish).
pub async fn serve(ctx: &Rc<ShardCtx>, mut stream: TcpStream, peer: SocketAddr) {
    let mut parser = Parser::new(ctx.config.http_limits);
    let mut out: Vec<u8> = Vec::new();
    let mut rbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK_SIZE);
    let shutdown = ctx.shard.shutdown_event().clone();
    loop {
        // Answer everything the parser can produce from what has been read.
        let mut close = false;
        let mut batch_full = false;
        while let Some(ev) = parser.poll() {
            match ev {
                Event::SendContinue => out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n"),
                Event::Request(req) if router::is_ws(&req) => {
                    // The signaling WebSocket: the connection leaves the HTTP loop (and,
                    // once authorized, this shard). Answer what was pipelined before it.
                    ShardCounters::inc(&ctx.counters.requests_served);
                    if !out.is_empty() && !write_bounded(ctx, &mut stream, out).await {
                        return;
                    }
                    let leftover = parser.take_remaining();
                    router::route_ws(ctx, stream, &req, leftover, peer).await;
                    return;
                }
                Event::Request(req) if router::is_event_stream(&req) => {
                    // The dashboard's event stream keeps the connection until it ends.
                    ShardCounters::inc(&ctx.counters.requests_served);
                    if !out.is_empty() && !write_bounded(ctx, &mut stream, out).await {
                        return;
                    }
                    crate::dashboard::api::event_stream(ctx, stream, &req).await;
                    return;
                }
                Event::Request(req) => {
                    let resp = router::handle(ctx, &req, peer).await;
                    ShardCounters::inc(&ctx.counters.requests_served);
                    let keep_alive = req.keep_alive && !shutdown.is_set();
                    let resp = if req.version_minor == 0 && keep_alive {
                        resp.with_header("connection", "keep-alive")
                    } else {
                        resp
                    };
                    resp.encode(keep_alive, req.method == Method::Head, &mut out);
                    if !keep_alive {
                        close = true;
                        break;
                    }
                }
                Event::Error(err) => {
                    Response::from(err).encode(false, false, &mut out);
                    close = true;
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
                    out = buf;
                    out.clear();
                }
                _ => return,
            }
        }
        if close {
            return;
        }
        if batch_full {
            // The batch limit stopped us with requests possibly still buffered: parse
            // again before reading more.
            continue;
        }
        if shutdown.is_set() && parser.is_idle() {
            return;
        }
        // Wait for bytes, the idle timeout, or shutdown (only while idle between
        // requests; a request in progress is allowed to finish).
        let read = monoio::time::timeout(ctx.config.http_idle_timeout, stream.read(rbuf));
        let outcome = if parser.is_idle() {
            match select2(read, shutdown.wait()).await {
                Either::Left(r) => r,
                Either::Right(()) => return,
            }
        } else {
            read.await
        };
        match outcome {
            Err(_elapsed) => return,
            Ok((Ok(0), _)) | Ok((Err(_), _)) => return,
            Ok((Ok(n), buf)) => {
                parser.feed(&buf[..n]);
                rbuf = buf;
            }
        }
    }
}

/// Writes `bytes` within the idle timeout; false when the connection is done.
async fn write_bounded(ctx: &ShardCtx, stream: &mut TcpStream, bytes: Vec<u8>) -> bool {
    matches!(
        monoio::time::timeout(ctx.config.http_idle_timeout, stream.write_all(bytes)).await,
        Ok((Ok(_), _))
    )
}
