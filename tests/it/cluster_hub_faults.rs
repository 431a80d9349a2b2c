//! The cluster's task hub when the path to Redis fails under a write (issue 25,
//! `hub::cluster::takeback`, the claims' confirmation): a write whose answer is lost, a
//! reply held back, a command that arrives late, a node killed between a claim and its
//! answer. Node a reaches Redis through a fault-injecting proxy
//! (`common::proxy`), node b directly; real `redis-server`, real nodes.
use crate::cluster::{keys, metric, node, node_with, post_as, wait_ready};
use crate::cluster_hub::{heartbeat, ids, post_task, posted, task, tasks_in, AGENTS, FROM};
use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::redis;
use common::Server;
use serde_json::json;

/// Redis, the proxy to it, node a through the proxy (`extra` flags, a 10 s lease) and
/// node b direct; worker-1 known at a (its binding checked while Redis answers). Bind
/// every field where it is taken apart: one left to `..` would be dropped (Redis
/// stopped) at once.
struct Rig {
    redis: redis::Redis,
    proxy: Proxy,
    a: Server,
    b: Server,
}

fn rig(extra: &[&str]) -> Option<Rig> {
    let redis = redis::start(&[])?;
    let proxy = Proxy::start(([127, 0, 0, 1], redis.port).into());
    let k = keys(AGENTS);
    let flags: Vec<&str> = ["--cluster-lease", "10"]
        .iter()
        .chain(extra)
        .copied()
        .collect();
    let a = node_with(
        &format!("redis://127.0.0.1:{}", proxy.port),
        "a",
        1,
        &k,
        &flags,
    );
    let b = node(&redis, "b", 1, &k, "10");
    assert!(heartbeat(&a, "worker-1", &[]).is_empty());
    Some(Rig { redis, proxy, a, b })
}

/// Waits until `srv` has settled at least `n` kept take-backs and keeps none.
fn settled(srv: &Server, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let done = metric(srv, "chatixia_hub_cluster_take_backs_settled_total");
        if done >= n && metric(srv, "chatixia_hub_cluster_take_backs") == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "take-backs not settled ({done} of {n})\n{}",
            srv.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A write whose answer is lost (it ran in Redis, then the connection failed) is taken
/// back, also when the link is still down at that moment: a claim the agent never got
/// becomes claimable again, and a post answered 503 leaves no task behind, once the
/// node is connected again (hostile review: both stayed, `assigned` until the TTL, or a
/// second task beside the client's retry). Node a reaches Redis through a proxy that
/// swallows Redis's replies and then cuts every connection.
#[test]
fn a_write_whose_answer_was_lost_is_taken_back_once_redis_is_reachable_again() {
    let Some(Rig { redis, proxy, a, b }) = rig(&[]) else {
        return;
    };
    let tasks_in_redis = || tasks_in(&redis);
    let id = posted(
        &b,
        "ak_poster",
        &json!({"skill": "s", "payload": "lost-claim", "ttl": 600}),
    );
    // The write holding `pattern` reaches Redis, its answer (and every later one) is
    // lost, then every connection is cut: the node cannot count on the write, and
    // cannot take it back at once either (the link is down).
    let lose_answer = |pattern: &str, what: &dyn Fn() -> common::Resp| {
        proxy.swallow_after(pattern.as_bytes());
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(1500));
                proxy.cut_all();
                proxy.swallow_replies(false);
            });
            what()
        })
    };
    // The heartbeat's claim ran in Redis; its answer lost.
    let r = lose_answer("lost-claim", &|| {
        post_as(
            &a,
            FROM,
            Some("ak_worker-1"),
            "/api/hub/heartbeat",
            &json!({"agent_id": "worker-1", "hostname": "h", "skill_names": ["s"]}),
        )
    });
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["pending_tasks"].as_array().unwrap().is_empty(),
        "{}",
        r.text()
    );
    // The same for a post: answered 503, nothing may stay of it.
    wait_ready(&a);
    let r = lose_answer("lost-post", &|| {
        post_task(
            &a,
            "ak_poster",
            &json!({"skill": "s", "payload": "lost-post", "ttl": 600}),
        )
    });
    assert_eq!(r.status, 503, "{}", r.text());
    // Once a is connected again, both are taken back: the claim is pending again (any
    // worker claims it, at any node), the post's task is gone.
    wait_ready(&a);
    settled(&a, 2);
    assert_eq!(task(&b, &id)["state"], "pending", "{}", task(&b, &id));
    assert_eq!(tasks_in_redis(), 1, "the post answered 503 left a task");
    let got = heartbeat(&b, "worker-2", &["s"]);
    assert_eq!(ids(&got), BTreeSet::from([id.clone()]));
    assert_eq!(got[0]["assigned_agent_id"], "worker-2");
}

