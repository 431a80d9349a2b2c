//! The dashboard's event stream (`GET /api/dashboard/events?token=…`): the I/O. The
//! connection leaves the HTTP loop; after the failure budget and the admin token (in
//! the query: `EventSource` cannot send headers) it is a `text/event-stream` of what
//! `dashboard::events::EventStream` reads from the shards, until the client goes, is
//! too slow, or the server shuts down.

use std::net::IpAddr;
use std::time::Duration;

use reactor::timer::{select2, Either};

use crate::auth::failures::SecretRoute;
use crate::dashboard::events::{EventStream, EVENTS_POLL_INTERVAL};
use crate::http::{Request, Response};
use crate::server::ShardCtx;

/// The event stream's path (its request leaves the HTTP loop with the connection).
pub const EVENTS_PATH: &str = "/api/dashboard/events";

/// The stream's queue is one push (at most `dashboard::events::EVENTS_PER_PUSH_MAX`
/// events or one summary): the next is built only once the last is written, so a client
/// that does not read holds that much memory beyond the kernel's socket buffers. When
/// those are full, a push not written within this time closes the stream as a slow
/// consumer.
pub const EVENTS_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

async fn write_timed(stream: &mut crate::tls::Transport, out: Vec<u8>) -> Option<Vec<u8>> {
    match monoio::time::timeout(EVENTS_WRITE_TIMEOUT, stream.write_all(out)).await {
        Ok((Ok(_), mut buf)) => {
            buf.clear();
            Some(buf)
        }
        _ => None,
    }
}

/// Serves the event stream on `stream` (the request `req` from `client`).
pub async fn event_stream(
    ctx: &ShardCtx,
    mut stream: crate::tls::Transport,
    req: &Request,
    client: IpAddr,
) {
    let mut out = Vec::new();
    let auth = match crate::auth::budget::admit(ctx, client, SecretRoute::Admin).await {
        Err(e) => Err(e),
        Ok(()) => {
            let header = match req.query_param("token") {
                Some(t) => Some(format!("Bearer {t}")),
                None => req.header("authorization").map(str::to_owned),
            };
            crate::auth::admin::authorize(ctx, &ctx.config.auth, header.as_deref(), client)
                .await
                .map(drop)
        }
    };
    if let Err(e) = auth {
        let resp = Response::from(e);
        resp.encode(false, false, &mut out);
        let _ = write_timed(&mut stream, out).await;
        return;
    }
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-store\r\n\
          x-accel-buffering: no\r\nconnection: close\r\n\r\n",
    );
    let mut events = EventStream::open(ctx, &mut out).await;
    let Some(buf) = write_timed(&mut stream, out).await else {
        return;
    };
    out = buf;
    let shutdown = ctx.shard.shutdown_event().clone();
    loop {
        match select2(monoio::time::sleep(EVENTS_POLL_INTERVAL), shutdown.wait()).await {
            Either::Left(()) => {}
            Either::Right(()) => return,
        }
        events.poll(ctx, &mut out).await;
        if out.is_empty() {
            continue; // a shard's mailbox is full: try again next tick
        }
        match write_timed(&mut stream, out).await {
            Some(buf) => out = buf,
            None => {
                tracing::debug!("dashboard event stream closed (client gone or too slow)");
                return;
            }
        }
    }
}
