//! The hub's typed operations: what another shard asks the shard that holds a task (or
//! an agent's pointers), and the reply. [`Op::apply`] is the whole owner side.

use crate::hub::hints::{Announcement, NoneLeft, SkillHints};
use crate::hub::query::{tasks_part, TaskQuery, TaskRow};
use crate::hub::{
    CreateTaskError, Task, TaskId, TaskPointers, TaskStore, TaskSubmission, TaskUpdate,
};
use crate::limits::{Charge, Refusal};
use crate::limits::{Holder, Principal};
use crate::registry::{AgentRefusal, AgentStore, BindingChange, Heartbeat};
use crate::shard::ShardId;
use crate::shard::{ChangeLog, Topic};
use crate::time::UnixTime;

/// The hub state one shard owns: the tasks homed here and the pointers left for the
/// agents it owns.
pub struct Store {
    pub tasks: TaskStore,
    pub pointers: TaskPointers,
    /// Skills other shards said have no pending task (`hub::hints`).
    pub hints: SkillHints,
}

/// A heartbeat on its way to the agent's owner and back: the request, then what the
/// owner did. One block both ways, so the caller gets its heartbeat and principal back
/// without copying them (it needs the agent's id and skills for the claims elsewhere).
pub struct HeartbeatCall {
    pub hb: Heartbeat,
    pub by: Principal,
    /// The cluster's binding allowed it (`registry::bindings`).
    pub cleared: bool,
    /// The tasks claimed on the owner (filled in by the owner).
    pub claimed: Vec<Task>,
    /// The pointers left for the agent, to resolve on their shards (filled in).
    pub pointers: Vec<TaskId>,
    /// The agent's binding change to commit (filled in).
    pub change: Option<BindingChange>,
}

impl HeartbeatCall {
    pub fn new(hb: Heartbeat, by: Principal) -> Box<Self> {
        Box::new(Self {
            hb,
            by,
            cleared: false,
            claimed: Vec::new(),
            pointers: Vec::new(),
            change: None,
        })
    }
}

/// A request to the hub of one shard. Every payload is one word (see `server::msg`).
pub enum Op {
    /// Heartbeat on the agent's owner by a principal: check the agent's binding
    /// (`AgentStore::heartbeat_as`), upsert the agent within the budget of what the
    /// principal is charged to, claim the tasks local to this shard, hand back the
    /// pointers left for it. → `HeartbeatDone` (the same block, its results filled in)
    /// | `Refused` | `Forbidden` | `Busy` | `AskCluster`.
    Heartbeat(Box<HeartbeatCall>),
    /// Store a new pending task under this id by a principal (see
    /// `TaskStore::create_for`: charged to the principal, kept as the task's creator;
    /// `(id, task, by)`), not claimable until `Saved`. → `Task` | `InUse` (the id is
    /// taken: the submission comes back to be sent under another) | `Refused`.
    Create(Box<(TaskId, TaskSubmission, Principal)>),
    /// The store acknowledged the task's creation: make it claimable. → `Done`.
    Saved(Box<String>),
    /// The store did not acknowledge the task's creation: drop it. → `Done`.
    Remove(Box<String>),
    /// Put a task back as it was (a change the store did not acknowledge). → `Done`.
    Restore(Box<Task>),
    /// Put claimed tasks back to pending (their claim was not made durable). Sent into
    /// reserved room (`shard::reserve`): never refused. → `Done`.
    Unclaim(Box<Vec<Task>>),
    /// Leave a pointer to a task living elsewhere, for its target agent (owner:
    /// `shard_of(target)`); `(target, task id, deadline)`. → `Done` (a full table drops
    /// the pointer with a warning: the task stays claimable through its skill).
    Pointer(Box<(String, TaskId, UnixTime)>),
    /// One task. → `Task`.
    Get(Box<String>),
    /// Update a task by a principal (`Task::updatable_by`) within the budget (see
    /// `TaskStore::try_update`); `(id, update, by)`. → `Updated` | `NotFound` |
    /// `Forbidden` | `Refused`.
    Update(Box<(String, TaskUpdate, Principal)>),
    /// Update a task on behalf of an agent (`--require-agent-auth`); `(id, update,
    /// by)`, the agent being `by`'s token subject. → `Updated` | `NotFound` | `Refused`
    /// | `Forbidden` (assigned to someone else).
    UpdateAs(Box<(String, TaskUpdate, Principal)>),
    /// Every task of the shard. → `Tasks`.
    List,
    /// Up to `limit + 1` tasks after the cursor, by `(created_at, id)`. → `Tasks`.
    ListPage(Box<crate::shard::paging::PageReq>),
    /// Claim these ids (pointers) for the agent if still pending; `(agent, ids,
    /// claimer)`: the heartbeat's principal, which passed the agent's binding check.
    /// → `Tasks`.
    ClaimIds(Box<(String, Vec<TaskId>, Holder)>),
    /// Claim every local pending task matching the agent; `(agent, skills, claimer,
    /// whether to say "none left" when nothing is pending for them: `hub::hints`).
    /// → `ClaimedFor`.
    ClaimFor(Box<(String, Vec<String>, Holder, bool)>),
    /// Changes nothing: its reply says that everything the asking shard sent this shard
    /// before it has been applied (messages from one shard are read in order). → `Done`.
    Sync,
    /// Tell (no reply used): shard `from` has pending tasks again, which it had said
    /// "none left" for (`hub::hints`).
    Pending(Box<(ShardId, Announcement)>),
    /// The shard's part of a filtered page of tasks (`hub::query`). → `Part`.
    Query(Box<TaskQuery>),
    /// How many tasks of each state the shard holds. → `StateCounts`.
    StateCounts,
}

