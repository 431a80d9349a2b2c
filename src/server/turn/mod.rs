//! The embedded TURN server's I/O driver (issue 24). The protocol is the sans-IO
//! `turn` crate (`::turn::server::Server`, one per shard); this module owns its sockets
//! and clock:
//!
//! * per shard, for each `--turn-listen` address, a UDP socket and a TCP listener with
//!   `SO_REUSEPORT`, and for each `--turn-tls-listen` address a TCP listener for TURN
//!   over TLS (bound in `main` before the shards start, so a busy port fails the
//!   start). The kernel hashes a client's UDP 4-tuple to one shard's socket, so every
//!   datagram of a client lands on the shard that holds its allocation;
//! * relay sockets, bound on demand from the shard's share of `--turn-relay-ports`
//!   ([`settings::TurnSettings::shard_ports`]): each allocation's relay belongs to the
//!   shard that received its Allocate. No state is shared between shards;
//! * a 1 s sweep (lifetimes, credentials), revocation tells (`Msg::Turn`), and the
//!   release of every allocation at shutdown.
//!
//! Data path ([`udp`]): readiness from the runtime, then `recvmmsg`/`sendmmsg`
//! (`reactor::udp`) with one receive batch and one send batch per shard, shared by
//! every socket; datagrams for clients queue in one bounded buffer that a flusher task
//! sends after the other ready tasks of the same turn ran, so datagrams from many relays
//! leave in one `sendmmsg`. TCP and TLS ([`tcp`]): one task per connection, framed by
//! `::turn::framing::StreamFramer`; TLS is `crate::tls`'s session, with the server's
//! certificate (reloaded with it).

pub mod ops;
pub mod settings;
mod tcp;
mod udp;

use std::cell::{Cell, OnceCell, RefCell};
use std::rc::Rc;

use ::turn::server::Server;

use crate::server::metrics::TurnMetrics;
use crate::server::ShardCtx;
pub use ops::Op;
pub use settings::{ShardSockets, TurnSettings};
pub use tcp::adopt_tls;

/// A reusable, single-waiter, shard-local wakeup (a kick while nobody waits is kept
/// for the next wait).
#[derive(Clone, Default)]
pub(crate) struct Kick {
    inner: Rc<KickInner>,
}

#[derive(Default)]
struct KickInner {
    pending: Cell<bool>,
    waker: RefCell<Option<std::task::Waker>>,
}

impl Kick {
    pub fn kick(&self) {
        self.inner.pending.set(true);
        if let Some(w) = self.inner.waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.inner.pending.replace(false) {
                return std::task::Poll::Ready(());
            }
            *self.inner.waker.borrow_mut() = Some(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await
    }
}

/// One shard's TURN state: the sans-IO server and the driver's tables.
pub struct TurnShard {
    pub(crate) server: RefCell<Server>,
    pub(crate) udp: udp::UdpSide,
    pub(crate) tcp: tcp::TcpSide,
    pub(crate) counters: DriverCounters,
}

/// What the driver itself counted (beyond the server's `Stats`).
#[derive(Default)]
pub(crate) struct DriverCounters {
    /// Datagrams the kernel would not take (a full socket buffer) or refused.
    pub send_failed: Cell<u64>,
    /// Bytes for a TCP client dropped because its outbound queue was full.
    pub tcp_dropped: Cell<u64>,
    /// TCP connections refused by `--turn-tcp-connections-max`.
    pub tcp_refused: Cell<u64>,
    /// Datagrams that arrived in coalesced runs (UDP GRO), each counted.
    pub coalesced: Cell<u64>,
}

thread_local! {
    /// This shard's TURN side (set once by [`start`]; shards are threads).
    static SHARD: OnceCell<Rc<TurnShard>> = const { OnceCell::new() };
}

fn shard_turn() -> Option<Rc<TurnShard>> {
    SHARD.with(|s| s.get().cloned())
}

/// Starts the TURN side of this shard, when `--turn-listen` or `--turn-tls-listen` is
/// set; `tls`: the shard's certificate, for `--turn-tls-listen`.
pub fn start(ctx: &Rc<ShardCtx>, sockets: ShardSockets, tls: Option<Rc<crate::tls::ShardTls>>) {
    let Some(settings) = ctx.config.turn_server.as_ref() else {
        return;
    };
    let shard = ctx.shard.id();
    let cfg = settings.server_config(shard, ctx.shard.count());
    let ports = cfg.ports;
    let seed = {
        let mut b = [0u8; 8];
        let _ = getrandom::getrandom(&mut b);
        u64::from_ne_bytes(b) ^ shard as u64
    };
    let mut server = Server::new(cfg, seed);
    let now = ctx.now().as_secs();
    let mut none = udp::NoRelays;
    for (peer, at) in &settings.revoked_at_start {
        if at.saturating_add(settings.credential_ttl_secs) >= now {
            server.revoke(peer, *at, &mut none);
        }
    }
    let udp_side = match udp::UdpSide::new(settings, sockets.udp) {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(shard, error = %e, "TURN: cannot register the UDP sockets");
            return;
        }
    };
    let turn = Rc::new(TurnShard {
        server: RefCell::new(server),
        udp: udp_side,
        tcp: tcp::TcpSide::default(),
        counters: DriverCounters::default(),
    });
    if SHARD.with(|s| s.set(turn.clone())).is_err() {
        tracing::error!(shard, "TURN started twice on one shard");
        return;
    }
    tracing::debug!(shard, ?ports, "TURN relay ports");
    udp::spawn(ctx, &turn);
    tcp::spawn(ctx, &turn, sockets.tcp, sockets.tls, tls);
    let stop = ctx.shard.shutdown_event().clone();
    let (c, t) = (ctx.clone(), turn.clone());
    reactor::timer::every(SWEEP_INTERVAL, stop.clone(), move || t.sweep(&c));
    let t = turn.clone();
    monoio::spawn(async move {
        stop.wait().await;
        // Graceful shutdown: every allocation ends and its relay socket closes.
        t.server
            .borrow_mut()
            .release_all(&mut *t.udp.relays.borrow_mut());
        t.tcp.close_all();
    });
}

