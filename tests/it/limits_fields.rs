//! Issue 13, findings 1 and 7: every stored field has a size limit (413), `ttl` a range
//! (422), a task body must be an object (422), and payload numbers come back exactly.

use crate::common;
use common::*;

fn server(extra: &[&str]) -> Server {
    let mut o = Opts::cores(2);
    o.args = extra.iter().map(|s| s.to_string()).collect();
    Server::with(o)
}

#[test]
fn oversized_fields_are_413_and_not_stored() {
    let s = server(&[]);
    let mb = "x".repeat(1 << 20);
    // A 1 MB task payload (the issue: 1,000 of them took RSS to 985 MB).
    let msg = s
        .post_json(
            "/api/hub/tasks",
            &json!({"skill": "s", "payload": {"blob": mb}}),
        )
        .error(413);
    assert!(
        msg.contains("payload") && msg.contains("--task-payload-bytes-max"),
        "{msg}"
    );
    // A 1 MB hostname.
    let msg = s
        .post_json(
            "/api/registry/agents",
            &json!({"agent_id": "big", "hostname": mb}),
        )
        .error(413);
    assert!(msg.contains("hostname"), "{msg}");
    assert_eq!(
        s.get("/api/registry/agents/big").json()["error"],
        "not found"
    );
    // The same through a heartbeat, and too many skill names.
    s.post_json("/api/hub/heartbeat", &json!({"agent_id": "big", "ip": mb}))
        .error(413);
    let many: Vec<String> = (0..1000).map(|i| format!("s{i}")).collect();
    s.post_json(
        "/api/hub/heartbeat",
        &json!({"agent_id": "a", "skill_names": many}),
    )
    .error(413);
    s.post_json(
        "/api/registry/agents",
        &json!({"agent_id": "a", "hostname": "h", "capabilities": {"skills": many}}),
    )
    .error(413);
    assert_eq!(s.get("/api/registry/agents").json(), json!([]));
    // A 1 MB result on a real task.
    let id = s.post_json("/api/hub/tasks", &json!({"skill": "s"})).json()["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.post_json(
        &format!("/api/hub/tasks/{id}"),
        &json!({"state": "completed", "result": mb}),
    )
    .error(413);
    // Sizes within the limits still work.
    let ok = s.post_json(
        "/api/registry/agents",
        &json!({"agent_id": "a", "hostname": "h"}),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
}

#[test]
fn ttl_beyond_max_and_non_objects_are_422() {
    let s = server(&["--task-ttl-max", "3600"]);
    let msg = s
        .post_json(
            "/api/hub/tasks",
            &json!({"skill": "s", "ttl": 1_000_000_000u64}),
        )
        .error(422);
    assert!(
        msg.contains("ttl") && msg.contains("--task-ttl-max"),
        "{msg}"
    );
    assert_eq!(
        s.post_json("/api/hub/tasks", &json!({"ttl": 3600})).status,
        200
    );
    for body in [json!([]), json!(["s", "", "", null, 60])] {
        s.post_json("/api/hub/tasks", &body).error(422);
    }
    s.post_json("/api/hub/heartbeat", &json!(["a"])).error(422);
    assert_eq!(
        s.get("/api/hub/tasks/all").json().as_array().unwrap().len(),
        1
    );
}

#[test]
fn payload_numbers_come_back_exactly() {
    let s = server(&[]);
    let body = r#"{"skill":"n","payload":{"z":1e400,"big":123456789012345678901234567890,"f":0.30000000000000000000001}}"#;
    let r = s.req(
        "POST",
        "/api/hub/tasks",
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["task_id"].as_str().unwrap().to_owned();
    let want = r#""payload":{"big":123456789012345678901234567890,"f":0.30000000000000000000001,"z":1e400}"#;
    let one = s.get(&format!("/api/hub/tasks/{id}")).text();
    assert!(one.contains(want), "{one}");
    let all = s.get("/api/hub/tasks/all").text();
    assert!(all.contains(want), "{all}");
    let hb = s.post_json(
        "/api/hub/heartbeat",
        &json!({"agent_id": "a", "skill_names": ["n"]}),
    );
    assert!(hb.text().contains(want), "{}", hb.text());
}
