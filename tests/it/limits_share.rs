//! Issue 20, finding 3: the per-client quotas fell to many source addresses (80
//! addresses filled the task store, and ordinary tasks then got 503). Now all clients
//! without credentials together hold at most an anonymous share of each store
//! (`--anonymous-share-percent`, default 50): many addresses, each at its quota, fill
//! that share, anonymous requests then get a 503 that says so, and requests with an
//! `X-API-Key` or a bearer JWT still store tasks and register agents, also after a
//! restart. The durable store has a size bound (`--data-bytes-max`) with a clear 503,
//! and everything acknowledged survives a restart.

use crate::common;
use common::*;
use std::net::Ipv4Addr;

/// Source addresses 127.0.0.10 … (80 of them, as in the finding).
const ADDRESSES: u8 = 80;

fn addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 10 + i)
}

fn post(s: &Server, path: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
    let b = serde_json::to_vec(body).unwrap();
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    s.req("POST", path, &h, Some(&b))
}

/// The sum of a `/metrics` series over its lines whose labels contain `labels`.
fn metric(s: &Server, name: &str, labels: &str) -> u64 {
    let text = s.get("/metrics").text();
    text.lines()
        .filter(|l| {
            (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
                && l.contains(labels)
        })
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum()
}

/// Every address creates tasks until it is refused; returns (accepted, refusals by
/// status).
fn flood_tasks(s: &Server, body: &Value) -> (usize, Vec<(u16, String)>) {
    let mut accepted = 0;
    let mut refusals = Vec::new();
    for i in 0..ADDRESSES {
        let mut c = s.conn_from(addr(i));
        loop {
            let r = c.post_json("/api/hub/tasks", body);
            if r.status == 200 {
                accepted += 1;
                assert!(accepted < 10_000, "never refused");
                continue;
            }
            refusals.push((r.status, r.error(r.status)));
            break;
        }
    }
    (accepted, refusals)
}

#[test]
fn many_addresses_fill_only_the_anonymous_share_of_the_task_store() {
    let data = TempDir::new();
    let mut o = Opts::cores(1);
    // Small budgets keep the test short; the ratios are the defaults' (a client's quota
    // is 1/16 of the store, the anonymous share half of it).
    o.args = [
        "--task-store-bytes-max",
        "400000",
        "--task-client-bytes-max",
        "25000",
        "--data-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([data.0.display().to_string()])
    .collect();
    let mut s = Server::with(o);
    let body = json!({"skill": "s", "ttl": 604_800, "payload": "p".repeat(5000)});

    let (accepted, refusals) = flood_tasks(&s, &body);
    // Each address stops at its quota (429) until the share is full; then every
    // anonymous request gets a 503 that names the share and says who still has room.
    assert!(refusals.iter().any(|(st, _)| *st == 429), "{refusals:?}");
    let (status, why) = refusals.last().unwrap();
    assert_eq!(*status, 503, "{why}");
    assert!(
        why.contains("share for clients without credentials is full")
            && why.contains("--anonymous-share-percent 50")
            && why.contains("X-API-Key or bearer token still have room"),
        "{why}"
    );
    assert!(
        accepted * 5000 <= 200_000 && accepted * 5700 > 200_000 - 2 * 25_000,
        "the share is half of 400,000 bytes: {accepted} tasks"
    );
    assert!(
        metric(
            &s,
            "chatixia_budget_refused_total",
            "reason=\"anonymous_share\""
        ) > 0
    );
    assert!(metric(&s, "chatixia_task_store_anonymous_bytes", "") <= 200_000);

    // Authenticated clients still have room: an API key, an agent JWT, an admin JWT.
    let jwt = s.bearer("ak_test_agent");
    let admin = format!("Bearer {}", s.admin_token());
    let creds: [(&str, &str); 3] = [
        ("X-API-Key", "ak_test_agent"),
        ("Authorization", &jwt),
        ("Authorization", &admin),
    ];
    // (The API key and the agent JWT are the same agent, `agent-x`: one quota.)
    for (k, v) in creds {
        for _ in 0..2 {
            let r = post(&s, "/api/hub/tasks", &body, &[(k, v)]);
            assert_eq!(r.status, 200, "{k}: {}", r.text());
        }
    }
    // A wrong key is no credential.
    let r = post(&s, "/api/hub/tasks", &body, &[("X-API-Key", "ak_wrong")]);
    assert!(r
        .error(503)
        .contains("share for clients without credentials"));

    // After a restart the loaded tasks count against the same share.
    s.restart();
    let r = s.conn_from(addr(200)).post_json("/api/hub/tasks", &body);
    assert!(r
        .error(503)
        .contains("share for clients without credentials"));
    let r = post(
        &s,
        "/api/hub/tasks",
        &body,
        &[("X-API-Key", "ak_test_admin")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // agent-x's own tasks still count against its quota after the restart.
    post(
        &s,
        "/api/hub/tasks",
        &body,
        &[("X-API-Key", "ak_test_agent")],
    )
    .error(429);
}

#[test]
fn many_addresses_fill_only_the_anonymous_share_of_the_agent_registry() {
    let mut o = Opts::cores(1);
    o.args = [
        "--agent-store-bytes-max",
        "200000",
        "--agent-client-agents-max",
        "5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let s = Server::with(o);
    let mut accepted = 0;
    let mut last = None;
    for i in 0..ADDRESSES {
        let mut c = s.conn_from(addr(i));
        for k in 0..6 {
            let r = c.post_json(
                "/api/registry/agents",
                &json!({"agent_id": format!("anon-{i}-{k}"), "hostname": "h"}),
            );
            if r.status == 200 {
                accepted += 1;
            } else {
                last = Some((r.status, r.error(r.status)));
                if r.status == 503 {
                    break;
                }
            }
        }
    }
    let (status, why) = last.unwrap();
    assert_eq!(status, 503, "{why}");
    assert!(
        why.contains("agent registry's share for clients without credentials is full"),
        "{why}"
    );
    assert!(accepted > 0 && accepted < 400, "{accepted}");
    // An anonymous agent that exists keeps its heartbeat.
    let r = s.conn_from(addr(0)).post_json(
        "/api/hub/heartbeat",
        &json!({"agent_id": "anon-0-0", "hostname": "h"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Authenticated clients register (and heartbeat new agents).
    let jwt = s.bearer("ak_test_agent");
    for (k, v, id) in [
        ("X-API-Key", "ak_test_agent", "real-1"),
        ("Authorization", jwt.as_str(), "real-2"),
    ] {
        let r = post(
            &s,
            "/api/registry/agents",
            &json!({"agent_id": id, "hostname": "h"}),
            &[(k, v)],
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let admin = format!("Bearer {}", s.admin_token());
    let r = post(
        &s,
        "/api/hub/heartbeat",
        &json!({"agent_id": "ops-agent"}),
        &[("Authorization", &admin)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        metric(
            &s,
            "chatixia_budget_refused_total",
            "store=\"agents\",reason=\"anonymous_share\""
        ) > 0
    );
}

#[test]
fn the_durable_store_has_a_size_bound() {
    let data = TempDir::new();
    let opts = |max: &str| {
        let mut o = Opts::cores(1);
        o.args = vec![
            "--data-dir".into(),
            data.0.display().to_string(),
            "--data-bytes-max".into(),
            max.into(),
        ];
        o
    };
    let mut s = Server::with(opts("80000"));
    let body = json!({"skill": "s", "ttl": 604_800, "payload": "d".repeat(4000)});
    let key = [("X-API-Key", "ak_test_agent")];
    let mut acked = Vec::new();
    // Anonymous tasks stop at half of the bound, with a 503 that says so.
    let refusal = loop {
        let r = s.conn_from(addr(1)).post_json("/api/hub/tasks", &body);
        if r.status != 200 {
            break r;
        }
        acked.push(r.json()["task_id"].as_str().unwrap().to_owned());
        assert!(acked.len() < 100, "never refused");
    };
    let why = refusal.error(503);
    assert!(
        why.contains("durable store's share for clients without credentials is full"),
        "{why}"
    );
    let anonymous = acked.len();
    assert!((8..=10).contains(&anonymous), "{anonymous}");
    // Authenticated ones go on to the bound itself.
    let refusal = loop {
        let r = post(&s, "/api/hub/tasks", &body, &key);
        if r.status != 200 {
            break r;
        }
        acked.push(r.json()["task_id"].as_str().unwrap().to_owned());
        assert!(acked.len() < 100, "never refused");
    };
    let why = refusal.error(503);
    assert!(
        why.contains("durable store is full") && why.contains("--data-bytes-max"),
        "{why}"
    );
    assert!(acked.len() >= 2 * anonymous - 2, "{}", acked.len());
    let held = metric(&s, "chatixia_store_data_bytes", "");
    assert!(held <= 80_000 && held > 80_000 - 2 * 4300, "{held}");
    assert_eq!(metric(&s, "chatixia_store_refused_full_total", ""), 1);

    // A restart keeps every acknowledged task; the store is still full.
    s.restart();
    for id in &acked {
        let t = s.get(&format!("/api/hub/tasks/{id}")).json();
        assert_eq!(t["state"], "pending", "{id}: {t}");
    }
    post(&s, "/api/hub/tasks", &body, &key).error(503);
    // Claims still go through on a full store; a finished task frees its room.
    let r = post(
        &s,
        "/api/hub/heartbeat",
        &json!({"agent_id": "agent-x", "skill_names": ["s"]}),
        &key,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let claimed = r.json()["pending_tasks"].as_array().unwrap().len();
    assert!(claimed > 0, "{}", r.text());
    let r = post(
        &s,
        &format!("/api/hub/tasks/{}", acked[0]),
        &json!({"state": "completed", "result": "ok"}),
        &key,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post(&s, "/api/hub/tasks", &body, &key);
    assert_eq!(r.status, 200, "{}", r.text());

    // A lower bound: the data directory still loads in full; only growth is refused.
    drop(s);
    let s = Server::with(opts("10000"));
    for id in &acked[1..] {
        let t = s.get(&format!("/api/hub/tasks/{id}")).json();
        assert_eq!(t["state"], "assigned", "{id}: {t}");
    }
    post(&s, "/api/hub/tasks", &body, &key).error(503);
}
