//! The registry's workflows, on any shard: agents live on `shard_of(agent_id)`; lists,
//! routing and topology are gathered from every shard. Typed inputs (a parsed body, the
//! caller's principal) in, an [`Outcome`] or an [`Error`] out.

use crate::limits::{FieldLimits, Principal};
use crate::registry::ops::{Op, Reply};
use crate::registry::{
    agent_body, route_miss_body, topology, topology_body, AgentInfo, AgentRecord, BindingChange,
    Heartbeat, TopologyNode, AGENT_STORE_NAMES, NOT_FOUND_BODY, OK_BODY,
};
use crate::shard::paging::{encode_cursor, item_json, page_of, page_req, time_key, PageLimits};
use crate::shard::{
    ask, ask_all, ask_owner, reserve, settle, Durability, Error, Outcome, Request, Shard,
};
use chatixia_store::{Mutation, WriteClass};

/// How long a request for an agent whose binding change is being saved waits before it
/// asks again. A save is one group commit of the durable store (a few milliseconds).
const BINDING_BUSY_POLL: std::time::Duration = std::time::Duration::from_millis(2);

/// How many times such a request asks before it answers 503: 5,000 × 2 ms = 10 s, far
/// beyond a commit (the store's own timeouts answer sooner when the disk is in trouble).
const BINDING_BUSY_TRIES_MAX: usize = 5_000;

/// Asks the owner of `agent_id` with `op` until it is not busy saving a change of that
/// agent's binding (at most [`BINDING_BUSY_TRIES_MAX`] times, then 503): `again` turns
/// a reply into the answer, or into the operation to send again (a busy owner hands the
/// operation's payload back, so a retry copies nothing).
pub async fn ask_agent_owner<S: Shard, O: Request<S::Msg>>(
    sh: &S,
    agent_id: &str,
    op: O,
    again: impl Fn(O::Reply) -> Result<O::Reply, O>,
) -> Result<O::Reply, Error> {
    match ask_owner_while_busy(sh, sh.shard_of(agent_id.as_bytes()), op, again).await? {
        Ok(reply) => Ok(reply),
        Err(_) => Err(still_saving(agent_id)),
    }
}

/// [`ask_agent_owner`] of shard `owner`, for a caller whose agent id travels in `op`:
/// after the last try, the operation comes back (`Ok(Err(op))`, answer
/// [`still_saving`]).
pub async fn ask_owner_while_busy<S: Shard, O: Request<S::Msg>>(
    sh: &S,
    owner: crate::shard::ShardId,
    op: O,
    again: impl Fn(O::Reply) -> Result<O::Reply, O>,
) -> Result<Result<O::Reply, O>, Error> {
    let mut op = op;
    for _ in 0..BINDING_BUSY_TRIES_MAX {
        match again(ask(sh, owner, op).await?) {
            Ok(reply) => return Ok(Ok(reply)),
            Err(back) => op = back,
        }
        sh.sleep(BINDING_BUSY_POLL).await;
    }
    Ok(Err(op))
}

/// The 503 of a request that found agent `agent_id`'s binding change still being saved
/// after [`BINDING_BUSY_TRIES_MAX`] tries.
pub fn still_saving(agent_id: &str) -> Error {
    Error::unavailable(format!(
        "a change of agent `{agent_id}`'s binding is still being saved; retry"
    ))
}

/// The durable write class of a binding `change` made by a request with
/// (`credential`) or without credentials: a new binding is a new record, held to the
/// store's bound (or its anonymous part); a binding that moves replaces one of about
/// its size and is never refused by the bound (an agent's own key must always take its
/// id back).
pub fn binding_class(change: &BindingChange, credential: bool) -> WriteClass {
    match (change.is_new(), credential) {
        (false, _) => WriteClass::Progress,
        (true, true) => WriteClass::Bounded,
        (true, false) => WriteClass::Anonymous,
    }
}

/// The follow-up of a binding change that was committed (`saved`) or not: clears the
/// agent's saving flag, or undoes the change. Sent into room reserved before the change
/// was asked for (`shard::reserve`): a decided change is never left flagged.
pub fn binding_done<M, R: crate::shard::FollowUp<M>>(room: R, change: &BindingChange, saved: bool)
where
    Op: Request<M>,
{
    if saved {
        settle(room, Op::BindingSaved(Box::new(change.agent_id.clone())));
    } else {
        settle(room, Op::BindingUndo(Box::new(change.clone())));
    }
}

