//! `bench storm`: connect/disconnect churn. `--concurrency` loops each repeat: take a
//! token (fetched again when due), connect, upgrade, register, wait for the peer
//! list, close gracefully. Reports upgrades accepted per second, cycle latency, and
//! errors by kind. Each loop uses its own peers, so no two live connections share an
//! identity (which would make the server replace one with the other).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::keys::Peer;
use super::net::{Fail, Sources, Target, WsConn};
use super::{Common, Errors, Live};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds of churn before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Connect/disconnect loops running at once, in all.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Loopback source addresses to spread the connections over.
    #[arg(long, default_value_t = 64)]
    pub source_ips: usize,
}

/// Pause after a failed cycle, so a refusing server is not hammered in a tight loop.
const BACKOFF_AFTER_ERROR: Duration = Duration::from_millis(10);

struct ShardIn {
    target: Target,
    /// (global index, peer)
    peers: Vec<(usize, Peer)>,
    loops: usize,
    sources: Sources,
    warmup: Duration,
    duration: Duration,
    token_concurrency: usize,
    live: Arc<Live>,
}

#[derive(Default)]
struct Tally {
    upgrades: u64,
    cycles: u64,
    errors: Errors,
    refreshed: u64,
}

struct ShardOut {
    upgrade_hist: hdrhistogram::Histogram<u64>,
    cycle_hist: hdrhistogram::Histogram<u64>,
    tally: Tally,
    fatal: Option<Fail>,
    /// The measured window (after the warm-up).
    window: Option<(Instant, Instant)>,
}

async fn shard(input: ShardIn) -> ShardOut {
    let keys: Vec<String> = input.peers.iter().map(|(_, p)| p.key.clone()).collect();
    let counter = Arc::new(AtomicU64::new(0));
    let tokens =
        super::tokens::fetch_all(&input.target, &keys, input.token_concurrency, &counter).await;
    input
        .live
        .tokens
        .fetch_add(counter.load(Ordering::Relaxed), Ordering::Relaxed);
    let tokens = match tokens {
        Ok(t) => t,
        Err(e) => {
            return ShardOut {
                upgrade_hist: super::histogram(),
                cycle_hist: super::histogram(),
                tally: Tally::default(),
                fatal: Some(e),
                window: None,
            }
        }
    };
    let hists = Rc::new(RefCell::new((super::histogram(), super::histogram())));
    let tally = Rc::new(RefCell::new(Tally::default()));
    let start = Instant::now();
    let measure_from = start + input.warmup;
    let end = measure_from + input.duration;
    let loops = input.loops.clamp(1, input.peers.len());
    let mut tasks = Vec::new();
    for l in 0..loops {
        // Each loop owns its peers and their tokens: no identity is live twice, and no
        // token cache is shared across awaits.
        let mine: Vec<usize> = (l..input.peers.len()).step_by(loops).collect();
        let peers: Vec<(usize, Peer)> = mine.iter().map(|&i| input.peers[i].clone()).collect();
        let mut cache = super::tokens::TokenCache::new(
            input.target.clone(),
            mine.iter().map(|&i| keys[i].clone()).collect(),
            mine.iter().map(|&i| tokens[i].clone()).collect(),
        );
        let (hists, tally, target, sources, live) = (
            hists.clone(),
            tally.clone(),
            input.target.clone(),
            input.sources.clone(),
            input.live.clone(),
        );
        tasks.push(monoio::spawn(async move {
            let mut attempt = 0usize;
            while Instant::now() < end {
                let j = attempt % peers.len();
                attempt += 1;
                let (global, peer) = &peers[j];
                let t0 = Instant::now();
                let measured = t0 >= measure_from;
                let r = async {
                    let token = cache.get(j).await?;
                    let source = sources.pick(global.wrapping_add(attempt));
                    let mut c = WsConn::open(&target, source, &token).await?;
                    let t_up = t0.elapsed();
                    if measured {
                        tally.borrow_mut().upgrades += 1;
                        super::record(&mut hists.borrow_mut().0, t_up);
                    }
                    Live::add(&live.ok, 1);
                    c.register(&peer.peer_id).await?;
                    c.close_gracefully().await
                }
                .await;
                let failed = match r {
                    Ok(()) => {
                        if measured {
                            tally.borrow_mut().cycles += 1;
                            super::record(&mut hists.borrow_mut().1, t0.elapsed());
                        }
                        false
                    }
                    Err(e) => {
                        if measured {
                            tally.borrow_mut().errors.add(&e);
                        }
                        Live::add(&live.errors, 1);
                        true
                    }
                };
                if failed {
                    monoio::time::sleep(BACKOFF_AFTER_ERROR).await;
                }
            }
            cache.refreshed
        }));
    }
    let mut refreshed = 0;
    for t in tasks {
        refreshed += t.await;
    }
    let (upgrade_hist, cycle_hist) = std::mem::replace(
        &mut *hists.borrow_mut(),
        (super::histogram(), super::histogram()),
    );
    let mut tally = std::mem::take(&mut *tally.borrow_mut());
    tally.refreshed = refreshed;
    ShardOut {
        upgrade_hist,
        cycle_hist,
        tally,
        fatal: None,
        window: Some((measure_from, end)),
    }
}

