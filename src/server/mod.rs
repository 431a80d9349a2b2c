//! The shard application, and the only module that names every service (see
//! docs/ARCHITECTURE.md, "The server crate in layers"): accept loop, per-connection HTTP
//! loop, routing, the messages shards exchange and their dispatch.
//!
//! * [`msg`]: the shard message, one request and one reply enum per service; the owner
//!   side is each service's `ops::Op::apply`, called by [`dispatch`] (sans-IO) and, for
//!   what needs the shard's I/O, `ShardCtx::on_message`;
//! * [`layer`]: `ShardCtx` as the shard layer the services run on (`shard::Shard`);
//!   [`state`]: one store per service;
//! * [`router`]: path and method → a service's workflow (`registry::api`, …,
//!   `ws::upgrade` for `/ws`), answered through [`respond`]; [`common`]: what the
//!   router reads from a request;
//! * [`conn`]: one HTTP/1.1 connection; `linger`: the lingering close; `tls_accept`: the
//!   TLS handshake; [`turn`]: the embedded TURN server's sockets;
//! * [`boot`]: the stored state split among the shards; [`metrics`]: `/metrics`;
//! * `sim` (tests): the services on the shard layer's simulator, and their workflow
//!   tests.

pub mod backup;
pub mod boot;
pub mod cluster;
pub mod common;
pub mod conn;
mod debug;
pub mod dispatch;
pub mod events;
mod forward;
pub mod layer;
mod linger;
pub mod metrics;
pub mod msg;
pub mod respond;
pub mod router;
#[cfg(test)]
pub mod sim;
pub mod state;
mod steer;
mod tls_accept;
pub mod turn;
pub mod ws;

pub use state::ShardState;

use std::cell::RefCell;
use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use reactor::{Shard, ShardId};

use crate::hub::EXPIRE_INTERVAL;
use crate::registry::HEALTH_CHECK_INTERVAL;
use crate::server::metrics::{ShardCounters, ShardMetrics};
use crate::signaling::WsLimits;
use crate::time::UnixTime;
pub use msg::Msg;
use msg::{ShardOp, ShardReply};

/// How often expired invite codes and idle rate-limit buckets are swept (as the
/// reference's pairing cleanup loop).
pub const PAIRING_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Settings every shard reads (immutable after start; shared read-only through an `Arc`).
#[derive(Debug)]
pub struct ServerConfig {
    pub http_idle_timeout: Duration,
    pub http_limits: crate::http::Limits,
    /// Header/body deadlines and the per-IP cap of plain HTTP connections.
    pub http_client_limits: conn::ClientLimits,
    /// Auth: API keys, the JWT secret and leeway, the derived secrets, the failure
    /// budgets, `--require-agent-auth`, `--insecure-open-admin`.
    pub auth: crate::auth::Config,
    /// Pairing: the guessing guard and code format, retention, secrets, list pages.
    pub pairing: crate::pairing::Config,
    /// `GET /api/config`: STUN and TURN.
    pub ice: crate::ice::Config,
    /// Enables `POST /debug/clock`.
    pub test_clock: bool,
    /// Signaling WebSocket limits.
    pub ws: WsLimits,
    /// The registry's field limits, list pages and agent store budget.
    pub registry: crate::registry::Config,
    /// The hub's field limits, list pages, stray task shards and task store.
    pub hub: crate::hub::Config,
    /// The durable store (`None`: state in memory only, for embedders and benches).
    pub store: Option<chatixia_store::StoreHandle>,
    /// Serves the `/ws-echo` test WebSocket (no token; `--ws-echo`).
    pub ws_echo: bool,
    /// The embedded TURN server (`--turn-listen`; issue 24).
    pub turn_server: Option<crate::server::turn::TurnSettings>,
    /// This node's link to its cluster (`--cluster`; issue 25), for `/readyz` and
    /// `/metrics` (each shard has its own side of it, `ShardCtx::cluster`).
    pub cluster: Option<cluster::NodeHandle>,
}

