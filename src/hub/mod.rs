//! Hub: the task queue one shard holds, and the mesh topology.
//!
//! # Placement
//!
//! Every task lives on exactly one shard, and a claim is a local state change there, so
//! a task is assigned at most once however many shards a heartbeat reaches.
//! [`TaskSubmission::placement`] says where: the shard of its `skill` when set (leaving
//! a pointer on its target's shard when it also names a target, since the reference
//! matches `target == agent || skill ∈ skill_names`), else the shard of its target, else
//! any. The server draws ids with [`new_task_id`] until one hashes to that shard, so
//! `GET`/`POST /api/hub/tasks/{id}` find the shard from the id alone. A heartbeat asks
//! the agent's shard (targeted tasks and pointers) and the shards of its skills; see
//! docs/ARCHITECTURE.md, "State placement".
//!
//! # Wire shapes
//!
//! From the reference `registry/src/hub.rs`: the list route serializes tasks in struct
//! order ([`task_list_body`]); get-one and the heartbeat response go through
//! `serde_json::to_value`/`json!`, so their keys are sorted ([`task_body`],
//! [`heartbeat_body`]). `payload` is a `serde_json::Value` and so always has sorted keys.

pub mod api;
pub use api::Config;
pub mod cluster;
pub mod hints;
pub mod ops;
pub mod payload;
mod pointers;
pub mod query;
pub mod records;
mod tasks;

pub use ops::Store;
pub use payload::Payload;
pub use pointers::TaskPointers;
pub use tasks::{
    new_task_id, task_bytes, CreateTaskError, ExpireOutcome, Placement, SortedTask, Task,
    TaskAccess, TaskId, TaskStore, TaskStoreConfig, TaskSubmission, TaskUpdate, DEFAULT_RETENTION,
    DEFAULT_TTL_SECS, EXPIRE_INTERVAL, STATE_ASSIGNED, STATE_COMPLETED, STATE_FAILED,
    STATE_PENDING, TASK_ID_LEN, TASK_OVERHEAD_BYTES, TASK_STORE_NAMES, TTL_EXPIRED_ERROR,
};

pub use crate::registry::{NOT_FOUND_BODY, OK_BODY};

use std::borrow::Borrow;

use serde::{Serialize, Serializer};

use wire::json::json_vec;

use crate::limits::Principal;

/// `POST /api/hub/tasks`: `{"task_id":"…"}`.
pub fn task_created_body(task_id: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Created<'a> {
        task_id: &'a str,
    }
    json_vec(&Created { task_id })
}

/// `GET /api/hub/tasks/all`: a JSON array of tasks in struct field order, in the order
/// given (stores list in creation order; merging shards by `created_at` keeps that).
pub fn task_list_body<T: Borrow<Task>>(tasks: &[T]) -> Vec<u8> {
    struct List<'a, T>(&'a [T]);
    impl<T: Borrow<Task>> Serialize for List<'_, T> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.0.iter().map(Borrow::borrow))
        }
    }
    json_vec(&List(tasks))
}

/// `GET /api/hub/tasks/{id}`: one task with sorted keys.
pub fn task_body(task: &Task) -> Vec<u8> {
    json_vec(&task.sorted_keys())
}

/// [`heartbeat_body`] of no tasks: most heartbeats' answer, without serializing.
pub const HEARTBEAT_IDLE_BODY: &[u8] = br#"{"pending_tasks":[],"status":"ok"}"#;

/// `POST /api/hub/heartbeat`: `{"pending_tasks":[…],"status":"ok"}`, the tasks with sorted
/// keys (the reference builds it with `json!`, whose map sorts `pending_tasks` first).
pub fn heartbeat_body<T: Borrow<Task>>(pending_tasks: &[T]) -> Vec<u8> {
    struct Sorted<'a, T>(&'a [T]);
    impl<T: Borrow<Task>> Serialize for Sorted<'_, T> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.0.iter().map(|t| t.borrow().sorted_keys()))
        }
    }
    #[derive(Serialize)]
    #[serde(bound(serialize = "T: Borrow<Task>"))]
    struct Response<'a, T: Borrow<Task>> {
        pending_tasks: Sorted<'a, T>,
        status: &'static str,
    }
    json_vec(&Response {
        pending_tasks: Sorted(pending_tasks),
        status: "ok",
    })
}

