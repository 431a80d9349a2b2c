//! Several nodes as one mesh over Redis (issue 25), with a real `redis-server` and real
//! WebSocket clients: peer lists and relays across nodes in every direction, relays
//! within a node that never touch Redis, a peer moving between nodes, `kill -9` of a
//! node, SIGTERM handing the lease back, and Redis stopped and restarted while a node
//! keeps relaying between its own peers.
use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::redis::{self, Redis};
use common::ws::{self, connect, recv, recv_close, send, Ws};
use common::{Opts, Server};
use serde_json::{json, Value};

/// One API key per peer (and the mesh it is in), and the operator's (`ak_test_admin`),
/// the same file on every node.
fn keys(peers: &[(&str, Option<&str>)]) -> String {
    let mut keys = serde_json::Map::new();
    keys.insert(
        "ak_test_admin".into(),
        json!({"peer_id": "admin-1", "role": "admin"}),
    );
    for (p, mesh) in peers {
        let mut e = json!({"peer_id": p, "role": "agent"});
        if let Some(m) = mesh {
            e["mesh"] = json!(m);
        }
        keys.insert(format!("ak_{p}"), e);
    }
    json!({ "keys": keys }).to_string()
}

/// A node of the cluster on `redis`: `--cluster`, `--node-id`, a short lease.
fn node(redis: &Redis, id: &str, cores: usize, keys: &str, lease: &str) -> Server {
    let mut o = Opts::cores(cores);
    o.keys = Some(keys.to_string());
    o.args = vec![
        "--cluster".into(),
        redis.url(),
        "--node-id".into(),
        id.into(),
        "--cluster-lease".into(),
        lease.into(),
    ];
    let srv = Server::with(o);
    wait_ready(&srv);
    srv
}

/// Waits until `/readyz` says 200 (the link is up).
fn wait_ready(srv: &Server) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = srv.get("/readyz");
        if r.status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node never ready: {} {}\n{}",
            r.status,
            r.text(),
            srv.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn peer(srv: &Server, name: &str) -> Ws {
    let t = ws::jwt_from_key(srv, &format!("ak_{name}"));
    connect(srv, &t).unwrap_or_else(|s| panic!("{name}: upgrade refused with {s}"))
}

