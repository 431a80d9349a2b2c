//! `bench compare --sidecar`: two sidecar binaries side by side, on the harness and
//! report of every comparison ([`super::harness`]).
//!
//! One [`Lab`] (two network namespaces joined by a veth pair, the signaling server in
//! namespace A) serves the whole comparison. Each case (`SIZE:COUNT`) is a
//! [`Scenario`]; each of its runs starts a fresh pair of the side's sidecars (A in
//! namespace A, B in namespace B, each with a peer identity no other run used), waits
//! for their IPC sockets, and runs `chatixia-core bench sidecar --json` over them (a
//! Unix socket path works across network namespaces): A sends COUNT messages of SIZE
//! payload bytes to B as fast as A takes them. The sample is that report's numbers
//! (msg/s, MB/s, each sidecar's CPU per message and RSS) plus the UDP datagrams the two
//! namespaces dropped during the run. A run that does not deliver every message in
//! order is a failure with its reason. A pair that fails before the measured part (its
//! DataChannel never opens, a sidecar exits at start) is started afresh, up to
//! [`ATTEMPTS_MAX`] times, as scripts/bench-sidecar.sh does.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::lab::{self, Lab, Names, Ns};
use super::report::ROLES;
use super::scenarios::Scenario;
use super::scenarios::{count_name, incomplete_reason, wait_bounded, Better, Metric, Sample};
use super::server::{is_a_wrapper, log_tail, stop_child, Side, Spec};
use super::{harness, shell_words, Args};
use crate::keys;

/// Starts of a pair per run when it fails before measuring (its cause is kept in the
/// run's files each time).
pub const ATTEMPTS_MAX: usize = 3;
/// How long a sidecar may take to create its IPC socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);
/// `bench sidecar --connect-timeout`: for A to list B and a warm-up ping to arrive.
const CONNECT_TIMEOUT_S: f64 = 30.0;
/// Margin on top of the driver's own bounds before it is killed.
const DRIVER_MARGIN: Duration = Duration::from_secs(30);

/// One case: `count` messages of `size` payload bytes, A → B.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    pub size: usize,
    pub count: u64,
}

pub const DEFAULT_CASES: &str = "64:20000,1024:20000,16384:2000";
pub const QUICK_CASES: &str = "64:2000,1024:2000,16384:200";

impl Case {
    /// `SIZE:COUNT`.
    pub fn parse(s: &str) -> Result<Case, String> {
        let bad = || {
            format!("{s:?} is not SIZE:COUNT (payload bytes per message : messages, e.g. 64:20000)")
        };
        let (size, count) = s.trim().split_once(':').ok_or_else(bad)?;
        let num = |x: &str| x.trim().replace('_', "").parse::<u64>().map_err(|_| bad());
        let (size, count) = (num(size)?, num(count)?);
        if count == 0 {
            return Err(format!("{s:?}: COUNT must be at least 1"));
        }
        let size = usize::try_from(size).map_err(|_| bad())?;
        Ok(Case { size, count })
    }

    /// The cases of `--sidecar-cases` (each item `SIZE:COUNT`), in order; none: the
    /// default list ([`QUICK_CASES`] with `quick`).
    pub fn parse_list(items: &[String], quick: bool) -> Result<Vec<Case>, String> {
        let default = if quick { QUICK_CASES } else { DEFAULT_CASES };
        let items: Vec<&str> = if items.is_empty() {
            default.split(',').collect()
        } else {
            items.iter().map(String::as_str).collect()
        };
        let mut cases: Vec<Case> = Vec::with_capacity(items.len());
        for i in items {
            let c = Case::parse(i).map_err(|e| format!("--sidecar-cases: {e}"))?;
            if cases.contains(&c) {
                return Err(format!(
                    "--sidecar-cases: {}:{} is given twice",
                    c.size, c.count
                ));
            }
            cases.push(c);
        }
        Ok(cases)
    }

    /// `sidecar-64B-x20k`, `sidecar-16KiB-x2k`.
    pub fn name(&self) -> String {
        let size = if self.size >= 1024 && self.size % 1024 == 0 {
            format!("{}KiB", self.size / 1024)
        } else {
            format!("{}B", self.size)
        };
        format!("sidecar-{size}-x{}", count_name(self.count as usize))
    }
}

