//! Pairing entries and invite codes across the nodes of a cluster (issue 25,
//! `pairing::directory`, `server::forward`): a code issued at one node is redeemed at
//! another; the entry it makes is listed, approved, rejected or revoked at any node and
//! its claim path answers at any node; an entry whose node is gone is a 503 naming it.
//! Real `redis-server`, real nodes, HTTP over loopback.
use crate::cluster::{keys, node};
use crate::common;
use common::ws::{connect, recv_close};

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

/// The status of entry `id` in `srv`'s `GET /api/pairing/all`, if listed.
fn status_in_all(srv: &Server, id: &str) -> Option<String> {
    let r = srv.admin_get("/api/pairing/all");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .map(|e| e["status"].as_str().unwrap_or("").to_owned())
}

/// A device whose entry's node is down (`kill -9`) can still be revoked, at any node:
/// once that node's lease ran out, the revocation at another node takes its token out of
/// the cluster (refused at every node), closes its WebSocket there with 4001 at once, and
/// the dead node, restarted on its data directory, does not write the approval back but
/// revokes the entry in its own store (listed revoked, its token refused there too).
/// While the node is still live the request goes to it as before; a pending entry of a
/// node that is down stays a 503 naming it (only its node can tell it apart).
#[test]
fn a_device_is_revocable_while_its_entrys_node_is_down_and_that_node_learns_it() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = pairing_keys();
    let dir = common::TempDir::new();
    let data = dir.0.join("data");
    let data = data.to_str().unwrap();
    let a_flags = ["--cluster-lease", "2", "--data-dir", data];
    let mut a = crate::cluster::node_with(&redis.url(), "a", 1, &k, &a_flags);
    let b = node(&redis, "b", 2, &k, "2");
    // Approved at a; a second entry left pending at a.
    let code = code_at(&a, "alice");
    let r = pair_at(&a, 1, &code, "laptop");
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = a.admin_req("POST", &format!("/api/pairing/{id}/approve"));
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["device_token"].as_str().unwrap().to_owned();
    let code = code_at(&a, "alice");
    let r = pair_at(&a, 2, &code, "phone");
    assert_eq!(r.status, 200, "{}", r.text());
    let pending = r.json()["id"].as_str().unwrap().to_owned();
    // The device signals through b on its token.
    let r = b.req("POST", "/api/token", &[("X-Device-Token", &token)], None);
    assert_eq!(r.status, 200, "{}", r.text());
    let jwt = r.json()["token"].as_str().unwrap().to_owned();
    let mut at_b = connect(&b, &jwt).expect("device connects at b");
    // a dies; until its lease runs out b cannot tell it from a slow node: 503.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = b.admin_req("POST", &format!("/api/pairing/{id}/revoke"));
        if r.status == 200 {
            assert!(r.text().contains("node `a`"), "{}", r.text());
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(Instant::now() < deadline, "{} {}", r.status, r.text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, reason) = recv_close(&mut at_b);
    assert_eq!(code, 4001, "{reason}");
    let r = b.req("POST", "/api/token", &[("X-Device-Token", &token)], None);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(connect(&b, &jwt).err(), Some(401));
    // Again (a retry after a lost answer): the same answer.
    let r = b.admin_req("POST", &format!("/api/pairing/{id}/revoke"));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = b.admin_req("POST", &format!("/api/pairing/{pending}/revoke"));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("node `a`"), "{}", r.text());
    // a comes back on its data directory: the entry is revoked there (listed so, its
    // token refused: the revocation's steps, which its list shows first), durably.
    drop(a);
    let a = crate::cluster::node_with(&redis.url(), "a", 1, &k, &a_flags);
    revoked_at(&a, &id);
    token_refused_at(&a, &token);
    assert_eq!(connect(&a, &jwt).err(), Some(401));
    assert_eq!(status_in_all(&b, &id).as_deref(), Some("revoked"));
    assert_eq!(
        status_in_all(&b, &pending).as_deref(),
        Some("pending_approval")
    );
    // The approval was not written back; the note of the revocation stays until the
    // entry is retired.
    assert_eq!(
        redis.cmd(&["HEXISTS", "chx:pap", &id]),
        redis::Reply::Int(0)
    );
    assert_eq!(
        redis.cmd(&["HEXISTS", "chx:prv", &id]),
        redis::Reply::Int(1)
    );
    // Restarted once more, it stays revoked (the local revocation was durable).
    let mut a = a;
    a.restart();
    crate::cluster::wait_ready(&a);
    assert_eq!(status_in_all(&a, &id).as_deref(), Some("revoked"));
    let r = a.req("POST", "/api/token", &[("X-Device-Token", &token)], None);
    assert_eq!(r.status, 401, "{}", r.text());
}

