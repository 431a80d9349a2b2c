//! The hub's workflows on the simulator (issue 21): N shards in one thread with the
//! server's own dispatch, on simulated time, with full mailboxes, failing commits and
//! seeded interleavings. What the integration tests check through sockets, these check
//! step by step, every undo path included.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use serde_json::Value;

use super::{config, world, SimNode};
use crate::hub::{api, Config, TaskSubmission, TaskUpdate};
use crate::limits::Principal;
use crate::registry::{self, Heartbeat};
use crate::server::Msg;
use crate::shard::sim::{Rng, Sim};
use crate::shard::{Error, Kind, Outcome};
use crate::time::UnixTime;
use chatixia_store::Mutation;
use wire::json::parse_body;

const T0: UnixTime = UnixTime(1_800_000_000_000_000_000);

type World = Sim<Msg, SimNode>;

fn body(o: Outcome) -> Value {
    let b = match o {
        Outcome::Json(b) | Outcome::Accepted(b) => b,
        Outcome::Static(b) => b.to_vec(),
        Outcome::Page { json, .. } => json,
    };
    serde_json::from_slice(&b).unwrap()
}

fn hb(agent: &str, skills: &[&str]) -> Heartbeat {
    parse_body(
        serde_json::json!({"agent_id": agent, "skill_names": skills})
            .to_string()
            .as_bytes(),
    )
    .unwrap()
}

fn task(skill: &str, target: &str) -> TaskSubmission {
    parse_body(
        serde_json::json!({"skill": skill, "target_agent_id": target, "payload": {"q": 1}})
            .to_string()
            .as_bytes(),
    )
    .unwrap()
}