impl ServerConfig {
    /// A configuration with the reference's defaults (dev key, dev secret, default STUN).
    pub fn new(http_idle_timeout: Duration) -> Self {
        ServerConfig {
            http_idle_timeout,
            http_limits: crate::http::Limits::default(),
            http_client_limits: conn::ClientLimits::default(),
            auth: crate::auth::Config::default(),
            pairing: crate::pairing::Config::default(),
            ice: crate::ice::Config::default(),
            test_clock: false,
            ws: WsLimits::default(),
            registry: crate::registry::Config::default(),
            hub: crate::hub::Config::default(),
            store: None,
            ws_echo: false,
            turn_server: None,
            cluster: None,
        }
    }
}

/// What one shard owns. Single-threaded: `Rc` and `Cell` only.
pub struct ShardCtx {
    pub shard: Shard<Msg>,
    pub counters: ShardCounters,
    pub config: Arc<ServerConfig>,
    pub state: ShardState,
    /// Plain HTTP connections: per-IP counts, idle shedding.
    pub http: conn::HttpShard,
    /// The shard's clock (wall time plus the test clock's offset).
    pub clock: crate::shard::Clock,
    /// The shard layer's counters (asks that waited or gave up, reservations refused).
    pub layer: crate::shard::LayerStats,
    /// This shard's link to the durable store (`None` without one).
    pub store: Option<chatixia_store::ShardLink>,
    /// TLS handshakes and their failures, the certificate generation in use.
    pub tls: crate::tls::metrics::TlsCounters,
    /// This shard's link to the other nodes (`--cluster`; `None` on a node alone).
    pub cluster: Option<chatixia_cluster::ShardLink>,
    /// Messages from other nodes this shard could not read (dropped).
    pub cluster_malformed: std::cell::Cell<u64>,
    /// Per shard, room for the next tell of what became pending here (`hub::hints`):
    /// held while that shard may hold a "none left" from here, so that the tell is never
    /// refused by a full mailbox; without one, no "none left" is said to it.
    hint_rooms: RefCell<Vec<Option<reactor::Reservation<Msg>>>>,
}

impl ShardCtx {
    fn new(
        shard: Shard<Msg>,
        config: Arc<ServerConfig>,
        store: Option<chatixia_store::ShardLink>,
        cluster: Option<chatixia_cluster::ShardLink>,
    ) -> Self {
        let count = shard.count();
        ShardCtx {
            state: ShardState::new(&config, count),
            shard,
            counters: ShardCounters::default(),
            config,
            http: conn::HttpShard::default(),
            clock: crate::shard::Clock::default(),
            layer: crate::shard::LayerStats::default(),
            store,
            tls: crate::tls::metrics::TlsCounters::default(),
            cluster,
            cluster_malformed: std::cell::Cell::new(0),
            hint_rooms: RefCell::new((0..count).map(|_| None).collect()),
        }
    }

    /// Submits `mutations` without waiting for the commit (housekeeping: deleting expired
    /// codes and tasks, which start-up would drop anyway).
    pub fn commit_later(&self, mutations: Vec<chatixia_store::Mutation>) {
        if let (Some(link), false) = (&self.store, mutations.is_empty()) {
            if let Err(e) = link.submit(mutations) {
                tracing::warn!(error = %e, "store refused a housekeeping write");
            }
        }
    }

    /// The shard's clock: wall clock plus the test offset.
    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    pub(crate) fn clock_offset(&self) -> u64 {
        self.clock.offset()
    }

