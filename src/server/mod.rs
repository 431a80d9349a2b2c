//! The shard application: accept loop, per-connection HTTP loop, routing, and the
//! messages shards exchange. With the services' `api` and `session` modules, the only
//! place that does I/O or reads the clock.
//!
//! * [`msg`]: the shard message, one request and one reply enum per service; the owner
//!   side is each service's `ops::Op::apply`, dispatched by `ShardCtx::on_message`;
//! * [`router`]: path and method → a service's HTTP handler (`registry::api`, …,
//!   `signaling::upgrade` for `/ws`);
//! * [`conn`]: one HTTP/1.1 connection; [`common`]: what the handlers share.

pub mod backup;
pub mod common;
pub mod conn;
mod debug;
pub mod msg;
pub mod paging;
pub mod router;

use std::cell::{Cell, RefCell};
use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reactor::Shard;

use crate::auth::ApiKeys;
use crate::dashboard::{events, EventKind};
use crate::http::Response;
use crate::hub::{TaskPointers, TaskStore, TaskStoreConfig, EXPIRE_INTERVAL};
use crate::metrics::{ShardCounters, ShardMetrics};
use crate::pairing::DeviceTokenIndex;
use crate::registry::{AgentStore, AgentStoreConfig, HEALTH_CHECK_INTERVAL};
use crate::signaling::{ConnTable, PeerAuthz, WsLimits};
use crate::time::UnixTime;
use crate::{hub, pairing, signaling};
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
    /// The API keys, parsed once before the shards start.
    pub api_keys: ApiKeys,
    /// JWT signing secret (`SIGNALING_SECRET`).
    pub jwt_secret: Vec<u8>,
    /// STUN URLs of `GET /api/config` (may be empty).
    pub stun_urls: Vec<String>,
    /// `(TURN_URL, TURN_SECRET)` when both are set.
    pub turn: Option<(String, Vec<u8>)>,
    /// How long finished tasks are kept.
    pub task_retention: Duration,
    /// How long rejected and revoked pairing entries are kept after their last change.
    pub pairing_retention: Duration,
    /// Enables `POST /debug/clock`.
    pub test_clock: bool,
    /// Signaling WebSocket limits.
    pub ws: WsLimits,
    /// Stored field sizes, `ttl` range, store budgets and client quotas, list pages.
    pub limits: crate::limits::StoreLimits,
    /// `--require-agent-auth`: agent routes need the agent's JWT (`auth::agent`).
    pub require_agent_auth: bool,
    /// The failure budgets of the routes that check a secret (`auth::failures`),
    /// server-wide: each shard enforces its share of the total.
    pub auth_failures: crate::auth::failures::FailureLimits,
    /// Clock skew allowed on a JWT's `exp`, `nbf` and `iat` (`--jwt-leeway-secs`).
    pub jwt_leeway_secs: u64,
    /// `--insecure-open-admin`: the operator routes need no admin token (the reference's
    /// open admin plane).
    pub insecure_open_admin: bool,
    /// Keys derived from `jwt_secret` for token hashes and sealing (issue 10).
    pub secrets: chatixia_store::Secrets,
    /// The durable store (`None`: state in memory only, for embedders and benches).
    pub store: Option<chatixia_store::StoreHandle>,
    /// Shards holding tasks away from their claim home after a restart with another
    /// shard count: heartbeats ask them too (see `durable::split`).
    pub stray_task_shards: Vec<usize>,
    /// Serves the `/ws-echo` test WebSocket (no token; `--ws-echo`).
    pub ws_echo: bool,
    /// The embedded TURN server (`--turn-listen`; issue 24).
    pub turn_server: Option<crate::turn::TurnSettings>,
}

