//! The dashboard's admin routes (docs/PROTOCOL.md §9). Every one needs an admin JWT
//! (`Authorization: Bearer …`, or `?token=` on the event stream, which `EventSource`
//! cannot give headers) checked by [`crate::auth::admin::authorize_admin`].

use std::net::IpAddr;
use std::time::Duration;

use reactor::timer::{select2, Either};
use serde::Serialize;

use crate::auth::admin::{authorize_admin, AdminAuthError};
use crate::auth::failures::{Failure, SecretRoute};
use crate::auth::Claims;
use crate::dashboard::ops::{HealthCounts, Op, Reply, ShardSummary};
use crate::dashboard::paging::{
    merge_agents, merge_tasks, parse_filter, parse_limit, secs, AgentQuery, AgentSort, TaskQuery,
};
use crate::http::{Request, Response};
use crate::pairing::Issuer;
use crate::server::common::{ask_all, unexpected, Answer};
use crate::server::ShardCtx;
use crate::shard::{Change as Event, Delta};

/// The event stream's path (its request leaves the HTTP loop with the connection).
pub const EVENTS_PATH: &str = "/api/dashboard/events";

/// How often the event stream gathers the shards' events.
pub const EVENTS_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// The summary (counts and per-shard counters) is pushed every this many polls.
pub const SUMMARY_EVERY_POLLS: u32 = 2;
/// Events sent in one push; more (a burst) are sent as one `resync` instead, after
/// which the page re-reads what it shows.
pub const EVENTS_PER_PUSH_MAX: usize = 256;
/// The stream's queue is one push (at most [`EVENTS_PER_PUSH_MAX`] events or one
/// summary): the next is built only once the last is written, so a client that does not
/// read holds that much memory beyond the kernel's socket buffers. When those are full,
/// a push not written within this time closes the stream as a slow consumer.
pub const EVENTS_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

fn refused(e: AdminAuthError) -> Response {
    Response::json_bytes(e.status(), e.body().into_bytes())
}

/// The admin check of every dashboard route (the router has checked `client`'s failure
/// budget; a token that is not ours counts against it).
pub fn admin(ctx: &ShardCtx, req: &Request, client: IpAddr) -> Answer<Claims> {
    let header = req.header("authorization").map(str::as_bytes);
    check_admin(ctx, header, client)
}

fn check_admin(ctx: &ShardCtx, header: Option<&[u8]>, client: IpAddr) -> Answer<Claims> {
    let cfg = &ctx.config;
    authorize_admin(header, &cfg.jwt_secret, ctx.now(), cfg.jwt_leeway_secs).map_err(|e| {
        if e.is_forgery() {
            crate::auth::budget::failed(ctx, client, Failure::Admin);
        }
        refused(e)
    })
}

fn bad(e: String) -> Response {
    Response::error(400, e)
}

/// `GET /api/dashboard/agents?limit&cursor&sort&order&health&q`.
pub async fn agents(ctx: &ShardCtx, req: &Request, client: IpAddr) -> Answer<Response> {
    admin(ctx, req, client)?;
    let sort = AgentSort::parse(req.query_param("sort")).map_err(bad)?;
    let desc = match req.query_param("order").as_deref() {
        None | Some("") | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(bad("order must be asc or desc".into())),
    };
    let q = AgentQuery {
        limit: parse_limit(req.query_param("limit").as_deref()).map_err(bad)?,
        sort,
        desc,
        cursor: AgentQuery::parse_cursor(sort, req.query_param("cursor")).map_err(bad)?,
        health: AgentQuery::parse_health(req.query_param("health")).map_err(bad)?,
        q: parse_filter("q", req.query_param("q")).map_err(bad)?,
    };
    let mut parts = Vec::new();
    for r in ask_all(ctx, |_| Op::Agents(Box::new(q.clone()))).await? {
        match r {
            Reply::Agents(p) => parts.push(*p),
            _ => return Err(unexpected()),
        }
    }
    Ok(Response::json(200, &merge_agents(parts, &q)))
}

/// `GET /api/dashboard/tasks?limit&cursor&state&agent`.
pub async fn tasks(ctx: &ShardCtx, req: &Request, client: IpAddr) -> Answer<Response> {
    admin(ctx, req, client)?;
    let q = TaskQuery {
        limit: parse_limit(req.query_param("limit").as_deref()).map_err(bad)?,
        cursor: TaskQuery::parse_cursor(req.query_param("cursor")).map_err(bad)?,
        state: parse_filter("state", req.query_param("state")).map_err(bad)?,
        agent: parse_filter("agent", req.query_param("agent")).map_err(bad)?,
    };
    let mut parts = Vec::new();
    for r in ask_all(ctx, |_| Op::Tasks(Box::new(q.clone()))).await? {
        match r {
            Reply::Tasks(p) => parts.push(*p),
            _ => return Err(unexpected()),
        }
    }
    Ok(Response::json(200, &merge_tasks(parts, q.limit)))
}