/// The heartbeat of worker-1 at `addr` listing skill `s`, on a raw connection (the node
/// may be killed while it waits): what came back, if anything.
fn heartbeat_raw(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let body = r#"{"agent_id":"worker-1","hostname":"h","skill_names":["s"]}"#;
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let _ = c.set_read_timeout(Some(Duration::from_secs(120)));
    let req = format!(
        "POST /api/hub/heartbeat HTTP/1.1\r\nhost: x\r\nx-api-key: ak_worker-1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = c.write_all(req.as_bytes());
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

/// Waits until the task is `state` (read at `srv`).
fn state_until(srv: &Server, id: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while task(srv, id)["state"] != state {
        assert!(
            Instant::now() < deadline,
            "never {state}: {}",
            task(srv, id)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 25: a node killed with `kill -9` between a claim and its answer leaves the
/// task claimable again after the claim's confirmation timeout (10 s, then the next
/// sweep: by Redis's clock, so a claimer whose clock runs 600 s ahead changes nothing),
/// at any other node, nobody's meanwhile, and it runs once. Node a reaches Redis
/// through a proxy that swallows the claim's reply, so a dies with its claim written
/// and never confirmed.
#[test]
fn a_claim_left_unconfirmed_by_a_killed_node_is_claimable_again_at_another() {
    let Some(Rig {
        redis: _redis,
        proxy,
        mut a,
        b,
    }) = rig(&[])
    else {
        return;
    };
    let id = posted(
        &b,
        "ak_poster",
        &json!({"skill": "s", "payload": "lost-kill", "ttl": 600}),
    );
    let r = a.post_json("/debug/clock", &json!({"advance_secs": 600}));
    assert_eq!(r.status, 200, "{}", r.text());
    proxy.swallow_after(b"lost-kill");
    let addr = a.addr;
    let hb = std::thread::spawn(move || heartbeat_raw(addr));
    // The claim is in Redis; a never hears of it, and dies.
    state_until(&b, &id, "assigned");
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let answer = hb.join().unwrap();
    assert!(!answer.contains(&id), "{answer}");
    // Not claimable before the timeout…
    assert!(heartbeat(&b, "worker-2", &["s"]).is_empty());
    assert_eq!(task(&b, &id)["assigned_agent_id"], "worker-1");
    // …and after it: pending, nobody's (as a claim put back on a node alone: neither
    // the old claimer nor anyone else may report it)…
    let since = Instant::now();
    state_until(&b, &id, "pending");
    assert!(
        since.elapsed() < Duration::from_secs(17),
        "{:?}",
        since.elapsed()
    );
    assert_eq!(task(&b, &id)["assigned_agent_id"], "");
    let path = format!("/api/hub/tasks/{id}");
    let forged = json!({"state": "completed", "result": "forged"});
    for key in [Some("ak_worker-1"), Some("ak_worker-2"), None] {
        let r = post_as(&b, FROM, key, &path, &forged);
        assert_eq!(r.status, 403, "{key:?}: {}", r.text());
    }
    // …and claimed by the next heartbeat that may, at b.
    let got = heartbeat(&b, "worker-2", &["s"]);
    assert_eq!(ids(&got), BTreeSet::from([id.clone()]));
    assert_eq!(task(&b, &id)["assigned_agent_id"], "worker-2");
    // Confirmed: the sweep leaves it with worker-2 however late.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(task(&b, &id)["state"], "assigned");
    assert_eq!(task(&b, &id)["assigned_agent_id"], "worker-2");
}

/// A node stalled between its claim and the claim's confirmation past the timeout
/// (another node took the claim back and handed the task to another agent) does not
/// hand the task out too: its confirmation loses the compare-and-set. Node a's path to
/// Redis holds the claim's reply back until then.
#[test]
fn a_node_that_confirms_its_claim_too_late_does_not_hand_the_task_out() {
    let Some(Rig {
        redis: _redis,
        proxy,
        a,
        b,
    }) = rig(&["--cluster-command-timeout", "120"])
    else {
        return;
    };
    let id = posted(
        &b,
        "ak_poster",
        &json!({"skill": "s", "payload": "lost-stall", "ttl": 600}),
    );
    proxy.hold_after(b"lost-stall");
    let addr = a.addr;
    let hb = std::thread::spawn(move || heartbeat_raw(addr));
    state_until(&b, &id, "assigned");
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let got = heartbeat(&b, "worker-2", &["s"]);
        if !got.is_empty() {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "never claimable again: {}",
            task(&b, &id)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(ids(&got), BTreeSet::from([id.clone()]));
    // a hears back now: its confirmation finds the task changed, and hands out nothing.
    proxy.release();
    let answer = hb.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!answer.contains(&id), "handed out twice: {answer}");
    assert_eq!(task(&b, &id)["assigned_agent_id"], "worker-2");
}

/// A post answered 503 leaves no task even when its write reaches Redis after its
/// take-back ran (hostile review: the take-back found no task yet, counted itself done,
/// and the late write made one): the take-back leaves a tombstone the late write cannot
/// pass. Node a's path to Redis holds the post's command back past a's command timeout.
#[test]
fn a_post_whose_write_arrives_after_its_take_back_leaves_no_task() {
    let Some(Rig {
        redis: _redis,
        proxy,
        a,
        b,
    }) = rig(&["--cluster-command-timeout", "1"])
    else {
        return;
    };
    proxy.delay_after(b"late-post", Duration::from_secs(5));
    let r = post_task(
        &a,
        "ak_poster",
        &json!({"skill": "s", "payload": "late-post", "ttl": 600}),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    // The take-back runs once a is connected again (before the write arrives)…
    wait_ready(&a);
    settled(&a, 1);
    // …then the write arrives: no task comes of it.
    std::thread::sleep(Duration::from_secs(6));
    let r = b.req(
        "GET",
        "/api/hub/tasks/all",
        &[("X-API-Key", "ak_test_admin")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!([]), "the post answered 503 made a task");
    assert!(heartbeat(&b, "worker-1", &["s"]).is_empty());
}