const MSG_PER_S: Metric = Metric {
    key: "msg_per_s",
    label: "throughput",
    unit: "msg/s",
    better: Better::Higher,
};

/// What a sidecar run reports, in report order.
pub const METRICS: [Metric; 11] = [
    MSG_PER_S,
    Metric {
        key: "payload_mb_per_s",
        label: "payload throughput",
        unit: "MB/s",
        better: Better::Higher,
    },
    Metric {
        key: "sender_cpu_us_per_msg",
        label: "sender CPU per message",
        unit: "µs",
        better: Better::Lower,
    },
    Metric {
        key: "receiver_cpu_us_per_msg",
        label: "receiver CPU per message",
        unit: "µs",
        better: Better::Lower,
    },
    Metric {
        key: "udp_drops",
        label: "UDP datagrams dropped",
        unit: "",
        better: Better::Lower,
    },
    Metric {
        key: "sender_rss_idle_mib",
        label: "sender RSS, one peer open",
        unit: "MiB",
        better: Better::Lower,
    },
    Metric {
        key: "sender_rss_after_mib",
        label: "sender RSS after the run",
        unit: "MiB",
        better: Better::Lower,
    },
    Metric {
        key: "sender_rss_drained_mib",
        label: "sender RSS after the drain",
        unit: "MiB",
        better: Better::Lower,
    },
    Metric {
        key: "receiver_rss_idle_mib",
        label: "receiver RSS, one peer open",
        unit: "MiB",
        better: Better::Lower,
    },
    Metric {
        key: "receiver_rss_after_mib",
        label: "receiver RSS after the run",
        unit: "MiB",
        better: Better::Lower,
    },
    Metric {
        key: "receiver_rss_drained_mib",
        label: "receiver RSS after the drain",
        unit: "MiB",
        better: Better::Lower,
    },
];

/// The sample of one `bench sidecar --json` report (and the UDP datagrams dropped in
/// the run, when read); a run that did not deliver every message once, in order, is
/// the error, with what it did deliver.
pub fn sample_of(report: &Value, udp_drops: Option<u64>) -> Result<Sample, String> {
    let count = report["count"]
        .as_u64()
        .ok_or("the run's report has no count")?;
    let delivered = report["delivered"].as_u64().unwrap_or(0);
    let in_order = report["in_order"].as_bool() == Some(true);
    let failure = report["failure"].as_str();
    if delivered != count || !in_order || failure.is_some() {
        let mut why = format!("delivered {delivered} of {count}");
        if !in_order {
            why += &format!(
                ", {} out of order, {} duplicated",
                report["out_of_order"], report["duplicates"]
            );
        }
        if let Some(f) = failure {
            why += &format!(": {f}");
        }
        return Err(why);
    }
    let mut s = Sample::new();
    let mut put = |key: &str, v: Option<f64>| {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            s.insert(key.into(), v);
        }
    };
    put(
        "msg_per_s",
        Some(
            report["msg_per_s"]
                .as_f64()
                .ok_or("the run's report has no msg_per_s")?,
        ),
    );
    put("payload_mb_per_s", report["payload_mb_per_s"].as_f64());
    for (side, who) in [("sender", "sender"), ("receiver", "receiver")] {
        let r = &report[side];
        put(
            &format!("{who}_cpu_us_per_msg"),
            r["cpu_us_per_msg"].as_f64(),
        );
        for when in ["idle", "after", "drained"] {
            put(
                &format!("{who}_rss_{when}_mib"),
                r[format!("rss_{when}_kib")].as_f64().map(|k| k / 1024.0),
            );
        }
    }
    put("udp_drops", udp_drops.map(|d| d as f64));
    Ok(s)
}

/// What every sidecar run shares: the lab, the peers, the driver's settings.
pub struct Env {
    pub lab: Lab,
    /// The `chatixia-core` binary (for the `bench sidecar` child).
    pub exe: PathBuf,
    pub runs_dir: PathBuf,
    /// Two per pair started; pair `n` is peers `2n` (A) and `2n + 1` (B).
    pub peers: Vec<keys::Peer>,
    next_pair: Cell<usize>,
    pub run_timeout_s: f64,
    pub drain_ms: u64,
}

