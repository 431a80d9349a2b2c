//! Issue 20, finding 1: JSON nesting has a bound everywhere a client's JSON is read.
//! A task `payload` of 8,000 nested arrays (a 16 KB request) overflowed the shard's stack
//! and aborted the process; now every JSON body nesting deeper than
//! `wire::json::JSON_DEPTH_MAX` is 422 with a JSON reason, and the server keeps serving.

use crate::common;
use common::*;

use wire::json::JSON_DEPTH_MAX;

/// `n` nested arrays around `inner`: `[[…inner…]]`.
fn nested(n: usize, inner: &str) -> String {
    let mut s = String::with_capacity(2 * n + inner.len());
    s.extend(std::iter::repeat_n('[', n));
    s.push_str(inner);
    s.extend(std::iter::repeat_n(']', n));
    s
}

fn post_raw(s: &Server, path: &str, body: &str) -> Resp {
    s.req(
        "POST",
        path,
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
    )
}

/// The 422 of a body `depth` levels deep names that depth and the limit.
fn assert_too_deep(r: &Resp, depth: usize) {
    let msg = r.error(422);
    assert!(
        msg.contains(&format!("nesting is {depth} levels deep"))
            && msg.contains(&format!("the limit is {JSON_DEPTH_MAX}")),
        "{msg}"
    );
}