pub fn run(args: Args) -> Result<(Value, bool), String> {
    let setup = super::setup(&args.common)?;
    let duration = super::secs("--duration", args.duration)?;
    let warmup = super::secs("--warmup", args.warmup)?;
    if duration.is_zero() {
        return Err("--duration must be positive".into());
    }
    if args.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    if setup.peers.len() < args.concurrency {
        return Err(format!(
            "--keys has {} peers but --concurrency is {}: each loop needs its own peers; \
             write more with `bench keys --count {}`",
            setup.peers.len(),
            args.concurrency,
            args.concurrency * 4
        ));
    }
    reactor::sys::raise_nofile().map_err(|e| format!("raising RLIMIT_NOFILE: {e}"))?;
    let cores = args.common.cores;
    let sources = Sources::for_target(&setup.target, args.source_ips);
    let live = Arc::new(Live::default());
    let indexed: Vec<(usize, Peer)> = setup.peers.iter().cloned().enumerate().collect();
    let inputs: Vec<ShardIn> = super::deal(&indexed, cores)
        .into_iter()
        .enumerate()
        .map(|(s, peers)| ShardIn {
            target: setup.target.clone(),
            peers,
            loops: args.concurrency / cores + usize::from(s < args.concurrency % cores),
            sources: sources.clone(),
            warmup,
            duration,
            token_concurrency: args.common.token_concurrency,
            live: live.clone(),
        })
        .collect();
    let l = live.clone();
    let outs = super::run_on_shards(
        &args.common,
        inputs,
        warmup + duration + Duration::from_secs(120),
        move || {
            format!(
                "storm: tokens {}, upgrades {}, errors {}",
                Live::get(&l.tokens),
                Live::get(&l.ok),
                Live::get(&l.errors)
            )
        },
        shard,
    )?;
    let (mut up, mut cyc) = (super::histogram(), super::histogram());
    let mut t = Tally::default();
    let mut window = None;
    for o in outs {
        window = super::union(window, o.window);
        if let Some(f) = o.fatal {
            return Err(format!("fetching tokens: {}", f.detail));
        }
        up.add(&o.upgrade_hist).map_err(|e| e.to_string())?;
        cyc.add(&o.cycle_hist).map_err(|e| e.to_string())?;
        t.upgrades += o.tally.upgrades;
        t.cycles += o.tally.cycles;
        t.refreshed += o.tally.refreshed;
        t.errors.merge(o.tally.errors);
    }
    let secs = duration.as_secs_f64();
    let report = json!({
        "scenario": "storm",
        "concurrency": args.concurrency,
        "warmup_s": warmup.as_secs_f64(),
        "duration_s": secs,
        "upgrades_accepted": t.upgrades,
        "upgrades_per_s": super::round3(t.upgrades as f64 / secs),
        "cycles_completed": t.cycles,
        "cycles_per_s": super::round3(t.cycles as f64 / secs),
        "upgrade_latency_us": super::summary(&up),
        "cycle_latency_us": super::summary(&cyc),
        "tokens_fetched": Live::get(&live.tokens),
        "tokens_refreshed": t.refreshed,
        "errors": t.errors.to_json(),
        "error_details": t.errors.details(),
        "source_ips": sources.len(),
    });
    let ok = t.cycles > 0;
    let mut report = report;
    super::add_server_cpu(&setup, &mut report, window, t.cycles);
    Ok((super::finish(&setup, &args.common, report), ok))
}
