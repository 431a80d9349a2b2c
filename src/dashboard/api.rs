//! The dashboard's workflows (docs/PROTOCOL.md §9) on the shard layer: pages of agents
//! and tasks (asked of the registry and the hub with their own typed queries, merged
//! here), the summary (counts asked of the registry, the hub and pairing, and each
//! shard's counters), and who issues an invite. Typed inputs (query values as
//! `Option<&str>`) in, an [`Outcome`] or an [`Error`] out. The router checks the admin
//! token (every dashboard route needs one) and answers with `respond`; the invite is
//! pairing's `issue_code` for the [`issuer`] given here.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::auth::ApiKeys;
use crate::dashboard::ops::{Op, Reply, ShardRow};
use crate::dashboard::paging::{parse_filter, parse_limit};
use crate::hub::query::{merge_tasks, TaskQuery};
use crate::pairing::Issuer;
use crate::registry::query::{merge_agents, AgentQuery, AgentSort};
use crate::shard::{ask_all, Error, Outcome, Request, Shard};
use crate::{hub, pairing, registry};

/// `GET /api/dashboard/agents` query values.
#[derive(Clone, Copy, Debug, Default)]
pub struct AgentParams<'a> {
    pub limit: Option<&'a str>,
    pub cursor: Option<&'a str>,
    /// `id` (default), `health`, `host`, `mode` or `heartbeat`.
    pub sort: Option<&'a str>,
    /// `asc` (default) or `desc`.
    pub order: Option<&'a str>,
    /// `active`, `stale` or `offline`.
    pub health: Option<&'a str>,
    /// A case-insensitive substring of the id, host name, IP, mode or a skill.
    pub q: Option<&'a str>,
}

/// The registry's query for `p`; 400 naming a malformed value.
pub fn agent_query(p: &AgentParams<'_>) -> Result<AgentQuery, Error> {
    let sort = AgentSort::parse(p.sort).map_err(Error::bad_request)?;
    let desc = match p.order {
        None | Some("") | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(Error::bad_request("order must be asc or desc")),
    };
    Ok(AgentQuery {
        limit: parse_limit(p.limit).map_err(Error::bad_request)?,
        sort,
        desc,
        cursor: AgentQuery::parse_cursor(sort, p.cursor).map_err(Error::bad_request)?,
        health: AgentQuery::parse_health(p.health).map_err(Error::bad_request)?,
        q: parse_filter("q", p.q).map_err(Error::bad_request)?,
    })
}

fn unexpected() -> Error {
    tracing::error!("unexpected reply to a dashboard question");
    Error::internal("internal error")
}

/// `GET /api/dashboard/agents?limit&cursor&sort&order&health&q`: every shard's part of
/// the page (`registry::ops::Op::Query`), merged.
pub async fn agents<S: Shard>(sh: &S, p: &AgentParams<'_>) -> Result<Outcome, Error>
where
    registry::ops::Op: Request<S::Msg, Reply = registry::ops::Reply>,
{
    let q = agent_query(p)?;
    let mut parts = Vec::new();
    for r in ask_all(sh, |_| registry::ops::Op::Query(Box::new(q.clone()))).await? {
        match r {
            registry::ops::Reply::Part(p) => parts.push(*p),
            _ => return Err(unexpected()),
        }
    }
    // In a cluster, the agents the other live nodes hold (`registry::api::agents_elsewhere`).
    if sh.cluster().is_some() {
        let others = registry::api::agents_elsewhere(sh).await;
        parts.push(registry::query::agents_part(others.iter(), &q));
    }
    Ok(Outcome::json(&merge_agents(parts, &q)))
}

/// `GET /api/dashboard/tasks` query values.
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskParams<'a> {
    pub limit: Option<&'a str>,
    pub cursor: Option<&'a str>,
    pub state: Option<&'a str>,
    /// The task's source, target or assignee.
    pub agent: Option<&'a str>,
}

/// The hub's query for `p`; 400 naming a malformed value.
pub fn task_query(p: &TaskParams<'_>) -> Result<TaskQuery, Error> {
    Ok(TaskQuery {
        limit: parse_limit(p.limit).map_err(Error::bad_request)?,
        cursor: TaskQuery::parse_cursor(p.cursor).map_err(Error::bad_request)?,
        state: parse_filter("state", p.state).map_err(Error::bad_request)?,
        agent: parse_filter("agent", p.agent).map_err(Error::bad_request)?,
    })
}

