//! The unmodified reference React hub against chatixia-core with `--insecure-open-admin`:
//! the exact calls of its `hub/src/api.ts` (same paths, methods, headers and bodies: no
//! credentials at all), and the fields its TypeScript interfaces read.

use crate::common;

use common::*;
use serde_json::{json, Value};

fn keys_of(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    k.sort_unstable();
    k
}

#[test]
fn every_call_of_the_reference_hub_works_with_the_open_admin_plane() {
    let mut o = Opts::cores(2);
    o.args.push("--insecure-open-admin".into());
    let s = Server::with(o);
    for (id, skill) in [("alpha", "search"), ("beta", "code")] {
        let r = s.post_json(
            "/api/registry/agents",
            &json!({"agent_id": id, "hostname": format!("{id}.local"), "ip": "10.0.0.1",
                    "port": 8000, "sidecar_peer_id": format!("{id}-sidecar"),
                    "capabilities": {"skills": [skill], "mcp_servers": [], "goals_count": 0}}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // submitTask: POST /api/hub/tasks with a JSON body → {task_id}.
    let r = s.post_json(
        "/api/hub/tasks",
        &json!({"skill": "search", "target_agent_id": "alpha", "source_agent_id": "hub",
                "payload": {"q": "x"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let task_id = r.json()["task_id"].as_str().unwrap().to_owned();

    // fetchAgents: the fields of the hub's `Agent` interface.
    let r = s.get("/api/registry/agents");
    assert_eq!(r.status, 200, "{}", r.text());
    let agents = r.json();
    let agents = agents.as_array().unwrap();
    assert_eq!(agents.len(), 2);
    for a in agents {
        for k in [
            "agent_id",
            "hostname",
            "ip",
            "port",
            "sidecar_peer_id",
            "health",
            "mode",
            "status",
            "capabilities",
            "registered_at",
            "last_heartbeat",
        ] {
            assert!(a.get(k).is_some(), "agent lacks {k}: {a}");
        }
        assert!(a["capabilities"]["skills"].is_array(), "{a}");
        assert!(a["capabilities"]["mcp_servers"].is_array(), "{a}");
        assert!(a["capabilities"]["goals_count"].is_number(), "{a}");
    }

    // fetchTasks: the fields of the hub's `Task` interface.
    let r = s.get("/api/hub/tasks/all");
    assert_eq!(r.status, 200, "{}", r.text());
    let tasks = r.json();
    let t = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == task_id.as_str())
        .expect("the submitted task is listed");
    for k in [
        "id",
        "skill",
        "target_agent_id",
        "source_agent_id",
        "assigned_agent_id",
        "payload",
        "state",
        "result",
        "error",
        "created_at",
        "updated_at",
        "ttl",
    ] {
        assert!(t.get(k).is_some(), "task lacks {k}: {t}");
    }
    assert_eq!(t["state"], "pending");
    assert!(t["created_at"].is_number() && t["ttl"].is_number(), "{t}");

    // fetchTopology: nodes and mesh_edges.
    let r = s.get("/api/hub/network/topology");
    assert_eq!(r.status, 200, "{}", r.text());
    let topo = r.json();
    assert_eq!(keys_of(&topo), ["mesh_edges", "nodes"]);
    let nodes = topo["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    for k in [
        "agent_id",
        "ip",
        "port",
        "hostname",
        "sidecar_peer_id",
        "mode",
        "skills_count",
        "health",
        "mesh_peers",
    ] {
        assert!(nodes[0].get(k).is_some(), "node lacks {k}: {}", nodes[0]);
    }

    // fetchPendingApprovals, approveAgent, rejectAgent, revokeAgent: no credentials.
    let a = pending_entry(&s, "camera");
    let b = pending_entry(&s, "printer");
    let r = s.get("/api/pairing/pending");
    assert_eq!(r.status, 200, "{}", r.text());
    let pending = r.json();
    let pending = pending.as_array().unwrap();
    assert_eq!(pending.len(), 2, "{pending:?}");
    for e in pending {
        for k in [
            "id",
            "agent_name",
            "peer_id",
            "status",
            "created_at",
            "updated_at",
        ] {
            assert!(e.get(k).is_some(), "entry lacks {k}: {e}");
        }
        assert_eq!(e["status"], "pending_approval");
    }
    let r = s.req("POST", &format!("/api/pairing/{a}/approve"), &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "approved");
    assert!(r.json()["device_token"]
        .as_str()
        .unwrap()
        .starts_with("dt_"));
    // Reject and revoke answer `{"status":"ok"}`, as the reference does.
    let r = s.req("POST", &format!("/api/pairing/{b}/reject"), &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"status": "ok"}));
    let r = s.req("POST", &format!("/api/pairing/{a}/revoke"), &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"status": "ok"}));
    assert_eq!(s.get("/api/pairing/pending").json(), json!([]));
    let all = s.get("/api/pairing/all").json();
    let status = |id: &str| {
        all.as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status(&a), "revoked");
    assert_eq!(status(&b), "rejected");

    // generateInviteCode: the hub sends no API key; as in the reference that is a 401
    // (the open admin plane does not hand out invite codes to anonymous callers).
    let r = s.req("POST", "/api/pairing/generate-code", &[], None);
    assert_eq!(r.status, 401, "{}", r.text());
}
