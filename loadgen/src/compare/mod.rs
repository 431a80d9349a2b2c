//! `bench compare`: two builds side by side. Each side is a command (started by the
//! tool, fresh for every run, pinned to the same CPU set, one tokio worker for a
//! tokio server) or the URL of a running server. For N rounds, every scenario runs
//! on both sides back to back, the order alternating per round, so slow drifts of a
//! shared machine fall on both. The report (medians, ratios) goes to the terminal, to
//! `<out>/report.json` and to `<out>/report.html`.
//!
//! With `--sidecar` the two sides are sidecar binaries instead, and the scenarios are
//! the sidecar data-plane cases ([`sidecars`]), run in two network namespaces
//! ([`lab`]); the same harness ([`harness`]) runs them and writes the same report.
//!
//! The harness is generic over [`scenarios::Scenario`]: see that module for how a kind
//! of scenario plugs in.

pub mod html;
pub mod lab;
pub mod report;
pub mod scenarios;
pub mod server;
pub mod sidecars;

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use serde_json::{json, Value};

use report::{RunResult, ScenarioRuns, ROLES};
use scenarios::{Ctx, Scenario, Sizes};
use server::{Launch, Side, Spec};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The build compared against: a command line that starts a server (run fresh for
    /// every run with PORT, API_KEYS_FILE, SIGNALING_SECRET, TOKIO_WORKER_THREADS=1 set;
    /// one program, exec'd) or the http:// URL of a running server. With --sidecar: the
    /// command of a sidecar (configured by environment as the agent does; one program,
    /// exec'd).
    #[arg(long)]
    pub baseline: String,
    /// The build measured: a command line or an http:// URL, as --baseline.
    #[arg(long)]
    pub candidate: String,
    /// Name of the baseline in the report.
    #[arg(long, default_value = "baseline")]
    pub baseline_name: String,
    /// Name of the candidate in the report.
    #[arg(long, default_value = "candidate")]
    pub candidate_name: String,
    /// Compare two sidecar binaries (--baseline, --candidate) instead of two registries:
    /// per case and round a fresh pair of each side's sidecars in two network namespaces
    /// joined by a veth pair, driven by `bench sidecar`. Needs root (it makes the
    /// namespaces with `ip netns`); they are removed when the run ends, also on Ctrl-C.
    #[arg(long, conflicts_with_all = [
        "baseline_pid", "candidate_pid", "duration", "warmup", "scenarios",
        "server_cpus", "loadgen_cores", "keys",
    ])]
    pub sidecar: bool,
    /// With --sidecar: the cases, SIZE:COUNT comma-separated (payload bytes per message :
    /// messages sent A → B). Default 64:20000,1024:20000,16384:2000; with --quick
    /// 64:2000,1024:2000,16384:200.
    #[arg(long, value_delimiter = ',', requires = "sidecar")]
    pub sidecar_cases: Vec<String>,
    /// With --sidecar: the signaling server both sidecars use, a command started once in
    /// namespace A (configured as a --baseline registry command, with PORT, API_KEYS_FILE,
    /// …). Default: this chatixia-core with --cores 1.
    #[arg(long, requires = "sidecar")]
    pub signaling_server: Option<String>,
    /// With --sidecar: seconds one measured sidecar run may take before it is reported
    /// as incomplete (default 180).
    #[arg(long, requires = "sidecar")]
    pub sidecar_timeout: Option<f64>,
    /// With a URL baseline: its server's PID, for its CPU and RSS.
    #[arg(long)]
    pub baseline_pid: Option<u32>,
    /// With a URL candidate: its server's PID.
    #[arg(long)]
    pub candidate_pid: Option<u32>,
    /// Folder for report.json, report.html, and each run's raw report and logs.
    #[arg(long)]
    pub out: PathBuf,
    /// Rounds; each runs every scenario once on each side.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds measured per timed scenario.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seconds of load before measuring.
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Small counts and 1 s runs (for tests and a first look; not for numbers).
    #[arg(long)]
    pub quick: bool,
    /// Only these scenarios (comma-separated names, as in the report).
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// CPU list (taskset -c) started servers are pinned to; default: the last CPU.
    #[arg(long)]
    pub server_cpus: Option<String>,
    /// Shards of the load generator (pinned from CPU 0 up).
    #[arg(long, default_value_t = 1)]
    pub loadgen_cores: usize,
    /// The keys file the servers load: required for URL targets; started servers load
    /// it too when given (it needs 10,000 peers, 400 with --quick), else one the tool
    /// writes into --out.
    #[arg(long)]
    pub keys: Option<PathBuf>,
    /// Print the JSON report on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Runs the comparison; `(report, ok)`: ok when every scenario ran on both sides.