/// What the registry's routes are held to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Every stored field and list of an agent.
    pub fields: FieldLimits,
    /// List pages.
    pub pages: PageLimits,
    /// The agent store's byte budget and per-client quotas (`--agent-store-bytes-max`,
    /// `--agent-client-agents-max`, `--agent-client-bytes-max`, the anonymous share).
    pub budget: crate::registry::AgentBudgetConfig,
}

impl Config {
    /// `POST /api/registry/agents`: every field within its limit, ids printable.
    pub fn check_agent(&self, a: &AgentInfo) -> Result<(), Error> {
        let l = &self.fields;
        l.id("agent_id", &a.agent_id)?;
        l.field("hostname", &a.hostname)?;
        l.field("ip", &a.ip)?;
        l.id("sidecar_peer_id", &a.sidecar_peer_id)?;
        l.field("status", &a.status)?;
        l.field("mode", &a.mode)?;
        l.field("capabilities.mode", &a.capabilities.mode)?;
        l.id_list("capabilities.skills", &a.capabilities.skills)?;
        l.id_list("capabilities.mcp_servers", &a.capabilities.mcp_servers)
    }

    /// `POST /api/hub/heartbeat`: the agent's fields, as [`check_agent`](Self::check_agent).
    pub fn check_heartbeat(&self, h: &Heartbeat) -> Result<(), Error> {
        let l = &self.fields;
        l.id("agent_id", &h.agent_id)?;
        l.field("hostname", &h.hostname)?;
        l.field("ip", &h.ip)?;
        l.id("sidecar_peer_id", &h.sidecar_peer_id)?;
        l.field("status", &h.status)?;
        l.field("mode", &h.mode)?;
        l.id_list("skill_names", &h.skill_names)
    }
}

fn unexpected() -> Error {
    tracing::error!("unexpected reply from a registry");
    Error::internal("internal error")
}

/// `POST /api/registry/agents` by `by`: the agent's owner checks its binding and budget.
/// In a cluster, an agent not held here bound to `by` is checked against the cluster's
/// binding first (`registry::bindings`: 403 as here, 503 while Redis is unreachable),
/// and that check is undone when the register is refused after it.
pub async fn register<S: Shard>(
    sh: &S,
    cfg: &Config,
    info: AgentInfo,
    by: Principal,
) -> Result<Outcome, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    cfg.check_agent(&info)?;
    let mut cluster = None;
    let r = register_checked(sh, info, by, &mut cluster).await;
    if let (Err(_), Some(b)) = (&r, cluster) {
        crate::registry::bindings::undo(sh, b);
    }
    r
}

/// [`register`] after the field checks; `cluster`: what the cluster's check changed.
async fn register_checked<S: Shard>(
    sh: &S,
    info: AgentInfo,
    by: Principal,
    cluster: &mut Option<crate::registry::bindings::Bound>,
) -> Result<Outcome, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let id = info.agent_id.clone();
    let credential = by.peer.is_some();
    // Room for the follow-up of a binding change, taken before anything changes.
    let room = reserve(sh, sh.shard_of(id.as_bytes()))?;
    let mut cleared = false;
    let reply = loop {
        // A busy owner consumed the agent's info: the retry sends a copy.
        let first = Op::UpsertFor(Box::new((info.clone(), by.clone(), cleared)));
        let again = |r| match r {
            Reply::Busy => Err(Op::UpsertFor(Box::new((info.clone(), by.clone(), cleared)))),
            r => Ok(r),
        };
        match ask_agent_owner(sh, &id, first, again).await? {
            Reply::AskCluster if !cleared => {
                *cluster = crate::registry::bindings::bind(sh, &id, &by).await?;
                cleared = true;
            }
            r => break r,
        }
    };
    match reply {
        Reply::Done => Ok(Outcome::Static(OK_BODY.as_bytes())),
        Reply::Bound(change) => {
            // A new or moved binding is durable before the 2xx (review of issue 20:
            // otherwise a restart forgets it, and whoever heartbeats first takes the
            // agent's pending tasks).
            let put = Mutation::PutAgentBinding(crate::registry::records::binding_record(
                &change.agent_id,
                &change.owner,
            ));
            let saved = sh
                .commit(
                    vec![put],
                    Durability::Now(binding_class(&change, credential)),
                )
                .await;
            binding_done(room, &change, saved.is_ok());
            saved.map(|_| Outcome::Static(OK_BODY.as_bytes()))
        }
        Reply::Full => Err(Error::unavailable("agent registry is full")),
        Reply::Refused(r) => Err(r.error(&AGENT_STORE_NAMES)),
        Reply::Forbidden(why) => Err(Error::forbidden(*why)),
        _ => Err(unexpected()),
    }
}