    /// Handles a message from another shard (or this one): applies a request to the
    /// store it names; returns the reply of an ask.
    fn on_message(self: &Rc<Self>, from: ShardId, msg: Msg) -> Option<Msg> {
        // A peer whose last approval is revoked loses its embedded-TURN allocations too,
        // wherever they are: every shard is told (`crate::server::turn::revoke`). Not
        // while another approved entry still authorizes that peer id (PROTOCOL §5.6).
        let hub = matches!(msg, Msg::Hub(_));
        let (applied, revoked) =
            dispatch::apply_noting_revocation(&self.state, &self.config, msg, self.now());
        if hub {
            self.announce_pending();
        }
        // In a cluster the other nodes are told by the revocation's removal from Redis
        // (`pairing::cluster::revoke`), which knows whether the peer holds an approval
        // at another node: this node's last approval of it need not be the cluster's.
        if let (Some(peer), true) = (revoked, self.config.turn_server.is_some()) {
            let ctx = self.clone();
            monoio::spawn(async move { crate::server::turn::revoke(&ctx, &peer).await });
        }
        match applied {
            Ok(Some(Msg::HubReply(crate::hub::ops::Reply::ClaimedFor(mut b)))) => {
                if b.1.is_some() && !self.hint_room_for(from) {
                    b.1 = None;
                }
                Some(Msg::HubReply(crate::hub::ops::Reply::ClaimedFor(b)))
            }
            Ok(reply) => reply,
            Err(Msg::Dashboard(op)) => Some(Msg::DashboardReply(self.on_dashboard(op))),
            Err(Msg::Adopt(a)) => {
                ws::on_adopt(self, a);
                None
            }
            Err(Msg::AdoptHttp(a)) => Some(conn::on_adopt(self, a)),
            Err(Msg::Shard(op)) => Some(Msg::ShardReply(self.on_shard_op(op))),
            Err(Msg::Turn(op)) => {
                crate::server::turn::on_op(self, op);
                None
            }
            Err(_) => None,
        }
    }

    /// Whether this shard holds room for a tell to `to` (taking it if it can): a "none
    /// left" is said to `to` only then (`hub::hints`).
    fn hint_room_for(&self, to: ShardId) -> bool {
        if to == self.shard.id() {
            return false;
        }
        let mut rooms = self.hint_rooms.borrow_mut();
        let Some(slot) = rooms.get_mut(to) else {
            return false;
        };
        if slot.is_none() {
            *slot = self.shard.reserve(to);
        }
        slot.is_some()
    }

    /// Tells every other shard that may hold a "none left" from here (those this shard
    /// holds room for) what became pending here again (`hub::hints`): right after the
    /// message that did it, before its reply, so before the 2xx of a post. Each tell
    /// goes into the room held for it, so a full mailbox never refuses it; room for the
    /// next is taken first, and when none is left the tell says to drop every hint from
    /// here (and none is said to that shard until room is had again).
    fn announce_pending(&self) {
        let Some(what) = self.state.hub.borrow_mut().tasks.take_announcement() else {
            return;
        };
        let me = self.shard.id();
        let mut rooms = self.hint_rooms.borrow_mut();
        for (to, slot) in rooms.iter_mut().enumerate() {
            let Some(room) = slot.take() else {
                continue; // holds no hint from here
            };
            let next = self.shard.reserve(to);
            let mut what = what.clone();
            what.all |= next.is_none();
            room.tell(Msg::Hub(crate::hub::ops::Op::Pending(Box::new((me, what)))));
            *slot = next;
        }
    }

    /// Notes a change in the shard's change log.
    fn note(&self, topic: crate::shard::Topic, id: &str) {
        self.state.changes.borrow_mut().push(topic, id);
    }

    fn on_shard_op(&self, op: ShardOp) -> ShardReply {
        match op {
            ShardOp::Metrics => ShardReply::Metrics(Box::new(self.metrics_snapshot())),
            ShardOp::SetClock(offset) => {
                self.clock.set_offset(offset);
                self.run_periodic_jobs();
                ShardReply::ClockSet
            }
            // Sans-IO: `dispatch` answers it (here for completeness).
            ShardOp::Changes(since) => {
                ShardReply::Changes(Box::new(self.state.changes.borrow().since(since)))
            }
        }
    }

    /// The dashboard's question about this shard: its counters.
    fn on_dashboard(&self, op: crate::dashboard::ops::Op) -> crate::dashboard::ops::Reply {
        use crate::dashboard::ops::{Op, Reply, ShardRow};
        match op {
            Op::Counters => {
                let m = self.metrics_snapshot();
                Reply::Counters(Box::new(ShardRow {
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
                }))
            }
        }
    }

