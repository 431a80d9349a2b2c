//! The registry's workflows on the simulator (issue 21): N shards in one thread, the
//! server's own dispatch, simulated time, and faults.

use super::{config, world};
use crate::limits::Principal;
use crate::registry::api;
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
    // Find an id owned by shard 1, and fill shard 1's mailbox.
    let id = (0..)
        .map(|i| format!("agent-{i}"))
        .find(|id| reactor::shard_of(id.as_bytes(), 2) == 1)
        .unwrap();
    sim.set_full(1, true);
    let sh = sim.shard(0);
    let t0 = sim.now();
    let asked = id.clone();
    let e = sim
        .block_on(async move { api::get(&sh, asked).await })
        .unwrap_err();
    assert_eq!(e.kind, Kind::Unavailable);
    assert!(e.message.unwrap().contains("shard 1 is overloaded"));
    assert!(sim.now().saturating_duration_since(t0) >= crate::shard::ASK_PATIENCE);
    assert_eq!(sim.stats(0).asks_refused.get(), 1);
    // A registration first reserves room for its binding's follow-up there: refused at
    // once, before anything changed.
    let (sh, cfg) = (sim.shard(0), crate::registry::Config::default());
    let t1 = sim.now();
    let e = sim
        .block_on(async move {
            api::register(&sh, &cfg, info(&id), Principal::anonymous("10.0.0.1")).await
        })
        .unwrap_err();
    assert_eq!(e.kind, Kind::Unavailable);
    assert_eq!(sim.now(), t1);
    assert_eq!(sim.stats(0).reservations_refused.get(), 1);
    assert_eq!(sim.node(1).state.agents.borrow().len(), 0);
}

/// The binding records the simulator's store holds: `(agent, owner)` after replaying
/// every acknowledged commit.
fn stored_bindings(
    sim: &crate::shard::sim::Sim<crate::server::msg::Msg, super::SimNode>,
) -> Vec<(String, String)> {
    use chatixia_store::{BindingOwner, Mutation};
    let mut held = std::collections::BTreeMap::new();
    for m in sim.durable() {
        match m {
            Mutation::PutAgentBinding(r) => {
                let owner = match r.owner {
                    BindingOwner::Peer(p) => format!("peer:{p}"),
                    BindingOwner::Address(a) => format!("address:{a}"),
                };
                held.insert(r.agent_id, owner);
            }
            Mutation::DeleteAgentBinding(id) => {
                held.remove(&id);
            }
            _ => {}
        }
    }
    held.into_iter().collect()
}

#[test]
fn bindings_are_durable_before_the_answer_and_undone_when_the_store_refuses() {
    for shards in [1, 2, 4] {
        let sim = world(shards, config(), T0, 9);
        let register = |on: usize, id: &str, by: Principal| {
            let (sh, cfg, info) = (sim.shard(on), crate::registry::Config::default(), info(id));
            sim.block_on(async move { api::register(&sh, &cfg, info, by).await })
        };
        // A refused save: the new binding and the agent are undone, so another address
        // may take the id afterwards.
        sim.fail_commits(1);
        let e = register(0, "alpha", Principal::anonymous("10.0.0.1")).unwrap_err();
        assert_eq!(e.kind, Kind::Unavailable, "{shards}");
        sim.run();
        assert!(stored_bindings(&sim).is_empty(), "{shards}");
        let owner = reactor::shard_of(b"alpha", shards);
        assert!(sim.node(owner).state.agents.borrow().get("alpha").is_none());
        register(shards - 1, "alpha", Principal::anonymous("10.0.0.2")).unwrap();
        sim.run();
        assert_eq!(
            stored_bindings(&sim),
            vec![("alpha".into(), "address:10.0.0.2".into())],
            "{shards}: durable before the 2xx"
        );
        // Its own re-registration writes nothing new; a credential takes it over.
        register(0, "alpha", Principal::anonymous("10.0.0.2")).unwrap();
        let by = Principal::credential("alpha-sidecar", "agent", "10.0.0.3");
        register(0, "alpha", by).unwrap();
        sim.run();
        assert_eq!(
            stored_bindings(&sim),
            vec![("alpha".into(), "peer:alpha-sidecar".into())],
            "{shards}"
        );
        // A deletion the store refuses leaves the agent; the next one removes both.
        sim.fail_commits(1);
        let sh = sim.shard(0);
        let e = sim
            .block_on(async move { api::delete(&sh, "alpha".into()).await })
            .unwrap_err();
        assert_eq!(e.kind, Kind::Unavailable, "{shards}");
        sim.run();
        assert!(sim.node(owner).state.agents.borrow().get("alpha").is_some());
        assert_eq!(stored_bindings(&sim).len(), 1, "{shards}");
        let sh = sim.shard(shards - 1);
        body(
            sim.block_on(async move { api::delete(&sh, "alpha".into()).await })
                .unwrap(),
        );
        sim.run();
        assert!(sim.node(owner).state.agents.borrow().get("alpha").is_none());
        assert!(stored_bindings(&sim).is_empty(), "{shards}");
        // With the binding gone, any address may register the id again.
        register(0, "alpha", Principal::anonymous("10.0.0.4")).unwrap();
    }
}
