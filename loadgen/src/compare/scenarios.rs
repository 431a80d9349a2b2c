//! What `bench compare` runs on each side, and what it reads from each run.
//!
//! # Extension point: more scenarios
//!
//! The harness ([`super::harness`]) knows nothing of registries: it alternates the two
//! [`Side`]s over the rounds, calls [`Scenario::run`] once per side per round, and
//! hands the [`Sample`]s to the report (medians, ratios, table, JSON, one chart per
//! scenario). A scenario owns everything about a run: starting what it measures
//! (fresh), driving it, stopping it, and turning what it saw into named numbers; it
//! holds whatever it needs for that (the registry scenarios here share one [`Ctx`]).
//!
//! The registry scenarios here start the side's server ([`Running::start`]) and run
//! one `chatixia-core bench <scenario> --json --server-pid …` child per run. The
//! sidecar scenarios ([`super::sidecars`], `bench compare --sidecar`) are the second
//! kind: each run starts a pair of sidecars from the side's command in two network
//! namespaces ([`super::lab`]), runs one `chatixia-core bench sidecar --json` child
//! over their IPC sockets and returns its numbers as a [`Sample`] with its own
//! [`Metric`]s. A new kind implements [`Scenario`], builds its list, and hands it to
//! [`super::harness`]: the rounds, progress line, failure reporting and report come
//! for free.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::server::{Launch, Running, Side};

/// What one run of a scenario measured on one side: metric key → value.
pub type Sample = BTreeMap<String, f64>;

/// Which way a metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

impl Better {
    pub fn as_str(self) -> &'static str {
        match self {
            Better::Higher => "higher",
            Better::Lower => "lower",
        }
    }
}

/// One number a scenario reports.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub key: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub better: Better,
}

const THROUGHPUT: Metric = Metric {
    key: "throughput_per_s",
    label: "throughput",
    unit: "ops/s",
    better: Better::Higher,
};
const P50: Metric = Metric {
    key: "p50_us",
    label: "latency p50",
    unit: "µs",
    better: Better::Lower,
};
const P99: Metric = Metric {
    key: "p99_us",
    label: "latency p99",
    unit: "µs",
    better: Better::Lower,
};
const P999: Metric = Metric {
    key: "p999_us",
    label: "latency p99.9",
    unit: "µs",
    better: Better::Lower,
};
const CPU: Metric = Metric {
    key: "cpu_us_per_op",
    label: "server CPU per op",
    unit: "µs",
    better: Better::Lower,
};
const LOSS: Metric = Metric {
    key: "lost_pct",
    label: "messages lost",
    unit: "%",
    better: Better::Lower,
};
const RSS: Metric = Metric {
    key: "rss_kib_per_conn",
    label: "server RSS per connection",
    unit: "KiB",
    better: Better::Lower,
};

/// Everything a registry run needs besides its side.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The `chatixia-core` binary (for `bench <scenario>` children).
    pub exe: PathBuf,
    /// `launch.keys` is the large keys file (every peer a scenario needs).
    pub launch: Launch,
    /// The small keys file ([`Sizes::small_keys`] peers), for the relay at 100 keys.
    pub keys_small: PathBuf,
    /// Where each run's raw report and stderr are kept.
    pub runs_dir: PathBuf,
    pub loadgen_cores: usize,
    pub duration: f64,
    pub warmup: f64,
}

/// A measured thing; see the module comment for how to add one.
pub trait Scenario {
    /// Short, stable name (`relay-100`): JSON key, file names.
    fn name(&self) -> String;
    /// One line for people: what is run, with its sizes.
    fn title(&self) -> String;
    /// What it reports; the first is the one the progress line shows.
    fn metrics(&self) -> Vec<Metric>;
    /// One run on one side; `tag` names its files. An `Err` is the reason the side
    /// could not do it (reported; the other runs go on).
    fn run(&self, side: &Side, tag: &str) -> Result<Sample, String>;
}

