//! The task records and request bodies of the hub (`POST /api/hub/tasks`, the update
//! of a task), their JSON shapes and task ids.

use std::time::Duration;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use crate::hub::payload::Payload;
use crate::limits::Charge;
use crate::limits::{Holder, Principal};
use crate::time::UnixTime;
use wire::json::JsonBody;

/// A task id: 12 characters, see [`new_task_id`].
pub type TaskId = String;

/// Length of a task id.
pub const TASK_ID_LEN: usize = 12;

/// `ttl` of a task when the submission has none, in seconds.
pub const DEFAULT_TTL_SECS: u64 = 300;

/// How often the shard loop should call [`super::TaskStore::expire`].
pub const EXPIRE_INTERVAL: Duration = Duration::from_secs(30);

/// Default of [`super::TaskStoreConfig::retention`].
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(3600);

/// State of a new task.
pub const STATE_PENDING: &str = "pending";
/// State of a task claimed by a heartbeat.
pub const STATE_ASSIGNED: &str = "assigned";
/// A finished state (set by the agent's update).
pub const STATE_COMPLETED: &str = "completed";
/// A finished state (set by the agent's update or by TTL expiry).
pub const STATE_FAILED: &str = "failed";
/// `error` of a task failed by [`super::TaskStore::expire`].
pub const TTL_EXPIRED_ERROR: &str = "TTL expired";

const fn default_ttl() -> u64 {
    DEFAULT_TTL_SECS
}

/// Body of `POST /api/hub/tasks`; every field has a default. Unknown fields are ignored.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct TaskSubmission {
    /// Skill an agent must list to claim the task; `""` for none.
    #[serde(default)]
    pub skill: String,
    /// Agent that may claim the task whatever its skills; `""` for none.
    #[serde(default)]
    pub target_agent_id: String,
    /// Informational.
    #[serde(default)]
    pub source_agent_id: String,
    /// Any JSON; default `null`. Kept as canonical JSON text ([`Payload`]): object keys
    /// come back sorted, as in the reference, and numbers exactly as sent.
    #[serde(default)]
    pub payload: Payload,
    /// Seconds after creation at which an unfinished task fails; default 300.
    #[serde(default = "default_ttl")]
    pub ttl: u64,
}

impl JsonBody for TaskSubmission {
    const REQUIRED_FIELDS: &'static [&'static str] = &[];
}

/// Which shard should hold a new task (see the [module docs](super)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement<'a> {
    /// The shard chosen by hashing this skill (non-empty `skill`); when the task also
    /// names a target, a pointer is left on the target's shard.
    Skill {
        skill: &'a str,
        pointer_for: Option<&'a str>,
    },
    /// The shard that owns this agent id (non-empty `target_agent_id`, no skill).
    Agent(&'a str),
    /// Neither: any shard (the one that took the request).
    Any,
}

impl TaskSubmission {
    /// Where this task should live: its skill's shard (plus a pointer for its target),
    /// else its target's shard, else anywhere.
    pub fn placement(&self) -> Placement<'_> {
        if !self.skill.is_empty() {
            let pointer_for =
                (!self.target_agent_id.is_empty()).then_some(self.target_agent_id.as_str());
            Placement::Skill {
                skill: &self.skill,
                pointer_for,
            }
        } else if !self.target_agent_id.is_empty() {
            Placement::Agent(&self.target_agent_id)
        } else {
            Placement::Any
        }
    }
}

/// Body of `POST /api/hub/tasks/{id}`. `state` is required (any string is accepted);
/// `result` and `error` default to `""`, and only a non-empty value overwrites.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct TaskUpdate {
    /// Required; any string.
    pub state: String,
    /// Must be a string (an object is refused with 422, as in the reference).
    #[serde(default)]
    pub result: String,
    /// Must be a string.
    #[serde(default)]
    pub error: String,
}

impl JsonBody for TaskUpdate {
    const REQUIRED_FIELDS: &'static [&'static str] = &["state"];
}