/// The approval script against a real Redis: it refuses (and names) an id whose note of
/// a revocation made away names the same token key (whatever node asserts it); a note of
/// another token key is of another entry that had the same id (ids are drawn at each
/// node and reused once their node is gone), so it goes and the approval is written,
/// with its note for a later revocation away. `UNAPPROVE` removes that note but not a
/// revocation's (only the entry's retirement does).
#[test]
fn the_approval_script_refuses_only_the_revoked_token() {
    use chatixia_core::pairing::cluster::{APPROVE, UNAPPROVE};
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let keys = ["chx:tokens", "chx:authz", "chx:pap", "chx:prv"];
    let note = |k: &str| json!({"k": k, "p": "p", "n": "gone"}).to_string();
    let (na, nb) = (note("k1"), note("old-key"));
    assert_eq!(
        redis.cmd(&["HSET", "chx:prv", "0000000a", &na]),
        redis::Reply::Int(1)
    );
    assert_eq!(
        redis.cmd(&["HSET", "chx:prv", "0000000b", &nb]),
        redis::Reply::Int(1)
    );
    // A note that is not one (not JSON, or not an object) refuses: failing closed.
    assert_eq!(
        redis.cmd(&["HSET", "chx:prv", "0000000d", "a"]),
        redis::Reply::Int(1)
    );
    assert_eq!(
        redis.cmd(&["HSET", "chx:prv", "0000000e", "2"]),
        redis::Reply::Int(1)
    );
    let grant = r#"{"peer_id":"p","role":"agent","mesh":null,"entry_id":10}"#;
    let mut args = vec!["EVAL", APPROVE.source, "4"];
    args.extend(keys);
    args.extend(["k1", grant, "p1", "0000000a", "0", ""]);
    args.extend(["k2", grant, "p2", "0000000b", "0", ""]);
    args.extend(["k3", grant, "p3", "0000000c", "0", ""]);
    args.extend(["k4", grant, "p4", "0000000d", "0", ""]);
    args.extend(["k5", grant, "p5", "0000000e", "0", ""]);
    assert_eq!(
        redis.cmd(&args),
        redis::Reply::Array(
            ["0000000a", "0000000d", "0000000e"]
                .into_iter()
                .map(|id| redis::Reply::Bulk(id.into()))
                .collect()
        )
    );
    assert!(["k4", "k5"]
        .iter()
        .all(|k| redis.cmd(&["HEXISTS", "chx:tokens", k]) == redis::Reply::Int(0)));
    let exists = |h: &str, f: &str| redis.cmd(&["HEXISTS", h, f]) == redis::Reply::Int(1);
    assert!(!exists("chx:tokens", "k1") && !exists("chx:authz", "p1"));
    assert!(!exists("chx:pap", "0000000a") && exists("chx:prv", "0000000a"));
    for (k, p, id) in [("k2", "p2", "0000000b"), ("k3", "p3", "0000000c")] {
        assert!(exists("chx:tokens", k) && exists("chx:authz", p), "{id}");
        assert!(exists("chx:pap", id) && !exists("chx:prv", id), "{id}");
    }
    let redis::Reply::Bulk(noted) = redis.cmd(&["HGET", "chx:pap", "0000000b"]) else {
        panic!("no note")
    };
    let noted: Value = serde_json::from_str(&noted).unwrap();
    assert_eq!(noted, json!({"k": "k2", "p": "p2"}));
    // Unapproved (its node revoked it itself): its approval's note goes, a revocation's
    // note stays.
    let mut args = vec!["EVAL", UNAPPROVE.source, "4"];
    args.extend(keys);
    args.extend(["", "p1", "0000000a", "k2", "p2", "0000000b"]);
    assert_eq!(
        redis.cmd(&args),
        redis::Reply::Array(vec![redis::Reply::Bulk("p2".into())])
    );
    assert!(exists("chx:prv", "0000000a") && !exists("chx:pap", "0000000b"));
    assert!(!exists("chx:tokens", "k2") && exists("chx:tokens", "k3"));
}