/// `register` answered with the peer list, as a set.
fn list(ws: &mut Ws, me: &str) -> BTreeSet<String> {
    send(ws, &json!({"type": "register", "peer_id": me}));
    let v = recv(ws);
    assert_eq!(v["type"], "peer_list", "{v}");
    v["payload"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

/// Registers until the list is `want` (the directory is written as peers connect, not
/// before their 101), for at most `within`.
fn list_until(ws: &mut Ws, me: &str, want: &[&str], within: Duration) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + within;
    loop {
        let got = list(ws, me);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{me}: peer list {got:?}, wanted {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn offer(from: &str, to: &str, n: usize) -> Value {
    json!({"type": "offer", "peer_id": from, "target_id": to, "payload": {"sdp": format!("v=0 {n}")}})
}

/// `from` relays to `to`, which receives exactly that message.
fn relay(a: &mut Ws, from: &str, b: &mut Ws, to: &str, n: usize) {
    send(a, &offer(from, to, n));
    let got = recv(b);
    assert_eq!(got, offer(from, to, n), "{from} → {to}");
}

fn metric(srv: &Server, name: &str) -> u64 {
    let text = srv.get("/metrics").text();
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

const KEYS: &[(&str, Option<&str>)] = &[
    ("alice", None),
    ("bob", None),
    ("carol", None),
    ("dave", None),
    ("mallory", Some("other")),
];

#[test]
fn peers_and_relays_across_three_nodes_in_every_direction() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = keys(KEYS);
    let n1 = node(&redis, "n1", 2, &k, "10");
    let n2 = node(&redis, "n2", 1, &k, "10");
    let n3 = node(&redis, "n3", 1, &k, "10");
    let mut alice = peer(&n1, "alice");
    let mut dave = peer(&n1, "dave");
    let mut bob = peer(&n2, "bob");
    let mut carol = peer(&n3, "carol");
    let mut mallory = peer(&n2, "mallory");
    let w = Duration::from_secs(10);
    // Each sees the others of its mesh on every node, and no one of another mesh.
    list_until(&mut alice, "alice", &["bob", "carol", "dave"], w);
    list_until(&mut bob, "bob", &["alice", "carol", "dave"], w);
    list_until(&mut carol, "carol", &["alice", "bob", "dave"], w);
    list_until(&mut mallory, "mallory", &[], w);
    // Relays in every direction between the nodes, and within n1 (across its shards or
    // not).
    let mut n = 0;
    let mut peers: Vec<(&str, &mut Ws)> = vec![
        ("alice", &mut alice),
        ("bob", &mut bob),
        ("carol", &mut carol),
        ("dave", &mut dave),
    ];
    for i in 0..peers.len() {
        for j in 0..peers.len() {
            if i == j {
                continue;
            }
            n += 1;
            let (lo, hi) = peers.split_at_mut(i.max(j));
            let (a, b) = if i < j {
                (&mut lo[i], &mut hi[0])
            } else {
                (&mut hi[0], &mut lo[j])
            };
            relay(a.1, a.0, b.1, b.0, n);
        }
    }
    // Another mesh is not reached across nodes either: mallory's offer to bob (same
    // node) and to carol (another node) arrive nowhere; bob's next message is alice's.
    send(&mut mallory, &offer("mallory", "carol", 0));
    send(&mut mallory, &offer("mallory", "bob", 0));
    relay(&mut alice, "alice", &mut carol, "carol", 1000);
    relay(&mut alice, "alice", &mut bob, "bob", 1001);
    // Within a node no Redis command is spent; across nodes one publish each.
    let before = redis.calls("spublish");
    for i in 0..50 {
        relay(&mut alice, "alice", &mut dave, "dave", 2000 + i);
    }
    let local = redis.calls("spublish") - before;
    let before = redis.calls("spublish");
    for i in 0..50 {
        relay(&mut alice, "alice", &mut bob, "bob", 3000 + i);
    }
    let across = redis.calls("spublish") - before;
    // The link's probes publish too (one per node per 2 s): a few, never 50.
    assert!(local < 10, "{local} publishes for 50 relays within a node");
    assert!(
        (50..60).contains(&across),
        "{across} publishes for 50 relays across nodes"
    );
    assert!(metric(&n2, "chatixia_cluster_deliveries_total") >= 50);
    assert_eq!(metric(&n1, "chatixia_cluster_up"), 1);
}

#[test]
fn a_peer_that_moves_to_another_node_replaces_its_older_connection() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = keys(KEYS);
    let n1 = node(&redis, "n1", 1, &k, "10");
    let n2 = node(&redis, "n2", 1, &k, "10");
    let mut old = peer(&n1, "alice");
    let mut bob = peer(&n2, "bob");
    list_until(&mut bob, "bob", &["alice"], Duration::from_secs(10));
    let mut new = peer(&n2, "alice");
    let (code, reason) = recv_close(&mut old);
    assert_eq!(code, 4000, "{reason}");
    assert!(reason.contains("another node"), "{reason}");
    // Listed once, and reached at its new node; the old node's goodbye removed nothing.
    std::thread::sleep(Duration::from_millis(300));
    list_until(&mut bob, "bob", &["alice"], Duration::from_secs(5));
    relay(&mut bob, "bob", &mut new, "alice", 1);
    let mut carol = peer(&n1, "carol");
    list_until(
        &mut carol,
        "carol",
        &["alice", "bob"],
        Duration::from_secs(5),
    );
    relay(&mut carol, "carol", &mut new, "alice", 2);
}

#[test]
fn a_killed_node_leaves_the_peer_lists_within_its_lease() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = keys(KEYS);
    let n1 = node(&redis, "n1", 1, &k, "2");
    let mut n2 = node(&redis, "n2", 1, &k, "2");
    let mut alice = peer(&n1, "alice");
    let _bob = peer(&n2, "bob");
    list_until(&mut alice, "alice", &["bob"], Duration::from_secs(10));
    n2.child.kill().unwrap();
    n2.child.wait().unwrap();
    let killed = Instant::now();
    // Gone from the list after the lease (2 s) and a renewal period, not before long.
    list_until(&mut alice, "alice", &[], Duration::from_secs(8));
    assert!(
        killed.elapsed() >= Duration::from_millis(500),
        "listed as gone too soon"
    );
    // Its entries are removed from Redis too, and its lease entry.
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.cmd(&["HGET", "chx:nomesh", "bob"]) != redis::Reply::Nil {
        assert!(Instant::now() < deadline, "bob's entry stayed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        redis.cmd(&["ZSCORE", "chx:nodes", "n2"]),
        redis::Reply::Nil,
        "n2's lease entry stayed"
    );
}

#[test]
fn sigterm_hands_the_lease_and_the_peers_back_at_once() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = keys(KEYS);
    // A long lease: what removes the peers here is the goodbye, not the expiry.
    let n1 = node(&redis, "n1", 1, &k, "60");
    let mut n2 = node(&redis, "n2", 2, &k, "60");
    let mut alice = peer(&n1, "alice");
    let _bob = peer(&n2, "bob");
    let _carol = peer(&n2, "carol");
    list_until(
        &mut alice,
        "alice",
        &["bob", "carol"],
        Duration::from_secs(10),
    );
    let (status, _) = n2.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    list_until(&mut alice, "alice", &[], Duration::from_secs(3));
    assert_eq!(redis.cmd(&["ZSCORE", "chx:nodes", "n2"]), redis::Reply::Nil);
}

#[test]
fn without_redis_a_node_relays_between_its_own_peers_and_is_not_ready() {
    let Some(mut redis) = redis::start(&[]) else {
        return;
    };
    let k = keys(KEYS);
    let n1 = node(&redis, "n1", 2, &k, "3");
    let n2 = node(&redis, "n2", 1, &k, "3");
    let mut alice = peer(&n1, "alice");
    let mut dave = peer(&n1, "dave");
    let mut bob = peer(&n2, "bob");
    list_until(
        &mut alice,
        "alice",
        &["bob", "dave"],
        Duration::from_secs(10),
    );
    redis.kill();
    // Not ready (a JSON reason), still alive.
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = n1.get("/readyz");
        if r.status == 503 {
            break r;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {}", r.status);
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        r.json()["error"].as_str().unwrap().contains("Redis"),
        "{}",
        r.text()
    );
    assert_eq!(n1.get("/healthz").status, 200);
    // Relays within the node go on; the list holds this node's peers.
    for i in 0..20 {
        relay(&mut alice, "alice", &mut dave, "dave", i);
        relay(&mut dave, "dave", &mut alice, "alice", 100 + i);
    }
    list_until(&mut alice, "alice", &["dave"], Duration::from_secs(5));
    // A relay to the other node is dropped, nothing else happens to the sender.
    send(&mut alice, &offer("alice", "bob", 0));
    relay(&mut dave, "dave", &mut alice, "alice", 500);
    // Redis is back (empty): the nodes reconnect, assert their peers again, and the
    // mesh is whole again.
    redis.restart();
    wait_ready(&n1);
    wait_ready(&n2);
    list_until(&mut bob, "bob", &["alice", "dave"], Duration::from_secs(15));
    list_until(
        &mut alice,
        "alice",
        &["bob", "dave"],
        Duration::from_secs(15),
    );
    relay(&mut alice, "alice", &mut bob, "bob", 600);
    relay(&mut bob, "bob", &mut dave, "dave", 601);
    assert!(metric(&n1, "chatixia_cluster_reconnects_total") >= 1);
}

#[test]
fn bad_cluster_flags_fail_the_start_with_a_reason() {
    for (args, want) in [
        (vec!["--cluster", "http://127.0.0.1:6379"], "--cluster"),
        (
            vec!["--cluster", "redis://127.0.0.1:6379", "--node-id", "a b"],
            "--node-id",
        ),
        (
            vec![
                "--cluster",
                "redis://127.0.0.1:6379",
                "--cluster-lease",
                "0",
            ],
            "--cluster-lease",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatixia-core"))
            .args(["--listen", "127.0.0.1:0"])
            .args(&args)
            .env("CHATIXIA_DATA_DIR", common::scratch_data_dir())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn a_node_paused_past_its_lease_is_dropped_and_comes_back_whole() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = keys(KEYS);
    let n1 = node(&redis, "n1", 1, &k, "2");
    let n2 = node(&redis, "n2", 1, &k, "2");
    let mut alice = peer(&n1, "alice");
    let mut bob = peer(&n2, "bob");
    list_until(&mut alice, "alice", &["bob"], Duration::from_secs(10));
    let pid = n2.child.id().to_string();
    let signal = |s: &str| {
        let st = std::process::Command::new("kill")
            .args([s, &pid])
            .status()
            .unwrap();
        assert!(st.success());
    };
    // Stopped (a paused VM, a stalled host): its lease runs out, n1 removes its peers.
    signal("-STOP");
    list_until(&mut alice, "alice", &[], Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.cmd(&["HGET", "chx:nomesh", "bob"]) != redis::Reply::Nil {
        assert!(Instant::now() < deadline, "bob's entry stayed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Resumed, it finds its lease lapsed and asserts its peers again: listed and
    // reachable as before, without bob reconnecting.
    signal("-CONT");
    list_until(&mut alice, "alice", &["bob"], Duration::from_secs(15));
    relay(&mut alice, "alice", &mut bob, "bob", 1);
    relay(&mut bob, "bob", &mut alice, "alice", 2);
}

#[test]
fn a_revocation_at_one_node_closes_the_device_at_another() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let mut with_admin: Vec<(&str, Option<&str>)> = KEYS.to_vec();
    with_admin.push(("ops-admin", None));
    let mut k: Value = serde_json::from_str(&keys(&with_admin)).unwrap();
    k["keys"]["ak_test_admin"] = json!({"peer_id": "ops-admin", "role": "admin"});
    let k = k.to_string();
    let n1 = node(&redis, "n1", 1, &k, "10");
    let n2 = node(&redis, "n2", 2, &k, "10");
    // A device paired and approved at n1.
    let r = n1.req(
        "POST",
        "/api/pairing/generate-code",
        &[("X-API-Key", "ak_test_admin")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let code = r.json()["code"].as_str().unwrap().to_string();
    let r = n1.post_json(
        "/api/pairing/pair",
        &json!({"code": code, "agent_name": "laptop"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let device = r.json()["peer_id"].as_str().unwrap().to_string();
    let r = n1.admin_req("POST", &format!("/api/pairing/{id}/approve"));
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["device_token"].as_str().unwrap().to_string();
    let r = n1.req("POST", "/api/token", &[("X-Device-Token", &token)], None);
    assert_eq!(r.status, 200, "{}", r.text());
    let jwt = r.json()["token"].as_str().unwrap().to_string();
    // Its JWT opens /ws at both nodes (the signing secret is the cluster's, and so is
    // its approval): the newer connection, at n2, replaces the one at n1 (4000).
    let mut at_n1 = connect(&n1, &jwt).unwrap();
    let mut at_n2 = connect(&n2, &jwt).unwrap();
    let (code, reason) = recv_close(&mut at_n1);
    assert_eq!(code, 4000, "{reason}");
    // Revoked at n1: the connection at n2 closes with 4001, and both nodes refuse it
    // from now on.
    let r = n1.admin_req("POST", &format!("/api/pairing/{id}/revoke"));
    assert_eq!(r.status, 200, "{}", r.text());
    let (code, reason) = recv_close(&mut at_n2);
    assert_eq!(code, 4001, "{reason}");
    assert!(reason.contains("revoked"), "{reason}");
    assert_eq!(connect(&n2, &jwt).err(), Some(401));
    assert_eq!(connect(&n1, &jwt).err(), Some(401));
    // An API-key peer of the same cluster is not touched by it.
    let mut alice = peer(&n2, "alice");
    let mut bob = peer(&n1, "bob");
    list_until(
        &mut alice,
        "alice",
        &["bob", "carol", "dave"][..1],
        Duration::from_secs(5),
    );
    relay(&mut alice, "alice", &mut bob, "bob", 1);
    let _ = device;
}

#[test]
fn the_dashboard_names_the_node_and_the_live_nodes() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let mut k: Value = serde_json::from_str(&keys(KEYS)).unwrap();
    k["keys"]["ak_test_admin"] = json!({"peer_id": "ops-admin", "role": "admin"});
    let k = k.to_string();
    let n1 = node(&redis, "n1", 1, &k, "10");
    let _n2 = node(&redis, "n2", 1, &k, "10");
    // n2's hello makes n1 renew at once: both are listed well within a lease.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let r = n1.admin_get("/api/dashboard/summary");
        assert_eq!(r.status, 200, "{}", r.text());
        let c = r.json()["cluster"].clone();
        assert_eq!(c["node"], "n1", "{c}");
        if c["nodes"] == json!(["n1", "n2"]) {
            assert_eq!(c["up"], true);
            break;
        }
        assert!(Instant::now() < deadline, "{c}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A node alone has no cluster in its summary.
    let alone = Server::with({
        let mut o = Opts::cores(1);
        o.keys = Some(k.clone());
        o
    });
    assert!(alone
        .admin_get("/api/dashboard/summary")
        .json()
        .get("cluster")
        .is_none());
}

// The agent registry across nodes (registry::mirror).

fn agent(id: &str, host: &str) -> Value {
    json!({
        "agent_id": id, "hostname": host, "ip": "10.0.0.1", "port": 9000,
        "sidecar_peer_id": format!("sc-{id}"),
        "capabilities": {"skills": ["web"], "mcp_servers": ["fs"], "goals_count": 2, "mode": "m"},
        "status": "ready", "mode": "auto"
    })
}

fn register(srv: &Server, id: &str, host: &str) {
    let r = srv.post_json("/api/registry/agents", &agent(id, host));
    assert_eq!((r.status, r.text()), (200, r#"{"status":"ok"}"#.into()));
}

fn heartbeat(srv: &Server, id: &str, host: &str) {
    let r = srv.post_json(
        "/api/hub/heartbeat",
        &json!({"agent_id": id, "hostname": host, "skill_names": ["web"]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// `GET /api/registry/agents` at `srv`: 200, the records.
fn agents(srv: &Server) -> Vec<Value> {
    let r = srv.get("/api/registry/agents");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().as_array().unwrap().clone()
}

fn ids(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|a| a["agent_id"].as_str().unwrap().to_string())
        .collect()
}

/// Lists at `srv` until `ok` holds of the list, for at most `within`; the list.
fn agents_until(
    srv: &Server,
    within: Duration,
    what: &str,
    ok: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let list = agents(srv);
        if ok(&list) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the list stayed {:?}",
            ids(&list)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn listed(want: &'static [&'static str]) -> impl Fn(&[Value]) -> bool {
    move |l: &[Value]| ids(l) == want
}

#[test]
fn an_agent_registered_at_one_node_is_listed_at_the_others_and_moves_with_its_heartbeats() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = keys(KEYS);
    let n1 = node(&redis, "n1", 2, &k, "10");
    let n2 = node(&redis, "n2", 1, &k, "10");
    let n3 = node(&redis, "n3", 1, &k, "10");
    register(&n1, "ag1", "one.local");
    register(&n2, "ag0", "zero.local");
    let w = Duration::from_secs(10);
    // Every node lists both, with the same records as the holding node.
    let at1 = agents_until(&n1, w, "n1", listed(&["ag0", "ag1"]));
    let at2 = agents_until(&n2, w, "n2", listed(&["ag0", "ag1"]));
    let at3 = agents_until(&n3, w, "n3", listed(&["ag0", "ag1"]));
    assert_eq!(at1, at2);
    assert_eq!(at1, at3);
    assert_eq!(at3[1]["hostname"], "one.local");
    // One agent (sorted keys, as at its node) at any node.
    let one = n1.get("/api/registry/agents/ag1").text();
    assert_eq!(n3.get("/api/registry/agents/ag1").text(), one);
    assert_eq!(
        n3.get("/api/registry/agents/nope").text(),
        r#"{"error":"not found"}"#
    );
    // Paging spans the nodes.
    let p1 = n3.get("/api/registry/agents?limit=1");
    assert_eq!(ids(p1.json().as_array().unwrap()), ["ag0"]);
    let cursor = p1
        .header("x-next-cursor")
        .expect("a next cursor")
        .to_string();
    let p2 = n3.get(&format!("/api/registry/agents?limit=1&cursor={cursor}"));
    assert_eq!(ids(p2.json().as_array().unwrap()), ["ag1"]);
    assert_eq!(p2.header("x-next-cursor"), None);
    // Steady heartbeats at its node are not a write each.
    let before = redis.calls("hset");
    for _ in 0..20 {
        heartbeat(&n1, "ag1", "one.local");
    }
    std::thread::sleep(Duration::from_millis(300));
    let writes = redis.calls("hset") - before;
    assert!(
        writes <= 2,
        "{writes} mirror writes for 20 steady heartbeats"
    );
    // A heartbeat at n2 moves it there: listed once everywhere, as n2 holds it (n1's
    // copy dropped, so n1 lists it from the mirror).
    heartbeat(&n2, "ag1", "moved.local");
    for n in [&n1, &n2, &n3] {
        agents_until(n, w, "after the move", |l| {
            ids(l) == ["ag0", "ag1"] && l[1]["hostname"] == "moved.local"
        });
    }
    assert_eq!(
        n1.get("/api/registry/agents/ag1").json()["hostname"],
        "moved.local"
    );
    assert_eq!(
        redis.cmd(&["SISMEMBER", "chx:na:n1", "ag1"]),
        redis::Reply::Int(0)
    );
    // An operator's delete at a node that does not hold it: the holding node deletes it.
    let d = n3.admin_req("DELETE", "/api/registry/agents/ag1");
    assert_eq!((d.status, d.text()), (200, r#"{"status":"ok"}"#.into()));
    for n in [&n1, &n2, &n3] {
        agents_until(n, w, "after the delete", listed(&["ag0"]));
    }
    assert_eq!(
        n2.get("/api/registry/agents/ag1").text(),
        r#"{"error":"not found"}"#
    );
    let d = n3.admin_req("DELETE", "/api/registry/agents/ag1");
    assert_eq!(
        (d.status, d.text()),
        (200, r#"{"error":"not found"}"#.into())
    );
    // A delete at its node is a delete everywhere too.
    let d = n2.admin_req("DELETE", "/api/registry/agents/ag0");
    assert_eq!(d.text(), r#"{"status":"ok"}"#);
    for n in [&n1, &n3] {
        agents_until(n, w, "after the local delete", listed(&[]));
    }
    assert_eq!(redis.cmd(&["HLEN", "chx:agents"]), redis::Reply::Int(0));
}

#[test]
fn a_killed_nodes_agents_leave_the_other_lists_within_its_lease() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = keys(KEYS);
    let n1 = node(&redis, "n1", 1, &k, "2");
    let mut n2 = node(&redis, "n2", 1, &k, "2");
    register(&n1, "a1", "one");
    register(&n2, "a2", "two");
    agents_until(&n1, Duration::from_secs(10), "n1", listed(&["a1", "a2"]));
    n2.child.kill().unwrap();
    n2.child.wait().unwrap();
    agents_until(
        &n1,
        Duration::from_secs(8),
        "after kill -9",
        listed(&["a1"]),
    );
    // Its entries are removed from Redis too.
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.cmd(&["HEXISTS", "chx:agents", "a2"]) != redis::Reply::Int(0) {
        assert!(Instant::now() < deadline, "a2's entry stayed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(redis.cmd(&["EXISTS", "chx:na:n2"]), redis::Reply::Int(0));
}

#[test]
fn without_redis_the_lists_hold_the_nodes_own_agents_and_a_restart_asserts_them_again() {
    let Some(mut redis) = redis::start(&[]) else {
        return;
    };
    let k = keys(KEYS);
    let n1 = node(&redis, "n1", 2, &k, "3");
    let n2 = node(&redis, "n2", 1, &k, "3");
    register(&n1, "a1", "one");
    register(&n1, "a3", "three");
    register(&n2, "a2", "two");
    let w = Duration::from_secs(10);
    agents_until(&n2, w, "n2", listed(&["a1", "a2", "a3"]));
    redis.kill();
    // 200 with this node's agents (a get of another node's agent: not found).
    agents_until(&n1, w, "n1 without Redis", listed(&["a1", "a3"]));
    agents_until(&n2, w, "n2 without Redis", listed(&["a2"]));
    assert_eq!(
        n2.get("/api/registry/agents/a1").text(),
        r#"{"error":"not found"}"#
    );
    // Redis is back (empty): each node writes its agents again.
    redis.restart();
    wait_ready(&n1);
    wait_ready(&n2);
    agents_until(
        &n2,
        Duration::from_secs(15),
        "n2 after the restart",
        listed(&["a1", "a2", "a3"]),
    );
    agents_until(
        &n1,
        Duration::from_secs(15),
        "n1 after the restart",
        listed(&["a1", "a2", "a3"]),
    );
    assert_eq!(
        n2.get("/api/registry/agents/a3").json()["hostname"],
        "three"
    );
}

// Agent bindings across nodes (registry::bindings): cluster-wide, as on a node alone.

/// Two agent credentials (`ak_holder-a`, `ak_holder-b`; neither is for the agents of
/// these tests) and the operator's.
const HOLDERS: &[(&str, Option<&str>)] = &[("holder-a", None), ("holder-b", None)];

/// `POST path` at `srv` from `from` (a loopback address), with `key` as `X-API-Key`.
fn post_as(
    srv: &Server,
    from: [u8; 4],
    key: Option<&str>,
    path: &str,
    body: &Value,
) -> common::Resp {
    let mut h = vec![("Content-Type", "application/json")];
    if let Some(k) = key {
        h.push(("X-API-Key", k));
    }
    let body = serde_json::to_vec(body).unwrap();
    srv.conn_from(from.into())
        .request("POST", path, &h, Some(&body))
}

fn register_as(
    srv: &Server,
    from: [u8; 4],
    key: Option<&str>,
    id: &str,
    host: &str,
) -> common::Resp {
    post_as(srv, from, key, "/api/registry/agents", &agent(id, host))
}

fn heartbeat_as(srv: &Server, from: [u8; 4], key: Option<&str>, id: &str) -> common::Resp {
    post_as(
        srv,
        from,
        key,
        "/api/hub/heartbeat",
        &json!({"agent_id": id, "hostname": "hb", "skill_names": ["web"]}),
    )
}

const HOME: [u8; 4] = [127, 0, 25, 1];
const AWAY: [u8; 4] = [127, 0, 25, 2];

/// Which node the mirror names as holding `id`.
fn holder_node(redis: &Redis, id: &str) -> Option<String> {
    match redis.cmd(&["HGET", "chx:agents", id]) {
        redis::Reply::Bulk(v) => v.split('\n').next().map(str::to_string),
        _ => None,
    }
}

fn cluster_binding(redis: &Redis, id: &str) -> Option<String> {
    match redis.cmd(&["HGET", "chx:bindings", id]) {
        redis::Reply::Bulk(v) => Some(v),
        _ => None,
    }
}

#[test]
fn an_agents_binding_holds_at_every_node_and_goes_with_its_delete() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = keys(HOLDERS);
    let n1 = node(&redis, "n1", 2, &k, "10");
    let n2 = node(&redis, "n2", 1, &k, "10");
    let (a, b) = (Some("ak_holder-a"), Some("ak_holder-b"));
    let w = Duration::from_secs(10);
    let r = register_as(&n1, HOME, a, "ag", "home.local");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(cluster_binding(&redis, "ag").as_deref(), Some("P:holder-a"));
    agents_until(&n2, w, "n2 lists it", listed(&["ag"]));
    // Another credential, at a node that never held it: refused as at its node (the
    // same 403 and reason), by register and by heartbeat, with or without a key, from
    // any address.
    let at_home = register_as(&n1, AWAY, b, "ag", "stolen.local");
    assert_eq!(at_home.status, 403, "{}", at_home.text());
    for r in [
        register_as(&n2, AWAY, b, "ag", "stolen.local"),
        register_as(&n2, HOME, None, "ag", "stolen.local"),
    ] {
        assert_eq!((r.status, r.text()), (403, at_home.text()));
    }
    let r = heartbeat_as(&n2, AWAY, b, "ag");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("bound to another API key or token"));
    // Not moved: n1 holds it, as registered.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(holder_node(&redis, "ag").as_deref(), Some("n1"));
    let l = agents(&n1);
    assert_eq!(
        (ids(&l), &l[0]["hostname"]),
        (vec!["ag".to_string()], &json!("home.local"))
    );
    assert_eq!(
        n2.get("/api/registry/agents/ag").json()["hostname"],
        "home.local"
    );
    // Its holder's credential at n2, from another address: allowed, and it moves.
    let r = register_as(&n2, AWAY, a, "ag", "moved.local");
    assert_eq!(r.status, 200, "{}", r.text());
    for n in [&n1, &n2] {
        agents_until(n, w, "after the move", |l| {
            ids(l) == ["ag"] && l[0]["hostname"] == "moved.local"
        });
    }
    assert_eq!(holder_node(&redis, "ag").as_deref(), Some("n2"));
    // Still refused to B at the node it left (whose own binding is kept there).
    assert_eq!(register_as(&n1, AWAY, b, "ag", "x").status, 403);
    // Deleted at the node that holds it: its binding goes everywhere; B takes the id
    // at the node it left, and A is refused there and at n2 from then on.
    let d = n2.admin_req("DELETE", "/api/registry/agents/ag");
    assert_eq!(d.text(), r#"{"status":"ok"}"#);
    assert_eq!(cluster_binding(&redis, "ag"), None);
    let r = register_as(&n1, AWAY, b, "ag", "b.local");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(cluster_binding(&redis, "ag").as_deref(), Some("P:holder-b"));
    for n in [&n1, &n2] {
        let r = heartbeat_as(n, HOME, a, "ag");
        assert_eq!(r.status, 403, "{}", r.text());
    }
    // Deleted at a node that does not hold it (n2; n1 does): gone too, and an
    // address without a key takes the id at n2.
    let d = n2.admin_req("DELETE", "/api/registry/agents/ag");
    assert_eq!(d.text(), r#"{"status":"ok"}"#);
    assert_eq!(cluster_binding(&redis, "ag"), None);
    let r = heartbeat_as(&n2, HOME, None, "ag");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        cluster_binding(&redis, "ag").as_deref(),
        Some("A:127.0.25.1")
    );
}

#[test]
fn without_redis_an_agent_new_to_a_node_is_refused_and_bound_ones_keep_heartbeating() {
    let Some(mut redis) = redis::start(&[]) else {
        return;
    };
    let k = keys(HOLDERS);
    let n1 = node(&redis, "n1", 2, &k, "3");
    let n2 = node(&redis, "n2", 1, &k, "3");
    let (a, b) = (Some("ak_holder-a"), Some("ak_holder-b"));
    assert_eq!(register_as(&n1, HOME, a, "ag1", "one").status, 200);
    assert_eq!(heartbeat_as(&n1, HOME, a, "ag1").status, 200);
    let refused_before = metric(&n1, "chatixia_cluster_refused_total");
    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    while n1.get("/readyz").status != 503 || n2.get("/readyz").status != 503 {
        assert!(Instant::now() < deadline, "the nodes never saw Redis go");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Bound here: its heartbeats and registers go on (no Redis needed); another
    // credential is still refused here (403).
    for _ in 0..3 {
        assert_eq!(heartbeat_as(&n1, HOME, a, "ag1").status, 200);
    }
    assert_eq!(register_as(&n1, AWAY, a, "ag1", "one").status, 200);
    assert_eq!(register_as(&n1, AWAY, b, "ag1", "x").status, 403);
    // New to a node: refused with 503 and the reason (failing closed), counted.
    for (srv, id) in [(&n1, "ag2"), (&n2, "ag1")] {
        for r in [
            register_as(srv, HOME, a, id, "x"),
            heartbeat_as(srv, HOME, a, id),
        ] {
            assert_eq!(r.status, 503, "{id}: {}", r.text());
            let why = r.json()["error"].as_str().unwrap().to_string();
            assert!(why.starts_with("cluster unavailable: "), "{why}");
        }
    }
    assert!(metric(&n1, "chatixia_cluster_refused_total") > refused_before);
    // Redis is back, empty: n1 asserts its binding again, so B is refused at n2 and a
    // new agent is taken at n1.
    redis.restart();
    wait_ready(&n1);
    wait_ready(&n2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster_binding(&redis, "ag1").as_deref() != Some("P:holder-a") {
        assert!(Instant::now() < deadline, "n1 never asserted ag1's binding");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(heartbeat_as(&n2, AWAY, b, "ag1").status, 403);
    assert_eq!(register_as(&n1, HOME, a, "ag2", "two").status, 200);
    assert_eq!(heartbeat_as(&n2, AWAY, a, "ag1").status, 200);
}

#[test]
fn a_node_whose_copy_of_an_agent_lost_its_cluster_binding_drops_it() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = keys(HOLDERS);
    let n1 = node(&redis, "n1", 1, &k, "10");
    let a = Some("ak_holder-a");
    assert_eq!(register_as(&n1, HOME, a, "ag", "one").status, 200);
    // The cluster's binding names another holder (as when a move took it, and a steady
    // heartbeat here raced the move's notice): the next write of n1's copy does not
    // take the mirror's entry, and n1 drops the copy.
    redis.cmd(&["HSET", "chx:bindings", "ag", "P:holder-b"]);
    let r = post_as(
        &n1,
        HOME,
        a,
        "/api/hub/heartbeat",
        &json!({"agent_id": "ag", "hostname": "changed", "skill_names": ["web"]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = heartbeat_as(&n1, HOME, a, "ag");
        if r.status == 403 {
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(Instant::now() < deadline, "n1 kept its stale copy of ag");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        register_as(&n1, AWAY, Some("ak_holder-b"), "ag", "b").status,
        200
    );
}

// Pairing across nodes (pairing::cluster): approvals and device tokens in Redis.

/// The keys of the pairing tests: mallory and oscar share mesh `other`, alice is in the
/// default mesh; the operator's key is an admin.
fn pairing_keys() -> String {
    let mut k: Value = serde_json::from_str(&keys(&[
        ("alice", None),
        ("mallory", Some("other")),
        ("oscar", Some("other")),
    ]))
    .unwrap();
    k["keys"]["ak_test_admin"] = json!({"peer_id": "ops-admin", "role": "admin"});
    k.to_string()
}

/// A pending entry at `srv`, invited by `inviter`'s key: (entry id, the device's peer id).
fn pending_device(srv: &Server, inviter: &str) -> (String, String) {
    let r = srv.req(
        "POST",
        "/api/pairing/generate-code",
        &[("X-API-Key", &format!("ak_{inviter}"))],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let code = r.json()["code"].as_str().unwrap().to_string();
    let r = srv.post_json(
        "/api/pairing/pair",
        &json!({"code": code, "agent_name": "laptop"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    (
        v["id"].as_str().unwrap().to_string(),
        v["peer_id"].as_str().unwrap().to_string(),
    )
}

/// Approves entry `id` at `srv`: its device token.
fn approve(srv: &Server, id: &str) -> String {
    let r = srv.admin_req("POST", &format!("/api/pairing/{id}/approve"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["device_token"].as_str().unwrap().to_string()
}

/// `POST /api/token` with a device token at `srv`.
fn device_jwt(srv: &Server, token: &str) -> common::Resp {
    srv.req("POST", "/api/token", &[("X-Device-Token", token)], None)
}

fn wait_not_ready(srv: &Server) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.get("/readyz").status != 503 {
        assert!(Instant::now() < deadline, "/readyz stayed ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_pairing_approved_at_one_node_holds_at_another_until_revoked() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = pairing_keys();
    let n1 = node(&redis, "n1", 1, &k, "10");
    let n2 = node(&redis, "n2", 2, &k, "10");
    // Paired and approved at n1, invited by mallory: its mesh is `other`.
    let (id, device) = pending_device(&n1, "mallory");
    let token = approve(&n1, &id);
    // Redis holds the token's keyed hash and the approval, never the token.
    let tokens = format!("{:?}", redis.cmd(&["HGETALL", "chx:tokens"]));
    assert!(tokens.contains(&device), "{tokens}");
    assert!(!tokens.contains(&token), "{tokens}");
    // The device token works at n2.
    let r = device_jwt(&n2, &token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["peer_id"], device.as_str(), "{}", r.text());
    let jwt = r.json()["token"].as_str().unwrap().to_string();
    // It connects at n2 and signals there, in its mesh: listed to an API-key peer of
    // its mesh at n2 and at n1, not to one of another mesh.
    let mut dev = connect(&n2, &jwt).unwrap_or_else(|s| panic!("device refused with {s}"));
    let mut oscar = peer(&n2, "oscar");
    let mut mallory = peer(&n1, "mallory");
    let mut alice = peer(&n2, "alice");
    list_until(
        &mut oscar,
        "oscar",
        &[&device, "mallory"],
        Duration::from_secs(10),
    );
    list_until(
        &mut mallory,
        "mallory",
        &[&device, "oscar"],
        Duration::from_secs(10),
    );
    list_until(
        &mut dev,
        &device,
        &["mallory", "oscar"],
        Duration::from_secs(10),
    );
    assert_eq!(list(&mut alice, "alice"), BTreeSet::new());
    // Relays both ways, within n2 and across nodes.
    relay(&mut dev, &device, &mut oscar, "oscar", 1);
    relay(&mut oscar, "oscar", &mut dev, &device, 2);
    relay(&mut dev, &device, &mut mallory, "mallory", 3);
    relay(&mut mallory, "mallory", &mut dev, &device, 4);
    // Revoked at n1: closed at n2 (4001), its token and its JWT refused at n2.
    let r = n1.admin_req("POST", &format!("/api/pairing/{id}/revoke"));
    assert_eq!(r.status, 200, "{}", r.text());
    let (code, reason) = recv_close(&mut dev);
    assert_eq!(code, 4001, "{reason}");
    let r = device_jwt(&n2, &token);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(connect(&n2, &jwt).err(), Some(401));
    assert_eq!(redis.cmd(&["HLEN", "chx:tokens"]), redis::Reply::Int(0));
    assert_eq!(redis.cmd(&["HLEN", "chx:authz"]), redis::Reply::Int(0));
    list_until(&mut mallory, "mallory", &["oscar"], Duration::from_secs(5));
}

#[test]
fn without_redis_an_approval_is_refused_and_the_entry_stays_pending() {
    let Some(mut redis) = redis::start(&[]) else {
        return;
    };
    let k = pairing_keys();
    let n1 = node(&redis, "n1", 2, &k, "3");
    let n2 = node(&redis, "n2", 1, &k, "3");
    let (id, device) = pending_device(&n1, "mallory");
    redis.kill();
    wait_not_ready(&n1);
    let r = n1.admin_req("POST", &format!("/api/pairing/{id}/approve"));
    assert_eq!(r.status, 503, "{}", r.text());
    let err = r.json()["error"].as_str().unwrap().to_string();
    assert!(err.contains("cluster unavailable"), "{err}");
    // Nothing half done: the entry is pending, no token was handed out.
    let r = n1.admin_get("/api/pairing/pending");
    assert_eq!(r.status, 200, "{}", r.text());
    let pending = r.json();
    assert_eq!(pending.as_array().unwrap().len(), 1, "{pending}");
    assert_eq!(pending[0]["id"], id.as_str());
    assert_eq!(pending[0]["status"], "pending_approval");
    // A device token unknown at n2 cannot be checked either: 503, not 401.
    wait_not_ready(&n2);
    let r = device_jwt(&n2, "dt_00000000000000000000000000000000");
    assert_eq!(r.status, 503, "{}", r.text());
    // Redis back: the same entry is approved, and holds at n2.
    redis.restart();
    wait_ready(&n1);
    wait_ready(&n2);
    let token = approve(&n1, &id);
    let r = device_jwt(&n2, &token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["peer_id"], device.as_str());
}

#[test]
fn approvals_are_asserted_again_and_a_revocation_without_redis_reaches_the_cluster_later() {
    // Kept across a restart (appendonly, fsync on every write): what n1 could not remove
    // while Redis was down is still there when it is back, and goes then (n1 removes it
    // and tells n2; n2 checks the peers it admitted on another node's approval).
    let Some(mut redis) = redis::start(&["--appendonly", "yes", "--appendfsync", "always"]) else {
        return;
    };
    let k = pairing_keys();
    let n1 = node(&redis, "n1", 2, &k, "3");
    let n2 = node(&redis, "n2", 1, &k, "3");
    let (kept, kept_device) = pending_device(&n1, "mallory");
    let kept_token = approve(&n1, &kept);
    let (id, device) = pending_device(&n1, "alice");
    let token = approve(&n1, &id);
    let r = device_jwt(&n2, &token);
    assert_eq!(r.status, 200, "{}", r.text());
    let jwt = r.json()["token"].as_str().unwrap().to_string();
    let mut dev = connect(&n2, &jwt).unwrap();
    let mut alice = peer(&n1, "alice");
    list_until(&mut alice, "alice", &[&device], Duration::from_secs(10));
    // Redis lost the tokens (n1 asserts its approvals again when it is back); the
    // approvals hash is kept.
    redis.cmd(&["DEL", "chx:tokens"]);
    redis.kill();
    wait_not_ready(&n1);
    // Revoked while Redis is down: in effect at n1 at once; the cluster learns it later.
    let r = n1.admin_req("POST", &format!("/api/pairing/{id}/revoke"));
    assert_eq!(r.status, 202, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["ok"].clone(), v["cluster"].clone()),
        (json!(true), json!(false)),
        "{v}"
    );
    // Not in n1's index any more; the cluster's cannot be asked: refused (503).
    assert_eq!(device_jwt(&n1, &token).status, 503);
    redis.restart();
    wait_ready(&n1);
    wait_ready(&n2);
    // The kept approval is back in Redis; the revoked one is not, and the device's
    // connection at n2 (which missed the broadcast) is closed.
    let (code, reason) = recv_close(&mut dev);
    assert_eq!(code, 4001, "{reason}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while device_jwt(&n2, &kept_token).status != 200 {
        assert!(
            Instant::now() < deadline,
            "the kept approval was not asserted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(device_jwt(&n2, &token).status, 401);
    assert_eq!(connect(&n2, &jwt).err(), Some(401));
    // The revoked approval is gone from Redis, the kept one is there.
    assert_eq!(
        redis.cmd(&["HGET", "chx:authz", &device]),
        redis::Reply::Nil
    );
    assert_ne!(
        redis.cmd(&["HGET", "chx:authz", &kept_device]),
        redis::Reply::Nil
    );
}