/// `GET /api/registry/agents[?limit=N&cursor=C]`: one page of every shard's agents, by
/// `agent_id` (`shard::paging`); in a cluster, with the agents the other live nodes hold
/// (`registry::mirror::elsewhere`, bounded reads after the cursor; an agent held here is
/// listed from here, once). When the mirror was read only up to some id (its call bound,
/// `MIRROR_PAGE_CALLS_MAX`, or a call that failed midway), the page ends there, with
/// `x-next-cursor` at that id. While the link is down, this node's agents.
pub async fn list_page<S: Shard>(
    sh: &S,
    cfg: &Config,
    limit: Option<&str>,
    cursor: Option<&str>,
) -> Result<Outcome, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    /// A listed agent: held here, or the mirror's record (its JSON as the holding node
    /// wrote it).
    enum Listed {
        Here(Box<AgentRecord>),
        Elsewhere(String, Vec<u8>),
    }
    impl Listed {
        fn id(&self) -> &str {
            match self {
                Listed::Here(r) => &r.info.agent_id,
                Listed::Elsewhere(id, _) => id,
            }
        }
    }
    let page = page_req(limit, cursor, &cfg.pages)?;
    let mut all: Vec<Listed> = Vec::new();
    for r in ask_all(sh, |_| Op::ListPage(Box::new(page.clone()))).await? {
        match r {
            Reply::Agents(v) => all.extend(v.into_iter().map(|r| Listed::Here(Box::new(r)))),
            _ => return Err(unexpected()),
        }
    }
    let mut reached = None;
    if sh.cluster().is_some() {
        // One more than the page, as each shard gives: whether more follow is known.
        let m = crate::registry::mirror::elsewhere(
            sh,
            page.after.as_deref(),
            page.limit.saturating_add(1),
            cfg.pages.bytes_max,
        )
        .await;
        reached = m.reached;
        all.extend(
            m.records
                .into_iter()
                .filter(|(id, _)| page.admits(id))
                .map(|(id, json)| Listed::Elsewhere(id, json)),
        );
        // Held here first among equal ids: the duplicate from the mirror goes (an
        // agent that moved here a moment ago, before its old node dropped it).
        all.sort_by(|a, b| {
            a.id().cmp(b.id()).then_with(|| {
                matches!(a, Listed::Elsewhere(..)).cmp(&matches!(b, Listed::Elsewhere(..)))
            })
        });
        all.dedup_by(|later, first| later.id() == first.id());
        // The mirror was read up to `reached` only: what lies beyond is for a next page.
        if let Some(r) = &reached {
            all.truncate(all.partition_point(|a| a.id() <= r.as_str()));
        }
    } else {
        all.sort_by(|a, b| a.id().cmp(b.id()));
    }
    let out = page_of(
        &all,
        &page,
        &cfg.pages,
        |a| a.id().to_owned(),
        |a| match a {
            Listed::Here(r) => item_json(r),
            Listed::Elsewhere(_, json) => json.clone(),
        },
    );
    Ok(match (out, reached) {
        // Everything up to `reached` was sent: the next page starts after it.
        (Outcome::Page { json, next: None }, Some(r)) => Outcome::Page {
            json,
            next: Some(encode_cursor(&r)),
        },
        (out, _) => out,
    })
}

