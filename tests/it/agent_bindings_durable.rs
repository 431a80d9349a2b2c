//! Review of issue 20, finding 5: agent bindings are durable. An agent first bound by a
//! heartbeat (no register) keeps its binding across `kill -9`; an admin's `DELETE`
//! removes it durably (after a restart another client may take the id); an agent known
//! only by its stored binding is deleted the same way.

use crate::common;
use common::*;

use std::net::Ipv4Addr;

fn ip(b: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 6, b)
}

fn post_from(s: &Server, from: Ipv4Addr, path: &str, headers: &[(&str, &str)], b: &Value) -> Resp {
    let mut h = headers.to_vec();
    h.push(("Content-Type", "application/json"));
    let body = serde_json::to_vec(b).unwrap();
    s.conn_from(from).request("POST", path, &h, Some(&body))
}

fn opts(data: &std::path::Path) -> Opts {
    let mut o = Opts::cores(2);
    o.args = vec!["--data-dir".into(), data.display().to_string()];
    o
}

/// `kill -9`, then a new server on the same data directory.
fn kill9_restart(s: Server, data: &std::path::Path) -> Server {
    let mut s = s;
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    Server::with(opts(data))
}

#[test]
fn a_binding_made_by_a_heartbeat_survives_kill_9_and_a_delete_removes_it() {
    let root = TempDir::new();
    let data = root.0.join("d");
    let s = Server::with(opts(&data));
    let (owner, other) = (ip(1), ip(2));
    let hb = |id: &str| json!({"agent_id": id, "skill_names": ["x"]});
    // Bound by its first heartbeat (to the address), then a task for it.
    let r = post_from(&s, owner, "/api/hub/heartbeat", &[], &hb("delta"));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_from(
        &s,
        ip(3),
        "/api/hub/tasks",
        &[],
        &json!({"target_agent_id": "delta", "payload": {"s": "SECRET-1"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Two more agents: one deleted before the restart, one after.
    for id in ["epsilon", "zeta"] {
        let r = post_from(
            &s,
            owner,
            "/api/registry/agents",
            &[],
            &json!({"agent_id": id, "hostname": "h"}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = s.admin_req("DELETE", "/api/registry/agents/epsilon");
    assert_eq!(r.text(), r#"{"status":"ok"}"#);

    let s = kill9_restart(s, &data);
    // Another address: refused, no task handed out.
    let r = post_from(&s, other, "/api/hub/heartbeat", &[], &hb("delta"));
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(!r.text().contains("SECRET-1"), "{}", r.text());
    post_from(&s, other, "/api/hub/heartbeat", &[], &hb("zeta")).error(403);
    // The deleted one is free for anyone.
    let r = post_from(&s, other, "/api/hub/heartbeat", &[], &hb("epsilon"));
    assert_eq!(r.status, 200, "{}", r.text());
    // Its own address gets its task.
    let r = post_from(&s, owner, "/api/hub/heartbeat", &[], &hb("delta"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["pending_tasks"][0]["payload"]["s"], "SECRET-1");
    // zeta, known only by its stored binding: an admin deletes it; after another
    // restart it is free.
    let r = s.admin_req("DELETE", "/api/registry/agents/zeta");
    assert_eq!(r.text(), r#"{"status":"ok"}"#);
    let r = s.admin_req("DELETE", "/api/registry/agents/zeta");
    assert_eq!(r.text(), r#"{"error":"not found"}"#);
    let s = kill9_restart(s, &data);
    let r = post_from(&s, other, "/api/hub/heartbeat", &[], &hb("zeta"));
    assert_eq!(r.status, 200, "{}", r.text());
    // epsilon was taken by `other` after the first restart (a new binding, saved).
    post_from(&s, owner, "/api/hub/heartbeat", &[], &hb("epsilon")).error(403);
    post_from(&s, other, "/api/hub/heartbeat", &[], &hb("delta")).error(403);
}