/// A registry scenario: one `bench <bench> …` child against a freshly started server.
pub struct Registry {
    name: String,
    title: String,
    bench: &'static str,
    args: Vec<String>,
    /// The report fields: throughput, latency summary, ops label for CPU.
    throughput: &'static str,
    latency: &'static str,
    rss: bool,
    /// Servers load the small keys file for this scenario.
    small_keys: bool,
    /// Bound on one child (set-up of 10,000 connections included).
    limit: Duration,
    ctx: Rc<Ctx>,
}

/// Sizes of the scenarios.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Peers of the relay scenarios (pairs exchanging offers and answers).
    pub relay_peers: usize,
    pub relay_rate: f64,
    /// Keys in the small keys file; the large one holds [`Sizes::peers_needed`].
    pub small_keys: usize,
    pub idle_connections: usize,
    pub storm_concurrency: usize,
    pub http_concurrency: usize,
}

impl Sizes {
    pub fn full() -> Sizes {
        Sizes {
            relay_peers: 100,
            // The reference relays ~2,300 msg/s on one worker with 10,000 keys (it
            // copies every key's peer id per message): a rate it keeps up with, so the
            // comparison is CPU per message and latency, not a backlog.
            relay_rate: 1_000.0,
            small_keys: 100,
            idle_connections: 10_000,
            storm_concurrency: 32,
            http_concurrency: 32,
        }
    }

    /// `--quick`: small enough for a test (seconds per run, even on a debug build).
    pub fn quick() -> Sizes {
        Sizes {
            relay_peers: 20,
            relay_rate: 1_000.0,
            small_keys: 100,
            idle_connections: 300,
            storm_concurrency: 8,
            http_concurrency: 8,
        }
    }

    /// Peers the keys file must hold.
    pub fn peers_needed(&self) -> usize {
        self.relay_peers
            .max(self.small_keys)
            .max(self.idle_connections)
            .max(self.storm_concurrency * 4)
            .max(100)
    }
}

/// `10000` → `10k`.
pub fn count_name(n: usize) -> String {
    if n >= 1000 && n % 1000 == 0 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// Every registry scenario, in report order.
pub fn all(s: &Sizes, ctx: &Rc<Ctx>) -> Vec<Box<dyn Scenario>> {
    let timed = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.extend([
            "--duration".into(),
            ctx.duration.to_string(),
            "--warmup".into(),
            ctx.warmup.to_string(),
        ]);
        v
    };
    let base = Duration::from_secs_f64(ctx.duration + ctx.warmup + 90.0);
    let http_c = s.http_concurrency.to_string();
    let relay = |keys: usize, small_keys: bool| Registry {
        name: format!("relay-{}-keys", count_name(keys)),
        title: format!(
            "ws-relay: {} peers in pairs, offer/answer at {} msg/s in all (open loop: \
             the throughput is the offered rate while the server keeps up), the server \
             loading {keys} keys",
            s.relay_peers, s.relay_rate
        ),
        bench: "ws-relay",
        args: timed(&[
            "--peers",
            &s.relay_peers.to_string(),
            "--rate",
            &s.relay_rate.to_string(),
        ]),
        throughput: "relayed_per_s",
        latency: "latency_us",
        rss: false,
        small_keys,
        limit: base,
        ctx: ctx.clone(),
    };
    let list: Vec<Registry> = vec![
        Registry {
            name: "heartbeat".into(),
            title: format!(
                "HTTP heartbeat: POST /api/hub/heartbeat, {http_c} keep-alive connections (closed loop)"
            ),
            bench: "http",
            args: timed(&["--mix", "heartbeat=1", "--concurrency", &http_c]),
            throughput: "throughput_rps",
            latency: "latency_us",
            rss: false,
            small_keys: false,
            limit: base,
            ctx: ctx.clone(),
        },
        Registry {
            name: "http-mix".into(),
            title: format!(
                "HTTP mix: heartbeat 50, register 10, list 20, topology 20; {http_c} connections (closed loop)"
            ),
            bench: "http",
            args: timed(&["--concurrency", &http_c]),
            throughput: "throughput_rps",
            latency: "latency_us",
            rss: false,
            small_keys: false,
            limit: base,
            ctx: ctx.clone(),
        },
        relay(s.small_keys, true),
        relay(s.peers_needed(), false),
        Registry {
            name: format!("connect-idle-{}", count_name(s.idle_connections)),
            title: format!(
                "ws-idle: connect and register {} peers (64 at a time), then hold them; \
                 server RSS per connection",
                s.idle_connections
            ),
            bench: "ws-idle",
            args: vec![
                "--connections".into(),
                s.idle_connections.to_string(),
                "--hold".into(),
                ctx.warmup.max(1.0).to_string(),
            ],
            throughput: "connect_rate_per_s",
            latency: "connect_latency_us",
            rss: true,
            small_keys: false,
            // The reference takes minutes for 10,000 (each register lists every peer).
            limit: base + Duration::from_secs(s.idle_connections as u64 / 15),
            ctx: ctx.clone(),
        },
        Registry {
            name: "storm".into(),
            title: format!(
                "storm: {} loops of token, connect, upgrade, register, close (closed loop)",
                s.storm_concurrency
            ),
            bench: "storm",
            args: timed(&["--concurrency", &s.storm_concurrency.to_string()]),
            throughput: "cycles_per_s",
            latency: "cycle_latency_us",
            rss: false,
            small_keys: false,
            limit: base,
            ctx: ctx.clone(),
        },
    ];
    list.into_iter()
        .map(|r| Box::new(r) as Box<dyn Scenario>)
        .collect()
}

