//! The dashboard's workflows on the simulator (issue 21): pages and the summary gathered
//! from the services of N shards through their typed ops, the change logs read through
//! the shard layer, a full mailbox.

use serde_json::Value;

use super::{config, world, SimNode};
use crate::dashboard::api::{self, AgentParams, TaskParams};
use crate::dashboard::events::EventStream;
use crate::hub::TaskSubmission;
use crate::limits::Principal;
use crate::pairing::{EntryId, Issuer};
use crate::server::Msg;
use crate::shard::sim::Sim;
use crate::shard::{Kind, Outcome, ShardId, ASK_PATIENCE};
use crate::time::UnixTime;
use wire::json::parse_body;

const T0: UnixTime = UnixTime(1_800_000_000_000_000_000);
const SEC: u64 = 1_000_000_000;

type World = Sim<Msg, SimNode>;

fn json(o: Outcome) -> Value {
    match o {
        Outcome::Json(b) | Outcome::Accepted(b) => serde_json::from_slice(&b).unwrap(),
        other => panic!("{other:?}"),
    }
}

/// Registers `ids` through the registry's workflow, each from another shard.
fn register(sim: &World, ids: &[String]) {
    let cfg = crate::registry::Config::default();
    for (i, id) in ids.iter().enumerate() {
        let info: crate::registry::AgentInfo =
            parse_body(format!(r#"{{"agent_id":"{id}","hostname":"host-{}"}}"#, i % 3).as_bytes())
                .unwrap();
        let sh = sim.shard(i % sim.count());
        let by = Principal::anonymous(format!("10.0.{}.{}", i / 200, i % 200));
        sim.block_on(async move { crate::registry::api::register(&sh, &cfg, info, by).await })
            .unwrap();
    }
}

/// `n` tasks `task-00…`, one a second, on their home shards; the first `done` completed.
fn tasks(sim: &World, n: usize, done: usize) {
    for i in 0..n {
        let id = format!("task-{i:02}");
        let home = reactor::shard_of(id.as_bytes(), sim.count());
        let sub = TaskSubmission {
            skill: "echo".into(),
            source_agent_id: format!("src-{}", i % 2),
            ttl: 300,
            ..TaskSubmission::default()
        };
        let mut hub = sim.node(home).state.hub.borrow_mut();
        let t = hub
            .tasks
            .create(sub, id.clone(), UnixTime(T0.0 + i as u64 * SEC))
            .unwrap()
            .clone();
        if i < done {
            let mut t = t;
            t.state = "completed".into();
            hub.tasks.replace(t);
        }
    }
}

/// Pairing entries on their owners: `pending` pending ones and `approved` approved ones.
fn entries(sim: &World, pending: u32, approved: u32) {
    for i in 0..pending + approved {
        let id = EntryId::from_u32(0x1000 + i);
        let owner = reactor::shard_of(id.to_string().as_bytes(), sim.count());
        let mut p = sim.node(owner).state.pairing.borrow_mut();
        let issuer = Issuer {
            peer_id: "admin-1".into(),
            mesh: None,
        };
        p.entries
            .create(id, format!("agent-{i}"), "bot", issuer, T0)
            .unwrap();
        if i >= pending {
            p.entries
                .approve(&id.to_string(), &mut |b: &mut [u8]| b.fill(7), T0)
                .unwrap();
        }
    }
}

/// Owned query values of an agents page.
#[derive(Default)]
struct Q {
    limit: Option<&'static str>,
    cursor: Option<String>,
    sort: Option<&'static str>,
    order: Option<&'static str>,
    q: Option<&'static str>,
}

fn agents_page(sim: &World, from: ShardId, q: Q) -> Value {
    let sh = sim.shard(from);
    json(
        sim.block_on(async move {
            let p = AgentParams {
                limit: q.limit,
                cursor: q.cursor.as_deref(),
                sort: q.sort,
                order: q.order,
                health: None,
                q: q.q,
            };
            api::agents(&sh, &p).await
        })
        .unwrap(),
    )
}

#[test]
fn agents_page_through_every_shard() {
    for shards in [1, 2, 4] {
        let sim = world(shards, config(), T0, 21);
        let ids: Vec<String> = (0..9).map(|i| format!("agent-{i}")).collect();
        register(&sim, &ids);
        // By id, three at a time, from the last shard.
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = agents_page(
                &sim,
                shards - 1,
                Q {
                    limit: Some("3"),
                    cursor: cursor.take(),
                    ..Q::default()
                },
            );
            assert_eq!(page["total"], 9);
            let items = page["items"].as_array().unwrap();
            assert!(items.len() <= 3);
            seen.extend(
                items
                    .iter()
                    .map(|a| a["agent_id"].as_str().unwrap().to_owned()),
            );
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, ids, "{shards} shards: every agent once, in id order");
        // Filters and the sort are the registry's: by host, descending, one host.
        let page = agents_page(
            &sim,
            0,
            Q {
                sort: Some("host"),
                order: Some("desc"),
                q: Some("HOST-1"),
                ..Q::default()
            },
        );
        let got: Vec<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["agent_id"].as_str().unwrap())
            .collect();
        assert_eq!(got, ["agent-7", "agent-4", "agent-1"], "{shards} shards");
        // A malformed value is a 400 naming it, before any shard is asked.
        let sh = sim.shard(0);
        let e = sim
            .block_on(async move {
                let p = AgentParams {
                    order: Some("sideways"),
                    ..AgentParams::default()
                };
                api::agents(&sh, &p).await
            })
            .unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_deref()),
            (Kind::BadRequest, Some("order must be asc or desc"))
        );
    }
}

