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
use crate::lease::{parse_lease_reply, Backoff, Members, Probe, LEASE_SCRIPT, PROBE_MISSED_AFTER};
use crate::shard::channel_of;
use crate::{
    ClusterConfig, CmdError, Doorbell, Health, Inbound, LinkParts, Route, Script, Stats, Value,
};

const WAKER: Token = Token(0);
const CMD: Token = Token(1);
const SUB: Token = Token(2);

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

/// What [`Node::start`] hands each shard, built into its [`ShardLink`](crate::ShardLink).
pub(crate) struct Parts {
    pub(crate) shard: usize,
    pub(crate) tx: std::sync::mpsc::SyncSender<Request>,
    pub(crate) waker: Arc<Waker>,
    pub(crate) completions: rtrb::Consumer<Completion>,
    pub(crate) inbound: rtrb::Consumer<InboundItem>,
    pub(crate) inflight_max: usize,
    pub(crate) shared: Arc<Shared>,
    pub(crate) scripts: Arc<[&'static str]>,
    pub(crate) node_id: String,
    pub(crate) prefix: String,
}

/// The link thread, held by the process (Send + Sync).
pub struct Node {
    shared: Arc<Shared>,
    waker: Arc<Waker>,
    stop_within_ms: Arc<AtomicU64>,
    done: Mutex<Option<Receiver<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("health", &self.health())
            .finish()
    }
}

