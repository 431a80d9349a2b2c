//! `/api/registry/*`, `/api/hub/network/topology`: agents on `shard_of(agent_id)`; lists,
//! routing and topology are scatter-gather.

use crate::http::{Request, Response};
use crate::hub::{topology, topology_body};
use crate::registry::ops::{Op, Reply};
use crate::registry::{agent_body, agent_list_body, route_miss_body, AgentInfo, AgentRecord};
use crate::server::common::{
    ask_all, ask_owner, json_body, not_found_200, ok_json, ok_status, path_param, unexpected,
    Answer,
};
use crate::server::ShardCtx;

fn agents_full() -> Response {
    Response::error(503, "agent registry is full")
}

/// `POST /api/registry/agents`.
pub async fn register(ctx: &ShardCtx, req: &Request, peer: std::net::IpAddr) -> Answer<Response> {
    crate::limits::require_object(&req.body)?;
    let info: AgentInfo = json_body(req)?;
    ctx.config.limits.check_agent(&info)?;
    let by = crate::auth::agent::principal(ctx, req, peer, Some(&info.agent_id))?;
    let id = info.agent_id.clone();
    match ask_owner(ctx, &id, Op::UpsertFor(Box::new((info, by)))).await? {
        Reply::Done => Ok(ok_status()),
        Reply::Full => Ok(agents_full()),
        Reply::Refused(r) => Ok(ctx.refused("agents", &r)),
        Reply::Forbidden(why) => Ok(Response::error(403, *why)),
        _ => Ok(unexpected()),
    }
}

/// `GET /api/registry/agents`: every shard's agents, merged by `agent_id`.
pub async fn list(ctx: &ShardCtx) -> Answer<Response> {
    let mut all: Vec<AgentRecord> = Vec::new();
    for r in ask_all(ctx, |_| Op::List).await? {
        match r {
            Reply::Agents(v) => all.extend(*v),
            _ => return Ok(unexpected()),
        }
    }
    all.sort_by(|a, b| a.info.agent_id.cmp(&b.info.agent_id));
    Ok(ok_json(agent_list_body(&all)))
}

/// `GET /api/registry/agents[?limit=N&cursor=C]`: one page of every shard's agents, by
/// `agent_id` (see `server::paging`).
pub async fn list_page(ctx: &ShardCtx, req: &Request) -> Answer<Response> {
    use crate::server::paging::{item_json, page_req, page_response};
    let page = page_req(req, &ctx.config.limits)?;
    let mut all: Vec<AgentRecord> = Vec::new();
    for r in ask_all(ctx, |_| Op::ListPage(Box::new(page.clone()))).await? {
        match r {
            Reply::Agents(v) => all.extend(*v),
            _ => return Ok(unexpected()),
        }
    }
    all.sort_by(|a, b| a.info.agent_id.cmp(&b.info.agent_id));
    Ok(page_response(
        &all,
        &page,
        &ctx.config.limits,
        |a| a.info.agent_id.clone(),
        item_json,
    ))
}

/// `GET /api/registry/agents/{id}`.
pub async fn get(ctx: &ShardCtx, raw_id: &str) -> Answer<Response> {
    let id = path_param(raw_id)?;
    match ask_owner(ctx, &id, Op::Get(Box::new(id.clone()))).await? {
        Reply::Agent(Some(rec)) => Ok(ok_json(agent_body(&rec))),
        Reply::Agent(None) => Ok(not_found_200()),
        _ => Ok(unexpected()),
    }
}

/// `DELETE /api/registry/agents/{id}`.
pub async fn delete(ctx: &ShardCtx, raw_id: &str) -> Answer<Response> {
    let id = path_param(raw_id)?;
    match ask_owner(ctx, &id, Op::Delete(Box::new(id.clone()))).await? {
        Reply::Done => Ok(ok_status()),
        Reply::NotFound => Ok(not_found_200()),
        _ => Ok(unexpected()),
    }
}

/// `GET /api/registry/route?skill=X`: the best candidate of every shard, then the one
/// with the smallest `route_key` (earliest registered, then `agent_id`).
pub async fn route(ctx: &ShardCtx, req: &Request, peer: std::net::IpAddr) -> Answer<Response> {
    crate::auth::agent::gate(ctx, req, peer, None)?;
    let Some(skill) = req.query_param("skill") else {
        return Ok(Response::error(
            400,
            "Failed to deserialize query string: missing field `skill`",
        ));
    };

    let mut best: Option<Box<AgentRecord>> = None;
    for r in ask_all(ctx, |_| Op::RouteFirst(Box::new(skill.clone()))).await? {
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
            _ => return Ok(unexpected()),
        }
    }
    Ok(match best {
        Some(rec) => ok_json(agent_body(&rec)),
        None => ok_json(route_miss_body(&skill)),
    })
}

/// `GET /api/hub/network/topology`.
pub async fn topology_route(ctx: &ShardCtx) -> Answer<Response> {
    let mut nodes = Vec::new();
    for r in ask_all(ctx, |_| Op::TopologyNodes).await? {
        match r {
            Reply::Nodes(v) => nodes.extend(*v),
            _ => return Ok(unexpected()),
        }
    }
    Ok(ok_json(topology_body(&topology(nodes))))
}
