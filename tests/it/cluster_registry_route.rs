//! Routing by skill and the topology across the nodes of a cluster (issue 25), with a real
//! `redis-server`: `GET /api/registry/route` at any node answers the earliest-registered
//! routable agent of every live node (the per-skill route indexes of the registry's
//! mirror), and stops routing to an agent that moved, changed its skills, went stale,
//! was deleted or whose node was killed; `GET /api/hub/network/topology` at any node
//! lists the agents of every live node with their mesh edges; without Redis both answer
//! from the node's own agents (200).
use crate::cluster::{keys, node, wait_ready};
use crate::common;

use std::time::{Duration, Instant};

use common::redis::{self, Redis, Reply};
use common::Server;
use serde_json::{json, Value};

const NO_PEERS: &[(&str, Option<&str>)] = &[];

fn agent(id: &str, skills: &[&str], sidecar: &str) -> Value {
    json!({
        "agent_id": id, "hostname": format!("{id}.local"), "ip": "10.0.0.1", "port": 9000,
        "sidecar_peer_id": sidecar,
        "capabilities": {"skills": skills, "mcp_servers": [], "goals_count": 0, "mode": "m"},
        "status": "ready", "mode": "auto"
    })
}

fn register(srv: &Server, id: &str, skills: &[&str]) {
    let r = srv.post_json(
        "/api/registry/agents",
        &agent(id, skills, &format!("sc-{id}")),
    );
    assert_eq!((r.status, r.text()), (200, r#"{"status":"ok"}"#.into()));
    // Registration times are nanoseconds apart at least; keep them well apart so that
    // "earliest" is never a tie broken by id.
    std::thread::sleep(Duration::from_millis(5));
}

fn heartbeat(srv: &Server, id: &str, skills: &[&str]) {
    let r = srv.post_json(
        "/api/hub/heartbeat",
        &json!({"agent_id": id, "hostname": format!("{id}.local"), "skill_names": skills}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// `GET /api/registry/route?skill=` at `srv`: 200 and its body.
fn route(srv: &Server, skill: &str) -> Value {
    let r = srv.get(&format!("/api/registry/route?skill={skill}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The agent routed to (`None`: the miss body).
fn routed(srv: &Server, skill: &str) -> Option<String> {
    let v = route(srv, skill);
    match v["agent_id"].as_str() {
        Some(id) => Some(id.to_string()),
        None => {
            assert_eq!(
                v,
                json!({"error": "no agent found with skill", "skill": skill})
            );
            None
        }
    }
}

/// Asks until the route for `skill` at `srv` is `want`, for at most `within` (the mirror
/// is written as agents change, not before their 200).
fn routed_until(srv: &Server, skill: &str, want: Option<&str>, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let got = routed(srv, skill);
        if got.as_deref() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: routed to {got:?}, wanted {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn zcard(redis: &Redis, key: &str) -> i64 {
    match redis.cmd(&["ZCARD", key]) {
        Reply::Int(n) => n,
        r => panic!("ZCARD {key}: {r:?}"),
    }
}

fn exists(redis: &Redis, key: &str) -> bool {
    redis.cmd(&["EXISTS", key]) == Reply::Int(1)
}

const W: Duration = Duration::from_secs(10);

#[test]
fn the_route_at_any_node_is_the_earliest_registered_agent_of_every_live_node() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = keys(NO_PEERS);
    let n1 = node(&redis, "n1", 2, &k, "10");
    let n2 = node(&redis, "n2", 1, &k, "10");
    let n3 = node(&redis, "n3", 1, &k, "10");
    register(&n2, "first", &["x", "y"]);
    register(&n1, "second", &["x"]);
    register(&n3, "third", &["x"]);
    // Held at n2, the answer at every node: over n1's and n3's own later agents.
    for (n, at) in [(&n1, "n1"), (&n2, "n2"), (&n3, "n3")] {
        routed_until(n, "x", Some("first"), W, at);
    }
    routed_until(&n3, "y", Some("first"), W, "y at n3");
    assert_eq!(routed(&n1, "z"), None);
    // The record as its node answers it (keys sorted, as §3.4).
    let there = n2.get("/api/registry/agents/first").text();
    assert_eq!(n1.get("/api/registry/route?skill=x").text(), there);
    assert_eq!(n3.get("/api/registry/route?skill=y").text(), there);
    // Registered again: now the latest, so n1's `second` is the earliest, at every node.
    register(&n2, "first", &["x", "y"]);
    for (n, at) in [(&n1, "n1"), (&n2, "n2"), (&n3, "n3")] {
        routed_until(n, "x", Some("second"), W, at);
    }
    // `second` drops the skill (a heartbeat's skill_names): n3's `third` is next.
    heartbeat(&n1, "second", &["y"]);
    for (n, at) in [(&n1, "n1"), (&n2, "n2"), (&n3, "n3")] {
        routed_until(n, "x", Some("third"), W, at);
    }
    assert_eq!(zcard(&redis, "chx:rs:n1\nx"), 0);
    assert_eq!(zcard(&redis, "chx:rs:n1\ny"), 1);
    // `second` (registered before `first`'s second registration) now has `y`.
    routed_until(&n2, "y", Some("second"), W, "y at n2");
}

#[test]
fn an_agent_that_moves_goes_stale_is_deleted_or_whose_node_is_killed_is_not_routed_to() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = keys(NO_PEERS);
    let mut n1 = node(&redis, "n1", 1, &k, "2");
    let n2 = node(&redis, "n2", 2, &k, "2");
    let n3 = node(&redis, "n3", 1, &k, "2");
    register(&n1, "a1", &["x"]);
    register(&n2, "a2", &["x"]);
    register(&n3, "a3", &["x"]);
    register(&n3, "a4", &["x"]);
    register(&n1, "a5", &["x"]);
    routed_until(&n3, "x", Some("a1"), W, "n3");
    // a1 moves to n2 (its first heartbeat there: registered now, the latest).
    heartbeat(&n2, "a1", &["x"]);
    routed_until(&n3, "x", Some("a2"), W, "after the move");
    routed_until(&n1, "x", Some("a2"), W, "after the move, at its old node");
    assert_eq!(zcard(&redis, "chx:rs:n2\nx"), 2);
    assert_eq!(zcard(&redis, "chx:rs:n1\nx"), 1);
    // n2's agents go stale (its clock moves 100 s): not routable anywhere.
    n2.advance(100.0);
    assert_eq!(route(&n2, "x")["agent_id"], "a3");
    routed_until(&n1, "x", Some("a3"), W, "after a2 went stale");
    assert_eq!(zcard(&redis, "chx:rs:n2\nx"), 0);
    // An operator deletes a3 at n1, which does not hold it.
    let d = n1.admin_req("DELETE", "/api/registry/agents/a3");
    assert_eq!((d.status, d.text()), (200, r#"{"status":"ok"}"#.into()));
    routed_until(&n2, "x", Some("a4"), W, "after a3's delete");
    // n3 deletes a4, which it holds.
    let d = n3.admin_req("DELETE", "/api/registry/agents/a4");
    assert_eq!((d.status, d.text()), (200, r#"{"status":"ok"}"#.into()));
    routed_until(&n2, "x", Some("a5"), W, "after a4's delete");
    assert_eq!(zcard(&redis, "chx:rs:n3\nx"), 0);
    // n1 is killed: its a5 is not routed to within its lease, and its indexes go.
    n1.child.kill().unwrap();
    n1.child.wait().unwrap();
    routed_until(
        &n2,
        "x",
        None,
        Duration::from_secs(8),
        "after kill -9 of n1",
    );
    assert_eq!(routed(&n3, "x"), None);
    let deadline = Instant::now() + Duration::from_secs(5);
    while exists(&redis, "chx:rs:n1\nx") || exists(&redis, "chx:nr:n1") {
        assert!(Instant::now() < deadline, "n1's route index stayed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(redis.cmd(&["HEXISTS", "chx:routes", "a5"]), Reply::Int(0));
}

/// `GET /api/hub/network/topology` at `srv`: 200, its body.
fn topology(srv: &Server) -> Value {
    let r = srv.get("/api/hub/network/topology");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn topology_ids(t: &Value) -> Vec<String> {
    t["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["agent_id"].as_str().unwrap().to_string())
        .collect()
}

fn topology_until(srv: &Server, want: &[&str], within: Duration, what: &str) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let t = topology(srv);
        if topology_ids(&t) == want {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: topology nodes {:?}, wanted {want:?}",
            topology_ids(&t)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn edges(t: &Value) -> Vec<(String, String)> {
    t["mesh_edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from_peer"].as_str().unwrap().to_string(),
                e["to_peer"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn the_topology_at_any_node_lists_the_agents_of_every_live_node_with_their_mesh() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = keys(NO_PEERS);
    let n1 = node(&redis, "n1", 2, &k, "2");
    let n2 = node(&redis, "n2", 1, &k, "2");
    let mut n3 = node(&redis, "n3", 1, &k, "2");
    register(&n1, "a", &["x", "y"]);
    register(&n2, "b", &["x"]);
    register(&n3, "c", &[]);
    // Without a sidecar: a node of the topology, not a mesh member.
    let r = n3.post_json("/api/registry/agents", &agent("d", &["x"], ""));
    assert_eq!(r.status, 200, "{}", r.text());
    let all = ["a", "b", "c", "d"];
    let t1 = topology_until(&n1, &all, W, "n1");
    let t2 = topology_until(&n2, &all, W, "n2");
    let t3 = topology_until(&n3, &all, W, "n3");
    assert_eq!(t1, t2);
    assert_eq!(t1, t3);
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        edges(&t1),
        [
            pair("sc-a", "sc-b"),
            pair("sc-a", "sc-c"),
            pair("sc-b", "sc-c")
        ]
    );
    let a = &t1["nodes"][0];
    assert_eq!(
        *a,
        json!({"agent_id": "a", "ip": "10.0.0.1", "port": 9000, "hostname": "a.local",
               "sidecar_peer_id": "sc-a", "mode": "auto", "skills_count": 2,
               "health": "active", "mesh_peers": ["sc-b", "sc-c"]})
    );
    assert_eq!(
        t1["nodes"][3]["mesh_peers"],
        json!(["sc-a", "sc-b", "sc-c"])
    );
    // b goes stale at n2: still a node everywhere, no longer a mesh member.
    n2.advance(100.0);
    let deadline = Instant::now() + W;
    loop {
        let t = topology(&n1);
        if t["nodes"][1]["health"] == "stale" {
            assert_eq!(edges(&t), [pair("sc-a", "sc-c")]);
            break;
        }
        assert!(Instant::now() < deadline, "b never stale at n1: {t}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // n3 is killed: its agents leave the topology within its lease.
    n3.child.kill().unwrap();
    n3.child.wait().unwrap();
    let t = topology_until(&n2, &["a", "b"], Duration::from_secs(8), "after kill -9");
    assert!(edges(&t).is_empty(), "{t}");
    assert_eq!(t["nodes"][1]["mesh_peers"], json!(["sc-a"]));
    topology_until(&n1, &["a", "b"], W, "n1 after kill -9");
}

#[test]
fn without_redis_route_and_topology_answer_from_the_nodes_own_agents() {
    let Some(mut redis) = redis::start(&[]) else {
        return;
    };
    let k = keys(NO_PEERS);
    let n1 = node(&redis, "n1", 2, &k, "3");
    let n2 = node(&redis, "n2", 1, &k, "3");
    register(&n2, "a2", &["x"]);
    register(&n1, "a1", &["x"]);
    routed_until(&n1, "x", Some("a2"), W, "n1 with Redis");
    topology_until(&n1, &["a1", "a2"], W, "n1 with Redis");
    redis.kill();
    // 200, this node's agents.
    routed_until(&n1, "x", Some("a1"), W, "n1 without Redis");
    topology_until(&n1, &["a1"], W, "n1 without Redis");
    assert_eq!(routed(&n2, "x"), Some("a2".into()));
    topology_until(&n2, &["a2"], W, "n2 without Redis");
    // Redis is back (empty): every node writes its agents and their routes again.
    redis.restart();
    wait_ready(&n1);
    wait_ready(&n2);
    routed_until(
        &n1,
        "x",
        Some("a2"),
        Duration::from_secs(15),
        "n1 after the restart",
    );
    topology_until(
        &n2,
        &["a1", "a2"],
        Duration::from_secs(15),
        "n2 after the restart",
    );
}

/// The dashboard's agent list (sorted, filtered, paged) and its health counts include
/// the agents the other live nodes hold; a killed node's agents leave them with its lease.
#[test]
fn the_dashboard_lists_and_counts_the_agents_of_every_live_node() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = keys(NO_PEERS);
    let a = node(&redis, "a", 1, &k, "2");
    let mut b = node(&redis, "b", 2, &k, "2");
    for id in ["a1", "a2"] {
        register(&a, id, &["x"]);
    }
    for id in ["b1", "b2", "b3"] {
        register(&b, id, &["y"]);
    }
    let ids = |srv: &Server, path: &str| -> (Vec<String>, Value) {
        let r = srv.admin_get(path);
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let ids = v["items"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|r| r["agent_id"].as_str().unwrap().to_owned())
            .collect();
        (ids, v)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (got, _) = ids(&a, "/api/dashboard/agents");
        if got == ["a1", "a2", "b1", "b2", "b3"] {
            break;
        }
        assert!(Instant::now() < deadline, "{got:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Filtered, sorted and paged across nodes, at either node.
    for srv in [&a, &b] {
        let (got, v) = ids(srv, "/api/dashboard/agents?q=b&order=desc&limit=2");
        assert_eq!(got, ["b3", "b2"], "{v}");
        assert_eq!(v["total"], 3, "{v}");
        let cursor = v["next_cursor"].as_str().unwrap().to_owned();
        let (got, _) = ids(
            srv,
            &format!("/api/dashboard/agents?q=b&order=desc&limit=2&cursor={cursor}"),
        );
        assert_eq!(got, ["b1"]);
    }
    // The counts: each node writes its own every 5 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = a.admin_get("/api/dashboard/summary").json();
        if s["agents"]["active"] == 5 {
            break;
        }
        assert!(Instant::now() < deadline, "{s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // b killed: its agents leave a's list and counts once its lease is out.
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (got, _) = ids(&a, "/api/dashboard/agents");
        let s = a.admin_get("/api/dashboard/summary").json();
        if got == ["a1", "a2"] && s["agents"]["active"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{got:?} {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
