//! Tasks and the per-shard task store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use crate::registry::JsonBody;
use crate::time::UnixTime;

/// A task id: 12 characters, see [`new_task_id`].
pub type TaskId = String;

/// Length of a task id.
pub const TASK_ID_LEN: usize = 12;

/// `ttl` of a task when the submission has none, in seconds.
pub const DEFAULT_TTL_SECS: u64 = 300;

/// How often the shard loop should call [`TaskStore::expire`].
pub const EXPIRE_INTERVAL: Duration = Duration::from_secs(30);

/// Default of [`TaskStoreConfig::retention`].
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(3600);

/// State of a new task.
pub const STATE_PENDING: &str = "pending";
/// State of a task claimed by a heartbeat.
pub const STATE_ASSIGNED: &str = "assigned";
/// A finished state (set by the agent's update).
pub const STATE_COMPLETED: &str = "completed";
/// A finished state (set by the agent's update or by TTL expiry).
pub const STATE_FAILED: &str = "failed";
/// `error` of a task failed by [`TaskStore::expire`].
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
    /// Any JSON; default `null`. Stored as a `serde_json::Value`, so object keys come back
    /// sorted, as in the reference.
    #[serde(default)]
    pub payload: serde_json::Value,
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
    pub payload: serde_json::Value,
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

/// Limits of one shard's [`TaskStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskStoreConfig {
    /// Most tasks this shard holds, in any state (finished tasks count until retention
    /// removes them). Any client can submit tasks, and a task nobody claims lives for its
    /// `ttl` (client-chosen, unbounded) plus `retention`, so without a cap memory would
    /// grow without bound. Each task is at most about one request body in size, so memory
    /// is bounded by `tasks_max` × the body size limit; the pending indexes hold at most
    /// one entry per task per index. When full, [`TaskStore::create`] refuses with
    /// [`CreateTaskError::Full`] (suggested answer: 503); room comes back as tasks finish
    /// and age out.
    pub tasks_max: usize,
    /// How long a finished (`completed` / `failed`) task stays readable after its last
    /// update before [`TaskStore::expire`] removes it (the reference keeps them forever).
    pub retention: Duration,
}

impl Default for TaskStoreConfig {
    fn default() -> Self {
        TaskStoreConfig {
            tasks_max: 65_536,
            retention: DEFAULT_RETENTION,
        }
    }
}

/// Why [`TaskStore::create`] refused a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateTaskError {
    /// The shard holds [`TaskStoreConfig::tasks_max`] tasks.
    Full {
        /// The limit that was reached.
        tasks_max: usize,
    },
    /// A task with this id exists; draw another id.
    DuplicateId,
}

impl fmt::Display for CreateTaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CreateTaskError::Full { tasks_max } => write!(f, "task store full ({tasks_max} tasks)"),
            CreateTaskError::DuplicateId => f.write_str("duplicate task id"),
        }
    }
}

impl std::error::Error for CreateTaskError {}

/// What one [`TaskStore::expire`] run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpireOutcome {
    /// Unfinished tasks past their TTL, now `failed` with error `TTL expired`.
    pub expired: usize,
    /// Finished tasks past retention, now removed.
    pub removed: usize,
}

/// Secondary indexes over the tasks of a store, keyed by the task's creation sequence
/// number. Every change to a task is bracketed by [`Index::remove`] with its old value and
/// [`Index::add`] with its new one.
#[derive(Clone, Debug, Default)]
struct Index {
    /// Pending tasks by `target_agent_id` (including `""`, which an empty agent id claims).
    pending_by_target: HashMap<String, BTreeSet<u64>>,
    /// Pending tasks with a non-empty `skill`, by skill.
    pending_by_skill: HashMap<String, BTreeSet<u64>>,
    /// Unfinished tasks by deadline.
    live_by_deadline: BTreeSet<(UnixTime, u64)>,
    /// Finished tasks by last update.
    finished_by_update: BTreeSet<(UnixTime, u64)>,
}

impl Index {
    fn add(&mut self, seq: u64, t: &Task) {
        if t.is_finished() {
            self.finished_by_update.insert((t.updated_at, seq));
        } else {
            self.live_by_deadline.insert((t.deadline(), seq));
        }
        if t.is_pending() {
            set_insert(&mut self.pending_by_target, &t.target_agent_id, seq);
            if !t.skill.is_empty() {
                set_insert(&mut self.pending_by_skill, &t.skill, seq);
            }
        }
    }

    fn remove(&mut self, seq: u64, t: &Task) {
        if t.is_finished() {
            self.finished_by_update.remove(&(t.updated_at, seq));
        } else {
            self.live_by_deadline.remove(&(t.deadline(), seq));
        }
        if t.is_pending() {
            set_remove(&mut self.pending_by_target, &t.target_agent_id, seq);
            if !t.skill.is_empty() {
                set_remove(&mut self.pending_by_skill, &t.skill, seq);
            }
        }
    }
}

