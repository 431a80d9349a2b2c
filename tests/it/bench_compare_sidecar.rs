//! `bench compare --sidecar` with our sidecar as both sides (one small case, one round):
//! the report has its shape in JSON, the terminal table and HTML, both sides have every
//! number, memory ratios of a build against itself are near 1 (generous bounds: a shape
//! check, not a timed assertion), and the run's network namespaces, veth pair and
//! sockets' folder are gone when it returns. A side that cannot start is reported with
//! its reason while the other side's runs go on. Without root the command refuses with
//! a reason.
//!
//! `--sidecar` makes network namespaces: the tests that run it need root and iproute2's
//! `ip`; without them they say why on stderr and skip.
use crate::common;

use std::process::Command;

use common::sidecar::sidecar_binary;
use common::TempDir;
use serde_json::Value;

/// Why this process cannot make network namespaces, if it cannot.
fn cannot_make_namespaces() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap();
    if euid != "0" {
        return Some(format!("not root (effective uid {euid})"));
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("iproute2's `ip` is not on PATH".into()),
    }
}

fn skip(test: &str, why: &str) {
    common::skip(&format!(
        "{test}: {why}; `bench compare --sidecar` makes network namespaces \
         (run the suite as root with iproute2 to run it)"
    ));
}

fn stdout_of(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Nothing of the run is left: its namespaces, veth ends and sockets' folder.
fn assert_cleaned_up(r: &Value) {
    let netns = stdout_of("ip", &["netns", "list"]);
    for ns in r["netns"].as_array().unwrap() {
        let ns = ns.as_str().unwrap();
        assert!(ns.starts_with("cxbench-"), "{r}");
        assert!(!netns.contains(ns), "namespace {ns} left behind:\n{netns}");
    }
    let links = stdout_of("ip", &["-o", "link"]);
    for v in r["veth"].as_array().unwrap() {
        let v = v.as_str().unwrap();
        assert!(!links.contains(v), "veth {v} left behind:\n{links}");
    }
    let dir = r["socket_dir"].as_str().unwrap();
    assert!(!std::path::Path::new(dir).exists(), "{dir} left behind");
}

fn report(dir: &TempDir) -> Value {
    let text = std::fs::read_to_string(dir.0.join("report.json")).expect("report.json");
    serde_json::from_str(&text).expect("report.json is JSON")
}

#[test]
fn our_sidecar_against_itself_gives_a_full_report_and_leaves_nothing_behind() {
    if let Some(why) = cannot_make_namespaces() {
        return skip("our_sidecar_against_itself", &why);
    }
    let ours = sidecar_binary().display().to_string();
    let dir = TempDir::new();
    let (code, stdout, stderr) = common::bench::run(&[
        "bench",
        "compare",
        "--sidecar",
        "--baseline",
        &ours,
        "--baseline-name",
        "A",
        "--candidate",
        &ours,
        "--candidate-name",
        "B",
        "--sidecar-cases",
        "64:2000",
        "--quick",
        "--rounds",
        "1",
        "--json",
        "--out",
        dir.0.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stderr}\n{stdout}");
    // One progress line per run, with the first metric and its unit.
    assert!(stderr.contains("[2/2] sidecar-64B-x2k on "), "{stderr}");
    assert!(stderr.contains(" msg/s ("), "{stderr}");
    let printed: Value = serde_json::from_str(&stdout).expect("--json prints the report");
    let r = report(&dir);
    assert_eq!(printed, r);
    assert_eq!(r["kind"], "bench-compare");
    assert_eq!(r["mode"], "sidecar");
    assert_eq!(r["rounds"], 1);
    assert_eq!(r["cases"], serde_json::json!(["64:2000"]));
    assert_eq!(r["sides"][0]["name"], "A");
    assert_eq!(r["sides"][1]["spec"], ours.as_str());
    let scenarios = r["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), 1, "{r}");
    let s = &scenarios[0];
    assert_eq!(s["name"], "sidecar-64B-x2k");
    assert_eq!(s["status"], "ok", "{s}");
    for side in ["baseline", "candidate"] {
        assert_eq!(s[side]["runs_ok"], 1, "{s}");
        assert_eq!(s[side]["failures"], serde_json::json!([]), "{s}");
    }
    let metrics = s["metrics"].as_array().unwrap();
    let keys: Vec<&str> = metrics.iter().map(|m| m["key"].as_str().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "msg_per_s",
            "payload_mb_per_s",
            "sender_cpu_us_per_msg",
            "receiver_cpu_us_per_msg",
            "udp_drops",
            "sender_rss_idle_mib",
            "sender_rss_after_mib",
            "sender_rss_drained_mib",
            "receiver_rss_idle_mib",
            "receiver_rss_after_mib",
            "receiver_rss_drained_mib"
        ]
    );
    for m in metrics {
        let key = m["key"].as_str().unwrap();
        for side in ["baseline", "candidate"] {
            let v = m[side]
                .as_f64()
                .unwrap_or_else(|| panic!("{key} {side}: {m}"));
            // CPU per message can round to 0 ticks of 10 ms; drops can be 0.
            assert!(v.is_finite() && v >= 0.0, "{key}: {m}");
            assert_eq!(
                m[&format!("{side}_runs")].as_array().unwrap().len(),
                1,
                "{m}"
            );
        }
        if key == "msg_per_s" || key == "payload_mb_per_s" {
            assert!(m["baseline"].as_f64().unwrap() > 0.0, "{m}");
        }
        // Speed follows whatever else the machine runs, so only memory, which one short
        // run hardly moves, is held near 1 for a build against itself.
        if key.contains("_rss_") {
            let ratio = m["ratio"].as_f64().unwrap_or_else(|| panic!("{key}: {m}"));
            assert!(
                (0.2..=5.0).contains(&ratio),
                "{key}: same build, ratio {ratio}: {m}"
            );
            assert!(
                m["baseline"].as_f64().unwrap() > 1.0,
                "a sidecar in MiB: {m}"
            );
        }
    }
    assert_cleaned_up(&r);
    // Each run's driver report, sidecar logs and the signaling server's log are kept.
    let runs = dir.0.join("runs");
    let kept: Value = serde_json::from_str(
        &std::fs::read_to_string(runs.join("r1-sidecar-64B-x2k-candidate.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(kept["delivered"], 2000, "{kept}");
    assert_eq!(kept["label"], "B");
    assert!(runs.join("r1-sidecar-64B-x2k-baseline.a.log").exists());
    assert!(runs.join("signaling.log").exists());
    let page = std::fs::read_to_string(dir.0.join("report.html")).unwrap();
    assert_eq!(page.matches("<svg").count(), 1);
    assert!(page.contains("64:2000"), "the page names the cases");
}

#[test]
fn a_sidecar_that_cannot_start_is_reported_and_the_other_side_still_runs() {
    if let Some(why) = cannot_make_namespaces() {
        return skip("a_sidecar_that_cannot_start", &why);
    }
    let ours = sidecar_binary().display().to_string();
    let dir = TempDir::new();
    let (code, stdout, stderr) = common::bench::run(&[
        "bench",
        "compare",
        "--sidecar",
        "--baseline",
        "/nonexistent/chatixia-sidecar",
        "--candidate",
        &ours,
        "--sidecar-cases",
        "64:500",
        "--quick",
        "--rounds",
        "1",
        "--out",
        dir.0.to_str().unwrap(),
    ]);
    // Exit 3: the comparison ran, but not every case on both sides.
    assert_eq!(code, Some(3), "{stderr}\n{stdout}");
    // The table says who could not run what, and why.
    assert!(
        stdout
            .contains("! sidecar-64B-x500: baseline could not run it (round 1): sidecar A exited"),
        "{stdout}"
    );
    let r = report(&dir);
    let s = &r["scenarios"][0];
    assert_eq!(s["status"], "baseline failed", "{s}");
    let reason = s["baseline"]["failures"][0]["reason"].as_str().unwrap();
    // `sh` could not exec it (its message names the path); the pair was started afresh
    // before giving up.
    assert!(
        reason.contains("exited (exit status: 127)")
            && reason.contains("/nonexistent/chatixia-sidecar"),
        "{reason}"
    );
    assert!(reason.contains("started 3 times"), "{reason}");
    assert_eq!(s["candidate"]["runs_ok"], 1, "{s}");
    assert!(s["metrics"][0]["candidate"].as_f64().unwrap() > 0.0, "{s}");
    assert_eq!(s["metrics"][0]["ratio"], Value::Null);
    assert_cleaned_up(&r);
}

#[test]
fn without_root_it_refuses_and_says_why() {
    // As root, the refusal is checked as user nobody (setpriv drops the ids).
    let root = cannot_make_namespaces().is_none();
    let mut cmd = if root {
        if Command::new("setpriv").arg("--version").output().is_err() {
            return skip("without_root_it_refuses", "running as root and no setpriv");
        }
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_chatixia-core"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_chatixia-core"))
    };
    let dir = TempDir::new();
    let out = cmd
        .args([
            "bench",
            "compare",
            "--sidecar",
            "--baseline",
            "sidecar-a",
            "--candidate",
            "sidecar-b",
            "--out",
        ])
        .arg(dir.0.join("out"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if root && stderr.contains("Permission denied") {
        return skip(
            "without_root_it_refuses",
            "user nobody cannot execute the test binary here",
        );
    }
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--sidecar needs root") && stderr.contains("sudo"),
        "{stderr}"
    );
    // It refused before making anything.
    assert!(!dir.0.join("out").exists());
}
