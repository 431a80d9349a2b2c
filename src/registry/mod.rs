//! Agent registry: the agents one shard owns, their health, and skill routing.
//!
//! Sans-IO: [`AgentStore`] is a plain struct; callers pass `now` and get records back. The
//! shard that owns an agent is chosen by a hash of its `agent_id`, so every operation on
//! one agent (register, heartbeat, get, delete) touches exactly one store. Operations over
//! all agents (list, route, topology) are gathered from every shard and merged by the
//! server; each store returns its part in a documented order so the merge is deterministic.
//!
//! Wire shapes (from the reference `registry/src/registry.rs`):
//! - list (`GET /api/registry/agents`) serializes records in struct field order
//!   ([`agent_list_body`]);
//! - get one and route (`GET /api/registry/agents/{id}`, `GET /api/registry/route`) go
//!   through `serde_json::to_value` in the reference, whose map is a `BTreeMap`, so their
//!   keys come out sorted ([`agent_body`]).

mod agents;
pub mod api;
pub mod bindings;
mod health;
pub mod mirror;
pub mod ops;
pub mod query;
pub mod records;
mod topology;

pub use api::Config;
pub use topology::{topology, topology_body, MeshEdge, Topology, TopologyNode};

pub use agents::{
    agent_bytes, default_port, AgentBudgetConfig, AgentCapabilities, AgentInfo, AgentRecord,
    AgentRefusal, AgentStore, AgentStoreConfig, AgentsFull, BindingChange, DeleteStart, Heartbeat,
    MirrorNotes, MirrorWrite, RouteEntry, SortedAgent, AGENT_OVERHEAD_BYTES, AGENT_STORE_NAMES,
    HEARTBEAT_WRITE_INTERVAL, NOTED_AGENTS_MAX,
};
pub use health::{Health, HEALTH_CHECK_INTERVAL, OFFLINE_AFTER, STALE_AFTER};

use std::borrow::Borrow;

use serde::Serialize;

use wire::json::json_vec;
#[cfg(test)]
use wire::json::{parse_body, BodyError};

/// Body of a successful register, delete or task update: `{"status":"ok"}`.
pub const OK_BODY: &str = r#"{"status":"ok"}"#;

/// Body for an unknown agent or task id (sent with status 200, as the reference does).
pub const NOT_FOUND_BODY: &str = r#"{"error":"not found"}"#;

/// `GET /api/registry/agents`: a JSON array of records in struct field order.
///
/// Pass the records merged from all shards; the order is kept (the reference's order is a
/// `DashMap` iteration, i.e. arbitrary; stores list by `agent_id`, so a k-way merge by
/// `agent_id` gives a stable listing).
pub fn agent_list_body<R: Borrow<AgentRecord>>(agents: &[R]) -> Vec<u8> {
    struct List<'a, R>(&'a [R]);
    impl<R: Borrow<AgentRecord>> Serialize for List<'_, R> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.0.iter().map(Borrow::borrow))
        }
    }
    json_vec(&List(agents))
}

/// `GET /api/registry/agents/{id}` and a successful `GET /api/registry/route`: one record
/// with its keys sorted (see the module doc).
pub fn agent_body(agent: &AgentRecord) -> Vec<u8> {
    json_vec(&agent.sorted_keys())
}

/// `GET /api/registry/route?skill=X` when no active agent has the skill:
/// `{"error":"no agent found with skill","skill":"X"}`.
pub fn route_miss_body(skill: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Miss<'a> {
        error: &'static str,
        skill: &'a str,
    }
    json_vec(&Miss {
        error: "no agent found with skill",
        skill,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_are_400() {
        for body in [
            &b""[..],
            b"{",
            b"not json",
            b"{\"agent_id\":\"a\",}",
            b"{\"agent_id\":\"a\",\"hostname\":\"h\"} x",
        ] {
            let err = parse_body::<AgentInfo>(body).unwrap_err();
            assert!(matches!(err, BodyError::Syntax { .. }), "{err:?}");
            assert_eq!(err.status(), 400);
            assert!(err
                .response_text()
                .starts_with("Failed to parse the request body as JSON: "));
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let mut body = br#"{"agent_id":"a","hostname":"h","x":"#.to_vec();
        body.extend(std::iter::repeat_n(b'[', 100_000));
        let err = parse_body::<AgentInfo>(&body).unwrap_err();
        // Issue 20: the depth is checked first (422), malformed or not.
        assert_eq!(
            err,
            BodyError::TooDeep(wire::json::TooDeep {
                depth: 100_001,
                limit: wire::json::JSON_DEPTH_MAX
            })
        );
        assert_eq!(err.status(), 422, "{err:?}");
    }

    #[test]
    fn missing_field_is_named() {
        let err = parse_body::<AgentInfo>(br#"{"hostname":"h"}"#).unwrap_err();
        assert_eq!(
            err,
            BodyError::MissingField {
                field: "agent_id",
                message: "missing field `agent_id` at line 1 column 16".into()
            }
        );
        assert_eq!(err.status(), 422);
        assert_eq!(
            err.response_text(),
            "Failed to deserialize the JSON body into the target type: \
             missing field `agent_id` at line 1 column 16"
        );
        let err = parse_body::<AgentInfo>(br#"{"agent_id":"a"}"#).unwrap_err();
        assert!(matches!(
            err,
            BodyError::MissingField {
                field: "hostname",
                ..
            }
        ));
    }

    #[test]
    fn wrong_shapes_are_422() {
        for body in [
            &br#"[]"#[..],
            br#""x""#,
            br#"null"#,
            br#"{"agent_id":1,"hostname":"h"}"#,
            br#"{"agent_id":null,"hostname":"h"}"#,
            br#"{"agent_id":"a","hostname":"h","port":"80"}"#,
            br#"{"agent_id":"a","hostname":"h","port":65536}"#,
            br#"{"agent_id":"a","hostname":"h","port":-1}"#,
            br#"{"agent_id":"a","hostname":"h","capabilities":{"skills":"x"}}"#,
            br#"{"agent_id":"a","hostname":"h","capabilities":null}"#,
            br#"{"agent_id":"a","agent_id":"b","hostname":"h"}"#,
        ] {
            let err = parse_body::<AgentInfo>(body).unwrap_err();
            assert!(
                matches!(err, BodyError::Data { .. }),
                "{}: {err:?}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(err.status(), 422);
        }
    }

    #[test]
    fn route_miss_shape() {
        assert_eq!(
            route_miss_body("we\"b"),
            br#"{"error":"no agent found with skill","skill":"we\"b"}"#
        );
    }
}