impl ServerConfig {
    /// A configuration with the reference's defaults (dev key, dev secret, default STUN).
    pub fn new(http_idle_timeout: Duration) -> Self {
        ServerConfig {
            http_idle_timeout,
            http_limits: crate::http::Limits::default(),
            http_client_limits: conn::ClientLimits::default(),
            api_keys: ApiKeys::dev_default(),
            jwt_secret: crate::auth::DEFAULT_SECRET.as_bytes().to_vec(),
            stun_urls: crate::ice::default_stun_urls(),
            turn: None,
            task_retention: crate::hub::DEFAULT_RETENTION,
            pairing_retention: crate::pairing::DEFAULT_RETENTION,
            test_clock: false,
            ws: WsLimits::default(),
            limits: crate::limits::StoreLimits::default(),
            require_agent_auth: false,
            auth_failures: crate::auth::failures::FailureLimits::default(),
            jwt_leeway_secs: crate::auth::jwt::LEEWAY_SECS_DEFAULT,
            insecure_open_admin: false,
            secrets: chatixia_store::Secrets::derive(crate::auth::DEFAULT_SECRET.as_bytes()),
            store: None,
            stray_task_shards: Vec::new(),
            ws_echo: false,
            turn_server: None,
        }
    }
}

/// How a retained write ended ([`ShardCtx::commit_retained`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    /// On disk.
    Durable,
    /// Not yet: the store is unavailable; kept and written once it recovers (the reason).
    Deferred(String),
}

/// The 503 for a write the store did not acknowledge (nothing of it is on disk). The
/// store being unavailable (a disk that refuses writes) is not logged here, per request:
/// the control thread logs it once per interval (`main.rs`, `StoreWatch`).
pub fn store_refusal(e: &chatixia_store::StoreError) -> Response {
    if let chatixia_store::StoreError::Full { .. } = e {
        // The size bound (`--data-bytes-max`): the store's own words name it.
        return Response::error(503, e.to_string());
    }
    if e.is_unavailable() {
        tracing::debug!(error = %e, "write refused: state store unavailable");
        Response::error(503, format!("{e}; try again later"))
    } else {
        tracing::error!(error = %e, "store commit failed");
        Response::error(503, "could not save the change; try again later")
    }
}

/// The state one shard owns, one store per service (see docs/ARCHITECTURE.md, "State
/// placement"); the signaling connection table is [`ShardCtx::ws`].
pub struct ShardState {
    /// Registry: the agents whose `shard_of(agent_id)` is this shard.
    pub agents: RefCell<AgentStore>,
    /// Hub: tasks homed here, and pointers for the agents owned here.
    pub hub: RefCell<hub::Store>,
    /// Pairing: invite codes, entries, `pair` rate-limit buckets.
    pub pairing: RefCell<pairing::Store>,
    /// Auth: the device-token index.
    pub tokens: RefCell<DeviceTokenIndex>,
    /// Auth: wrong secrets of the client addresses this shard owns
    /// (`shard_of(address)`).
    pub auth_failures: RefCell<crate::auth::failures::FailureLedger>,
    /// Auth: what this shard has heard of other shards' addresses with recent failures.
    pub auth_hints: RefCell<crate::auth::failures::FailureHints>,
    /// Auth: secret checks in flight here, per client address (`auth::budget::admit`).
    pub auth_in_flight: RefCell<crate::auth::failures::InFlight>,
    /// Signaling: which of the peers owned here may signal.
    pub authz: RefCell<PeerAuthz>,
    /// Dashboard: the changes to the state above, for the event stream.
    pub events: RefCell<crate::dashboard::EventRing>,
}

/// What one shard owns. Single-threaded: `Rc` and `Cell` only.
pub struct ShardCtx {
    pub shard: Shard<Msg>,
    pub counters: ShardCounters,
    pub config: Arc<ServerConfig>,
    pub state: ShardState,
    /// Live signaling connections of the peers this shard owns.
    pub ws: ConnTable,
    /// Plain HTTP connections: per-IP counts, idle shedding.
    pub http: conn::HttpShard,
    /// Added to the wall clock (only `POST /debug/clock` changes it).
    clock_offset: Cell<u64>,
    /// This shard's link to the durable store (`None` without one).
    pub store: Option<chatixia_store::ShardLink>,
}

