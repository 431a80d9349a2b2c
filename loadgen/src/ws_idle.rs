//! `bench ws-idle`: opens N authenticated, registered WebSocket connections and holds
//! them. Reports the connect rate and, with `--server-pid`, the server's RSS before and
//! after and per connection.
//!
//! Phases, driven from the main thread through atomics: every shard fetches its tokens;
//! the server's RSS is read; shards connect (bounded concurrency, sources spread over
//! 127.x.y.z); the RSS is read again once all are up (after a short settle); the
//! connections are held for `--hold` seconds, answering pings; then dropped.
//! The first failure stops the connect phase and is reported with the limit behind it.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::keys::Peer;
use super::net::{Fail, Sources, Target, WsConn};
use super::{Common, Errors};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Connections to open (one peer identity each: the keys file needs at least N).
    #[arg(long)]
    pub connections: usize,
    /// Seconds to hold the connections once all are open.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    /// Connection attempts in flight at once, in all.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Loopback source addresses to spread connections over (127.1.0.1 …); each gives
    /// ~28,000 ports towards one server address.
    #[arg(long, default_value_t = 64)]
    pub source_ips: usize,
    /// Read only this many bytes of each peer's `peer_list` and never read again (as a
    /// client that reads the start of the list and then sits idle: issue 26; plain
    /// `ws://` only); `0` (default): read and count the whole list, answer pings.
    #[arg(long, default_value_t = 0)]
    pub read_peer_list_bytes: usize,
}

/// Cross-thread phase control (main thread ↔ shards).
#[derive(Default)]
struct Coord {
    tokens: AtomicU64,
    tokens_done: AtomicUsize,
    go: AtomicBool,
    established: AtomicU64,
    failed: AtomicU64,
    connect_done: AtomicUsize,
    stop: AtomicBool,
    dropped: AtomicU64,
}

struct ShardIn {
    target: Target,
    peers: Vec<(usize, Peer)>,
    sources: Sources,
    concurrency: usize,
    token_concurrency: usize,
    coord: Arc<Coord>,
    /// `Args::read_peer_list_bytes`.
    partial: usize,
}

struct ShardOut {
    established: u64,
    errors: Errors,
    stopped_by: Option<Fail>,
    hist: hdrhistogram::Histogram<u64>,
    connect_start: Option<Instant>,
    connect_end: Option<Instant>,
    dropped: Errors,
    peers_listed: u64,
}