    pub fn metrics_snapshot(&self) -> ShardMetrics {
        let mut m = ShardMetrics::snapshot(
            self.shard.id(),
            self.shard.driver(),
            &self.counters,
            self.shard.stats(),
            self.state.ws.metrics(),
            self.budget_metrics(),
        );
        let (failures, refused) = self.state.auth_counters.snapshot();
        let (tokens_cached, tokens_verified) = self.state.verified_tokens.borrow().counts();
        m.auth = crate::server::metrics::AuthMetrics {
            failures,
            refused,
            addresses: self.state.auth_failures.borrow().len() as u64,
            tokens_cached,
            tokens_verified,
        };
        m.turn = crate::server::turn::metrics();
        m.tls = self.tls.snapshot();
        m.layer = crate::server::metrics::LayerMetrics::of(&self.layer);
        m.cluster_malformed = self.cluster_malformed.get();
        m.skill_asks_skipped = self.state.hub.borrow().hints.skipped;
        {
            let u = self.state.pairing_unsynced.borrow();
            m.pairing_unsynced = u.len() as u64;
            m.pairing_unkept = u.unkept();
            m.pairing_reasserts = u.reasserts();
        }
        {
            let t = self.state.hub_take_backs.borrow();
            m.hub_take_backs = t.len() as u64;
            m.hub_take_backs_settled = t.settled();
            m.hub_take_backs_unkept = t.unkept();
        }
        m.cluster_pipe = self.state.ws.pipe().map(|p| p.stats()).unwrap_or_default();
        m.cluster_binding_conflicts = self
            .state
            .agents
            .borrow_mut()
            .mirror_mut()
            .map_or(0, |n| n.binding_conflicts);
        m
    }

    /// What this shard's task store and agent registry hold against their budgets.
    fn budget_metrics(&self) -> crate::server::metrics::BudgetMetrics {
        let hub = self.state.hub.borrow();
        let agents = self.state.agents.borrow();
        let (tasks_anonymous, task_anonymous_bytes) = hub.tasks.anonymous_usage();
        let (agents_anonymous, agent_anonymous_bytes) = agents.anonymous_usage();
        let n = |v: usize| v as u64;
        crate::server::metrics::BudgetMetrics {
            tasks: n(hub.tasks.len()),
            tasks_anonymous: n(tasks_anonymous),
            task_bytes: n(hub.tasks.bytes()),
            task_anonymous_bytes: n(task_anonymous_bytes),
            agents: n(agents.len()),
            agents_anonymous: n(agents_anonymous),
            agent_bytes: n(agents.usage(&crate::limits::Charge::default()).0),
            agent_anonymous_bytes: n(agent_anonymous_bytes),
            // `metrics::BUDGET_STORES` × `limits::Refusal::REASONS`: tasks, then agents.
            refused: {
                let (t, a) = (hub.tasks.refusals(), agents.refusals());
                [t[0], t[1], t[2], a[0], a[1], a[2]]
            },
        }
    }

    fn job_health(&self) {
        let now = self.now();
        if self.state.agents.borrow_mut().tick_health(now) > 0 {
            self.note(crate::shard::Topic::Agent, "");
        }
    }

    fn job_expire(&self) {
        let st = &self.state;
        let deletes = crate::hub::ops::expire(
            &mut st.hub.borrow_mut(),
            self.now(),
            &mut st.changes.borrow_mut(),
        );
        self.commit_later(deletes);
    }

    fn job_pairing_sweep(&self) {
        let now = self.now();
        let (expired, retired) = {
            let mut pairing = self.state.pairing.borrow_mut();
            let expired = pairing.codes.sweep_expired(now);
            pairing.rate.sweep(now);
            pairing.budget.sweep(now);
            pairing.guard.sweep(now);
            let retired = pairing
                .entries
                .retire(now.saturating_sub(self.config.pairing.retention));
            (expired, retired)
        };
        // In a cluster, the retired entries' notes of where they are go too.
        crate::pairing::directory::forget_entries(self, &retired);
        crate::pairing::cluster::forget_revoked_away(self, &retired);
        self.state.auth_failures.borrow_mut().sweep(now);
        self.state.auth_hints.borrow_mut().sweep(now);
        self.state.authz.borrow_mut().sweep(now);
        if !retired.is_empty() {
            self.note(crate::shard::Topic::Pairing, "");
        }
        // Housekeeping: a disk that refuses it leaves them on disk until the next start
        // (which drops them again).
        self.commit_later(
            expired
                .into_iter()
                .map(|c| chatixia_store::Mutation::DeleteInvite(c.store_key()))
                .chain(
                    retired
                        .into_iter()
                        .map(|id| chatixia_store::Mutation::DeletePairing(id.value())),
                )
                .collect(),
        );
    }

