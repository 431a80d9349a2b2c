//! The `/ws` upgrade (and `/ws-echo`): what of signaling touches HTTP and moves sockets.
//! On the shard that accepted the connection: parse the upgrade, the failure budget and
//! the JWT (auth), the client IP's slot (`signaling::api::acquire_ip`), then the socket
//! goes to the peer's owner (`shard_of(peer_id)`, [`Msg::Adopt`]), which admits it
//! (`signaling::api::admit`; in a cluster, a peer not authorized at this node after one
//! look at the cluster's approvals, `signaling::api::cluster_approval`), answers 101 and runs it (`signaling::session`). Every
//! refusal is written here ([`refuse`]): the services' errors through
//! `Response::from(shard::Error)`, the handshake's with its headers.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use crate::http::{Request, Response};
use crate::server::msg::Adopt;
use crate::server::{Msg, ShardCtx};
use crate::signaling::api::{
    acquire_ip, admit, cluster_approval, needs_cluster_approval, release_ip,
};
use crate::tls::Transport;
use crate::ws::handshake;

/// How long writing a refusal (an HTTP error on the upgrade path) may take.
const REFUSE_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The response of a refused upgrade: a handshake's refusal with its headers.
fn handshake_refusal(r: handshake::Refusal) -> Response {
    let resp = Response::error(r.status, r.reason);
    match r.status {
        405 => resp.with_header("allow", "GET"),
        426 => resp.with_header("sec-websocket-version", "13"),
        _ => resp,
    }
}

/// Writes `resp` and closes with a lingering close: the client may still be sending
/// (frames pipelined after its upgrade request), and closing with its bytes unread
/// would turn the refusal into a reset it never reads.
async fn refuse(mut stream: Transport, resp: Response) {
    let mut out = Vec::new();
    resp.encode(false, false, &mut out);
    // Bounded: a refused client that does not read must not hold the task and its fd.
    if let Ok((Ok(_), _)) = monoio::time::timeout(REFUSE_WRITE_TIMEOUT, stream.write_all(out)).await
    {
        super::linger::linger_close(stream).await;
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
        Err(r) => return refuse(stream, handshake_refusal(r)).await,
    };
    let ip = peer.ip();
    let peer_id = if echo {
        // Not a peer id a signaling client can register: it holds a NUL.
        format!("\0ws-echo {peer}")
    } else {
        // The failure budget (issue 20) before the token is looked at.
        let route = crate::auth::failures::SecretRoute::Ws;
        if let Err(e) = crate::auth::budget::admit(&**ctx, ip, route).await {
            return refuse(stream, e.into()).await;
        }
        let cfg = &ctx.config.auth;
        match crate::auth::jwt::verify_leeway(
            &cfg.jwt_secret,
            &up.token,
            ctx.now().as_secs(),
            cfg.jwt_leeway_secs,
        ) {
            Ok(c) => c.sub,
            Err(e) => {
                if e.is_forgery() {
                    let failure = crate::auth::failures::Failure::Ws;
                    crate::auth::budget::failed(&**ctx, ip, failure).await;
                }
                let resp = Response::error(401, "invalid or expired token");
                return refuse(stream, resp).await;
            }
        }
    };
    if ctx.shard.is_shutting_down() {
        return refuse(stream, Response::error(503, "server shutting down")).await;
    }
    if let Err(e) = acquire_ip(&**ctx, ip).await {
        return refuse(stream, e.into()).await;
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
    // A socket is not a message that can wait for room: a full mailbox refuses it now.
    if let Err(Msg::Adopt(a)) = ctx.shard.try_tell(owner, Msg::Adopt(Box::new(adopt))) {
        release_ip(&**ctx, a.client_ip).await;
        if let Ok(s) = Transport::attach(a.conn) {
            let resp = crate::shard::Error::overloaded(owner).into();
            refuse(s, resp).await;
        }
    }
}

/// A connection handed over by another shard (or this one): runs it here.
pub fn on_adopt(ctx: &Rc<ShardCtx>, a: Box<Adopt>) {
    let ctx = ctx.clone();
    monoio::spawn(async move { adopt(ctx, *a).await });
}

/// The owner's side: admit, answer 101, run.
async fn adopt(ctx: Rc<ShardCtx>, a: Adopt) {
    let Adopt {
        conn,
        leftover,
        peer_id,
        client_ip,
        upgrade,
        echo,
    } = a;
    let Ok(stream) = Transport::attach(conn) else {
        release_ip(&*ctx, client_ip).await;
        return;
    };
    let keys = &ctx.config.auth.api_keys;
    // In a cluster, a peer neither an API key nor an approval here authorizes may be
    // approved at another node: one Redis round trip, then admitted as usual.
    let cluster = if needs_cluster_approval(&*ctx, keys, &peer_id, echo) {
        cluster_approval(&*ctx, &peer_id).await
    } else {
        Ok(None)
    };
    let admitted = if ctx.shard.is_shutting_down() {
        Err(crate::shard::Error::unavailable("server shutting down"))
    } else {
        cluster.and_then(|c| admit(&*ctx, keys, peer_id, echo, c))
    };
    let key = match admitted {
        Ok(key) => key,
        Err(e) => {
            release_ip(&*ctx, client_ip).await;
            return refuse(stream, e.into()).await;
        }
    };
    let resp = handshake::switching_protocols(&upgrade);
    // The token is not kept for the life of the connection.
    drop(upgrade);
    // The connection's life runs in a task of its own, so this handshake task (and its
    // larger state) is freed now.
    monoio::spawn(crate::signaling::session::serve_peer(
        ctx, stream, key, resp, leftover, client_ip, echo,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    /// Size of the future a function of seven arguments returns, without making one.
    fn ret7<A, B, C, D, E, F, G, R>(_: impl Fn(A, B, C, D, E, F, G) -> R) -> usize {
        size_of::<R>()
    }

    /// An idle registered connection costs its task (monoio's header and trailer, about
    /// 40 bytes, plus this future) and its slot: issue 26's budget is 1.5 KiB for
    /// everything. The task's future was 960 bytes before the session held its state
    /// once (its arguments and their copies, the 101 and the upgrade's leftover bytes,
    /// all kept for the connection's life), 504 after; the slot 176, 152 after. Here,
    /// where the server's shard type is named (a service does not name it).
    #[test]
    fn an_idle_connection_task_and_slot_stay_small() {
        let task = ret7(crate::signaling::session::serve_peer::<ShardCtx>);
        let slot = crate::signaling::store::slot_bytes();
        println!("serve_peer future {task} B, PeerSlot {slot} B");
        assert!(task <= 640, "serve_peer's future is {task} bytes");
        assert!(slot <= 160, "PeerSlot is {slot} bytes");
    }
}