/// How often lifetimes and credentials are checked: an expired credential or a
/// revocation missed by a full mailbox ends its allocation within this.
pub const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl TurnShard {
    fn sweep(&self, ctx: &ShardCtx) {
        let now = ctx.now().0;
        let mut relays = self.udp.relays.borrow_mut();
        self.server.borrow_mut().sweep(now, &mut *relays);
    }

    fn metrics(&self) -> TurnMetrics {
        let s = self.server.borrow();
        TurnMetrics {
            enabled: true,
            allocations: s.allocations() as u64,
            tcp_connections: self.tcp.open() as u64,
            tls_connections: self.tcp.open_tls() as u64,
            stats: s.stats,
            send_failed: self.counters.send_failed.get(),
            tcp_dropped: self.counters.tcp_dropped.get(),
            tcp_refused: self.counters.tcp_refused.get(),
            coalesced: self.counters.coalesced.get(),
        }
    }
}

/// This shard's TURN numbers (all zero, `enabled` false, without TURN).
pub fn metrics() -> TurnMetrics {
    shard_turn().map(|t| t.metrics()).unwrap_or_default()
}

/// Applies a [`Op`] on this shard.
pub fn on_op(ctx: &ShardCtx, op: Op) {
    let Some(t) = shard_turn() else { return };
    match op {
        Op::Revoke(b) => {
            let (peer, at) = *b;
            let mut relays = t.udp.relays.borrow_mut();
            let n = t.server.borrow_mut().revoke(&peer, at, &mut *relays);
            if n > 0 {
                tracing::info!(shard = ctx.shard.id(), %peer, allocations = n, "TURN: revoked peer's allocations ended");
            }
        }
    }
}

/// Tells every shard that `peer`'s pairing was revoked (its allocations may be on any
/// shard: they live where their client's packets land). A full mailbox is retried for
/// a bounded time (yielding); a shard still unreachable then is caught by its next
/// Allocate or Refresh check only, which is logged.
pub async fn revoke(ctx: &ShardCtx, peer: &str) {
    if ctx.config.turn_server.is_none() {
        return;
    }
    let at = ctx.now().as_secs();
    for to in 0..ctx.shard.count() {
        let mut msg = crate::server::Msg::Turn(Op::Revoke(Box::new((peer.to_owned(), at))));
        let mut tries = 0;
        loop {
            match ctx.shard.try_tell(to, msg) {
                Ok(()) => break,
                Err(back) if tries < REVOKE_TELL_TRIES_MAX => {
                    msg = back;
                    tries += 1;
                    reactor::yield_now().await;
                }
                Err(_) => {
                    tracing::error!(shard = to, %peer, "TURN: revocation not delivered (mailbox full)");
                    break;
                }
            }
        }
    }
}

/// Yields a revocation tell waits for room in a full mailbox before giving up on that
/// shard (each yield lets the shard run everything else that is ready).
const REVOKE_TELL_TRIES_MAX: u32 = 1000;

/// The `/api/config` entry for the embedded server, for the caller of `req`: TURN REST
/// credentials `<expiry>:<peer id>` when the request carries a credential (a bearer JWT
/// or a known `X-API-Key`); none for an anonymous caller, so that a revoked device
/// cannot mint itself fresh TURN credentials. For a JWT the credential counts as issued
/// when the JWT was (its expiry is `iat + ttl`): a JWT from before a revocation yields
/// credentials the revocation refuses.
pub fn ice_entry(ctx: &ShardCtx, req: &crate::http::Request) -> Option<crate::ice::IceServer> {
    let t = ctx.config.turn_server.as_ref()?;
    let now = ctx.now().as_secs();
    let (peer, issued) = if let Some(token) = req
        .header("authorization")
        .and_then(|h| crate::auth::admin::bearer_token(h.as_bytes()))
    {
        let claims = crate::auth::jwt::verify(&ctx.config.auth.jwt_secret, token, now).ok()?;
        (claims.sub, claims.iat.min(now))
    } else {
        let key = req
            .header("x-api-key")
            .and_then(|v| crate::auth::header_value_str(v.as_bytes()))?;
        (ctx.config.auth.api_keys.lookup(key)?.peer_id.clone(), now)
    };
    let expiry = issued.saturating_add(t.credential_ttl_secs);
    let (username, credential) = ::turn::auth::rest_credentials(&t.secret, expiry, &peer);
    // `turns:` URLs name the host the caller reached us by: the TURN-over-TLS listeners
    // present the same certificate as the HTTPS one.
    let host = req.header("host").and_then(settings::host_name);
    Some(crate::ice::IceServer {
        credential: Some(credential),
        urls: t.urls(host),
        username: Some(username),
    })
}
