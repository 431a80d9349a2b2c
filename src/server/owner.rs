//! The owner side of every message: a shard applying a request to the state it owns.
//! Synchronous and local: each arm touches one store of this shard and answers at once.

use std::collections::HashMap;
use std::time::Duration;

use crate::hub::{CreateTaskError, Task, TaskId, TopologyNode};
use crate::pairing::{CodeInsertError, CreateError, IndexInsertError, Issuer};
use crate::server::{Msg, ShardCtx};
use crate::time::UnixTime;

/// Pointers to targeted skill tasks: a task with both a target and a skill lives on the
/// skill's shard; a pointer on the target's shard lets the target's heartbeat find it.
/// Each pointer expires with its task's deadline (the task fails then anyway).
#[derive(Default)]
pub struct TaskPointers {
    by_agent: HashMap<String, Vec<(TaskId, UnixTime)>>,
    len: usize,
}

impl TaskPointers {
    /// Most pointers one shard holds (one per targeted skill task whose target lives
    /// here; tasks are capped per shard by `TaskStoreConfig::tasks_max`, the same
    /// number). Beyond it a pointer is dropped: the task stays claimable through its
    /// skill, only its target's heartbeat no longer finds it.
    pub const POINTERS_MAX: usize = 65_536;

    /// Adds a pointer; `false` when full.
    pub fn add(&mut self, agent: String, id: TaskId, deadline: UnixTime) -> bool {
        if self.len >= Self::POINTERS_MAX {
            return false;
        }
        self.by_agent.entry(agent).or_default().push((id, deadline));
        self.len += 1;
        true
    }

    /// Removes and returns the agent's pointers.
    pub fn take(&mut self, agent: &str) -> Vec<TaskId> {
        match self.by_agent.remove(agent) {
            Some(v) => {
                self.len -= v.len();
                v.into_iter().map(|(id, _)| id).collect()
            }
            None => Vec::new(),
        }
    }

    /// Puts back pointers whose home shard could not be asked (mailbox full).
    pub fn restore(&mut self, agent: &str, ids: Vec<TaskId>, deadline: UnixTime) {
        for id in ids {
            self.add(agent.to_owned(), id, deadline);
        }
    }