impl ShardCtx {
    fn new(
        shard: Shard<Msg>,
        config: Arc<ServerConfig>,
        store: Option<chatixia_store::ShardLink>,
    ) -> Self {
        let tasks = TaskStoreConfig {
            retention: config.task_retention,
            bytes_max: config.limits.task_store_bytes_max,
            client_bytes_max: config.limits.task_client_bytes_max,
            client_tasks_max: config.limits.task_client_tasks_max,
            claim_bytes_max: config.limits.list_response_bytes_max,
            anonymous_share_percent: config.limits.anonymous_share_percent,
            ..TaskStoreConfig::default()
        };
        let shards = shard.count();
        ShardCtx {
            shard,
            counters: ShardCounters::default(),
            state: ShardState {
                agents: RefCell::new({
                    let mut a = AgentStore::new(AgentStoreConfig::default());
                    a.set_budget(config.limits.agent_budget);
                    a
                }),
                hub: RefCell::new(hub::Store {
                    tasks: TaskStore::new(tasks),
                    pointers: TaskPointers::default(),
                }),
                pairing: RefCell::new(pairing::Store::with_guard(config.limits.pair_guard)),
                tokens: RefCell::new(DeviceTokenIndex::new()),
                auth_failures: RefCell::new(crate::auth::failures::FailureLedger::new(
                    config.auth_failures.shard_share(shards),
                )),
                auth_hints: RefCell::new(crate::auth::failures::FailureHints::new(
                    &config.auth_failures,
                )),
                auth_in_flight: RefCell::new(crate::auth::failures::InFlight::default()),
                authz: RefCell::new(PeerAuthz::default()),
                events: RefCell::new(crate::dashboard::EventRing::new()),
            },
            config,
            ws: ConnTable::default(),
            http: conn::HttpShard::default(),
            clock_offset: Cell::new(0),
            store,
        }
    }

    /// Commits `mutations` as one atomic write and waits until it is durable. `Err` is
    /// the 503 to answer (nothing acknowledged; the caller undoes its change). Without a
    /// store, succeeds at once.
    pub async fn commit(&self, mutations: Vec<chatixia_store::Mutation>) -> Result<(), Response> {
        self.commit_as(mutations, chatixia_store::WriteClass::Bounded)
            .await
    }

    /// [`commit`](Self::commit) held to the durable store's size bound of `class`
    /// (`--data-bytes-max`, its anonymous share, or none for a claim): over it, 503
    /// with the store's reason.
    pub async fn commit_as(
        &self,
        mutations: Vec<chatixia_store::Mutation>,
        class: chatixia_store::WriteClass,
    ) -> Result<(), Response> {
        match self.commit_with(mutations, class, false).await? {
            Saved::Durable => Ok(()),
            // Only retained writes are deferred.
            Saved::Deferred(reason) => Err(Response::error(503, reason)),
        }
    }

    /// [`commit`](Self::commit) for a write that must not be lost to a disk outage (a
    /// revocation): while the store is unavailable it is kept and written on recovery
    /// ([`Saved::Deferred`]); the size bound never refuses it.
    pub async fn commit_retained(
        &self,
        mutations: Vec<chatixia_store::Mutation>,
    ) -> Result<Saved, Response> {
        self.commit_with(mutations, chatixia_store::WriteClass::Progress, true)
            .await
    }