/// `GET /api/registry/agents/{id}`: the record, or the reference's 200
/// `{"error":"not found"}`. In a cluster, an agent another live node holds is answered
/// from the mirror (keys sorted, as here).
pub async fn get<S: Shard>(sh: &S, id: String) -> Result<Outcome, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    match ask_owner(sh, &id, Op::Get(Box::new(id.clone()))).await? {
        Reply::Agent(Some(rec)) => Ok(Outcome::Json(agent_body(&rec))),
        Reply::Agent(None) => match crate::registry::mirror::one_elsewhere(sh, &id).await {
            // The reference's shape: through a `serde_json::Value`, keys sorted.
            Some(json) => match serde_json::from_slice::<serde_json::Value>(&json) {
                Ok(v) => Ok(Outcome::Json(wire::json::json_vec(&v))),
                Err(_) => Ok(Outcome::Static(NOT_FOUND_BODY.as_bytes())),
            },
            None => Ok(Outcome::Static(NOT_FOUND_BODY.as_bytes())),
        },
        _ => Err(unexpected()),
    }
}

/// `DELETE /api/registry/agents/{id}` (an operator's: the router checked the admin
/// token): the agent and its binding, from memory and from the durable store (the
/// deletion is durable before the 2xx; if the store refuses it, nothing is removed).
/// In a cluster, an agent another node holds is removed from the mirror and that node
/// is told to delete it (`registry::mirror::drop_elsewhere`): answered `{"status":"ok"}`
/// once the mirror's entry is gone; the holding node deletes it as here when the
/// message arrives.
pub async fn delete<S: Shard>(sh: &S, id: String) -> Result<Outcome, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let here = delete_here(sh, id.clone()).await?;
    if !matches!(&here, Outcome::Static(b) if *b == NOT_FOUND_BODY.as_bytes()) {
        return Ok(here);
    }
    match crate::registry::mirror::drop_elsewhere(sh, &id).await {
        Some(node) => {
            tracing::info!(agent = %id, %node, "agent deleted at the node that holds it");
            Ok(Outcome::Static(OK_BODY.as_bytes()))
        }
        // No node holds it: its cluster binding, if one is left, goes too.
        None if crate::registry::bindings::unbind_any(sh, &id).await => {
            Ok(Outcome::Static(OK_BODY.as_bytes()))
        }
        None => Ok(here),
    }
}

/// [`delete`] at this node only; also the delete another node asks for (an operator's
/// `DELETE` there of an agent held here, `registry::mirror::MSG_DELETE`). In a cluster
/// the agent's binding goes from Redis too while it names this node's
/// (`registry::bindings::unbind`).
pub async fn delete_here<S: Shard>(sh: &S, id: String) -> Result<Outcome, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    // Room for the follow-up (finish, or clear the flag), taken before anything changes.
    let room = reserve(sh, sh.shard_of(id.as_bytes()))?;
    let again = |r| match r {
        Reply::Busy => Err(Op::DeleteBegin(Box::new(id.clone()))),
        r => Ok(r),
    };
    match ask_agent_owner(sh, &id, Op::DeleteBegin(Box::new(id.clone())), again).await? {
        Reply::Done => Ok(Outcome::Static(OK_BODY.as_bytes())),
        Reply::NotFound => Ok(Outcome::Static(NOT_FOUND_BODY.as_bytes())),
        Reply::Deleting(owner) => {
            // Never refused by the size bound: it frees space.
            let gone = vec![Mutation::DeleteAgentBinding(id.clone())];
            let saved = sh.commit(gone, Durability::Now(WriteClass::Progress)).await;
            match &saved {
                Ok(_) => settle(room, Op::DeleteFinish(Box::new(id.clone()))),
                Err(_) => settle(room, Op::BindingSaved(Box::new(id.clone()))),
            }
            saved?;
            // In a cluster, the binding goes from Redis too while it is this one.
            if let Some(owner) = owner {
                crate::registry::bindings::unbind(sh, &id, &owner).await;
            }
            Ok(Outcome::Static(OK_BODY.as_bytes()))
        }
        _ => Err(unexpected()),
    }
}

