//! Tasks and the per-shard task store (the records themselves: [`model`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use crate::hub::hints::{Announcement, Announcer, NoneLeft};
use crate::limits::Holder;
use crate::limits::{Budget, Charge, ClientLedger, Line, Names, Refusal};
use crate::time::UnixTime;

mod model;
pub use model::*;

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
    /// Bytes of tasks this shard holds (each task charged [`task_bytes`]). Full:
    /// [`Refusal::Full`] (503) for a new task, and for an update that makes a task
    /// larger ([`TaskStore::try_update`]), until tasks finish and age out.
    pub bytes_max: usize,
    /// Bytes one client (see [`TaskStore::create_for`]) may hold here, in the tasks it
    /// created and the reports it posted ([`task_line`]); over: [`Refusal::ClientQuota`]
    /// (429) for that client only, so one client cannot fill the store for everyone.
    pub client_bytes_max: usize,
    /// Tasks one client may hold here (same rule; counts tiny tasks).
    pub client_tasks_max: usize,
    /// Bytes of tasks one heartbeat claims on this shard ([`task_bytes`] each; at least
    /// one task): bounds the heartbeat response like a list page. Matching tasks past
    /// it stay pending for the agent's next heartbeat.
    pub claim_bytes_max: usize,
    /// Percent of `tasks_max` and `bytes_max` all anonymous clients together may hold
    /// (see [`Charge`]); over: [`Refusal::AnonymousShare`] (503) for anonymous
    /// requests only.
    pub anonymous_share_percent: u8,
}

impl TaskStoreConfig {
    /// The budget of new tasks and of their growth.
    pub fn budget(&self) -> Budget {
        Budget {
            items_max: self.tasks_max,
            bytes_max: self.bytes_max,
            client_items_max: self.client_tasks_max,
            client_bytes_max: self.client_bytes_max,
            anonymous_share_percent: self.anonymous_share_percent,
        }
    }
}

/// How the task store and its flags are called in a refusal.
pub const TASK_STORE_NAMES: Names = Names {
    store: "task store",
    items: "tasks",
    bytes_flag: "--task-store-bytes-max",
    items_flag: "65,536 tasks a shard",
    client_items_flag: "--task-client-tasks-max",
    client_bytes_flag: "--task-client-bytes-max",
};

impl Default for TaskStoreConfig {
    fn default() -> Self {
        TaskStoreConfig {
            tasks_max: 65_536,
            retention: DEFAULT_RETENTION,
            bytes_max: 256 * 1024 * 1024,
            client_bytes_max: 16 * 1024 * 1024,
            client_tasks_max: 4096,
            claim_bytes_max: 4 * 1024 * 1024,
            anonymous_share_percent: 50,
        }
    }
}

/// Fixed bytes charged per task on top of its strings: the record and its B-tree slot,
/// the id map entry and the id's copy in it, the index entries, the ledger's line, the
/// allocator's header and rounding of each small string, and room for
/// `assigned_agent_id` (bounded by the field size limit). Measured (issue 20,
/// docs/BENCHMARKS.md "Memory per stored task"): 20,000 tasks with tiny payloads grew
/// the RSS of a release build by about 1,040 bytes each (with redb's page cache held to
/// 1 MiB), and 1 KiB payloads by about 1,020 bytes each on top of the payload; the 640
/// bytes charged before undercounted that by 40 %.
pub const TASK_OVERHEAD_BYTES: usize = 1024;

/// The bytes of a task's report (what an update sets: `state`, `result`, `error`),
/// charged to the principal of its last update ([`TaskAccess::reported_by`]).
pub fn report_bytes(t: &Task) -> usize {
    t.state.len() + t.result.len() + t.error.len()
}

/// What a task is charged, to whom: its report ([`report_bytes`]) to the principal of
/// its last update, the rest to its creator ([`Task::holder`]); all of it to its creator
/// until it is updated.
pub fn task_line(t: &Task) -> Line {
    let report = report_bytes(t);
    Line::split(
        t.holder.clone(),
        task_bytes(t) - report,
        t.access
            .reported_by
            .as_ref()
            .map(|h| Charge::of_holder(Some(h))),
        report,
    )
}

