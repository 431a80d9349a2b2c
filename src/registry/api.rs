//! The registry's workflows, on any shard: agents live on `shard_of(agent_id)`; lists,
//! routing and topology are gathered from every shard. Typed inputs (a parsed body, the
//! caller's principal) in, an [`Outcome`] or an [`Error`] out.

use crate::limits::{FieldLimits, Principal};
use crate::registry::ops::{Op, Reply};
use crate::registry::{
    agent_body, route_miss_body, topology, topology_body, AgentInfo, AgentRecord, Heartbeat,
    AGENT_STORE_NAMES, NOT_FOUND_BODY, OK_BODY,
};
use crate::shard::paging::{item_json, page_of, page_req, PageLimits};
use crate::shard::{ask_all, ask_owner, Error, Outcome, Request, Shard};

/// What the registry's routes are held to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Every stored field and list of an agent.
    pub fields: FieldLimits,
    /// List pages.
    pub pages: PageLimits,
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
    let id = info.agent_id.clone();
    match ask_owner(sh, &id, Op::UpsertFor(Box::new((info, by)))).await? {
        Reply::Done => Ok(Outcome::Static(OK_BODY.as_bytes())),
        Reply::Full => Err(Error::unavailable("agent registry is full")),
        Reply::Refused(r) => Err(r.error(&AGENT_STORE_NAMES)),
        Reply::Forbidden(why) => Err(Error::forbidden(*why)),
        _ => Err(unexpected()),
    }
}

/// `GET /api/registry/agents[?limit=N&cursor=C]`: one page of every shard's agents, by
/// `agent_id` (`shard::paging`).
pub async fn list_page<S: Shard>(
    sh: &S,
    cfg: &Config,
    limit: Option<&str>,
    cursor: Option<&str>,
) -> Result<Outcome, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let page = page_req(limit, cursor, &cfg.pages)?;
    let mut all: Vec<AgentRecord> = Vec::new();
    for r in ask_all(sh, |_| Op::ListPage(Box::new(page.clone()))).await? {
        match r {
            Reply::Agents(v) => all.extend(*v),
            _ => return Err(unexpected()),
        }
    }
    all.sort_by(|a, b| a.info.agent_id.cmp(&b.info.agent_id));
    Ok(page_of(
        &all,
        &page,
        &cfg.pages,
        |a| a.info.agent_id.clone(),
        item_json,
    ))
}

/// `GET /api/registry/agents/{id}`: the record, or the reference's 200
/// `{"error":"not found"}`.
pub async fn get<S: Shard>(sh: &S, id: String) -> Result<Outcome, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    match ask_owner(sh, &id, Op::Get(Box::new(id.clone()))).await? {
        Reply::Agent(Some(rec)) => Ok(Outcome::Json(agent_body(&rec))),
        Reply::Agent(None) => Ok(Outcome::Static(NOT_FOUND_BODY.as_bytes())),
        _ => Err(unexpected()),
    }
}

/// `DELETE /api/registry/agents/{id}` (an operator's: the router checked the admin
/// token). The agent's binding goes with it.
pub async fn delete<S: Shard>(sh: &S, id: String) -> Result<Outcome, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    match ask_owner(sh, &id, Op::Delete(Box::new(id.clone()))).await? {
        Reply::Done => Ok(Outcome::Static(OK_BODY.as_bytes())),
        Reply::NotFound => Ok(Outcome::Static(NOT_FOUND_BODY.as_bytes())),
        _ => Err(unexpected()),
    }
}

/// `GET /api/registry/route?skill=X`: the best candidate of every shard, then the one
/// with the smallest `route_key` (earliest registered, then `agent_id`).
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
    Ok(Outcome::Json(match best {
        Some(rec) => agent_body(&rec),
        None => route_miss_body(&skill),
    }))
}

/// `GET /api/hub/network/topology`.
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
    Ok(Outcome::Json(topology_body(&topology(nodes))))
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