/// The hub owner's answer to an [`Op`].
pub enum Reply {
    Done,
    NotFound,
    InUse(Box<TaskSubmission>),
    /// Refused (403): the agent is bound to another principal, or the task belongs to
    /// another; the reason.
    Forbidden(Box<String>),
    /// A budget refused it: the client's quota, the anonymous share, the whole store
    /// (of tasks for `Create` and updates, of agents for `Heartbeat`).
    Refused(Box<Refusal>),
    /// The heartbeat done: its block, with the claimed tasks, the pointers to resolve
    /// and the agent's binding change to commit filled in.
    HeartbeatDone(Box<HeartbeatCall>),
    /// A change of the agent's binding is being saved: retry.
    Busy(Box<HeartbeatCall>),
    /// In a cluster: check the agent's binding there first (`registry::bindings`), then
    /// send the heartbeat (handed back) again with it checked. Nothing changed.
    AskCluster(Box<HeartbeatCall>),
    Task(Option<Box<Task>>),
    Tasks(Box<Vec<Task>>),
    /// A `ClaimFor`'s tasks, and whether none of the skills asked for has a pending task
    /// left here (`hub::hints`).
    ClaimedFor(Box<(Vec<Task>, Option<NoneLeft>)>),
    /// `(before, after)` of an update.
    Updated(Box<(Task, Task)>),
    Part(Box<crate::shard::paging::Part<TaskRow>>),
    /// Tasks by state.
    StateCounts(Box<std::collections::BTreeMap<String, u64>>),
}