/// `GET /api/registry/route?skill=X`: the best candidate of every shard, then the one
/// with the smallest `route_key` (earliest registered, then `agent_id`). In a cluster the
/// other live nodes' best joins them: one [`ROUTE`](crate::registry::mirror::ROUTE) call
/// reads the first member of each live node's route index of the skill (bounded, O(live
/// nodes × log N); see there), and the smaller `route_key` wins (this node's agent on a
/// tie). While the link is down (or on a node alone), this node's agents.
pub async fn route<S: Shard>(sh: &S, skill: Option<String>) -> Result<Outcome, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let Some(skill) = skill else {
        return Err(Error::bad_request(
            "Failed to deserialize query string: missing field `skill`",
        ));
    };
    let mut best: Option<Box<AgentRecord>> = None;
    for r in ask_all(sh, |_| Op::RouteFirst(Box::new(skill.clone()))).await? {
        match r {
            Reply::Agent(Some(rec)) => {
                if best
                    .as_ref()
                    .is_none_or(|b| rec.route_key() < b.route_key())
                {
                    best = Some(rec);
                }
            }
            Reply::Agent(None) => {}
            _ => return Err(unexpected()),
        }
    }
    if let Some((member, json)) = crate::registry::mirror::route_elsewhere(sh, &skill).await {
        let here = best
            .as_ref()
            .map(|b| time_key(b.registered_at, &b.info.agent_id));
        if here.is_none_or(|h| member < h) {
            // The reference's shape: through a `serde_json::Value`, keys sorted (as `get`).
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&json) {
                return Ok(Outcome::Json(wire::json::json_vec(&v)));
            }
        }
    }
    Ok(Outcome::Json(match best {
        Some(rec) => agent_body(&rec),
        None => route_miss_body(&skill),
    }))
}

/// Most agents of the other live nodes `GET /api/hub/network/topology` reads from the
/// mirror: what [`elsewhere`](crate::registry::mirror::elsewhere) reads in its bounded
/// calls (`MIRROR_PAGE_CALLS_MAX` × `MIRROR_PAGE_MAX`, each a short script), as many as one
/// shard holds (`agents_max`'s default). Past it (or past
/// [`TOPOLOGY_ELSEWHERE_BYTES_MAX`] of their records) the other nodes' agents after the
/// last one read, by `agent_id`, are left out of that answer (logged); this node's own
/// agents are always in.
pub const TOPOLOGY_ELSEWHERE_MAX: usize =
    crate::registry::mirror::MIRROR_PAGE_CALLS_MAX * crate::registry::mirror::MIRROR_PAGE_MAX;

/// Bytes of the other nodes' records (the list's JSON) one topology reads: room for
/// [`TOPOLOGY_ELSEWHERE_MAX`] records of a kilobyte (a typical record is a few hundred
/// bytes), held only while each is parsed into a [`TopologyNode`]'s few fields.
pub const TOPOLOGY_ELSEWHERE_BYTES_MAX: usize = 16 << 20;

/// `GET /api/hub/network/topology`: every shard's agents; in a cluster, with the agents
/// the other live nodes hold, read from the mirror in bounded calls (at most
/// [`TOPOLOGY_ELSEWHERE_MAX`] agents and [`TOPOLOGY_ELSEWHERE_BYTES_MAX`] of records; past
/// them the rest is left out). An agent held here is taken from here, once. While the
/// link is down, this node's agents.
pub async fn topology_route<S: Shard>(sh: &S) -> Result<Outcome, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let mut nodes = Vec::new();
    for r in ask_all(sh, |_| Op::TopologyNodes).await? {
        match r {
            Reply::Nodes(v) => nodes.extend(*v),
            _ => return Err(unexpected()),
        }
    }
    if sh.cluster().is_some() {
        let m = crate::registry::mirror::elsewhere(
            sh,
            None,
            TOPOLOGY_ELSEWHERE_MAX,
            TOPOLOGY_ELSEWHERE_BYTES_MAX,
        )
        .await;
        if let Some(at) = &m.reached {
            tracing::warn!(
                read = m.records.len(),
                last = %at,
                "topology: the other nodes' agents after this one are left out \
                 (TOPOLOGY_ELSEWHERE_MAX, TOPOLOGY_ELSEWHERE_BYTES_MAX)"
            );
        }
        let here: std::collections::HashSet<String> =
            nodes.iter().map(|n| n.agent_id.clone()).collect();
        nodes.extend(
            m.records
                .iter()
                .filter(|(id, _)| !here.contains(id))
                .filter_map(|(_, json)| TopologyNode::from_json(json)),
        );
    }
    Ok(Outcome::Json(topology_body(&topology(nodes))))
}

