//! Signaling's API: the `/ws` upgrade on the shard that accepted the connection, the
//! hand-off to the owner shard (`shard_of(peer_id)`), admission there, and the owner side
//! of the signaling messages. The connection loop itself is in `session`.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use crate::http::{Request, Response};
use crate::server::{Msg, ShardCtx};
use crate::signaling::ops::{Op, Reply};
use crate::signaling::session;
use crate::signaling::store::inc;
use crate::tls::{Detached, Transport};
use crate::ws::handshake;

/// How long writing a refusal (an HTTP error on the upgrade path) may take.
const REFUSE_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Times a per-IP release waits (yielding) for room in a full mailbox. Far more
/// patient than a relay: the release must not be lost, and the owner is draining.
const RELEASE_RETRIES_MAX: usize = 100_000;

/// A connection handed to its owner shard.
pub struct Adopt {
    /// The connection (its socket, and its TLS state if any).
    pub conn: Detached,
    /// Bytes the client sent after the upgrade request.
    pub leftover: Vec<u8>,
    pub peer_id: String,
    pub client_ip: IpAddr,
    pub upgrade: handshake::Upgrade,
    /// The `/ws-echo` test endpoint: messages are echoed, not interpreted.
    pub echo: bool,
}

/// A connection handed over by another shard (or this one): runs it here.
pub fn on_adopt(ctx: &Rc<ShardCtx>, a: Box<Adopt>) {
    let ctx = ctx.clone();
    monoio::spawn(async move { adopt(ctx, *a).await });
}

/// Writes an HTTP error response and closes with a lingering close: the client may
/// still be sending (frames pipelined after its upgrade request), and closing with its
/// bytes unread would turn the refusal into a reset it never reads.
async fn refuse(stream: Transport, status: u16, reason: &str) {
    let mut resp = Response::error(status, reason);
    if status == 405 {
        resp = resp.with_header("allow", "GET");
    }
    if status == 426 {
        resp = resp.with_header("sec-websocket-version", "13");
    }
    send_refusal(stream, resp).await
}

/// Writes `resp` and closes (lingering), as [`refuse`].
async fn send_refusal(mut stream: Transport, resp: Response) {
    let mut out = Vec::new();
    resp.encode(false, false, &mut out);
    // Bounded: a refused client that does not read must not hold the task and its fd.
    if let Ok((Ok(_), _)) = monoio::time::timeout(REFUSE_WRITE_TIMEOUT, stream.write_all(out)).await
    {
        crate::server::conn::linger_close(stream).await;
    }
}

/// The upgrade, on the shard that accepted the connection. Consumes the connection.
/// `echo`: the `/ws-echo` test endpoint (no token; its connection id is its address).
pub async fn upgrade(
    ctx: &Rc<ShardCtx>,
    stream: Transport,
    req: &Request,
    leftover: Vec<u8>,
    peer: SocketAddr,
    echo: bool,
) {
    let parsed = if echo {
        handshake::parse_untokened_upgrade(req)
    } else {
        handshake::parse_upgrade(req)
    };
    let up = match parsed {
        Ok(u) => u,
        Err(r) => return refuse(stream, r.status, r.reason).await,
    };
    let peer_id = if echo {
        // Not a peer id a signaling client can register: it holds a NUL.
        format!("\0ws-echo {peer}")
    } else {
        // The failure budget (issue 20) before the token is looked at.
        let route = crate::auth::failures::SecretRoute::Ws;
        if let Err(resp) = crate::auth::budget::admit(ctx, peer.ip(), route).await {
            return send_refusal(stream, resp).await;
        }
        let now = ctx.now();
        let cfg = &ctx.config;
        match crate::auth::jwt::verify_leeway(
            &cfg.jwt_secret,
            &up.token,
            now.as_secs(),
            cfg.jwt_leeway_secs,
        ) {
            Ok(c) => c.sub,
            Err(e) => {
                if e.is_forgery() {
                    let failure = crate::auth::failures::Failure::Ws;
                    crate::auth::budget::failed(ctx, peer.ip(), failure);
                }
                return refuse(stream, 401, "invalid or expired token").await;
            }
        }
    };
    if ctx.shard.is_shutting_down() {
        return refuse(stream, 503, "server shutting down").await;
    }
    let ip = peer.ip();
    let ip_owner = ctx.shard.shard_of(ip.to_string());
    let acquire = Msg::Signaling(Op::IpAcquire(Box::new(ip)));
    match ctx.shard.ask(ip_owner, acquire).await {
        Ok(Msg::SignalingReply(Reply::Allowed(true))) => {}
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
        conn: stream.detach(),
        leftover,
        peer_id,
        client_ip: ip,
        upgrade: up,
        echo,
    };
    let owner = ctx.shard.shard_of(&adopt.peer_id);
    if owner == ctx.shard.id() {
        // A task of its own, so the HTTP connection's task (and its buffers) ends here.
        monoio::spawn(self::adopt(ctx.clone(), adopt));
        return;
    }
    if let Err(Msg::Adopt(a)) = ctx.shard.try_tell(owner, Msg::Adopt(Box::new(adopt))) {
        release_ip(ctx, a.client_ip).await;
        if let Ok(s) = Transport::attach(a.conn) {
            refuse(s, 503, "server overloaded (mailbox full)").await;
        }
    }
}

/// Gives a connection's slot back to its client IP's count. Local when this shard owns
/// the IP; otherwise a tell that waits (yielding) for room when the owner's mailbox is
/// full, as when thousands of connections close at once: a lost release would lock the
/// address out until restart.
pub(super) async fn release_ip(ctx: &ShardCtx, ip: IpAddr) {
    let owner = ctx.shard.shard_of(ip.to_string());
    if owner == ctx.shard.id() {
        ctx.ws.ip_release(ip);
        return;
    }
    let mut msg = Msg::Signaling(Op::IpRelease(Box::new(ip)));
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
pub(super) async fn adopt(ctx: Rc<ShardCtx>, a: Adopt) {
    let Adopt {
        conn,
        leftover,
        peer_id,
        client_ip,
        upgrade,
        echo,
    } = a;
    let Ok(stream) = Transport::attach(conn) else {
        release_ip(&ctx, client_ip).await;
        return;
    };
    if ctx.shard.is_shutting_down() {
        release_ip(&ctx, client_ip).await;
        return refuse(stream, 503, "server shutting down").await;
    }
    let (authorized, mesh, revoked) = if echo {
        (false, None, false)
    } else {
        let authz = ctx.state.authz.borrow();
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
    if !ctx.ws.has_room(&ctx.config.ws) {
        inc(&ctx.ws.refused);
        release_ip(&ctx, client_ip).await;
        return refuse(stream, 503, "too many signaling connections on this shard").await;
    }
    // Registered before anything is awaited: the authorization just read and the slot
    // are one step, so a revocation or an approval that arrives while the 101 is being
    // written finds the connection (and the shard's connection count already holds it).
    let key = ctx
        .ws
        .register(peer_id.into(), mesh, authorized, ctx.now().as_secs());
    let resp = handshake::switching_protocols(&upgrade);
    // The token is not kept for the life of the connection.
    drop(upgrade);
    // The connection's life runs in a task of its own, so this handshake task (and its
    // larger state) is freed now.
    monoio::spawn(session::serve_peer(
        ctx, stream, key, resp, leftover, client_ip, echo,
    ));
}
