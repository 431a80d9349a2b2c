//! TRANSITIONAL (issue 21): the old bundle of every service's limits, returning HTTP
//! responses; removed once every service checks its own bodies.
#![allow(dead_code)]

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
    /// Bytes of tasks one client (see `Charge`: the identity of a valid
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
    /// Percent of each store's budget (tasks, agents, the durable store) that all
    /// anonymous clients (no valid credential, see `Charge`) may hold together;
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