/// The agents the other live nodes hold, from the mirror (the dashboard's list and
/// counts in a cluster), read as the topology reads them: at most
/// [`TOPOLOGY_ELSEWHERE_MAX`] records and [`TOPOLOGY_ELSEWHERE_BYTES_MAX`] of them (past
/// them the rest, by `agent_id`, is left out, logged). Empty on a node alone and while
/// the link is down.
pub async fn agents_elsewhere<S: Shard>(sh: &S) -> Vec<AgentRecord> {
    if sh.cluster().is_none() {
        return Vec::new();
    }
    let m = crate::registry::mirror::elsewhere(
        sh,
        None,
        TOPOLOGY_ELSEWHERE_MAX,
        TOPOLOGY_ELSEWHERE_BYTES_MAX,
    )
    .await;
    if let Some(at) = &m.reached {
        tracing::warn!(
            read = m.records.len(),
            last = %at,
            "dashboard: the other nodes' agents after this one are left out"
        );
    }
    m.records
        .iter()
        .filter_map(|(_, json)| AgentRecord::from_list_json(json))
        .collect()
}

/// The hash where each node of a cluster writes its agents' health counts
/// ([`publish_health`]): node id → `"active stale offline"`.
fn health_key(prefix: &str) -> Vec<u8> {
    [prefix.as_bytes(), b"hc"].concat()
}

/// How often a node writes its health counts for the others' dashboards
/// ([`publish_health`]): their summaries lag this node's by at most this.
pub const HEALTH_PUBLISH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes this node's agents' health counts into the cluster (one `HSET`, not awaited),
/// for the other nodes' dashboard summaries ([`health_elsewhere`]): one field per node,
/// so a summary reads a few bytes per node rather than every agent.
pub async fn publish_health<S: Shard>(sh: &S)
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let Some(link) = sh.cluster().filter(|l| l.is_up()) else {
        return;
    };
    let Ok([a, st, o]) = health_counts(sh).await else {
        return;
    };
    let _ = link.command_nowait(vec![
        b"HSET".to_vec(),
        health_key(link.prefix()),
        link.node_id().as_bytes().to_vec(),
        format!("{a} {st} {o}").into_bytes(),
    ]);
}

/// The health counts the other live nodes last wrote ([`publish_health`]; a node whose
/// lease ran out is not counted, and its field is dropped). `[0, 0, 0]` on a node alone
/// and while Redis cannot be asked.
pub async fn health_elsewhere<S: Shard>(sh: &S) -> [u64; 3] {
    let mut total = [0u64; 3];
    let Some(link) = sh.cluster() else {
        return total;
    };
    let Ok(r) = link.command(vec![b"HGETALL".to_vec(), health_key(link.prefix())]) else {
        return total;
    };
    let Ok(chatixia_cluster::Value::Array(a)) = r.await else {
        return total;
    };
    let live = link.live_nodes();
    let mut gone = Vec::new();
    for kv in a.chunks(2) {
        let (Some(chatixia_cluster::Value::Bulk(node)), Some(chatixia_cluster::Value::Bulk(v))) =
            (kv.first(), kv.get(1))
        else {
            continue;
        };
        let node = String::from_utf8_lossy(node);
        if node == link.node_id() {
            continue;
        }
        if !live.iter().any(|n| *n == node) {
            gone.push(node.into_owned().into_bytes());
            continue;
        }
        for (t, n) in total.iter_mut().zip(String::from_utf8_lossy(v).split(' ')) {
            *t += n.parse::<u64>().unwrap_or(0);
        }
    }
    if !gone.is_empty() {
        let mut cmd = vec![b"HDEL".to_vec(), health_key(link.prefix())];
        cmd.extend(gone);
        let _ = link.command_nowait(cmd);
    }
    total
}

/// Agents by health on every shard: `[active, stale, offline]`.
pub async fn health_counts<S: Shard>(sh: &S) -> Result<[u64; 3], Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let mut total = [0u64; 3];
    for r in ask_all(sh, |_| Op::HealthCounts).await? {
        match r {
            Reply::Health(c) => {
                for (t, c) in total.iter_mut().zip(*c) {
                    *t += c;
                }
            }
            _ => return Err(unexpected()),
        }
    }
    Ok(total)
}
