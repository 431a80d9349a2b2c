//! §3 heartbeat and §4 task hub: create, get, update, list, heartbeat claims (targeted,
//! skill, targeted skill through a pointer), bad input, and concurrent heartbeats.

use crate::common;
use common::*;
use std::collections::HashMap;

fn hb(agent: &str, skills: &[&str]) -> Value {
    json!({"agent_id": agent, "hostname": "h", "skill_names": skills})
}

fn create(s: &Server, body: Value) -> String {
    let r = s.post_json("/api/hub/tasks", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["task_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 12);
    id
}

#[test]
fn task_lifecycle() {
    both(|s| {
        let id = create(
            s,
            json!({"skill": "echo", "payload": {"b": 1, "a": [2]}, "ttl": 60}),
        );
        let t = s.get(&format!("/api/hub/tasks/{id}")).json();
        assert_eq!(t["state"], "pending");
        assert_eq!(t["skill"], "echo");
        assert_eq!(t["ttl"], 60);
        assert_eq!(t["payload"], json!({"a": [2], "b": 1}));
        assert!(t["created_at"].as_f64().unwrap() > 1.0e9);
        // Defaults.
        let d = create(s, json!({}));
        let t = s.get(&format!("/api/hub/tasks/{d}")).json();
        assert_eq!(
            (t["ttl"].as_u64(), t["payload"].is_null()),
            (Some(300), true)
        );

        let r = s.post_json(
            &format!("/api/hub/tasks/{id}"),
            &json!({"state": "completed", "result": "done"}),
        );
        assert_eq!(r.text(), r#"{"status":"ok"}"#);
        // An empty result does not overwrite.
        s.post_json(
            &format!("/api/hub/tasks/{id}"),
            &json!({"state": "completed", "result": ""}),
        );
        let t = s.get(&format!("/api/hub/tasks/{id}")).json();
        assert_eq!(
            (t["state"].as_str(), t["result"].as_str()),
            (Some("completed"), Some("done"))
        );

        let nf = s.post_json("/api/hub/tasks/zzzzzzzz-zzz", &json!({"state": "x"}));
        assert_eq!(
            (nf.status, nf.text()),
            (200, r#"{"error":"not found"}"#.into())
        );
        let nf = s.get("/api/hub/tasks/zzzzzzzz-zzz");
        assert_eq!(
            (nf.status, nf.text()),
            (200, r#"{"error":"not found"}"#.into())
        );
        s.post_json(&format!("/api/hub/tasks/{id}"), &json!({"result": "x"}))
            .error(422);
        s.post_json(
            &format!("/api/hub/tasks/{id}"),
            &json!({"state": "x", "result": {}}),
        )
        .error(422);
        s.post_json("/api/hub/tasks", &json!({"ttl": "soon"}))
            .error(422);
        let r = s.req("POST", "/api/hub/tasks", &[], Some(b"{}"));
        r.error(415);
        s.req("POST", "/api/hub/tasks/all", &[], None).error(405);

        let all = s.get("/api/hub/tasks/all").json();
        let ids: Vec<&str> = all
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [id.as_str(), d.as_str()]);
        // The list keeps the reference's struct field order.
        assert!(s.get("/api/hub/tasks/all").text().starts_with(r#"[{"id":"#));
    });
}

#[test]
fn heartbeat_claims() {
    both(|s| {
        let targeted = create(s, json!({"target_agent_id": "ag1"}));
        let skill = create(s, json!({"skill": "sum"}));
        // Target and skill: lives on the skill's shard, reachable by the target via a pointer.
        let both_ = create(s, json!({"target_agent_id": "ag1", "skill": "rare"}));
        let other = create(s, json!({"target_agent_id": "ag2"}));
        let untargeted = create(s, json!({}));

        // An empty agent id claims nothing by target (deviation: the reference hands it
        // every untargeted task).
        let r = s.post_json("/api/hub/heartbeat", &hb("", &[]));
        assert!(claimed_ids(&r).is_empty());

        let r = s.post_json("/api/hub/heartbeat", &hb("ag1", &["sum"]));
        let mut got = claimed_ids(&r);
        got.sort();
        let mut want = vec![targeted.clone(), skill.clone(), both_.clone()];
        want.sort();
        assert_eq!(got, want);
        let t = &r.json()["pending_tasks"][0];
        assert_eq!(t["state"], "assigned");
        assert_eq!(t["assigned_agent_id"], "ag1");
        // Nothing twice.
        assert!(
            claimed_ids(&s.post_json("/api/hub/heartbeat", &hb("ag1", &["sum", "rare"])))
                .is_empty()
        );
        assert_eq!(
            s.get(&format!("/api/hub/tasks/{other}")).json()["state"],
            "pending"
        );
        assert_eq!(
            s.get(&format!("/api/hub/tasks/{untargeted}")).json()["state"],
            "pending"
        );

        // A targeted skill task can also be taken by any agent with the skill; the
        // target's pointer is then dead and is dropped.
        let t2 = create(s, json!({"target_agent_id": "ag3", "skill": "rare"}));
        assert_eq!(
            claimed_ids(&s.post_json("/api/hub/heartbeat", &hb("ag9", &["rare"]))),
            [t2]
        );
        assert!(claimed_ids(&s.post_json("/api/hub/heartbeat", &hb("ag3", &[]))).is_empty());

        // The heartbeat registered the agents, replaced skills and kept a known sidecar id.
        s.post_json(
            "/api/hub/heartbeat",
            &json!({"agent_id": "ag1", "hostname": "h", "sidecar_peer_id": "sc"}),
        );
        s.post_json(
            "/api/hub/heartbeat",
            &json!({"agent_id": "ag1", "hostname": "h2", "skill_names": ["z"]}),
        );
        let a = s.get("/api/registry/agents/ag1").json();
        assert_eq!(a["sidecar_peer_id"], "sc");
        assert_eq!(a["hostname"], "h2");
        assert_eq!(a["capabilities"]["skills"], json!(["z"]));
        assert_eq!(a["health"], "active");
    });
}

#[test]
fn concurrent_heartbeats_assign_each_task_once() {
    for cores in [1, 2] {
        let s = Server::start(cores);
        let mut ids = Vec::new();
        for i in 0..50 {
            let skill = if i % 2 == 0 { "crunch" } else { "grind" };
            ids.push(create(&s, json!({"skill": skill, "payload": i})));
        }
        let got: Vec<(String, Vec<String>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|a| {
                    let s = &s;
                    scope.spawn(move || {
                        let agent = format!("worker-{a}");
                        let mut mine = Vec::new();
                        // Many connections, so that requests land on different shards.
                        for _ in 0..10 {
                            let r = s
                                .post_json("/api/hub/heartbeat", &hb(&agent, &["crunch", "grind"]));
                            mine.extend(claimed_ids(&r));
                        }
                        (agent, mine)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut owner: HashMap<String, String> = HashMap::new();
        for (agent, tasks) in &got {
            for t in tasks {
                assert!(
                    owner.insert(t.clone(), agent.clone()).is_none(),
                    "task {t} assigned twice"
                );
            }
        }
        assert_eq!(owner.len(), 50, "every task assigned exactly once");
        for id in &ids {
            let t = s.get(&format!("/api/hub/tasks/{id}")).json();
            assert_eq!(t["state"], "assigned");
            assert_eq!(
                t["assigned_agent_id"].as_str(),
                owner.get(id).map(|s| s.as_str())
            );
        }
    }
}