/// The summary body: totals plus one row per shard.
#[derive(Serialize, Default)]
pub struct Summary {
    /// Server time, seconds since the epoch (the page's clock for ages).
    pub time: f64,
    pub agents: HealthCounts,
    pub tasks: std::collections::BTreeMap<String, u64>,
    pub pairing_pending: u64,
    pub pairing_approved: u64,
    /// Signaling WebSocket peers connected.
    pub signaling_peers: u64,
    pub shards: Vec<ShardRow>,
}

/// One shard's counters (the same ones `/metrics` renders).
#[derive(Serialize)]
pub struct ShardRow {
    pub shard: usize,
    pub io_driver: &'static str,
    pub connections_open: u64,
    pub connections_accepted: u64,
    pub requests_served: u64,
    pub ws_open: u64,
    pub ws_relayed: u64,
    pub ws_refused: u64,
    pub ws_closed_slow: u64,
    pub mailbox_sent: u64,
    pub mailbox_received: u64,
    pub mailbox_refused_full: u64,
    pub mailbox_wakeups: u64,
}

/// Adds up the shards' summaries.
pub fn total(now: f64, parts: Vec<ShardSummary>) -> Summary {
    let mut s = Summary {
        time: now,
        ..Summary::default()
    };
    for p in parts {
        s.agents.active += p.agents.active;
        s.agents.stale += p.agents.stale;
        s.agents.offline += p.agents.offline;
        for (k, v) in p.tasks {
            *s.tasks.entry(k).or_default() += v;
        }
        s.pairing_pending += p.pairing_pending;
        s.pairing_approved += p.pairing_approved;
        if let Some(m) = p.metrics {
            s.signaling_peers += m.ws.open;
            s.shards.push(ShardRow {
                shard: m.shard,
                io_driver: match m.driver {
                    reactor::driver::IoDriver::Uring => "io_uring",
                    reactor::driver::IoDriver::Epoll => "epoll",
                },
                connections_open: m.connections_open,
                connections_accepted: m.connections_accepted,
                requests_served: m.requests_served,
                ws_open: m.ws.open,
                ws_relayed: m.ws.relayed,
                ws_refused: m.ws.refused,
                ws_closed_slow: m.ws.closed_slow,
                mailbox_sent: m.mailbox.sent,
                mailbox_received: m.mailbox.received,
                mailbox_refused_full: m.mailbox.refused_full,
                mailbox_wakeups: m.mailbox.wakeups,
            });
        }
    }
    s
}

/// `GET /api/dashboard/summary`.
pub async fn summary(ctx: &ShardCtx, req: &Request, client: IpAddr) -> Answer<Response> {
    admin(ctx, req, client)?;
    let mut parts = Vec::new();
    for r in ask_all(ctx, |_| Op::Summary).await? {
        match r {
            Reply::Summary(s) => parts.push(*s),
            _ => return Err(unexpected()),
        }
    }
    Ok(Response::json(200, &total(secs(ctx.now()), parts)))
}

/// `POST /api/dashboard/invite`: a new invite code issued by the admin's peer id (in its
/// key's mesh), as `POST /api/pairing/generate-code` does for an API key.
pub async fn invite(ctx: &ShardCtx, req: &Request, client: IpAddr) -> Answer<Response> {
    let claims = admin(ctx, req, client)?;
    let mesh = ctx
        .config
        .api_keys
        .mesh_of(&claims.sub)
        .flatten()
        .map(str::to_owned);
    let issuer = Issuer {
        peer_id: claims.sub,
        mesh,
    };
    crate::pairing::api::issue_code(ctx, issuer).await
}

/// What one push of the stream says about changes.
#[derive(Serialize, Default, Debug, PartialEq)]
pub struct Changes {
    pub events: Vec<Event>,
    /// Events were dropped (a burst, or the ring moved on): re-read everything shown.
    pub resync: bool,
}

/// Folds the shards' deltas into one push, updating `seqs` (the last sequence seen per
/// shard).
pub fn fold(seqs: &mut [u64], deltas: Vec<Delta>) -> Changes {
    let mut c = Changes::default();
    for (i, d) in deltas.into_iter().enumerate() {
        if let Some(s) = seqs.get_mut(i) {
            *s = d.seq;
        }
        c.resync |= d.lost;
        c.events.extend(d.changes);
    }
    if c.events.len() > EVENTS_PER_PUSH_MAX {
        c.events.clear();
        c.resync = true;
    }
    c
}

