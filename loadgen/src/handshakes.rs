//! `bench tls-handshakes`: full TLS handshakes, as fast as the server takes them. Each
//! connection connects, completes a handshake (no resumption: the client keeps no
//! session), sends one `GET --path` with `connection: close`, reads the answer and
//! closes; then the next. With `--server-pid`, the server's CPU time per handshake and
//! handshakes per second of server CPU (one core busy for a second) are reported.
//!
//! Any server works (nginx serving a static 200, say): no API key, no token.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wire::http::client::{write_request, ResponseParser};

use super::net::{Fail, Stream, Target, READ_CHUNK_BYTES};
use super::{Common, Errors, Live};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Connections in progress at once (spread over the shards).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// The path requested on each connection.
    #[arg(long, default_value = "/healthz")]
    pub path: String,
}

struct ShardIn {
    target: Target,
    path: Rc<str>,
    conns: usize,
    warmup: Duration,
    duration: Duration,
    live: Arc<Live>,
}

#[derive(Default)]
struct Tally {
    handshakes: u64,
    errors: Errors,
    hist: Option<hdrhistogram::Histogram<u64>>,
}

struct ShardOut {
    tally: Tally,
    window: (Instant, Instant),
}

/// One connection: handshake, one request, the answer, close.
async fn once(target: &Target, path: &str) -> Result<(), Fail> {
    let mut s = Stream::open(target, None).await?;
    let mut req = Vec::with_capacity(128);
    write_request(
        "GET",
        path,
        &target.host,
        &[("Connection", "close")],
        None,
        &mut req,
    );
    s.write_all(req).await?;
    let mut parser = ResponseParser::new();
    let mut buf = Vec::with_capacity(READ_CHUNK_BYTES);
    loop {
        if let Some(r) = parser.poll().map_err(|e| Fail::new("protocol", e))? {
            if !(200..300).contains(&r.status) {
                return Err(Fail::new(
                    format!("http {}", r.status),
                    format!("GET {path} answered {}", r.status),
                ));
            }
            return Ok(());
        }
        buf = s.read_some(buf).await?;
        parser.feed(&buf);
    }
}

async fn shard(input: ShardIn) -> ShardOut {
    let start = Instant::now();
    let measure_from = start + input.warmup;
    let end = measure_from + input.duration;
    let tally = Rc::new(RefCell::new(Tally {
        hist: Some(super::histogram()),
        ..Tally::default()
    }));
    let mut tasks = Vec::new();
    for _ in 0..input.conns {
        let (tally, target, path, live) = (
            tally.clone(),
            input.target.clone(),
            input.path.clone(),
            input.live.clone(),
        );
        tasks.push(monoio::spawn(async move {
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let r = once(&target, &path).await;
                let done = Instant::now();
                let measured = t0 >= measure_from && done <= end;
                match r {
                    Ok(()) => {
                        Live::add(&live.ok, 1);
                        if measured {
                            let mut t = tally.borrow_mut();
                            t.handshakes += 1;
                            if let Some(h) = t.hist.as_mut() {
                                super::record(h, done - t0);
                            }
                        }
                    }
                    Err(e) => {
                        Live::add(&live.errors, 1);
                        tally.borrow_mut().errors.add(&e);
                        // Do not spin on a refusing server.
                        monoio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    let tally = Rc::try_unwrap(tally)
        .ok()
        .expect("all tasks done")
        .into_inner();
    ShardOut {
        tally,
        window: (measure_from, end),
    }
}

pub fn run(args: Args) -> Result<(Value, bool), String> {
    let common = &args.common;
    let target = Target::parse(&common.url, common.ca_file.as_deref())?;
    if target.tls.is_none() {
        return Err("tls-handshakes needs an https:// --url (and --ca-file)".into());
    }
    let warmup = super::secs("--warmup", args.warmup)?;
    let duration = super::secs("--duration", args.duration)?;
    if duration.is_zero() {
        return Err("--duration must be positive".into());
    }
    let server_cpu = match common.one_server_pid("tls-handshakes")? {
        Some(pid) => vec![super::server_cpu::Sampler::start(pid)?],
        None => Vec::new(),
    };
    let setup = super::Setup {
        target: target.clone(),
        peers: Vec::new(),
        started: Instant::now(),
        cpu_start: super::cpu_now(),
        server_cpu,
    };
    let cores = common.cores.max(1);
    let concurrency = args.concurrency.max(cores);
    let live = Arc::new(Live::default());
    let inputs: Vec<_> = (0..cores)
        .map(|s| {
            (
                target.clone(),
                args.path.clone(),
                concurrency / cores + usize::from(s < concurrency % cores),
            )
        })
        .collect();
    let l = live.clone();
    let (w, d, lv) = (warmup, duration, live.clone());
    let outs = super::run_on_shards(
        common,
        inputs,
        warmup + duration + Duration::from_secs(60),
        move || {
            format!(
                "tls-handshakes: {} ok, {} errors",
                Live::get(&l.ok),
                Live::get(&l.errors)
            )
        },
        move |(target, path, conns)| {
            shard(ShardIn {
                target,
                path: path.as_str().into(),
                conns,
                warmup: w,
                duration: d,
                live: lv.clone(),
            })
        },
    )?;
    let mut hist = super::histogram();
    let mut errors = Errors::default();
    let mut handshakes = 0;
    let mut window = None;
    for o in outs {
        window = super::union(window, Some(o.window));
        handshakes += o.tally.handshakes;
        errors.merge(o.tally.errors);
        if let Some(h) = &o.tally.hist {
            hist.add(h).map_err(|e| e.to_string())?;
        }
    }
    let mut report = json!({
        "scenario": "tls-handshakes",
        "concurrency": concurrency,
        "warmup_s": warmup.as_secs_f64(),
        "duration_s": duration.as_secs_f64(),
        "path": args.path,
        "handshakes": handshakes,
        "handshakes_per_s": super::round3(handshakes as f64 / duration.as_secs_f64()),
        "connection_us": super::summary(&hist),
        "errors": errors.to_json(),
        "error_details": errors.details(),
    });
    super::add_server_cpu(&setup, &mut report, window, handshakes);
    if let Some(cpu_s) = report["server_cpu"]["cpu_s"].as_f64() {
        if cpu_s > 0.0 {
            // Handshakes per second of one core of server CPU.
            report["handshakes_per_server_cpu_s"] = json!(super::round3(handshakes as f64 / cpu_s));
        }
    }
    Ok((super::finish(&setup, common, report), handshakes > 0))
}
