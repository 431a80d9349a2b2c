//! The link thread: one thread per node holding the command connection and the
//! subscription, driven by one poll loop (mio) that also takes the shards' commands
//! (a bounded queue and a waker) and keeps the timers (lease, probe, command timeout,
//! reconnect). It alone writes the shards' rings: completions and inbound events.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};

use crate::channel::{unix_ns, Completion, InboundItem, Request, Shared, What};
use crate::conn::{open, Conn};
use crate::lease::{
    guarded, parse_lease_reply, Backoff, LeaseReply, Members, Probe, HAND_BACK_SCRIPT,
    LEASE_SCRIPT, PROBE_MISSED_AFTER,
};
use crate::shard::channel_of;
use crate::{
    Addr, ClusterConfig, CmdError, Doorbell, Health, Inbound, LinkParts, Route, Script, Stats,
    Value,
};

mod node;
mod sentinel;
use sentinel::check_role;

pub use node::Node;
pub(crate) use node::Parts;

const WAKER: Token = Token(0);
const CMD: Token = Token(1);
const SUB: Token = Token(2);
/// The subscription to a Sentinel's `+switch-master` (sentinel mode).
const WATCH: Token = Token(3);

/// Requests queued from all shards to the link thread: it drains the queue on every
/// wake, so this only has to hold what the shards submit while it writes one batch; a
/// full queue refuses a submission ([`Refused::Busy`](crate::Refused::Busy)) rather
/// than blocking a shard. Independent of `inflight_max` so that the queue's memory (it is
/// allocated up front) does not grow with shards × inflight_max.
pub const REQUEST_QUEUE_MAX: usize = 16_384;

/// Room kept in every shard's inbound ring for Up/Down/Members: a shard flooded with
/// messages still learns that the link went down. A control event that finds even this
/// full (a shard that has not taken its events for that many link changes) is dropped,
/// counted (`control_dropped`) and logged.
pub const CONTROL_RESERVE: usize = 64;

struct ShardOut {
    completions: rtrb::Producer<Completion>,
    inbound: rtrb::Producer<InboundItem>,
    inbound_bytes: Arc<std::sync::atomic::AtomicUsize>,
    bell: Arc<dyn Doorbell>,
    /// Something was pushed since the last ring.
    dirty: bool,
}

/// A command written and not yet answered, in the order written.
struct Pending {
    origin: Origin,
    /// When it was written (the command timeout runs from here).
    sent: Instant,
    /// Written while a `WAIT` was outstanding (or is that `WAIT`): its reply may come
    /// `wait_timeout` later than Redis's own work takes, so its timeout is that much
    /// longer.
    behind_wait: bool,
}

enum Origin {
    Shard {
        shard: usize,
        key: usize,
        discard: bool,
        at: Instant,
        /// An `EVALSHA` to retry once as `EVAL` on `NOSCRIPT`.
        retry: Option<Box<EvalRetry>>,
        /// A durable eval: its reply waits for the `WAIT` with this number (the next one
        /// written after it), see [`Up::awaiting`].
        wait: Option<u64>,
    },
    /// `WAIT replicas_min wait_timeout` number `n`: resolves the durable evals written
    /// before it.
    Wait(u64),
    Lease,
    Probe,
    /// One of the node's stop scripts (`on_stop`).
    StopScript,
    /// The hello a node that just connected publishes to the others.
    Hello,
    Leave,
}

/// What an `EVALSHA` needs to be sent again as `EVAL`: the script's index, keys, args.
type EvalRetry = (usize, Vec<Vec<u8>>, Vec<Vec<u8>>);

/// Both connections while up.
struct Up {
    cmd: Conn,
    sub: Conn,
    pending: VecDeque<Pending>,
    lease_due: Instant,
    lease_inflight: bool,
    probe_due: Instant,
    /// `WAIT`s written on this connection (the last one's number).
    waits_written: u64,
    /// A `WAIT` is in flight: no second one is written until it answers (a `WAIT`
    /// blocks the connection for up to `wait_timeout`; one at a time covers every durable
    /// eval written meanwhile, and the delay it adds to the pipeline stays one
    /// `wait_timeout`).
    wait_outstanding: bool,
    /// A durable eval was written since the last `WAIT`.
    durable_unwaited: bool,
    /// A `WAIT` was answered on this connection (the first one's shortfall is logged:
    /// the connect set `replicas_short` already, quietly).
    waited: bool,
    /// Durable evals answered, in the order answered, waiting for their `WAIT` (its
    /// number): at most the shards' commands in flight (each shard's `inflight_max`).
    awaiting: VecDeque<Awaiting>,
}

/// A durable eval answered by the primary, its reply held until its `WAIT` answers.
struct Awaiting {
    wait: u64,
    shard: usize,
    key: usize,
    discard: bool,
    at: Instant,
    value: Value,
}

impl Up {
    fn push(&mut self, origin: Origin, sent: Instant) {
        let behind_wait = self.wait_outstanding;
        self.pending.push_back(Pending {
            origin,
            sent,
            behind_wait,
        });
    }
}