    /// Task writes that may have run in Redis and could not be taken back at once, sent
    /// again while the link is up (`hub::cluster::retry_take_backs`), one try at a time,
    /// backed off while Redis does not take them (`TakeBacks::tick`).
    fn job_hub_take_backs(self: &Rc<Self>) {
        if !self.cluster.as_ref().is_some_and(|l| l.is_up()) {
            return;
        }
        if self.state.hub_take_backs.borrow_mut().tick() {
            let c = self.clone();
            monoio::spawn(async move { crate::hub::cluster::retry_take_backs(&*c).await });
        }
    }

    /// Revocations whose cluster records wait for Redis, sent again
    /// (`pairing::cluster::retry_unsynced`), and the connect's removals of this shard's
    /// revoked entries run again when Redis did not take them all while the link stayed
    /// up: each one at a time, backed off while Redis does not take them
    /// (`Unsynced::tick`).
    fn job_pairing_unsynced(self: &Rc<Self>) {
        use crate::pairing::cluster as pc;
        let due = self.state.pairing_unsynced.borrow_mut().tick();
        if due.retry {
            let c = self.clone();
            monoio::spawn(async move { pc::retry_unsynced(&*c).await });
        }
        if due.reassert {
            let mut again = pc::assertions(&self.state.pairing.borrow().entries);
            again.approved.clear();
            let c = self.clone();
            monoio::spawn(async move {
                let taken = pc::assert_all(&*c, again).await.is_some();
                c.state.pairing_unsynced.borrow_mut().reasserted(taken);
            });
        }
    }

    fn job_ws_idle(&self) {
        self.state.ws.sweep_idle(self.now().as_secs());
    }

    fn run_periodic_jobs(&self) {
        self.job_ws_idle();
        self.job_health();
        self.job_expire();
        self.job_pairing_sweep();
    }
}

/// The store's doorbell is the reactor's [`reactor::Bell`] (an eventfd on io_uring, a
/// socket pair on epoll): the storage thread rings it, a task of the shard awaits it.
pub(crate) struct StoreBell(pub(crate) reactor::Bell);

impl chatixia_store::Doorbell for StoreBell {
    fn ring(&self) {
        self.0.ring();
    }
}

/// Links this shard to the store: the storage thread rings a bell that a task of this
/// shard awaits, which then wakes the shard's waiting commits.
fn store_link(
    shard: &Shard<Msg>,
    handle: &chatixia_store::StoreHandle,
) -> std::io::Result<chatixia_store::ShardLink> {
    let (bell, mut waiter) = shard.bell()?;
    let link = handle
        .link(Arc::new(StoreBell(bell)))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let l = link.clone();
    monoio::spawn(async move {
        loop {
            let gone = waiter.wait().await.is_err();
            // Completions are ready, or the storage thread is gone (whatever still
            // waits then fails).
            l.on_doorbell();
            if gone {
                break;
            }
        }
    });
    Ok(link)
}

/// Longest a shard waits at shutdown for its directory changes to reach the cluster link.
const CLUSTER_DRAIN_MAX: Duration = Duration::from_secs(2);

/// Backoff after an accept error such as EMFILE (out of file descriptors): the
/// listener stays readable, so retrying at once would spin the shard. It doubles while
/// accepts keep failing, up to [`ACCEPT_ERROR_BACKOFF_MAX`].
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(20);

/// Longest pause between accept attempts while they keep failing.
const ACCEPT_ERROR_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accept failures are logged at most once per this interval, with their count.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Accept failures, logged once per [`ACCEPT_ERROR_LOG_INTERVAL`] with a count rather
/// than once each (out of fds, a failing accept would otherwise log many times a second).
#[derive(Default)]
struct AcceptFailures {
    last_log: Option<std::time::Instant>,
    since_log: u64,
}

