//! `bench compare` with chatixia-core as both sides (quick mode, one round): every
//! scenario runs on both, the report has its shape in the terminal, JSON and HTML, and
//! the ratios of a build against itself are near 1 (generous bounds: this is a shape
//! check, not a timed assertion). A side that cannot start is reported with its reason
//! while the other side's runs go on.
use crate::common;

use common::TempDir;
use serde_json::Value;

/// Our server as a command for `--baseline` / `--candidate`.
fn ours() -> String {
    format!(
        "{} --cores 1 --stun-url none",
        env!("CARGO_BIN_EXE_chatixia-core")
    )
}

fn report(dir: &TempDir) -> Value {
    let text = std::fs::read_to_string(dir.0.join("report.json")).expect("report.json");
    serde_json::from_str(&text).expect("report.json is JSON")
}

#[test]
fn a_build_against_itself_runs_every_scenario_with_ratios_near_one() {
    let dir = TempDir::new();
    let out = dir.0.to_str().unwrap();
    let (code, stdout, stderr) = common::bench::run(&[
        "bench",
        "compare",
        "--baseline",
        &ours(),
        "--baseline-name",
        "A",
        "--candidate",
        &ours(),
        "--candidate-name",
        "B",
        "--quick",
        "--rounds",
        "1",
        "--out",
        out,
    ]);
    assert_eq!(code, Some(0), "{stderr}\n{stdout}");
    // The terminal table: a header naming both sides, every scenario, the ratio.
    assert!(
        stdout.contains("scenario") && stdout.contains(" A ") && stdout.contains(" B "),
        "{stdout}"
    );
    // The progress lines (one per run) went to stderr.
    assert!(stderr.contains("[12/12]"), "{stderr}");

    let r = report(&dir);
    assert_eq!(r["kind"], "bench-compare");
    assert_eq!(r["rounds"], 1);
    assert_eq!(r["sides"][0]["name"], "A");
    assert_eq!(r["sides"][1]["role"], "candidate");
    let scenarios = r["scenarios"].as_array().unwrap();
    let names: Vec<&str> = scenarios
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "heartbeat",
            "http-mix",
            "relay-100-keys",
            "relay-300-keys",
            "connect-idle-300",
            "storm"
        ]
    );
    for s in scenarios {
        let name = s["name"].as_str().unwrap();
        assert_eq!(s["status"], "ok", "{s}");
        for side in ["baseline", "candidate"] {
            assert_eq!(s[side]["runs_ok"], 1, "{s}");
            assert_eq!(s[side]["failures"], serde_json::json!([]), "{s}");
        }
        let metrics = s["metrics"].as_array().unwrap();
        let keys: Vec<&str> = metrics.iter().map(|m| m["key"].as_str().unwrap()).collect();
        assert!(
            keys.starts_with(&[
                "throughput_per_s",
                "p50_us",
                "p99_us",
                "p999_us",
                "cpu_us_per_op"
            ]),
            "{s}"
        );
        assert_eq!(
            keys.contains(&"rss_kib_per_conn"),
            name.starts_with("connect-idle"),
            "{s}"
        );
        assert_eq!(keys.contains(&"lost_pct"), name.starts_with("relay"), "{s}");
        for m in metrics {
            let key = m["key"].as_str().unwrap();
            // Started servers have known PIDs: every figure is there on both sides,
            // except that a CPU window can round to 0 ticks of 10 ms.
            for side in ["baseline", "candidate"] {
                let v = m[side]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{name} {key} {side}: {m}"));
                assert!(v.is_finite() && v >= 0.0, "{name} {key}: {m}");
                assert_eq!(
                    m[&format!("{side}_runs")].as_array().unwrap().len(),
                    1,
                    "{m}"
                );
            }
            if key == "lost_pct" {
                // Our relay loses nothing (as tests/it/bench_ws_relay.rs asserts).
                assert_eq!(m["baseline"], 0.0, "{name}: {m}");
                assert_eq!(m["candidate"], 0.0, "{name}: {m}");
                continue;
            }
            if key == "cpu_us_per_op" {
                if let Some(ratio) = m["ratio"].as_f64() {
                    assert!(ratio.is_finite() && ratio >= 0.0, "{name}: {m}");
                }
                continue;
            }
            let ratio = m["ratio"]
                .as_f64()
                .unwrap_or_else(|| panic!("{name} {key}: {m}"));
            assert!(ratio.is_finite(), "{name} {key}: {m}");
            // Throughput and latency follow whatever else the machine runs (one short
            // run a side here), so only memory, which the load does not move, is held
            // near 1; speed is proven by benchmarks, not by this test.
            if key == "rss_kib_per_conn" {
                assert!(
                    (0.2..=5.0).contains(&ratio),
                    "{name} {key}: same build, ratio {ratio}: {m}"
                );
            }
        }
    }
    // The page: one inline SVG chart per scenario, nothing fetched from elsewhere.
    let page = std::fs::read_to_string(dir.0.join("report.html")).unwrap();
    assert_eq!(page.matches("<svg").count(), scenarios.len());
    assert!(
        !page.contains("src=") && !page.contains("<link"),
        "external asset in the page"
    );
    // Each run's raw report is kept.
    assert!(dir.0.join("runs/r1-storm-candidate.json").exists());
}

#[test]
fn a_side_that_cannot_run_is_reported_and_the_other_side_still_runs() {
    let dir = TempDir::new();
    let out = dir.0.to_str().unwrap();
    let (code, stdout, stderr) = common::bench::run(&[
        "bench",
        "compare",
        "--baseline",
        "/nonexistent/chatixia-registry",
        "--candidate",
        &ours(),
        "--quick",
        "--rounds",
        "2",
        "--scenarios",
        "heartbeat",
        "--json",
        "--out",
        out,
    ]);
    // Exit 3: the comparison ran, but not every scenario on both sides.
    assert_eq!(code, Some(3), "{stderr}\n{stdout}");
    let printed: Value = serde_json::from_str(&stdout).expect("--json prints the report");
    let r = report(&dir);
    assert_eq!(printed, r);
    let s = &r["scenarios"][0];
    assert_eq!(s["name"], "heartbeat");
    assert_eq!(s["status"], "baseline failed");
    assert_eq!(s["baseline"]["runs_ok"], 0);
    let failures = s["baseline"]["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2);
    let reason = failures[0]["reason"].as_str().unwrap();
    assert!(reason.contains("exited"), "{reason}");
    assert_eq!(s["candidate"]["runs_ok"], 2);
    let tp = &s["metrics"][0];
    assert_eq!(tp["baseline"], Value::Null);
    assert_eq!(tp["ratio"], Value::Null);
    assert!(tp["candidate"].as_f64().unwrap() > 0.0, "{tp}");
    let page = std::fs::read_to_string(dir.0.join("report.html")).unwrap();
    assert!(
        page.contains("could not run it"),
        "the page names the failure"
    );
}