fn set_insert(map: &mut HashMap<String, BTreeSet<u64>>, key: &str, seq: u64) {
    if let Some(set) = map.get_mut(key) {
        set.insert(seq);
    } else {
        map.insert(key.to_owned(), BTreeSet::from([seq]));
    }
}

fn set_remove(map: &mut HashMap<String, BTreeSet<u64>>, key: &str, seq: u64) {
    if let Some(set) = map.get_mut(key) {
        set.remove(&seq);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

/// The tasks one shard holds.
#[derive(Clone, Debug, Default)]
pub struct TaskStore {
    config: TaskStoreConfig,
    /// id → creation sequence number.
    ids: HashMap<TaskId, u64>,
    /// Tasks in creation order.
    tasks: BTreeMap<u64, Task>,
    index: Index,
    next_seq: u64,
}

impl TaskStore {
    /// An empty store.
    pub fn new(config: TaskStoreConfig) -> Self {
        TaskStore {
            config,
            ..TaskStore::default()
        }
    }

    /// The limits this store was built with.
    pub fn config(&self) -> TaskStoreConfig {
        self.config
    }

    /// Number of tasks held, finished ones included.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no task is held.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// `POST /api/hub/tasks`: stores a new `pending` task under `id` (from
    /// [`new_task_id`]), `created_at = updated_at = now`. Answer `{"task_id": id}`.
    pub fn create(
        &mut self,
        req: TaskSubmission,
        id: TaskId,
        now: UnixTime,
    ) -> Result<&Task, CreateTaskError> {
        if self.ids.contains_key(&id) {
            return Err(CreateTaskError::DuplicateId);
        }
        if self.tasks.len() >= self.config.tasks_max {
            return Err(CreateTaskError::Full {
                tasks_max: self.config.tasks_max,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let task = Task {
            id: id.clone(),
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
        };
        self.index.add(seq, &task);
        self.ids.insert(id, seq);
        Ok(self.tasks.entry(seq).or_insert(task))
    }

    /// The task with this id, if this shard holds it.
    pub fn get(&self, id: &str) -> Option<&Task> {
        self.ids.get(id).and_then(|seq| self.tasks.get(seq))
    }

    /// `POST /api/hub/tasks/{id}`: sets `state` (any string), overwrites `result` and
    /// `error` when the update's are non-empty, sets `updated_at = now`. `None` → answer
    /// `{"error":"not found"}`. Setting `pending` again makes the task claimable again
    /// (its `assigned_agent_id` is kept until the next claim, as in the reference).
    pub fn update(&mut self, id: &str, upd: TaskUpdate, now: UnixTime) -> Option<&Task> {
        let seq = *self.ids.get(id)?;
        let task = self.tasks.get_mut(&seq)?;
        self.index.remove(seq, task);
        task.state = upd.state;
        if !upd.result.is_empty() {
            task.result = upd.result;
        }
        if !upd.error.is_empty() {
            task.error = upd.error;
        }
        task.updated_at = now;
        self.index.add(seq, task);
        Some(task)
    }

    /// All tasks of this shard in creation order.
    pub fn list(&self) -> impl ExactSizeIterator<Item = &Task> + '_ {
        self.tasks.values()
    }

    /// The task half of a heartbeat: every `pending` task here that
    /// [matches](Task::matches) the agent becomes `assigned` to it (`assigned_agent_id`,
    /// `updated_at = now`) and is returned, in creation order, each at most once.
    ///
    /// Cost: one index lookup per entry of `skill_names` plus O(log n) per claimed task;
    /// tasks that do not match are not visited. A claimed task leaves the pending
    /// indexes, so no later call returns it unless an update sets it `pending` again.
    pub fn claim_for(
        &mut self,
        agent_id: &str,
        skill_names: &[String],
        now: UnixTime,
    ) -> Vec<Task> {
        self.claim_matching(agent_id, true, skill_names, now)
    }

    /// Like [`claim_for`](Self::claim_for), except that an empty `agent_id` claims
    /// nothing by target (the server's rule: a heartbeat without an agent id takes only
    /// skill tasks, where the reference would hand it every untargeted task).
    pub fn claim_for_agent(
        &mut self,
        agent_id: &str,
        skill_names: &[String],
        now: UnixTime,
    ) -> Vec<Task> {
        self.claim_matching(agent_id, !agent_id.is_empty(), skill_names, now)
    }

    /// Claims the task `id` for `agent_id` if it is still `pending`; `None` if it is
    /// unknown or no longer pending. Used to resolve the pointer a targeted skill task
    /// leaves on its target's shard.
    pub fn claim_id(&mut self, id: &str, agent_id: &str, now: UnixTime) -> Option<Task> {
        let seq = *self.ids.get(id)?;
        let task = self.tasks.get_mut(&seq)?;
        if !task.is_pending() {
            return None;
        }
        self.index.remove(seq, task);
        STATE_ASSIGNED.clone_into(&mut task.state);
        agent_id.clone_into(&mut task.assigned_agent_id);
        task.updated_at = now;
        self.index.add(seq, task);
        Some(task.clone())
    }

    fn claim_matching(
        &mut self,
        agent_id: &str,
        by_target: bool,
        skill_names: &[String],
        now: UnixTime,
    ) -> Vec<Task> {
        let mut seqs = BTreeSet::new();
        if by_target {
            if let Some(set) = self.index.pending_by_target.get(agent_id) {
                seqs.extend(set.iter().copied());
            }
        }
        for skill in skill_names.iter().filter(|s| !s.is_empty()) {
            if let Some(set) = self.index.pending_by_skill.get(skill.as_str()) {
                seqs.extend(set.iter().copied());
            }
        }
        let mut claimed = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let Some(task) = self.tasks.get_mut(&seq) else {
                continue;
            };
            self.index.remove(seq, task);
            STATE_ASSIGNED.clone_into(&mut task.state);
            agent_id.clone_into(&mut task.assigned_agent_id);
            task.updated_at = now;
            self.index.add(seq, task);
            claimed.push(task.clone());
        }
        claimed
    }

    /// The 30 s job ([`EXPIRE_INTERVAL`]): every unfinished task whose deadline has passed
    /// (`now - created_at > ttl`, strictly) becomes `failed` with error `TTL expired` and
    /// `updated_at = now`; then every finished task whose last update is more than
    /// [`retention`](TaskStoreConfig::retention) before `now` is removed. Cost: O(log n)
    /// per affected task; untouched tasks are not visited.
    pub fn expire(&mut self, now: UnixTime) -> ExpireOutcome {
        let mut out = ExpireOutcome::default();
        let overdue: Vec<u64> = self
            .index
            .live_by_deadline
            .range(..(now, 0))
            .map(|&(_, seq)| seq)
            .collect();
        for seq in overdue {
            let Some(task) = self.tasks.get_mut(&seq) else {
                continue;
            };
            self.index.remove(seq, task);
            STATE_FAILED.clone_into(&mut task.state);
            TTL_EXPIRED_ERROR.clone_into(&mut task.error);
            task.updated_at = now;
            self.index.add(seq, task);
            out.expired += 1;
        }

        let retention_nanos = u64::try_from(self.config.retention.as_nanos()).unwrap_or(u64::MAX);
        if let Some(cutoff) = now.0.checked_sub(retention_nanos) {
            let old: Vec<u64> = self
                .index
                .finished_by_update
                .range(..(UnixTime(cutoff), 0))
                .map(|&(_, seq)| seq)
                .collect();
            for seq in old {
                if let Some(task) = self.tasks.remove(&seq) {
                    self.index.remove(seq, &task);
                    self.ids.remove(&task.id);
                    out.removed += 1;
                }
            }
        }
        out
    }

    /// Rebuilds the indexes from the tasks and checks they equal the maintained ones.
    #[cfg(test)]
    fn assert_consistent(&self) {
        let mut fresh = Index::default();
        for (&seq, t) in &self.tasks {
            fresh.add(seq, t);
            assert_eq!(self.ids.get(&t.id), Some(&seq));
        }
        assert_eq!(self.ids.len(), self.tasks.len());
        assert_eq!(fresh.pending_by_target, self.index.pending_by_target);
        assert_eq!(fresh.pending_by_skill, self.index.pending_by_skill);
        assert_eq!(fresh.live_by_deadline, self.index.live_by_deadline);
        assert_eq!(fresh.finished_by_update, self.index.finished_by_update);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{parse_body, BodyError};
    use serde_json::json;

    const T0: UnixTime = UnixTime(1_700_000_000_000_000_000);

    fn at(secs: u64) -> UnixTime {
        T0.saturating_add(Duration::from_secs(secs))
    }

    fn sub(skill: &str, target: &str) -> TaskSubmission {
        TaskSubmission {
            skill: skill.into(),
            target_agent_id: target.into(),
            source_agent_id: "src".into(),
            payload: json!({"q": 1}),
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
                payload: serde_json::Value::Null,
                ttl: 300,
            }
        );
        let s: TaskSubmission =
            parse_body(br#"{"skill":"x","payload":{"b":[1,{"z":1,"a":2}],"a":null},"ttl":0}"#)
                .unwrap();
        assert_eq!(s.ttl, 0);
        assert_eq!(s.payload, json!({"a": null, "b": [1, {"a": 2, "z": 1}]}));
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
                payload: json!({"q": 1}),
                state: "pending".into(),
                result: String::new(),
                error: String::new(),
                created_at: T0,
                updated_at: T0,
                ttl: 300,
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
        assert_eq!(
            s.create(sub("x", ""), "t3".into(), T0).unwrap_err(),
            CreateTaskError::Full { tasks_max: 2 }
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
                                now.saturating_duration_since(t.updated_at)
                                    <= Duration::from_secs(20)
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
            payload: json!({"zeta": 1, "alpha": {"b": 2, "a": [true, null]}}),
            state: "pending".into(),
            result: String::new(),
            error: String::new(),
            created_at: UnixTime(1_700_000_000_250_000_000),
            updated_at: UnixTime(1_700_000_001_000_000_000),
            ttl: 300,
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
}
