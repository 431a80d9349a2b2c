//! The registry's workflows on the simulator (issue 21): N shards in one thread, the
//! server's own dispatch, simulated time, and faults.

use crate::limits::Principal;
use crate::registry::api;
use crate::server::sim::{config, world};
use crate::shard::{Kind, Outcome};
use crate::time::UnixTime;
use wire::json::parse_body;

const T0: UnixTime = UnixTime(1_800_000_000_000_000_000);

fn info(id: &str) -> crate::registry::AgentInfo {
    parse_body(format!(r#"{{"agent_id":"{id}","hostname":"h"}}"#).as_bytes()).unwrap()
}

fn body(o: Outcome) -> String {
    match o {
        Outcome::Json(b) => String::from_utf8(b).unwrap(),
        Outcome::Static(b) => String::from_utf8(b.to_vec()).unwrap(),
        Outcome::Page { json, .. } => String::from_utf8(json).unwrap(),
        Outcome::Accepted(b) => String::from_utf8(b).unwrap(),
    }
}

#[test]
fn agents_register_on_their_owner_and_list_from_any_shard() {
    for shards in [1, 2, 4] {
        let sim = world(shards, config(), T0, 7);
        let cfg = crate::registry::Config::default();
        for (i, id) in ["alpha", "beta", "gamma", "delta"].iter().enumerate() {
            let sh = sim.shard(i % shards);
            let by = Principal::anonymous(format!("10.0.0.{i}"));
            let r = sim.block_on(async move { api::register(&sh, &cfg, info(id), by).await });
            assert_eq!(body(r.unwrap()), r#"{"status":"ok"}"#);
        }
        let sh = sim.shard(shards - 1);
        let page = sim.block_on(async move { api::list_page(&sh, &cfg, None, None).await });
        let list: serde_json::Value = serde_json::from_str(&body(page.unwrap())).unwrap();
        let ids: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["agent_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["alpha", "beta", "delta", "gamma"], "{shards} shards");
        // Each agent lives on its owner only.
        let held: usize = (0..shards)
            .map(|s| sim.node(s).state.agents.borrow().len())
            .sum();
        assert_eq!(held, 4);
    }
}

#[test]
fn a_binding_refuses_another_address_on_any_shard() {
    let sim = world(2, config(), T0, 3);
    let cfg = crate::registry::Config::default();
    let sh = sim.shard(0);
    sim.block_on(async move {
        api::register(&sh, &cfg, info("alpha"), Principal::anonymous("10.0.0.1")).await
    })
    .unwrap();
    let sh = sim.shard(1);
    let e = sim
        .block_on(async move {
            api::register(&sh, &cfg, info("alpha"), Principal::anonymous("10.0.0.2")).await
        })
        .unwrap_err();
    assert_eq!(e.kind, Kind::Forbidden);
}

#[test]
fn an_overloaded_owner_is_a_503_after_the_ask_patience() {
    let sim = world(2, config(), T0, 1);
    let cfg = crate::registry::Config::default();
    // Find an id owned by shard 1, and fill shard 1's mailbox.
    let id = (0..)
        .map(|i| format!("agent-{i}"))
        .find(|id| reactor::shard_of(id.as_bytes(), 2) == 1)
        .unwrap();
    sim.set_full(1, true);
    let sh = sim.shard(0);
    let t0 = sim.now();
    let e = sim
        .block_on(async move {
            api::register(&sh, &cfg, info(&id), Principal::anonymous("10.0.0.1")).await
        })
        .unwrap_err();
    assert_eq!(e.kind, Kind::Unavailable);
    assert!(e.message.unwrap().contains("shard 1 is overloaded"));
    assert!(sim.now().saturating_duration_since(t0) >= crate::shard::ASK_PATIENCE);
    assert_eq!(sim.stats(0).asks_refused.get(), 1);
    assert_eq!(sim.node(1).state.agents.borrow().len(), 0);
}
