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
