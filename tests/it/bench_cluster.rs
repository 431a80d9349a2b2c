//! `bench ws-relay` over two nodes of a cluster (issue 25), with a real `redis-server`:
//! `--target` once per node places each pair's peers on both nodes, every frame in the
//! window is relayed across nodes, and the report carries both nodes' CPU and Redis's
//! command counts (one RELAY script, one SPUBLISH, per message). `--same-node` is the
//! control: the same load without Redis in the path.
use crate::common;

use std::time::{Duration, Instant};

use common::bench::check_latency;
use common::redis::{self, Redis};
use common::{Opts, Server, TempDir};
use serde_json::Value;

fn node(redis: &Redis, id: &str, keys: &str) -> Server {
    let mut o = Opts::cores(1);
    o.keys = Some(keys.to_string());
    o.args = vec![
        "--cluster".into(),
        redis.url(),
        "--node-id".into(),
        id.into(),
    ];
    let srv = Server::with(o);
    let deadline = Instant::now() + Duration::from_secs(20);
    while srv.get("/readyz").status != 200 {
        assert!(Instant::now() < deadline, "{id} never ready\n{}", srv.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    srv
}

/// `bench ws-relay --target A --target B … --json`; the report.
fn relay(keys: &std::path::Path, nodes: &[&Server], redis: &Redis, extra: &[&str]) -> Value {
    let urls: Vec<String> = nodes.iter().map(|n| format!("http://{}", n.addr)).collect();
    let pids: Vec<String> = nodes.iter().map(|n| n.child.id().to_string()).collect();
    let redis_url = redis.url();
    let mut args: Vec<&str> = vec!["bench", "ws-relay", "--keys", keys.to_str().unwrap()];
    for u in &urls {
        args.extend(["--target", u]);
    }
    for p in &pids {
        args.extend(["--server-pid", p]);
    }
    args.extend(["--redis", &redis_url, "--json", "--no-pin"]);
    args.extend(["--peers", "20", "--rate", "500", "--duration", "1"]);
    args.extend(["--warmup", "0.5"]);
    args.extend(extra);
    let (code, stdout, stderr) = common::bench::run(&args);
    assert_eq!(code, Some(0), "ws-relay failed: {stderr}\n{stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn delivered(r: &Value) -> u64 {
    let sent = r["messages"]["sent"].as_u64().unwrap();
    let received = r["messages"]["received"].as_u64().unwrap();
    // 500 msg/s for 1 s.
    assert!((400..=600).contains(&sent), "{r}");
    assert_eq!(sent, received, "{r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    check_latency(&r["latency_us"]);
    received
}

fn calls(r: &Value, command: &str) -> u64 {
    r["redis"]["calls"][command].as_u64().unwrap_or(0)
}

#[test]
fn relays_across_two_nodes_with_their_cpu_and_redis_counts() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let dir = TempDir::new();
    let keys = common::bench::keys(20, 1);
    let keys_path = dir.0.join("api_keys.json");
    std::fs::write(&keys_path, &keys).unwrap();
    let (a, b) = (node(&redis, "node-a", &keys), node(&redis, "node-b", &keys));

    // Across nodes: each pair has one peer on A and one on B.
    let r = relay(&keys_path, &[&a, &b], &redis, &[]);
    assert_eq!(r["placement"], "pairs across nodes", "{r}");
    assert_eq!(r["peers_per_node"], serde_json::json!([10, 10]), "{r}");
    let n = delivered(&r);
    // Every relay in the window went through Redis: one RELAY script (EVALSHA) and the
    // HGETs and SPUBLISH it runs per message (plus the links' own lease renewals and
    // probes). Redis is read as the window opens and after it drains, so a message or two
    // at the opening edge may fall either side.
    let about_n = |c: u64| c + n / 20 >= n && c <= n + n / 20 + 10;
    assert!(about_n(calls(&r, "evalsha")), "{r}");
    // Two HGETs each: the target's node, and that node's shard count.
    assert!(about_n(calls(&r, "hget") / 2), "{r}");
    assert!(about_n(calls(&r, "spublish")), "{r}");
    let per = r["redis"]["evalsha_per_msg"].as_f64().unwrap();
    assert!((0.95..=1.05).contains(&per), "{r}");
    // Both nodes' CPU, each and summed.
    let cpu = &r["server_cpu"];
    let each = cpu["each"].as_array().unwrap();
    assert_eq!(each.len(), 2, "{r}");
    assert_eq!(each[0]["pid"], a.child.id(), "{r}");
    assert_eq!(each[1]["pid"], b.child.id(), "{r}");
    let sum: f64 = each.iter().map(|e| e["cpu_s"].as_f64().unwrap()).sum();
    assert!((cpu["cpu_s"].as_f64().unwrap() - sum).abs() < 0.002, "{r}");
    assert!(cpu["cpu_us_per_op"].as_f64().is_some(), "{r}");

    // The control: the same load with each pair on one node never touches Redis but for
    // the links' background commands (a renewal every 3 s and a probe every 2 s per node).
    let r = relay(&keys_path, &[&a, &b], &redis, &["--same-node"]);
    assert_eq!(r["placement"], "pairs within a node", "{r}");
    assert_eq!(r["peers_per_node"], serde_json::json!([10, 10]), "{r}");
    let n = delivered(&r);
    assert!(calls(&r, "evalsha") < n / 20, "{r}");
    assert!(calls(&r, "spublish") < n / 20, "{r}");
}

#[test]
fn one_target_is_a_clear_error() {
    let dir = TempDir::new();
    let keys_path = dir.0.join("api_keys.json");
    std::fs::write(&keys_path, common::bench::keys(4, 1)).unwrap();
    let (code, _, stderr) = common::bench::run(&[
        "bench",
        "ws-relay",
        "--target",
        "http://127.0.0.1:9",
        "--keys",
        keys_path.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("once per node"), "{stderr}");
    let (code, _, stderr) = common::bench::run(&[
        "bench",
        "ws-relay",
        "--target",
        "http://127.0.0.1:9",
        "--target",
        "http://127.0.0.1:10",
        "--url",
        "http://127.0.0.1:11",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--url"), "{stderr}");
}
