//! `bench sidecar` against two of our sidecars on loopback (ours gathers loopback
//! candidates; scripts/bench-sidecar.sh uses network namespaces for the reference),
//! signaling through a server started here. The bench is the sidecars' only IPC client,
//! as the agent would be.

use crate::common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::bench::run;
use common::sidecar::{peer_id, server_for, sidecar_binary, sidecar_env};
use common::{Server, TempDir};

/// A sidecar process (no IPC connection of its own), killed on drop.
struct Bare(Child);

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(server: &Server, name: &str, dir: &Path) -> Bare {
    let socket = dir.join(format!("{name}.sock"));
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new(sidecar_binary())
        .env_clear()
        .envs(sidecar_env(server, name, &socket))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn chatixia-sidecar");
    Bare(child)
}

#[test]
fn delivers_every_message_in_order_and_reports_both_sidecars() {
    let server = server_for(1, &["ba", "bb"]);
    let dir = TempDir::new();
    let a = spawn(&server, "ba", &dir.0);
    let b = spawn(&server, "bb", &dir.0);
    let (sa, sb) = (dir.0.join("ba.sock"), dir.0.join("bb.sock"));
    let (pa, pb) = (a.0.id().to_string(), b.0.id().to_string());
    let (code, out, err) = run(&[
        "bench",
        "sidecar",
        "--a-socket",
        sa.to_str().unwrap(),
        "--b-socket",
        sb.to_str().unwrap(),
        "--b-peer",
        &peer_id("bb"),
        "--a-pid",
        &pa,
        "--b-pid",
        &pb,
        "--count",
        "2000",
        "--size",
        "100",
        "--drain-ms",
        "100",
        "--label",
        "ours",
        "--json",
    ]);
    let logs = || {
        format!(
            "{err}\n--- A ---\n{}\n--- B ---\n{}",
            std::fs::read_to_string(dir.0.join("ba.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.0.join("bb.log")).unwrap_or_default()
        )
    };
    assert_eq!(code, Some(0), "bench sidecar failed: {out}{}", logs());
    let r: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(r["scenario"], "sidecar");
    assert_eq!(r["label"], "ours");
    assert_eq!(r["delivered"], 2000, "{r}");
    assert_eq!(r["in_order"], true, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    assert!(r["failure"].is_null(), "{r}");
    assert!(r["msg_per_s"].as_f64().unwrap() > 0.0, "{r}");
    // The DataChannel message is the payload plus the MeshMessage envelope.
    assert!(r["message_bytes"].as_u64().unwrap() > 100, "{r}");
    for side in ["sender", "receiver"] {
        let s = &r[side];
        assert!(s["cpu_s"].as_f64().is_some(), "{side}: {r}");
        for k in ["rss_idle_kib", "rss_after_kib", "rss_drained_kib"] {
            assert!(s[k].as_u64().unwrap() > 1000, "{side}.{k}: {r}");
        }
    }
    assert_eq!(r["errors"]["a"], 0, "{r}");
    assert_eq!(r["sender"]["pid"].as_u64(), Some(a.0.id() as u64));
}

#[test]
fn an_unknown_receiver_is_a_clear_error() {
    let server = server_for(1, &["ua", "ub"]);
    let dir = TempDir::new();
    let _a = spawn(&server, "ua", &dir.0);
    let _b = spawn(&server, "ub", &dir.0);
    let (code, _out, err) = run(&[
        "bench",
        "sidecar",
        "--a-socket",
        dir.0.join("ua.sock").to_str().unwrap(),
        "--b-socket",
        dir.0.join("ub.sock").to_str().unwrap(),
        "--b-peer",
        "nobody",
        "--connect-timeout",
        "2",
        "--count",
        "10",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("A did not list peer nobody"), "{err}");
}

/// Several receivers (`--b-socket`/`--b-peer`/`--b-pid` once each): the sender writes
/// round-robin, every receiver gets its share in order, and `--repeat` measures the
/// block more than once on the same connections.
#[test]
fn round_robin_to_three_receivers_repeated() {
    let names = ["ra", "rb0", "rb1", "rb2"];
    let server = server_for(1, &names);
    let dir = TempDir::new();
    let procs: Vec<Bare> = names.iter().map(|n| spawn(&server, n, &dir.0)).collect();
    let sock = |n: &str| {
        dir.0
            .join(format!("{n}.sock"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let mut args: Vec<String> = ["bench", "sidecar", "--a-socket"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(sock("ra"));
    args.extend(["--a-pid".into(), procs[0].0.id().to_string()]);
    for (i, n) in names.iter().enumerate().skip(1) {
        args.extend(["--b-socket".into(), sock(n)]);
        args.extend(["--b-peer".into(), peer_id(n)]);
        args.extend(["--b-pid".into(), procs[i].0.id().to_string()]);
    }
    for a in [
        "--count",
        "300",
        "--repeat",
        "3",
        "--size",
        "50",
        "--drain-ms",
        "100",
        "--json",
    ] {
        args.push(a.into());
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = run(&argv);
    assert_eq!(code, Some(0), "bench sidecar failed: {out}{err}");
    let r: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(r["receivers"], 3, "{r}");
    assert_eq!(r["repeat"], 3, "{r}");
    assert_eq!(r["delivered"], 900, "{r}");
    assert_eq!(r["in_order"], true, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    assert_eq!(
        r["repetitions"]["msg_per_s"].as_array().map(Vec::len),
        Some(3),
        "{r}"
    );
    // Receivers together: three processes, CPU from the scheduler's nanoseconds.
    assert_eq!(r["receiver"]["processes"], 3, "{r}");
    assert_eq!(r["receiver"]["cpu_source"], "schedstat", "{r}");
    assert!(
        r["receiver"]["rss_after_kib"].as_u64().unwrap() > 1000,
        "{r}"
    );
    assert_eq!(r["sender"]["pid"].as_u64(), Some(procs[0].0.id() as u64));

    // A receiver count that does not match the peer ids is refused up front.
    let (code, _, err) = run(&[
        "bench",
        "sidecar",
        "--a-socket",
        &sock("ra"),
        "--b-socket",
        &sock("rb0"),
        "--b-socket",
        &sock("rb1"),
        "--b-peer",
        &peer_id("rb0"),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("2 --b-socket but 1 --b-peer"), "{err}");
}
