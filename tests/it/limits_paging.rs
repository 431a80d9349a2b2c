//! Issue 13, finding 1: list routes are paged (`limit`, `cursor`, `x-next-cursor`), the
//! unpaged call answers at most one page, and one response's bytes are bounded.

use crate::common;
use common::*;
use std::collections::HashSet;
use std::net::Ipv4Addr;

fn server(cores: usize, extra: &[&str]) -> Server {
    let mut o = Opts::cores(cores);
    o.args = extra.iter().map(|s| s.to_string()).collect();
    Server::with(o)
}

/// Follows `x-next-cursor` from `first` with `limit`; returns every page's items.
fn walk(s: &Server, path: &str, limit: usize) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut url = format!("{path}?limit={limit}");
    for _ in 0..1000 {
        // Operator routes (pairing lists) need an admin token; the others ignore it.
        let r = s.admin_get(&url);
        assert_eq!(r.status, 200, "{}", r.text());
        pages.push(r.json().as_array().unwrap().clone());
        match r.header("x-next-cursor") {
            Some(c) => url = format!("{path}?limit={limit}&cursor={c}"),
            None => return pages,
        }
    }
    panic!("no last page");
}

#[test]
fn tasks_and_agents_are_paged_in_a_stable_order() {
    let s = server(2, &["--list-page-items-max", "50"]);
    let mut c = s.conn();
    for i in 0..120 {
        let r = c.post_json("/api/hub/tasks", &json!({"skill": format!("s{}", i % 7)}));
        assert_eq!(r.status, 200);
        let r = c.post_json(
            "/api/registry/agents",
            &json!({"agent_id": format!("agent-{i:03}"), "hostname": "h"}),
        );
        assert_eq!(r.status, 200);
    }
    // Unpaged: the first page only, and a cursor to the rest.
    let r = s.get("/api/hub/tasks/all");
    assert_eq!(r.json().as_array().unwrap().len(), 50);
    assert!(r.header("x-next-cursor").is_some());
    let r = s.get("/api/registry/agents");
    assert_eq!(r.json().as_array().unwrap().len(), 50);
    assert!(r.header("x-next-cursor").is_some());

    let pages = walk(&s, "/api/hub/tasks/all", 17);
    assert_eq!(pages.len(), 8); // 7 × 17 = 119, then 1
    let tasks: Vec<&Value> = pages.iter().flatten().collect();
    assert_eq!(tasks.len(), 120);
    let ids: HashSet<&str> = tasks.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 120, "no task twice");
    let keys: Vec<(f64, &str)> = tasks
        .iter()
        .map(|t| (t["created_at"].as_f64().unwrap(), t["id"].as_str().unwrap()))
        .collect();
    assert!(keys.windows(2).all(|w| w[0] <= w[1]), "ordered");

    let agents: Vec<String> = walk(&s, "/api/registry/agents", 20)
        .into_iter()
        .flatten()
        .map(|a| a["agent_id"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = (0..120).map(|i| format!("agent-{i:03}")).collect();
    assert_eq!(agents, want);

    // A page with fewer items than a page has no cursor; bad parameters are 400.
    let r = s.get("/api/registry/agents?limit=200");
    assert_eq!(r.json().as_array().unwrap().len(), 50, "limit clamped");
    s.get("/api/hub/tasks/all?limit=0").error(400);
    s.get("/api/hub/tasks/all?limit=x").error(400);
    s.get("/api/registry/agents?cursor=zz").error(400);
}

#[test]
fn small_lists_keep_the_reference_shape() {
    let s = server(1, &[]);
    s.post_json(
        "/api/registry/agents",
        &json!({"agent_id": "a", "hostname": "h"}),
    );
    let r = s.get("/api/registry/agents");
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    assert!(r.header("x-next-cursor").is_none());
}

#[test]
fn one_response_is_bounded_in_bytes() {
    // Every task is about 5 KB; a 20,000-byte response holds 3 of them.
    let s = server(1, &["--list-response-bytes-max", "20000"]);
    let blob = "p".repeat(5000);
    for _ in 0..10 {
        let r = s.post_json("/api/hub/tasks", &json!({"payload": blob}));
        assert_eq!(r.status, 200);
    }
    let r = s.get("/api/hub/tasks/all");
    assert!(r.body.len() <= 20_000, "{} bytes", r.body.len());
    assert_eq!(r.json().as_array().unwrap().len(), 3);
    let pages = walk(&s, "/api/hub/tasks/all", 1000);
    assert_eq!(pages.iter().map(Vec::len).sum::<usize>(), 10);
}

#[test]
fn pairing_lists_are_paged() {
    let s = server(2, &[]);
    for i in 0..5u8 {
        let r = s.req(
            "POST",
            "/api/pairing/generate-code",
            &[("X-API-Key", "ak_test_admin")],
            None,
        );
        let code = r.json()["code"].as_str().unwrap().to_owned();
        let r = s.conn_from(Ipv4Addr::new(127, 0, 1, i + 1)).post_json(
            "/api/pairing/pair",
            &json!({"code": code, "agent_name": format!("n{i}")}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for path in ["/api/pairing/pending", "/api/pairing/all"] {
        let pages = walk(&s, path, 2);
        assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
        let names: HashSet<String> = pages
            .iter()
            .flatten()
            .map(|e| e["agent_name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names.len(), 5);
    }
    s.admin_get("/api/pairing/all?cursor=0").error(400);
}

#[test]
fn one_heartbeat_response_is_bounded_in_bytes() {
    let s = server(1, &["--list-response-bytes-max", "20000"]);
    let blob = "p".repeat(5000);
    for _ in 0..10 {
        let r = s.post_json("/api/hub/tasks", &json!({"skill": "s", "payload": blob}));
        assert_eq!(r.status, 200);
    }
    let mut claimed = Vec::new();
    for _ in 0..10 {
        let r = s.post_json(
            "/api/hub/heartbeat",
            &json!({"agent_id": "a", "skill_names": ["s"]}),
        );
        assert!(r.body.len() <= 20_000, "{} bytes", r.body.len());
        let got = r.json()["pending_tasks"].as_array().unwrap().len();
        assert!(got <= 3, "{got} tasks in one heartbeat");
        claimed.push(got);
        if got == 0 {
            break;
        }
    }
    // The rest stayed pending and came with later heartbeats.
    assert_eq!(claimed.iter().sum::<usize>(), 10, "{claimed:?}");
}