    async fn commit_with(
        &self,
        mutations: Vec<chatixia_store::Mutation>,
        class: chatixia_store::WriteClass,
        retain: bool,
    ) -> Result<Saved, Response> {
        let Some(link) = &self.store else {
            return Ok(Saved::Durable);
        };
        if mutations.is_empty() {
            return Ok(Saved::Durable);
        }
        let submitted = if retain {
            link.submit_retained(mutations)
        } else {
            link.submit_as(mutations, class)
        };
        let ack = submitted.map_err(|e| {
            tracing::debug!(error = %e, "store refused a write");
            Response::error(503, format!("state store busy: {e}; try again later"))
        })?;
        match ack.await {
            Ok(()) => Ok(Saved::Durable),
            Err(e @ chatixia_store::StoreError::Deferred { .. }) => {
                Ok(Saved::Deferred(e.to_string()))
            }
            Err(e) => Err(store_refusal(&e)),
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

    /// Loads this shard's part of the stored state (start-up, before accepting).
    fn load(&self, boot: crate::durable::ShardBoot) {
        let st = &self.state;
        {
            let mut p = st.pairing.borrow_mut();
            for e in boot.entries {
                p.entries.insert_loaded(e);
            }
            for (code, issuer, expires_at) in boot.invites {
                p.codes.restore(code, issuer, expires_at);
            }
        }
        {
            let mut tokens = st.tokens.borrow_mut();
            for (key, grant) in boot.tokens {
                if tokens.insert(key, grant).is_err() {
                    tracing::error!("device-token index full at start-up; a token was not loaded");
                }
            }
        }
        {
            let mut authz = st.authz.borrow_mut();
            for (peer, at) in boot.revoked {
                authz.restore_revoked(&peer, at);
            }
            for (peer, mesh) in boot.authorized {
                authz.add(&peer, mesh.as_deref());
            }
            authz.sweep(self.now());
        }
        {
            let mut agents = st.agents.borrow_mut();
            for (agent, owner) in boot.bindings {
                agents.load_binding(agent, owner);
            }
        }
        {
            let mut hub = st.hub.borrow_mut();
            for t in boot.tasks {
                hub.tasks.insert_loaded(t);
            }
            for (agent, id, deadline) in boot.pointers {
                hub.pointers.add(agent, id, deadline);
            }
        }
    }

    /// The shard's clock: wall clock plus the test offset.
    pub fn now(&self) -> UnixTime {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        UnixTime(wall.saturating_add(self.clock_offset.get()))
    }

    pub(crate) fn clock_offset(&self) -> u64 {
        self.clock_offset.get()
    }

    /// Handles a message from another shard (or this one): applies a request to the
    /// store it names; returns the reply of an ask.
    fn on_message(self: &Rc<Self>, msg: Msg) -> Option<Msg> {
        let st = &self.state;
        match msg {
            Msg::Registry(op) => {
                let ev = match &op {
                    // `register` with the sender's quota (issue 13): the same event as
                    // `Upsert`.
                    crate::registry::ops::Op::UpsertFor(b) => {
                        Some((EventKind::Agent, b.0.agent_id.clone()))
                    }
                    _ => events::of_registry(&op),
                };
                let reply = op.apply(&mut st.agents.borrow_mut(), self.now());
                if matches!(
                    reply,
                    crate::registry::ops::Reply::Done | crate::registry::ops::Reply::Bound(_)
                ) {
                    self.note(ev);
                }
                Some(Msg::RegistryReply(reply))
            }
            Msg::Hub(op) => {
                let (agent, task) = events::of_hub(&op, &st.agents.borrow());
                let reply = op.apply(
                    &mut st.hub.borrow_mut(),
                    &mut st.agents.borrow_mut(),
                    self.now(),
                );
                if !matches!(
                    reply,
                    hub::ops::Reply::Refused(_)
                        | hub::ops::Reply::Forbidden(_)
                        | hub::ops::Reply::Busy
                ) {
                    self.note(agent.map(|id| (EventKind::Agent, id)));
                }
                if events::hub_task_changed(&reply) {
                    self.note(task.map(|id| (EventKind::Task, id)));
                }
                Some(Msg::HubReply(reply))
            }
            Msg::Pairing(op) => {
                let ev = events::of_pairing(&op);
                let reply = op.apply(&mut st.pairing.borrow_mut(), self.now());
                if events::pairing_changed(&reply) {
                    self.note(ev.map(|id| (EventKind::Pairing, id)));
                }
                Some(Msg::PairingReply(reply))
            }
            Msg::Dashboard(op) => Some(Msg::DashboardReply(crate::dashboard::ops::apply(self, op))),
            Msg::Auth(op) => {
                let mut tokens = st.tokens.borrow_mut();
                let mut failures = st.auth_failures.borrow_mut();
                let store = crate::auth::ops::Store {
                    tokens: &mut tokens,
                    failures: &mut failures,
                };
                Some(Msg::AuthReply(op.apply(store, self.now())))
            }
            Msg::Signaling(op) => signaling::api::on_op(self, op).map(Msg::SignalingReply),
            Msg::Adopt(a) => {
                signaling::api::on_adopt(self, a);
                None
            }
            Msg::Shard(op) => Some(Msg::ShardReply(self.on_shard_op(op))),
            Msg::Turn(op) => {
                crate::turn::on_op(self, op);
                None
            }
            // Replies go to the asking future, never to this handler.
            Msg::RegistryReply(_)
            | Msg::HubReply(_)
            | Msg::PairingReply(_)
            | Msg::AuthReply(_)
            | Msg::SignalingReply(_)
            | Msg::DashboardReply(_)
            | Msg::ShardReply(_) => None,
        }
    }

    /// Notes a change for the dashboard's event stream.
    fn note(&self, ev: Option<(EventKind, String)>) {
        if let Some((kind, id)) = ev {
            self.state.events.borrow_mut().push(kind, &id);
        }
    }

    fn on_shard_op(&self, op: ShardOp) -> ShardReply {
        match op {
            ShardOp::Metrics => ShardReply::Metrics(Box::new(self.metrics_snapshot())),
            ShardOp::SetClock(offset) => {
                self.clock_offset.set(offset);
                self.run_periodic_jobs();
                ShardReply::ClockSet
            }
        }
    }

    pub fn metrics_snapshot(&self) -> ShardMetrics {
        let mut m = ShardMetrics::snapshot(
            self.shard.id(),
            self.shard.driver(),
            &self.counters,
            self.shard.stats(),
            self.ws.metrics(),
            self.budget_metrics(),
        );
        m.auth.addresses = self.state.auth_failures.borrow().len() as u64;
        m.turn = crate::turn::metrics();
        m
    }

    /// What this shard's task store and agent registry hold against their budgets.
    fn budget_metrics(&self) -> crate::metrics::BudgetMetrics {
        let hub = self.state.hub.borrow();
        let agents = self.state.agents.borrow();
        let (tasks_anonymous, task_anonymous_bytes) = hub.tasks.anonymous_usage();
        let (agents_anonymous, agent_anonymous_bytes) = agents.anonymous_usage();
        let n = |v: usize| v as u64;
        crate::metrics::BudgetMetrics {
            tasks: n(hub.tasks.len()),
            tasks_anonymous: n(tasks_anonymous),
            task_bytes: n(hub.tasks.bytes()),
            task_anonymous_bytes: n(task_anonymous_bytes),
            agents: n(agents.len()),
            agents_anonymous: n(agents_anonymous),
            agent_bytes: n(agents.usage(&crate::limits::Charge::default()).0),
            agent_anonymous_bytes: n(agent_anonymous_bytes),
            refused: Default::default(),
        }
    }

    /// The answer to a budget refusal of `store` (`tasks`, `agents`), counted in
    /// `/metrics` (`chatixia_budget_refused_total`).
    pub fn refused(&self, store: &str, r: &crate::limits::Refusal) -> crate::http::Response {
        self.counters.budget_refused(store, r.reason());
        let names = if store == "agents" {
            &crate::registry::AGENT_STORE_NAMES
        } else {
            &crate::hub::TASK_STORE_NAMES
        };
        crate::http::Response::error(r.status(), r.message(names))
    }

    fn job_health(&self) {
        let now = self.now();
        if self.state.agents.borrow_mut().tick_health(now) > 0 {
            self.note(Some((EventKind::Agent, String::new())));
        }
    }

    fn job_expire(&self) {
        let now = self.now();
        let (overdue, expired) = {
            let mut hub = self.state.hub.borrow_mut();
            let overdue = hub.tasks.overdue_ids(now);
            let expired = hub.tasks.expire(now);
            hub.pointers.sweep(now);
            (overdue, expired)
        };
        if expired.expired + expired.removed > 0 {
            self.note(Some((EventKind::Task, String::new())));
        }
        // Failed by their TTL: finished tasks live in memory only.
        self.commit_later(
            overdue
                .into_iter()
                .map(chatixia_store::Mutation::DeleteTask)
                .collect(),
        );
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
                .retire(now.saturating_sub(self.config.pairing_retention));
            (expired, retired)
        };
        self.state.auth_failures.borrow_mut().sweep(now);
        self.state.auth_hints.borrow_mut().sweep(now);
        self.state.authz.borrow_mut().sweep(now);
        if !retired.is_empty() {
            self.note(Some((EventKind::Pairing, String::new())));
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

    fn job_ws_idle(&self) {
        self.ws.sweep_idle(self.now().as_secs(), &self.config.ws);
    }

    fn run_periodic_jobs(&self) {
        self.job_ws_idle();
        self.job_health();
        self.job_expire();
        self.job_pairing_sweep();
    }
}

/// Doorbell bytes read at once (each is one ring; their count does not matter).
const DOORBELL_READ_BYTES_MAX: usize = 256;

/// Links this shard to the store: the storage thread rings a socket-pair doorbell whose
/// read end a task of this shard awaits, then wakes the shard's waiting commits.
fn store_link(handle: &chatixia_store::StoreHandle) -> std::io::Result<chatixia_store::ShardLink> {
    let (bell, read) = chatixia_store::SocketDoorbell::pair()?;
    let link = handle
        .link(Arc::new(bell))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let read = monoio::net::UnixStream::from_std(read)?;
    let l = link.clone();
    monoio::spawn(async move {
        use monoio::io::AsyncReadRent;
        let mut read = read;
        // Rings are one byte each and carry no data: one read drains up to
        // `DOORBELL_READ_BYTES_MAX` of them; more stay in the socket for the next read
        // (the storage thread never blocks on a full socket, see `SocketDoorbell`).
        let mut buf = vec![0u8; DOORBELL_READ_BYTES_MAX];
        loop {
            let (r, b) = read.read(buf).await;
            buf = b;
            match r {
                Ok(0) | Err(_) => {
                    // The storage thread is gone: fail whatever still waits.
                    l.on_doorbell();
                    break;
                }
                Ok(_) => {
                    l.on_doorbell();
                }
            }
        }
    });
    Ok(link)
}

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

/// The application future of one shard: serves its listener until shutdown, then waits
/// for its connections to finish.
pub async fn run_shard(
    shard: Shard<Msg>,
    listener: StdListener,
    config: Arc<ServerConfig>,
    boot: crate::durable::ShardBoot,
    turn: crate::turn::ShardSockets,
) {
    let link = match &config.store {
        Some(handle) => match store_link(handle) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(shard = shard.id(), error = %e, "cannot link to the state store");
                return;
            }
        },
        None => None,
    };
    let ctx = Rc::new(ShardCtx::new(shard.clone(), config, link));
    ctx.load(boot);
    let handler_ctx = ctx.clone();
    shard.set_handler(move |_from, msg| handler_ctx.on_message(msg));
    crate::turn::start(&ctx, turn);
    let stop = shard.shutdown_event().clone();
    let c = ctx.clone();
    reactor::timer::every(HEALTH_CHECK_INTERVAL, stop.clone(), move || c.job_health());
    let c = ctx.clone();
    reactor::timer::every(EXPIRE_INTERVAL, stop.clone(), move || c.job_expire());
    let c = ctx.clone();
    reactor::timer::every(PAIRING_SWEEP_INTERVAL, stop, move || c.job_pairing_sweep());
    let c = ctx.clone();
    let ws_sweep = (ctx.config.ws.idle_timeout / 4).max(Duration::from_secs(1));
    // The signaling sweep runs until the shard has drained, not just until shutdown
    // begins: it is what abandons a write to a client that stopped reading, and such a
    // write (the 1001 of a shutdown, say) must not hold the drain until
    // `--shutdown-timeout`.
    let drained = SetOnDrop(reactor::LocalEvent::new());
    reactor::timer::every(ws_sweep, drained.0.clone(), move || c.job_ws_idle());

    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(shard = shard.id(), error = %e, "cannot register listener");
            return;
        }
    };
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
                monoio::spawn(async move {
                    match conn::admit(&ctx, peer) {
                        Some(slot) => conn::serve(&ctx, stream, peer, slot).await,
                        None => conn::refuse_over_cap(&ctx, stream).await,
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
    // Signaling connections close with 1001 (each flushes what it owes first).
    ctx.ws.close_all();
    // Stop accepting: closing the listener makes the kernel send new connections to
    // the shards still listening (or refuse them once all have closed).
    drop(listener);
    tracing::debug!(
        shard = shard.id(),
        "stopped accepting; draining connections"
    );
    while ctx.counters.connections_open.get() > 0 || ctx.ws.open.get() > 0 {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(drained);
}

/// Sets its event when dropped: on every way out of the shard's serving function.
struct SetOnDrop(reactor::LocalEvent);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.set();
    }
}
