//! §1 conventions and §3 registry: register, list, get, delete, route, topology, bad input.

use crate::common;
use common::*;

fn agent(id: &str, skills: &[&str], sidecar: &str) -> Value {
    json!({
        "agent_id": id, "hostname": format!("{id}.local"), "ip": "10.0.0.1", "port": 9000,
        "sidecar_peer_id": sidecar,
        "capabilities": {"skills": skills, "mcp_servers": ["fs"], "goals_count": 2, "mode": "m"},
        "status": "ready", "mode": "auto"
    })
}

#[test]
fn register_get_list_delete() {
    both(|s| {
        for i in 0..6 {
            let r = s.post_json(
                "/api/registry/agents",
                &agent(&format!("a{i}"), &["web"], ""),
            );
            assert_eq!(r.status, 200);
            assert_eq!(r.text(), r#"{"status":"ok"}"#);
            assert!(r.header("access-control-allow-origin") == Some("*"));
        }
        let list = s.get("/api/registry/agents").json();
        let ids: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["agent_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a0", "a1", "a2", "a3", "a4", "a5"]);
        let a = &list[0];
        assert_eq!(a["health"], "active");
        assert_eq!(a["port"], 9000);
        assert_eq!(a["capabilities"]["mcp_servers"][0], "fs");
        let ts = a["registered_at"].as_str().unwrap();
        assert!(ts.ends_with("+00:00") && ts.contains('T'), "{ts}");

        let one = s.get("/api/registry/agents/a3").json();
        assert_eq!(one["agent_id"], "a3");
        assert_eq!(one["hostname"], "a3.local");
        // Defaults.
        let r = s.post_json(
            "/api/registry/agents",
            &json!({"agent_id": "min", "hostname": "h"}),
        );
        assert_eq!(r.status, 200);
        let m = s.get("/api/registry/agents/min").json();
        assert_eq!(m["port"], 8000);
        assert_eq!(m["ip"], "");
        assert_eq!(m["capabilities"]["skills"], json!([]));

        let nf = s.get("/api/registry/agents/nope");
        assert_eq!(nf.status, 200);
        assert_eq!(nf.text(), r#"{"error":"not found"}"#);

        let d = s.admin_req("DELETE", "/api/registry/agents/a3");
        assert_eq!(d.text(), r#"{"status":"ok"}"#);
        let d = s.admin_req("DELETE", "/api/registry/agents/a3");
        assert_eq!(
            (d.status, d.text()),
            (200, r#"{"error":"not found"}"#.into())
        );
        assert_eq!(
            s.get("/api/registry/agents")
                .json()
                .as_array()
                .unwrap()
                .len(),
            6
        );
        // Percent-encoded ids are decoded.
        s.post_json("/api/registry/agents", &agent("with space", &[], ""));
        assert_eq!(
            s.get("/api/registry/agents/with%20space").json()["agent_id"],
            "with space"
        );
    });
}

#[test]
fn bad_input() {
    both(|s| {
        let body = br#"{"agent_id":"x","hostname":"h"}"#;
        let r = s.req("POST", "/api/registry/agents", &[], Some(body));
        assert!(r.error(415).contains("application/json"));
        let r = s.req(
            "POST",
            "/api/registry/agents",
            &[("Content-Type", "text/plain")],
            Some(body),
        );
        r.error(415);
        let ct = [("Content-Type", "application/json")];
        let r = s.req("POST", "/api/registry/agents", &ct, Some(b"{not json"));
        assert!(r.error(400).contains("parse"));
        let r = s.req(
            "POST",
            "/api/registry/agents",
            &ct,
            Some(br#"{"hostname":"h"}"#),
        );
        assert!(r.error(422).contains("agent_id"));
        let r = s.req(
            "POST",
            "/api/registry/agents",
            &ct,
            Some(br#"{"agent_id":"x","hostname":"h","port":"80"}"#),
        );
        r.error(422);
        let r = s.req(
            "POST",
            "/api/hub/heartbeat",
            &ct,
            Some(br#"{"hostname":"h"}"#),
        );
        assert!(r.error(422).contains("agent_id"));
        // Body limit: 2 MiB + 1.
        let r = s.conn().raw(
            b"POST /api/registry/agents HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2097153\r\n\r\n",
        );
        assert_eq!(r.status, 413);
        // Unknown path, wrong method, preflight.
        s.get("/api/nope").error(404);
        let r = s.req("PUT", "/api/registry/agents", &[], None);
        r.error(405);
        assert_eq!(r.header("allow"), Some("GET,POST,HEAD,OPTIONS"));
        let r = s.req(
            "OPTIONS",
            "/api/hub/tasks",
            &[("Access-Control-Request-Method", "POST")],
            None,
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("access-control-allow-methods"), Some("*"));
        assert!(r.header("allow").is_some());
        // Still serving.
        assert_eq!(s.get("/healthz").status, 200);
    });
}

#[test]
fn route_by_skill() {
    both(|s| {
        let r = s.get("/api/registry/route");
        assert_eq!(r.status, 400);
        let miss = s.get("/api/registry/route?skill=web").json();
        assert_eq!(
            miss,
            json!({"error": "no agent found with skill", "skill": "web"})
        );
        for i in 0..5 {
            s.post_json(
                "/api/registry/agents",
                &agent(&format!("r{i}"), &["web", "x"], ""),
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        s.post_json("/api/registry/agents", &agent("other", &["db"], ""));
        // Earliest registered active agent with the skill, whatever its shard.
        assert_eq!(
            s.get("/api/registry/route?skill=web").json()["agent_id"],
            "r0"
        );
        assert_eq!(
            s.get("/api/registry/route?skill=db").json()["agent_id"],
            "other"
        );
        s.admin_req("DELETE", "/api/registry/agents/r0");
        assert_eq!(
            s.get("/api/registry/route?skill=web").json()["agent_id"],
            "r1"
        );
    });
}

#[test]
fn topology_joins_active_sidecars() {
    both(|s| {
        s.post_json("/api/registry/agents", &agent("t1", &["a", "b"], "sc1"));
        s.post_json("/api/registry/agents", &agent("t2", &[], "sc2"));
        s.post_json("/api/registry/agents", &agent("t3", &[], ""));
        s.post_json("/api/registry/agents", &agent("t4", &[], "sc4"));
        let t = s.get("/api/hub/network/topology").json();
        let nodes = t["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 4);
        let t1 = nodes.iter().find(|n| n["agent_id"] == "t1").unwrap();
        assert_eq!(t1["skills_count"], 2);
        assert_eq!(t1["health"], "active");
        let mut peers: Vec<&str> = t1["mesh_peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        peers.sort();
        assert_eq!(peers, ["sc2", "sc4"]);
        assert_eq!(t["mesh_edges"].as_array().unwrap().len(), 3);
    });
}
