//! `chatixia-core bench`: the load generator. It speaks only the public wire protocol
//! (PROTOCOL.md), so it can be pointed at any build by `--url`, and it runs on our own
//! reactor (`--cores` shards) so it is not the bottleneck; it reports its own CPU use.
//!
//! Each scenario splits its work over the shards; each shard returns its counts and an
//! HdrHistogram, merged here. A progress line on stderr shows live counters.

pub mod compare;
pub mod handshakes;
pub mod http;
pub mod keys;
pub mod msg;
pub mod net;
pub mod redis_stats;
pub mod server_cpu;
pub mod sidecar;
pub mod storm;
pub mod tokens;
pub mod turn;
pub mod ws_idle;
pub mod ws_relay;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use net::{Fail, Target};

/// `chatixia-core bench <scenario>`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Scenario {
    /// Write an api_keys.json for N peers (loadable by chatixia-core and the reference).
    Keys {
        /// Number of peers.
        #[arg(long)]
        count: usize,
        /// Spread the peers over this many meshes (`mesh-0` …).
        #[arg(long, default_value_t = 1)]
        meshes: usize,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// HTTP mix (heartbeat, register, list agents, topology) at a fixed concurrency or,
    /// with --rate, at a fixed request rate (open loop, coordinated omission corrected).
    Http(http::Args),
    /// Hold N authenticated, registered WebSocket connections.
    WsIdle(ws_idle::Args),
    /// Pairs of peers exchange offer/answer frames at a target rate.
    WsRelay(ws_relay::Args),
    /// Connect/register/disconnect churn.
    Storm(storm::Args),
    /// Full TLS handshakes (one request each) against an https:// URL; with
    /// --server-pid, the server's CPU per handshake.
    TlsHandshakes(handshakes::Args),
    /// Two builds side by side: every scenario, alternating for N rounds; a table of
    /// medians and ratios, and report.json + report.html in --out.
    Compare(compare::Args),
    /// Two running sidecars, driven over their IPC sockets: A sends N messages to B over
    /// the DataChannel (msg/s, MB/s, order, each sidecar's CPU per message and RSS).
    Sidecar(sidecar::Args),
    /// A TURN server's relaying: N allocations echo small datagrams through it, closed
    /// loop (relayed datagrams/s, loss, allocations/s, the server's CPU per datagram and
    /// RSS per allocation). Any server with TURN REST credentials: this one, coturn.
    Turn(turn::Args),
}

/// Options every networked scenario takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// The server's base URL (`http://` or `https://`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// For an `https://` URL: PEM file of the CA to trust (the load generator trusts
    /// nothing else).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// The api_keys.json the server loads (written by `bench keys`).
    #[arg(long, default_value = "api_keys.json")]
    pub keys: PathBuf,
    /// Shards of the load generator itself.
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Token requests in flight at once per shard.
    #[arg(long, default_value_t = 32)]
    pub token_concurrency: usize,
    /// Do not pin the load generator's shards to cores (pin it with taskset instead).
    #[arg(long)]
    pub no_pin: bool,
    /// The server's process id (on this machine): report its CPU time over the measured
    /// window per operation, from /proc/PID/stat (and, for ws-idle, its RSS). Repeatable
    /// for the scenarios on `setup` (http, storm, ws-relay): the CPU of several processes
    /// (the nodes of a cluster) summed, each also shown.
    #[arg(long)]
    pub server_pid: Vec<u32>,
}

impl Common {
    /// The one `--server-pid` of a scenario that reads a single process.
    pub fn one_server_pid(&self, scenario: &str) -> Result<Option<u32>, String> {
        match self.server_pid.as_slice() {
            [] => Ok(None),
            [pid] => Ok(Some(*pid)),
            more => Err(format!(
                "{scenario} reads one server process; --server-pid was given {} times",
                more.len()
            )),
        }
    }
}