fn sse(out: &mut Vec<u8>, event: &str, data: &impl Serialize) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // serde_json writes no raw newline, so one `data:` line carries the whole value.
    out.extend_from_slice(&serde_json::to_vec(data).unwrap_or_else(|_| b"null".to_vec()));
    out.extend_from_slice(b"\n\n");
}

async fn write_timed(stream: &mut crate::tls::Transport, out: Vec<u8>) -> Option<Vec<u8>> {
    match monoio::time::timeout(EVENTS_WRITE_TIMEOUT, stream.write_all(out)).await {
        Ok((Ok(_), mut buf)) => {
            buf.clear();
            Some(buf)
        }
        _ => None,
    }
}

/// `GET /api/dashboard/events?token=…`: `text/event-stream` of `hello`, `summary` and
/// `changes` events until the client goes, is too slow, or the server shuts down.
pub async fn event_stream(
    ctx: &ShardCtx,
    mut stream: crate::tls::Transport,
    req: &Request,
    client: IpAddr,
) {
    let mut out = Vec::new();
    let auth = match crate::auth::budget::admit(ctx, client, SecretRoute::Admin).await {
        Err(resp) => Err(resp),
        Ok(()) => match req.query_param("token") {
            Some(t) => {
                let header = format!("Bearer {t}");
                check_admin(ctx, Some(header.as_bytes()), client)
            }
            None => admin(ctx, req, client),
        },
    };
    if let Err(resp) = auth {
        resp.encode(false, false, &mut out);
        let _ = write_timed(&mut stream, out).await;
        return;
    }
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-store\r\n\
          x-accel-buffering: no\r\nconnection: close\r\n\r\n",
    );
    let shards = ctx.shard.count();
    let mut seqs = vec![0u64; shards];
    // Start from now: the page reads the lists itself first.
    let first = ask_all(ctx, |_| Op::Poll(Box::new((u64::MAX, true)))).await;
    let mut parts = Vec::new();
    if let Ok(replies) = first {
        for (i, r) in replies.into_iter().enumerate() {
            if let Reply::Poll(b) = r {
                seqs[i] = b.0.seq;
                parts.extend(b.1);
            }
        }
    }
    sse(&mut out, "hello", &serde_json::json!({ "shards": shards }));
    sse(&mut out, "summary", &total(secs(ctx.now()), parts));
    let Some(buf) = write_timed(&mut stream, out).await else {
        return;
    };
    out = buf;
    let shutdown = ctx.shard.shutdown_event().clone();
    let mut tick: u32 = 0;
    loop {
        match select2(monoio::time::sleep(EVENTS_POLL_INTERVAL), shutdown.wait()).await {
            Either::Left(()) => {}
            Either::Right(()) => return,
        }
        tick = tick.wrapping_add(1);
        let with_summary = tick % SUMMARY_EVERY_POLLS == 0;
        let Ok(replies) = ask_all(ctx, |s| Op::Poll(Box::new((seqs[s], with_summary)))).await
        else {
            continue; // a shard's mailbox is full: try again next tick
        };
        let mut deltas = Vec::with_capacity(shards);
        let mut parts = Vec::new();
        for r in replies {
            if let Reply::Poll(b) = r {
                let (d, s) = *b;
                deltas.push(d);
                parts.extend(s);
            }
        }
        let changes = fold(&mut seqs, deltas);
        if !changes.events.is_empty() || changes.resync {
            sse(&mut out, "changes", &changes);
        }
        if with_summary {
            sse(&mut out, "summary", &total(secs(ctx.now()), parts));
        } else if out.is_empty() {
            // A comment line: keeps proxies from timing the stream out, and finds a
            // client that went away.
            out.extend_from_slice(b": tick\n\n");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::Topic;

    fn ev(seq: u64) -> Event {
        Event {
            seq,
            topic: Topic::Agent,
            id: format!("a{seq}"),
        }
    }

    #[test]
    fn folding_deltas_tracks_sequences_and_bursts() {
        let mut seqs = vec![0, 0];
        let c = fold(
            &mut seqs,
            vec![
                Delta {
                    seq: 3,
                    changes: vec![ev(3)],
                    lost: false,
                },
                Delta::default(),
            ],
        );
        assert_eq!(seqs, [3, 0]);
        assert_eq!(c.events.len(), 1);
        assert!(!c.resync);
        let burst = Delta {
            seq: 1000,
            changes: (4..1000).map(ev).collect(),
            lost: false,
        };
        let c = fold(&mut seqs, vec![burst, Delta::default()]);
        assert!(c.resync && c.events.is_empty());
        assert_eq!(seqs[0], 1000);
    }

    #[test]
    fn sse_frames_are_one_data_line() {
        let mut out = Vec::new();
        sse(&mut out, "x", &serde_json::json!({"a": "b\nc"}));
        assert_eq!(out, b"event: x\ndata: {\"a\":\"b\\nc\"}\n\n");
    }
}