/// A task record. Serializes in the reference's struct field order with `created_at` and
/// `updated_at` as float seconds since the epoch; [`Task::sorted_keys`] gives the
/// sorted-key shape used by get-one and heartbeat responses.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Task {
    /// 12-character id.
    pub id: TaskId,
    /// From the submission.
    pub skill: String,
    /// From the submission.
    pub target_agent_id: String,
    /// From the submission.
    pub source_agent_id: String,
    /// Set when a heartbeat claims the task; `""` before.
    pub assigned_agent_id: String,
    /// From the submission.
    pub payload: Payload,
    /// `pending`, `assigned`, `completed`, `failed`, or whatever an update set.
    pub state: String,
    /// Last non-empty `result` of an update.
    pub result: String,
    /// Last non-empty `error` of an update, or [`TTL_EXPIRED_ERROR`].
    pub error: String,
    /// Creation time.
    #[serde(serialize_with = "secs_f64")]
    pub created_at: UnixTime,
    /// Last claim, update or expiry.
    #[serde(serialize_with = "secs_f64")]
    pub updated_at: UnixTime,
    /// Seconds from `created_at` until an unfinished task fails.
    pub ttl: u64,
    /// Who the task is charged to (its creator; see [`Charge`]). Not on the wire;
    /// kept in the durable record so a restart charges it to the same budget.
    #[serde(skip)]
    pub holder: Charge,
    /// Who created and who claimed it (issue 20); never on the wire.
    #[serde(skip)]
    pub access: TaskAccess,
}

/// Who created a task and who last claimed it (issue 20, finding 2). The task's shard
/// checks updates ([`Task::updatable_by`]) and reads ([`Task::readable_by`]) against
/// them, without asking the assignee's shard: a claim happens in a heartbeat that
/// already passed the agent's binding check, so its principal stands for the agent.
/// `None`: not recorded (a task from a data directory written before this was kept,
/// or made without a principal), for which the checks are open, as before.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskAccess {
    /// The principal of `POST /api/hub/tasks`.
    pub created_by: Option<Holder>,
    /// The principal of the heartbeat that last claimed it.
    pub claimed_by: Option<Holder>,
    /// The principal of the last update (`POST /api/hub/tasks/{id}`): the task's
    /// report (`state`, `result`, `error`) is charged to it (issue 20); `None`: never
    /// updated, the whole task is charged to its creator ([`Task::holder`]).
    pub reported_by: Option<Holder>,
}

fn secs_f64<S: Serializer>(t: &UnixTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(t.as_secs_f64())
}

struct Secs(UnixTime);

impl Serialize for Secs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        secs_f64(&self.0, s)
    }
}

impl Task {
    /// A new `pending` task from a submission, `created_at = updated_at = now`, charged
    /// to `holder` and created by `created_by` (`None`: by the server itself).
    pub fn new_pending(
        req: TaskSubmission,
        id: TaskId,
        holder: Charge,
        created_by: Option<Holder>,
        now: UnixTime,
    ) -> Task {
        Task {
            id,
            skill: req.skill,
            target_agent_id: req.target_agent_id,
            source_agent_id: req.source_agent_id,
            assigned_agent_id: String::new(),
            payload: req.payload,
            state: STATE_PENDING.to_owned(),
            result: String::new(),
            error: String::new(),
            created_at: now,
            updated_at: now,
            ttl: req.ttl,
            holder,
            access: TaskAccess {
                created_by,
                claimed_by: None,
                reported_by: None,
            },
        }
    }

    /// An update's change (`POST /api/hub/tasks/{id}`): `state` set, `result` and
    /// `error` only when non-empty, `updated_at = now`, the report charged to `by`
    /// ([`TaskAccess::reported_by`]) when given.
    pub fn apply_update(&mut self, upd: TaskUpdate, by: Option<&Holder>, now: UnixTime) {
        if let Some(by) = by {
            self.access.reported_by = Some(by.clone());
        }
        self.state = upd.state;
        if !upd.result.is_empty() {
            self.result = upd.result;
        }
        if !upd.error.is_empty() {
            self.error = upd.error;
        }
        self.updated_at = now;
    }

    /// `completed` or `failed`: the states TTL expiry leaves alone and retention removes.
    pub fn is_finished(&self) -> bool {
        self.state == STATE_COMPLETED || self.state == STATE_FAILED
    }

    /// Whether a heartbeat may claim it.
    pub fn is_pending(&self) -> bool {
        self.state == STATE_PENDING
    }

    /// The instant after which an unfinished task fails: `created_at + ttl`. Expiry is
    /// strict, as in the reference (`now - created_at > ttl`).
    pub fn deadline(&self) -> UnixTime {
        self.created_at
            .saturating_add(Duration::from_secs(self.ttl))
    }

    /// Whether a heartbeat from `agent_id` listing `skill_names` would claim this task if
    /// it were pending (the reference's rule: `target_agent_id == agent_id`, or a non-empty
    /// `skill` among `skill_names`). Note that an empty `agent_id` matches every task
    /// with an empty target.
    pub fn matches(&self, agent_id: &str, skill_names: &[String]) -> bool {
        self.target_agent_id == agent_id
            || (!self.skill.is_empty() && skill_names.contains(&self.skill))
    }