/// Runs a bench command; prints the report; the exit code says whether it succeeded.
pub fn main(args: BenchArgs) -> ExitCode {
    let (json_out, result) = match args.scenario {
        Scenario::Keys { count, meshes, out } => (
            out.is_none(),
            keys::run(count, meshes, out.as_deref()).map(|v| (v, true)),
        ),
        Scenario::Http(a) => (a.common.json, http::run(a)),
        Scenario::WsIdle(a) => (a.common.json, ws_idle::run(a)),
        Scenario::WsRelay(a) => (a.common.json, ws_relay::run(a)),
        Scenario::Storm(a) => (a.common.json, storm::run(a)),
        Scenario::TlsHandshakes(a) => (a.common.json, handshakes::run(a)),
        Scenario::Compare(a) => {
            let argv: Vec<String> = std::env::args().collect();
            let json_out = a.json;
            let out = a.out.clone();
            return match compare::run(a, &argv) {
                Ok((report, ok)) => {
                    if json_out {
                        println!("{report}");
                    } else {
                        print!("{}", compare::report::table(&report));
                        println!(
                            "report: {} and {}",
                            out.join("report.json").display(),
                            out.join("report.html").display()
                        );
                    }
                    if ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(3)
                    }
                }
                Err(e) => {
                    eprintln!("chatixia-core bench compare: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Scenario::Sidecar(a) => (a.json, sidecar::run(a)),
        Scenario::Turn(a) => (a.json, turn::run(a)),
    };
    match result {
        Ok((report, ok)) => {
            if json_out {
                // `bench keys` without --out printed the file itself on stdout.
                if report["scenario"] != "keys" {
                    println!("{report}");
                }
            } else {
                print_table(&report);
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Err(e) => {
            eprintln!("chatixia-core bench: {e}");
            ExitCode::from(1)
        }
    }
}

/// The human table: one row per (flattened) field.
fn print_table(report: &Value) {
    fn flatten(prefix: &str, v: &Value, rows: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let name = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&name, v, rows);
                }
            }
            Value::Null => {}
            Value::String(s) => rows.push((prefix.to_owned(), s.clone())),
            Value::Number(n) => rows.push((
                prefix.to_owned(),
                match n.as_f64() {
                    Some(f) if n.is_f64() => format!("{f:.2}"),
                    _ => n.to_string(),
                },
            )),
            other => rows.push((prefix.to_owned(), other.to_string())),
        }
    }
    let mut rows = Vec::new();
    flatten("", report, &mut rows);
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!("{:<w$}  value", "metric");
    println!("{:-<w$}  {:-<12}", "", "");
    for (k, v) in rows {
        println!("{k:<w$}  {v}");
    }
}

/// Everything a networked scenario starts from: the target, the peers, and checks.
pub struct Setup {
    pub target: Target,
    pub peers: Vec<keys::Peer>,
    pub started: Instant,
    pub cpu_start: Duration,
    /// Samples each `--server-pid`'s CPU time.
    pub server_cpu: Vec<server_cpu::Sampler>,
}

/// Parses the URL, reads the keys, raises the open-file limit, and checks that the
/// target answers and accepts the first key, so an unreachable or refusing target
/// gives one clear message instead of thousands of failures.
pub fn setup(common: &Common) -> Result<Setup, String> {
    let target = Target::parse(&common.url, common.ca_file.as_deref())?;
    let peers = keys::load(&common.keys)?;
    if common.cores == 0 {
        return Err("--cores must be at least 1".into());
    }
    preflight(&common.url, &target, &peers[0])?;
    let server_cpu = common
        .server_pid
        .iter()
        .map(|pid| server_cpu::Sampler::start(*pid))
        .collect::<Result<_, _>>()?;
    Ok(Setup {
        target,
        peers,
        started: Instant::now(),
        cpu_start: cpu_now(),
        server_cpu,
    })
}

pub(crate) fn cpu_now() -> Duration {
    reactor::sys::cpu_time()
        .map(|(u, s)| u + s)
        .unwrap_or_default()
}

pub(crate) fn preflight(url: &str, target: &Target, peer: &keys::Peer) -> Result<(), String> {
    let s = std::net::TcpStream::connect_timeout(&target.addr, Duration::from_secs(3)).map_err(
        |e| {
            format!(
                "cannot reach {url} ({}): {e}; is the server running?",
                target.addr
            )
        },
    )?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    // Over TLS for an https target (blocking rustls over the same socket).
    let mut tls_stream;
    let mut plain_stream;
    let s: &mut dyn ReadWrite = match &target.tls {
        Some(t) => {
            let conn = rustls::ClientConnection::new(t.config.clone(), t.name.clone())
                .map_err(|e| format!("{url}: {e}"))?;
            tls_stream = rustls::StreamOwned::new(conn, s);
            &mut tls_stream
        }
        None => {
            plain_stream = s;
            &mut plain_stream
        }
    };
    let mut req = Vec::new();
    wire::http::client::write_request(
        "POST",
        "/api/token",
        &target.host,
        &[("X-API-Key", &peer.key)],
        None,
        &mut req,
    );
    s.write_all(&req)
        .map_err(|e| format!("cannot talk to {url}: {e}"))?;
    let mut parser = wire::http::client::ResponseParser::new();
    let mut buf = [0u8; 4096];
    let resp = loop {
        if let Some(r) = parser
            .poll()
            .map_err(|e| format!("{url} does not speak HTTP/1.1: {e}"))?
        {
            break r;
        }
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("{url} did not answer POST /api/token: {e}"))?;
        if n == 0 {
            return Err(format!("{url} closed the connection without answering"));
        }
        parser.feed(&buf[..n]);
    };
    match resp.status {
        200 => Ok(()),
        401 => Err(format!(
            "{url} refused the API key of peer {} (401): start the server with \
             API_KEYS_FILE pointing at the --keys file",
            peer.peer_id
        )),
        s => Err(format!("{url} answered POST /api/token with {s}")),
    }
}

