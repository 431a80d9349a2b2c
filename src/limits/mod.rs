//! Limits on what a client may store: the size of every stored field, the `ttl` range,
//! and (see [`StoreLimits`]) the memory budget of a store and each client's share of it.
//! Sans-IO: validators take a parsed body and return the refusal to send.
//!
//! Refusals: a field or body over its size limit is 413 (too big), a value outside its
//! range (`ttl` above `--task-ttl-max`) or a body of the wrong shape is 422; each
//! `{"error": …}` names the field, its size and the flag that sets the limit. An id or
//! name a client chooses that holds a control character is 422 ([`check_printable`]).

mod charge;
mod ledger;
pub use charge::Charge;
pub use ledger::{share, Budget, ClientLedger, Line, Names, Refusal};

use crate::http::Response;
use crate::hub::{TaskSubmission, TaskUpdate};
use crate::registry::{AgentInfo, Heartbeat};

/// Per-field and per-store limits (flags in `config.rs`; defaults below).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreLimits {
    /// Bytes of one agent string field (`agent_id`, `hostname`, `ip`, `status`, `mode`,
    /// `sidecar_peer_id`, each skill / MCP server name) and of a task's `skill`,
    /// `target_agent_id`, `source_agent_id`, `state`. Longer: 413.
    pub agent_field_bytes_max: usize,
    /// Entries of one agent list (`capabilities.skills`, `capabilities.mcp_servers`,
    /// `skill_names`). More: 413. With the field limit this bounds one agent record.
    pub agent_list_items_max: usize,
    /// Bytes of a task's `payload` as JSON text. Larger: 413.
    pub task_payload_bytes_max: usize,
    /// Bytes of a task update's `result` and of its `error`. Larger: 413.
    pub task_result_bytes_max: usize,
    /// Largest `ttl` in seconds (a task nobody claims lives that long). Above: 422.
    pub task_ttl_max: u64,
    /// Bytes of tasks one shard holds (estimated: fields, payload, result, plus a fixed
    /// overhead per task for the record and its index entries). Full: 503 for everyone
    /// until tasks finish and age out; see `task_client_bytes_max` for why one client
    /// cannot get it there alone.
    pub task_store_bytes_max: usize,
    /// Bytes of tasks one client (see [`Charge`]: the identity of a valid
    /// credential, else the source address) may hold on one shard. Over: 429 for that
    /// client only. Admins have no quota.
    pub task_client_bytes_max: usize,
    /// Tasks one client may hold on one shard (counts tiny tasks, which the bytes do
    /// not catch early). Over: 429 for that client only.
    pub task_client_tasks_max: usize,
    /// Most items one page of a list route returns (`limit` is clamped to it), and the
    /// most an unpaged call returns before it answers the first page with
    /// `x-next-cursor`.
    pub list_page_items_max: usize,
    /// Bytes of one list response body; a page stops early (with `x-next-cursor`) rather
    /// than queue more for one HTTP response.
    pub list_response_bytes_max: usize,
    /// The agent store's byte budget and per-client quotas (`registry::agents::budget`).
    pub agent_budget: crate::registry::AgentBudgetConfig,
    /// Pairing's guessing guard (see `pairing::guard`).
    pub pair_guard: crate::pairing::guard::GuardLimits,
    /// Percent of each store's budget (tasks, agents, the durable store) that all
    /// anonymous clients (no valid credential, see [`Charge`]) may hold together;
    /// the rest is kept for authenticated agents and operators. Over: 503 for anonymous
    /// requests, with a reason that says so.
    pub anonymous_share_percent: u8,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            agent_field_bytes_max: 256,
            agent_list_items_max: 256,
            task_payload_bytes_max: 64 * 1024,
            task_result_bytes_max: 64 * 1024,
            task_ttl_max: 7 * 24 * 3600,
            task_store_bytes_max: 256 * 1024 * 1024,
            task_client_bytes_max: 16 * 1024 * 1024,
            task_client_tasks_max: 4096,
            list_page_items_max: 1000,
            list_response_bytes_max: 4 * 1024 * 1024,
            agent_budget: crate::registry::AgentBudgetConfig::default(),
            pair_guard: crate::pairing::guard::GuardLimits::default(),
            anonymous_share_percent: 50,
        }
    }
}

