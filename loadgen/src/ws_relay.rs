//! `bench ws-relay`: pairs of peers (same mesh) exchange offer/answer frames through
//! the server at a target total rate. Every frame carries its intended send time (ns
//! since the run's epoch) in the SDP; the receiver records now − that time, so the
//! latency is end to end, and counts from the intended time (coordinated omission
//! corrected: a sender that falls behind schedule sends at once, and its lateness is
//! part of the latency).
//!
//! Sent and received are counted over the same window (messages whose intended time
//! falls in the measured period), so with no loss they agree exactly.
//!
//! Several nodes of a cluster (issue 25): `--target URL` once per node (instead of
//! `--url`). Pair `p`'s offering peer is on node `p mod N`, its answering peer on the
//! next node (a relay across nodes, through Redis), or on the same node with
//! `--same-node`. Each peer's token comes from the node it connects to (the nodes share
//! the keys file and the signaling secret). `--server-pid` once per node sums their CPU;
//! `--redis URL` reads Redis's `INFO commandstats` at the start and end of the measured
//! window: the Redis commands per relayed message.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, Splitable};
use serde_json::{json, Value};

use super::keys::Peer;
use super::net::{Fail, Sources, Target, WsConn};
use super::{Common, Errors};
use wire::ws::client::{encode_pong_masked, encode_text_masked, ClientEvent};
use wire::ws::signaling::{relay_frame, RelayKind};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Peers (an even number: they are paired within their mesh).
    #[arg(long, default_value_t = 100)]
    pub peers: usize,
    /// Messages per second in all (each peer sends rate / peers).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Bytes of padding in each SDP.
    #[arg(long, default_value_t = 200)]
    pub payload: usize,
    /// Loopback source addresses to spread the connections over.
    #[arg(long, default_value_t = 16)]
    pub source_ips: usize,
    /// A node of a cluster (repeat once per node, instead of `--url`): the pairs'
    /// peers are spread over the nodes, each pair's two peers on different nodes
    /// (unless `--same-node`).
    #[arg(long = "target", value_name = "URL", conflicts_with = "url")]
    pub targets: Vec<String>,
    /// With several `--target`s: both peers of a pair on the same node (the pairs still
    /// spread over the nodes): relays that never leave a node, the control for a run
    /// across nodes.
    #[arg(long)]
    pub same_node: bool,
    /// The cluster's Redis (`redis://HOST:PORT`): report the Redis commands run per
    /// relayed message over the measured window (`INFO commandstats`).
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// With `--redis`: first count Redis's commands for this many seconds before any
    /// peer connects (the nodes' lease renewals and probes) and report the window's
    /// counts less that rate too.
    #[arg(long, default_value_t = 0.0)]
    pub redis_idle: f64,
    /// The Redis server's process id: its CPU over the measured window per relayed
    /// message, reported apart from the nodes' (`redis.cpu`).
    #[arg(long, value_name = "PID")]
    pub redis_pid: Option<u32>,
}

/// Pong bytes a peer's reader may leave for its writer; beyond that pings go
/// unanswered (the server then closes an idle connection, which a sending peer never
/// is), rather than letting the queue grow.
const PONG_PENDING_BYTES_MAX: usize = 1024;
/// Peers connecting and registering at once per shard during set-up.
const CONNECT_CONCURRENCY: usize = 64;
/// How long to wait after the last send for messages still in flight.
const DRAIN_MAX: Duration = Duration::from_secs(3);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_now() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

#[derive(Default)]
struct Coord {
    ready: AtomicUsize,
    go: AtomicBool,
    /// Intended time (ns since epoch) of the first message; measuring starts at
    /// `measure_from`, sending ends at `end`.
    start: AtomicU64,
    measure_from: AtomicU64,
    end: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    writers_done: AtomicUsize,
    stop: AtomicBool,
    errors: AtomicU64,
}