impl Op {
    /// Applies the operation to the shard's hub state (and, for a heartbeat, to its
    /// agent registry: the agent and its targeted tasks share an owner); what changed is
    /// noted in `changes` (a heartbeat only when the agent is new or comes back to
    /// `active`: at 10,000 agents, steady heartbeats would be the whole log).
    pub fn apply(
        self,
        store: &mut Store,
        agents: &mut AgentStore,
        now: UnixTime,
        changes: &mut ChangeLog,
    ) -> Reply {
        let task_id = match &self {
            Op::Create(b) => Some(b.0.clone()),
            Op::Saved(id) | Op::Remove(id) => Some((**id).clone()),
            Op::Restore(t) => Some(t.id.clone()),
            Op::Unclaim(_) => Some(String::new()),
            Op::Update(b) => Some(b.0.clone()),
            Op::UpdateAs(b) => Some(b.0.clone()),
            Op::ClaimIds(_) | Op::ClaimFor(_) => Some(String::new()),
            _ => None,
        };
        let reply = self.apply_inner(store, agents, now, changes);
        let changed = match &reply {
            Reply::Done | Reply::Updated(_) => true,
            Reply::Task(t) => t.is_some(),
            Reply::Tasks(t) => !t.is_empty(),
            Reply::ClaimedFor(b) => !b.0.is_empty(),
            _ => false,
        };
        if let (true, Some(id)) = (changed, task_id) {
            changes.push(Topic::Task, &id);
        }
        reply
    }