#[test]
fn tasks_page_newest_first_across_shards() {
    for shards in [1, 2, 4] {
        let sim = world(shards, config(), T0, 22);
        tasks(&sim, 7, 2);
        let sh = sim.shard(0);
        let page = json(
            sim.block_on(async move {
                let p = TaskParams {
                    limit: Some("4"),
                    ..TaskParams::default()
                };
                api::tasks(&sh, &p).await
            })
            .unwrap(),
        );
        let ids: Vec<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["task-06", "task-05", "task-04", "task-03"]);
        assert_eq!(page["total"], 7);
        let next = page["next_cursor"].as_str().unwrap().to_owned();
        let sh = sim.shard(shards - 1);
        let page = json(
            sim.block_on(async move {
                let p = TaskParams {
                    cursor: Some(&next),
                    state: Some("pending"),
                    ..TaskParams::default()
                };
                api::tasks(&sh, &p).await
            })
            .unwrap(),
        );
        let ids: Vec<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            ["task-02"],
            "{shards} shards: pending, after the cursor"
        );
        assert_eq!(page["total"], 5);
    }
}

#[test]
fn the_summary_adds_up_every_shard() {
    for shards in [1, 2, 4] {
        let sim = world(shards, config(), T0, 23);
        let ids: Vec<String> = (0..5).map(|i| format!("agent-{i}")).collect();
        // Two agents go stale: registered, then silent past STALE_AFTER.
        register(&sim, &ids[..2]);
        sim.advance(crate::registry::STALE_AFTER + std::time::Duration::from_secs(1));
        register(&sim, &ids[2..]);
        for s in 0..shards {
            sim.node(s).state.agents.borrow_mut().tick_health(sim.now());
        }
        tasks(&sim, 6, 2);
        entries(&sim, 3, 2);
        let sh = sim.shard(shards - 1);
        let s = json(
            sim.block_on(async move { api::summary(&sh).await })
                .unwrap(),
        );
        assert_eq!(
            s["agents"],
            serde_json::json!({"active": 3, "stale": 2, "offline": 0})
        );
        assert_eq!(
            s["tasks"],
            serde_json::json!({"completed": 2, "pending": 4})
        );
        assert_eq!(
            (s["pairing_pending"].clone(), s["pairing_approved"].clone()),
            (3.into(), 2.into())
        );
        let rows = s["shards"].as_array().unwrap();
        let order: Vec<u64> = rows.iter().map(|r| r["shard"].as_u64().unwrap()).collect();
        assert_eq!(order, (0..shards as u64).collect::<Vec<_>>());
        assert_eq!(s["time"].as_f64().unwrap(), sim.now().as_secs_f64());
    }
}

#[test]
fn a_full_shard_is_a_503_for_pages_and_the_summary() {
    let sim = world(4, config(), T0, 24);
    register(&sim, &["a".into(), "b".into()]);
    sim.set_full(3, true);
    let t0 = sim.now();
    let sh = sim.shard(0);
    let e = sim
        .block_on(async move { api::agents(&sh, &AgentParams::default()).await })
        .unwrap_err();
    assert_eq!(e.kind, Kind::Unavailable);
    assert!(e.message.unwrap().contains("shard 3 is overloaded"));
    assert!(sim.now().saturating_duration_since(t0) >= ASK_PATIENCE);
    let sh = sim.shard(1);
    let e = sim
        .block_on(async move { api::summary(&sh).await })
        .unwrap_err();
    assert_eq!(e.kind, Kind::Unavailable);
    let sh = sim.shard(2);
    let e = sim
        .block_on(async move { api::tasks(&sh, &TaskParams::default()).await })
        .unwrap_err();
    assert_eq!(e.kind, Kind::Unavailable);
}

