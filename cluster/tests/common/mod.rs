//! What the cluster tests share: a real redis-server on a free port, a TCP proxy that can
//! cut or blackhole connections, and shards (monoio runtimes on their own threads)
//! driving `ShardLink`s.
#![allow(dead_code)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatixia_cluster::{
    parse_url, ClusterConfig, Doorbell, Inbound, LinkParts, Node, Script, ShardLink,
};

/// Whether `program` is here; a missing one fails under `CI=true` (never a silent pass
/// there) and is a printed skip elsewhere.
fn installed_or_skip(test: &str, program: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: {program} is not installed (scripts/test.sh installs it)");
        }
        eprintln!("SKIP {test}: {program} is not installed");
    }
    found
}

/// Whether redis-server is here (see [`installed_or_skip`]).
pub fn redis_or_skip(test: &str) -> bool {
    installed_or_skip(test, "redis-server")
}

static NEXT: AtomicU16 = AtomicU16::new(0);

fn candidate_port() -> u16 {
    let n = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
    let seed = std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(n.wrapping_mul(7_919));
    20_000 + (seed % 30_000) as u16
}

/// Whether redis-server and redis-sentinel are here (see [`installed_or_skip`]).
pub fn sentinel_or_skip(test: &str) -> bool {
    redis_or_skip(test) && installed_or_skip(test, "redis-sentinel")
}