struct ShardIn {
    /// The nodes (one without `--target`).
    targets: Vec<Target>,
    /// (global peer index of the offering peer, offering peer and its node, answering
    /// peer and its node)
    pairs: Vec<Pair>,
    sources: Sources,
    interval: Duration,
    peers_total: usize,
    payload: usize,
    token_concurrency: usize,
    coord: Arc<Coord>,
}

#[derive(Clone)]
struct Pair {
    g: usize,
    a: Peer,
    node_a: usize,
    b: Peer,
    node_b: usize,
}

#[derive(Default)]
struct Tally {
    sent: u64,
    received: u64,
    late: u64,
    unsent: u64,
    errors: Errors,
}

struct ShardOut {
    hist: hdrhistogram::Histogram<u64>,
    tally: Tally,
}

async fn wait_flag(f: &AtomicBool) {
    while !f.load(Ordering::Acquire) {
        monoio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn shard(input: ShardIn) -> ShardOut {
    let coord = input.coord.clone();
    let hist = Rc::new(RefCell::new(super::histogram()));
    let tally = Rc::new(RefCell::new(Tally::default()));
    // Open and register every peer of this shard (both ends of each of its pairs).
    let setup = async {
        let mut peers: Vec<(usize, &Peer, &Peer, RelayKind, usize)> = Vec::new();
        for p in &input.pairs {
            peers.push((p.g, &p.a, &p.b, RelayKind::Offer, p.node_a));
            peers.push((p.g + 1, &p.b, &p.a, RelayKind::Answer, p.node_b));
        }
        // Each peer's token from the node it connects to.
        let mut jwts: Vec<String> = vec![String::new(); peers.len()];
        for (n, target) in input.targets.iter().enumerate() {
            let on: Vec<usize> = (0..peers.len()).filter(|&i| peers[i].4 == n).collect();
            if on.is_empty() {
                continue;
            }
            let keys: Vec<String> = on.iter().map(|&i| peers[i].1.key.clone()).collect();
            let tokens = super::tokens::fetch_all(
                target,
                &keys,
                input.token_concurrency,
                &Arc::new(AtomicU64::new(0)),
            )
            .await?;
            for (i, t) in on.into_iter().zip(tokens) {
                jwts[i] = t.jwt;
            }
        }
        // Connected and registered CONNECT_CONCURRENCY at a time: one by one, 10,000
        // peers would take minutes against a server that answers in tens of ms.
        let mut conns = Vec::with_capacity(peers.len());
        for (b, batch) in peers.chunks(CONNECT_CONCURRENCY).enumerate() {
            let handles: Vec<_> = batch
                .iter()
                .enumerate()
                .map(|(j, (g, me, other, kind, node))| {
                    let i = b * CONNECT_CONCURRENCY + j;
                    let (target, source, jwt) = (
                        input.targets[*node].clone(),
                        input.sources.pick(*g),
                        jwts[i].clone(),
                    );
                    let (me, other, kind, g) =
                        (me.peer_id.clone(), other.peer_id.clone(), *kind, *g);
                    monoio::spawn(async move {
                        let mut c = WsConn::open(&target, source, &jwt).await?;
                        c.register(&me).await?;
                        Ok::<_, Fail>((c, me, other, kind, g))
                    })
                })
                .collect();
            for h in handles {
                conns.push(h.await?);
            }
        }
        Ok::<_, Fail>(conns)
    };
    let conns = setup.await;
    coord.ready.fetch_add(1, Ordering::AcqRel);
    let conns = match conns {
        Ok(c) => c,
        Err(e) => {
            coord.errors.fetch_add(1, Ordering::Relaxed);
            tally.borrow_mut().errors.add(&e);
            coord.writers_done.fetch_add(1, Ordering::AcqRel);
            return ShardOut {
                hist: super::histogram(),
                tally: Rc::try_unwrap(tally).ok().expect("unshared").into_inner(),
            };
        }
    };
    wait_flag(&coord.go).await;
    let start = coord.start.load(Ordering::Acquire);
    let measure_from = coord.measure_from.load(Ordering::Acquire);
    let end = coord.end.load(Ordering::Acquire);
    let stop = reactor::LocalEvent::new();
    {
        let (stop, coord) = (stop.clone(), coord.clone());
        monoio::spawn(async move {
            wait_flag(&coord.stop).await;
            stop.set();
        });
    }
    let pad = "x".repeat(input.payload);
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for (conn, me, other, kind, g) in conns {
        let Some((stream, mut decoder, pending, mut rng)) = conn.into_parts() else {
            unreachable!("run() refuses TLS targets")
        };
        let (mut rd, mut wr) = stream.into_split();
        let pongs: Rc<RefCell<Vec<u8>>> = Rc::default();
        // Reader: records every relayed frame's latency.
        {
            let (pongs, hist, tally, coord, stop) = (
                pongs.clone(),
                hist.clone(),
                tally.clone(),
                coord.clone(),
                stop.clone(),
            );
            let mut rng = rng.clone();
            readers.push(monoio::spawn(async move {
                let mut events: Vec<ClientEvent> = pending.into_iter().collect();
                let mut buf = Vec::with_capacity(super::net::READ_CHUNK_BYTES);
                loop {
                    for e in events.drain(..) {
                        match e {
                            ClientEvent::Text(t) => {
                                if let Some(t0) = crate::msg::relay_sent_at(&t) {
                                    if t0 >= measure_from && t0 < end {
                                        let now = nanos_now();
                                        super::record(
                                            &mut hist.borrow_mut(),
                                            Duration::from_nanos(now.saturating_sub(t0)),
                                        );
                                        tally.borrow_mut().received += 1;
                                        coord.received.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                            }
                            ClientEvent::Ping(p) => {
                                let mut q = pongs.borrow_mut();
                                if q.len() + p.len() + 8 <= PONG_PENDING_BYTES_MAX {
                                    encode_pong_masked(&p, rng.mask(), &mut q);
                                }
                            }
                            ClientEvent::Close(code) => {
                                let f = Fail::new(
                                    format!("closed {code}"),
                                    format!("the server closed a relay connection with {code}"),
                                );
                                coord.errors.fetch_add(1, Ordering::Relaxed);
                                tally.borrow_mut().errors.add(&f);
                                return;
                            }
                            _ => {}
                        }
                    }
                    buf.clear();
                    let r = match reactor::timer::select2(rd.read(buf), stop.wait()).await {
                        reactor::timer::Either::Left(r) => r,
                        reactor::timer::Either::Right(()) => return,
                    };
                    let (res, b) = r;
                    buf = b;
                    let fail = match res {
                        Ok(0) => Some(Fail::new("closed by server", "relay connection closed")),
                        Ok(_) => decoder
                            .decode(&buf, |e| events.push(e))
                            .err()
                            .map(|e| Fail::new("protocol", e)),
                        Err(e) => Some(Fail::io("read", &e)),
                    };
                    if let Some(f) = fail {
                        if !stop.is_set() {
                            coord.errors.fetch_add(1, Ordering::Relaxed);
                            tally.borrow_mut().errors.add(&f);
                        }
                        return;
                    }
                }
            }));
        }
        // Writer: one frame per tick of this peer's schedule.
        let (tally, coord, pad) = (tally.clone(), coord.clone(), pad.clone());
        let interval = input.interval;
        let offset = interval
            .mul_f64(g as f64 / input.peers_total as f64)
            .as_nanos() as u64;
        writers.push(monoio::spawn(async move {
            let mut k: u64 = 0;
            let mut out = Vec::with_capacity(256 + pad.len());
            loop {
                let intended = start + offset + k * interval.as_nanos() as u64;
                k += 1;
                if intended >= end {
                    break;
                }
                let now = nanos_now();
                if now >= end {
                    // Behind schedule at the end: the rest is reported as unsent.
                    let from = intended.max(measure_from);
                    tally.borrow_mut().unsent +=
                        (end - from) / (interval.as_nanos() as u64).max(1) + 1;
                    break;
                }
                if intended > now {
                    monoio::time::sleep(Duration::from_nanos(intended - now)).await;
                } else if now - intended > 1_000_000 {
                    tally.borrow_mut().late += 1;
                }
                let payload = format!(r#"{{"sdp":"bench:{intended}:{pad}"}}"#);
                let text = relay_frame(kind, &me, &other, &payload);
                out.clear();
                out.append(&mut pongs.borrow_mut());
                encode_text_masked(&text, rng.mask(), &mut out);
                match super::net::write_all_half(&mut wr, out).await {
                    Ok(b) => out = b,
                    Err(f) => {
                        coord.errors.fetch_add(1, Ordering::Relaxed);
                        tally.borrow_mut().errors.add(&f);
                        return wr;
                    }
                }
                if intended >= measure_from {
                    tally.borrow_mut().sent += 1;
                    coord.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Kept open until the readers are done: dropping a write half shuts the
            // socket's sending side, and the server would close before relaying the
            // messages still in flight to this peer.
            wr
        }));
    }
    let mut halves = Vec::with_capacity(writers.len());
    for w in writers {
        halves.push(w.await);
    }
    coord.writers_done.fetch_add(1, Ordering::AcqRel);
    for r in readers {
        r.await;
    }
    drop(halves);
    let hist = std::mem::replace(&mut *hist.borrow_mut(), super::histogram());
    let tally = std::mem::take(&mut *tally.borrow_mut());
    ShardOut { hist, tally }
}

pub fn run(args: Args) -> Result<(Value, bool), String> {
    if args.targets.len() == 1 {
        return Err("--target names the nodes of a cluster: give it once per node (at least two), or use --url for one server".into());
    }
    if args.same_node && args.targets.is_empty() {
        return Err("--same-node places the peers of a pair on one of several --target nodes; with one --url every pair is on one node already".into());
    }
    let redis = match &args.redis {
        Some(u) => Some(super::redis_stats::Stats::parse(u)?),
        None => None,
    };
    let redis_idle = super::secs("--redis-idle", args.redis_idle)?;
    let redis_cpu = match args.redis_pid {
        Some(pid) => Some(
            super::server_cpu::Sampler::start(pid)
                .map_err(|e| e.replace("--server-pid", "--redis-pid"))?,
        ),
        None => None,
    };
    // The first node is the one `setup` checks; the others are checked here.
    let urls: Vec<String> = if args.targets.is_empty() {
        vec![args.common.url.clone()]
    } else {
        args.targets.clone()
    };
    let mut common = args.common.clone();
    common.url = urls[0].clone();
    let setup = super::setup(&common)?;
    let mut targets = vec![setup.target.clone()];
    for u in &urls[1..] {
        let t = Target::parse(u, common.ca_file.as_deref())?;
        super::preflight(u, &t, &setup.peers[0])?;
        targets.push(t);
    }
    if targets.iter().any(|t| t.tls.is_some()) {
        return Err("ws-relay splits each connection into a reader and a writer: plain ws:// only (http:// URL)".into());
    }
    if args.peers < 2 || args.peers % 2 != 0 {
        return Err("--peers must be an even number of at least 2".into());
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err("--rate must be a positive number of messages per second".into());
    }
    let duration = super::secs("--duration", args.duration)?;
    let warmup = super::secs("--warmup", args.warmup)?;
    if duration.is_zero() {
        return Err("--duration must be positive".into());
    }
    reactor::sys::raise_nofile().map_err(|e| format!("raising RLIMIT_NOFILE: {e}"))?;
    // Pair peers within their mesh (the server relays only inside a mesh).
    let mut by_mesh: std::collections::BTreeMap<Option<String>, Vec<Peer>> = Default::default();
    for p in &setup.peers {
        by_mesh.entry(p.mesh.clone()).or_default().push(p.clone());
    }
    let mut pairs = Vec::new();
    'outer: for group in by_mesh.values() {
        for two in group.chunks_exact(2) {
            if pairs.len() * 2 >= args.peers {
                break 'outer;
            }
            let (p, n) = (pairs.len(), targets.len());
            pairs.push(Pair {
                g: p * 2,
                a: two[0].clone(),
                node_a: p % n,
                b: two[1].clone(),
                node_b: if args.same_node { p % n } else { (p + 1) % n },
            });
        }
    }
    if pairs.len() * 2 < args.peers {
        return Err(format!(
            "--keys has room for {} peers paired within a mesh; --peers is {}: write more \
             with `bench keys --count {}`",
            pairs.len() * 2,
            args.peers,
            args.peers
        ));
    }
    let cores = args.common.cores;
    let interval = Duration::from_secs_f64(args.peers as f64 / args.rate);
    let sources = Sources::for_target(&setup.target, args.source_ips);
    let coord = Arc::new(Coord::default());
    let inputs: Vec<ShardIn> = super::deal(&pairs, cores)
        .into_iter()
        .map(|pairs| ShardIn {
            targets: targets.clone(),
            pairs,
            sources: sources.clone(),
            interval,
            peers_total: args.peers,
            payload: args.payload,
            token_concurrency: args.common.token_concurrency,
            coord: coord.clone(),
        })
        .collect();
    // Redis's counts with no peer connected: the nodes' own background commands.
    let idle = match (&redis, redis_idle.is_zero()) {
        (Some(r), false) => {
            let before = r.read()?;
            let t = Instant::now();
            std::thread::sleep(redis_idle);
            let after = r.read()?;
            Some((
                super::redis_stats::delta(&before, &after),
                t.elapsed().as_secs_f64(),
            ))
        }
        _ => None,
    };
    let _ = epoch();
    // Reads Redis's counts when the measured window opens and once the run has drained:
    // a control thread (blocking reads and sleeps; no shard does either).
    let finished = Arc::new(AtomicBool::new(false));
    let redis_window = redis.clone().map(|r| {
        let (c, finished) = (coord.clone(), finished.clone());
        std::thread::Builder::new()
            .name("redis-stats".into())
            .spawn(move || {
                let wait = |f: &dyn Fn() -> bool| {
                    while !f() {
                        if finished.load(Ordering::Acquire) {
                            return false;
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    true
                };
                if !wait(&|| c.go.load(Ordering::Acquire)) {
                    return Err("the run did not start".to_owned());
                }
                let from = c.measure_from.load(Ordering::Acquire);
                if !wait(&|| nanos_now() >= from) {
                    return Err("the run ended before its window".to_owned());
                }
                let (before, t0) = (r.read()?, Instant::now());
                if !wait(&|| c.stop.load(Ordering::Acquire)) {
                    return Err("the run ended without draining".to_owned());
                }
                let after = r.read()?;
                Ok((
                    super::redis_stats::delta(&before, &after),
                    t0.elapsed().as_secs_f64(),
                ))
            })
            .map_err(|e| format!("starting the Redis reader: {e}"))
    });
    let redis_window = redis_window.transpose()?;
    // Touched only by the progress callback on the control thread (no shard sees it);
    // the Mutex satisfies the callback's Send bound, it is never contended.
    let drained_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let (c, d) = (coord.clone(), drained_at.clone());
    let progress = move || {
        if !c.go.load(Ordering::Acquire) && c.ready.load(Ordering::Acquire) == cores {
            let start = nanos_now() + 20_000_000;
            let from = start + warmup.as_nanos() as u64;
            c.start.store(start, Ordering::Release);
            c.measure_from.store(from, Ordering::Release);
            c.end
                .store(from + duration.as_nanos() as u64, Ordering::Release);
            c.go.store(true, Ordering::Release);
        }
        if c.writers_done.load(Ordering::Acquire) == cores && !c.stop.load(Ordering::Acquire) {
            let mut d = d.lock().expect("not poisoned");
            let since = *d.get_or_insert_with(Instant::now);
            let all_in = c.received.load(Ordering::Relaxed) >= c.sent.load(Ordering::Relaxed);
            if all_in || since.elapsed() >= DRAIN_MAX {
                c.stop.store(true, Ordering::Release);
            }
        }
        format!(
            "ws-relay: sent {}, received {}, errors {}",
            c.sent.load(Ordering::Relaxed),
            c.received.load(Ordering::Relaxed),
            c.errors.load(Ordering::Relaxed)
        )
    };
    let outs = super::run_on_shards(
        &common,
        inputs,
        // A slow server (the reference answers 10,000 registrations in minutes).
        warmup + duration + Duration::from_secs(120 + args.peers as u64 / 15),
        progress,
        shard,
    );
    finished.store(true, Ordering::Release);
    let redis_window = redis_window.map(|h| {
        h.join()
            .unwrap_or_else(|_| Err("the Redis reader panicked".into()))
    });
    let outs = outs?;
    let mut hist = super::histogram();
    let mut t = Tally::default();
    for o in outs {
        hist.add(&o.hist).map_err(|e| e.to_string())?;
        t.sent += o.tally.sent;
        t.received += o.tally.received;
        t.late += o.tally.late;
        t.unsent += o.tally.unsent;
        t.errors.merge(o.tally.errors);
    }
    let mut per_node = vec![0usize; targets.len()];
    for p in &pairs {
        per_node[p.node_a] += 1;
        per_node[p.node_b] += 1;
    }
    let placement = match (targets.len(), args.same_node) {
        (1, _) => "one node",
        (_, true) => "pairs within a node",
        (_, false) => "pairs across nodes",
    };
    let report = json!({
        "scenario": "ws-relay",
        "nodes": urls,
        "placement": placement,
        "peers_per_node": per_node,
        "peers": args.peers,
        "target_rate_msgs": args.rate,
        "warmup_s": warmup.as_secs_f64(),
        "duration_s": duration.as_secs_f64(),
        "payload_bytes": args.payload,
        "messages": {"sent": t.sent, "received": t.received, "lost": t.sent.saturating_sub(t.received)},
        "relayed_per_s": super::round3(t.received as f64 / duration.as_secs_f64()),
        "late_sends": t.late,
        // Due in the window but not sent by its end (the relay fell behind the rate).
        "unsent_behind_schedule": t.unsent,
        "latency_us": super::summary(&hist),
        "errors": t.errors.to_json(),
        "error_details": t.errors.details(),
    });
    let ok = t.sent > 0 && t.errors.total() == 0;
    let ns = |c: &AtomicU64| epoch() + Duration::from_nanos(c.load(Ordering::Acquire));
    let window = coord
        .go
        .load(Ordering::Acquire)
        .then(|| (ns(&coord.measure_from), ns(&coord.end)));
    let mut report = report;
    super::add_server_cpu(&setup, &mut report, window, t.received);
    let mut ok = ok;
    match redis_window {
        Some(Ok((counts, window_s))) => {
            report["redis"] = super::redis_stats::report(
                args.redis.as_deref().unwrap_or_default(),
                &counts,
                window_s,
                t.received,
                idle.as_ref().map(|(c, s)| (c, *s)),
            );
        }
        Some(Err(e)) => {
            report["redis"] = json!({"error": e});
            ok = false;
        }
        None => {}
    }
    if let (Some(s), Some((from, to))) = (&redis_cpu, window) {
        report["redis"]["cpu"] = s.report(from, to, t.received);
    }
    let mut report = super::finish(&setup, &common, report);
    if args.targets.len() > 1 {
        report["target"] = json!(urls);
    }
    Ok((report, ok))
}