fn done() -> TaskUpdate {
    parse_body(br#"{"state":"completed","result":"ok"}"#).unwrap()
}

fn anon(i: u32) -> Principal {
    Principal::anonymous(format!("10.0.0.{i}"))
}

fn cfg() -> Config {
    Config::default()
}

fn create(sim: &World, from: usize, sub: TaskSubmission, by: Principal) -> Result<String, Error> {
    let sh = sim.shard(from);
    sim.block_on(async move { api::create(&sh, &cfg(), sub, by).await })
        .map(|o| body(o)["task_id"].as_str().unwrap().to_owned())
}

fn heartbeat(sim: &World, from: usize, b: Heartbeat, by: Principal) -> Result<Vec<String>, Error> {
    let sh = sim.shard(from);
    let agents = registry::Config::default();
    sim.block_on(async move { api::heartbeat(&sh, &agents, &cfg(), b, by).await })
        .map(|o| claimed(&body(o)))
}

/// The ids a heartbeat's answer hands out.
fn claimed(v: &Value) -> Vec<String> {
    v["pending_tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

fn get(sim: &World, from: usize, id: &str, reader: Principal) -> Value {
    let sh = sim.shard(from);
    let id = id.to_owned();
    body(
        sim.block_on(async move { api::get(&sh, &reader, id).await })
            .unwrap(),
    )
}

/// Every task held by any shard, by id: `(state, assignee)`.
fn held(sim: &World) -> BTreeMap<String, (String, String)> {
    (0..sim.count())
        .flat_map(|s| {
            sim.node(s)
                .state
                .hub
                .borrow()
                .tasks
                .list()
                .map(|t| (t.id.clone(), (t.state.clone(), t.assigned_agent_id.clone())))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn a_task_is_claimed_by_the_heartbeat_of_its_target_or_skill_on_any_shard_count() {
    for shards in [1, 2, 4] {
        for seed in 0..4 {
            let sim = world(shards, config(), T0, seed);
            let by_target = create(&sim, 0, task("", "alpha"), anon(1)).unwrap();
            let by_skill = create(&sim, shards - 1, task("search", ""), anon(2)).unwrap();
            let both = create(&sim, 0, task("code", "beta"), anon(3)).unwrap();
            // alpha lists `search`: it claims its own task and the skill task; beta's
            // task (skill `code`, which alpha does not list) waits for beta or a coder.
            let alpha = Principal::credential("alpha-sidecar", "agent", "10.0.0.9");
            let got = heartbeat(&sim, shards - 1, hb("alpha", &["search"]), alpha.clone()).unwrap();
            let got: BTreeSet<String> = got.into_iter().collect();
            assert_eq!(
                got,
                [by_target.clone(), by_skill.clone()].into_iter().collect(),
                "{shards} shards, seed {seed}"
            );
            // beta claims its task through the pointer left on its shard.
            let beta = Principal::credential("beta", "agent", "10.0.0.8");
            let got = heartbeat(&sim, 0, hb("beta", &[]), beta.clone()).unwrap();
            assert_eq!(got, vec![both.clone()], "{shards} shards, seed {seed}");
            // Nothing is handed out twice.
            assert!(heartbeat(&sim, 0, hb("alpha", &["search"]), alpha)
                .unwrap()
                .is_empty());
            assert!(heartbeat(&sim, 0, hb("beta", &[]), beta)
                .unwrap()
                .is_empty());
            // Claims are durable: the store holds the assigned tasks.
            let assigned = sim
                .durable()
                .iter()
                .filter(|m| matches!(m, Mutation::PutTask(r) if r.state == "assigned"))
                .count();
            assert_eq!(assigned, 3);
        }
    }
}

#[test]
fn create_update_and_expire_on_simulated_time() {
    let sim = world(2, config(), T0, 5);
    let id = create(&sim, 0, task("", "alpha"), anon(1)).unwrap();
    let alpha = Principal::credential("alpha", "agent", "10.0.0.9");
    heartbeat(&sim, 1, hb("alpha", &[]), alpha.clone()).unwrap();
    let sh = sim.shard(1);
    let i = id.clone();
    let r = sim.block_on(async move { api::update(&sh, &cfg(), i, done(), alpha).await });
    assert_eq!(body(r.unwrap())["status"], "ok");
    let t = get(&sim, 0, &id, anon(1));
    assert_eq!(
        (t["state"].as_str(), t["result"].as_str()),
        (Some("completed"), Some("ok"))
    );
    // A finished task leaves the store (memory only, under the retention).
    assert!(sim
        .durable()
        .iter()
        .any(|m| matches!(m, Mutation::DeleteTask(d) if *d == id)));
    // An unclaimed task fails at its TTL (300 s) when the expiry job runs.
    let late = create(&sim, 0, task("nobody", ""), anon(1)).unwrap();
    sim.advance(Duration::from_secs(301));
    let now = sim.now();
    for s in 0..sim.count() {
        let st = &sim.node(s).state;
        crate::hub::ops::expire(&mut st.hub.borrow_mut(), now, &mut st.changes.borrow_mut());
    }
    let t = get(&sim, 1, &late, anon(1));
    assert_eq!(
        (t["state"].as_str(), t["error"].as_str()),
        (Some("failed"), Some("TTL expired"))
    );
}

#[test]
fn a_failed_commit_undoes_every_change() {
    for shards in [1, 2, 4] {
        let sim = world(shards, config(), T0, 11);
        // Creation: nothing is left where the task would have lived.
        sim.fail_commits(1);
        let e = create(&sim, 0, task("search", ""), anon(1)).unwrap_err();
        assert_eq!(e.kind, Kind::Unavailable);
        sim.run();
        assert!(held(&sim).is_empty(), "{shards}: an unsaved task lingers");
        // A claim the store refuses goes back to pending, for the next heartbeat.
        let id = create(&sim, 0, task("search", "alpha"), anon(1)).unwrap();
        let alpha = Principal::credential("alpha", "agent", "10.0.0.9");
        sim.fail_commits(1);
        let e = heartbeat(&sim, 0, hb("alpha", &["search"]), alpha.clone()).unwrap_err();
        assert_eq!(e.kind, Kind::Unavailable);
        sim.run();
        assert_eq!(
            held(&sim)[&id],
            ("pending".into(), String::new()),
            "{shards}"
        );
        let got = heartbeat(&sim, 0, hb("alpha", &["search"]), alpha.clone()).unwrap();
        assert_eq!(got, vec![id.clone()]);
        // An update the store refuses is put back as it was.
        let sh = sim.shard(0);
        sim.fail_commits(1);
        let i = id.clone();
        let a = alpha.clone();
        let e = sim
            .block_on(async move {
                let upd = parse_body(br#"{"state":"working","result":"half"}"#).unwrap();
                api::update(&sh, &cfg(), i, upd, a).await
            })
            .unwrap_err();
        assert_eq!(e.kind, Kind::Unavailable);
        sim.run();
        assert_eq!(
            held(&sim)[&id],
            ("assigned".into(), "alpha".into()),
            "{shards}"
        );
        let t = get(&sim, 0, &id, alpha);
        assert_eq!(t["result"], "", "{shards}: the refused result stays out");
    }
}

#[test]
fn a_full_mailbox_refuses_before_anything_changes() {
    let sim = world(2, config(), T0, 2);
    // A task homed on shard 1 (its skill's shard), asked from shard 0.
    let skill = (0..)
        .map(|i| format!("skill-{i}"))
        .find(|s| reactor::shard_of(s.as_bytes(), 2) == 1)
        .unwrap();
    sim.set_full(1, true);
    let e = create(&sim, 0, task(&skill, ""), anon(1)).unwrap_err();
    assert_eq!(e.kind, Kind::Unavailable);
    assert!(held(&sim).is_empty());
    assert!(sim.durable().is_empty());
    // The reservation was refused up front: no ask waited.
    assert_eq!(sim.stats(0).reservations_refused.get(), 1);
    sim.set_full(1, false);
    create(&sim, 0, task(&skill, ""), anon(1)).unwrap();
    assert_eq!(held(&sim).len(), 1);
}

#[test]
fn an_admin_deletes_an_agent_and_its_binding_with_it() {
    let sim = world(2, config(), T0, 4);
    let alpha = Principal::credential("alpha", "agent", "10.0.0.1");
    heartbeat(&sim, 0, hb("alpha", &[]), alpha).unwrap();
    // Bound to its key: another address without it is refused.
    let e = heartbeat(&sim, 1, hb("alpha", &[]), anon(7)).unwrap_err();
    assert_eq!(e.kind, Kind::Forbidden);
    let sh = sim.shard(1);
    let r = sim.block_on(async move { registry::api::delete(&sh, "alpha".into()).await });
    assert_eq!(body(r.unwrap())["status"], "ok");
    // The id is free again.
    heartbeat(&sim, 1, hb("alpha", &[]), anon(7)).unwrap();
}

/// One operation of a random history.
#[derive(Clone, Debug)]
enum Step {
    Create {
        skill: usize,
        target: Option<usize>,
        from: usize,
    },
    Heartbeat {
        agent: usize,
        skills: Vec<usize>,
        from: usize,
    },
    Complete {
        nth: usize,
        agent: usize,
        from: usize,
    },
}

const AGENTS: [&str; 4] = ["alpha", "beta", "gamma", "delta"];
const SKILLS: [&str; 3] = ["search", "code", "write"];

fn history(rng: &mut Rng, len: usize) -> Vec<Step> {
    (0..len)
        .map(|_| match rng.below(3) {
            0 => Step::Create {
                skill: rng.below(SKILLS.len() + 1),
                target: (rng.below(2) == 0).then(|| rng.below(AGENTS.len())),
                from: rng.below(4),
            },
            1 => Step::Heartbeat {
                agent: rng.below(AGENTS.len()),
                skills: (0..rng.below(3)).map(|_| rng.below(SKILLS.len())).collect(),
                from: rng.below(4),
            },
            _ => Step::Complete {
                nth: rng.below(8),
                agent: rng.below(AGENTS.len()),
                from: rng.below(4),
            },
        })
        .collect()
}

/// Runs `steps` one after another (each completes before the next starts; inside one,
/// the seed orders the shards' messages) and returns every answer with task ids replaced
/// by their creation order, so runs with other ids compare equal.
fn answers(shards: usize, seed: u64, steps: &[Step]) -> Vec<String> {
    let sim = world(shards, config(), T0, seed);
    let mut ids: Vec<String> = Vec::new();
    let mut out = Vec::new();
    let who = |a: usize| Principal::credential(AGENTS[a], "agent", format!("10.0.1.{a}"));
    let name = |ids: &[String], id: &str| match ids.iter().position(|x| x == id) {
        Some(n) => format!("t{n}"),
        None => format!("?{id}"),
    };
    for step in steps {
        let from = |f: usize| f % shards;
        let line = match step {
            Step::Create {
                skill,
                target,
                from: f,
            } => {
                let skill = SKILLS.get(*skill).copied().unwrap_or("");
                let target = target.map_or("", |t| AGENTS[t]);
                match create(&sim, from(*f), task(skill, target), anon(1)) {
                    Ok(id) => {
                        ids.push(id);
                        format!("create {skill}/{target} -> t{}", ids.len() - 1)
                    }
                    Err(e) => format!("create -> {e}"),
                }
            }
            Step::Heartbeat {
                agent,
                skills,
                from: f,
            } => {
                let names: Vec<&str> = skills.iter().map(|&s| SKILLS[s]).collect();
                match heartbeat(&sim, from(*f), hb(AGENTS[*agent], &names), who(*agent)) {
                    Ok(got) => {
                        let mut got: Vec<String> = got.iter().map(|id| name(&ids, id)).collect();
                        got.sort();
                        format!("heartbeat {} {names:?} -> {got:?}", AGENTS[*agent])
                    }
                    Err(e) => format!("heartbeat -> {e}"),
                }
            }
            Step::Complete {
                nth,
                agent,
                from: f,
            } => {
                let Some(id) = ids.get(*nth).cloned() else {
                    continue;
                };
                let sh = sim.shard(from(*f));
                let by = who(*agent);
                let r = sim.block_on(async move { api::update(&sh, &cfg(), id, done(), by).await });
                match r {
                    Ok(o) => format!("complete t{nth} by {} -> {}", AGENTS[*agent], body(o)),
                    Err(e) => format!("complete t{nth} by {} -> {:?}", AGENTS[*agent], e.kind),
                }
            }
        };
        out.push(line);
    }
    out
}

/// A property: any history gives the answers of the single-shard run on 2 and 4 shards,
/// whatever order the shards' messages are delivered in.
#[test]
fn histories_on_two_and_four_shards_answer_as_on_one() {
    let mut rng = Rng::new(21);
    for case in 0..40 {
        let steps = history(&mut rng, 24);
        let model = answers(1, case, &steps);
        for shards in [2, 4] {
            for seed in [case, case + 1000] {
                let got = answers(shards, seed, &steps);
                assert_eq!(
                    got, model,
                    "case {case}, {shards} shards, seed {seed}: {steps:?}"
                );
            }
        }
    }
}

/// Concurrent heartbeats of several agents listing one skill, interleaved by the seed:
/// every task is handed to exactly one of them, and all are handed out.
#[test]
fn concurrent_heartbeats_hand_each_task_out_once() {
    for shards in [1, 2, 4] {
        for seed in 0..10 {
            let sim = world(shards, config(), T0, seed);
            let mut created = BTreeSet::new();
            for i in 0..12 {
                created.insert(create(&sim, i % shards, task("search", ""), anon(1)).unwrap());
            }
            let got: Rc<RefCell<Vec<String>>> = Rc::default();
            for (n, agent) in AGENTS.iter().enumerate() {
                for round in 0..2 {
                    let sh = sim.shard((n + round) % shards);
                    let got = got.clone();
                    let by = Principal::credential(*agent, "agent", "10.0.2.1");
                    let b = hb(agent, &["search"]);
                    sim.spawn(async move {
                        let agents = registry::Config::default();
                        if let Ok(o) = api::heartbeat(&sh, &agents, &cfg(), b, by).await {
                            for t in body(o)["pending_tasks"].as_array().unwrap() {
                                got.borrow_mut().push(t["id"].as_str().unwrap().to_owned());
                            }
                        }
                    });
                }
            }
            sim.run();
            let got = got.borrow();
            let unique: BTreeSet<String> = got.iter().cloned().collect();
            assert_eq!(
                unique.len(),
                got.len(),
                "{shards} shards, seed {seed}: handed out twice"
            );
            assert_eq!(unique, created, "{shards} shards, seed {seed}");
        }
    }
}

/// What the store holds after `mutations`, as a start would load it.
fn snapshot(mutations: &[Mutation]) -> chatixia_store::Snapshot {
    let mut tasks: BTreeMap<String, chatixia_store::TaskRecord> = BTreeMap::new();
    for m in mutations {
        match m {
            Mutation::PutTask(r) => {
                tasks.insert(r.id.clone(), r.clone());
            }
            Mutation::DeleteTask(id) => {
                tasks.remove(id);
            }
            _ => {}
        }
    }
    chatixia_store::Snapshot {
        tasks: tasks.into_values().collect(),
        ..Default::default()
    }
}

/// Tasks made durable on 2 shards, loaded on 1 and on 4 (their homes move): every one is
/// still claimed, by the agent it was meant for, once.
#[test]
fn a_restart_with_another_shard_count_keeps_every_task_claimable() {
    let before = world(2, config(), T0, 9);
    let mut made = BTreeMap::new();
    for (i, (skill, target)) in [
        ("search", ""),
        ("", "alpha"),
        ("code", "beta"),
        ("write", ""),
    ]
    .into_iter()
    .enumerate()
    {
        let id = create(&before, i % 2, task(skill, target), anon(1)).unwrap();
        made.insert(id, (skill, target));
    }
    let snap = snapshot(&before.durable());
    assert_eq!(snap.tasks.len(), 4);
    for shards in [1, 4] {
        let secrets = chatixia_store::Secrets::derive(b"s");
        let (boots, stray) = crate::server::boot::split(snap.clone(), shards, &secrets);
        let after = world(shards, config(), T0, 9);
        for (s, boot) in boots.into_iter().enumerate() {
            after.node(s).state.load(boot, T0);
        }
        let cfg = Config {
            stray_task_shards: stray,
            ..Config::default()
        };
        let mut got = BTreeSet::new();
        for (agent, skills) in [
            ("alpha", vec!["search"]),
            ("beta", vec![]),
            ("gamma", vec!["write"]),
        ] {
            let sh = after.shard(0);
            let by = Principal::credential(agent, "agent", "10.0.3.1");
            let b = hb(agent, &skills);
            let c = cfg.clone();
            let o = after
                .block_on(async move {
                    api::heartbeat(&sh, &registry::Config::default(), &c, b, by).await
                })
                .unwrap();
            for t in body(o)["pending_tasks"].as_array().unwrap() {
                assert!(
                    got.insert(t["id"].as_str().unwrap().to_owned()),
                    "handed out twice"
                );
            }
        }
        let all: BTreeSet<String> = made.keys().cloned().collect();
        assert_eq!(got, all, "{shards} shards after a restart from 2");
    }
}

/// A heartbeat that starts right after a post was answered gets the task, whatever
/// shards the two go through: the post's 2xx waits until the task's shard has made it
/// claimable (`Saved`) and its target's shard holds its pointer, rather than only sent
/// them. Before, a heartbeat through another shard could be read first there and miss
/// the task once (seen by reviewing the skill hints).
#[test]
fn a_heartbeat_right_after_a_post_gets_the_task() {
    for shards in [2, 4] {
        for seed in 0..24 {
            let sim = world(shards, config(), T0, seed);
            for (k, (skill, target, agent, skills)) in [
                ("search", "", "alpha", vec!["search"]),
                ("code", "beta", "beta", vec![]),
            ]
            .into_iter()
            .enumerate()
            {
                for (p, a) in (0..shards).flat_map(|p| (0..shards).map(move |a| (p, a))) {
                    let (shp, sha) = (sim.shard(p), sim.shard(a));
                    let sub = task(skill, target);
                    let by = Principal::credential(agent, "agent", "10.0.0.9");
                    let hbeat = hb(agent, &skills);
                    let (id, got) = sim.block_on(async move {
                        let id = api::create(&shp, &cfg(), sub, anon(1)).await.unwrap();
                        let id = body(id)["task_id"].as_str().unwrap().to_owned();
                        let agents = registry::Config::default();
                        let got = api::heartbeat(&sha, &agents, &cfg(), hbeat, by).await;
                        (id, body(got.unwrap()))
                    });
                    assert_eq!(
                        claimed(&got),
                        vec![id],
                        "case {k}: {shards} shards, seed {seed}, posted through {p}, heartbeat through {a}"
                    );
                }
            }
        }
    }
}

/// A task aimed at an agent by a skill that agent lacks, set back to pending after its
/// agent claimed it, reaches that agent's next heartbeat again (as the reference's
/// `target == agent` match does): its first claim used up the pointer on the agent's
/// shard, and the update leaves it again. Before, the task was found only by agents
/// with its skill.
#[test]
fn a_targeted_task_set_pending_again_reaches_its_agent_again() {
    for shards in [1, 2, 4] {
        for seed in 0..8 {
            let sim = world(shards, config(), T0, seed);
            for p in 0..shards {
                let beta = Principal::credential("beta", "agent", "10.0.0.8");
                let id = create(&sim, p, task("code", "beta"), beta.clone()).unwrap();
                let got = heartbeat(&sim, (p + 1) % shards, hb("beta", &[]), beta.clone());
                assert_eq!(
                    got.unwrap(),
                    vec![id.clone()],
                    "{shards} shards, seed {seed}"
                );
                // Back to pending (by its claimer), through any shard, then its agent's
                // next heartbeat, through any shard, gets it again.
                let sh = sim.shard(p);
                let (i, by) = (id.clone(), beta.clone());
                let upd: TaskUpdate = parse_body(br#"{"state":"pending"}"#).unwrap();
                sim.block_on(async move { api::update(&sh, &cfg(), i, upd, by).await })
                    .unwrap();
                let a = (p + shards - 1) % shards;
                let got = heartbeat(&sim, a, hb("beta", &[]), beta).unwrap();
                assert_eq!(
                    got,
                    vec![id],
                    "{shards} shards, seed {seed}, update through {p}"
                );
            }
        }
    }
}
