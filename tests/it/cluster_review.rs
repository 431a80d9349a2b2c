//! Hostile review of pairing across the nodes of a cluster (issue 25): what a node alone
//! guarantees must still hold when requests go through another node. Real
//! `redis-server`, real nodes, HTTP over loopback.
use crate::cluster::{keys, wait_ready};
use crate::common;

use std::net::Ipv4Addr;

use common::redis::{self, Redis};
use common::{Opts, Server};
use serde_json::json;

/// A node of the cluster on `redis` with `extra` flags.
fn node_with(redis: &Redis, id: &str, keys: &str, extra: &[&str]) -> Server {
    let mut o = Opts::cores(1);
    o.keys = Some(keys.to_string());
    o.args = [
        "--cluster",
        &redis.url(),
        "--node-id",
        id,
        "--cluster-lease",
        "10",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect();
    let srv = Server::with(o);
    wait_ready(&srv);
    srv
}

fn code_at(srv: &Server) -> String {
    let r = srv.req(
        "POST",
        "/api/pairing/generate-code",
        &[("X-API-Key", "ak_alice")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["code"].as_str().unwrap().to_string()
}

fn pair_from(srv: &Server, ip: Ipv4Addr, code: &str) -> common::Resp {
    srv.conn_from(ip).post_json(
        "/api/pairing/pair",
        &json!({"code": code, "agent_name": "guesser"}),
    )
}

/// A node alone burns a six-digit code once three wrong guesses land in its bucket of
/// 1,000 (`hostile_pairing::wrong_guesses_near_a_code_burn_it`). Guesses sent through
/// another node of the cluster were counted only there, where the code is not, so the
/// code survived any number of them and the right guess then paired through that node.
#[test]
fn wrong_guesses_near_a_six_digit_code_at_another_node_burn_it() {
    let Some(redis) = redis::start(&[]) else {
        return;
    };
    let k = keys(&[("alice", None)]);
    let six = ["--pair-code-format", "digits6"];
    let a = node_with(&redis, "a", &k, &six);
    let b = node_with(&redis, "b", &k, &six);
    let real = code_at(&a);
    let n: u32 = real.parse().unwrap();
    let near: Vec<String> = (0..1000)
        .map(|k| n / 1000 * 1000 + k)
        .filter(|&c| c != n)
        .take(3)
        .map(|c| format!("{c:06}"))
        .collect();
    for (i, code) in near.iter().enumerate() {
        let r = pair_from(&b, Ipv4Addr::new(127, 0, 31, 1 + i as u8), code);
        assert_eq!(r.status, 401, "{}", r.text());
    }
    for (srv, last) in [(&b, 100), (&a, 101)] {
        let r = pair_from(srv, Ipv4Addr::new(127, 0, 31, last), &real);
        assert_eq!(r.status, 401, "the code should be burnt: {}", r.text());
    }
    assert_eq!(a.admin_get("/api/pairing/all").json(), json!([]));
}

/// The daily budget of wrong codes per address (`--pair-wrong-guesses-per-address-max`)
/// counts the address's wrong codes at every node: spreading guesses over the nodes
/// does not give a guesser one budget per node.
#[test]
fn an_addresss_wrong_codes_at_every_node_count_against_one_budget() {
    let Some(redis) = crate::common::redis::start(&[]) else {
        return;
    };
    let k = crate::cluster::keys(&[("alice", None)]);
    let node = |id: &str| {
        crate::cluster::node_with(
            &redis.url(),
            id,
            1,
            &k,
            &["--pair-wrong-guesses-per-address-max", "3"],
        )
    };
    let (a, b) = (node("a"), node("b"));
    let from: std::net::Ipv4Addr = [127, 0, 28, 9].into();
    let pair = |srv: &crate::common::Server, code: &str| {
        let body =
            serde_json::to_vec(&serde_json::json!({"code": code, "agent_name": "x"})).unwrap();
        srv.conn_from(from).request(
            "POST",
            "/api/pairing/pair",
            &[("Content-Type", "application/json")],
            Some(&body),
        )
    };
    // Three wrong codes: two at a, one at b (each node alone has room for more).
    for (srv, code) in [
        (&a, "AAAA-BBBB-CCCC"),
        (&a, "AAAA-BBBB-CCCD"),
        (&b, "AAAA-BBBB-CCCE"),
    ] {
        let r = pair(srv, code);
        assert_eq!(r.status, 401, "{}", r.text());
    }
    // The budget is spent at both nodes, also for a right code.
    let r = b.req(
        "POST",
        "/api/pairing/generate-code",
        &[("X-API-Key", "ak_alice")],
        None,
    );
    let good = r.json()["code"].as_str().unwrap().to_owned();
    for srv in [&b, &a] {
        let r = pair(srv, &good);
        assert_eq!(r.status, 429, "{}", r.text());
        assert!(
            r.text().contains("--pair-wrong-guesses-per-address-max"),
            "{}",
            r.text()
        );
    }
}