pub fn run(args: Args, argv: &[String]) -> Result<(Value, bool), String> {
    if args.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    if args.sidecar {
        return sidecars::run(&args, argv);
    }
    let sides = [
        Side {
            role: ROLES[0],
            name: args.baseline_name.clone(),
            spec: Spec::parse(&args.baseline, args.baseline_pid)
                .map_err(|e| format!("--baseline: {e}"))?,
        },
        Side {
            role: ROLES[1],
            name: args.candidate_name.clone(),
            spec: Spec::parse(&args.candidate, args.candidate_pid)
                .map_err(|e| format!("--candidate: {e}"))?,
        },
    ];
    let sizes = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let duration = super::secs(
        "--duration",
        args.duration.unwrap_or(if args.quick { 1.0 } else { 5.0 }),
    )?;
    let warmup = super::secs(
        "--warmup",
        args.warmup.unwrap_or(if args.quick { 0.3 } else { 1.0 }),
    )?;
    if duration.is_zero() {
        return Err("--duration must be positive".into());
    }
    let runs_dir = args.out.join("runs");
    std::fs::create_dir_all(&runs_dir).map_err(|e| format!("{}: {e}", runs_dir.display()))?;
    let any_command = sides.iter().any(|s| matches!(s.spec, Spec::Command(_)));
    // Two keys files: the relay runs once with each (the reference's relay slows
    // down with the number of keys); every other scenario uses the large one.
    let (keys, keys_small) = match &args.keys {
        Some(k) => (k.clone(), k.clone()),
        None if any_command => {
            let k = args.out.join("api_keys.json");
            super::keys::run(sizes.peers_needed(), 1, Some(&k))?;
            let small = args.out.join(format!("api_keys_{}.json", sizes.small_keys));
            super::keys::run(sizes.small_keys, 1, Some(&small))?;
            (k, small)
        }
        None => return Err("--keys: give the keys file the URL targets load".into()),
    };
    let cpus = args
        .server_cpus
        .clone()
        .unwrap_or_else(server::default_cpus);
    let exe = std::env::current_exe().map_err(|e| format!("locating chatixia-core: {e}"))?;
    let ctx = Rc::new(Ctx {
        exe,
        launch: Launch {
            cpus: cpus.clone(),
            keys: keys.clone(),
            secret: "bench-compare-secret".into(),
            log_dir: runs_dir.clone(),
        },
        keys_small,
        runs_dir,
        loadgen_cores: args.loadgen_cores.max(1),
        duration: duration.as_secs_f64(),
        warmup: warmup.as_secs_f64(),
    });
    let mut list = scenarios::all(&sizes, &ctx);
    if !args.scenarios.is_empty() {
        let names: Vec<String> = list.iter().map(|s| s.name()).collect();
        for want in &args.scenarios {
            if !names.contains(want) {
                return Err(format!(
                    "--scenarios: no scenario {want:?} (there are: {})",
                    names.join(", ")
                ));
            }
        }
        list.retain(|s| args.scenarios.contains(&s.name()));
    }
    let meta = json!({
        "mode": "registry",
        "quick": args.quick,
        "duration_s": duration.as_secs_f64(),
        "warmup_s": warmup.as_secs_f64(),
        "server_cpus": cpus,
        "loadgen_cores": ctx.loadgen_cores,
        "keys": keys,
    });
    harness(&args, argv, &sides, &list, meta)
}