/// A redis-server on 127.0.0.1, killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
    extra: Vec<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// A replica of the Redis on `primary` (`--replicaof`), synced when this returns.
    pub fn replica_of(primary: u16) -> Redis {
        let r = Redis::start_with(&["--replicaof", "127.0.0.1", &primary.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !r
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
        {
            assert!(Instant::now() < deadline, "replica not in sync in 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    /// Starts with `extra` arguments.
    pub fn start_with(extra: &[&str]) -> Redis {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        for _ in 0..20 {
            let port = candidate_port();
            if let Some(r) = Redis::on(port, &extra) {
                return r;
            }
        }
        panic!("could not start redis-server on any of 20 ports");
    }

    /// Starts on `port`; `None` when it cannot bind it.
    fn on(port: u16, extra: &[String]) -> Option<Redis> {
        let log = std::env::temp_dir().join(format!(
            "chx-cluster-redis-{}-{port}.log",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&log);
        // A replica writes the primary's snapshot to its `dir` at a full sync: a temp
        // file of its own, not the test's working directory.
        let rdb = format!("chx-cluster-redis-{}-{port}.rdb", std::process::id());
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .args(["--logfile", log.to_str().unwrap()])
            .args(["--dir", std::env::temp_dir().to_str().unwrap()])
            .args(["--dbfilename", &rdb])
            // A replica's full sync starts at once (the default waits 5 s for others).
            .args(["--repl-diskless-sync-delay", "0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return None;
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Ready to accept connections") {
                return Some(Redis {
                    port,
                    child: Some(child),
                    log,
                    extra: extra.to_vec(),
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-server on {port} not ready in 10 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL) and waits for it to go.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = Redis::on(self.port, &self.extra) {
                *self = r;
                return;
            }
            assert!(Instant::now() < deadline, "cannot restart on {}", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// Runs a command with redis-cli; its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A stopped one must go too.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
        let _ = std::fs::remove_file(&self.log);
        let rdb = format!("chx-cluster-redis-{}-{}.rdb", std::process::id(), self.port);
        let _ = std::fs::remove_file(std::env::temp_dir().join(rdb));
    }
}

/// A redis-sentinel on 127.0.0.1 monitoring the primary on `primary` as `m` (quorum 1,
/// down after 1 s, failover timeout 3 s), with its own config file (Sentinel rewrites
/// it); killed and its files removed on drop.
pub struct Sentinel {
    pub port: u16,
    child: Option<Child>,
    conf: PathBuf,
    log: PathBuf,
}

/// The name the test Sentinels monitor the primary under.
pub const MASTER: &str = "m";

impl Sentinel {
    pub fn start(primary: u16) -> Sentinel {
        for _ in 0..20 {
            if let Some(s) = Sentinel::on(candidate_port(), primary) {
                return s;
            }
        }
        panic!("could not start redis-sentinel on any of 20 ports");
    }

    fn on(port: u16, primary: u16) -> Option<Sentinel> {
        let dir = std::env::temp_dir();
        let pid = std::process::id();
        let conf = dir.join(format!("chx-cluster-sentinel-{pid}-{port}.conf"));
        let log = dir.join(format!("chx-cluster-sentinel-{pid}-{port}.log"));
        let _ = std::fs::remove_file(&log);
        let text = format!(
            "port {port}\nbind 127.0.0.1\nlogfile {}\ndir {}\n\
             sentinel monitor {MASTER} 127.0.0.1 {primary} 1\n\
             sentinel down-after-milliseconds {MASTER} 1000\n\
             sentinel failover-timeout {MASTER} 3000\n",
            log.display(),
            dir.display()
        );
        std::fs::write(&conf, text).unwrap();
        let mut child = Command::new("redis-sentinel")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-sentinel");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                // Most likely the port was taken: try another.
                let _ = std::fs::remove_file(&conf);
                let _ = std::fs::remove_file(&log);
                return None;
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("+monitor master") {
                return Some(Sentinel {
                    port,
                    child: Some(child),
                    conf,
                    log,
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(&conf);
                let _ = std::fs::remove_file(&log);
                panic!("redis-sentinel on {port} not ready in 10 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs a command with redis-cli against this Sentinel; its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Waits until this Sentinel lists a replica of the primary that it could promote
    /// (flags exactly `slave`, its link to the primary up).
    pub fn wait_for_replica(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let out = self.cli(&["SENTINEL", "replicas", MASTER]);
            let lines: Vec<&str> = out.lines().collect();
            let field = |k: &str| {
                lines
                    .windows(2)
                    .find(|w| w[0] == k)
                    .map(|w| w[1].to_string())
            };
            if field("flags").as_deref() == Some("slave")
                && field("master-link-status").as_deref() == Some("ok")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinel lists no healthy replica in {within:?}: {out}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The primary's port as this Sentinel names it now.
    pub fn primary_port(&self) -> Option<u16> {
        let out = self.cli(&["SENTINEL", "get-master-addr-by-name", MASTER]);
        out.lines().nth(1).and_then(|p| p.trim().parse().ok())
    }

    /// The Sentinel's log (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.conf);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A TCP proxy to a Redis: it can cut every connection and refuse new ones, or silently
/// drop what Redis sends on the subscriptions open now (no FIN: a blackhole).
pub struct Proxy {
    pub port: u16,
    state: Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    cut: AtomicBool,
    conns: Mutex<Vec<Arc<Pair>>>,
}

struct Pair {
    client: TcpStream,
    server: TcpStream,
    is_sub: AtomicBool,
    blackholed: AtomicBool,
    /// What the client wrote first (its setup: `CLIENT SETNAME` names it).
    first: Mutex<Vec<u8>>,
    /// Bytes Redis sent the client.
    down: std::sync::atomic::AtomicU64,
}

impl Proxy {
    pub fn start(to: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let state = Arc::new(ProxyState::default());
        let st = state.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(client) = c else { continue };
                if st.cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                let pair = Arc::new(Pair {
                    client,
                    server,
                    is_sub: AtomicBool::new(false),
                    blackholed: AtomicBool::new(false),
                    first: Mutex::new(Vec::new()),
                    down: Default::default(),
                });
                st.conns.lock().unwrap().push(pair.clone());
                let p = pair.clone();
                std::thread::spawn(move || pump(&p, true));
                std::thread::spawn(move || pump(&pair, false));
            }
        });
        Proxy { port, state }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Closes every connection and refuses new ones (they are accepted and closed).
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        for p in self.state.conns.lock().unwrap().drain(..) {
            let _ = p.client.shutdown(Shutdown::Both);
            let _ = p.server.shutdown(Shutdown::Both);
        }
    }

    /// From now on, what Redis sends on the subscriptions open now is dropped.
    pub fn blackhole_subscriptions(&self) -> usize {
        self.blackhole_subscriptions_of(b"")
    }

    /// Bytes Redis sent on the connections whose setup held `needle` (a client name).
    pub fn bytes_sent_to(&self, needle: &[u8]) -> u64 {
        self.state
            .conns
            .lock()
            .unwrap()
            .iter()
            .filter(|p| {
                p.first
                    .lock()
                    .unwrap()
                    .windows(needle.len())
                    .any(|w| w == needle)
            })
            .map(|p| p.down.load(Ordering::SeqCst))
            .sum()
    }

    /// The same for the subscriptions whose setup held `needle` (a client name).
    pub fn blackhole_subscriptions_of(&self, needle: &[u8]) -> usize {
        let mut n = 0;
        for p in self.state.conns.lock().unwrap().iter() {
            let named = needle.is_empty()
                || p.first
                    .lock()
                    .unwrap()
                    .windows(needle.len())
                    .any(|w| w == needle);
            if p.is_sub.load(Ordering::SeqCst) && named {
                p.blackholed.store(true, Ordering::SeqCst);
                n += 1;
            }
        }
        n
    }
}

fn pump(p: &Pair, upstream: bool) {
    let (mut from, mut to) = if upstream {
        (&p.client, &p.server)
    } else {
        (&p.server, &p.client)
    };
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if upstream && buf[..n].windows(10).any(|w| w == b"SSUBSCRIBE") {
            p.is_sub.store(true, Ordering::SeqCst);
        }
        if upstream {
            let mut first = p.first.lock().unwrap();
            if first.is_empty() {
                first.extend_from_slice(&buf[..n]);
            }
        }
        if !upstream && p.blackholed.load(Ordering::SeqCst) {
            continue;
        }
        if !upstream {
            p.down.fetch_add(n as u64, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// The doorbell of a test shard.
pub struct Bell(reactor::Bell);

impl Doorbell for Bell {
    fn ring(&self) {
        self.0.ring();
    }
}

type Job = Box<dyn FnOnce(ShardLink) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A shard: a thread with a monoio runtime whose doorbell task takes the link's
/// completions and forwards its inbound events to `events`.
pub struct Shard {
    jobs: mpsc::Sender<Job>,
    events: mpsc::Receiver<Inbound>,
    ev_tx: mpsc::Sender<Inbound>,
    paused: Arc<AtomicBool>,
}

/// A route for tests: the first byte of the key, modulo 2.
pub fn route2(key: &[u8]) -> usize {
    key.first().map_or(0, |b| usize::from(*b % 2))
}

pub fn config(url: &str, node: &str) -> ClusterConfig {
    let mut c = ClusterConfig::new(parse_url(url).unwrap(), node);
    c.prefix = format!("t{}:", std::process::id());
    c.lease = Duration::from_millis(900);
    c.probe_interval = Duration::from_millis(200);
    c.command_timeout = Duration::from_millis(700);
    c.connect_timeout = Duration::from_millis(500);
    c
}

/// Starts a node with `shards` shards.
pub fn start_node(
    cfg: ClusterConfig,
    scripts: Vec<Script>,
    shards: usize,
    route: fn(&[u8]) -> usize,
) -> (Node, Vec<Shard>) {
    let mut bells: Vec<Arc<dyn Doorbell>> = Vec::new();
    let mut handles = Vec::new();
    let mut parts_tx = Vec::new();
    for i in 0..shards {
        let (bell_tx, bell_rx) = mpsc::channel::<Arc<dyn Doorbell>>();
        let (ptx, prx) = mpsc::channel::<LinkParts>();
        let (jobs, jobs_rx) = mpsc::channel::<Job>();
        let (ev_tx, events) = mpsc::channel();
        let paused = Arc::new(AtomicBool::new(false));
        let p = paused.clone();
        let evt = ev_tx.clone();
        std::thread::Builder::new()
            .name(format!("shard-{i}"))
            .spawn(move || shard_thread(bell_tx, prx, jobs_rx, evt, p))
            .unwrap();
        bells.push(bell_rx.recv().unwrap());
        parts_tx.push(ptx);
        handles.push(Shard {
            jobs,
            events,
            ev_tx,
            paused,
        });
    }
    let (node, parts) = Node::start(cfg, scripts, bells, std::sync::Arc::new(route)).unwrap();
    for (tx, p) in parts_tx.into_iter().zip(parts) {
        tx.send(p).unwrap();
    }
    (node, handles)
}

fn shard_thread(
    bell_tx: mpsc::Sender<Arc<dyn Doorbell>>,
    parts: mpsc::Receiver<LinkParts>,
    jobs: mpsc::Receiver<Job>,
    events: mpsc::Sender<Inbound>,
    paused: Arc<AtomicBool>,
) {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (bell, mut waiter) = reactor::Bell::new(reactor::IoDriver::Epoll).unwrap();
        bell_tx.send(Arc::new(Bell(bell))).unwrap();
        let Ok(parts) = parts.recv() else { return };
        let link = ShardLink::new(parts);
        let l = link.clone();
        let ev = events.clone();
        monoio::spawn(async move {
            while waiter.wait().await.is_ok() {
                if !paused.load(Ordering::SeqCst) {
                    l.on_doorbell(|e| {
                        let _ = ev.send(e);
                    });
                }
            }
        });
        loop {
            match jobs.try_recv() {
                Ok(job) => {
                    monoio::spawn(job(link.clone()));
                }
                Err(mpsc::TryRecvError::Empty) => {
                    monoio::time::sleep(Duration::from_millis(1)).await
                }
                Err(mpsc::TryRecvError::Disconnected) => break,
            }
        }
    });
}

impl Shard {
    /// Runs `f` on the shard and waits (at most 20 s) for its result.
    pub fn run<T, F, Fut>(&self, f: F) -> T
    where
        F: FnOnce(ShardLink) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        self.spawn(f)
            .recv_timeout(Duration::from_secs(20))
            .expect("the shard's job did not finish in 20 s")
    }

    /// Starts `f` on the shard; its result comes on the returned channel.
    pub fn spawn<T, F, Fut>(&self, f: F) -> mpsc::Receiver<T>
    where
        F: FnOnce(ShardLink) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(Box::new(move |link| {
                Box::pin(async move {
                    let _ = tx.send(f(link).await);
                })
            }))
            .unwrap();
        rx
    }

    /// The next inbound event `want` accepts within `within`, skipping others.
    pub fn wait_for(&self, within: Duration, mut want: impl FnMut(&Inbound) -> bool) -> Inbound {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) if want(&e) => return e,
                Ok(e) => seen.push(format!("{e:?}")),
                Err(_) => panic!("no such event within {within:?}; saw {seen:?}"),
            }
        }
    }

    /// Events taken so far, without waiting.
    pub fn drain(&self) -> Vec<Inbound> {
        self.events.try_iter().collect()
    }

    /// Stops taking the link's events (the doorbell still rings).
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Takes events again, at once.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel();
        let ev = self.ev_tx.clone();
        self.jobs
            .send(Box::new(move |link| {
                Box::pin(async move {
                    let _ = tx.send(link.on_doorbell(|e| {
                        let _ = ev.send(e);
                    }));
                })
            }))
            .unwrap();
        let _ = rx.recv_timeout(Duration::from_secs(5));
    }
}

pub fn is_up(e: &Inbound) -> bool {
    matches!(e, Inbound::Up { .. })
}

pub fn is_down(e: &Inbound) -> bool {
    matches!(e, Inbound::Down { .. })
}

pub fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}