fn too_big(field: &str, len: usize, max: usize, flag: &str) -> Response {
    Response::error(
        413,
        format!("field `{field}` is {len} bytes; the limit is {max} ({flag})"),
    )
}

fn too_many(field: &str, len: usize, max: usize) -> Response {
    Response::error(
        413,
        format!("field `{field}` has {len} entries; the limit is {max} (--agent-list-items-max)"),
    )
}

impl StoreLimits {
    fn field(&self, name: &str, v: &str) -> Result<(), Response> {
        if v.len() > self.agent_field_bytes_max {
            return Err(too_big(
                name,
                v.len(),
                self.agent_field_bytes_max,
                "--agent-field-bytes-max",
            ));
        }
        Ok(())
    }

    fn list(&self, name: &str, v: &[String]) -> Result<(), Response> {
        if v.len() > self.agent_list_items_max {
            return Err(too_many(name, v.len(), self.agent_list_items_max));
        }
        v.iter().try_for_each(|s| self.field(name, s))
    }

    /// An id or name: a field ([`Self::field`]) that must be printable
    /// ([`check_printable`]).
    fn id(&self, name: &str, v: &str) -> Result<(), Response> {
        self.field(name, v)?;
        check_printable(name, v)
    }

    /// A list of names: each an [`Self::id`].
    fn id_list(&self, name: &str, v: &[String]) -> Result<(), Response> {
        self.list(name, v)?;
        v.iter().try_for_each(|s| check_printable(name, s))
    }

    /// `POST /api/registry/agents`.
    pub fn check_agent(&self, a: &AgentInfo) -> Result<(), Response> {
        self.id("agent_id", &a.agent_id)?;
        self.field("hostname", &a.hostname)?;
        self.field("ip", &a.ip)?;
        self.id("sidecar_peer_id", &a.sidecar_peer_id)?;
        self.field("status", &a.status)?;
        self.field("mode", &a.mode)?;
        self.field("capabilities.mode", &a.capabilities.mode)?;
        self.id_list("capabilities.skills", &a.capabilities.skills)?;
        self.id_list("capabilities.mcp_servers", &a.capabilities.mcp_servers)
    }

    /// `POST /api/hub/heartbeat`.
    pub fn check_heartbeat(&self, h: &Heartbeat) -> Result<(), Response> {
        self.id("agent_id", &h.agent_id)?;
        self.field("hostname", &h.hostname)?;
        self.field("ip", &h.ip)?;
        self.id("sidecar_peer_id", &h.sidecar_peer_id)?;
        self.field("status", &h.status)?;
        self.field("mode", &h.mode)?;
        self.id_list("skill_names", &h.skill_names)
    }

    /// `POST /api/hub/tasks`.
    pub fn check_task(&self, t: &TaskSubmission) -> Result<(), Response> {
        self.id("skill", &t.skill)?;
        self.id("target_agent_id", &t.target_agent_id)?;
        self.id("source_agent_id", &t.source_agent_id)?;
        if t.payload.len() > self.task_payload_bytes_max {
            return Err(too_big(
                "payload",
                t.payload.len(),
                self.task_payload_bytes_max,
                "--task-payload-bytes-max",
            ));
        }
        if t.ttl > self.task_ttl_max {
            return Err(Response::error(
                422,
                format!(
                    "field `ttl` is {}; the most is {} seconds (--task-ttl-max)",
                    t.ttl, self.task_ttl_max
                ),
            ));
        }
        Ok(())
    }

    /// `POST /api/hub/tasks/{id}`.
    pub fn check_update(&self, u: &TaskUpdate) -> Result<(), Response> {
        self.field("state", &u.state)?;
        for (name, v) in [("result", &u.result), ("error", &u.error)] {
            if v.len() > self.task_result_bytes_max {
                return Err(too_big(
                    name,
                    v.len(),
                    self.task_result_bytes_max,
                    "--task-result-bytes-max",
                ));
            }
        }
        Ok(())
    }
}

