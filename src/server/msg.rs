//! Messages between shards. Boxed payloads keep the enum (and so every ring slot) small:
//! every variant is at most a tag and one or two words.
//!
//! Requests name the state they touch; the shard that owns that state (see
//! docs/ARCHITECTURE.md, "State placement") answers with one of the reply variants.

use std::net::IpAddr;

use crate::hub::TopologyNode;
use crate::hub::{Task, TaskId, TaskSubmission, TaskUpdate};
use crate::metrics::ShardMetrics;
use crate::pairing::{Code, DeviceGrant, Entry, EntryId, Issuer};
use crate::registry::{AgentInfo, AgentRecord, Heartbeat};
use crate::time::UnixTime;

pub enum Msg {
    // ---- requests ----
    /// Ask a shard for its counters.
    MetricsQuery,

    /// Registry: upsert an agent (owner: `shard_of(agent_id)`). → `Ok` | `Full`.
    AgentUpsert(Box<AgentInfo>),
    /// Registry: one agent. → `Agent`.
    AgentGet(Box<str>),
    /// Registry: remove an agent. → `Ok` | `NotFound`.
    AgentDelete(Box<str>),
    /// Registry: every agent of the shard. → `Agents`.
    AgentList,
    /// Registry: the shard's best active agent with this skill. → `Agent`.
    RouteFirst(Box<str>),
    /// Registry: the shard's topology nodes. → `Nodes`.
    TopologyNodes,
    /// Heartbeat on the agent's owner: upsert the agent, claim the tasks local to this
    /// shard, hand back the pointers left for it. → `HeartbeatDone` | `Full`.
    Heartbeat(Box<Heartbeat>),

    /// Hub: store a new pending task under this id. → `Ok` | `InUse` | `Full`.
    TaskCreate(Box<(TaskId, TaskSubmission)>),
    /// Hub: leave a pointer to a task living elsewhere, for its target agent
    /// (owner: `shard_of(target)`). Tell; `(target, task id, deadline)`.
    TaskPointer(Box<(String, TaskId, UnixTime)>),
    /// Hub: one task. → `Task`.
    TaskGet(Box<str>),
    /// Hub: update a task. → `Ok` | `NotFound`.
    TaskUpdate(Box<(String, TaskUpdate)>),
    /// Hub: every task of the shard. → `Tasks`.
    TaskList,
    /// Hub: claim these ids (pointers) for the agent if still pending; `(agent, ids)`.
    /// → `Tasks`.
    ClaimIds(Box<(String, Vec<TaskId>)>),
    /// Hub: claim every local pending task matching the agent. `(agent, skills)`.
    /// → `Tasks`.
    ClaimFor(Box<(String, Vec<String>)>),

    /// Auth: what this device token grants (owner: `shard_of(token)`). → `Grant`.
    TokenLookup(Box<str>),
    /// Auth: index an approved entry's token. → `Ok` | `InUse` | `Full`.
    TokenInsert(Box<(String, DeviceGrant)>),
    /// Auth: drop a revoked token. → `Ok` | `NotFound`.
    TokenRemove(Box<str>),
    /// Auth: one more approved entry for this peer id (owner: `shard_of(peer_id)`).
    /// → `Ok` | `Full`.
    PeerAuthorize(Box<(String, Option<String>)>),
    /// Auth: one approved entry of this peer id was revoked. → `Ok`.
    PeerDeauthorize(Box<str>),
    /// Auth: whether a pairing approval authorizes this peer id. → `Bool`.
    PeerIsAuthorized(Box<str>),

    /// Pairing: store an invite code (owner: `shard_of(code)`). → `Ok` | `InUse` | `Full`.
    CodeInsert(Box<(Code, Issuer)>),
    /// Pairing: use an invite code. → `Issuer`.
    CodeRedeem(Code),
    /// Pairing: count a `pair` attempt of this client IP (owner: `shard_of(ip string)`).
    /// → `Bool` (false: rate limited).
    RateCheck(Box<IpAddr>),
    /// Pairing: create a pending entry `(id, peer_id, agent_name, issuer)`.
    /// → `Entry` | `InUse` | `Full`.
    EntryCreate(Box<(EntryId, String, String, Issuer)>),
    /// Pairing: approve with this pre-drawn device token randomness. → `Entry` | `NotFound`.
    EntryApprove(Box<(EntryId, [u8; 16])>),
    /// Pairing: reject. → `Entry` | `NotFound`.
    EntryReject(EntryId),
    /// Pairing: undo an approval whose token could not be activated (back to pending).
    /// → `Entry` | `NotFound`.
    EntryWithdraw(EntryId),
    /// Pairing: revoke. → `Entry` | `NotFound`.
    EntryRevoke(EntryId),
    /// Pairing: the shard's entries (`true`: pending only). → `Entries`.
    EntryList(bool),

    /// Signaling: run this upgraded connection here (owner: `shard_of(peer_id)`). Tell.
    WsAdopt(Box<crate::server::ws::Adopt>),
    /// Signaling: deliver a relayed frame to a peer of this shard. Tell.
    WsRelay(Box<crate::server::ws::Relay>),
    /// Signaling: this shard's connected authorized peers of a mesh, but one
    /// `(mesh, exclude)`. → `WsPeers`.
    WsPeerList(Box<(Option<Box<str>>, Box<str>)>),
    /// Signaling: admit one more connection from this client IP (owner:
    /// `shard_of(ip string)`). → `Bool` (false: over the per-IP limit).
    IpAcquire(Box<std::net::IpAddr>),
    /// Signaling: a connection of this client IP closed. Tell.
    IpRelease(Box<std::net::IpAddr>),

    /// Test clock: set the clock offset (nanoseconds) and run every periodic job once.
    /// → `Ok`.
    SetClock(u64),

    // ---- replies ----
    /// Reply to [`Msg::MetricsQuery`].
    Metrics(Box<ShardMetrics>),
    Ok,
    NotFound,
    InUse,
    Full,
    Bool(bool),
    Agent(Option<Box<AgentRecord>>),
    Agents(Box<Vec<AgentRecord>>),
    Nodes(Box<Vec<TopologyNode>>),
    /// `(claimed tasks, pointers to resolve)`.
    HeartbeatDone(Box<(Vec<Task>, Vec<TaskId>)>),
    Task(Option<Box<Task>>),
    Tasks(Box<Vec<Task>>),
    Grant(Option<Box<DeviceGrant>>),
    Issuer(Option<Box<Issuer>>),
    Entry(Box<Entry>),
    Entries(Box<Vec<Entry>>),
    WsPeers(Box<Vec<Box<str>>>),
}

// Every ring slot holds one `Msg`: keep it at three words (a tag and a `Box<str>`).
const _: () = assert!(std::mem::size_of::<Msg>() <= 24);