impl Env {
    /// The next pair's (A, B) peers: every pair registers identities no earlier pair
    /// used, so nothing a stopped pair left in the server meets a new one.
    fn next_pair(&self) -> Result<(usize, &keys::Peer, &keys::Peer), String> {
        let n = self.next_pair.get();
        self.next_pair.set(n + 1);
        match (self.peers.get(2 * n), self.peers.get(2 * n + 1)) {
            (Some(a), Some(b)) => Ok((n, a, b)),
            _ => Err("no unused peer left in the keys file".into()),
        }
    }
}

/// One case as a scenario.
pub struct SidecarCase {
    pub case: Case,
    pub env: Rc<Env>,
}

/// Why an attempt failed: before the measured part (worth another pair) or in it.
enum Failed {
    Before(String),
    Measured(String),
}

/// A started sidecar pair, stopped (SIGTERM, then SIGKILL) on drop.
struct Pair {
    a: Child,
    b: Child,
}

impl Drop for Pair {
    fn drop(&mut self) {
        stop_child(&mut self.a);
        stop_child(&mut self.b);
    }
}

/// Waits for a sidecar's IPC socket; an exit before it is the error (with its log).
fn wait_socket(c: &mut Child, socket: &Path, log: &Path, who: &str) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        if let Ok(Some(status)) = c.try_wait() {
            return Err(format!(
                "sidecar {who} exited ({status}): {}",
                log_tail(log)
            ));
        }
        if socket.exists() {
            if is_a_wrapper(c.id()) {
                return Err(format!(
                    "sidecar {who}'s command is not one program (its PID is a shell's): \
                     give the sidecar binary and its arguments"
                ));
            }
            return Ok(());
        }
        if t0.elapsed() > SOCKET_TIMEOUT {
            return Err(format!(
                "sidecar {who} did not create its IPC socket within {SOCKET_TIMEOUT:?}: {}",
                log_tail(log)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl SidecarCase {
    fn attempt(&self, cmd: &str, side: &Side, tag: &str) -> Result<Sample, Failed> {
        let env = &*self.env;
        let lab = &env.lab;
        let (n, pa, pb) = env.next_pair().map_err(Failed::Measured)?;
        let dir = &lab.names.socket_dir;
        // Short names: a Unix socket path has at most 107 bytes.
        let (sa, sb) = (
            dir.join(format!("{n}.a.sock")),
            dir.join(format!("{n}.b.sock")),
        );
        let (la, lb) = (
            env.runs_dir.join(format!("{tag}.a.log")),
            env.runs_dir.join(format!("{tag}.b.log")),
        );
        let url = lab.server_url();
        let sidecar_env = |key: &str, socket: &Path| -> Vec<(&'static str, String)> {
            vec![
                (
                    "SIGNALING_URL",
                    format!("ws://{}:{}/ws", lab::IP_A, lab::PORT),
                ),
                ("TOKEN_URL", format!("{url}/api/token")),
                ("API_KEY", key.to_owned()),
                ("IPC_SOCKET", socket.display().to_string()),
                // Nothing leaves the machine (the namespaces have no route anyway).
                ("STUN_URLS", "none".into()),
                ("RUST_LOG", "warn".into()),
                ("NO_COLOR", "1".into()),
            ]
        };
        let drops0 = lab.udp_drops().ok();
        let a = lab
            .spawn_in(Ns::A, cmd, &sidecar_env(&pa.key, &sa), &la)
            .map_err(Failed::Before)?;
        let b = match lab.spawn_in(Ns::B, cmd, &sidecar_env(&pb.key, &sb), &lb) {
            Ok(b) => b,
            Err(e) => {
                let mut a = a;
                stop_child(&mut a);
                return Err(Failed::Before(e));
            }
        };
        let mut pair = Pair { a, b };
        wait_socket(&mut pair.a, &sa, &la, "A").map_err(Failed::Before)?;
        wait_socket(&mut pair.b, &sb, &lb, "B").map_err(Failed::Before)?;

        let (out_path, err_path) = (
            env.runs_dir.join(format!("{tag}.json")),
            env.runs_dir.join(format!("{tag}.stderr")),
        );
        let file = |p: &PathBuf| {
            std::fs::File::create(p).map_err(|e| Failed::Measured(format!("{}: {e}", p.display())))
        };
        let mut driver = Command::new(&env.exe)
            .args(["bench", "sidecar", "--json", "--label", &side.name])
            .arg("--a-socket")
            .arg(&sa)
            .arg("--b-socket")
            .arg(&sb)
            .args(["--b-peer", &pb.peer_id])
            .args(["--a-pid", &pair.a.id().to_string()])
            .args(["--b-pid", &pair.b.id().to_string()])
            .args(["--size", &self.case.size.to_string()])
            .args(["--count", &self.case.count.to_string()])
            .args(["--connect-timeout", &CONNECT_TIMEOUT_S.to_string()])
            .args(["--timeout", &env.run_timeout_s.to_string()])
            .args(["--drain-ms", &env.drain_ms.to_string()])
            .stdin(Stdio::null())
            .stdout(file(&out_path)?)
            .stderr(file(&err_path)?)
            .spawn()
            .map_err(|e| Failed::Measured(format!("starting {}: {e}", env.exe.display())))?;
        let limit = Duration::from_secs_f64(CONNECT_TIMEOUT_S + env.run_timeout_s + 1.0)
            + Duration::from_millis(env.drain_ms)
            + DRIVER_MARGIN;
        let status = wait_bounded(&mut driver, limit).map_err(Failed::Measured)?;
        let drops = match (drops0, lab.udp_drops().ok()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        // A sidecar that failed is the reason when the driver did not finish (the agent's
        // sidecar exits with 0 when its IPC client goes, as the driver does at the end).
        if !matches!(status.code(), Some(0) | Some(3)) {
            for (c, who, log) in [(&mut pair.a, "A", &la), (&mut pair.b, "B", &lb)] {
                if let Ok(Some(st)) = c.try_wait() {
                    if !st.success() {
                        return Err(Failed::Before(format!(
                            "sidecar {who} exited ({st}): {}",
                            log_tail(log)
                        )));
                    }
                }
            }
        }
        drop(pair);
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        let report: Value = serde_json::from_str(&stdout).unwrap_or_default();
        match status.code() {
            Some(0) | Some(3) => {
                if !report.is_object() {
                    return Err(Failed::Measured("the run's report is not JSON".into()));
                }
                let sample = sample_of(&report, drops).map_err(Failed::Measured);
                // Exit 3 with a report that looks complete still failed: say why.
                if status.code() == Some(3) && sample.is_ok() {
                    return Err(Failed::Measured(incomplete_reason(&report)));
                }
                if let Ok(s) = &sample {
                    // The drops go into the kept report too.
                    let mut r = report;
                    r["udp_drops"] = json!(s.get("udp_drops"));
                    let _ = std::fs::write(&out_path, r.to_string());
                }
                sample
            }
            _ => {
                // The driver stopped before measuring (exit 1): e.g. A never listed B.
                let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
                let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
                Err(Failed::Before(
                    last.unwrap_or("the sidecar driver failed")
                        .trim()
                        .to_owned(),
                ))
            }
        }
    }
}

impl Scenario for SidecarCase {
    fn name(&self) -> String {
        self.case.name()
    }

    fn title(&self) -> String {
        format!(
            "sidecar data plane: A (namespace A) sends {} messages of {} payload bytes to B \
             (namespace B) over their DataChannel as fast as A takes them, driven over IPC \
             by `bench sidecar`; a fresh pair per run",
            self.case.count, self.case.size
        )
    }

    fn metrics(&self) -> Vec<Metric> {
        METRICS.to_vec()
    }

    fn run(&self, side: &Side, tag: &str) -> Result<Sample, String> {
        let Spec::Command(cmd) = &side.spec else {
            return Err("a sidecar side is a command".into());
        };
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS_MAX {
            // The signaling server every pair needs: if it is gone, say so, not why the
            // sidecars could not meet.
            self.env.lab.check_server()?;
            let t = if attempt == 1 {
                tag.to_owned()
            } else {
                format!("{tag}-attempt{attempt}")
            };
            let failed = match self.attempt(cmd, side, &t) {
                Ok(s) => return Ok(s),
                Err(f) => f,
            };
            // A server that died is the reason, whatever the pair or the driver said.
            self.env.lab.check_server()?;
            match failed {
                Failed::Measured(e) => return Err(e),
                Failed::Before(e) => {
                    let _ = std::fs::write(self.env.runs_dir.join(format!("{t}.err")), &e);
                    last = if attempt > 1 {
                        format!("{e} (pair started {attempt} times)")
                    } else {
                        e
                    };
                }
            }
        }
        Err(last)
    }
}

/// `bench compare --sidecar`.
pub fn run(args: &Args, argv: &[String]) -> Result<(Value, bool), String> {
    lab::check_privileges()?;
    let side = |role: usize, spec: &str, name: &str| -> Result<Side, String> {
        let flag = ["--baseline", "--candidate"][role];
        match Spec::parse(spec, None).map_err(|e| format!("{flag}: {e}"))? {
            Spec::Url { .. } => Err(format!(
                "{flag}: with --sidecar a side is a sidecar command, not a URL"
            )),
            s => Ok(Side {
                role: ROLES[role],
                name: name.to_owned(),
                spec: s,
            }),
        }
    };
    let sides = [
        side(0, &args.baseline, &args.baseline_name)?,
        side(1, &args.candidate, &args.candidate_name)?,
    ];
    let cases = Case::parse_list(&args.sidecar_cases, args.quick)?;
    let run_timeout_s = args.sidecar_timeout.unwrap_or(180.0);
    if super::super::secs("--sidecar-timeout", run_timeout_s)?.is_zero() {
        return Err("--sidecar-timeout must be positive".into());
    }
    let drain_ms = if args.quick { 500 } else { 2000 };
    let runs_dir = args.out.join("runs");
    std::fs::create_dir_all(&runs_dir).map_err(|e| format!("{}: {e}", runs_dir.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("locating chatixia-core: {e}"))?;

    // Keys for every pair the runs may start (retries included).
    let pairs = args.rounds * cases.len() * 2 * ATTEMPTS_MAX;
    let keys_path = args.out.join("sidecar_keys.json");
    keys::run(2 * pairs, 1, Some(&keys_path))?;
    let peers = keys::load(&keys_path)?;

    let server_cmd = args.signaling_server.clone().unwrap_or_else(|| {
        format!(
            "{} --cores 1 --stun-url none",
            shell_words(&[exe.display().to_string()])
        )
    });
    let names = Names::new(&lab::run_tag()?, &std::env::temp_dir());
    let server_env = [
        ("API_KEYS_FILE", keys_path.display().to_string()),
        ("SIGNALING_SECRET", "bench-compare-secret".to_owned()),
        ("TOKIO_WORKER_THREADS", "1".to_owned()),
        (
            "CHATIXIA_DATA_DIR",
            runs_dir.join("signaling.data").display().to_string(),
        ),
    ];
    let lab = Lab::start(
        names.clone(),
        &server_cmd,
        &server_env,
        runs_dir.join("signaling.log"),
    )?;
    let env = Rc::new(Env {
        lab,
        exe,
        runs_dir,
        peers,
        next_pair: Cell::new(0),
        run_timeout_s,
        drain_ms,
    });
    let list: Vec<Box<dyn Scenario>> = cases
        .iter()
        .map(|&case| {
            Box::new(SidecarCase {
                case,
                env: env.clone(),
            }) as Box<dyn Scenario>
        })
        .collect();
    let meta = json!({
        "mode": "sidecar",
        "quick": args.quick,
        "cases": cases.iter().map(|c| format!("{}:{}", c.size, c.count)).collect::<Vec<_>>(),
        "signaling_server": server_cmd,
        "run_timeout_s": run_timeout_s,
        "drain_ms": drain_ms,
        "netns": [names.ns_a, names.ns_b],
        "veth": [names.veth_a, names.veth_b],
        "socket_dir": names.socket_dir,
        "addresses": [lab::IP_A, lab::IP_B],
    });
    let result = harness(args, argv, &sides, &list, meta);
    // The lab (namespaces, server) goes with the last scenario holding it.
    drop(list);
    drop(env);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_parse_and_name_themselves() {
        assert_eq!(
            Case::parse("64:20000").unwrap(),
            Case {
                size: 64,
                count: 20_000
            }
        );
        assert_eq!(Case::parse(" 1024 : 20_000 ").unwrap().count, 20_000);
        assert_eq!(Case::parse("0:1").unwrap().size, 0);
        for bad in ["64", "64:", ":5", "x:1", "64:-1", "64:1:2", "1.5:10"] {
            let e = Case::parse(bad).unwrap_err();
            assert!(e.contains("SIZE:COUNT"), "{bad}: {e}");
        }
        assert!(Case::parse("64:0").unwrap_err().contains("at least 1"));
        let names: Vec<String> = Case::parse_list(&[], false)
            .unwrap()
            .iter()
            .map(Case::name)
            .collect();
        assert_eq!(
            names,
            ["sidecar-64B-x20k", "sidecar-1KiB-x20k", "sidecar-16KiB-x2k"]
        );
        assert_eq!(Case::parse_list(&[], true).unwrap()[2].count, 200);
        let given = ["100:1500".to_owned(), "64:2000".to_owned()];
        let l = Case::parse_list(&given, true).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].name(), "sidecar-100B-x1500");
        let twice = ["64:2000".to_owned(), "64:2000".to_owned()];
        assert!(Case::parse_list(&twice, false)
            .unwrap_err()
            .contains("given twice"));
        let e = Case::parse_list(&["64".to_owned()], false).unwrap_err();
        assert!(e.starts_with("--sidecar-cases: "), "{e}");
    }

    fn report() -> Value {
        json!({
            "scenario": "sidecar", "count": 2000, "size": 64, "delivered": 2000,
            "in_order": true, "out_of_order": 0, "duplicates": 0,
            "msg_per_s": 50000.0, "payload_mb_per_s": 3.2,
            "sender": {"cpu_us_per_msg": 5.0, "rss_idle_kib": 10240,
                       "rss_after_kib": 11264, "rss_drained_kib": 11264},
            "receiver": {"cpu_us_per_msg": 4.5, "rss_idle_kib": 9216,
                         "rss_after_kib": 9728, "rss_drained_kib": null},
            "failure": null,
        })
    }

    #[test]
    fn samples_come_from_the_drivers_report() {
        let s = sample_of(&report(), Some(3)).unwrap();
        assert_eq!(s["msg_per_s"], 50_000.0);
        assert_eq!(s["payload_mb_per_s"], 3.2);
        assert_eq!(s["sender_cpu_us_per_msg"], 5.0);
        assert_eq!(s["receiver_cpu_us_per_msg"], 4.5);
        assert_eq!(s["sender_rss_idle_mib"], 10.0);
        assert_eq!(s["sender_rss_after_mib"], 11.0);
        assert_eq!(s["receiver_rss_after_mib"], 9.5);
        assert_eq!(s["udp_drops"], 3.0);
        // A reading it could not take is left out, not zero.
        assert!(!s.contains_key("receiver_rss_drained_mib"));
        assert!(!sample_of(&report(), None)
            .unwrap()
            .contains_key("udp_drops"));
        // Every key is one of the metrics the report shows.
        for k in s.keys() {
            assert!(METRICS.iter().any(|m| m.key == k), "{k}");
        }
    }

    #[test]
    fn a_run_that_loses_or_reorders_messages_is_a_failure() {
        let mut r = report();
        r["delivered"] = json!(1999);
        r["failure"] = json!("the run did not finish within 180s");
        assert_eq!(
            sample_of(&r, None).unwrap_err(),
            "delivered 1999 of 2000: the run did not finish within 180s"
        );
        let mut r = report();
        r["in_order"] = json!(false);
        r["out_of_order"] = json!(4);
        assert_eq!(
            sample_of(&r, None).unwrap_err(),
            "delivered 2000 of 2000, 4 out of order, 0 duplicated"
        );
        assert!(sample_of(&json!({}), None).is_err());
    }
}
