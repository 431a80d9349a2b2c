//! The link thread as the process holds it ([`Node`]: start, health, counters, stop)
//! and what it hands each shard at start ([`Parts`]). The loop itself is [`Link`].

use super::*;

/// What [`Node::start`] hands each shard, built into its [`ShardLink`](crate::ShardLink).
pub(crate) struct Parts {
    pub(crate) shard: usize,
    pub(crate) tx: std::sync::mpsc::SyncSender<Request>,
    pub(crate) waker: Arc<Waker>,
    pub(crate) completions: rtrb::Consumer<Completion>,
    pub(crate) inbound: rtrb::Consumer<InboundItem>,
    /// Bytes of the messages in `inbound` (added by the link, taken off by the shard).
    pub(crate) inbound_bytes: Arc<std::sync::atomic::AtomicUsize>,
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
        if cfg.replicas_min > 0
            && (cfg.wait_timeout.as_millis() == 0 || cfg.wait_timeout * 3 >= cfg.lease * 2)
        {
            // `WAIT n 0` would block the command connection for good; a renewal written
            // behind a WAIT (every third of the lease) must still land within the lease.
            return Err(invalid(format!(
                "cluster: wait_timeout ({:?}) must be at least 1 ms and under two thirds of the lease ({:?}) when replicas_min > 0",
                cfg.wait_timeout, cfg.lease
            )));
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
            let inbound_bytes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            outs.push(ShardOut {
                completions: cp,
                inbound: ip,
                inbound_bytes: inbound_bytes.clone(),
                bell,
                dirty: false,
            });
            parts.push(LinkParts(Parts {
                shard,
                tx: tx.clone(),
                waker: waker.clone(),
                completions: cc,
                inbound: ic,
                inbound_bytes,
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
        let mut token = [0u8; 16];
        getrandom::getrandom(&mut token).map_err(|e| {
            std::io::Error::other(format!("cluster: no random incarnation token: {e}"))
        })?;
        let link = Link {
            channel: channel_of(&cfg.prefix, &cfg.node_id),
            nodes_key: format!("{}nodes", cfg.prefix).into_bytes(),
            holders_key: format!("{}holders", cfg.prefix).into_bytes(),
            incarnation: token.iter().map(|b| format!("{b:02x}")).collect(),
            first_held: None,
            held: None,
            fatal: false,
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
            primary: None,
            sentinel_order: Vec::new(),
            watch: None,
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
        let mut s = self
            .shared
            .stats
            .snapshot(self.shared.up.load(Ordering::Relaxed));
        s.replicas_short = self.shared.replicas_short.load(Ordering::Relaxed);
        s
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
            replicas_short: (up && self.shared.replicas_short.load(Ordering::Acquire)).then(|| {
                // `try_lock`: a shard never waits on the link thread (which holds it
                // only to copy a short text in); busy, the reason is said generically.
                let why = match self.shared.replicas_reason.try_lock() {
                    Ok(r) => r.clone(),
                    Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner().clone(),
                    Err(std::sync::TryLockError::WouldBlock) => {
                        "fewer replicas than required acknowledged the last WAIT".into()
                    }
                };
                (why, self.shared.replicas_since_ns.load(Ordering::Relaxed))
            }),
        }
    }

    /// Why the link stopped for good, if it did: another live process holds this node's
    /// id (found before this link was ever up; see the crate docs, "incarnation").
    /// The process should exit with this message.
    pub fn fatal(&self) -> Option<String> {
        self.shared
            .fatal
            .lock()
            .map(|f| f.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Hands the lease back (`ZREM` of this node from `{prefix}nodes`, while this
    /// incarnation holds it) when connected,
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