/// An approved device at `a` (a fresh code, paired from address `from`): its entry id
/// and device token.
/// Each step is tried again on a 503 for a while (under Sentinel, until the replica has
/// synced, a write is not confirmed).
fn approved_at(a: &Server, from: u8) -> (String, String) {
    let until_ok = |what: &str, f: &dyn Fn() -> common::Resp| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = f();
            if r.status == 200 {
                return r;
            }
            assert_eq!(r.status, 503, "{what}: {}", r.text());
            assert!(Instant::now() < deadline, "{what}: {}", r.text());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let code = until_ok("code", &|| {
        a.req(
            "POST",
            "/api/pairing/generate-code",
            &[("X-API-Key", "ak_alice")],
            None,
        )
    })
    .json()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = until_ok("pair", &|| pair_at(a, from, &code, "laptop"));
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = until_ok("approve", &|| {
        a.admin_req("POST", &format!("/api/pairing/{id}/approve"))
    });
    (id, r.json()["device_token"].as_str().unwrap().to_owned())
}

/// Revokes `id` at `b` once its node's lease ran out (503 until then).
/// The peer id of entry `id`, as `srv` lists it.
fn peer_of(srv: &Server, id: &str) -> String {
    let all = srv.admin_get("/api/pairing/all").json();
    all.as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .unwrap()["peer_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn revoke_away_at(b: &Server, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = b.admin_req("POST", &format!("/api/pairing/{id}/revoke"));
        if r.status == 200 {
            return;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(Instant::now() < deadline, "{} {}", r.status, r.text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn token_status(srv: &Server, token: &str) -> u16 {
    srv.req("POST", "/api/token", &[("X-Device-Token", token)], None)
        .status
}

/// Waits until `srv` lists entry `id` as revoked.
fn revoked_at(srv: &Server, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while status_in_all(srv, id).as_deref() != Some("revoked") {
        assert!(
            Instant::now() < deadline,
            "{:?}\n{}",
            status_in_all(srv, id),
            srv.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `srv` refuses `token` (its revocation's steps are under way there).
fn token_refused_at(srv: &Server, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while token_status(srv, token) != 401 {
        assert!(
            Instant::now() < deadline,
            "token still works\n{}",
            srv.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The dead holder's data directory brought back under another `--node-id` (which takes
/// its entries over): the note of the revocation names the token, not the node, so the
/// approval is not written back and the new node revokes the entry (review of the
/// first version: it wrote the approval back).
#[test]
fn a_revocation_away_holds_when_the_holder_comes_back_under_another_node_id() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = pairing_keys();
    let dir = common::TempDir::new();
    let data = dir.0.join("data");
    let data = data.to_str().unwrap();
    let flags = ["--cluster-lease", "2", "--data-dir", data];
    let mut a = crate::cluster::node_with(&redis.url(), "a", 1, &k, &flags);
    let b = node(&redis, "b", 1, &k, "2");
    let (id, token) = approved_at(&a, 1);
    assert_eq!(token_status(&b, &token), 200);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    revoke_away_at(&b, &id);
    assert_eq!(token_status(&b, &token), 401);
    drop(a);
    let c = crate::cluster::node_with(&redis.url(), "c", 1, &k, &flags);
    revoked_at(&c, &id);
    token_refused_at(&c, &token);
    assert_eq!(token_status(&b, &token), 401);
}

/// The holder, back with a full disk, revokes the entry in memory only; killed before
/// the disk frees, its store still says approved: the note of the revocation is still in
/// Redis (only the entry's retirement removes it), so the next start revokes it again
/// rather than writing the approval back (review of the first version: its own
/// revocation removed the note whatever its store answered).
#[test]
fn a_revocation_away_outlives_a_holder_that_could_not_save_it() {
    let Some(fs) = crate::store_disk::Tmpfs::mount("16m") else {
        return;
    };
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = pairing_keys();
    let data = fs.path.join("data");
    let data = data.to_str().unwrap();
    let flags = [
        "--cluster-lease",
        "2",
        "--data-dir",
        data,
        "--store-retry-interval",
        "0.2",
    ];
    let mut a = crate::cluster::node_with(&redis.url(), "a", 1, &k, &flags);
    let b = node(&redis, "b", 1, &k, "2");
    let (id, token) = approved_at(&a, 1);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    revoke_away_at(&b, &id);
    // The disk fills up, then a comes back and revokes the entry (in memory).
    let ballast = fs.path.join("ballast");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&ballast).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    drop(a);
    let mut o = common::Opts::cores(1);
    o.keys = Some(k.clone());
    o.args = ["--cluster", &redis.url(), "--node-id", "a"]
        .iter()
        .chain(flags.iter())
        .map(|s| s.to_string())
        .collect();
    let mut a = Server::with(o);
    revoked_at(&a, &id);
    // Killed before the disk frees; started again with room.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    std::fs::remove_file(&ballast).unwrap();
    drop(a);
    let a = crate::cluster::node_with(&redis.url(), "a", 1, &k, &flags);
    revoked_at(&a, &id);
    token_refused_at(&a, &token);
    assert_eq!(token_status(&b, &token), 401);
    // Nothing of the approval was written back (the cluster held only this token).
    assert_eq!(redis.cmd(&["HLEN", "chx:tokens"]), redis::Reply::Int(0));
    assert_eq!(
        redis.cmd(&["HEXISTS", "chx:pap", &id]),
        redis::Reply::Int(0)
    );
}

/// Sentinel with its replica gone: the revocation runs on the primary but no replica
/// confirms it. The answer is a 503 saying so, but the token is refused and the
/// device's open WebSocket closes at once (4001); once the replica is back a retry
/// answers 200 (the script answers the same for a revocation it already made). Review
/// of the first version: no close, and every retry a 503 "not live".
#[test]
fn an_unconfirmed_revocation_away_closes_the_device_and_a_retry_confirms_it() {
    let Some((_primary, mut replica, _sentinel, url)) = redis::sentinel_pair() else {
        return;
    };
    let k = pairing_keys();
    let mut a = crate::cluster::node_at(&url, "a", 1, &k, "2");
    let b = crate::cluster::node_at(&url, "b", 1, &k, "2");
    let (id, token) = approved_at(&a, 1);
    let r = b.req("POST", "/api/token", &[("X-Device-Token", &token)], None);
    assert_eq!(r.status, 200, "{}", r.text());
    let jwt = r.json()["token"].as_str().unwrap().to_owned();
    let mut ws = connect(&b, &jwt).expect("connects at b");
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    replica.kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = b.admin_req("POST", &format!("/api/pairing/{id}/revoke"));
        assert_ne!(r.status, 200, "{}", r.text());
        if r.text().contains("not confirmed") {
            assert_eq!(r.status, 503, "{}", r.text());
            break;
        }
        assert!(Instant::now() < deadline, "{}", r.text());
        std::thread::sleep(Duration::from_millis(300));
    }
    let (code, reason) = recv_close(&mut ws);
    assert_eq!(code, 4001, "{reason}");
    assert_eq!(token_status(&b, &token), 401);
    assert_eq!(connect(&b, &jwt).err(), Some(401));
    replica.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = b.admin_req("POST", &format!("/api/pairing/{id}/revoke"));
        if r.status == 200 {
            break;
        }
        assert!(
            r.text().contains("not confirmed"),
            "{} {}",
            r.status,
            r.text()
        );
        assert!(Instant::now() < deadline, "{}", r.text());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(token_status(&b, &token), 401);
}

/// A peer id approved by two entries (peer ids are 24 random bits and may repeat): the
/// revocation away of one leaves its connections open (another approval remains), and
/// so does the holder's own revocation when it comes back: whether the other nodes close
/// a peer is decided by the cluster's approvals, not by the revoking node's (second
/// review: the holder, back, broadcast the revocation because its own last approval of
/// the peer went, and every other node closed and refused the peer for 360 s).
#[test]
fn a_peer_with_another_approval_stays_connected_through_a_revocation_away() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = pairing_keys();
    let dir = common::TempDir::new();
    let data = dir.0.join("data");
    let data = data.to_str().unwrap();
    let flags = ["--cluster-lease", "2", "--data-dir", data];
    let mut a = crate::cluster::node_with(&redis.url(), "a", 1, &k, &flags);
    let b = node(&redis, "b", 1, &k, "2");
    let (id, token) = approved_at(&a, 1);
    let redis::Reply::Bulk(note) = redis.cmd(&["HGET", "chx:pap", &id]) else {
        panic!("no note of the approval")
    };
    let note: Value = serde_json::from_str(&note).unwrap();
    let peer = note["p"].as_str().unwrap().to_owned();
    // A second approval of the same peer id, by another entry of another node.
    redis.cmd(&[
        "HSET",
        "chx:authz",
        &peer,
        &json!({"e": [id.clone(), "fedcba98"]}).to_string(),
    ]);
    let r = b.req("POST", "/api/token", &[("X-Device-Token", &token)], None);
    assert_eq!(r.status, 200, "{}", r.text());
    let jwt = r.json()["token"].as_str().unwrap().to_owned();
    let mut ws = connect(&b, &jwt).expect("connects at b");
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    revoke_away_at(&b, &id);
    assert_eq!(
        token_status(&b, &token),
        401,
        "this entry's token is revoked"
    );
    let no_close = |ws: &mut common::ws::Ws, for_: Duration| {
        ws.get_mut().set_read_timeout(Some(for_)).ok();
        while let Ok(m) = ws.read() {
            assert!(
                !matches!(m, tungstenite::Message::Close(_)),
                "closed although another approval remains: {m:?}"
            );
        }
    };
    no_close(&mut ws, Duration::from_millis(1000));
    drop(a);
    let a = crate::cluster::node_with(&redis.url(), "a", 1, &k, &flags);
    revoked_at(&a, &id);
    no_close(&mut ws, Duration::from_millis(1000));
    assert_eq!(
        redis.cmd(&["HEXISTS", "chx:authz", &peer]),
        redis::Reply::Int(1)
    );
    assert!(
        connect(&b, &jwt).is_ok(),
        "refused at b although approved by its other entry"
    );
}

/// A revocation at the entry's own node while Redis refuses the removal of its records
/// (here an ACL that denies `HDEL` for a while; a script error, a reply no replica
/// confirmed or a link too busy are the same case) and the link stays up: answered 202
/// `"cluster": false`, and the records must not wait for a reconnect that may never come
/// (before: they stayed until this node's next connect, and the token kept working at
/// every other node). The node tries the removal again while the link is up: once Redis
/// takes it, the token is refused at the other node and the device's connection there
/// closes (4001), with no reconnect of the link.
#[test]
fn a_revocation_redis_refused_is_retried_while_the_link_stays_up() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = pairing_keys();
    let a = node(&redis, "a", 1, &k, "2");
    let b = node(&redis, "b", 1, &k, "2");
    let (id, token) = approved_at(&a, 1);
    let r = b.req("POST", "/api/token", &[("X-Device-Token", &token)], None);
    assert_eq!(r.status, 200, "{}", r.text());
    let jwt = r.json()["token"].as_str().unwrap().to_owned();
    let mut at_b = connect(&b, &jwt).expect("device connects at b");
    let reconnects = crate::cluster::metric(&a, "chatixia_cluster_reconnects_total");
    redis.cmd(&["ACL", "SETUSER", "default", "-hdel"]);
    let r = a.admin_req("POST", &format!("/api/pairing/{id}/revoke"));
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["cluster"], json!(false), "{}", r.text());
    // Refused at a at once; still in the cluster's records while Redis refuses.
    assert_eq!(token_status(&a, &token), 401);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(token_status(&b, &token), 200, "the fault is not in effect");
    redis.cmd(&["ACL", "SETUSER", "default", "+hdel"]);
    token_refused_at(&b, &token);
    let (code, reason) = recv_close(&mut at_b);
    assert_eq!(code, 4001, "{reason}");
    assert_eq!(connect(&b, &jwt).err(), Some(401));
    assert_eq!(
        crate::cluster::metric(&a, "chatixia_cluster_reconnects_total"),
        reconnects,
        "the link reconnected: the retry is not what removed the records\n{}",
        a.log()
    );
    assert_eq!(
        crate::cluster::metric(&a, "chatixia_pairing_cluster_revocations_unsynced"),
        0
    );
}

/// The same, with the revoking node killed (`kill -9`) and started again on its data
/// directory while Redis still refuses (here its link cannot even connect: its connect
/// script needs `HDEL` too): it refuses the token though Redis's token hash still holds
/// it (its store says revoked; before, a node that could not ask Redis answered 503,
/// and one that could, 200), and once Redis takes commands again its connect removes
/// the records, so the other node refuses the token too.
#[test]
fn a_revocation_redis_refused_holds_across_a_restart() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = pairing_keys();
    let dir = common::TempDir::new();
    let data = dir.0.join("data");
    let data = data.to_str().unwrap();
    let flags = ["--cluster-lease", "2", "--data-dir", data];
    let mut a = crate::cluster::node_with(&redis.url(), "a", 1, &k, &flags);
    let b = node(&redis, "b", 1, &k, "2");
    let (id, token) = approved_at(&a, 1);
    assert_eq!(token_status(&b, &token), 200);
    redis.cmd(&["ACL", "SETUSER", "default", "-hdel"]);
    let r = a.admin_req("POST", &format!("/api/pairing/{id}/revoke"));
    assert_eq!(r.status, 202, "{}", r.text());
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    drop(a);
    let mut o = common::Opts::cores(1);
    o.keys = Some(k.clone());
    o.args = ["--cluster", &redis.url(), "--node-id", "a"]
        .iter()
        .chain(&flags)
        .map(|s| s.to_string())
        .collect();
    let a = Server::with(o);
    assert_eq!(a.get("/readyz").status, 503, "the fault is not in effect");
    assert_eq!(token_status(&a, &token), 401, "{}", a.log());
    assert_eq!(token_status(&b, &token), 200, "the fault is not in effect");
    redis.cmd(&["ACL", "SETUSER", "default", "+hdel"]);
    crate::cluster::wait_ready(&a);
    token_refused_at(&b, &token);
    assert_eq!(token_status(&a, &token), 401);
}

/// Two revocations wait for Redis; meanwhile the approval record of one peer becomes
/// unreadable (not JSON). Once Redis takes commands again both go: the removal reads
/// the record through `pcall` and, unable to tell which entries approve the peer, takes
/// the approval (fails closed) rather than failing the whole retry every second (review:
/// one bad record kept every other revocation of the batch from ever reaching Redis).
#[test]
fn revocations_waiting_for_redis_go_even_past_an_unreadable_approval() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = pairing_keys();
    let a = node(&redis, "a", 1, &k, "2");
    let b = node(&redis, "b", 1, &k, "2");
    let (id1, t1) = approved_at(&a, 1);
    let (id2, t2) = approved_at(&a, 2);
    let (p1, p2) = (peer_of(&a, &id1), peer_of(&a, &id2));
    redis.cmd(&["ACL", "SETUSER", "default", "-hdel"]);
    for id in [&id1, &id2] {
        let r = a.admin_req("POST", &format!("/api/pairing/{id}/revoke"));
        assert_eq!(r.status, 202, "{}", r.text());
        assert!(
            r.text().contains("sends it again while connected"),
            "{}",
            r.text()
        );
    }
    assert_eq!(
        crate::cluster::metric(&a, "chatixia_pairing_cluster_revocations_unsynced"),
        2
    );
    redis.cmd(&["HSET", "chx:authz", &p1, "{not json"]);
    redis.cmd(&["ACL", "SETUSER", "default", "+hdel"]);
    token_refused_at(&b, &t1);
    token_refused_at(&b, &t2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::cluster::metric(&a, "chatixia_pairing_cluster_revocations_unsynced") != 0 {
        assert!(Instant::now() < deadline, "{}", a.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    for p in [&p1, &p2] {
        assert_eq!(redis.cmd(&["HGET", "chx:authz", p]), redis::Reply::Nil);
    }
}

/// Two revocations Redis refused, the revoking node killed and started again (its retry
/// table is gone: its connect removes them), and meanwhile one peer's approval record
/// became one that reads but cannot be written back (`1e999`): the connect's removals
/// still take the other revocation (review: one such record failed its whole batch at
/// every connect and every re-run, forever, and the other device's token kept working
/// at the other node).
#[test]
fn a_connect_removes_revocations_past_an_approval_that_cannot_be_written_back() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = pairing_keys();
    let dir = common::TempDir::new();
    let data = dir.0.join("data");
    let data = data.to_str().unwrap();
    let flags = ["--cluster-lease", "2", "--data-dir", data];
    let mut a = crate::cluster::node_with(&redis.url(), "a", 1, &k, &flags);
    let b = node(&redis, "b", 1, &k, "2");
    let (id1, t1) = approved_at(&a, 1);
    let (id3, t3) = approved_at(&a, 3);
    let all = a.admin_get("/api/pairing/all").json();
    let p1 = all
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id1.as_str())
        .unwrap()["peer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(token_status(&b, &t3), 200);
    redis.cmd(&["ACL", "SETUSER", "default", "-hdel"]);
    for id in [&id1, &id3] {
        let r = a.admin_req("POST", &format!("/api/pairing/{id}/revoke"));
        assert_eq!(r.status, 202, "{}", r.text());
    }
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    drop(a);
    let poison = format!("{{\"e\":[\"{id1}\",\"other\"],\"n\":1e999}}");
    redis.cmd(&["HSET", "chx:authz", &p1, &poison]);
    redis.cmd(&["ACL", "SETUSER", "default", "+hdel"]);
    let a = crate::cluster::node_with(&redis.url(), "a", 1, &k, &flags);
    token_refused_at(&b, &t3);
    token_refused_at(&b, &t1);
    assert_eq!(redis.cmd(&["HGET", "chx:authz", &p1]), redis::Reply::Nil);
    assert_eq!(
        crate::cluster::metric(&a, "chatixia_pairing_cluster_reasserts_total"),
        0,
        "the connect took them all"
    );
}

/// Redis lost two approvals' tokens while their node was down, and one peer's approval
/// record became one that cannot be written back: the node's connect writes both
/// approvals again (the bad record is replaced), so both devices' tokens work at the
/// other node (third review: `APPROVE` failed on such a record, which failed its whole
/// batch, and every later batch was skipped, at every connect).
#[test]
fn a_connect_writes_approvals_back_past_an_approval_record_that_cannot_be_written() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = pairing_keys();
    let dir = common::TempDir::new();
    let data = dir.0.join("data");
    let data = data.to_str().unwrap();
    let flags = ["--cluster-lease", "2", "--data-dir", data];
    let mut a = crate::cluster::node_with(&redis.url(), "a", 1, &k, &flags);
    let b = node(&redis, "b", 1, &k, "2");
    let (id1, t1) = approved_at(&a, 1);
    let (id2, t2) = approved_at(&a, 2);
    let (p1, p2) = (peer_of(&a, &id1), peer_of(&a, &id2));
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    drop(a);
    redis.cmd(&["DEL", "chx:tokens", "chx:pap"]);
    redis.cmd(&["HDEL", "chx:authz", &p2]);
    let poison = "{\"e\":[\"other\"],\"n\":1e999}";
    redis.cmd(&["HSET", "chx:authz", &p1, poison]);
    let _a = crate::cluster::node_with(&redis.url(), "a", 1, &k, &flags);
    let deadline = Instant::now() + Duration::from_secs(15);
    while token_status(&b, &t1) != 200 || token_status(&b, &t2) != 200 {
        assert!(
            Instant::now() < deadline,
            "{} {}",
            token_status(&b, &t1),
            token_status(&b, &t2)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(redis.cmd(&["HGET", "chx:authz", &p1]), redis::Reply::Nil);
}