impl Scenario for Registry {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn title(&self) -> String {
        self.title.clone()
    }

    fn metrics(&self) -> Vec<Metric> {
        let mut m = vec![THROUGHPUT, P50, P99, P999, CPU];
        if self.rss {
            m.push(RSS);
        }
        if self.bench == "ws-relay" {
            m.push(LOSS);
        }
        m
    }

    fn run(&self, side: &Side, tag: &str) -> Result<Sample, String> {
        let ctx = &*self.ctx;
        let mut launch = ctx.launch.clone();
        if self.small_keys {
            launch.keys = ctx.keys_small.clone();
        }
        let mut server = Running::start(side, &launch, tag)?;
        let mut cmd = Command::new(&ctx.exe);
        cmd.args([
            "bench",
            self.bench,
            "--json",
            "--url",
            &server.url,
            "--keys",
        ])
        .arg(&launch.keys)
        .args(["--cores", &ctx.loadgen_cores.to_string()])
        .args(&self.args);
        if let Some(pid) = server.pid {
            cmd.args(["--server-pid", &pid.to_string()]);
        }
        let (out_path, err_path) = (
            ctx.runs_dir.join(format!("{tag}.json")),
            ctx.runs_dir.join(format!("{tag}.stderr")),
        );
        let file =
            |p: &PathBuf| std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(file(&out_path)?)
            .stderr(file(&err_path)?)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", ctx.exe.display()))?;
        let status = wait_bounded(&mut child, self.limit)?;
        // A server that died during the run is the reason, whatever the child said.
        server.check_alive()?;
        server.stop();
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        match status.code() {
            Some(0) => {}
            Some(3) => {
                let report: Value = serde_json::from_str(&stdout).unwrap_or_default();
                return Err(incomplete_reason(&report));
            }
            _ => {
                let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
                return Err(last
                    .unwrap_or("the load generator failed")
                    .trim()
                    .to_owned());
            }
        }
        let report: Value =
            serde_json::from_str(&stdout).map_err(|e| format!("the run's report: {e}"))?;
        extract(&report, self.throughput, self.latency, self.rss)
    }
}