    /// Drops pointers past their task's deadline.
    pub fn sweep(&mut self, now: UnixTime) -> usize {
        let mut removed = 0;
        self.by_agent.retain(|_, v| {
            let before = v.len();
            v.retain(|&(_, deadline)| now <= deadline);
            removed += before - v.len();
            !v.is_empty()
        });
        self.len -= removed;
        removed
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Peer ids authorized by an approved pairing entry, for the peer ids this shard owns,
/// with a count (peer ids are 24-bit random and may repeat across entries; revoking one
/// entry must not deauthorize another with the same peer id) and the mesh the entry
/// inherited from its inviter. Also remembers recently revoked peer ids, so that a JWT
/// issued before the revocation no longer opens `/ws`.
#[derive(Default)]
pub struct PeerAuthz {
    peers: HashMap<String, (u32, Option<Box<str>>)>,
    revoked: HashMap<String, UnixTime>,
}

/// How long a revocation is remembered: past this, every JWT issued before it has
/// expired (300 s lifetime + 60 s leeway), so the record is no longer needed.
pub const REVOCATION_MEMORY: Duration = Duration::from_secs(360);

impl PeerAuthz {
    /// Most peer ids one shard tracks: approvals are bounded by the pairing stores'
    /// `entries_max` over all shards, so this is a backstop.
    pub const PEERS_MAX: usize = 100_000;
    /// Most revocations remembered at once; past it the oldest are forgotten early
    /// (their JWTs then still expire within 6 minutes).
    pub const REVOKED_MAX: usize = 100_000;

    pub fn add(&mut self, peer: &str, mesh: Option<&str>) -> bool {
        if let Some((n, _)) = self.peers.get_mut(peer) {
            *n = n.saturating_add(1);
            return true;
        }
        if self.peers.len() >= Self::PEERS_MAX {
            return false;
        }
        self.revoked.remove(peer);
        self.peers
            .insert(peer.to_owned(), (1, mesh.map(Into::into)));
        true
    }

    /// One approval of `peer` was revoked; returns true when none is left.
    pub fn remove(&mut self, peer: &str, now: UnixTime) -> bool {
        let Some((n, _)) = self.peers.get_mut(peer) else {
            return false;
        };
        *n -= 1;
        if *n > 0 {
            return false;
        }
        self.peers.remove(peer);
        if self.revoked.len() >= Self::REVOKED_MAX {
            if let Some(oldest) = self
                .revoked
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| k.clone())
            {
                self.revoked.remove(&oldest);
            }
        }
        self.revoked.insert(peer.to_owned(), now);
        true
    }

    pub fn contains(&self, peer: &str) -> bool {
        self.peers.contains_key(peer)
    }

    /// The mesh of an authorized peer (`Some(None)`: the default mesh).
    pub fn mesh(&self, peer: &str) -> Option<Option<&str>> {
        self.peers.get(peer).map(|(_, m)| m.as_deref())
    }

    /// Whether `peer` lost its last approval recently (and has none now).
    pub fn is_revoked(&self, peer: &str) -> bool {
        self.revoked.contains_key(peer)
    }

    /// Forgets revocations older than [`REVOCATION_MEMORY`].
    pub fn sweep(&mut self, now: UnixTime) {
        let keep_after = now.saturating_sub(REVOCATION_MEMORY);
        self.revoked.retain(|_, t| *t > keep_after);
    }
}

fn ok_or(b: bool) -> Msg {
    if b {
        Msg::Ok
    } else {
        Msg::NotFound
    }
}

/// Applies `msg` to this shard's state; the reply of an ask.
pub fn handle(ctx: &ShardCtx, msg: Msg) -> Option<Msg> {
    let st = &ctx.state;
    let now = ctx.now();
    let reply = match msg {
        // ---- registry ----
        Msg::AgentUpsert(info) => match st.agents.borrow_mut().upsert(*info, now) {
            Ok(_) => Msg::Ok,
            Err(_) => Msg::Full,
        },
        Msg::AgentGet(id) => Msg::Agent(st.agents.borrow().get(&id).cloned().map(Box::new)),
        Msg::AgentDelete(id) => ok_or(st.agents.borrow_mut().remove(&id).is_some()),
        Msg::AgentList => Msg::Agents(Box::new(st.agents.borrow().list().cloned().collect())),
        Msg::RouteFirst(skill) => Msg::Agent(
            st.agents
                .borrow()
                .route_first(&skill)
                .cloned()
                .map(Box::new),
        ),
        Msg::TopologyNodes => Msg::Nodes(Box::new(
            st.agents
                .borrow()
                .list()
                .map(TopologyNode::from_record)
                .collect(),
        )),
        Msg::Heartbeat(hb) => {
            if st.agents.borrow_mut().heartbeat(&hb, now).is_err() {
                Msg::Full
            } else {
                let claimed =
                    st.tasks
                        .borrow_mut()
                        .claim_for_agent(&hb.agent_id, &hb.skill_names, now);
                let pointers = if hb.agent_id.is_empty() {
                    Vec::new()
                } else {
                    st.pointers.borrow_mut().take(&hb.agent_id)
                };
                Msg::HeartbeatDone(Box::new((claimed, pointers)))
            }
        }

        // ---- hub ----
        Msg::TaskCreate(b) => {
            let (id, sub) = *b;
            match st.tasks.borrow_mut().create(sub, id, now) {
                Ok(_) => Msg::Ok,
                Err(CreateTaskError::DuplicateId) => Msg::InUse,
                Err(CreateTaskError::Full { .. }) => Msg::Full,
            }
        }
        Msg::TaskPointer(b) => {
            let (agent, id, deadline) = *b;
            if !st.pointers.borrow_mut().add(agent, id, deadline) {
                tracing::warn!("task pointer table full; pointer dropped");
            }
            Msg::Ok
        }
        Msg::TaskGet(id) => Msg::Task(st.tasks.borrow().get(&id).cloned().map(Box::new)),
        Msg::TaskUpdate(b) => {
            let (id, upd) = *b;
            ok_or(st.tasks.borrow_mut().update(&id, upd, now).is_some())
        }
        Msg::TaskList => Msg::Tasks(Box::new(st.tasks.borrow().list().cloned().collect())),
        Msg::ClaimIds(b) => {
            let (agent, ids) = *b;
            let mut tasks = st.tasks.borrow_mut();
            let claimed: Vec<Task> = ids
                .iter()
                .filter_map(|id| tasks.claim_id(id, &agent, now))
                .collect();
            Msg::Tasks(Box::new(claimed))
        }
        Msg::ClaimFor(b) => {
            let (agent, skills) = *b;
            Msg::Tasks(Box::new(
                st.tasks.borrow_mut().claim_for_agent(&agent, &skills, now),
            ))
        }

        // ---- auth ----
        Msg::TokenLookup(t) => Msg::Grant(st.tokens.borrow().lookup(&t).cloned().map(Box::new)),
        Msg::TokenInsert(b) => {
            let (token, grant) = *b;
            match st.tokens.borrow_mut().insert(token, grant) {
                Ok(()) => Msg::Ok,
                Err(IndexInsertError::InUse) => Msg::InUse,
                Err(IndexInsertError::Full) => Msg::Full,
            }
        }
        Msg::TokenRemove(t) => ok_or(st.tokens.borrow_mut().remove(&t).is_some()),
        Msg::PeerAuthorize(b) => {
            let (p, mesh) = *b;
            if st.authorized.borrow_mut().add(&p, mesh.as_deref()) {
                // A live connection of that peer (on this shard too) is authorized now.
                if !ctx.config.api_keys.has_peer_id(&p) {
                    ctx.ws.set_authorized(&p, mesh.as_deref());
                }
                Msg::Ok
            } else {
                Msg::Full
            }
        }
        Msg::PeerDeauthorize(p) => {
            if st.authorized.borrow_mut().remove(&p, now) {
                // Its live signaling connections are on this shard too: close them now.
                ctx.ws
                    .close_peer(&p, crate::ws::codec::close_code::REVOKED, "pairing revoked");
            }
            Msg::Ok
        }
        Msg::PeerIsAuthorized(p) => Msg::Bool(st.authorized.borrow().contains(&p)),

        // ---- pairing ----
        Msg::CodeInsert(b) => {
            let (code, issuer) = *b;
            match st.codes.borrow_mut().insert(code, issuer, now) {
                Ok(_) => Msg::Ok,
                Err(CodeInsertError::InUse) => Msg::InUse,
                Err(CodeInsertError::Full) => Msg::Full,
            }
        }
        Msg::CodeRedeem(code) => Msg::Issuer(
            st.codes
                .borrow_mut()
                .redeem(code, now)
                .map(Box::<Issuer>::new),
        ),
        Msg::RateCheck(ip) => Msg::Bool(st.rate.borrow_mut().check_and_count(*ip, now)),
        Msg::EntryCreate(b) => {
            let (id, peer_id, name, issuer) = *b;
            match st
                .entries
                .borrow_mut()
                .create(id, peer_id, &name, issuer, now)
            {
                Ok(e) => Msg::Entry(Box::new(e.clone())),
                Err(CreateError::IdInUse) => Msg::InUse,
                Err(CreateError::Full) => Msg::Full,
            }
        }
        Msg::EntryApprove(b) => {
            let (id, bytes) = *b;
            // The token's randomness was drawn by the requesting shard; hand exactly it
            // to the store.
            let mut rng = |buf: &mut [u8]| {
                let n = buf.len().min(bytes.len());
                buf[..n].copy_from_slice(&bytes[..n]);
            };
            match st
                .entries
                .borrow_mut()
                .approve(&id.to_string(), &mut rng, now)
            {
                Ok(e) => Msg::Entry(Box::new(e.clone())),
                Err(_) => Msg::NotFound,
            }
        }
        Msg::EntryReject(id) => match st.entries.borrow_mut().reject(&id.to_string(), now) {
            Ok(e) => Msg::Entry(Box::new(e.clone())),
            Err(_) => Msg::NotFound,
        },
        Msg::EntryWithdraw(id) => match st
            .entries
            .borrow_mut()
            .withdraw_approval(&id.to_string(), now)
        {
            Ok(e) => Msg::Entry(Box::new(e.clone())),
            Err(_) => Msg::NotFound,
        },
        Msg::EntryRevoke(id) => match st.entries.borrow_mut().revoke(&id.to_string(), now) {
            Ok(e) => Msg::Entry(Box::new(e.clone())),
            Err(_) => Msg::NotFound,
        },
        Msg::EntryList(pending_only) => {
            let entries = st.entries.borrow();
            let list = if pending_only {
                entries.list_pending()
            } else {
                entries.list_all()
            };
            Msg::Entries(Box::new(list.into_iter().cloned().collect()))
        }

        // Replies and messages handled by the caller are never requests here.
        Msg::MetricsQuery
        | Msg::SetClock(_)
        | Msg::Metrics(_)
        | Msg::Ok
        | Msg::NotFound
        | Msg::InUse
        | Msg::Full
        | Msg::Bool(_)
        | Msg::Agent(_)
        | Msg::Agents(_)
        | Msg::Nodes(_)
        | Msg::HeartbeatDone(_)
        | Msg::Task(_)
        | Msg::Tasks(_)
        | Msg::Grant(_)
        | Msg::Issuer(_)
        | Msg::Entry(_)
        | Msg::Entries(_)
        | Msg::WsAdopt(_)
        | Msg::WsRelay(_)
        | Msg::WsPeerList(_)
        | Msg::IpAcquire(_)
        | Msg::IpRelease(_)
        | Msg::WsPeers(_) => return None,
    };
    Some(reply)
}