impl Node {
    /// Starts the link thread and returns at once: the link connects in the background
    /// (shards learn Up/Down as [`Inbound`]). `bells[i]` wakes shard i; `route(key)` is
    /// the shard an inbound message with that route key goes to.
    pub fn start(
        cfg: ClusterConfig,
        scripts: Vec<Script>,
        bells: Vec<Arc<dyn Doorbell>>,
        route: Route,
    ) -> std::io::Result<(Node, Vec<LinkParts>)> {
        let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
        if bells.is_empty() {
            return Err(invalid("cluster: no shard bells".into()));
        }
        if cfg.inflight_max == 0 || cfg.inbound_max == 0 {
            return Err(invalid(
                "cluster: inflight_max and inbound_max must be at least 1".into(),
            ));
        }
        if cfg.lease.as_millis() < 3 || cfg.probe_interval.is_zero() {
            return Err(invalid(
                "cluster: the lease and the probe interval must be positive".into(),
            ));
        }
        for (i, s) in scripts.iter().enumerate() {
            if scripts[..i].iter().any(|o| o.name == s.name) {
                return Err(invalid(format!("cluster: two scripts named {:?}", s.name)));
            }
        }
        for (name, _, _) in cfg.on_connect.iter().chain(&cfg.on_stop) {
            if !scripts.iter().any(|s| s.name == *name) {
                return Err(invalid(format!("cluster: no script named {name:?}")));
            }
        }
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = sync_channel(REQUEST_QUEUE_MAX);
        let shared = Arc::new(Shared::default());
        *shared.reason.lock().unwrap_or_else(|e| e.into_inner()) = "not connected yet".into();
        shared.since_ns.store(unix_ns(), Ordering::Relaxed);
        let names: Arc<[&'static str]> = scripts.iter().map(|s| s.name).collect();
        let mut outs = Vec::with_capacity(bells.len());
        let mut parts = Vec::with_capacity(bells.len());
        for (shard, bell) in bells.into_iter().enumerate() {
            let (cp, cc) = rtrb::RingBuffer::new(cfg.inflight_max);
            let (ip, ic) = rtrb::RingBuffer::new(cfg.inbound_max + CONTROL_RESERVE);
            outs.push(ShardOut {
                completions: cp,
                inbound: ip,
                bell,
                dirty: false,
            });
            parts.push(LinkParts(Parts {
                shard,
                tx: tx.clone(),
                waker: waker.clone(),
                completions: cc,
                inbound: ic,
                inflight_max: cfg.inflight_max,
                shared: shared.clone(),
                scripts: names.clone(),
                node_id: cfg.node_id.clone(),
                prefix: cfg.prefix.clone(),
            }));
        }
        drop(tx);
        let stop_within_ms = Arc::new(AtomicU64::new(0));
        let (done_tx, done_rx) = sync_channel(1);
        let link = Link {
            channel: channel_of(&cfg.prefix, &cfg.node_id),
            nodes_key: format!("{}nodes", cfg.prefix).into_bytes(),
            probe: Probe::new(unix_ns() ^ u64::from(std::process::id()).rotate_left(32)),
            cfg,
            scripts,
            shas: Vec::new(),
            shared: shared.clone(),
            rx,
            poll,
            shards: outs,
            route,
            up: None,
            retry_at: Instant::now(),
            attempts: 0,
            backoff: Backoff::new(),
            members: Members::default(),
            generation: 0,
            reported_down: false,
            stop_within_ms: stop_within_ms.clone(),
            leaving: None,
        };
        let thread = std::thread::Builder::new()
            .name("chx-cluster".into())
            .spawn(move || {
                link.run();
                let _ = done_tx.send(());
            })?;
        Ok((
            Node {
                shared,
                waker,
                stop_within_ms,
                done: Mutex::new(Some(done_rx)),
                thread: Mutex::new(Some(thread)),
            },
            parts,
        ))
    }

    /// A snapshot of the link's counters.
    pub fn stats(&self) -> Stats {
        self.shared
            .stats
            .snapshot(self.shared.up.load(Ordering::Relaxed))
    }

    /// Whether the link is up, since when, why not, and its generation.
    pub fn health(&self) -> Health {
        let up = self.shared.up.load(Ordering::Acquire);
        Health {
            up,
            since_ns: self.shared.since_ns.load(Ordering::Relaxed),
            reason: (!up).then(|| {
                self.shared
                    .reason
                    .lock()
                    .map(|r| r.clone())
                    .unwrap_or_else(|e| e.into_inner().clone())
            }),
            generation: self.shared.generation.load(Ordering::Relaxed),
        }
    }

    /// Hands the lease back (`ZREM` of this node from `{prefix}nodes`) when connected,
    /// then stops the link thread; waits at most `within`. Commands still waiting fail
    /// with [`CmdError::Closed`]; later submissions are refused
    /// ([`Refused::Closed`](crate::Refused::Closed)).
    pub fn stop(&self, within: Duration) {
        let ms = u64::try_from(within.as_millis()).unwrap_or(u64::MAX).max(1);
        self.stop_within_ms.store(ms, Ordering::SeqCst);
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(done) = done else { return };
        if done.recv_timeout(within).is_ok() {
            if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Without `stop`, the thread still ends (handing the lease back within a second).
        if !self.shared.stopping.load(Ordering::SeqCst) {
            self.stop_within_ms.store(1000, Ordering::SeqCst);
            self.shared.stopping.store(true, Ordering::SeqCst);
            let _ = self.waker.wake();
        }
    }
}

struct ShardOut {
    completions: rtrb::Producer<Completion>,
    inbound: rtrb::Producer<InboundItem>,
    bell: Arc<dyn Doorbell>,
    /// Something was pushed since the last ring.
    dirty: bool,
}

/// A command written and not yet answered, in the order written.
struct Pending {
    origin: Origin,
    /// When it was written (the command timeout runs from here).
    sent: Instant,
}

enum Origin {
    Shard {
        shard: usize,
        key: usize,
        discard: bool,
        at: Instant,
        /// An `EVALSHA` to retry once as `EVAL` on `NOSCRIPT`.
        retry: Option<Box<EvalRetry>>,
    },
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
}

impl Link {
    fn run(mut self) {
        let mut events = Events::with_capacity(64);
        loop {
            let now = Instant::now();
            if self.shared.stopping.load(Ordering::SeqCst) && self.leaving.is_none() {
                let ms = self.stop_within_ms.load(Ordering::SeqCst).max(1);
                // Leave a tenth of `within` for the thread's own exit.
                self.leaving = Some(now + Duration::from_millis(ms - ms / 10));
                // What the shards submitted before the stop goes first, then the
                // node's stop scripts, then the lease.
                self.drain_requests();
                if let Some(up) = &mut self.up {
                    for (name, keys, args) in &self.cfg.on_stop {
                        let Some(s) = self.scripts.iter().find(|s| s.name == *name) else {
                            continue;
                        };
                        queue_eval(&mut up.cmd, b"EVAL", s.source.as_bytes(), keys, args);
                        up.pending.push_back(Pending {
                            origin: Origin::StopScript,
                            sent: now,
                        });
                    }
                }
                match &mut self.up {
                    Some(up) => {
                        up.cmd.queue(&[
                            b"ZREM".as_slice(),
                            &self.nodes_key,
                            self.cfg.node_id.as_bytes(),
                        ]);
                        up.pending.push_back(Pending {
                            origin: Origin::Leave,
                            sent: now,
                        });
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
                    _ => {}
                }
            }
            self.shared.wake_pending.store(false, Ordering::SeqCst);
            self.drain_requests();
        }
        // Completions pushed so far are in the rings before `exited` is seen.
        self.shared.up.store(false, Ordering::SeqCst);
        self.shared.exited.store(true, Ordering::SeqCst);
        if let Ok(mut r) = self.shared.reason.lock() {
            *r = "the cluster link has stopped".into();
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
                    at(p.sent + self.cfg.command_timeout);
                }
            }
        }
        d
    }

    fn timers(&mut self, now: Instant) {
        let Some(up) = &mut self.up else {
            if now >= self.retry_at && self.leaving.is_none() {
                self.connect();
            }
            return;
        };
        if let Some(p) = up.pending.front() {
            if now >= p.sent + self.cfg.command_timeout {
                let msg = format!(
                    "no reply from Redis within command_timeout ({:?})",
                    self.cfg.command_timeout
                );
                return self.fail(msg);
            }
        }
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
                    &self.cfg.node_id,
                    &lease_ms,
                ));
                up.pending.push_back(Pending {
                    origin: Origin::Lease,
                    sent: now,
                });
            }
        }
        if now >= up.probe_due {
            up.probe_due = now + self.cfg.probe_interval;
            let mut message = vec![0u8, 0u8];
            message.extend_from_slice(&self.probe.send(now));
            up.cmd
                .queue(&[b"SPUBLISH".as_slice(), &self.channel, &message]);
            up.pending.push_back(Pending {
                origin: Origin::Probe,
                sent: now,
            });
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
                self.backoff.reset();
                self.probe.reset();
                self.members.reset();
                self.reported_down = false;
                self.shared
                    .generation
                    .store(self.generation, Ordering::Relaxed);
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
                        let mut message = vec![0u8, 0u8];
                        message.extend_from_slice(HELLO_MARK);
                        up.cmd.queue(&[
                            b"SPUBLISH".as_slice(),
                            &channel_of(&self.cfg.prefix, node),
                            &message,
                        ]);
                        up.pending.push_back(Pending {
                            origin: Origin::Hello,
                            sent: now,
                        });
                    }
                }
                self.on_members(live, gone);
                // Replies already buffered from the setup (a message published at once).
                self.read_sub();
            }
            Err(e) => self.fail(e),
        }
    }

    fn open_both(&mut self) -> Result<(Up, Vec<String>, Vec<String>), String> {
        let cfg = &self.cfg;
        let node = &cfg.node_id;
        let mut auth: Vec<Vec<Vec<u8>>> = Vec::new();
        if let Some(p) = &cfg.url.password {
            let mut c = vec![b"AUTH".to_vec()];
            if let Some(u) = &cfg.url.user {
                c.push(u.clone().into_bytes());
            }
            c.push(p.clone().into_bytes());
            auth.push(c);
        }
        // The subscription.
        let mut setup = auth.clone();
        setup.push(args(&["CLIENT", "SETNAME", &format!("chx-{node}-sub")]));
        setup.push(vec![b"SSUBSCRIBE".to_vec(), self.channel.clone()]);
        let (sub, replies) = open(&cfg.url, cfg.connect_timeout, cfg.command_timeout, &setup)
            .map_err(|e| format!("subscription: {e}"))?;
        check_setup(&setup, &replies, "subscription")?;
        match replies.last() {
            Some(Value::Array(a)) if a.first().and_then(Value::as_bytes) == Some(b"ssubscribe") => {
            }
            other => return Err(format!("subscription: SSUBSCRIBE answered {other:?}")),
        }
        // The commands.
        let mut setup = auth;
        if cfg.url.db != 0 {
            setup.push(args(&["SELECT", &cfg.url.db.to_string()]));
        }
        setup.push(args(&["CLIENT", "SETNAME", &format!("chx-{node}-cmd")]));
        let scripts_at = setup.len();
        for s in &self.scripts {
            setup.push(args(&["SCRIPT", "LOAD", s.source]));
        }
        let connect_at = setup.len();
        for (name, keys, a) in &cfg.on_connect {
            let Some(s) = self.scripts.iter().find(|s| s.name == *name) else {
                continue;
            };
            let mut c = vec![
                b"EVAL".to_vec(),
                s.source.as_bytes().to_vec(),
                keys.len().to_string().into_bytes(),
            ];
            c.extend(keys.iter().cloned());
            c.extend(a.iter().cloned());
            setup.push(c);
        }
        let lease_ms = cfg.lease.as_millis().to_string();
        setup.push(
            lease_command(&self.nodes_key, node, &lease_ms)
                .iter()
                .map(|a| a.to_vec())
                .collect(),
        );
        let (cmd, replies) = open(&cfg.url, cfg.connect_timeout, cfg.command_timeout, &setup)
            .map_err(|e| format!("commands: {e}"))?;
        check_setup(&setup[..scripts_at], &replies[..scripts_at], "commands")?;
        for ((name, _, _), r) in cfg.on_connect.iter().zip(&replies[connect_at..]) {
            if let Value::Error(e) = r {
                return Err(format!("connect script {name:?} failed: {e}"));
            }
        }
        let mut shas = Vec::with_capacity(self.scripts.len());
        for (s, r) in self.scripts.iter().zip(&replies[scripts_at..connect_at]) {
            match r.as_bytes() {
                Some(sha) if matches!(r, Value::Bulk(_)) => shas.push(sha.to_vec()),
                _ => return Err(format!("SCRIPT LOAD of {:?} answered {r:?}", s.name)),
            }
        }
        let (live, gone, _) = parse_lease_reply(&replies[replies.len() - 1])?;
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
        match req.what {
            What::Command(a) => up.cmd.queue(&a),
            What::Publish { channel, message } => {
                self.shared.stats.publishes.fetch_add(1, Ordering::Relaxed);
                up.cmd.queue(&[b"SPUBLISH".as_slice(), &channel, &message]);
            }
            What::Eval { script, keys, args } => {
                let sha = self.shas.get(script).map(Vec::as_slice).unwrap_or(b"");
                queue_eval(&mut up.cmd, b"EVALSHA", sha, &keys, &args);
                retry = Some(Box::new((script, keys, args)));
            }
        }
        up.pending.push_back(Pending {
            origin: Origin::Shard {
                shard: req.shard,
                key: req.key,
                discard: req.discard,
                at: req.at,
                retry,
            },
            sent: Instant::now(),
        });
    }

    fn read_cmd(&mut self) {
        let Some(mut up) = self.up.take() else { return };
        let mut replies = Vec::new();
        let r = up.cmd.read(|v| {
            replies.push(v);
            Ok(())
        });
        self.up = Some(up);
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
            } => {
                if let (Some(retry), Some(e)) = (retry, v.as_error()) {
                    if e.starts_with("NOSCRIPT") {
                        let (script, keys, args) = *retry;
                        let source = self.scripts[script].source.as_bytes();
                        queue_eval(&mut up.cmd, b"EVAL", source, &keys, &args);
                        up.pending.push_back(Pending {
                            origin: Origin::Shard {
                                shard,
                                key,
                                discard,
                                at,
                                retry: None,
                            },
                            sent: Instant::now(),
                        });
                        return;
                    }
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
            Origin::Lease => {
                up.lease_inflight = false;
                match parse_lease_reply(&v) {
                    Ok((_, _, true)) => {
                        // Paused past the lease (a stopped process, a slow host): the
                        // other nodes may have removed what this node held. A reconnect
                        // runs the connect scripts and has the shards assert it again.
                        self.fail("this node's lease had lapsed; re-asserting".into());
                    }
                    Ok((live, gone, false)) => {
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
        let mut collect = |v: Value| -> Result<(), String> {
            match v {
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
        self.up = Some(up);
        for m in messages {
            self.message(m);
        }
        if let Err(e) = r {
            self.fail(e);
        }
    }

    fn message(&mut self, payload: Vec<u8>) {
        let stats = &self.shared.stats;
        let key_len = match payload.get(..2) {
            Some(&[a, b]) => usize::from(u16::from_be_bytes([a, b])),
            _ => usize::MAX,
        };
        let Some(key) = payload.get(2..2usize.saturating_add(key_len)) else {
            stats.inbound_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("cluster: a message shorter than its framing");
            return;
        };
        let body = &payload[2 + key_len..];
        if key.is_empty() {
            if body == HELLO_MARK {
                // A node joined: renew now, which reports the new members.
                if let Some(up) = &mut self.up {
                    up.lease_due = Instant::now();
                }
            } else if !self.probe.seen(body) {
                tracing::debug!("cluster: a message without a route key");
            }
            return;
        }
        let shard = (self.route)(key);
        let Some(out) = self.shards.get_mut(shard) else {
            stats.inbound_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(shard, "cluster: route() named a shard that does not exist");
            return;
        };
        if out.inbound.slots() <= CONTROL_RESERVE {
            stats.inbound_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let m = Inbound::Message {
            route_key: key.to_vec(),
            body: body.to_vec(),
        };
        if out.inbound.push(m).is_ok() {
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

/// The body of the hello a node publishes to the others when it connects (route key
/// empty, like the probes).
const HELLO_MARK: &[u8] = b"chx-hello";

fn args(a: &[&str]) -> Vec<Vec<u8>> {
    a.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn lease_command<'a>(nodes_key: &'a [u8], node: &'a str, lease_ms: &'a str) -> [&'a [u8]; 6] {
    [
        b"EVAL",
        LEASE_SCRIPT.as_bytes(),
        b"1",
        nodes_key,
        node.as_bytes(),
        lease_ms.as_bytes(),
    ]
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