struct Link {
    cfg: ClusterConfig,
    scripts: Vec<Script>,
    shas: Vec<Vec<u8>>,
    shared: Arc<Shared>,
    rx: Receiver<Request>,
    poll: Poll,
    shards: Vec<ShardOut>,
    route: Route,
    channel: Vec<u8>,
    nodes_key: Vec<u8>,
    /// `{prefix}holders`: node id → the incarnation holding its lease.
    holders_key: Vec<u8>,
    /// This process's incarnation: 128 random bits (hex), drawn at start. The lease of
    /// the node id is this process's only while the holder named in Redis is this.
    incarnation: String,
    /// Before the first Up: the expiry of another incarnation's lease on this node id
    /// when first refused. A later refusal with a later expiry means that one renewed
    /// it (it is alive): the start fails ([`Link::on_held`]).
    first_held: Option<i64>,
    /// The last connect was refused the lease: `(remaining_ms, expiry_ms)`.
    held: Option<(i64, i64)>,
    /// Stopped for good (`Shared::fatal` says why): the loop ends.
    fatal: bool,
    up: Option<Up>,
    /// While down: when to try again.
    retry_at: Instant,
    attempts: u64,
    backoff: Backoff,
    probe: Probe,
    members: Members,
    generation: u64,
    /// Down was told to the shards since the last Up.
    reported_down: bool,
    stop_within_ms: Arc<AtomicU64>,
    /// Stopping: until when the lease hand-back may take.
    leaving: Option<Instant>,
    /// The Redis the connections were opened to (the primary, in sentinel mode).
    primary: Option<(String, u16)>,
    /// Sentinel mode: the Sentinels in the order they are asked (the last one that
    /// answered first, as Redis's guidelines for Sentinel clients say).
    sentinel_order: Vec<(String, u16)>,
    /// Sentinel mode: a connection to a Sentinel subscribed to `+switch-master`, so a
    /// failover is followed at once rather than at the next backoff step. Kept across
    /// Down/Up; opened again at the next connect when it fails.
    watch: Option<Conn>,
}