    fn apply_inner(
        self,
        store: &mut Store,
        agents: &mut AgentStore,
        now: UnixTime,
        changes: &mut ChangeLog,
    ) -> Reply {
        match self {
            Op::Heartbeat(mut b) => {
                let call = &mut *b;
                let (hb, by) = (&call.hb, &call.by);
                let comes_back = agents
                    .get(&hb.agent_id)
                    .is_none_or(|r| r.health != crate::registry::Health::Active);
                let change = match agents.heartbeat_as_in(hb, by, now, call.cleared) {
                    Ok(change) => {
                        if comes_back || change.is_some() {
                            changes.push(Topic::Agent, &hb.agent_id);
                        }
                        change
                    }
                    Err(AgentRefusal::Budget(r)) => return Reply::Refused(Box::new(r)),
                    Err(AgentRefusal::Bound(why)) => return Reply::Forbidden(Box::new(why)),
                    // The payload goes back for the retry (nothing copied).
                    Err(AgentRefusal::Busy) => return Reply::Busy(b),
                    Err(AgentRefusal::AskCluster) => return Reply::AskCluster(b),
                };
                call.claimed = store.tasks.claim_for_agent_by(
                    &hb.agent_id,
                    &hb.skill_names,
                    || by.holder(),
                    now,
                );
                call.pointers = if hb.agent_id.is_empty() {
                    Vec::new()
                } else {
                    store.pointers.take(&hb.agent_id)
                };
                call.change = change;
                Reply::HeartbeatDone(b)
            }
            Op::Create(b) => {
                let (id, sub, by) = *b;
                if store.tasks.get(&id).is_some() {
                    return Reply::InUse(Box::new(sub));
                }
                match store.tasks.create_for(
                    sub,
                    id.clone(),
                    &Charge::of(&by),
                    Some(by.holder()),
                    now,
                ) {
                    Ok(t) => {
                        let t = Box::new(t.clone());
                        store.tasks.set_saving(&id, true);
                        Reply::Task(Some(t))
                    }
                    // Checked above: the caller answers it as an internal error.
                    Err(CreateTaskError::DuplicateId) => Reply::NotFound,
                    Err(CreateTaskError::Refused(r)) => Reply::Refused(Box::new(r)),
                }
            }
            Op::Pointer(b) => {
                let (agent, id, deadline) = *b;
                if !store.pointers.add(agent, id, deadline) {
                    tracing::warn!("task pointer table full; pointer dropped");
                }
                Reply::Done
            }
            Op::Get(id) => Reply::Task(store.tasks.get(&id).cloned().map(Box::new)),
            Op::Saved(id) => {
                store.tasks.set_saving(&id, false);
                Reply::Done
            }
            Op::Remove(id) => {
                store.tasks.remove(&id);
                Reply::Done
            }
            Op::Restore(t) => {
                store.tasks.replace(*t);
                Reply::Done
            }
            Op::Unclaim(tasks) => {
                for mut t in *tasks {
                    crate::hub::STATE_PENDING.clone_into(&mut t.state);
                    t.assigned_agent_id.clear();
                    t.access.claimed_by = None;
                    store.tasks.replace(t);
                }
                Reply::Done
            }
            Op::Update(b) => {
                let (id, upd, by) = *b;
                let Some(before) = store.tasks.get(&id).cloned() else {
                    return Reply::NotFound;
                };
                if let Err(why) = before.updatable_by(&by) {
                    return Reply::Forbidden(Box::new(why));
                }
                match store.tasks.try_update(&id, upd, &by.holder(), now) {
                    Ok(Some(after)) => Reply::Updated(Box::new((before, after.clone()))),
                    Ok(None) => Reply::NotFound,
                    Err(r) => Reply::Refused(Box::new(r)),
                }
            }
            Op::UpdateAs(b) => {
                let (id, upd, by) = *b;
                let agent = by.peer.as_deref().unwrap_or_default();
                match store.tasks.get(&id) {
                    None => Reply::NotFound,
                    Some(t) if t.assigned_agent_id != agent => Reply::Forbidden(Box::new(format!(
                        "task is assigned to `{}`: an agent may only report its own tasks",
                        t.assigned_agent_id
                    ))),
                    Some(t) => {
                        let before = t.clone();
                        match store.tasks.try_update(&id, upd, &by.holder(), now) {
                            Ok(Some(after)) => Reply::Updated(Box::new((before, after.clone()))),
                            Ok(None) => Reply::NotFound,
                            Err(r) => Reply::Refused(Box::new(r)),
                        }
                    }
                }
            }
            Op::List => Reply::Tasks(Box::new(store.tasks.list().cloned().collect())),
            Op::ListPage(p) => Reply::Tasks(Box::new(
                store
                    .tasks
                    .page(p.after.as_deref(), p.limit.saturating_add(1)),
            )),
            Op::ClaimIds(b) => {
                let (agent, ids, by) = *b;
                let claimed: Vec<Task> = ids
                    .iter()
                    .filter_map(|id| store.tasks.claim_id_by(id, &agent, &by, now))
                    .collect();
                Reply::Tasks(Box::new(claimed))
            }
            Op::ClaimFor(b) => {
                let (agent, skills, by, hint) = *b;
                let tasks = store.tasks.claim_for_agent_by(&agent, &skills, || by, now);
                let none = if hint {
                    store.tasks.none_left(&skills, now)
                } else {
                    None
                };
                Reply::ClaimedFor(Box::new((tasks, none)))
            }
            Op::Sync => Reply::Done,
            Op::Pending(b) => {
                let (from, what) = *b;
                store.hints.pending(from, &what);
                Reply::Done
            }
            Op::Query(q) => Reply::Part(Box::new(tasks_part(store.tasks.list(), &q))),
            Op::StateCounts => {
                let mut counts = std::collections::BTreeMap::new();
                for t in store.tasks.list() {
                    *counts.entry(t.state.clone()).or_default() += 1;
                }
                Reply::StateCounts(Box::new(counts))
            }
        }
    }
}

/// The expiry job on one shard (every `EXPIRE_INTERVAL`): unfinished tasks past their
/// TTL become `failed`, finished ones past retention are dropped, stale pointers swept.
/// Returns the deletions to make durable (failed tasks live in memory only); the change
/// is noted once in `changes`.
pub fn expire(
    store: &mut Store,
    now: UnixTime,
    changes: &mut ChangeLog,
) -> Vec<chatixia_store::Mutation> {
    let overdue = store.tasks.overdue_ids(now);
    let out = store.tasks.expire(now);
    store.pointers.sweep(now);
    if out.expired + out.removed > 0 {
        changes.push(Topic::Task, "");
    }
    overdue
        .into_iter()
        .map(chatixia_store::Mutation::DeleteTask)
        .collect()
}