#[test]
fn a_deep_task_payload_is_422_and_the_server_keeps_serving() {
    let mut s = Server::with(Opts::cores(2));
    // Another client, connected before the attack, keeps its keep-alive connection.
    let mut other = s.conn();
    assert_eq!(other.get("/healthz").status, 200);
    // The issue's request: about 16 KB, 8,000 nested arrays in `payload`.
    let body = format!(r#"{{"skill":"s","payload":{}}}"#, nested(8000, "1"));
    assert!(body.len() < 17_000);
    let r = post_raw(&s, "/api/hub/tasks", &body);
    assert_too_deep(&r, 8001);
    assert!(s.child.try_wait().unwrap().is_none(), "{}", s.log());
    assert_eq!(s.get("/healthz").status, 200);
    assert_eq!(other.get("/api/hub/tasks/all").json(), json!([]));
    let ok = other.post_json("/api/hub/tasks", &json!({"skill": "s", "payload": [1]}));
    assert_eq!(ok.status, 200, "{}", ok.text());
}

/// Every route that takes a JSON body: at the bound the body is read (whatever the
/// route then answers), one level deeper and 100,000 levels deep it is 422 with the
/// depth, and nothing was stored.
#[test]
fn every_json_route_is_bounded_at_the_limit_and_far_beyond() {
    let s = Server::with(Opts::cores(2));
    let id = s.post_json("/api/hub/tasks", &json!({"skill": "s"})).json()["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let update = format!("/api/hub/tasks/{id}");
    // Each route's body with an extra field `x` holding `n` levels (the body is one more).
    type Body<'a> = &'a dyn Fn(&str) -> String;
    let routes: [(&str, Body); 6] = [
        ("/api/registry/agents", &|x| {
            format!(r#"{{"agent_id":"deep","hostname":"h","x":{x}}}"#)
        }),
        ("/api/hub/heartbeat", &|x| {
            format!(r#"{{"agent_id":"deep","x":{x}}}"#)
        }),
        ("/api/hub/tasks", &|x| {
            format!(r#"{{"skill":"deep","payload":{x}}}"#)
        }),
        (&update, &|x| format!(r#"{{"state":"running","x":{x}}}"#)),
        ("/api/pairing/pair", &|x| {
            format!(r#"{{"code":"000000","agent_name":"deep","x":{x}}}"#)
        }),
        ("/debug/clock", &|x| {
            format!(r#"{{"advance_secs":0,"x":{x}}}"#)
        }),
    ];
    for (path, body) in routes {
        let at = post_raw(&s, path, &body(&nested(JSON_DEPTH_MAX - 1, "")));
        assert!(
            !at.text().contains("nesting"),
            "{path} at the bound: {}",
            at.text()
        );
        assert_ne!(at.status, 400, "{path}: {}", at.text());
        for depth in [JSON_DEPTH_MAX + 1, 100_000] {
            let r = post_raw(&s, path, &body(&nested(depth - 1, "")));
            assert_too_deep(&r, depth);
            // Deep and malformed: the depth is what is reported.
            let r = post_raw(&s, path, &body(&"[".repeat(depth - 1)));
            assert_too_deep(&r, depth);
        }
    }
    // The bodies at the bound were stored; the deeper ones were not.
    let agents = s.get("/api/registry/agents").json();
    assert_eq!(agents.as_array().unwrap().len(), 1, "{agents}");
    let tasks = s.get("/api/hub/tasks/all").json();
    let deep: Vec<&Value> = tasks
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["skill"] == "deep")
        .collect();
    assert_eq!(deep.len(), 1, "{tasks}");
    assert_eq!(
        deep[0]["payload"],
        serde_json::from_str::<Value>(&nested(JSON_DEPTH_MAX - 1, "")).unwrap()
    );
    assert_eq!(
        s.get(&format!("/api/hub/tasks/{id}")).json()["state"],
        "running"
    );
}

/// A task payload at the bound survives a restart. Before the bound, a payload 127 levels
/// deep was accepted and stored as a record 128 levels deep, which serde_json cannot
/// read back: the data directory made the next start fail ("corrupt").
#[test]
fn stored_payloads_at_the_bound_load_after_a_restart() {
    let dir = TempDir::new();
    let mut o = Opts::cores(1);
    o.args = vec![
        "--data-dir".into(),
        dir.0.join("data").display().to_string(),
    ];
    let mut s = Server::with(o);
    let at = nested(JSON_DEPTH_MAX - 2, r#"{"b":1,"a":2}"#);
    let r = post_raw(
        &s,
        "/api/hub/tasks",
        &format!(r#"{{"skill":"s","payload":{at}}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["task_id"].as_str().unwrap().to_owned();
    // serde_json's own edge: refused now, fatal for the next start before.
    let r = post_raw(
        &s,
        "/api/hub/tasks",
        &format!(r#"{{"skill":"s","payload":{}}}"#, nested(127, "1")),
    );
    assert_too_deep(&r, 128);
    s.restart();
    let t = s.get(&format!("/api/hub/tasks/{id}")).json();
    assert_eq!(
        t["payload"],
        serde_json::from_str::<Value>(&nested(JSON_DEPTH_MAX - 2, r#"{"a":2,"b":1}"#)).unwrap(),
        "{t}"
    );
    assert_eq!(
        s.get("/api/hub/tasks/all").json().as_array().unwrap().len(),
        1
    );
}

/// On `/ws` a message nesting deeper than the bound is not relayed: its sender gets an
/// `error` frame naming the depth and the limit, and the connection stays open. At the
/// bound it is relayed.
#[test]
fn signaling_messages_deeper_than_the_limit_are_refused_with_an_error_frame() {
    use common::ws::*;
    let mut o = Opts::cores(2);
    // Room for a 100,000-level message (200 KB).
    o.args = vec!["--ws-message-max".into(), "1048576".into()];
    let s = Server::with(o);
    let (mut a, _) = join(&s, "admin-1", &jwt_from_key(&s, "ak_test_admin"));
    let (mut b, _) = join(&s, "agent-x", &jwt_from_key(&s, "ak_test_agent"));
    let offer = |payload: &str| {
        tungstenite::Message::text(format!(
            r#"{{"type":"offer","peer_id":"admin-1","target_id":"agent-x","payload":{payload}}}"#
        ))
    };
    // At the bound: the message is 64 levels deep, its payload 63.
    a.send(offer(&nested(JSON_DEPTH_MAX - 1, "1"))).unwrap();
    let got = recv(&mut b);
    assert_eq!(got["type"], "offer");
    assert_eq!(
        got["payload"],
        serde_json::from_str::<Value>(&nested(JSON_DEPTH_MAX - 1, "1")).unwrap()
    );
    for depth in [JSON_DEPTH_MAX + 1, 100_000] {
        for payload in [nested(depth - 1, "1"), "[".repeat(depth - 1)] {
            a.send(offer(&payload)).unwrap();
            let e = recv(&mut a);
            assert_eq!(e["type"], "error", "{e}");
            assert_eq!(
                e["payload"]["reason"],
                format!("JSON nesting is {depth} levels deep; the limit is {JSON_DEPTH_MAX}")
            );
        }
    }
    // Nothing deep reached `b`: the next thing it gets is the next valid offer.
    a.send(offer(r#"{"sdp":"v=0"}"#)).unwrap();
    assert_eq!(recv(&mut b)["payload"], json!({"sdp": "v=0"}));
    // Both connections are still open.
    send(&mut b, &json!({"type": "register", "peer_id": "agent-x"}));
    assert_eq!(recv(&mut b)["payload"]["peers"], json!(["admin-1"]));
    // The four refusals are counted (nothing else was refused here).
    let m = s.get("/metrics").text();
    let refused: u64 = m
        .lines()
        .filter(|l| l.starts_with("chatixia_ws_refused_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(refused, 4, "{m}");
}