impl Link {
    fn run(mut self) {
        let mut events = Events::with_capacity(64);
        loop {
            if self.fatal {
                break;
            }
            let now = Instant::now();
            if self.shared.stopping.load(Ordering::SeqCst) && self.leaving.is_none() {
                let ms = self.stop_within_ms.load(Ordering::SeqCst).max(1);
                // Leave a tenth of `within` for the thread's own exit.
                self.leaving = Some(now + Duration::from_millis(ms - ms / 10));
                // What the shards submitted before the stop goes first (with the
                // WAIT for its durable writes), then the node's stop scripts, then the
                // lease.
                self.drain_requests();
                self.queue_wait(now);
                // Guarded: a process that lost the node id to another removes nothing.
                let stop: Vec<_> = self
                    .cfg
                    .on_stop
                    .iter()
                    .filter_map(|(name, keys, args)| {
                        let s = self.scripts.iter().find(|s| s.name == *name)?;
                        let (keys, args) = self.guard_args(keys, args);
                        Some((guarded(s.source), keys, args))
                    })
                    .collect();
                if let Some(up) = &mut self.up {
                    for (source, keys, args) in &stop {
                        queue_eval(&mut up.cmd, b"EVAL", source.as_bytes(), keys, args);
                        up.push(Origin::StopScript, now);
                    }
                }
                match &mut self.up {
                    Some(up) => {
                        queue_eval(
                            &mut up.cmd,
                            b"EVAL",
                            HAND_BACK_SCRIPT.as_bytes(),
                            &[self.nodes_key.clone(), self.holders_key.clone()],
                            &[
                                self.cfg.node_id.as_bytes().to_vec(),
                                self.incarnation.as_bytes().to_vec(),
                            ],
                        );
                        up.push(Origin::Leave, now);
                    }
                    None => break,
                }
            }
            if let Some(until) = self.leaving {
                if self.up.is_none() || now >= until {
                    break;
                }
            }
            self.timers(now);
            self.queue_wait(now);
            if let Some(up) = &mut self.up {
                if let Err(e) = up.cmd.flush() {
                    self.fail(e);
                }
            }
            self.ring_bells();
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!("cluster link: poll failed: {e}");
                    break;
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    CMD => self.read_cmd(),
                    SUB => self.read_sub(),
                    WATCH => self.read_watch(),
                    _ => {}
                }
            }
            self.shared.wake_pending.store(false, Ordering::SeqCst);
            self.drain_requests();
        }
        // Completions pushed so far are in the rings before `exited` is seen.
        self.shared.up.store(false, Ordering::SeqCst);
        self.shared.exited.store(true, Ordering::SeqCst);
        if !self.fatal {
            if let Ok(mut r) = self.shared.reason.lock() {
                *r = "the cluster link has stopped".into();
            }
        }
        for s in &self.shards {
            s.bell.ring();
        }
        if let Some(up) = self.up.take() {
            let _ = self.poll.registry().deregister(&mut { up.cmd }.stream);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut d = self.leaving;
        let mut at = |t: Instant| d = Some(d.map_or(t, |d: Instant| d.min(t)));
        match &self.up {
            None => at(self.retry_at),
            Some(up) => {
                at(up.lease_due);
                at(up.probe_due);
                if let Some(t) = self.probe.deadline(self.cfg.probe_interval) {
                    at(t);
                }
                if let Some(p) = up.pending.front() {
                    at(self.reply_deadline(p));
                }
            }
        }
        d
    }

    /// How much longer than `command_timeout` a reply may take: a `WAIT` ahead of it.
    fn wait_slack(&self, p: &Pending) -> Duration {
        if p.behind_wait {
            self.cfg.wait_timeout
        } else {
            Duration::ZERO
        }
    }

    fn reply_deadline(&self, p: &Pending) -> Instant {
        p.sent + self.cfg.command_timeout + self.wait_slack(p)
    }

    /// Writes a `WAIT` for the durable evals written since the last one, unless one is
    /// still in flight (its reply queues the next).
    fn queue_wait(&mut self, now: Instant) {
        let Some(up) = &mut self.up else { return };
        if !up.durable_unwaited || up.wait_outstanding {
            return;
        }
        up.durable_unwaited = false;
        up.wait_outstanding = true;
        up.waits_written += 1;
        let replicas = self.cfg.replicas_min.to_string();
        let ms = self.cfg.wait_timeout.as_millis().max(1).to_string();
        up.cmd
            .queue(&[b"WAIT".as_slice(), replicas.as_bytes(), ms.as_bytes()]);
        let n = up.waits_written;
        up.push(Origin::Wait(n), now);
    }

    fn timers(&mut self, now: Instant) {
        let Some(up) = &self.up else {
            if now >= self.retry_at && self.leaving.is_none() {
                self.connect();
            }
            return;
        };
        if let Some(p) = up.pending.front() {
            if now >= self.reply_deadline(p) {
                let msg = format!(
                    "no reply from Redis within command_timeout ({:?})",
                    self.cfg.command_timeout
                );
                return self.fail(msg);
            }
        }
        let Some(up) = &mut self.up else { return };
        if let Some(t) = self.probe.deadline(self.cfg.probe_interval) {
            if now >= t {
                self.shared
                    .stats
                    .probes_missed
                    .fetch_add(1, Ordering::Relaxed);
                let msg = format!(
                    "the subscription did not deliver a probe within {PROBE_MISSED_AFTER} × probe_interval ({:?})",
                    self.cfg.probe_interval
                );
                return self.fail(msg);
            }
        }
        if self.leaving.is_some() {
            // Handing the lease back: a renewal queued after the ZREM would undo it.
            return;
        }
        if now >= up.lease_due {
            up.lease_due = now + self.cfg.lease / 3;
            if !up.lease_inflight {
                up.lease_inflight = true;
                let lease_ms = self.cfg.lease.as_millis().to_string();
                up.cmd.queue(&lease_command(
                    &self.nodes_key,
                    &self.holders_key,
                    &self.cfg.node_id,
                    &lease_ms,
                    &self.incarnation,
                ));
                up.push(Origin::Lease, now);
                // The renewal is a write: a `WAIT` behind it finds out whether the
                // replicas keep up while no durable write asks (for `/readyz`).
                if self.cfg.replicas_min > 0 {
                    up.durable_unwaited = true;
                }
            }
        }
        if now >= up.probe_due {
            up.probe_due = now + self.cfg.probe_interval;
            let mut message = crate::LINK_KEY_LEN.to_be_bytes().to_vec();
            // A probe written behind a WAIT reaches Redis up to wait_timeout later: its
            // clock starts then (a slow WAIT is not a silent subscription).
            let at = if up.wait_outstanding {
                now + self.cfg.wait_timeout
            } else {
                now
            };
            message.extend_from_slice(&self.probe.send(at));
            up.cmd
                .queue(&[b"SPUBLISH".as_slice(), &self.channel, &message]);
            up.push(Origin::Probe, now);
        }
    }

    /// Opens both connections (blocking, bounded by the connect and command timeouts),
    /// loads the scripts, subscribes, renews the lease; then tells every shard Up.
    fn connect(&mut self) {
        if self.attempts > 0 {
            self.shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.attempts += 1;
        match self.open_both() {
            Ok((mut up, live, gone)) => {
                let reg = self.poll.registry();
                let r = reg
                    .register(
                        &mut up.cmd.stream,
                        CMD,
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .and_then(|()| reg.register(&mut up.sub.stream, SUB, Interest::READABLE));
                if let Err(e) = r {
                    return self.fail(format!("cannot poll the connections: {e}"));
                }
                self.up = Some(up);
                self.generation += 1;
                // Where the shards' own connections go (`crate::pipe`); none when the
                // address cannot be read (they wait, and relays take the link).
                let addr = self.up.as_ref().and_then(|u| u.cmd.stream.peer_addr().ok());
                if let Ok(mut d) = self.shared.direct.lock() {
                    *d = addr.map(|addr| crate::Direct {
                        addr,
                        login: self.login(),
                        db: self.cfg.url.db,
                        generation: self.generation,
                    });
                }
                self.backoff.reset();
                self.probe.reset();
                self.members.reset();
                self.reported_down = false;
                self.shared
                    .generation
                    .store(self.generation, Ordering::Relaxed);
                // Whether this primary has its replicas is not known until the first
                // `WAIT` answers (queued behind the lease just renewed): not ready
                // until then (after a failover, often not for a while).
                if self.cfg.replicas_min > 0 {
                    replicas_short(
                        &self.shared,
                        Some("no WAIT answered on this connection yet"),
                    );
                }
                self.shared.since_ns.store(unix_ns(), Ordering::Relaxed);
                self.shared.up.store(true, Ordering::SeqCst);
                tracing::info!(generation = self.generation, "cluster link up");
                let generation = self.generation;
                self.control(|| Inbound::Up { generation });
                // The other live nodes renew at once on this hello and so learn of this
                // node now rather than at their next renewal (a revocation they
                // broadcast reaches it).
                if let Some(up) = &mut self.up {
                    let now = Instant::now();
                    for node in live.iter().filter(|n| **n != self.cfg.node_id) {
                        let mut message = crate::LINK_KEY_LEN.to_be_bytes().to_vec();
                        message.extend_from_slice(HELLO_MARK);
                        up.cmd.queue(&[
                            b"SPUBLISH".as_slice(),
                            &channel_of(&self.cfg.prefix, node),
                            &message,
                        ]);
                        up.push(Origin::Hello, now);
                    }
                }
                self.on_members(live, gone);
                // Replies already buffered from the setup (a message published at once).
                self.read_sub();
            }
            Err(e) => {
                self.fail(e);
                if let Some((remaining_ms, expiry_ms)) = self.held.take() {
                    self.on_held(remaining_ms, expiry_ms);
                }
            }
        }
    }

    /// `keys` and `args` of a [`guarded`] script: the holders' hash appended to the keys,
    /// the node id and this incarnation to the args.
    fn guard_args(&self, keys: &[Vec<u8>], args: &[Vec<u8>]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut k = keys.to_vec();
        k.push(self.holders_key.clone());
        let mut a = args.to_vec();
        a.push(self.cfg.node_id.as_bytes().to_vec());
        a.push(self.incarnation.as_bytes().to_vec());
        (k, a)
    }

    /// Another incarnation holds this node id's lease (it runs `remaining_ms` more, to
    /// `expiry_ms` on Redis's clock); the link is down already ([`Link::fail`]).
    ///
    /// Before this link was ever up: a lease that the other process renews (its expiry
    /// moved since the first refusal) is a live node with this id, and the link stops
    /// for good ([`Node::fatal`]: the process exits saying so). One that is not renewed
    /// is a process that died (`kill -9`, a crash) without handing it back: this one
    /// waits for it to run out and takes it. Either is known within one lease. Once up,
    /// a refusal (this process was paused past its lease and another took the id) keeps
    /// the link down, retried, until the other's lease runs out.
    fn on_held(&mut self, remaining_ms: i64, expiry_ms: i64) {
        let id = &self.cfg.node_id;
        if self.generation == 0 {
            match self.first_held {
                None => self.first_held = Some(expiry_ms),
                Some(first) if expiry_ms > first => {
                    let msg = format!(
                        "--node-id {id:?} is held by another live node: its lease on Redis \
                         was renewed while this process waited for it to run out. Each node \
                         needs its own --node-id (the default, HOST:PORT, is the same on two \
                         hosts with the same name and port)"
                    );
                    tracing::error!("cluster: {msg}");
                    if let Ok(mut r) = self.shared.reason.lock() {
                        r.clone_from(&msg);
                    }
                    if let Ok(mut f) = self.shared.fatal.lock() {
                        *f = Some(msg);
                    }
                    self.fatal = true;
                    return;
                }
                Some(_) => {}
            }
        }
        // Try again when it runs out, or sooner (the backoff) to see it renewed.
        let out = Duration::from_millis(u64::try_from(remaining_ms).unwrap_or(0)) + HELD_MARGIN;
        self.retry_at = self.retry_at.min(Instant::now() + out);
    }

    /// The commands that log a new connection in (`AUTH`, when the URL has a password).
    fn login(&self) -> Vec<Vec<Vec<u8>>> {
        let mut auth = Vec::new();
        if let Some(p) = &self.cfg.url.password {
            let mut c = vec![b"AUTH".to_vec()];
            if let Some(u) = &self.cfg.url.user {
                c.push(u.clone().into_bytes());
            }
            c.push(p.clone().into_bytes());
            auth.push(c);
        }
        auth
    }

    fn open_both(&mut self) -> Result<(Up, Vec<String>, Vec<String>), String> {
        // Where: the URL's Redis, or the primary the Sentinels name now.
        let (host, port) = match &self.cfg.url.addr {
            Addr::Direct { host, port } => (host.clone(), *port),
            Addr::Sentinel(_) => self.find_primary()?,
        };
        self.primary = Some((host.clone(), port));
        let sentinel = self.cfg.url.sentinels().is_some();
        let auth = self.login();
        let cfg = &self.cfg;
        let node = &cfg.node_id;
        // The subscription.
        let mut setup = auth.clone();
        setup.push(args(&["CLIENT", "SETNAME", &format!("chx-{node}-sub")]));
        // Sentinel mode: the address the Sentinels gave must be the primary now (one
        // just demoted, or a replica named while a failover is under way, is not).
        let role_at = setup.len();
        if sentinel {
            setup.push(args(&["ROLE"]));
        }
        setup.push(vec![b"SSUBSCRIBE".to_vec(), self.channel.clone()]);
        let (sub, replies) = open(
            &host,
            port,
            cfg.connect_timeout,
            cfg.command_timeout,
            &setup,
        )
        .map_err(|e| format!("subscription: {e}"))?;
        check_setup(&setup, &replies, "subscription")?;
        if sentinel {
            check_role(&replies[role_at], &host, port)?;
        }
        match replies.last() {
            Some(Value::Array(a)) if a.first().and_then(Value::as_bytes) == Some(b"ssubscribe") => {
            }
            other => return Err(format!("subscription: SSUBSCRIBE answered {other:?}")),
        }
        // The commands.
        let mut setup = auth;
        let role_at = setup.len();
        if sentinel {
            setup.push(args(&["ROLE"]));
        }
        if cfg.url.db != 0 {
            setup.push(args(&["SELECT", &cfg.url.db.to_string()]));
        }
        setup.push(args(&["CLIENT", "SETNAME", &format!("chx-{node}-cmd")]));
        let scripts_at = setup.len();
        for s in &self.scripts {
            setup.push(args(&["SCRIPT", "LOAD", s.source]));
        }
        // The lease first: the connect scripts remove every entry naming this node id, so
        // they run only while this incarnation holds it (guarded: a process refused the
        // id must not remove the holder's entries).
        let lease_at = setup.len();
        let lease_ms = cfg.lease.as_millis().to_string();
        setup.push(
            lease_command(
                &self.nodes_key,
                &self.holders_key,
                node,
                &lease_ms,
                &self.incarnation,
            )
            .iter()
            .map(|a| a.to_vec())
            .collect(),
        );
        let connect_at = setup.len();
        for (name, keys, a) in &cfg.on_connect {
            let Some(s) = self.scripts.iter().find(|s| s.name == *name) else {
                continue;
            };
            let (keys, a) = self.guard_args(keys, a);
            let mut c = vec![
                b"EVAL".to_vec(),
                guarded(s.source).into_bytes(),
                keys.len().to_string().into_bytes(),
            ];
            c.extend(keys);
            c.extend(a);
            setup.push(c);
        }
        let (cmd, replies) = open(
            &host,
            port,
            cfg.connect_timeout,
            cfg.command_timeout,
            &setup,
        )
        .map_err(|e| format!("commands: {e}"))?;
        check_setup(&setup[..scripts_at], &replies[..scripts_at], "commands")?;
        if sentinel {
            check_role(&replies[role_at], &host, port)?;
        }
        let (live, gone) = match parse_lease_reply(&replies[lease_at])? {
            LeaseReply::Granted { live, gone, .. } => (live, gone),
            LeaseReply::Held {
                remaining_ms,
                expiry_ms,
            } => {
                self.held = Some((remaining_ms, expiry_ms));
                return Err(held_reason(node, remaining_ms));
            }
        };
        for ((name, _, _), r) in cfg.on_connect.iter().zip(&replies[connect_at..]) {
            if let Value::Error(e) = r {
                return Err(format!("connect script {name:?} failed: {e}"));
            }
        }
        let mut shas = Vec::with_capacity(self.scripts.len());
        for (s, r) in self.scripts.iter().zip(&replies[scripts_at..lease_at]) {
            match r.as_bytes() {
                Some(sha) if matches!(r, Value::Bulk(_)) => shas.push(sha.to_vec()),
                _ => return Err(format!("SCRIPT LOAD of {:?} answered {r:?}", s.name)),
            }
        }
        self.shared
            .stats
            .lease_renewals
            .fetch_add(1, Ordering::Relaxed);
        self.shas = shas;
        let now = Instant::now();
        Ok((
            Up {
                cmd,
                sub,
                pending: VecDeque::new(),
                lease_due: now + cfg.lease / 3,
                lease_inflight: false,
                probe_due: now + cfg.probe_interval,
                waits_written: 0,
                wait_outstanding: false,
                // The lease just renewed is a write: its `WAIT` tells `/readyz` at once
                // whether this primary has its replicas (after a failover, often not).
                durable_unwaited: cfg.replicas_min > 0,
                waited: false,
                awaiting: VecDeque::new(),
            },
            live,
            gone,
        ))
    }

    /// The link is down: every command in flight fails, shards are told once, the
    /// connections close and a reconnect is scheduled.
    fn fail(&mut self, reason: String) {
        let was_up = self.up.is_some();
        if let Some(mut up) = self.up.take() {
            let reg = self.poll.registry();
            let _ = reg.deregister(&mut up.cmd.stream);
            let _ = reg.deregister(&mut up.sub.stream);
            for p in up.pending {
                if let Origin::Shard {
                    shard,
                    key,
                    discard,
                    ..
                } = p.origin
                {
                    self.shared.stats.lost.fetch_add(1, Ordering::Relaxed);
                    let result = if discard {
                        Ok(Value::Nil)
                    } else {
                        Err(CmdError::Lost(reason.clone()))
                    };
                    self.complete(shard, key, result);
                }
            }
            // Answered by the primary but not known to be replicated: lost as well.
            for a in up.awaiting {
                self.shared.stats.lost.fetch_add(1, Ordering::Relaxed);
                let result = if a.discard {
                    Ok(Value::Nil)
                } else {
                    Err(CmdError::Lost(reason.clone()))
                };
                self.complete(a.shard, a.key, result);
            }
        }
        if was_up {
            tracing::warn!("cluster link down: {reason}");
        } else {
            tracing::debug!("cluster link: connect failed: {reason}");
        }
        self.shared.up.store(false, Ordering::SeqCst);
        if let Ok(mut r) = self.shared.reason.lock() {
            r.clone_from(&reason);
        }
        if was_up || !self.reported_down {
            self.shared.since_ns.store(unix_ns(), Ordering::Relaxed);
        }
        if !self.reported_down {
            self.reported_down = true;
            self.control(|| Inbound::Down {
                reason: reason.clone(),
            });
        }
        self.members.reset();
        self.retry_at = Instant::now() + self.backoff.next();
    }

    fn drain_requests(&mut self) {
        loop {
            let req = match self.rx.try_recv() {
                Ok(r) => r,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            };
            self.request(req);
        }
    }

    fn request(&mut self, req: Request) {
        let Some(up) = &mut self.up else {
            // Submitted in the moment the link went down.
            let reason = self
                .shared
                .reason
                .lock()
                .map(|r| r.clone())
                .unwrap_or_default();
            let result = if req.discard {
                Ok(Value::Nil)
            } else {
                Err(CmdError::Lost(reason))
            };
            return self.complete(req.shard, req.key, result);
        };
        self.shared.stats.commands.fetch_add(1, Ordering::Relaxed);
        let mut retry = None;
        let mut wait = None;
        match req.what {
            What::Command(a) => up.cmd.queue(&a),
            What::Publish { channel, message } => {
                self.shared.stats.publishes.fetch_add(1, Ordering::Relaxed);
                up.cmd.queue(&[b"SPUBLISH".as_slice(), &channel, &message]);
            }
            What::Eval {
                script,
                keys,
                args,
                durable,
            } => {
                let sha = self.shas.get(script).map(Vec::as_slice).unwrap_or(b"");
                queue_eval(&mut up.cmd, b"EVALSHA", sha, &keys, &args);
                retry = Some(Box::new((script, keys, args)));
                if durable && self.cfg.replicas_min > 0 {
                    up.durable_unwaited = true;
                    wait = Some(up.waits_written + 1);
                }
            }
        }
        up.push(
            Origin::Shard {
                shard: req.shard,
                key: req.key,
                discard: req.discard,
                at: req.at,
                retry,
                wait,
            },
            Instant::now(),
        );
    }

    fn read_cmd(&mut self) {
        let Some(mut up) = self.up.take() else { return };
        let mut replies = Vec::new();
        let r = up.cmd.read(|v| {
            replies.push(v);
            Ok(())
        });
        let discarded = std::mem::take(&mut up.cmd.discarded);
        self.up = Some(up);
        self.shared
            .stats
            .replies_discarded
            .fetch_add(discarded, Ordering::Relaxed);
        for v in replies {
            if self.up.is_none() {
                return;
            }
            self.reply(v);
        }
        if let Err(e) = r {
            self.fail(e);
        }
    }

    fn reply(&mut self, v: Value) {
        let Some(up) = &mut self.up else { return };
        let Some(p) = up.pending.pop_front() else {
            return self.fail(format!("a reply to no command: {v:?}"));
        };
        match p.origin {
            Origin::Shard {
                shard,
                key,
                discard,
                at,
                retry,
                wait,
            } => {
                if let (Some(retry), Some(e)) = (retry, v.as_error()) {
                    if e.starts_with("NOSCRIPT") {
                        let (script, keys, args) = *retry;
                        let source = self.scripts[script].source.as_bytes();
                        queue_eval(&mut up.cmd, b"EVAL", source, &keys, &args);
                        // Written now: the next WAIT covers it.
                        let wait = wait.map(|_| {
                            up.durable_unwaited = true;
                            up.waits_written + 1
                        });
                        up.push(
                            Origin::Shard {
                                shard,
                                key,
                                discard,
                                at,
                                retry: None,
                                wait,
                            },
                            Instant::now(),
                        );
                        return;
                    }
                }
                if let (Some(wait), false) = (wait, matches!(v, Value::Error(_))) {
                    // Held until its WAIT answers (a script that failed is answered now).
                    up.awaiting.push_back(Awaiting {
                        wait,
                        shard,
                        key,
                        discard,
                        at,
                        value: v,
                    });
                    return;
                }
                let us = u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX);
                self.shared.stats.round_trip(us);
                let result = if discard {
                    if let Value::Error(e) = &v {
                        self.shared
                            .stats
                            .nowait_errors
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("cluster: a command nobody awaited failed: {e}");
                    }
                    Ok(Value::Nil)
                } else {
                    Ok(v)
                };
                self.complete(shard, key, result);
            }
            Origin::Wait(n) => {
                up.wait_outstanding = false;
                let min = self.cfg.replicas_min;
                let ms = self.cfg.wait_timeout.as_millis().max(1);
                let acked = match &v {
                    Value::Int(k) if *k >= i64::from(min) => Ok(()),
                    Value::Int(k) => Err(format!(
                        "NOREPLICAS {k} of the {min} replicas required acknowledged the write \
                         within wait_timeout ({ms} ms): it ran on the primary and may be lost \
                         if the primary fails"
                    )),
                    Value::Error(e) => Err(format!("NOREPLICAS WAIT failed: {e}")),
                    other => Err(format!("NOREPLICAS WAIT answered {other:?}")),
                };
                let short = acked.as_ref().err().map(String::as_str);
                let changed = replicas_short(&self.shared, short);
                let first = !std::mem::replace(&mut up.waited, true);
                match short {
                    Some(why) if changed || first => {
                        tracing::warn!("cluster: writes are not replicated: {why}")
                    }
                    None if changed && !first => {
                        tracing::info!("cluster: writes are replicated again")
                    }
                    _ => {}
                }
                let mut done = Vec::new();
                while up.awaiting.front().is_some_and(|a| a.wait <= n) {
                    if let Some(a) = up.awaiting.pop_front() {
                        done.push(a);
                    }
                }
                for a in done {
                    let us = u64::try_from(a.at.elapsed().as_micros()).unwrap_or(u64::MAX);
                    self.shared.stats.round_trip(us);
                    let value = match &acked {
                        Ok(()) => a.value,
                        Err(e) => {
                            self.shared
                                .stats
                                .unreplicated
                                .fetch_add(1, Ordering::Relaxed);
                            Value::Error(e.clone())
                        }
                    };
                    let result = if a.discard { Ok(Value::Nil) } else { Ok(value) };
                    self.complete(a.shard, a.key, result);
                }
            }
            Origin::Lease => {
                up.lease_inflight = false;
                match parse_lease_reply(&v) {
                    Ok(LeaseReply::Held {
                        remaining_ms,
                        expiry_ms,
                    }) => {
                        self.fail(held_reason(&self.cfg.node_id, remaining_ms));
                        self.on_held(remaining_ms, expiry_ms);
                    }
                    Ok(LeaseReply::Granted { lapsed: true, .. }) => {
                        // Paused past the lease (a stopped process, a slow host): the
                        // other nodes may have removed what this node held. A reconnect
                        // runs the connect scripts and has the shards assert it again.
                        self.fail("this node's lease had lapsed; re-asserting".into());
                    }
                    Ok(LeaseReply::Granted {
                        live,
                        gone,
                        lapsed: false,
                    }) => {
                        self.shared
                            .stats
                            .lease_renewals
                            .fetch_add(1, Ordering::Relaxed);
                        self.on_members(live, gone);
                    }
                    Err(e) => self.fail(e),
                }
            }
            Origin::Probe => {
                if let Value::Error(e) = v {
                    self.fail(format!("the probe's SPUBLISH failed: {e}"));
                }
            }
            Origin::Hello => {
                if let Value::Error(e) = v {
                    tracing::debug!("cluster: a hello was not published: {e}");
                }
            }
            Origin::StopScript => {
                if let Value::Error(e) = v {
                    tracing::warn!("cluster: a stop script failed: {e}");
                }
            }
            Origin::Leave => {
                // Handed back: the thread ends on its next turn.
                self.leaving = Some(Instant::now());
                if let Value::Error(e) = v {
                    tracing::warn!("cluster: handing the lease back failed: {e}");
                }
            }
        }
    }

    fn read_sub(&mut self) {
        let Some(mut up) = self.up.take() else { return };
        let mut messages = Vec::new();
        let mut dropped = 0u64;
        let mut collect = |v: Value| -> Result<(), String> {
            match v {
                // A message over REPLY_BYTES_MAX, read past: dropped, the subscription
                // carries on.
                Value::Error(e) if e.starts_with(crate::conn::DISCARDED) => {
                    dropped += 1;
                    Ok(())
                }
                Value::Array(mut a)
                    if a.len() == 3 && a[0].as_bytes() == Some(b"smessage".as_slice()) =>
                {
                    match a.pop() {
                        Some(Value::Bulk(payload)) => messages.push(payload),
                        other => {
                            tracing::debug!("cluster: an smessage without a payload: {other:?}")
                        }
                    }
                    Ok(())
                }
                Value::Array(a) if a.first().and_then(Value::as_bytes) == Some(b"sunsubscribe") => {
                    Err("Redis unsubscribed the node's channel".into())
                }
                Value::Error(e) => Err(format!("the subscription failed: {e}")),
                other => {
                    tracing::debug!("cluster: unexpected on the subscription: {other:?}");
                    Ok(())
                }
            }
        };
        let mut r = up.sub.decode(&mut collect);
        if r.is_ok() {
            r = up.sub.read(&mut collect);
        }
        let discarded = std::mem::take(&mut up.sub.discarded);
        self.up = Some(up);
        let stats = &self.shared.stats;
        stats
            .replies_discarded
            .fetch_add(discarded, Ordering::Relaxed);
        stats.inbound_dropped.fetch_add(dropped, Ordering::Relaxed);
        for m in messages {
            self.message(m);
        }
        if let Err(e) = r {
            self.fail(e);
        }
    }

    fn message(&mut self, payload: Vec<u8>) {
        let stats = &self.shared.stats;
        let Some(&[a, b]) = payload.get(..2) else {
            stats.inbound_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("cluster: a message shorter than its framing");
            return;
        };
        let key_len = u16::from_be_bytes([a, b]);
        if key_len == crate::LINK_KEY_LEN {
            // The link's own (no service frames this length; the empty key is a service's).
            let body = &payload[2..];
            if body == HELLO_MARK {
                // A node joined: renew now, which reports the new members.
                if let Some(up) = &mut self.up {
                    up.lease_due = Instant::now();
                }
            } else if !self.probe.seen(body) {
                tracing::debug!("cluster: a link message that is neither a hello nor a probe");
            }
            return;
        }
        let key_len = usize::from(key_len);
        let Some(key) = payload.get(2..2 + key_len) else {
            stats.inbound_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("cluster: a message shorter than its framing");
            return;
        };
        let body = &payload[2 + key_len..];
        let shard = (self.route)(key);
        let Some(out) = self.shards.get_mut(shard) else {
            stats.inbound_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(shard, "cluster: route() named a shard that does not exist");
            return;
        };
        let size = key.len() + body.len();
        if out.inbound.slots() <= CONTROL_RESERVE
            || out.inbound_bytes.load(Ordering::Acquire) + size > self.cfg.inbound_bytes_max
        {
            stats.inbound_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let m = Inbound::Message {
            route_key: key.to_vec(),
            body: body.to_vec(),
        };
        if out.inbound.push(m).is_ok() {
            out.inbound_bytes.fetch_add(size, Ordering::AcqRel);
            out.dirty = true;
            stats.deliveries.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_members(&mut self, live: Vec<String>, gone: Vec<String>) {
        if let Some((live, gone)) = self.members.update(live, gone) {
            self.control(|| Inbound::Members {
                live: live.clone(),
                gone: gone.clone(),
            });
        }
    }

    /// Tells every shard `event()`.
    fn control(&mut self, event: impl Fn() -> Inbound) {
        for out in &mut self.shards {
            if out.inbound.push(event()).is_err() {
                self.shared
                    .stats
                    .control_dropped
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!("cluster: a shard's inbound ring is full: a link event dropped");
            }
            out.dirty = true;
        }
    }

    fn complete(&mut self, shard: usize, key: usize, result: Result<Value, CmdError>) {
        let Some(out) = self.shards.get_mut(shard) else {
            return;
        };
        // Never full: a shard has at most `inflight_max` waiters, each completed once,
        // and the ring holds `inflight_max`.
        if out.completions.push((key, result)).is_err() {
            tracing::error!(shard, "cluster: a completion ring is full (a bug)");
        }
        out.dirty = true;
    }

    fn ring_bells(&mut self) {
        for out in &mut self.shards {
            if std::mem::take(&mut out.dirty) {
                out.bell.ring();
            }
        }
    }
}

/// The body of the hello a node publishes to the others when it connects (framed with
/// [`crate::LINK_KEY_LEN`], like the probes).
const HELLO_MARK: &[u8] = b"chx-hello";

fn args(a: &[&str]) -> Vec<Vec<u8>> {
    a.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn lease_command<'a>(
    nodes_key: &'a [u8],
    holders_key: &'a [u8],
    node: &'a str,
    lease_ms: &'a str,
    incarnation: &'a str,
) -> [&'a [u8]; 8] {
    [
        b"EVAL",
        LEASE_SCRIPT.as_bytes(),
        b"2",
        nodes_key,
        holders_key,
        node.as_bytes(),
        lease_ms.as_bytes(),
        incarnation.as_bytes(),
    ]
}

/// Waited past the other incarnation's expiry before trying again: Redis's clock and
/// this host's may step apart by a little between two calls.
const HELD_MARGIN: Duration = Duration::from_millis(100);

/// Why the link is down while another incarnation holds the node id.
fn held_reason(node: &str, remaining_ms: i64) -> String {
    format!(
        "another process holds --node-id {node:?} (its lease runs {remaining_ms} ms more): \
         two nodes started with one id, or this one was paused past its lease and the id \
         was taken meanwhile; retrying until that lease runs out"
    )
}

fn queue_eval(cmd: &mut Conn, verb: &[u8], script: &[u8], keys: &[Vec<u8>], args: &[Vec<u8>]) {
    let n = keys.len().to_string();
    let mut a: Vec<&[u8]> = Vec::with_capacity(3 + keys.len() + args.len());
    a.push(verb);
    a.push(script);
    a.push(n.as_bytes());
    a.extend(keys.iter().map(Vec::as_slice));
    a.extend(args.iter().map(Vec::as_slice));
    cmd.queue(&a);
}

/// AUTH, SELECT and CLIENT SETNAME must say OK (a refused name is only logged).
fn check_setup(setup: &[Vec<Vec<u8>>], replies: &[Value], what: &str) -> Result<(), String> {
    for (c, r) in setup.iter().zip(replies) {
        let verb = String::from_utf8_lossy(&c[0]).into_owned();
        if let Value::Error(e) = r {
            if verb == "CLIENT" {
                tracing::warn!("cluster {what}: CLIENT SETNAME refused: {e}");
                continue;
            }
            if verb == "SSUBSCRIBE" {
                return Err(format!("{what}: SSUBSCRIBE refused: {e}"));
            }
            return Err(format!("{what}: {verb} refused: {e}"));
        }
    }
    Ok(())
}

/// Whether the replicas fall short (why) or not (`None`), for `/readyz`; true when
/// that changed.
fn replicas_short(shared: &Shared, short: Option<&str>) -> bool {
    if let Some(why) = short {
        if let Ok(mut r) = shared.replicas_reason.lock() {
            why.clone_into(&mut r);
        }
    }
    let was = shared
        .replicas_short
        .swap(short.is_some(), Ordering::AcqRel);
    if was != short.is_some() {
        shared.replicas_since_ns.store(unix_ns(), Ordering::Relaxed);
    }
    was != short.is_some()
}
