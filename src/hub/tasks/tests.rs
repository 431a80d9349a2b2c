use super::*;
use crate::limits::Principal;
use serde_json::json;
use wire::json::{parse_body, BodyError};

const T0: UnixTime = UnixTime(1_700_000_000_000_000_000);

fn at(secs: u64) -> UnixTime {
    T0.saturating_add(Duration::from_secs(secs))
}

fn sub(skill: &str, target: &str) -> TaskSubmission {
    TaskSubmission {
        skill: skill.into(),
        target_agent_id: target.into(),
        source_agent_id: "src".into(),
        payload: json!({"q": 1}).into(),
        ttl: DEFAULT_TTL_SECS,
    }
}

fn upd(state: &str) -> TaskUpdate {
    TaskUpdate {
        state: state.into(),
        ..TaskUpdate::default()
    }
}

fn skills(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn ids(tasks: &[Task]) -> Vec<&str> {
    tasks.iter().map(|t| t.id.as_str()).collect()
}

fn store() -> TaskStore {
    TaskStore::new(TaskStoreConfig::default())
}

#[test]
fn submission_defaults_and_errors() {
    let s: TaskSubmission = parse_body(b"{}").unwrap();
    assert_eq!(
        s,
        TaskSubmission {
            skill: String::new(),
            target_agent_id: String::new(),
            source_agent_id: String::new(),
            payload: Default::default(),
            ttl: 300,
        }
    );
    let s: TaskSubmission =
        parse_body(br#"{"skill":"x","payload":{"b":[1,{"z":1,"a":2}],"a":null},"ttl":0}"#).unwrap();
    assert_eq!(s.ttl, 0);
    assert_eq!(
        s.payload,
        json!({"a": null, "b": [1, {"a": 2, "z": 1}]}).into()
    );
    for bad in [
        &br#"{"ttl":-1}"#[..],
        br#"{"ttl":1.5}"#,
        br#"{"ttl":"300"}"#,
        br#"{"ttl":null}"#,
        br#"{"skill":1}"#,
        br#"{"skill":null}"#,
        br#"[1]"#,
        br#""x""#,
    ] {
        let err = parse_body::<TaskSubmission>(bad).unwrap_err();
        assert!(matches!(err, BodyError::Data { .. }), "{err:?}");
    }
    assert_eq!(
        parse_body::<TaskSubmission>(b"{").unwrap_err().status(),
        400
    );
    // serde's derive also accepts a struct as an array of its fields in order; with
    // every field defaulted, `[]` is a valid submission (the same in the reference).
    let s: TaskSubmission = parse_body(br#"[]"#).unwrap();
    assert_eq!(s.ttl, 300);
    let s: TaskSubmission = parse_body(br#"["x","a"]"#).unwrap();
    assert_eq!(
        s.placement(),
        Placement::Skill {
            skill: "x",
            pointer_for: Some("a")
        }
    );
}

#[test]
fn update_body_defaults_and_errors() {
    let u: TaskUpdate = parse_body(br#"{"state":"running"}"#).unwrap();
    assert_eq!(u, upd("running"));
    let err = parse_body::<TaskUpdate>(br#"{"result":"x"}"#).unwrap_err();
    assert!(matches!(
        err,
        BodyError::MissingField { field: "state", .. }
    ));
    for bad in [
        &br#"{"state":"completed","result":{"a":1}}"#[..],
        br#"{"state":"completed","error":null}"#,
        br#"{"state":1}"#,
    ] {
        assert_eq!(parse_body::<TaskUpdate>(bad).unwrap_err().status(), 422);
    }
}

#[test]
fn placement() {
    assert_eq!(
        sub("x", "a").placement(),
        Placement::Skill {
            skill: "x",
            pointer_for: Some("a")
        }
    );
    assert_eq!(
        sub("x", "").placement(),
        Placement::Skill {
            skill: "x",
            pointer_for: None
        }
    );
    assert_eq!(sub("", "a").placement(), Placement::Agent("a"));
    assert_eq!(sub("", "").placement(), Placement::Any);
}

#[test]
fn task_id_format() {
    let mut counter = 0u8;
    let mut rand = |buf: &mut [u8]| {
        for b in buf {
            *b = counter;
            counter = counter.wrapping_add(0x1f);
        }
    };
    let id = new_task_id(&mut rand);
    assert_eq!(id, "001f3e5d-7c9");
    assert_eq!(
        new_task_id(&mut |b: &mut [u8]| b.fill(0xff)),
        "ffffffff-fff"
    );
    assert_eq!(new_task_id(&mut |b: &mut [u8]| b.fill(0)), "00000000-000");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..1000 {
        let id = new_task_id(&mut |buf: &mut [u8]| {
            for b in buf {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
        });
        assert_eq!(id.len(), TASK_ID_LEN);
        for (i, c) in id.chars().enumerate() {
            if i == 8 {
                assert_eq!(c, '-');
            } else {
                assert!(matches!(c, '0'..='9' | 'a'..='f'), "{id}");
            }
        }
    }
}

#[test]
fn create_get_list() {
    let mut s = store();
    assert!(s.is_empty());
    let t = s.create(sub("x", "a"), "t1".into(), T0).unwrap().clone();
    assert_eq!(
        t,
        Task {
            id: "t1".into(),
            skill: "x".into(),
            target_agent_id: "a".into(),
            source_agent_id: "src".into(),
            assigned_agent_id: String::new(),
            payload: json!({"q": 1}).into(),
            state: "pending".into(),
            result: String::new(),
            error: String::new(),
            created_at: T0,
            updated_at: T0,
            ttl: 300,
            access: Default::default(),
            holder: Charge::Admin(String::new()),
        }
    );
    s.create(sub("", ""), "t0".into(), T0).unwrap();
    assert_eq!(s.get("t1"), Some(&t));
    assert!(s.get("nope").is_none());
    let order: Vec<&str> = s.list().map(|t| t.id.as_str()).collect();
    assert_eq!(order, ["t1", "t0"], "creation order");
    assert_eq!(s.len(), 2);
    s.assert_consistent();
}

#[test]
fn create_refuses_duplicates_and_when_full() {
    let mut s = TaskStore::new(TaskStoreConfig {
        tasks_max: 2,
        ..TaskStoreConfig::default()
    });
    s.create(sub("x", ""), "t1".into(), T0).unwrap();
    assert_eq!(
        s.create(sub("y", ""), "t1".into(), T0).unwrap_err(),
        CreateTaskError::DuplicateId
    );
    assert_eq!(s.get("t1").unwrap().skill, "x", "not overwritten");
    s.create(sub("x", ""), "t2".into(), T0).unwrap();
    let e = s.create(sub("x", ""), "t3".into(), T0).unwrap_err();
    assert!(
        matches!(
            e,
            CreateTaskError::Refused(Refusal::Full { items_max: 2, .. })
        ),
        "{e}"
    );
    // Finished tasks still count until retention removes them.
    s.update("t1", upd("completed"), at(1)).unwrap();
    assert!(s.create(sub("x", ""), "t3".into(), at(1)).is_err());
    let retention = s.config().retention;
    s.expire(
        at(1)
            .saturating_add(retention)
            .saturating_add(Duration::from_secs(1)),
    );
    s.create(sub("x", ""), "t3".into(), at(5000)).unwrap();
    s.assert_consistent();
}

#[test]
fn update_semantics() {
    let mut s = store();
    s.create(sub("x", ""), "t".into(), T0).unwrap();
    let t = s
        .update(
            "t",
            TaskUpdate {
                state: "running".into(),
                result: "partial".into(),
                error: "warn".into(),
            },
            at(1),
        )
        .unwrap();
    assert_eq!(
        (t.state.as_str(), t.result.as_str(), t.error.as_str()),
        ("running", "partial", "warn")
    );
    assert_eq!(t.updated_at, at(1));
    // Empty result / error keep the old values.
    let t = s.update("t", upd("completed"), at(2)).unwrap();
    assert_eq!(
        (t.state.as_str(), t.result.as_str(), t.error.as_str()),
        ("completed", "partial", "warn")
    );
    assert_eq!(t.created_at, T0);
    assert!(s.update("missing", upd("completed"), at(2)).is_none());
    s.assert_consistent();
}

#[test]
fn claim_by_target_and_by_skill() {
    let mut s = store();
    s.create(sub("", "a1"), "target-only".into(), T0).unwrap();
    s.create(sub("search", ""), "skill-only".into(), T0)
        .unwrap();
    s.create(sub("search", "a2"), "both-other".into(), T0)
        .unwrap();
    s.create(sub("chat", ""), "other-skill".into(), T0).unwrap();
    s.create(sub("", ""), "neither".into(), T0).unwrap();
    s.create(sub("", "a1"), "done".into(), T0).unwrap();
    s.update("done", upd("completed"), T0).unwrap();

    let got = s.claim_for("a1", &skills(&["search", "search", ""]), at(5));
    // The reference's rule: a task targeted at a2 but with skill "search" is claimable
    // by any agent listing "search".
    assert_eq!(ids(&got), ["target-only", "skill-only", "both-other"]);
    for t in &got {
        assert_eq!(t.state, "assigned");
        assert_eq!(t.assigned_agent_id, "a1");
        assert_eq!(t.updated_at, at(5));
        assert_eq!(s.get(&t.id), Some(t));
    }
    assert_eq!(s.get("other-skill").unwrap().state, "pending");
    assert_eq!(s.get("neither").unwrap().state, "pending");
    assert_eq!(s.get("done").unwrap().state, "completed");
    s.assert_consistent();

    // Exactly once.
    assert!(s.claim_for("a1", &skills(&["search"]), at(6)).is_empty());
    assert!(s.claim_for("a2", &skills(&["search"]), at(6)).is_empty());
    // Empty skill names never match by skill.
    assert!(s.claim_for("zz", &skills(&[""]), at(6)).is_empty());
    let got = s.claim_for("a3", &skills(&["chat"]), at(7));
    assert_eq!(ids(&got), ["other-skill"]);
    s.assert_consistent();
}

#[test]
fn empty_agent_id_claims_every_untargeted_task() {
    // Reference: `task.target_agent_id == agent_id` holds for "" == "".
    let mut s = store();
    s.create(sub("x", ""), "t1".into(), T0).unwrap();
    s.create(sub("", ""), "t2".into(), T0).unwrap();
    s.create(sub("", "a"), "t3".into(), T0).unwrap();
    let got = s.claim_for("", &[], at(1));
    assert_eq!(ids(&got), ["t1", "t2"]);
    assert_eq!(got[0].assigned_agent_id, "");
    s.assert_consistent();
}

#[test]
fn claim_returns_creation_order_across_indexes() {
    let mut s = store();
    for (i, (skill, target)) in [("x", ""), ("", "a"), ("y", ""), ("x", "b"), ("", "a")]
        .iter()
        .enumerate()
    {
        s.create(sub(skill, target), format!("t{i}"), T0).unwrap();
    }
    let got = s.claim_for("a", &skills(&["y", "x"]), at(1));
    assert_eq!(ids(&got), ["t0", "t1", "t2", "t3", "t4"]);
    s.assert_consistent();
}

#[test]
fn update_back_to_pending_makes_claimable_again() {
    let mut s = store();
    s.create(sub("x", ""), "t".into(), T0).unwrap();
    assert_eq!(s.claim_for("a", &skills(&["x"]), at(1)).len(), 1);
    s.update("t", upd("pending"), at(2)).unwrap();
    assert_eq!(
        s.get("t").unwrap().assigned_agent_id,
        "a",
        "kept until re-claimed"
    );
    s.assert_consistent();
    let got = s.claim_for("b", &skills(&["x"]), at(3));
    assert_eq!(got[0].assigned_agent_id, "b");
    // Any other state takes it out of the pending indexes.
    s.update("t", upd("pending"), at(4)).unwrap();
    s.update("t", upd("weird"), at(5)).unwrap();
    assert!(s.claim_for("b", &skills(&["x"]), at(6)).is_empty());
    s.assert_consistent();
}

#[test]
fn ttl_expiry_is_strict_and_spares_finished_tasks() {
    let mut s = store();
    let mut short = sub("x", "");
    short.ttl = 10;
    s.create(short.clone(), "pending".into(), T0).unwrap();
    s.create(short.clone(), "assigned".into(), T0).unwrap();
    s.create(short.clone(), "custom".into(), T0).unwrap();
    s.create(short.clone(), "completed".into(), T0).unwrap();
    s.create(short.clone(), "failed".into(), T0).unwrap();
    s.create(sub("x", ""), "long".into(), T0).unwrap();
    let mut huge = sub("x", "");
    huge.ttl = u64::MAX;
    s.create(huge, "huge".into(), T0).unwrap();
    s.claim_for("a", &[], T0); // no match
    s.update("assigned", upd("assigned"), at(1)).unwrap();
    s.update("custom", upd("running"), at(1)).unwrap();
    s.update("completed", upd("completed"), at(1)).unwrap();
    let mut f = upd("failed");
    f.error = "boom".into();
    s.update("failed", f, at(1)).unwrap();

    // Exactly ttl seconds old: not expired.
    assert_eq!(s.expire(at(10)), ExpireOutcome::default());
    let just_after = at(10).saturating_add(Duration::from_nanos(1));
    assert_eq!(
        s.expire(just_after),
        ExpireOutcome {
            expired: 3,
            removed: 0
        }
    );
    for id in ["pending", "assigned", "custom"] {
        let t = s.get(id).unwrap();
        assert_eq!(t.state, "failed", "{id}");
        assert_eq!(t.error, "TTL expired");
        assert_eq!(t.updated_at, just_after);
    }
    assert_eq!(s.get("completed").unwrap().state, "completed");
    assert_eq!(s.get("failed").unwrap().error, "boom");
    assert_eq!(s.get("long").unwrap().state, "pending");
    s.assert_consistent();
    // An expired pending task is no longer claimable.
    let got = s.claim_for("a", &skills(&["x"]), at(11));
    assert_eq!(ids(&got), ["long", "huge"]);
    // Assigned tasks still expire.
    assert_eq!(s.expire(at(301)).expired, 1);
    assert_eq!(s.get("long").unwrap().state, "failed");
    assert_eq!(s.get("huge").unwrap().state, "assigned");
    s.assert_consistent();
}

#[test]
fn retention_removes_finished_tasks_after_last_update() {
    let mut s = TaskStore::new(TaskStoreConfig {
        tasks_max: 100,
        retention: Duration::from_secs(60),
        ..TaskStoreConfig::default()
    });
    s.create(sub("x", ""), "done".into(), T0).unwrap();
    s.create(sub("x", ""), "late".into(), T0).unwrap();
    s.create(sub("x", ""), "open".into(), T0).unwrap();
    let mut short = sub("x", "");
    short.ttl = 5;
    s.create(short, "expires".into(), T0).unwrap();
    s.update("done", upd("completed"), at(10)).unwrap();
    s.update("late", upd("failed"), at(10)).unwrap();
    s.update("late", upd("failed"), at(40)).unwrap(); // a later update restarts the clock

    // Expired at 30, then retained for 60 s from there.
    assert_eq!(
        s.expire(at(30)),
        ExpireOutcome {
            expired: 1,
            removed: 0
        }
    );
    // Exactly retention after the last update: kept.
    assert_eq!(s.expire(at(70)), ExpireOutcome::default());
    assert_eq!(
        s.expire(at(71)),
        ExpireOutcome {
            expired: 0,
            removed: 1
        }
    );
    assert!(s.get("done").is_none());
    assert!(s.update("done", upd("pending"), at(71)).is_none());
    assert_eq!(
        s.expire(at(101)),
        ExpireOutcome {
            expired: 0,
            removed: 2
        }
    );
    assert!(s.get("late").is_none());
    assert!(s.get("expires").is_none());
    assert!(
        s.get("open").is_some(),
        "unfinished tasks are never removed"
    );
    s.assert_consistent();
    // Ids are free again after removal.
    s.create(sub("", ""), "done".into(), at(101)).unwrap();
    s.assert_consistent();
}

#[test]
fn expire_early_in_epoch_does_not_underflow() {
    let mut s = store();
    s.create(sub("", ""), "t".into(), UnixTime::EPOCH).unwrap();
    s.update("t", upd("completed"), UnixTime::EPOCH).unwrap();
    assert_eq!(s.expire(UnixTime::from_secs(10)), ExpireOutcome::default());
    let mut z = TaskStore::new(TaskStoreConfig {
        tasks_max: 1,
        retention: Duration::MAX,
        ..TaskStoreConfig::default()
    });
    z.create(sub("", ""), "t".into(), T0).unwrap();
    z.update("t", upd("completed"), T0).unwrap();
    assert_eq!(z.expire(UnixTime(u64::MAX)), ExpireOutcome::default());
}

#[test]
fn randomized_operations_keep_indexes_consistent() {
    let mut s = TaskStore::new(TaskStoreConfig {
        tasks_max: 64,
        retention: Duration::from_secs(20),
        ..TaskStoreConfig::default()
    });
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let agents = ["", "a", "b", "c"];
    let skill_pool = ["", "x", "y"];
    let states = ["pending", "assigned", "completed", "failed", "running"];
    let mut now = T0;
    let mut created = 0u32;
    for _ in 0..5000 {
        now = now.saturating_add(Duration::from_millis(next() % 3000));
        match next() % 5 {
            0 | 1 => {
                let mut req = sub(
                    skill_pool[(next() % 3) as usize],
                    agents[(next() % 4) as usize],
                );
                req.ttl = next() % 60;
                if s.create(req, format!("t{created}"), now).is_ok() {
                    created += 1;
                }
            }
            2 => {
                let agent = agents[(next() % 4) as usize];
                let names = skills(&skill_pool[..(next() % 4) as usize]);
                let before: Vec<Task> = s
                    .list()
                    .filter(|t| t.is_pending() && t.matches(agent, &names))
                    .cloned()
                    .collect();
                let got = s.claim_for(agent, &names, now);
                assert_eq!(
                    ids(&got),
                    ids(&before),
                    "claims exactly the matching pending tasks"
                );
            }
            3 if created > 0 => {
                let id = format!("t{}", next() % u64::from(created));
                s.update(&id, upd(states[(next() % 5) as usize]), now);
            }
            _ => {
                s.expire(now);
                for t in s.list() {
                    if !t.is_finished() {
                        assert!(t.deadline() >= now, "unfinished past deadline");
                    } else {
                        assert!(
                            now.saturating_duration_since(t.updated_at) <= Duration::from_secs(20)
                        );
                    }
                }
            }
        }
        s.assert_consistent();
        assert!(s.len() <= 64);
    }
}

fn sample_task() -> Task {
    Task {
        id: "9f1c03ab-77e".into(),
        skill: "search".into(),
        target_agent_id: "a1".into(),
        source_agent_id: "src".into(),
        assigned_agent_id: String::new(),
        payload: json!({"zeta": 1, "alpha": {"b": 2, "a": [true, null]}}).into(),
        state: "pending".into(),
        result: String::new(),
        error: String::new(),
        created_at: UnixTime(1_700_000_000_250_000_000),
        updated_at: UnixTime(1_700_000_001_000_000_000),
        ttl: 300,
        access: Default::default(),
        holder: Default::default(),
    }
}

#[test]
fn task_json_in_struct_order() {
    let want = concat!(
        r#"{"id":"9f1c03ab-77e","skill":"search","target_agent_id":"a1","source_agent_id":"src","#,
        r#""assigned_agent_id":"","payload":{"alpha":{"a":[true,null],"b":2},"zeta":1},"#,
        r#""state":"pending","result":"","error":"","#,
        r#""created_at":1700000000.25,"updated_at":1700000001.0,"ttl":300}"#
    );
    assert_eq!(serde_json::to_string(&sample_task()).unwrap(), want);
}

#[test]
fn task_json_sorted_matches_value_round_trip() {
    let t = sample_task();
    let want = concat!(
        r#"{"assigned_agent_id":"","created_at":1700000000.25,"error":"","id":"9f1c03ab-77e","#,
        r#""payload":{"alpha":{"a":[true,null],"b":2},"zeta":1},"result":"","skill":"search","#,
        r#""source_agent_id":"src","state":"pending","target_agent_id":"a1","ttl":300,"#,
        r#""updated_at":1700000001.0}"#
    );
    assert_eq!(serde_json::to_string(&t.sorted_keys()).unwrap(), want);
    let via_value = serde_json::to_string(&serde_json::to_value(&t).unwrap()).unwrap();
    assert_eq!(via_value, want);
}

#[test]
fn created_at_matches_system_time_float() {
    let nanos = 1_712_345_678_987_654_321u64;
    let want = Duration::from_nanos(nanos).as_secs_f64();
    let mut t = sample_task();
    t.created_at = UnixTime(nanos);
    let v = serde_json::to_value(&t).unwrap();
    assert_eq!(v["created_at"].as_f64(), Some(want));
}

#[test]
fn client_quotas_and_byte_budget() {
    let mut s = TaskStore::new(TaskStoreConfig {
        client_tasks_max: 3,
        client_bytes_max: 4 * TASK_OVERHEAD_BYTES,
        // Each task here is its overhead plus 36 bytes (16 of them its holder's address,
        // kept twice): six fit, not seven.
        bytes_max: 6 * TASK_OVERHEAD_BYTES + 300,
        // This test is about the quotas and the whole store: no anonymous share.
        anonymous_share_percent: 100,
        ..TaskStoreConfig::default()
    });
    for i in 0..3 {
        s.create_for(sub("x", ""), format!("a{i}"), &anon("10.0.0.1"), None, T0)
            .unwrap();
    }
    let e = s
        .create_for(sub("x", ""), "a3".into(), &anon("10.0.0.1"), None, T0)
        .unwrap_err();
    assert!(
        matches!(
            e,
            CreateTaskError::Refused(Refusal::ClientQuota { items: 3, .. })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("--task-client-tasks-max"));
    // Another client is not affected by the first one's quota.
    s.create_for(sub("x", ""), "b0".into(), &anon("10.0.0.2"), None, T0)
        .unwrap();
    // A big payload hits the client's byte quota before the store's.
    let mut big = sub("x", "");
    big.payload = serde_json::Value::String("z".repeat(3 * TASK_OVERHEAD_BYTES)).into();
    let e = s
        .create_for(big.clone(), "b1".into(), &anon("10.0.0.2"), None, T0)
        .unwrap_err();
    assert!(
        matches!(
            e,
            CreateTaskError::Refused(Refusal::ClientQuota { items: 1, .. })
        ),
        "{e}"
    );
    // The store's byte budget refuses everyone once reached.
    s.create_for(sub("x", ""), "c0".into(), &anon("10.0.0.3"), None, T0)
        .unwrap();
    s.create_for(sub("x", ""), "d0".into(), &anon("10.0.0.4"), None, T0)
        .unwrap();
    assert_eq!(s.bytes(), s.list().map(task_bytes).sum::<usize>());
    let e = s
        .create_for(sub("x", ""), "e0".into(), &anon("10.0.0.5"), None, T0)
        .unwrap_err();
    assert!(
        matches!(e, CreateTaskError::Refused(Refusal::Full { .. })),
        "{e}"
    );
    // Results are charged to the task's client; removal gives the room back.
    let done = TaskUpdate {
        state: STATE_COMPLETED.into(),
        result: "r".repeat(100),
        ..TaskUpdate::default()
    };
    let before = s.client_usage(&anon("10.0.0.1")).1;
    s.update("a0", done, at(1)).unwrap();
    assert_eq!(s.client_usage(&anon("10.0.0.1")).1, before + 100 + 9 - 7);
    let retention = s.config().retention;
    s.expire(at(2).saturating_add(retention));
    assert_eq!(s.client_usage(&anon("10.0.0.1")).0, 2);
    assert_eq!(s.bytes(), s.list().map(task_bytes).sum::<usize>());
    s.create_for(sub("x", ""), "a3".into(), &anon("10.0.0.1"), None, at(1))
        .unwrap();
    s.assert_consistent();
}

fn anon(addr: &str) -> Charge {
    Charge::Anonymous(addr.into())
}

/// Issue 20, finding 3, sans-IO: many addresses, each within its quota, fill only the
/// anonymous share of the store; authenticated holders still create tasks, results of
/// anonymous tasks grow only within the share, and a restart charges loaded tasks to
/// the same holders.
#[test]
fn anonymous_share_of_the_task_store() {
    let cfg = TaskStoreConfig {
        tasks_max: 40,
        client_tasks_max: 4,
        bytes_max: 1 << 20,
        anonymous_share_percent: 50,
        ..TaskStoreConfig::default()
    };
    let mut s = TaskStore::new(cfg);
    let mut n = 0;
    let mut last = None;
    for ip in 0..10 {
        for _ in 0..5 {
            match s.create_for(
                sub("x", ""),
                format!("t{n}"),
                &anon(&format!("10.0.0.{ip}")),
                None,
                T0,
            ) {
                Ok(_) => n += 1,
                Err(e) => last = Some(e),
            }
        }
    }
    // 5 addresses × 4 tasks = the share (20 of 40 tasks).
    assert_eq!(n, 20);
    assert_eq!(s.anonymous_usage().0, 20);
    let e = last.unwrap();
    assert!(
        matches!(e, CreateTaskError::Refused(Refusal::AnonymousShare { .. })),
        "{e}"
    );
    assert!(
        e.to_string().contains("--anonymous-share-percent 50"),
        "{e}"
    );
    // Authenticated clients get the rest.
    let agent = Charge::Agent("agent-x".into());
    for i in 0..4 {
        s.create_for(sub("x", ""), format!("g{i}"), &agent, None, T0)
            .unwrap();
    }
    let admin = Charge::Admin("ops".into());
    for i in 0..16 {
        s.create_for(sub("x", ""), format!("o{i}"), &admin, None, T0)
            .unwrap();
    }
    let e = s
        .create_for(sub("x", ""), "o-last".into(), &admin, None, T0)
        .unwrap_err();
    assert!(
        matches!(e, CreateTaskError::Refused(Refusal::Full { .. })),
        "{e}"
    );
    s.assert_consistent();

    // A result on an anonymous task grows the share: refused past it; the same on an
    // authenticated task is within the whole budget.
    let share_left = cfg.budget().anonymous_bytes_max() - s.anonymous_usage().1;
    let big = TaskUpdate {
        state: "running".into(),
        result: "r".repeat(share_left + 1),
        ..TaskUpdate::default()
    };
    let creator = Principal::anonymous("10.0.0.0").holder();
    let r = s
        .try_update("t0", big.clone(), &creator, at(1))
        .unwrap_err();
    assert_eq!(r.reason(), "anonymous_share");
    assert_eq!(
        s.get("t0").unwrap().result,
        "",
        "a refused update changes nothing"
    );
    let agent_x = Principal::credential("agent-x", "agent", "10.0.0.7").holder();
    assert!(s
        .try_update("g0", big.clone(), &agent_x, at(1))
        .unwrap()
        .is_some());
    // An authenticated agent's report on an anonymous task is charged to the agent
    // (issue 20, review): the full share does not refuse it.
    let before = s.anonymous_usage();
    let small = TaskUpdate {
        result: "done".repeat(10),
        ..upd("completed")
    };
    assert!(s
        .try_update("t1", small, &agent_x, at(1))
        .unwrap()
        .is_some());
    assert_eq!(s.anonymous_usage().1, before.1 - "pending".len());
    assert!(s
        .try_update("nope", upd("done"), &agent_x, at(1))
        .unwrap()
        .is_none());
    s.assert_consistent();

    // A restart: the loaded tasks are charged to the same holders.
    let mut again = TaskStore::new(cfg);
    for t in s.list() {
        again.insert_loaded(t.clone());
    }
    assert_eq!(again.anonymous_usage(), s.anonymous_usage());
    assert_eq!(again.client_usage(&agent), s.client_usage(&agent));
    assert!(again
        .create_for(sub("x", ""), "late".into(), &anon("10.0.0.99"), None, T0)
        .is_err());
    again.assert_consistent();
}

#[test]
fn one_claim_is_bounded_in_bytes() {
    let mut s = TaskStore::new(TaskStoreConfig {
        claim_bytes_max: 2 * TASK_OVERHEAD_BYTES + 100,
        ..TaskStoreConfig::default()
    });
    for i in 0..5 {
        s.create(sub("x", ""), format!("t{i}"), T0).unwrap();
    }
    let ids = |v: Vec<Task>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(ids(s.claim_for("a", &skills(&["x"]), at(1))), ["t0", "t1"]);
    assert_eq!(ids(s.claim_for("a", &skills(&["x"]), at(2))), ["t2", "t3"]);
    assert_eq!(ids(s.claim_for("a", &skills(&["x"]), at(3))), ["t4"]);
    s.assert_consistent();
}

#[test]
fn durable_bookkeeping_saving_load_replace_remove_overdue() {
    let mut s = store();
    s.create(sub("web", ""), "t-saving".into(), at(0)).unwrap();
    s.set_saving("t-saving", true);
    // Not claimable while its creation is being saved, by skill or by id.
    assert!(s.claim_for("w", &skills(&["web"]), at(1)).is_empty());
    assert!(s.claim_id("t-saving", "w", at(1)).is_none());
    s.set_saving("t-saving", false);
    let claimed = s.claim_for("w", &skills(&["web"]), at(2));
    assert_eq!(ids(&claimed), ["t-saving"]);
    // Undo the claim: back to pending, claimable again.
    let mut back = claimed[0].clone();
    back.state = STATE_PENDING.into();
    back.assigned_agent_id.clear();
    assert!(s.replace(back));
    assert_eq!(
        ids(&s.claim_for("w2", &skills(&["web"]), at(3))),
        ["t-saving"]
    );
    // A creation the store refused is removed completely.
    s.create(sub("", "ag"), "t-gone".into(), at(0)).unwrap();
    s.set_saving("t-gone", true);
    s.remove("t-gone");
    assert!(s.get("t-gone").is_none());
    assert!(s.claim_for("ag", &[], at(4)).is_empty());
    // Loaded tasks are indexed like created ones (an assigned one stays assigned).
    let mut loaded = s.get("t-saving").unwrap().clone();
    loaded.id = "t-loaded".into();
    loaded.state = STATE_PENDING.into();
    loaded.skill = "db".into();
    s.insert_loaded(loaded);
    assert_eq!(
        ids(&s.claim_for("w3", &skills(&["db"]), at(5))),
        ["t-loaded"]
    );
    // Overdue ids are the ones expire() fails.
    let deadline = DEFAULT_TTL_SECS + 1;
    let mut over = s.overdue_ids(at(deadline));
    over.sort();
    assert_eq!(over, ["t-loaded", "t-saving"]);
    assert_eq!(s.expire(at(deadline)).expired, 2);
    assert!(s.overdue_ids(at(deadline + 1)).is_empty());
    s.assert_consistent();
}

/// Issue 20: who may update and read a task, from its creator and claimer, on
/// simulated time.
#[test]
fn access_follows_creator_and_claimer() {
    use crate::limits::Principal;
    let anon = |a: &str| Principal::anonymous(a);
    let key = |p: &str, a: &str| Principal::credential(p, "agent", a);
    let admin = Principal::credential("ops", "admin", "10.9.9.9");
    let mut s = store();
    // Submitted without credentials from 10.0.0.1, for agent `alpha`.
    let creator = anon("10.0.0.1");
    s.create_for(
        sub("", "alpha"),
        "t1".into(),
        &Charge::of(&creator),
        Some(creator.holder()),
        T0,
    )
    .unwrap();
    let t = s.get("t1").unwrap().clone();
    assert_eq!(t.access.created_by, Some(creator.holder()));
    // Pending: the creator (or an admin) may update it, nobody else.
    assert!(t.updatable_by(&creator).is_ok());
    assert!(t.updatable_by(&admin).is_ok());
    let why = t.updatable_by(&anon("10.0.0.2")).unwrap_err();
    assert!(why.contains("not claimed yet"), "{why}");
    assert!(t.updatable_by(&key("x", "10.0.0.2")).is_err());
    // Reading: the creator's address, a credential for the target, an admin.
    assert!(t.readable_by(&creator));
    assert!(t.readable_by(&key("alpha-sidecar", "10.0.0.7")));
    assert!(t.readable_by(&admin));
    assert!(!t.readable_by(&anon("10.0.0.2")));
    assert!(!t.readable_by(&key("beta-sidecar", "10.0.0.2")));

    // Claimed by alpha's heartbeat with its key, from 10.0.0.3.
    let claimer = key("alpha-sidecar", "10.0.0.3");
    let got = s.claim_for_agent_by("alpha", &[], || claimer.holder(), at(1));
    assert_eq!(ids(&got), ["t1"]);
    assert_eq!(got[0].access.claimed_by, Some(claimer.holder()));
    let t = s.get("t1").unwrap().clone();
    // Assigned: the claimer, a credential for the assignee, or an admin; not the
    // creator, not the claimer's address without the key.
    assert!(t.updatable_by(&claimer).is_ok());
    assert!(t.updatable_by(&key("alpha", "10.0.0.8")).is_ok());
    assert!(t.updatable_by(&admin).is_ok());
    let why = t.updatable_by(&creator).unwrap_err();
    assert!(why.contains("assigned to agent `alpha`"), "{why}");
    assert!(t.updatable_by(&anon("10.0.0.3")).is_err());
    // The creator still reads the result; so does the claimer's address.
    assert!(t.readable_by(&creator));
    assert!(t.readable_by(&anon("10.0.0.3")));
    assert!(!t.readable_by(&anon("10.0.0.4")));
    s.update("t1", upd(STATE_COMPLETED), at(2)).unwrap();
    let w = s.get("t1").unwrap().withheld();
    assert_eq!((w.payload.get(), w.result.as_str()), ("null", ""));
    assert_eq!(w.state, STATE_COMPLETED);

    // A pointer claim records its claimer too; a task made without a principal (one
    // loaded from an older data directory) stays open.
    s.create_for(
        sub("k", "beta"),
        "t2".into(),
        &Charge::of(&creator),
        Some(creator.holder()),
        T0,
    )
    .unwrap();
    s.set_saving("t2", false);
    let by = anon("10.0.0.5");
    let t = s.claim_id_by("t2", "beta", &by.holder(), at(3)).unwrap();
    assert_eq!(t.access.claimed_by, Some(by.holder()));
    s.create(sub("", "gamma"), "t3".into(), T0).unwrap();
    let t = s.get("t3").unwrap();
    assert!(t.updatable_by(&anon("10.0.0.6")).is_ok());
    assert!(t.readable_by(&anon("10.0.0.6")));
    s.assert_consistent();
}

/// `hub::hints`: "none left" is said only while nothing a `ClaimFor` could claim is
/// pending: no task of the asked skills, no task aimed at an agent by its skill (claimed
/// by target whatever the skills); a task aimed at an agent without a skill (which lives
/// at that agent's own shard) does not stop it.
#[test]
fn none_left_only_while_no_claimable_task_is_pending() {
    let mut s = store();
    let none = |s: &mut TaskStore, k: &[&str]| s.none_left(&skills(k), T0).is_some();
    assert!(none(&mut s, &["x"]));
    s.create(sub("", "agent-a"), "t1".into(), T0).unwrap();
    assert!(
        none(&mut s, &["x"]),
        "a targeted task without a skill lives at its agent's shard"
    );
    assert!(s.take_announcement().is_none());
    s.create(sub("x", ""), "t2".into(), T0).unwrap();
    assert!(!none(&mut s, &["x"]) && none(&mut s, &["y"]));
    // The task of `x` was said to be none for earlier: told.
    let told = s.take_announcement().unwrap();
    assert_eq!((told.skills, told.all), (skills(&["x"]), false));
    s.claim_for_agent("b", &skills(&["x"]), T0);
    assert!(none(&mut s, &["x"]));
    // A task aimed at an agent by its skill `z`: nothing is said for any skill, and every
    // hint said before goes.
    s.create(sub("z", "agent-a"), "t3".into(), T0).unwrap();
    let told = s.take_announcement().unwrap();
    assert!(told.all);
    assert!(!none(&mut s, &["x"]) && !none(&mut s, &["y"]));
    s.claim_for_agent("agent-a", &skills(&[]), T0);
    assert!(none(&mut s, &["x"]));
}