/// Waits for a load-generator child; past `limit` it is killed and that is the error.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Result<ExitStatus, String> {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(s);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the run did not finish within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Why a run that finished did not succeed (exit 3): what stopped it, its errors.
pub fn incomplete_reason(report: &Value) -> String {
    if let Some(s) = report.get("stopped_by").filter(|s| !s.is_null()) {
        return format!(
            "stopped at {} of {} connections by {}: {}",
            report["established"], report["requested"], s["kind"], s["detail"]
        );
    }
    let errors = report.get("error_details").or(report.get("errors"));
    match errors {
        Some(Value::Object(m)) if !m.is_empty() => {
            let kinds: Vec<String> = m
                .iter()
                .map(|(k, d)| format!("{k}: {}", d.as_str().unwrap_or(&d.to_string())))
                .collect();
            format!("errors: {}", kinds.join("; "))
        }
        _ => "no operation completed".into(),
    }
}

/// The sample of one bench report.
pub fn extract(
    report: &Value,
    throughput: &str,
    latency: &str,
    rss: bool,
) -> Result<Sample, String> {
    let mut s = Sample::new();
    let tp = report[throughput]
        .as_f64()
        .ok_or_else(|| format!("the report has no {throughput}"))?;
    s.insert(THROUGHPUT.key.into(), tp);
    let l = &report[latency];
    for (k, q) in [(P50.key, "p50"), (P99.key, "p99"), (P999.key, "p999")] {
        if let Some(v) = l[q].as_f64() {
            s.insert(k.into(), v);
        }
    }
    if let Some(v) = report["server_cpu"]["cpu_us_per_op"].as_f64() {
        s.insert(CPU.key.into(), v);
    }
    // ws-relay: the share of messages sent in the window that never arrived.
    if let (Some(sent), Some(lost)) = (
        report["messages"]["sent"].as_f64(),
        report["messages"]["lost"].as_f64(),
    ) {
        if sent > 0.0 {
            s.insert(LOSS.key.into(), 100.0 * lost / sent);
        }
    }
    if rss {
        if let Some(v) = report["server_rss"]["per_connection_kib"].as_f64() {
            s.insert(RSS.key.into(), v);
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn samples_come_from_bench_reports() {
        let r = json!({
            "relayed_per_s": 999.5,
            "latency_us": {"count": 10, "p50": 100, "p99": 900, "p999": 1200},
            "server_cpu": {"cpu_us_per_op": 12.5},
            "server_rss": {"per_connection_kib": 3.25},
            "messages": {"sent": 200, "received": 150, "lost": 50},
        });
        let s = extract(&r, "relayed_per_s", "latency_us", true).unwrap();
        assert_eq!(s["throughput_per_s"], 999.5);
        assert_eq!(s["p50_us"], 100.0);
        assert_eq!(s["p999_us"], 1200.0);
        assert_eq!(s["cpu_us_per_op"], 12.5);
        assert_eq!(s["rss_kib_per_conn"], 3.25);
        assert_eq!(s["lost_pct"], 25.0);
        // Without the server's PID there is no CPU figure, and that is not an error.
        let s = extract(
            &json!({"relayed_per_s": 1.0, "latency_us": {}}),
            "relayed_per_s",
            "latency_us",
            false,
        )
        .unwrap();
        assert_eq!(s.len(), 1);
        assert!(extract(&json!({}), "relayed_per_s", "latency_us", false).is_err());
    }

    #[test]
    fn incomplete_runs_say_why() {
        let r = json!({"established": 1019, "requested": 10000,
            "stopped_by": {"kind": "EMFILE", "detail": "accept: too many open files"}});
        assert!(incomplete_reason(&r).contains("EMFILE"));
        let r = json!({"error_details": {"timeout": "register: no answer within 10s"}});
        assert_eq!(
            incomplete_reason(&r),
            "errors: timeout: register: no answer within 10s"
        );
        assert_eq!(
            incomplete_reason(&json!({"errors": {}})),
            "no operation completed"
        );
    }

    #[test]
    fn names_carry_the_sizes() {
        assert_eq!(count_name(10_000), "10k");
        assert_eq!(count_name(400), "400");
        assert_eq!(Sizes::quick().peers_needed(), 300);
        assert_eq!(Sizes::full().peers_needed(), 10_000);
    }
}