/// The server-sent events in `out`: `(event, data)`.
fn events(out: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(out).unwrap();
    text.split("\n\n")
        .filter_map(|block| {
            let event = block.strip_prefix("event: ")?;
            let (event, data) = event.split_once("\ndata: ")?;
            Some((event.to_owned(), serde_json::from_str(data).unwrap()))
        })
        .collect()
}

#[test]
fn the_event_stream_reads_every_shards_change_log() {
    for shards in [1, 2, 4] {
        let sim = std::rc::Rc::new(world(shards, config(), T0, 25));
        register(&sim, &["before".into()]);
        let sh = sim.shard(0);
        let (stream, out) = sim.block_on(async move {
            let mut out = Vec::new();
            let s = EventStream::open(&sh, &mut out).await;
            (s, out)
        });
        let first = events(&out);
        assert_eq!(first[0].0, "hello");
        assert_eq!(first[0].1["shards"], shards);
        assert_eq!(first[1].0, "summary");
        assert_eq!(first[1].1["agents"]["active"], 1);
        // Changes on every shard after the stream opened: the next poll has each once
        // (not the one before), whichever shard noted it.
        let ids: Vec<String> = (0..8).map(|i| format!("agent-{i}")).collect();
        register(&sim, &ids);
        let sh = sim.shard(shards - 1);
        let (mut stream, out) = sim.block_on(async move {
            let mut stream = stream;
            let mut out = Vec::new();
            stream.poll(&sh, &mut out).await;
            (stream, out)
        });
        let pushed = events(&out);
        assert_eq!(pushed.len(), 1, "the first poll has no summary");
        assert_eq!(pushed[0].0, "changes");
        assert_eq!(pushed[0].1["resync"], false);
        let mut got: Vec<&str> = pushed[0].1["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                assert_eq!(e["kind"], "agent");
                e["id"].as_str().unwrap()
            })
            .collect();
        got.sort();
        assert_eq!(got, ids, "{shards} shards");
        let seqs: Vec<u64> = (0..shards)
            .map(|s| sim.node(s).state.changes.borrow().seq())
            .collect();
        assert_eq!(stream.seqs(), seqs);
        // A shard whose mailbox stays full: the poll writes nothing and keeps its
        // sequences; once it drains, the changes come in the next poll.
        register(&sim, &["late".into()]);
        let busy = reactor::shard_of(b"late", shards);
        sim.set_full(busy, true);
        let (world2, sh2) = (sim.clone(), sim.shard(0));
        let t0 = sim.now();
        let (stream2, out) = sim.block_on(async move {
            let mut out = Vec::new();
            stream.poll(&sh2, &mut out).await;
            world2.set_full(busy, false);
            (stream, out)
        });
        assert!(sim.now().saturating_duration_since(t0) >= ASK_PATIENCE);
        assert!(out.is_empty(), "nothing to write this tick");
        assert_eq!(stream2.seqs(), seqs, "sequences kept");
        let sh = sim.shard(0);
        let (stream3, out) = sim.block_on(async move {
            let mut stream = stream2;
            let mut out = Vec::new();
            stream.poll(&sh, &mut out).await;
            (stream, out)
        });
        let pushed = events(&out);
        assert_eq!(pushed.len(), 1);
        assert_eq!(pushed[0].0, "changes");
        assert_eq!(pushed[0].1["events"][0]["id"], "late");
        assert_eq!(pushed[0].1["events"].as_array().unwrap().len(), 1);
        // Every second poll carries the summary: the new agents counted.
        let sh = sim.shard(0);
        let out = sim.block_on(async move {
            let mut stream = stream3;
            let mut out = Vec::new();
            stream.poll(&sh, &mut out).await;
            out
        });
        let pushed = events(&out);
        assert_eq!(pushed.len(), 1, "no change since");
        assert_eq!(pushed[0].0, "summary");
        assert_eq!(pushed[0].1["agents"]["active"], 10);
    }
}

#[test]
fn a_quiet_poll_is_a_comment_line() {
    let sim = world(2, config(), T0, 26);
    let sh = sim.shard(1);
    let out = sim.block_on(async move {
        let mut out = Vec::new();
        let mut s = EventStream::open(&sh, &mut out).await;
        out.clear();
        s.poll(&sh, &mut out).await;
        out
    });
    assert_eq!(out, b": tick\n\n");
}
