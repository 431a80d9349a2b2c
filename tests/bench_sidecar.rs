//! `bench sidecar` against two of our sidecars on loopback (ours gathers loopback
//! candidates; scripts/bench-sidecar.sh uses network namespaces for the reference),
//! signaling through a server started here. The bench is the sidecars' only IPC client,
//! as the agent would be.

mod common;

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
