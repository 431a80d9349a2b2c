//! The hub's typed operations: what another shard asks the shard that holds a task (or
//! an agent's pointers), and the reply. [`Op::apply`] is the whole owner side.

use crate::hub::{
    CreateTaskError, Task, TaskId, TaskPointers, TaskStore, TaskSubmission, TaskUpdate,
};
use crate::limits::{Principal, Refusal};
use crate::registry::{AgentStore, Heartbeat};
use crate::time::UnixTime;

/// The hub state one shard owns: the tasks homed here and the pointers left for the
/// agents it owns.
pub struct Store {
    pub tasks: TaskStore,
    pub pointers: TaskPointers,
}

/// A request to the hub of one shard. Every payload is one word (see `server::msg`).
pub enum Op {
    /// Heartbeat on the agent's owner: upsert the agent, claim the tasks local to this
    /// shard, hand back the pointers left for it. → `HeartbeatDone`.
    /// The sender's agent budget applies (`Heartbeat::client`, see
    /// `AgentStore::heartbeat_for`). → also `Refused`.
    Heartbeat(Box<Heartbeat>),
    /// Store a new pending task under this id for a client (see
    /// `TaskStore::create_for`; `(id, task, client)`), not claimable until `Saved`.
    /// → `Task` | `InUse` | `Refused`.
    Create(Box<(TaskId, TaskSubmission, Principal)>),
    /// The store acknowledged the task's creation: make it claimable. → `Done`.
    Saved(Box<String>),
    /// The store did not acknowledge the task's creation: drop it. → `Done`.
    Remove(Box<String>),
    /// Put a task back as it was (a change the store did not acknowledge). → `Done`.
    Restore(Box<Task>),
    /// Leave a pointer to a task living elsewhere, for its target agent (owner:
    /// `shard_of(target)`); `(target, task id, deadline)`. → `Done` (a full table drops
    /// the pointer with a warning: the task stays claimable through its skill).
    Pointer(Box<(String, TaskId, UnixTime)>),
    /// One task. → `Task`.
    Get(Box<String>),
    /// Update a task (within the budget, see `TaskStore::try_update`). → `Updated` |
    /// `NotFound` | `Refused`.
    Update(Box<(String, TaskUpdate)>),
    /// Update a task on behalf of an agent (`--require-agent-auth`); `(id, update,
    /// agent)`. → `Updated` | `NotFound` | `Refused` | `Forbidden` (assigned to someone
    /// else).
    UpdateAs(Box<(String, TaskUpdate, String)>),
    /// Every task of the shard. → `Tasks`.
    List,
    /// Up to `limit + 1` tasks after the cursor, by `(created_at, id)`. → `Tasks`.
    ListPage(Box<crate::server::paging::PageReq>),
    /// Claim these ids (pointers) for the agent if still pending; `(agent, ids)`.
    /// → `Tasks`.
    ClaimIds(Box<(String, Vec<TaskId>)>),
    /// Claim every local pending task matching the agent; `(agent, skills)`. → `Tasks`.
    ClaimFor(Box<(String, Vec<String>)>),
}

/// The hub owner's answer to an [`Op`].
pub enum Reply {
    Done,
    NotFound,
    InUse,
    /// The task is assigned to this other agent.
    Forbidden(Box<String>),
    /// A budget refused it: the client's quota, the anonymous share, the whole store
    /// (of tasks for `Create` and updates, of agents for `Heartbeat`).
    Refused(Box<Refusal>),
    /// `(claimed tasks, pointers to resolve)`.
    HeartbeatDone(Box<(Vec<Task>, Vec<TaskId>)>),
    Task(Option<Box<Task>>),
    Tasks(Box<Vec<Task>>),
    /// `(before, after)` of an update.
    Updated(Box<(Task, Task)>),
}

impl Op {
    /// Applies the operation to the shard's hub state (and, for a heartbeat, to its
    /// agent registry: the agent and its targeted tasks share an owner).
    pub fn apply(self, store: &mut Store, agents: &mut AgentStore, now: UnixTime) -> Reply {
        match self {
            Op::Heartbeat(b) => {
                let hb = &*b;
                if let Err(r) = agents.heartbeat_for(hb, &hb.client, now) {
                    return Reply::Refused(Box::new(r));
                }
                let claimed = store
                    .tasks
                    .claim_for_agent(&hb.agent_id, &hb.skill_names, now);
                let pointers = if hb.agent_id.is_empty() {
                    Vec::new()
                } else {
                    store.pointers.take(&hb.agent_id)
                };
                Reply::HeartbeatDone(Box::new((claimed, pointers)))
            }
            Op::Create(b) => {
                let (id, sub, client) = *b;
                match store.tasks.create_for(sub, id.clone(), &client, now) {
                    Ok(t) => {
                        let t = Box::new(t.clone());
                        store.tasks.set_saving(&id, true);
                        Reply::Task(Some(t))
                    }
                    Err(CreateTaskError::DuplicateId) => Reply::InUse,
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
            Op::Update(b) => {
                let (id, upd) = *b;
                let Some(before) = store.tasks.get(&id).cloned() else {
                    return Reply::NotFound;
                };
                match store.tasks.try_update(&id, upd, now) {
                    Ok(Some(after)) => Reply::Updated(Box::new((before, after.clone()))),
                    Ok(None) => Reply::NotFound,
                    Err(r) => Reply::Refused(Box::new(r)),
                }
            }
            Op::UpdateAs(b) => {
                let (id, upd, agent) = *b;
                match store.tasks.get(&id) {
                    None => Reply::NotFound,
                    Some(t) if t.assigned_agent_id != agent => {
                        Reply::Forbidden(Box::new(t.assigned_agent_id.clone()))
                    }
                    Some(t) => {
                        let before = t.clone();
                        match store.tasks.try_update(&id, upd, now) {
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
                let (agent, ids) = *b;
                let claimed: Vec<Task> = ids
                    .iter()
                    .filter_map(|id| store.tasks.claim_id(id, &agent, now))
                    .collect();
                Reply::Tasks(Box::new(claimed))
            }
            Op::ClaimFor(b) => {
                let (agent, skills) = *b;
                Reply::Tasks(Box::new(store.tasks.claim_for_agent(&agent, &skills, now)))
            }
        }
    }
}