/// A blocking byte stream (plain or TLS) for the preflight request.
trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// Live counters a scenario shares with the progress line.
#[derive(Default)]
pub struct Live {
    pub tokens: AtomicU64,
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    pub other: AtomicU64,
}

impl Live {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Runs `job` on each of `cores` shards (job `i` gets `inputs[i]`), showing
/// `progress()` on stderr, and returns the shards' results in shard order. `limit`
/// bounds the whole run.
pub fn run_on_shards<I, R, F, Fut>(
    common: &Common,
    inputs: Vec<I>,
    limit: Duration,
    progress: impl Fn() -> String,
    job: F,
) -> Result<Vec<R>, String>
where
    I: Send + 'static,
    R: Send + 'static,
    F: Fn(I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + 'static,
{
    let n = inputs.len();
    let reactor = reactor::Reactor::builder()
        .cores(n)
        .pin(!common.no_pin)
        .build()
        .map_err(|e| e.to_string())?;
    let (tx, rx) = std::sync::mpsc::channel::<(usize, R)>();
    let per_shard: Vec<_> = inputs
        .into_iter()
        .enumerate()
        .map(|(i, x)| (i, x, tx.clone()))
        .collect();
    drop(tx);
    let job = Arc::new(job);
    let running = reactor
        .start(per_shard, move |_shard: reactor::Shard<()>, (i, x, tx)| {
            let fut = job(x);
            async move {
                let r = fut.await;
                let _ = tx.send((i, r));
            }
        })
        .map_err(|e| e.to_string())?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
    let deadline = Instant::now() + limit;
    let mut results: Vec<Option<R>> = (0..n).map(|_| None).collect();
    let mut got = 0;
    let mut failure = None;
    while got < n {
        match rx.recv_timeout(Duration::from_millis(250)) {
            Ok((i, r)) => {
                results[i] = Some(r);
                got += 1;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                failure = Some("a load-generator shard stopped without a result".to_owned());
                break;
            }
        }
        bar.set_message(progress());
        bar.tick();
        if Instant::now() > deadline {
            failure = Some(format!("the run did not finish within {limit:?}"));
            break;
        }
        if let Some(i) = running.failed_shard() {
            failure = Some(format!("load-generator shard {i} failed"));
            break;
        }
    }
    bar.finish_and_clear();
    let _ = running.shutdown(Duration::from_secs(2));
    if let Some(f) = failure {
        return Err(f);
    }
    Ok(results
        .into_iter()
        .map(|r| r.expect("all received"))
        .collect())
}

/// A latency histogram in microseconds (1 µs to 10 min, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// Records `d` (at least 1 µs: a latency is never zero).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

/// Percentiles of a microsecond histogram.
pub fn summary(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": h.len(),
        "min": h.min(),
        "mean": (h.mean() * 10.0).round() / 10.0,
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
    })
}

