//! Issue 13, finding 8: with `--require-agent-auth`, agent routes need the agent's
//! bearer JWT and an agent may only act as itself (heartbeat, register, report a task).

use crate::common;
use common::*;

const KEYS: &str = r#"{"keys": {
    "ak_test_admin": {"peer_id": "admin-1", "role": "admin"},
    "ak_x": {"peer_id": "agent-x", "role": "agent"},
    "ak_y": {"peer_id": "agent-y", "role": "agent"}
}}"#;

fn post(s: &Server, path: &str, auth: Option<&str>, body: &Value) -> Resp {
    let b = serde_json::to_vec(body).unwrap();
    let mut h = vec![("Content-Type", "application/json")];
    if let Some(a) = auth {
        h.push(("Authorization", a));
    }
    s.req("POST", path, &h, Some(&b))
}

#[test]
fn agents_act_only_as_themselves() {
    let mut o = Opts::cores(2);
    o.keys = Some(KEYS.to_owned());
    o.args = vec!["--require-agent-auth".into()];
    let s = Server::with(o);
    let (x, y) = (s.bearer("ak_x"), s.bearer("ak_y"));
    let hb = |id: &str| json!({"agent_id": id, "hostname": "h", "skill_names": ["payroll"]});

    // No token: 401 on every agent route.
    post(&s, "/api/hub/heartbeat", None, &hb("agent-x")).error(401);
    post(
        &s,
        "/api/registry/agents",
        None,
        &json!({"agent_id": "agent-x", "hostname": "h"}),
    )
    .error(401);
    post(
        &s,
        "/api/hub/heartbeat",
        Some("Bearer not.a.jwt"),
        &hb("agent-x"),
    )
    .error(401);
    s.get("/api/registry/route?skill=payroll").error(401);

    // A task for agent-x's payroll skill; agent-y cannot heartbeat as agent-x to get it.
    let r = post(
        &s,
        "/api/hub/tasks",
        Some(&x),
        &json!({"skill": "payroll", "source_agent_id": "agent-x", "payload": {"salary": 1}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["task_id"].as_str().unwrap().to_owned();
    post(
        &s,
        "/api/hub/tasks",
        Some(&y),
        &json!({"source_agent_id": "agent-x"}),
    )
    .error(403);
    let why = post(&s, "/api/hub/heartbeat", Some(&y), &hb("agent-x")).error(403);
    assert!(why.contains("only act as itself"), "{why}");
    post(
        &s,
        "/api/registry/agents",
        Some(&y),
        &json!({"agent_id": "agent-x", "hostname": "h"}),
    )
    .error(403);
    assert_eq!(
        s.get(&format!("/api/hub/tasks/{id}")).json()["state"],
        "pending"
    );

    // agent-x, as itself, claims it; agent-y cannot post its result.
    let r = post(&s, "/api/hub/heartbeat", Some(&x), &hb("agent-x"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["pending_tasks"][0]["id"], id.as_str());
    let done = json!({"state": "completed", "result": "forged"});
    post(&s, &format!("/api/hub/tasks/{id}"), None, &done).error(401);
    post(&s, &format!("/api/hub/tasks/{id}"), Some(&y), &done).error(403);
    let r = post(
        &s,
        &format!("/api/hub/tasks/{id}"),
        Some(&x),
        &json!({"state": "completed", "result": "paid"}),
    );
    assert_eq!(r.text(), r#"{"status":"ok"}"#);
    assert_eq!(
        s.get(&format!("/api/hub/tasks/{id}")).json()["result"],
        "paid"
    );

    let r = post(
        &s,
        "/api/registry/agents",
        Some(&x),
        &json!({"agent_id": "agent-x", "hostname": "h"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s.req(
        "GET",
        "/api/registry/route?skill=payroll",
        &[("Authorization", &y)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
}