/// Polls an atomic flag every few milliseconds (a shard must not block its thread).
async fn wait_flag(f: &AtomicBool) {
    while !f.load(Ordering::Acquire) {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn shard(input: ShardIn) -> ShardOut {
    let coord = input.coord.clone();
    let partial = input.partial;
    let keys: Vec<String> = input.peers.iter().map(|(_, p)| p.key.clone()).collect();
    let counter = Arc::new(AtomicU64::new(0));
    let fetched =
        super::tokens::fetch_all(&input.target, &keys, input.token_concurrency, &counter).await;
    coord
        .tokens
        .fetch_add(counter.load(Ordering::Relaxed), Ordering::Relaxed);
    coord.tokens_done.fetch_add(1, Ordering::AcqRel);
    let mut out = ShardOut {
        established: 0,
        errors: Errors::default(),
        stopped_by: None,
        hist: super::histogram(),
        connect_start: None,
        connect_end: None,
        dropped: Errors::default(),
        peers_listed: 0,
    };
    let tokens = match fetched {
        Ok(t) => t,
        Err(e) => {
            out.errors.add(&e);
            out.stopped_by = Some(e);
            coord.connect_done.fetch_add(1, Ordering::AcqRel);
            return out;
        }
    };
    wait_flag(&coord.go).await;

    // Set once the main thread says stop: every held connection waits on it.
    let stop = reactor::LocalEvent::new();
    {
        let (stop, coord) = (stop.clone(), coord.clone());
        monoio::spawn(async move {
            wait_flag(&coord.stop).await;
            stop.set();
        });
    }
    let next = Rc::new(Cell::new(0usize));
    let halt: Rc<RefCell<Option<Fail>>> = Rc::new(RefCell::new(None));
    let state = Rc::new(RefCell::new((
        super::histogram(),
        Errors::default(),
        0u64,
        Errors::default(),
        0u64,
    )));
    let peers: Rc<[(usize, Peer)]> = input.peers.into();
    let tokens: Rc<[super::tokens::Token]> = tokens.into();
    let mut workers = Vec::new();
    let holders = Rc::new(RefCell::new(Vec::new()));
    out.connect_start = Some(Instant::now());
    for _ in 0..input.concurrency.max(1) {
        let (next, halt, state, peers, tokens, coord, target, sources, stop, holders) = (
            next.clone(),
            halt.clone(),
            state.clone(),
            peers.clone(),
            tokens.clone(),
            coord.clone(),
            input.target.clone(),
            input.sources.clone(),
            stop.clone(),
            holders.clone(),
        );
        workers.push(monoio::spawn(async move {
            while halt.borrow().is_none() {
                let i = next.get();
                if i >= peers.len() {
                    break;
                }
                next.set(i + 1);
                let (global, peer) = &peers[i];
                let t0 = Instant::now();
                let r = async {
                    let mut c =
                        WsConn::open(&target, sources.pick(*global), &tokens[i].jwt).await?;
                    let listed = if partial > 0 {
                        c.register_partial(&peer.peer_id, partial).await?;
                        0
                    } else {
                        c.register(&peer.peer_id).await?
                    };
                    Ok::<_, Fail>((c, listed))
                }
                .await;
                match r {
                    Ok((conn, listed)) => {
                        {
                            let mut st = state.borrow_mut();
                            super::record(&mut st.0, t0.elapsed());
                            st.2 += 1;
                            st.4 += listed as u64;
                        }
                        coord.established.fetch_add(1, Ordering::Relaxed);
                        let (state, stop, coord) = (state.clone(), stop.clone(), coord.clone());
                        holders.borrow_mut().push(monoio::spawn(hold(
                            conn,
                            stop,
                            state,
                            coord,
                            partial > 0,
                        )));
                    }
                    Err(e) => {
                        coord.failed.fetch_add(1, Ordering::Relaxed);
                        state.borrow_mut().1.add(&e);
                        let mut h = halt.borrow_mut();
                        if h.is_none() {
                            *h = Some(e);
                        }
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await;
    }
    out.connect_end = Some(Instant::now());
    coord.connect_done.fetch_add(1, Ordering::AcqRel);
    let held = std::mem::take(&mut *holders.borrow_mut());
    for h in held {
        h.await;
    }
    let st = std::mem::replace(
        &mut *state.borrow_mut(),
        (
            super::histogram(),
            Errors::default(),
            0,
            Errors::default(),
            0,
        ),
    );
    out.hist = st.0;
    out.errors = st.1;
    out.established = st.2;
    out.dropped = st.3;
    out.peers_listed = st.4;
    out.stopped_by = halt.borrow_mut().take();
    out
}

type HoldState = Rc<RefCell<(hdrhistogram::Histogram<u64>, Errors, u64, Errors, u64)>>;

/// Keeps one connection open until `stop`, answering pings; a drop is counted. `silent`:
/// reads nothing (the rest of a partly read peer list stays unread), answers nothing.
async fn hold(
    mut conn: WsConn,
    stop: reactor::LocalEvent,
    state: HoldState,
    coord: Arc<Coord>,
    silent: bool,
) {
    if silent {
        stop.wait().await;
        drop(conn);
        return;
    }
    loop {
        match reactor::timer::select2(conn.next_event(), stop.wait()).await {
            reactor::timer::Either::Left(Ok(_)) => continue,
            reactor::timer::Either::Left(Err(e)) => {
                coord.dropped.fetch_add(1, Ordering::Relaxed);
                state.borrow_mut().3.add(&e);
                return;
            }
            reactor::timer::Either::Right(()) => return,
        }
    }
}

/// VmRSS of a process in KiB. Called on the control thread only (before the shards
/// start, and from the progress callback), never on a shard: reading procfs there is
/// fine.
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let s = std::fs::read_to_string(&path).map_err(|e| format!("--server-pid: {path}: {e}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("--server-pid: no VmRSS in {path}"))
}

pub fn run(args: Args) -> Result<(Value, bool), String> {
    let server_pid = args.common.one_server_pid("ws-idle")?;
    let setup = super::setup(&args.common)?;
    let n = args.connections;
    if n == 0 {
        return Err("--connections must be at least 1".into());
    }
    if n > setup.peers.len() {
        return Err(format!(
            "--keys has {} peers but --connections is {n}: each connection needs its own \
             identity (a second connection of a peer replaces the first); write more with \
             `bench keys --count {n}`",
            setup.peers.len()
        ));
    }
    let hold = super::secs("--hold", args.hold)?;
    if let Some(pid) = server_pid {
        rss_kib(pid)?;
    }
    let nofile = reactor::sys::raise_nofile().map_err(|e| format!("raising RLIMIT_NOFILE: {e}"))?;
    let cores = args.common.cores;
    let sources = Sources::for_target(&setup.target, args.source_ips);
    let coord = Arc::new(Coord::default());
    let indexed: Vec<(usize, Peer)> = setup.peers[..n].iter().cloned().enumerate().collect();
    let inputs: Vec<ShardIn> = super::deal(&indexed, cores)
        .into_iter()
        .enumerate()
        .map(|(s, peers)| ShardIn {
            target: setup.target.clone(),
            peers,
            sources: sources.clone(),
            concurrency: args.connect_concurrency / cores
                + usize::from(s < args.connect_concurrency % cores),
            token_concurrency: args.common.token_concurrency,
            coord: coord.clone(),
            partial: args.read_peer_list_bytes,
        })
        .collect();

    // The phase machine runs in the progress callback (main thread, every 250 ms).
    #[derive(Default)]
    struct Phases {
        rss_before: Option<u64>,
        rss_after: Option<u64>,
        rss_end: Option<u64>,
        all_up_at: Option<Instant>,
        hold_until: Option<Instant>,
        token_s: Option<f64>,
    }
    // Control-thread state of the progress callback; no shard touches it (the Mutex
    // satisfies the callback's Send bound and is never contended).
    let phases = Arc::new(Mutex::new(Phases::default()));
    let (c, p, pid) = (coord.clone(), phases.clone(), server_pid);
    let t_start = Instant::now();
    let progress = move || {
        let mut ph = p.lock().expect("not poisoned");
        let rss = || pid.and_then(|pid| rss_kib(pid).ok());
        if !c.go.load(Ordering::Acquire) && c.tokens_done.load(Ordering::Acquire) == cores {
            ph.token_s = Some(t_start.elapsed().as_secs_f64());
            ph.rss_before = rss();
            c.go.store(true, Ordering::Release);
        }
        if c.go.load(Ordering::Acquire) && c.connect_done.load(Ordering::Acquire) == cores {
            let now = Instant::now();
            let up = *ph.all_up_at.get_or_insert(now);
            // Let the server settle (allocator, deferred frees) before reading its RSS.
            if ph.hold_until.is_none() && now >= up + Duration::from_secs(1) {
                ph.rss_after = rss();
                ph.hold_until = Some(up + hold.max(Duration::from_secs(1)));
            }
            if ph.hold_until.is_some_and(|h| now >= h) && !c.stop.load(Ordering::Acquire) {
                ph.rss_end = rss();
                c.stop.store(true, Ordering::Release);
            }
        }
        format!(
            "ws-idle: tokens {}, open {}/{n}, failed {}, dropped {}",
            c.tokens.load(Ordering::Relaxed),
            c.established.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
            c.dropped.load(Ordering::Relaxed)
        )
    };
    let outs = super::run_on_shards(
        &args.common,
        inputs,
        // A slow server (the reference answers 10,000 registrations in minutes).
        hold + Duration::from_secs(120 + n as u64 / 15),
        progress,
        shard,
    )?;
    let mut hist = super::histogram();
    let mut errors = Errors::default();
    let mut dropped = Errors::default();
    let (mut established, mut listed) = (0, 0);
    let mut stopped_by: Option<Fail> = None;
    let (mut c0, mut c1): (Option<Instant>, Option<Instant>) = (None, None);
    for o in outs {
        hist.add(&o.hist).map_err(|e| e.to_string())?;
        errors.merge(o.errors);
        dropped.merge(o.dropped);
        established += o.established;
        listed += o.peers_listed;
        if stopped_by.is_none() {
            stopped_by = o.stopped_by;
        }
        c0 = match (c0, o.connect_start) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        c1 = match (c1, o.connect_end) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    let connect_s = match (c0, c1) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => 0.0,
    };
    let ph = phases.lock().expect("not poisoned");
    let rss = server_pid.map(|pid| {
        let per = match (ph.rss_before, ph.rss_after) {
            (Some(b), Some(a)) if established > 0 => Some(super::round3(
                a.saturating_sub(b) as f64 / established as f64,
            )),
            _ => None,
        };
        json!({
            "pid": pid,
            "before_kib": ph.rss_before,
            "after_kib": ph.rss_after,
            "end_of_hold_kib": ph.rss_end,
            "per_connection_kib": per,
        })
    });
    let reached = established as usize == n;
    let stopped = stopped_by.as_ref().map(|f| {
        json!({
            "kind": f.kind,
            "detail": f.detail,
            "limit": f.limit_hint(),
        })
    });
    if let Some(f) = &stopped_by {
        eprintln!(
            "ws-idle: stopped at {established} of {n} connections by {}: {}{}",
            f.kind,
            f.detail,
            f.limit_hint()
                .map(|h| format!(" — limit: {h}"))
                .unwrap_or_default()
        );
    }
    let report = json!({
        "scenario": "ws-idle",
        "requested": n,
        "established": established,
        "reached": reached,
        "stopped_by": stopped,
        "token_fetch_s": ph.token_s.map(super::round3),
        "tokens_fetched": coord.tokens.load(Ordering::Relaxed),
        "connect_s": super::round3(connect_s),
        "connect_rate_per_s": super::round3(established as f64 / connect_s.max(1e-9)),
        "connect_latency_us": super::summary(&hist),
        "hold_s": hold.as_secs_f64(),
        "dropped_during_hold": dropped.total(),
        "dropped_by_kind": dropped.to_json(),
        "peers_listed_total": listed,
        "server_rss": rss,
        "errors": errors.to_json(),
        "loadgen_nofile_limit": nofile.0,
        "source_ips": sources.len(),
    });
    let ok = reached && dropped.total() == 0;
    let mut report = report;
    // The connect-and-register phase: CPU per connection established.
    super::add_server_cpu(&setup, &mut report, c0.zip(c1), established);
    Ok((super::finish(&setup, &args.common, report), ok))
}
