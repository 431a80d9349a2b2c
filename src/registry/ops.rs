//! The registry's typed operations: what another shard asks the owner of an agent
//! (`shard_of(agent_id)`), and the owner's reply. [`Op::apply`] is the whole owner side;
//! it notes its own changes in the shard's change log.

use crate::limits::{Principal, Refusal};
use crate::registry::query::{agents_part, AgentQuery, AgentRow};
use crate::registry::{
    AgentInfo, AgentRecord, AgentRefusal, AgentStore, BindingChange, DeleteStart, Health,
    TopologyNode,
};
use crate::shard::paging::{PageReq, Part};
use crate::shard::{ChangeLog, Topic};
use crate::time::UnixTime;

/// A request to the registry of one shard. Every payload is one word (a box), so the
/// shard message stays three words (see `server::msg`).
pub enum Op {
    /// Upsert an agent (owner: `shard_of(agent_id)`). → `Done` | `Full`.
    Upsert(Box<AgentInfo>),
    /// Upsert an agent by a principal: its binding (`AgentStore::upsert_as_in`; the
    /// `bool`: the cluster's binding allowed it, `registry::bindings`), then the quota
    /// and anonymous share of what it is charged to (`AgentStore::upsert_for`).
    /// → `Done` | `Bound` (a binding change to commit) | `Refused` | `Forbidden` | `Busy`
    /// | `AskCluster`.
    UpsertFor(Box<(AgentInfo, Principal, bool)>),
    /// One agent. → `Agent`.
    Get(Box<String>),
    /// Start removing an agent (`AgentStore::delete_begin`). → `Done` (removed: it had no
    /// binding) | `Deleting` (commit the binding's deletion, then `DeleteFinish`; with the
    /// binding, for the cluster's) | `NotFound` | `Busy`.
    DeleteBegin(Box<String>),
    /// The binding's deletion is durable: remove the agent. → `Done`.
    DeleteFinish(Box<String>),
    /// A binding change (or deletion) was acknowledged, or a deletion refused: the agent
    /// may change again. → `Done`.
    BindingSaved(Box<String>),
    /// A binding change was refused by the durable store: undo it. → `Done`.
    BindingUndo(Box<BindingChange>),
    /// Every agent of the shard. → `Agents`.
    List,
    /// Up to `limit + 1` agents after the cursor, by `agent_id`. → `Agents`.
    ListPage(Box<PageReq>),
    /// The shard's best active agent with this skill. → `Agent`.
    RouteFirst(Box<String>),
    /// The shard's topology nodes. → `Nodes`.
    TopologyNodes,
    /// How many agents of each health the shard holds. → `Health`.
    HealthCounts,
    /// The shard's part of a filtered, sorted page (`registry::query`). → `Part`.
    Query(Box<AgentQuery>),
}

/// The registry owner's answer to an [`Op`].
pub enum Reply {
    Done,
    NotFound,
    Full,
    /// A budget refused the agent (the client's quota, the anonymous share, the store).
    Refused(Box<Refusal>),
    /// The agent is bound to another principal (403); the reason.
    Forbidden(Box<String>),
    /// Done, and the agent's binding changed: commit it (the agent is flagged saving).
    Bound(Box<BindingChange>),
    /// A change of the agent's binding is being saved: retry.
    Busy,
    /// In a cluster: check the agent's binding there first (`registry::bindings`), then
    /// ask again with it checked. Nothing changed.
    AskCluster,
    /// Commit the deletion of the agent's binding (it was bound to this), then
    /// `DeleteFinish`.
    Deleting(Option<Box<crate::limits::Owner>>),
    Agent(Option<Box<AgentRecord>>),
    Agents(Box<Vec<AgentRecord>>),
    Nodes(Box<Vec<TopologyNode>>),
    /// Agents by health: `[active, stale, offline]`.
    Health(Box<[u64; 3]>),
    Part(Box<Part<AgentRow>>),
}

impl Op {
    /// Applies the operation to the shard's agent store; a change to an agent is noted
    /// in `changes`.
    pub fn apply(self, store: &mut AgentStore, now: UnixTime, changes: &mut ChangeLog) -> Reply {
        match self {
            Op::Upsert(info) => {
                let id = info.agent_id.clone();
                match store.upsert(*info, now) {
                    Ok(_) => {
                        changes.push(Topic::Agent, &id);
                        Reply::Done
                    }
                    Err(_) => Reply::Full,
                }
            }
            Op::UpsertFor(b) => {
                let (info, by, cleared) = *b;
                let id = info.agent_id.clone();
                match store.upsert_as_in(info, &by, now, cleared) {
                    Ok(None) => {
                        changes.push(Topic::Agent, &id);
                        Reply::Done
                    }
                    Ok(Some(change)) => {
                        changes.push(Topic::Agent, &id);
                        Reply::Bound(Box::new(change))
                    }
                    Err(AgentRefusal::Budget(r)) => Reply::Refused(Box::new(r)),
                    Err(AgentRefusal::Bound(why)) => Reply::Forbidden(Box::new(why)),
                    Err(AgentRefusal::Busy) => Reply::Busy,
                    Err(AgentRefusal::AskCluster) => Reply::AskCluster,
                }
            }
            Op::Get(id) => Reply::Agent(store.get(&id).cloned().map(Box::new)),
            Op::DeleteBegin(id) => match store.delete_begin(&id) {
                DeleteStart::Removed => {
                    changes.push(Topic::Agent, &id);
                    Reply::Done
                }
                // In a cluster, with the binding: the cluster's goes too while it is this.
                DeleteStart::Deleting => Reply::Deleting(
                    store
                        .binding(&id)
                        .filter(|_| store.cluster_bindings())
                        .cloned()
                        .map(Box::new),
                ),
                DeleteStart::NotFound => Reply::NotFound,
                DeleteStart::Busy => Reply::Busy,
            },
            Op::DeleteFinish(id) => {
                store.delete_finish(&id);
                changes.push(Topic::Agent, &id);
                Reply::Done
            }
            Op::BindingSaved(id) => {
                store.binding_saved(&id);
                Reply::Done
            }
            Op::BindingUndo(change) => {
                store.binding_undo(&change);
                if change.created {
                    changes.push(Topic::Agent, &change.agent_id);
                }
                Reply::Done
            }
            Op::List => Reply::Agents(Box::new(store.list().cloned().collect())),
            Op::ListPage(p) => Reply::Agents(Box::new(
                store.page(p.after.as_deref(), p.limit.saturating_add(1)),
            )),
            Op::RouteFirst(skill) => Reply::Agent(store.route_first(&skill).cloned().map(Box::new)),
            Op::TopologyNodes => Reply::Nodes(Box::new(
                store.list().map(TopologyNode::from_record).collect(),
            )),
            Op::HealthCounts => {
                let mut c = [0u64; 3];
                for r in store.list() {
                    c[match r.health {
                        Health::Active => 0,
                        Health::Stale => 1,
                        Health::Offline => 2,
                    }] += 1;
                }
                Reply::Health(Box::new(c))
            }
            Op::Query(q) => Reply::Part(Box::new(agents_part(store.list(), &q))),
        }
    }
}