/// A task as `reader` may see it: whole if [`Task::readable_by`], else with `payload`,
/// `result` and `error` withheld and `"withheld":true` added (issue 20). `sorted`: keys
/// in sorted order (get-one), else declaration order (lists).
pub fn for_reader(t: &Task, reader: &Principal, sorted: bool) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Withheld<T> {
        #[serde(flatten)]
        task: T,
        withheld: bool,
    }
    if t.readable_by(reader) {
        return if sorted {
            task_body(t)
        } else {
            crate::shard::paging::item_json(t)
        };
    }
    let w = t.withheld();
    if sorted {
        wire::json::json_vec(&Withheld {
            task: w.sorted_keys(),
            withheld: true,
        })
    } else {
        wire::json::json_vec(&Withheld {
            task: &w,
            withheld: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::UnixTime;
    use serde_json::json;

    fn task(id: &str) -> Task {
        Task {
            id: id.into(),
            skill: "s".into(),
            target_agent_id: String::new(),
            source_agent_id: String::new(),
            assigned_agent_id: "a".into(),
            payload: json!({"k": "v"}).into(),
            state: "assigned".into(),
            result: String::new(),
            error: String::new(),
            created_at: UnixTime(1_500_000_000_500_000_000),
            updated_at: UnixTime(1_500_000_000_500_000_000),
            ttl: 60,
            access: Default::default(),
            holder: Default::default(),
        }
    }

    #[test]
    fn constant_bodies() {
        assert_eq!(OK_BODY, r#"{"status":"ok"}"#);
        assert_eq!(NOT_FOUND_BODY, r#"{"error":"not found"}"#);
        assert_eq!(task_created_body("abc"), br#"{"task_id":"abc"}"#);
    }

    #[test]
    fn heartbeat_body_matches_reference_json_macro() {
        let tasks = vec![task("t1"), task("t2")];
        let reference = serde_json::to_string(&json!({
            "status": "ok",
            "pending_tasks": tasks,
        }))
        .unwrap();
        assert_eq!(
            String::from_utf8(heartbeat_body(&tasks)).unwrap(),
            reference
        );
        let empty: [Task; 0] = [];
        assert_eq!(
            heartbeat_body(&empty),
            br#"{"pending_tasks":[],"status":"ok"}"#
        );
        assert_eq!(heartbeat_body(&empty), HEARTBEAT_IDLE_BODY);
        let want_one = concat!(
            r#"{"pending_tasks":[{"assigned_agent_id":"a","created_at":1500000000.5,"error":"","#,
            r#""id":"t1","payload":{"k":"v"},"result":"","skill":"s","source_agent_id":"","#,
            r#""state":"assigned","target_agent_id":"","ttl":60,"updated_at":1500000000.5}],"#,
            r#""status":"ok"}"#
        );
        let one = task("t1");
        assert_eq!(
            String::from_utf8(heartbeat_body(&[&one])).unwrap(),
            want_one
        );
    }

    #[test]
    fn list_and_get_bodies() {
        let tasks = vec![task("t1"), task("t2")];
        let reference = serde_json::to_string(&tasks).unwrap();
        assert_eq!(
            String::from_utf8(task_list_body(&tasks)).unwrap(),
            reference
        );
        assert!(reference.starts_with(r#"[{"id":"t1","skill":"s","#));
        let reference = serde_json::to_string(&serde_json::to_value(&tasks[0]).unwrap()).unwrap();
        assert_eq!(String::from_utf8(task_body(&tasks[0])).unwrap(), reference);
        assert!(reference.starts_with(r#"{"assigned_agent_id":"a","created_at":"#));
    }
}