/// The bytes a task is charged against the store's and its clients' budgets.
pub fn task_bytes(t: &Task) -> usize {
    TASK_OVERHEAD_BYTES
        + 2 * t.holder.heap_bytes()
        + t.id.len()
        + t.skill.len()
        + t.target_agent_id.len()
        + t.source_agent_id.len()
        + t.payload.len()
        + t.state.len()
        + t.result.len()
        + t.error.len()
}

/// Why [`TaskStore::create`] refused a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateTaskError {
    /// A task with this id exists; draw another id.
    DuplicateId,
    /// A budget refused it: the client's quota (429), the anonymous share or the whole
    /// store (503); [`Refusal::message`] with [`TASK_STORE_NAMES`] says which.
    Refused(Refusal),
}

impl fmt::Display for CreateTaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CreateTaskError::DuplicateId => f.write_str("duplicate task id"),
            CreateTaskError::Refused(r) => f.write_str(&r.message(&TASK_STORE_NAMES)),
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
    /// Pending tasks aimed at an agent that live here by their skill: a `ClaimFor` of
    /// that agent from another shard claims them whatever skills it asks for, so none
    /// left is not said while there are any (`hub::hints`). Tasks aimed at an agent
    /// without a skill live at that agent's own shard, which its heartbeats never send
    /// a `ClaimFor` (they claim there directly).
    targeted_by_skill: usize,
    /// Who may believe a skill has no pending task here (`hub::hints`): told by every
    /// task that becomes pending, here where pending-ness is decided.
    announce: Announcer,
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
            if !t.target_agent_id.is_empty() && !t.skill.is_empty() {
                self.targeted_by_skill += 1;
                self.announce.note_targeted();
            }
            if !t.skill.is_empty() {
                set_insert(&mut self.pending_by_skill, &t.skill, seq);
                self.announce.note_pending(&t.skill);
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
            if !t.target_agent_id.is_empty() && !t.skill.is_empty() {
                self.targeted_by_skill = self.targeted_by_skill.saturating_sub(1);
            }
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
    /// Budget accounting: bytes charged in all, per task and per client.
    ledger: ClientLedger<u64>,
    /// Tasks whose creation is being committed to the durable store: not claimable
    /// until it is acknowledged (so no claim is saved before the task itself).
    saving: BTreeSet<u64>,
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
        self.create_for(req, id, &Charge::Admin(String::new()), None, now)
    }

    /// [`create`](Self::create) charged to `who` (chosen by the server from the
    /// request's credentials, see [`Charge`]), with `created_by` kept as the task's
    /// creator ([`TaskAccess::created_by`]; `None`: made by the server itself). Refuses
    /// with [`CreateTaskError::Refused`]: the client's quota on this shard (anonymous
    /// clients and agents), the anonymous share (anonymous clients), or the store's
    /// whole budget of tasks and bytes.
    pub fn create_for(
        &mut self,
        req: TaskSubmission,
        id: TaskId,
        who: &Charge,
        created_by: Option<Holder>,
        now: UnixTime,
    ) -> Result<&Task, CreateTaskError> {
        if self.ids.contains_key(&id) {
            return Err(CreateTaskError::DuplicateId);
        }
        let charge = TASK_OVERHEAD_BYTES
            + 2 * who.heap_bytes()
            + id.len()
            + req.skill.len()
            + req.target_agent_id.len()
            + req.source_agent_id.len()
            + req.payload.len()
            + STATE_PENDING.len();
        self.ledger
            .admit_new(&self.config.budget(), who, charge)
            .map_err(CreateTaskError::Refused)?;
        let seq = self.next_seq;
        self.next_seq += 1;
        let task = Task::new_pending(req, id.clone(), who.clone(), created_by, now);
        self.index.add(seq, &task);
        self.ids.insert(id, seq);
        self.charge(seq, task_line(&task));
        Ok(self.tasks.entry(seq).or_insert(task))
    }

    /// Bytes charged for the tasks held (see [`task_bytes`]).
    pub fn bytes(&self) -> usize {
        self.ledger.bytes()
    }

    /// `(tasks, bytes)` that `client` holds here.
    /// Budget refusals so far, by `limits::Refusal::REASONS`.
    pub fn refusals(&self) -> [u64; 3] {
        self.ledger.refused()
    }

    pub fn client_usage(&self, client: &Charge) -> (usize, usize) {
        self.ledger.client(client)
    }

    /// `(tasks, bytes)` that anonymous clients hold here, all together.
    pub fn anonymous_usage(&self) -> (usize, usize) {
        self.ledger.anonymous()
    }

    /// Charges task `seq` as `line` says (replacing any earlier charge).
    fn charge(&mut self, seq: u64, line: Line) {
        self.uncharge(seq);
        self.ledger.put(seq, line);
    }

    /// Charges task `seq` again after a change ([`task_line`]).
    fn recharge(&mut self, seq: u64) {
        if let Some(line) = self.tasks.get(&seq).map(task_line) {
            self.charge(seq, line);
        }
    }

    /// Removes task `seq`'s charge; returns it.
    fn uncharge(&mut self, seq: u64) -> Option<Line> {
        self.ledger.uncharge(&seq)
    }

    /// Adds a task loaded from the store at start-up (the limit does not apply: it was
    /// acknowledged), charged to its holder as before the restart. A task already held
    /// under that id is replaced.
    pub fn insert_loaded(&mut self, task: Task) {
        if let Some(&seq) = self.ids.get(&task.id) {
            self.replace_seq(seq, task);
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.index.add(seq, &task);
        self.ids.insert(task.id.clone(), seq);
        let line = task_line(&task);
        self.tasks.insert(seq, task);
        self.charge(seq, line);
    }

    /// Puts a task back as it was (undoing a change the store did not acknowledge).
    /// `false` if the id is unknown.
    pub fn replace(&mut self, task: Task) -> bool {
        match self.ids.get(&task.id) {
            Some(&seq) => {
                self.replace_seq(seq, task);
                true
            }
            None => false,
        }
    }

    fn replace_seq(&mut self, seq: u64, task: Task) {
        if let Some(old) = self.tasks.get_mut(&seq) {
            self.index.remove(seq, old);
            *old = task;
            self.index.add(seq, old);
        }
        self.recharge(seq);
    }

    /// Removes a task (its creation was not acknowledged).
    pub fn remove(&mut self, id: &str) {
        if let Some(seq) = self.ids.remove(id) {
            if let Some(task) = self.tasks.remove(&seq) {
                self.index.remove(seq, &task);
            }
            self.saving.remove(&seq);
            self.uncharge(seq);
        }
    }

    /// Marks a task's creation as being saved (`true`) or acknowledged (`false`); a task
    /// being saved is not claimed.
    pub fn set_saving(&mut self, id: &str, saving: bool) {
        if let Some(&seq) = self.ids.get(id) {
            if saving {
                self.saving.insert(seq);
            } else {
                self.saving.remove(&seq);
            }
        }
    }

    /// Ids of the unfinished tasks that [`expire`](Self::expire) at `now` will fail
    /// (to delete them from the durable store).
    pub fn overdue_ids(&self, now: UnixTime) -> Vec<TaskId> {
        self.index
            .live_by_deadline
            .range(..(now, 0))
            .filter_map(|&(_, seq)| self.tasks.get(&seq).map(|t| t.id.clone()))
            .collect()
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
        self.apply_update(id, upd, None, now)
    }

    /// [`update`](Self::update) by `by`, within the budget (issue 20): the task's report
    /// (`state`, `result`, `error`, [`report_bytes`]) is charged to `by` from now on, the
    /// rest stays charged to its creator. Refused when what `by` would hold more does
    /// not fit its quota (anonymous clients and agents), the anonymous share (an
    /// anonymous `by`) or the store's whole budget, as a new task would be; an update
    /// that adds nothing to anyone is always admitted. So a client cannot grow its own
    /// tasks past its quota, and an authenticated agent's report on a task an anonymous
    /// client submitted counts against the agent's quota, not the anonymous share.
    /// `Ok(None)`: unknown id.
    pub fn try_update(
        &mut self,
        id: &str,
        upd: TaskUpdate,
        by: &Holder,
        now: UnixTime,
    ) -> Result<Option<&Task>, Refusal> {
        let Some(&seq) = self.ids.get(id) else {
            return Ok(None);
        };
        if let Some(t) = self.tasks.get(&seq) {
            let field = |new: &str, old: &str| if new.is_empty() { old.len() } else { new.len() };
            let report =
                upd.state.len() + field(&upd.result, &t.result) + field(&upd.error, &t.error);
            let after = Line::split(
                t.holder.clone(),
                task_bytes(t) - report_bytes(t),
                Some(Charge::of_holder(Some(by))),
                report,
            );
            self.ledger.admit(&self.config.budget(), &seq, &after)?;
        }
        Ok(self.apply_update(id, upd, Some(by), now))
    }

    fn apply_update(
        &mut self,
        id: &str,
        upd: TaskUpdate,
        by: Option<&Holder>,
        now: UnixTime,
    ) -> Option<&Task> {
        let seq = *self.ids.get(id)?;
        let task = self.tasks.get_mut(&seq)?;
        self.index.remove(seq, task);
        task.apply_update(upd, by, now);
        self.index.add(seq, task);
        self.recharge(seq);
        self.tasks.get(&seq)
    }

    /// Up to `n` tasks whose [`time_key`](crate::shard::paging::time_key) (`created_at`,
    /// then id) is above `after`, in that order: one shard's part of a page. Cost: one
    /// pass over the shard's tasks plus O(n log n).
    pub fn page(&self, after: Option<&str>, n: usize) -> Vec<Task> {
        use crate::shard::paging::time_key;
        let mut keyed: Vec<(String, &Task)> = self
            .tasks
            .values()
            .map(|t| (time_key(t.created_at, &t.id), t))
            .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
            .collect();
        if n == 0 {
            return Vec::new();
        }
        if keyed.len() > n {
            keyed.select_nth_unstable_by(n - 1, |a, b| a.0.cmp(&b.0));
            keyed.truncate(n);
        }
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        keyed.into_iter().map(|(_, t)| t.clone()).collect()
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
        self.claim_matching(agent_id, true, skill_names, || None, now)
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
        self.claim_matching(agent_id, !agent_id.is_empty(), skill_names, || None, now)
    }

    /// [`claim_for_agent`](Self::claim_for_agent) by the heartbeat's principal `by`,
    /// kept as each claimed task's claimer ([`TaskAccess::claimed_by`]).
    pub fn claim_for_agent_by(
        &mut self,
        agent_id: &str,
        skill_names: &[String],
        by: impl FnOnce() -> Holder,
        now: UnixTime,
    ) -> Vec<Task> {
        self.claim_matching(
            agent_id,
            !agent_id.is_empty(),
            skill_names,
            || Some(by()),
            now,
        )
    }

    /// Claims the task `id` for `agent_id` if it is still `pending`; `None` if it is
    /// unknown or no longer pending. Used to resolve the pointer a targeted skill task
    /// leaves on its target's shard.
    pub fn claim_id(&mut self, id: &str, agent_id: &str, now: UnixTime) -> Option<Task> {
        self.claim_id_inner(id, agent_id, None, now)
    }

    /// [`claim_id`](Self::claim_id) by the heartbeat's principal `by` (the claimer).
    pub fn claim_id_by(
        &mut self,
        id: &str,
        agent_id: &str,
        by: &Holder,
        now: UnixTime,
    ) -> Option<Task> {
        self.claim_id_inner(id, agent_id, Some(by), now)
    }

    fn claim_id_inner(
        &mut self,
        id: &str,
        agent_id: &str,
        by: Option<&Holder>,
        now: UnixTime,
    ) -> Option<Task> {
        let seq = *self.ids.get(id)?;
        let task = self.tasks.get_mut(&seq)?;
        if !task.is_pending() || self.saving.contains(&seq) {
            return None;
        }
        self.index.remove(seq, task);
        STATE_ASSIGNED.clone_into(&mut task.state);
        agent_id.clone_into(&mut task.assigned_agent_id);
        task.access.claimed_by = by.cloned();
        task.updated_at = now;
        self.index.add(seq, task);
        let t = task.clone();
        self.recharge(seq);
        Some(t)
    }

    fn claim_matching(
        &mut self,
        agent_id: &str,
        by_target: bool,
        skill_names: &[String],
        by: impl FnOnce() -> Option<Holder>,
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
        if seqs.is_empty() {
            return Vec::new(); // (most heartbeats: no holder made)
        }
        let by = by();
        let mut claimed = Vec::with_capacity(seqs.len());
        let mut bytes = 0usize;
        for seq in seqs {
            if self.saving.contains(&seq) {
                continue;
            }
            let size = self.tasks.get(&seq).map_or(0, task_bytes);
            if !claimed.is_empty() && bytes + size > self.config.claim_bytes_max {
                break;
            }
            bytes += size;
            let Some(task) = self.tasks.get_mut(&seq) else {
                continue;
            };
            self.index.remove(seq, task);
            STATE_ASSIGNED.clone_into(&mut task.state);
            agent_id.clone_into(&mut task.assigned_agent_id);
            task.access.claimed_by = by.clone();
            task.updated_at = now;
            self.index.add(seq, task);
            claimed.push(task.clone());
            self.recharge(seq);
        }
        claimed
    }

    /// After a claim for `skills`: "none left" for them if none of them has a pending
    /// task here (one being saved counts: it becomes claimable without becoming pending
    /// again) and no task aimed at an agent is pending here by its skill (a `ClaimFor`
    /// claims those too, whatever the skills), remembered so that the next such task is
    /// told (`hub::hints`). `None`: something is pending, or the table is full.
    pub fn none_left(&mut self, skills: &[String], now: UnixTime) -> Option<NoneLeft> {
        if self.index.targeted_by_skill > 0
            || skills
                .iter()
                .any(|s| self.index.pending_by_skill.contains_key(s.as_str()))
        {
            return None;
        }
        self.index.announce.none_left(skills, now)
    }

    /// What to tell every other shard of the skills said "none left" for that have a
    /// pending task again (`hub::hints`).
    pub fn take_announcement(&mut self) -> Option<Announcement> {
        self.index.announce.take()
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
            self.recharge(seq);
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
                    self.uncharge(seq);
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
        assert_eq!(
            self.ledger.bytes(),
            self.tasks.values().map(task_bytes).sum::<usize>()
        );
        assert_eq!(self.ledger.len(), self.tasks.len());
        let anonymous = self.tasks.values().filter(|t| t.holder.is_anonymous());
        let anonymous_bytes: usize = self
            .tasks
            .values()
            .map(task_line)
            .flat_map(|l| {
                let extra = l.extra.filter(|(c, _)| c.is_anonymous()).map(|(_, b)| b);
                [(l.holder.is_anonymous()).then_some(l.bytes), extra]
            })
            .flatten()
            .sum();
        assert_eq!(
            self.ledger.anonymous(),
            (anonymous.count(), anonymous_bytes)
        );
        assert_eq!(fresh.pending_by_target, self.index.pending_by_target);
        assert_eq!(fresh.pending_by_skill, self.index.pending_by_skill);
        assert_eq!(fresh.targeted_by_skill, self.index.targeted_by_skill);
        assert_eq!(fresh.live_by_deadline, self.index.live_by_deadline);
        assert_eq!(fresh.finished_by_update, self.index.finished_by_update);
    }
}

#[cfg(test)]
mod tests;
