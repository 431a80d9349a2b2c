//! `bench ws-idle` against a server started here: reaches the requested count, spread
//! over loopback source addresses, and reports the server's RSS per connection.
use crate::common;

use common::bench::{check_latency, Bench};

#[test]
fn holds_500_registered_connections() {
    let b = Bench::start(1, 520, 4, &[]);
    let pid = b.server.child.id().to_string();
    let r = b.run(
        "ws-idle",
        &[
            "--connections",
            "500",
            "--hold",
            "1",
            "--server-pid",
            &pid,
            "--source-ips",
            "8",
        ],
    );
    assert_eq!(r["scenario"], "ws-idle");
    assert_eq!(r["requested"], 500, "{r}");
    assert_eq!(r["established"], 500, "{r}");
    assert_eq!(r["reached"], true, "{r}");
    assert!(r["stopped_by"].is_null(), "{r}");
    assert_eq!(r["dropped_during_hold"], 0, "{r}");
    assert_eq!(r["tokens_fetched"], 500, "{r}");
    check_latency(&r["connect_latency_us"]);
    assert_eq!(r["connect_latency_us"]["count"], 500);
    assert!(r["connect_rate_per_s"].as_f64().unwrap() > 0.0);
    let rss = &r["server_rss"];
    assert!(rss["before_kib"].as_u64().unwrap() > 0, "{r}");
    assert!(
        rss["after_kib"].as_u64().unwrap() >= rss["before_kib"].as_u64().unwrap(),
        "{r}"
    );
    assert!(rss["per_connection_kib"].as_f64().is_some(), "{r}");
    // The server's CPU over the connect phase, from /proc/PID/stat.
    let cpu = &r["server_cpu"];
    assert_eq!(cpu["pid"].as_u64(), Some(b.server.child.id() as u64), "{r}");
    assert!(cpu["window_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(cpu["cpu_s"].as_f64().unwrap() >= 0.0, "{r}");
    assert!(cpu["cpu_us_per_op"].as_f64().is_some(), "{r}");
    // Four meshes of 130 peers: each register lists the other registered peers of its
    // mesh, so the lists are never longer than a mesh.
    assert!(r["peers_listed_total"].as_u64().unwrap() < 500 * 130, "{r}");
}

#[test]
fn too_few_keys_is_a_clear_error() {
    let b = Bench::start(1, 5, 1, &[]);
    let (code, _, stderr) = common::bench::run(&[
        "bench",
        "ws-idle",
        "--url",
        &b.url(),
        "--keys",
        b.keys_path.to_str().unwrap(),
        "--connections",
        "10",
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("bench keys --count 10"), "{stderr}");
}

#[test]
fn a_server_limit_stops_it_and_is_named() {
    // The server takes at most 50 signaling connections from one client IP.
    let b = Bench::start(1, 120, 1, &["--max-connections-per-ip", "50"]);
    let (code, stdout, stderr) = common::bench::run(&[
        "bench",
        "ws-idle",
        "--url",
        &b.url(),
        "--keys",
        b.keys_path.to_str().unwrap(),
        "--connections",
        "100",
        "--hold",
        "0",
        "--source-ips",
        "1",
        "--json",
        "--no-pin",
    ]);
    assert_eq!(code, Some(3), "{stdout} {stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["reached"], false);
    assert_eq!(r["stopped_by"]["kind"], "http 503", "{r}");
    assert!(r["established"].as_u64().unwrap() <= 50, "{r}");
    assert!(
        stderr.contains("stopped at") && stderr.contains("503"),
        "{stderr}"
    );
}