impl AcceptFailures {
    fn record(&mut self, shard: usize, e: &std::io::Error) {
        self.since_log += 1;
        let now = std::time::Instant::now();
        if self
            .last_log
            .is_some_and(|t| now.duration_since(t) < ACCEPT_ERROR_LOG_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            shard,
            error = %e,
            failures = self.since_log,
            interval = ?ACCEPT_ERROR_LOG_INTERVAL,
            "accept failed; backing off (out of fds: idle keep-alive connections are shed)"
        );
        self.last_log = Some(now);
        self.since_log = 0;
    }
}

/// A shard's TLS: the configuration new connections get, and the listener it serves on
/// (`None`: the shard's `--listen` listener is the TLS one).
pub struct ShardTlsListen {
    pub tls: crate::tls::ShardTls,
    pub listener: Option<StdListener>,
}

/// The application future of one shard: serves its listener (and its TLS listener) until
/// shutdown, then waits for its connections to finish.
pub async fn run_shard(
    shard: Shard<Msg>,
    listener: StdListener,
    config: Arc<ServerConfig>,
    boot: crate::server::boot::ShardBoot,
    turn: crate::server::turn::ShardSockets,
    tls: Option<ShardTlsListen>,
    cluster: Option<cluster::ShardCluster>,
) {
    let cluster = match cluster.map(|c| cluster::link(&shard, c)).transpose() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(shard = shard.id(), error = %e, "cannot link to the cluster");
            return;
        }
    };
    let (cluster, cluster_bell) = match cluster {
        Some((l, w)) => (Some(l), Some(w)),
        None => (None, None),
    };
    let link = match &config.store {
        Some(handle) => match store_link(&shard, handle) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(shard = shard.id(), error = %e, "cannot link to the state store");
                return;
            }
        },
        None => None,
    };
    let ctx = Rc::new(ShardCtx::new(shard.clone(), config, link, cluster));
    let mut boot = boot;
    if ctx.cluster.is_none() {
        // Only a cluster's token hash can still hold a token revoked here.
        boot.revoked_tokens.clear();
    }
    ctx.state.load(boot, ctx.now());
    if let Some(w) = cluster_bell {
        cluster::start(&ctx, w);
    }
    let handler_ctx = ctx.clone();
    shard.set_handler(move |from, msg| handler_ctx.on_message(from, msg));
    // The shard's TLS configurations, shared by its HTTPS and TURN-over-TLS listeners.
    let (tls, tls_listener) = match tls {
        None => (None, None),
        Some(ShardTlsListen { tls, listener }) => (Some(Rc::new(tls)), listener),
    };
    crate::server::turn::start(&ctx, turn, tls.clone());
    let stop = shard.shutdown_event().clone();
    let c = ctx.clone();
    reactor::timer::every(HEALTH_CHECK_INTERVAL, stop.clone(), move || c.job_health());
    let c = ctx.clone();
    reactor::timer::every(EXPIRE_INTERVAL, stop.clone(), move || c.job_expire());
    let c = ctx.clone();
    reactor::timer::every(PAIRING_SWEEP_INTERVAL, stop.clone(), move || {
        c.job_pairing_sweep()
    });
    if ctx.cluster.is_some() {
        let c = ctx.clone();
        reactor::timer::every(
            crate::pairing::cluster::UNSYNCED_RETRY_INTERVAL,
            stop.clone(),
            move || c.job_pairing_unsynced(),
        );
        let c = ctx.clone();
        reactor::timer::every(
            crate::hub::cluster::TAKE_BACK_RETRY_INTERVAL,
            stop,
            move || c.job_hub_take_backs(),
        );
    }
    let c = ctx.clone();
    let ws_sweep = (ctx.config.ws.idle_timeout / 4).max(Duration::from_secs(1));
    // The signaling sweep runs until the shard has drained, not just until shutdown
    // begins: it is what abandons a write to a client that stopped reading, and such a
    // write (the 1001 of a shutdown, say) must not hold the drain until
    // `--shutdown-timeout`.
    let drained = SetOnDrop(reactor::LocalEvent::new());
    reactor::timer::every(ws_sweep, drained.0.clone(), move || c.job_ws_idle());

    let main_tls = match (tls, tls_listener) {
        // The TLS listener beside the plain one: its own accept loop (it ends at
        // shutdown, closing its listener, as the plain loop below).
        (Some(tls), Some(l)) => {
            let c = ctx.clone();
            monoio::spawn(async move { accept_loop(&c, l, Some(tls)).await });
            None
        }
        (tls, _) => tls,
    };
    accept_loop(&ctx, listener, main_tls).await;
    // Signaling connections close with 1001 (each flushes what it owes first).
    ctx.state.ws.close_all();
    tracing::debug!(
        shard = shard.id(),
        "stopped accepting; draining connections"
    );
    while ctx.counters.connections_open.get() > 0 || ctx.state.ws.open.get() > 0 {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    // In a cluster, the directory's leaves of the connections just closed go out before
    // the node hands its lease back (bounded: a link that is down takes nothing).
    let deadline = std::time::Instant::now() + CLUSTER_DRAIN_MAX;
    while ctx.cluster.as_ref().is_some_and(|l| l.is_up())
        && !ctx.state.ws.outbox_is_empty()
        && std::time::Instant::now() < deadline
    {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(drained);
}

/// Accepts connections on `listener` until shutdown (TLS ones with `tls`), each served
/// by a task of its own; then closes the listener, so the kernel sends new connections
/// to the shards still listening (or refuses them once all have closed).
async fn accept_loop(
    ctx: &Rc<ShardCtx>,
    listener: StdListener,
    tls: Option<Rc<crate::tls::ShardTls>>,
) {
    let shard = &ctx.shard;
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(shard = shard.id(), error = %e, "cannot register listener");
            return;
        }
    };
    if let Some(t) = tls.as_ref() {
        // The certificate generation shows in /metrics from the start.
        t.config(&ctx.tls);
    }
    let shutdown = shard.shutdown_event().clone();
    let mut backoff = ACCEPT_ERROR_BACKOFF;
    let mut failures = AcceptFailures::default();
    loop {
        use reactor::timer::{select2, Either};
        match select2(listener.accept(), shutdown.wait()).await {
            Either::Right(()) => break,
            Either::Left(Ok((stream, peer))) => {
                backoff = ACCEPT_ERROR_BACKOFF;
                ShardCounters::inc(&ctx.counters.connections_accepted);
                ShardCounters::inc(&ctx.counters.connections_open);
                let _ = stream.set_nodelay(true);
                let ctx = ctx.clone();
                let tls = tls.as_ref().map(|t| t.config(&ctx.tls));
                monoio::spawn(async move {
                    let slot = conn::admit(&ctx, peer);
                    let stream = match tls {
                        None => Some(crate::tls::Transport::plain(stream)),
                        // Boxed: a plain connection's task keeps no room for it.
                        Some(cfg) => Box::pin(tls_accept::handshake(&ctx, stream, cfg)).await,
                    };
                    // ALPN `stun.turn` (RFC 7443): a TURN client on the HTTPS port.
                    let stream = match stream {
                        Some(s) if s.alpn() == Some(crate::tls::config::ALPN_TURN) => {
                            drop(slot);
                            crate::server::turn::adopt_tls(&ctx, s, peer);
                            ShardCounters::dec(&ctx.counters.connections_open);
                            return;
                        }
                        s => s,
                    };
                    match (stream, slot) {
                        (Some(stream), Some(slot)) => conn::serve(&ctx, stream, peer, slot).await,
                        (Some(stream), None) => Box::pin(conn::refuse_over_cap(&ctx, stream)).await,
                        (None, _) => {}
                    }
                    ShardCounters::dec(&ctx.counters.connections_open);
                });
            }
            Either::Left(Err(e)) => {
                let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                if out_of_fds {
                    // Make room: idle keep-alive connections go first.
                    ctx.http.shed_idle();
                }
                failures.record(shard.id(), &e);
                monoio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_ERROR_BACKOFF_MAX);
            }
        }
    }
    drop(listener);
}

/// Sets its event when dropped: on every way out of the shard's serving function.
struct SetOnDrop(reactor::LocalEvent);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.set();
    }
}
