//! `bench ws-relay`: pairs of peers (same mesh) exchange offer/answer frames through
//! the server at a target total rate. Every frame carries its intended send time (ns
//! since the run's epoch) in the SDP; the receiver records now − that time, so the
//! latency is end to end, and counts from the intended time (coordinated omission
//! corrected: a sender that falls behind schedule sends at once, and its lateness is
//! part of the latency).
//!
//! Sent and received are counted over the same window (messages whose intended time
//! falls in the measured period), so with no loss they agree exactly.

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
    target: Target,
    /// (global peer index, peer, partner, kind it sends)
    pairs: Vec<(usize, Peer, Peer)>,
    sources: Sources,
    interval: Duration,
    peers_total: usize,
    payload: usize,
    token_concurrency: usize,
    coord: Arc<Coord>,
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
        let mut peers: Vec<(usize, &Peer, &Peer, RelayKind)> = Vec::new();
        for (g, a, b) in &input.pairs {
            peers.push((*g, a, b, RelayKind::Offer));
            peers.push((*g + 1, b, a, RelayKind::Answer));
        }
        let keys: Vec<String> = peers.iter().map(|p| p.1.key.clone()).collect();
        let tokens = super::tokens::fetch_all(
            &input.target,
            &keys,
            input.token_concurrency,
            &Arc::new(AtomicU64::new(0)),
        )
        .await?;
        // Connected and registered CONNECT_CONCURRENCY at a time: one by one, 10,000
        // peers would take minutes against a server that answers in tens of ms.
        let mut conns = Vec::with_capacity(peers.len());
        for (b, batch) in peers.chunks(CONNECT_CONCURRENCY).enumerate() {
            let handles: Vec<_> = batch
                .iter()
                .enumerate()
                .map(|(j, (g, me, other, kind))| {
                    let i = b * CONNECT_CONCURRENCY + j;
                    let (target, source, jwt) = (
                        input.target.clone(),
                        input.sources.pick(*g),
                        tokens[i].jwt.clone(),
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
    let setup = super::setup(&args.common)?;
    if setup.target.tls.is_some() {
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
            pairs.push((pairs.len() * 2, two[0].clone(), two[1].clone()));
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
            target: setup.target.clone(),
            pairs,
            sources: sources.clone(),
            interval,
            peers_total: args.peers,
            payload: args.payload,
            token_concurrency: args.common.token_concurrency,
            coord: coord.clone(),
        })
        .collect();
    let _ = epoch();
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
        &args.common,
        inputs,
        // A slow server (the reference answers 10,000 registrations in minutes).
        warmup + duration + Duration::from_secs(120 + args.peers as u64 / 15),
        progress,
        shard,
    )?;
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
    let report = json!({
        "scenario": "ws-relay",
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
    Ok((super::finish(&setup, &args.common, report), ok))
}