/// `GET /api/dashboard/tasks?limit&cursor&state&agent`: every shard's part of the page
/// (`hub::ops::Op::Query`), merged.
pub async fn tasks<S: Shard>(sh: &S, p: &TaskParams<'_>) -> Result<Outcome, Error>
where
    hub::ops::Op: Request<S::Msg, Reply = hub::ops::Reply>,
{
    let q = task_query(p)?;
    let mut parts = Vec::new();
    for r in ask_all(sh, |_| hub::ops::Op::Query(Box::new(q.clone()))).await? {
        match r {
            hub::ops::Reply::Part(p) => parts.push(*p),
            _ => return Err(unexpected()),
        }
    }
    // In a cluster, the tasks in Redis (`hub::cluster`): shown where Redis answers.
    if let Some(link) = sh.cluster() {
        match hub::cluster::query_part(link, &q).await {
            Ok(p) => parts.push(p),
            Err(e) => tracing::debug!(error = ?e, "dashboard: no cluster tasks"),
        }
    }
    Ok(Outcome::json(&merge_tasks(parts, q.limit)))
}

/// Agents by health.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HealthCounts {
    pub active: u64,
    pub stale: u64,
    pub offline: u64,
}

/// The summary body: totals plus one row per shard.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Server time, seconds since the epoch (the page's clock for ages).
    pub time: f64,
    pub agents: HealthCounts,
    pub tasks: BTreeMap<String, u64>,
    pub pairing_pending: u64,
    pub pairing_approved: u64,
    /// Signaling WebSocket peers connected.
    pub signaling_peers: u64,
    pub shards: Vec<ShardRow>,
    /// This node's cluster (`--cluster`); absent on a node alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterRow>,
}

/// The cluster as this node sees it: its name, whether its link to Redis is up, and the
/// live nodes (as of its last lease renewal).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ClusterRow {
    pub node: String,
    pub up: bool,
    pub nodes: Vec<String>,
}

impl Summary {
    /// A summary of nothing at `time` (what the event stream says when the shards could
    /// not be asked).
    pub fn empty(time: f64) -> Summary {
        Summary {
            time,
            ..Summary::default()
        }
    }
}

/// Counts from every shard: agents by health (the registry's `HealthCounts`), tasks by
/// state (the hub's `StateCounts`), pairing entries pending and approved (pairing's
/// `StatusCounts`), and each shard's counters. The first shard that cannot be asked is
/// the answer (503).
pub async fn summary_of<S: Shard>(sh: &S) -> Result<Summary, Error>
where
    registry::ops::Op: Request<S::Msg, Reply = registry::ops::Reply>,
    hub::ops::Op: Request<S::Msg, Reply = hub::ops::Reply>,
    pairing::ops::Op: Request<S::Msg, Reply = pairing::ops::Reply>,
    Op: Request<S::Msg, Reply = Reply>,
{
    let mut s = Summary::empty(sh.now().as_secs_f64());
    let [active, stale, offline] = registry::api::health_counts(sh).await?;
    // In a cluster, the counts the other live nodes last wrote (every 5 s).
    let [a, st, o] = registry::api::health_elsewhere(sh).await;
    s.agents = HealthCounts {
        active: active + a,
        stale: stale + st,
        offline: offline + o,
    };
    for r in ask_all(sh, |_| hub::ops::Op::StateCounts).await? {
        match r {
            hub::ops::Reply::StateCounts(c) => {
                for (k, v) in *c {
                    *s.tasks.entry(k).or_default() += v;
                }
            }
            _ => return Err(unexpected()),
        }
    }
    if let Some(link) = sh.cluster() {
        match hub::cluster::state_counts(link).await {
            Ok(c) => {
                for (k, v) in c {
                    *s.tasks.entry(k).or_default() += v;
                }
            }
            Err(e) => tracing::debug!(error = ?e, "dashboard: no cluster task counts"),
        }
    }
    for r in ask_all(sh, |_| pairing::ops::Op::StatusCounts).await? {
        match r {
            pairing::ops::Reply::StatusCounts(c) => {
                s.pairing_pending += c[0];
                s.pairing_approved += c[1];
            }
            _ => return Err(unexpected()),
        }
    }
    for r in ask_all(sh, |_| Op::Counters).await? {
        let Reply::Counters(row) = r;
        s.signaling_peers += row.ws_open;
        s.shards.push(*row);
    }
    s.cluster = sh.cluster().map(|l| ClusterRow {
        node: l.node_id().to_owned(),
        up: l.is_up(),
        nodes: l.live_nodes(),
    });
    Ok(s)
}

/// `GET /api/dashboard/summary`.
pub async fn summary<S: Shard>(sh: &S) -> Result<Outcome, Error>
where
    registry::ops::Op: Request<S::Msg, Reply = registry::ops::Reply>,
    hub::ops::Op: Request<S::Msg, Reply = hub::ops::Reply>,
    pairing::ops::Op: Request<S::Msg, Reply = pairing::ops::Reply>,
    Op: Request<S::Msg, Reply = Reply>,
{
    Ok(Outcome::json(&summary_of(sh).await?))
}

/// `POST /api/dashboard/invite`: who issues the code: the admin's peer id (the token's
/// subject), in its key's mesh, as `POST /api/pairing/generate-code` does for an API
/// key. The code is pairing's `issue_code` for this issuer.
pub fn issuer(admin_peer_id: String, keys: &ApiKeys) -> Issuer {
    let mesh = keys.mesh_of(&admin_peer_id).flatten().map(str::to_owned);
    Issuer {
        peer_id: admin_peer_id,
        mesh,
    }
}
