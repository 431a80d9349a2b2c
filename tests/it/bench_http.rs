//! `bench keys` and `bench http` against a server started here, and the clear failure
//! on an unreachable or refusing target.
use crate::common;

use common::bench::{self, check_latency, Bench};

#[test]
fn keys_file_loads_in_the_server() {
    let keys: serde_json::Value = serde_json::from_str(&bench::keys(50, 5)).unwrap();
    let map = keys["keys"].as_object().unwrap();
    assert_eq!(map.len(), 50);
    let meshes: std::collections::BTreeSet<_> = map
        .values()
        .map(|e| e["mesh"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(meshes.len(), 5);
    // The server accepts every generated key.
    let b = Bench::start(1, 20, 1, &[]);
    let text = std::fs::read_to_string(&b.keys_path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in v["keys"].as_object().unwrap().keys() {
        let r = b
            .server
            .req("POST", "/api/token", &[("X-API-Key", key)], None);
        assert_eq!(r.status, 200);
    }
}

#[test]
fn closed_and_open_loop() {
    let b = Bench::start(1, 40, 1, &[]);
    let r = b.run(
        "http",
        &["--duration", "1.5", "--warmup", "0.3", "--concurrency", "8"],
    );
    assert_eq!(r["scenario"], "http");
    let ok = r["requests"]["ok"].as_u64().unwrap();
    assert!(ok > 50, "{r}");
    assert_eq!(r["requests"]["failed"], 0, "{r}");
    let per_op: u64 = r["ops"]
        .as_object()
        .unwrap()
        .values()
        .map(|o| o["ok"].as_u64().unwrap())
        .sum();
    assert_eq!(per_op, ok);
    check_latency(&r["latency_us"]);
    assert_eq!(r["latency_us"]["count"], ok);
    assert!(r["loadgen"]["cpu_s"].as_f64().unwrap() > 0.0, "{r}");
    // Open loop at 400 req/s for 1.5 s: about 600 measured requests.
    let r = b.run(
        "http",
        &[
            "--duration",
            "1.5",
            "--warmup",
            "0.2",
            "--concurrency",
            "4",
            "--rate",
            "400",
        ],
    );
    // Every request the schedule called for is accounted for: sent and answered, or
    // counted as unsent because the server (or this loaded machine) fell behind. Only
    // the sum is the schedule's; how many were answered depends on the machine.
    let ok = r["requests"]["ok"].as_u64().unwrap();
    let failed = r["requests"]["failed"].as_u64().unwrap();
    let unsent = r["unsent_behind_schedule"].as_u64().unwrap();
    assert!(ok > 0, "{r}");
    assert!((500..=620).contains(&(ok + failed + unsent)), "{r}");
    check_latency(&r["latency_us"]);
}

#[test]
fn unreachable_or_refusing_target_exits_non_zero_with_a_message() {
    let dir = common::TempDir::new();
    let keys = dir.0.join("k.json");
    std::fs::write(&keys, bench::keys(3, 1)).unwrap();
    let (_held, port) = common::refusing_port();
    let url = format!("http://127.0.0.1:{port}");
    for scenario in ["http", "ws-idle", "ws-relay", "storm"] {
        let mut args = vec![
            "bench",
            scenario,
            "--url",
            &url,
            "--keys",
            keys.to_str().unwrap(),
            "--json",
        ];
        if scenario == "ws-idle" {
            args.extend(["--connections", "2"]);
        }
        let (code, stdout, stderr) = bench::run(&args);
        assert_eq!(code, Some(1), "{scenario}: {stdout} {stderr}");
        assert!(
            stderr.contains("cannot reach") && stderr.contains("is the server running"),
            "{stderr}"
        );
        assert!(stdout.is_empty());
    }
    // A server that does not know the keys: 401, said plainly.
    let srv = common::Server::start(1);
    let (code, _, stderr) = bench::run(&[
        "bench",
        "http",
        "--url",
        &format!("http://{}", srv.addr),
        "--keys",
        keys.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("401") && stderr.contains("API_KEYS_FILE"),
        "{stderr}"
    );
}

/// `bench http --agent-per-connection`: each connection speaks for one agent, as an
/// agent process does; at `--cores 2` the server then moves the connections accepted
/// by the shard that does not own their agent (connection steering, issue 26), and
/// their heartbeats take no hop between shards. Without it one connection speaks for
/// many agents and its heartbeats keep taking the hop.
#[test]
fn agent_per_connection_heartbeats_are_served_where_their_agent_is() {
    let metric = |b: &Bench, name: &str| common::turn_rig::metric(&b.server, name, "");
    let args = |sticky: bool| {
        let mut a = vec![
            "--mix",
            "heartbeat=100",
            "--duration",
            "1",
            "--warmup",
            "0.3",
            "--concurrency",
            "16",
            "--agents",
            "16",
        ];
        if sticky {
            a.push("--agent-per-connection");
        }
        a
    };
    let b = Bench::start(2, 16, 1, &[]);
    let r = b.run("http", &args(true));
    assert_eq!(r["requests"]["failed"], 0, "{r}");
    let ok = r["requests"]["ok"].as_u64().unwrap();
    assert!(ok > 100, "{r}");
    let moved = metric(&b, "chatixia_http_connections_moved_total");
    assert!((1..=16).contains(&moved), "{moved} of 16 connections moved");
    let sent = metric(&b, "chatixia_mailbox_sent_total");
    let requests = metric(&b, "chatixia_http_requests_total");
    // Before a connection moves: two heartbeats with a hop each (and a skill ask or
    // two); the /metrics reads: one each way. Without steering: about one per request.
    assert!(
        sent * 10 < requests,
        "{sent} mailbox messages for {requests} requests"
    );
    // The rotating client: every heartbeat may name either shard, so a connection moves
    // at most twice and then stays: the hops go on.
    let b = Bench::start(2, 16, 1, &[]);
    let r = b.run("http", &args(false));
    assert_eq!(r["requests"]["failed"], 0, "{r}");
    let moved = metric(&b, "chatixia_http_connections_moved_total");
    assert!(moved <= 2 * 16, "{moved} moves of 16 connections");
    let sent = metric(&b, "chatixia_mailbox_sent_total");
    let requests = metric(&b, "chatixia_http_requests_total");
    assert!(
        sent * 4 > requests,
        "{sent} mailbox messages for {requests} requests of a rotating client"
    );
}