/// Failures counted by kind, with the first detail of each kind.
#[derive(Debug, Default)]
pub struct Errors {
    pub by_kind: BTreeMap<String, (u64, String)>,
}

impl Errors {
    pub fn add(&mut self, f: &Fail) {
        let e = self
            .by_kind
            .entry(f.kind.clone())
            .or_insert((0, f.detail.clone()));
        e.0 += 1;
    }

    pub fn merge(&mut self, other: Errors) {
        for (k, (n, d)) in other.by_kind {
            self.by_kind.entry(k).or_insert((0, d)).0 += n;
        }
    }

    pub fn total(&self) -> u64 {
        self.by_kind.values().map(|(n, _)| n).sum()
    }

    pub fn to_json(&self) -> Value {
        Value::Object(
            self.by_kind
                .iter()
                .map(|(k, (n, _))| (k.clone(), json!(n)))
                .collect(),
        )
    }

    /// One line per kind: `kind ×n: detail`.
    pub fn details(&self) -> Value {
        Value::Object(
            self.by_kind
                .iter()
                .map(|(k, (_, d))| (k.clone(), json!(d)))
                .collect(),
        )
    }
}

/// Adds the server's CPU use over the measured `window` per operation (`ops` done in
/// it) to `report` as `server_cpu`, when `--server-pid` was given; with several, their
/// sum (see [`server_cpu::sum`]).
pub fn add_server_cpu(
    setup: &Setup,
    report: &mut Value,
    window: Option<(Instant, Instant)>,
    ops: u64,
) {
    let Some((from, to)) = window else { return };
    match setup.server_cpu.as_slice() {
        [] => {}
        [s] => report["server_cpu"] = s.report(from, to, ops),
        many => {
            let each: Vec<Value> = many.iter().map(|s| s.report(from, to, ops)).collect();
            report["server_cpu"] = server_cpu::sum(each, ops);
        }
    }
}

/// Adds what every report carries: the load generator's cores, wall time and CPU use.
pub fn finish(setup: &Setup, common: &Common, mut report: Value) -> Value {
    let wall = setup.started.elapsed();
    let cpu = cpu_now().saturating_sub(setup.cpu_start);
    report["target"] = json!(common.url);
    report["loadgen"] = json!({
        "cores": common.cores,
        "wall_s": round3(wall.as_secs_f64()),
        "cpu_s": round3(cpu.as_secs_f64()),
        // 100 = one core busy the whole run.
        "cpu_percent": round3(100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9)),
    });
    report
}

/// The union of the shards' measured windows.
pub fn union(
    a: Option<(Instant, Instant)>,
    b: Option<(Instant, Instant)>,
) -> Option<(Instant, Instant)> {
    match (a, b) {
        (Some(x), Some(y)) => Some((x.0.min(y.0), x.1.max(y.1))),
        (x, y) => x.or(y),
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Splits `items` round-robin over `n` shards.
pub fn deal<T: Clone>(items: &[T], n: usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = (0..n).map(|_| Vec::new()).collect();
    for (i, x) in items.iter().enumerate() {
        out[i % n].push(x.clone());
    }
    out
}

/// Seconds given on the command line as a Duration (finite, non-negative).
pub fn secs(flag: &str, v: f64) -> Result<Duration, String> {
    if v.is_finite() && (0.0..1e7).contains(&v) {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!("{flag} must be a non-negative number of seconds"))
    }
}
