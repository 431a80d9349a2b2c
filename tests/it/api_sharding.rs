//! One agent updated through requests that land on different shards stays consistent:
//! with --cores 2, SO_REUSEPORT spreads many connections over both shards.

use crate::common;
use common::*;

#[test]
fn one_agent_through_many_connections() {
    for cores in [1, 2] {
        let s = Server::start(cores);
        let mut conns: Vec<Conn> = (0..16).map(|_| s.conn()).collect();
        for round in 0..16 {
            let writer = round % conns.len();
            let host = format!("host-{round}");
            let r = conns[writer].post_json(
                "/api/hub/heartbeat",
                &json!({"agent_id": "shared", "hostname": host, "skill_names": [format!("s{round}")]}),
            );
            assert_eq!(r.status, 200);
            // Every connection (whatever shard accepted it) sees the update at once.
            for c in conns.iter_mut() {
                let a = c.get("/api/registry/agents/shared").json();
                assert_eq!(a["hostname"].as_str(), Some(host.as_str()));
                assert_eq!(a["capabilities"]["skills"], json!([format!("s{round}")]));
                let list = c.get("/api/registry/agents").json();
                assert_eq!(list.as_array().unwrap().len(), 1);
                assert_eq!(
                    c.get(&format!("/api/registry/route?skill=s{round}")).json()["agent_id"],
                    "shared"
                );
            }
        }
        // The shards really were both used (per-shard request counters in /metrics).
        if cores == 2 {
            let m = s.get("/metrics").text();
            let served: Vec<u64> = m
                .lines()
                .filter(|l| l.starts_with("chatixia_http_requests_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
                .collect();
            assert_eq!(served.len(), 2, "{m}");
            assert!(
                served.iter().all(|&n| n > 0),
                "one shard served nothing: {served:?}"
            );
        }
    }
}

/// A heartbeat through either shard gets a task posted (or set back to pending) just
/// before it, though the skill's shard had just said "none left" to both (issue 26:
/// `hub::hints`, a heartbeat skips asking a skill shard that said so less than 1 s ago):
/// the skill shard tells every shard before the post's answer is sent. And the hints
/// were used: idle heartbeats skipped asks.
#[test]
fn a_task_posted_after_none_left_goes_to_the_next_heartbeat_through_any_shard() {
    let s = Server::start(2);
    let mut conns: Vec<Conn> = (0..16).map(|_| s.conn()).collect();
    let hb = |c: &mut Conn, agent: &str| {
        let r = c.post_json(
            "/api/hub/heartbeat",
            &json!({"agent_id": agent, "hostname": "h", "skill_names": ["x", "y"]}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        claimed_ids(&r)
    };
    for round in 0..30 {
        // Idle heartbeats through every connection: both shards hear "none left".
        for (i, c) in conns.iter_mut().enumerate() {
            assert_eq!(hb(c, &format!("idle-{i}")), Vec::<String>::new());
        }
        let skill = ["x", "y"][round % 2];
        let r = conns[round % 16].post_json(
            "/api/hub/tasks",
            &json!({"skill": skill, "payload": {"round": round}, "ttl": 60}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let id = r.json()["task_id"].as_str().unwrap().to_owned();
        let k = (round * 7 + 3) % 16;
        assert_eq!(
            hb(&mut conns[k], &format!("worker-{k}")),
            vec![id.clone()],
            "round {round}: the first heartbeat after the post"
        );
        // Idle heartbeats again, then the task is set back to pending: the next
        // heartbeat, through another connection, gets it.
        for (i, c) in conns.iter_mut().enumerate() {
            assert_eq!(hb(c, &format!("idle-{i}")), Vec::<String>::new());
        }
        let r = conns[(round + 5) % 16].post_json(
            &format!("/api/hub/tasks/{id}"),
            &json!({"state": "pending"}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let k2 = (k + 1 + round % 15) % 16;
        assert_eq!(
            hb(&mut conns[k2], &format!("worker-{k2}")),
            vec![id],
            "round {round}: the first heartbeat after the task was set pending again"
        );
    }
    let skipped = common::turn_rig::metric(&s, "chatixia_hub_skill_asks_skipped_total", "");
    assert!(
        skipped > 100,
        "the hints were not used: {skipped} asks skipped"
    );
}

/// A task aimed at an agent that lacks its skill, set back to pending (its pointer was
/// used up by the first claim), is found only by the skill shard's `ClaimFor`, which
/// claims by target too: that shard's "none left" for the agent's own skills must not
/// make it skipped (review of the skill hints: it did, for as long as other agents kept
/// the hint fresh).
#[test]
fn a_targeted_task_set_pending_again_reaches_its_target_through_any_shard() {
    let s = Server::start(2);
    let on = |k: &str, n: usize| reactor::shard_of(k, 2) == n;
    let pick = |p: &str, n: usize| (0..).map(|i| format!("{p}{i}")).find(|k| on(k, n)).unwrap();
    let (x, z) = (pick("x", 1), pick("z", 1));
    let a1 = pick("agent", 0);
    let idle: Vec<String> = (0..)
        .map(|i| format!("idle{i}"))
        .filter(|k| on(k, 0))
        .take(4)
        .collect();
    let mut conns: Vec<Conn> = (0..16).map(|_| s.conn()).collect();
    let hb = |c: &mut Conn, agent: &str, skill: &str| -> Vec<String> {
        let r = c.post_json(
            "/api/hub/heartbeat",
            &json!({"agent_id": agent, "hostname": "h", "skill_names": [skill]}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        claimed_ids(&r)
    };
    let r = conns[0].post_json(
        "/api/hub/tasks",
        &json!({"skill": z, "target_agent_id": a1, "payload": {}, "ttl": 60}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["task_id"].as_str().unwrap().to_owned();
    assert_eq!(
        hb(&mut conns[0], &a1, &x),
        vec![id.clone()],
        "first claim (pointer)"
    );
    for k in 0..16 {
        let r = conns[k].post_json(
            &format!("/api/hub/tasks/{id}"),
            &json!({"state": "pending"}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        // Other agents with skill x heartbeat through every connection: shard 1 says
        // "none left for x" to shard 0.
        for (i, c) in conns.iter_mut().enumerate() {
            assert!(hb(c, &idle[i % 4], &x).is_empty());
        }
        assert_eq!(
            hb(&mut conns[k], &a1, &x),
            vec![id.clone()],
            "conn {k}: the first heartbeat of its target after the task was set pending"
        );
    }
}