/// Refuses (422) an id or name a client chooses that holds a control character (C0
/// `U+0000`–`U+001F`, DEL, C1 `U+0080`–`U+009F`): the agent and task ids, skill and MCP
/// server names, `sidecar_peer_id`, pairing's `agent_name`. They are stored, shown on the
/// dashboard, written to logs and relayed to other agents, where a NUL or a line break
/// is never meant (and a line break forges log lines). Free-text fields (`hostname`,
/// `status`, …) are not ids and keep any text.
pub fn check_printable(field: &str, v: &str) -> Result<(), Response> {
    match v.chars().find(|c| c.is_control()) {
        None => Ok(()),
        Some(c) => Err(Response::error(
            422,
            format!(
                "field `{field}` contains the control character U+{:04X}; ids and names \
                 must be printable",
                u32::from(c)
            ),
        )),
    }
}

/// The key a client's quota is counted under when the route has no API key: its
/// source address, an IPv6 one by /64 (one host usually holds a whole /64).
pub fn client_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Refuses a body that is valid JSON but not an object (`[]`, `"x"`, `1`): serde would
/// read a JSON array into a struct field by field, so `[]` would be an empty task.
/// 422, as for any body of the wrong shape.
pub fn require_object(body: &[u8]) -> Result<(), Response> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        return Err(Response::error(
            422,
            "Failed to deserialize the JSON body into the target type: expected a JSON object, got an array",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::json::parse_body;

    #[test]
    fn fields_lists_payload_ttl() {
        let l = StoreLimits {
            agent_field_bytes_max: 8,
            agent_list_items_max: 2,
            task_payload_bytes_max: 16,
            task_result_bytes_max: 4,
            task_ttl_max: 100,
            ..StoreLimits::default()
        };
        let a: AgentInfo = parse_body(br#"{"agent_id":"a","hostname":"h"}"#).unwrap();
        assert!(l.check_agent(&a).is_ok());
        let a: AgentInfo = parse_body(br#"{"agent_id":"a","hostname":"123456789"}"#).unwrap();
        assert_eq!(l.check_agent(&a).unwrap_err().status, 413);
        let a: AgentInfo = parse_body(
            br#"{"agent_id":"a","hostname":"h","capabilities":{"skills":["a","b","c"]}}"#,
        )
        .unwrap();
        assert_eq!(l.check_agent(&a).unwrap_err().status, 413);
        let h: Heartbeat = parse_body(br#"{"agent_id":"a","skill_names":["123456789"]}"#).unwrap();
        assert_eq!(l.check_heartbeat(&h).unwrap_err().status, 413);
        let t: TaskSubmission = parse_body(br#"{"payload":[1,2,3],"ttl":100}"#).unwrap();
        assert!(l.check_task(&t).is_ok());
        let t: TaskSubmission = parse_body(br#"{"ttl":101}"#).unwrap();
        assert_eq!(l.check_task(&t).unwrap_err().status, 422);
        let t: TaskSubmission = parse_body(br#"{"payload":"0123456789abcdef"}"#).unwrap();
        assert_eq!(l.check_task(&t).unwrap_err().status, 413);
        let u: TaskUpdate = parse_body(br#"{"state":"completed","result":"12345"}"#).unwrap();
        assert_eq!(l.check_update(&u).unwrap_err().status, 413);
        let u: TaskUpdate = parse_body(br#"{"state":"done","error":"1234"}"#).unwrap();
        assert!(l.check_update(&u).is_ok());
    }

    /// What is accepted at the nesting bound is processed with recursion (serde_json
    /// `Value`s, derived structs) at most `JSON_DEPTH_MAX` deep: all of it fits an
    /// eighth of the 2 MiB stack a shard thread gets (std's default; `reactor` sets
    /// none), in a debug build. A task at the bound also round-trips through its
    /// durable record (one level deeper: serde_json refuses 128).
    #[test]
    fn the_deepest_accepted_inputs_fit_a_small_stack() {
        use wire::json::JSON_DEPTH_MAX;
        let run = || {
            // Objects and arrays alternating, 63 levels: the body is 64.
            let mut payload = String::from("1");
            for i in 0..JSON_DEPTH_MAX - 1 {
                payload = match i % 2 {
                    0 => format!("[{payload},2]"),
                    _ => format!(r#"{{"b":{payload},"a":"x"}}"#),
                };
            }
            let body = format!(r#"{{"skill":"s","payload":{payload}}}"#);
            let sub: TaskSubmission = parse_body(body.as_bytes()).unwrap();
            let want: serde_json::Value = serde_json::from_str(&payload).unwrap();
            let task = crate::hub::Task {
                id: "t".into(),
                skill: sub.skill,
                target_agent_id: String::new(),
                source_agent_id: String::new(),
                assigned_agent_id: String::new(),
                payload: sub.payload,
                state: "pending".into(),
                result: String::new(),
                error: String::new(),
                created_at: crate::time::UnixTime::from_secs(1),
                updated_at: crate::time::UnixTime::from_secs(1),
                ttl: 300,
                holder: Default::default(),
                access: Default::default(),
            };
            let record = crate::durable::task_record(&task);
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(record.payload.get()).unwrap(),
                want
            );
            let bytes = serde_json::to_vec(&record).unwrap();
            let back: chatixia_store::TaskRecord = serde_json::from_slice(&bytes).unwrap();
            let task = crate::durable::task_of(back);
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(task.payload.get()).unwrap(),
                want
            );
            // A token whose `aud` (a `Value`) nests to the bound.
            let claims = serde_json::json!({
                "sub": "a", "role": "agent", "exp": 2_000_000_000u64, "iat": 1,
                "aud": 1, "nbf": serde_json::from_str::<serde_json::Value>(
                    &("[".repeat(JSON_DEPTH_MAX - 1) + &"]".repeat(JSON_DEPTH_MAX - 1))
                ).unwrap(),
            });
            let token = jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(b"k"),
            )
            .unwrap();
            assert!(crate::auth::verify(b"k", &token, 1_000).is_ok());
            // A signaling message at the bound.
            let msg =
                format!(r#"{{"type":"offer","peer_id":"a","target_id":"b","payload":{payload}}}"#);
            assert!(matches!(
                wire::ws::signaling::interpret(msg.as_bytes(), "a"),
                wire::ws::signaling::Action::Relay { .. }
            ));
        };
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(run)
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn ids_with_control_characters_are_refused() {
        let l = StoreLimits::default();
        for bad in [
            "a\u{0}b",
            "a\nb",
            "a\rb",
            "\u{7f}",
            "x\u{85}",
            "\u{1b}[31m",
            "\t",
        ] {
            let body = serde_json::json!({"agent_id": bad, "hostname": "h"}).to_string();
            let a: AgentInfo = parse_body(body.as_bytes()).unwrap();
            let e = l.check_agent(&a).unwrap_err();
            assert_eq!(e.status, 422, "{bad:?}");
            let h: Heartbeat = parse_body(body.as_bytes()).unwrap();
            assert_eq!(l.check_heartbeat(&h).unwrap_err().status, 422, "{bad:?}");
        }
        for field in ["skill", "target_agent_id", "source_agent_id"] {
            let body = serde_json::json!({ field: "a\nb" }).to_string();
            let t: TaskSubmission = parse_body(body.as_bytes()).unwrap();
            let e = l.check_task(&t).unwrap_err();
            assert_eq!(e.status, 422, "{field}");
        }
        let a: AgentInfo = parse_body(
            br#"{"agent_id":"a","hostname":"h","capabilities":{"skills":["ok","b\u0000d"]}}"#,
        )
        .unwrap();
        assert_eq!(l.check_agent(&a).unwrap_err().status, 422);
        let h: Heartbeat = parse_body(br#"{"agent_id":"a","sidecar_peer_id":"p\u007f"}"#).unwrap();
        assert_eq!(l.check_heartbeat(&h).unwrap_err().status, 422);
        // Printable text, any script, spaces and punctuation are fine; so is a control
        // character in a free-text field.
        let a: AgentInfo =
            parse_body("{\"agent_id\":\"agent é 漢字 -_.:/@\",\"hostname\":\"h\\n\"}".as_bytes())
                .unwrap();
        assert!(l.check_agent(&a).is_ok());
        assert!(check_printable("agent_name", "my agent").is_ok());
        assert_eq!(
            check_printable("agent_name", "a\u{0}").unwrap_err().status,
            422
        );
    }

    #[test]
    fn arrays_are_not_objects() {
        assert_eq!(require_object(b" \n[]").unwrap_err().status, 422);
        assert!(require_object(b" {}").is_ok());
    }
}