    /// Whether `by` may update this task (`POST /api/hub/tasks/{id}`); else the 403
    /// reason. An admin may. A task that was claimed (`assigned_agent_id` set): the
    /// principal that claimed it, or a credential for the assignee (see
    /// `Principal::is_for`). One never claimed: the principal that created it.
    pub fn updatable_by(&self, by: &Principal) -> Result<(), String> {
        if by.admin {
            return Ok(());
        }
        let a = &self.assigned_agent_id;
        if !a.is_empty() {
            if by.is_for(a)
                || self
                    .access
                    .claimed_by
                    .as_ref()
                    .is_none_or(|h| by.holds(&h.owner()))
            {
                return Ok(());
            }
            return Err(format!(
                "task `{}` is assigned to agent `{a}`: only that agent (the client that \
                 claimed it, or an API key or token for `{a}` or `{a}-sidecar`) or an admin \
                 may report it",
                self.id
            ));
        }
        if self
            .access
            .created_by
            .as_ref()
            .is_none_or(|h| by.holds(&h.owner()))
        {
            return Ok(());
        }
        Err(format!(
            "task `{}` is not claimed yet: only the client that created it (the same \
             credential, or the same address without one) or an admin may update it",
            self.id
        ))
    }

    /// Whether `by` may read this task's `payload`, `result` and `error` (the list and
    /// the get-one route withhold them otherwise, [`withheld`](Self::withheld)): an
    /// admin; a credential for its source, target or assignee; its creator or claimer
    /// (the same credential, or the same source address).
    pub fn readable_by(&self, by: &Principal) -> bool {
        let a = &self.access;
        by.admin
            || [
                &self.source_agent_id,
                &self.target_agent_id,
                &self.assigned_agent_id,
            ]
            .iter()
            .any(|id| by.is_for(id))
            || a.created_by.as_ref().is_none_or(|h| by.is_or_near(h))
            || a.claimed_by.as_ref().is_some_and(|h| by.is_or_near(h))
    }

    /// This task without what a reader may not see: `payload` `null`, `result` and
    /// `error` empty (the shape the reference hub reads is kept).
    pub fn withheld(&self) -> Task {
        Task {
            payload: Payload::default(),
            result: String::new(),
            error: String::new(),
            ..self.clone()
        }
    }

    /// This task with its JSON keys sorted: the shape the reference produces for
    /// `GET /api/hub/tasks/{id}` and the heartbeat's `pending_tasks` (it goes through a
    /// `serde_json::Value`, whose map is a `BTreeMap`).
    pub fn sorted_keys(&self) -> SortedTask<'_> {
        SortedTask(self)
    }
}

/// A [`Task`] that serializes with sorted keys; see [`Task::sorted_keys`].
#[derive(Clone, Copy, Debug)]
pub struct SortedTask<'a>(pub &'a Task);

impl Serialize for SortedTask<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self.0;
        let mut st = s.serialize_struct("Task", 12)?;
        st.serialize_field("assigned_agent_id", &t.assigned_agent_id)?;
        st.serialize_field("created_at", &Secs(t.created_at))?;
        st.serialize_field("error", &t.error)?;
        st.serialize_field("id", &t.id)?;
        st.serialize_field("payload", &t.payload)?;
        st.serialize_field("result", &t.result)?;
        st.serialize_field("skill", &t.skill)?;
        st.serialize_field("source_agent_id", &t.source_agent_id)?;
        st.serialize_field("state", &t.state)?;
        st.serialize_field("target_agent_id", &t.target_agent_id)?;
        st.serialize_field("ttl", &t.ttl)?;
        st.serialize_field("updated_at", &Secs(t.updated_at))?;
        st.end()
    }
}

/// A new task id in the reference's format: the first 12 characters of a hyphenated
/// lowercase UUID v4 (`Uuid::new_v4().to_string()[..12]`), i.e. 8 hex digits, `-`, 3 hex
/// digits, e.g. `9f1c03ab-77e`. All 44 bits are random (the UUID's version nibble is
/// character 14, beyond the cut). `rand` must fill its buffer with random bytes (e.g.
/// `getrandom::getrandom`); the server redraws until the id hashes to the wanted shard.
pub fn new_task_id(rand: &mut impl FnMut(&mut [u8])) -> TaskId {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = [0u8; 6];
    rand(&mut bytes);
    let mut id = String::with_capacity(TASK_ID_LEN + 1);
    for b in bytes {
        id.push(char::from(HEX[usize::from(b >> 4)]));
        id.push(char::from(HEX[usize::from(b & 0x0f)]));
        if id.len() == 8 {
            id.push('-');
        }
    }
    id.truncate(TASK_ID_LEN);
    id
}