/// Runs every scenario of `list` on both sides for `args.rounds` rounds (the order
/// alternating per round), with a progress line on stderr, and writes the report
/// (`meta` plus the command, timing and sides) to `<out>/report.json` and
/// `<out>/report.html`; `(report, ok)`: ok when every scenario ran on both sides.
pub fn harness(
    args: &Args,
    argv: &[String],
    sides: &[Side; 2],
    list: &[Box<dyn Scenario>],
    meta: Value,
) -> Result<(Value, bool), String> {
    let mut results: Vec<ScenarioRuns> = list
        .iter()
        .map(|s| ScenarioRuns {
            name: s.name(),
            title: s.title(),
            metrics: s.metrics(),
            runs: Vec::new(),
        })
        .collect();
    let total = (args.rounds * list.len() * 2) as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "compare {elapsed_precise} [{bar:24}] {pos}/{len} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let say = |line: String| {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    let started_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| wire::time::UnixTime::from_secs(d.as_secs()).to_rfc3339())
        .unwrap_or_default();
    let t0 = Instant::now();
    for round in 0..args.rounds {
        for (k, scenario) in list.iter().enumerate() {
            // Alternate which side goes first, so neither always runs on a warmer or
            // cooler machine.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            let headline = results[k].metrics.first().copied();
            for side in order {
                let name = &results[k].name;
                bar.set_message(format!(
                    "round {}/{} · {name} · {}",
                    round + 1,
                    args.rounds,
                    sides[side].name
                ));
                let tag = format!("r{}-{name}-{}", round + 1, ROLES[side]);
                let t = Instant::now();
                let outcome = scenario.run(&sides[side], &tag);
                let wall_s = t.elapsed().as_secs_f64();
                say(match &outcome {
                    Ok(s) => format!(
                        "[{}/{total}] {name} on {}: {} ({wall_s:.1} s)",
                        bar.position() + 1,
                        sides[side].name,
                        headline.map_or("?".into(), |m| format!(
                            "{} {}",
                            s.get(m.key).map_or("?".into(), |v| report::fmt_num(*v)),
                            m.unit
                        )),
                    ),
                    Err(e) => format!(
                        "[{}/{total}] {name} on {}: cannot: {e}",
                        bar.position() + 1,
                        sides[side].name
                    ),
                });
                results[k].runs.push(RunResult {
                    round,
                    side,
                    outcome,
                    wall_s,
                });
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    let mut meta = meta;
    meta["command"] = json!(shell_words(argv));
    meta["started_at"] = json!(started_at);
    meta["wall_s"] = json!(super::round3(t0.elapsed().as_secs_f64()));
    meta["rounds"] = json!(args.rounds);
    meta["sides"] = sides
        .iter()
        .map(|s| json!({"role": s.role, "name": s.name, "spec": s.spec.describe()}))
        .collect();
    let report = report::build(meta, &results);
    let ok = report["scenarios"]
        .as_array()
        .is_some_and(|v| v.iter().all(|s| s["status"] == "ok"));
    let write = |name: &str, text: &str| {
        let p = args.out.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
    };
    write(
        "report.json",
        &serde_json::to_string_pretty(&report).expect("serialisable"),
    )?;
    write("report.html", &html::page(&report))?;
    Ok((report, ok))
}

/// The command line as one could paste it into a shell.
pub fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_are_quoted_for_a_shell() {
        let argv: Vec<String> = [
            "chatixia-core",
            "bench",
            "compare",
            "--baseline",
            "/x/ref reg",
            "--candidate",
            "it's",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            shell_words(&argv),
            r"chatixia-core bench compare --baseline '/x/ref reg' --candidate 'it'\''s'"
        );
    }
}
