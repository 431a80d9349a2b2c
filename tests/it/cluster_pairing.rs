//! Pairing entries and invite codes across the nodes of a cluster (issue 25,
//! `pairing::directory`, `server::forward`): a code issued at one node is redeemed at
//! another; the entry it makes is listed, approved, rejected or revoked at any node and
//! its claim path answers at any node; an entry whose node is gone is a 503 naming it.
//! Real `redis-server`, real nodes, HTTP over loopback.
use crate::cluster::{keys, node};
use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::redis;
use common::Server;
use serde_json::{json, Value};

fn pairing_keys() -> String {
    keys(&[("alice", None), ("mallory", Some("other"))])
}

fn code_at(srv: &Server, inviter: &str) -> String {
    let r = srv.req(
        "POST",
        "/api/pairing/generate-code",
        &[("X-API-Key", &format!("ak_{inviter}"))],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["code"].as_str().unwrap().to_string()
}

/// `pair` at `srv` from a source address of its own (the rate limit is per address).
fn pair_at(srv: &Server, from: u8, code: &str, name: &str) -> common::Resp {
    let body = serde_json::to_vec(&json!({"code": code, "agent_name": name})).unwrap();
    srv.conn_from([127, 0, 27, from].into()).request(
        "POST",
        "/api/pairing/pair",
        &[("Content-Type", "application/json")],
        Some(&body),
    )
}

fn status_at(srv: &Server, id: &str, secret: &str) -> common::Resp {
    srv.req(
        "GET",
        &format!("/api/pairing/{id}/status"),
        &[("Authorization", &format!("Bearer {secret}"))],
        None,
    )
}

fn pending_ids(srv: &Server) -> BTreeSet<String> {
    let r = srv.admin_get("/api/pairing/pending");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_code_issued_at_one_node_pairs_at_another_and_the_entry_is_handled_anywhere() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = pairing_keys();
    let a = node(&redis, "a", 1, &k, "10");
    let b = node(&redis, "b", 2, &k, "10");
    let c = node(&redis, "c", 1, &k, "10");
    // Issued at a (by mallory: mesh `other`), redeemed at b: the entry is a's.
    let code = code_at(&a, "mallory");
    let r = pair_at(&b, 1, &code, "laptop");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let id = v["id"].as_str().unwrap().to_owned();
    let secret = v["claim_secret"].as_str().unwrap().to_owned();
    let peer = v["peer_id"].as_str().unwrap().to_owned();
    assert_eq!(v["status"], "pending_approval");
    assert_eq!(
        redis.cmd(&["HGET", "chx:pe", &id]),
        redis::Reply::Bulk("a".into()),
        "the entry is noted as a's"
    );
    // Single use, at every node.
    for (n, from) in [(&a, 2), (&b, 3), (&c, 4)] {
        let r = pair_at(n, from, &code, "again");
        assert_eq!(r.status, 401, "{}", r.text());
    }
    // Listed at every node, once.
    for n in [&a, &b, &c] {
        assert_eq!(pending_ids(n), BTreeSet::from([id.clone()]));
    }
    // The claim path answers at every node: pending, no token; a wrong secret is 401.
    for n in [&a, &b, &c] {
        let r = status_at(n, &id, &secret);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["status"], "pending_approval");
        assert!(r.json().get("device_token").is_none());
        assert_eq!(status_at(n, &id, "cs_wrong").status, 401);
    }
    // Approved at c (the entry stays a's).
    let r = c.admin_req("POST", &format!("/api/pairing/{id}/approve"));
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["device_token"].as_str().unwrap().to_owned();
    assert_eq!(r.json()["peer_id"], peer.as_str());
    assert!(pending_ids(&b).is_empty());
    // The device fetches its token at b, and uses it at c: the claim path closes at
    // every node.
    let r = status_at(&b, &id, &secret);
    assert_eq!(r.json()["device_token"], token.as_str(), "{}", r.text());
    let r = c.req("POST", "/api/token", &[("X-Device-Token", &token)], None);
    assert_eq!(r.status, 200, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_at(&a, &id, &secret)
        .json()
        .get("device_token")
        .is_some()
    {
        assert!(Instant::now() < deadline, "the claim path stayed open");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Revoked at b: the token is refused everywhere.
    let r = b.admin_req("POST", &format!("/api/pairing/{id}/revoke"));
    assert_eq!(r.status, 200, "{}", r.text());
    for n in [&a, &b, &c] {
        let r = n.req("POST", "/api/token", &[("X-Device-Token", &token)], None);
        assert_eq!(r.status, 401, "{}", r.text());
    }
    let all = c.admin_get("/api/pairing/all").json();
    assert_eq!(all[0]["status"], "revoked", "{all}");
}

#[test]
fn entries_of_several_nodes_page_together_and_reject_works_anywhere() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = pairing_keys();
    let a = node(&redis, "a", 1, &k, "10");
    let b = node(&redis, "b", 1, &k, "10");
    let mut want = Vec::new();
    for n in 0..5u8 {
        let at = if n % 2 == 0 { &a } else { &b };
        let code = code_at(at, "alice");
        let r = pair_at(at, 10 + n, &code, &format!("dev-{n}"));
        assert_eq!(r.status, 200, "{}", r.text());
        want.push(r.json()["id"].as_str().unwrap().to_owned());
        std::thread::sleep(Duration::from_millis(5));
    }
    // Pages of two at a, following the cursor: every entry once, by creation.
    let mut seen = Vec::new();
    let mut url = "/api/pairing/pending?limit=2".to_owned();
    for _ in 0..5 {
        let r = a.admin_get(&url);
        assert_eq!(r.status, 200, "{}", r.text());
        let page: Vec<Value> = r.json().as_array().unwrap().clone();
        assert!(page.len() <= 2, "{}", r.text());
        seen.extend(page.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        match r.header("x-next-cursor") {
            Some(c) => url = format!("/api/pairing/pending?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, want);
    // b's entry rejected at a, a's at b.
    for (at, id) in [(&a, &want[1]), (&b, &want[0])] {
        let r = at.admin_req("POST", &format!("/api/pairing/{id}/reject"));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let left = pending_ids(&b);
    assert_eq!(left, want[2..].iter().cloned().collect());
}

/// An entry whose node is gone (killed, its lease run out) is answered 503 naming the
/// node, not 404: it is not lost, only away.
#[test]
fn an_entry_whose_node_is_gone_is_a_503_naming_it() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = pairing_keys();
    let mut a = node(&redis, "a", 1, &k, "2");
    let b = node(&redis, "b", 1, &k, "2");
    let code = code_at(&a, "alice");
    let r = pair_at(&a, 1, &code, "laptop");
    let id = r.json()["id"].as_str().unwrap().to_owned();
    // A code issued at a and not used yet, either.
    let unused = code_at(&a, "alice");
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = b.admin_req("POST", &format!("/api/pairing/{id}/approve"));
        if r.status == 503 {
            assert!(r.text().contains("node `a`"), "{}", r.text());
            break;
        }
        assert!(Instant::now() < deadline, "{} {}", r.status, r.text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = pair_at(&b, 2, &unused, "x");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("node `a`"), "{}", r.text());
}

/// Redis restarted empty: each node notes its entries and live codes again once it
/// reconnects, so an entry is still reached from another node (approved there) and a code
/// still pairs there.
#[test]
fn entries_are_noted_again_after_redis_lost_its_data() {
    let Some(mut redis) = redis::start(&[]) else {
        return;
    };
    let k = pairing_keys();
    let a = node(&redis, "a", 2, &k, "10");
    let b = node(&redis, "b", 1, &k, "10");
    let code = code_at(&a, "alice");
    let r = pair_at(&a, 1, &code, "laptop");
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    // A code issued at a, not used yet: noted again too.
    let unused = code_at(&a, "alice");
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while redis.cmd(&["HGET", "chx:pe", &id]) != redis::Reply::Bulk("a".into()) {
        assert!(Instant::now() < deadline, "the entry was not noted again");
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = b.admin_req("POST", &format!("/api/pairing/{id}/approve"));
        if r.status == 200 {
            assert!(r.json()["device_token"].as_str().is_some());
            break;
        }
        assert!(Instant::now() < deadline, "{} {}", r.status, r.text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = pair_at(&b, 2, &unused, "second");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        redis.cmd(&["HGET", "chx:pe", r.json()["id"].as_str().unwrap()]),
        redis::Reply::Bulk("a".into()),
        "paired at a, the code's node"
    );
}
