//! `/api/registry/*`, `/api/hub/network/topology`: agents on `shard_of(agent_id)`; lists,
//! routing and topology are scatter-gather.

use crate::http::{Request, Response};
use crate::hub::{topology, topology_body};
use crate::registry::{agent_body, agent_list_body, route_miss_body, AgentInfo, AgentRecord};
use crate::server::api_common::{
    ask_all, ask_owner, json_body, not_found_200, ok_json, ok_status, path_param, unexpected, Reply,
};
use crate::server::{Msg, ShardCtx};

fn agents_full() -> Response {
    Response::error(503, "agent registry is full")
}

/// `POST /api/registry/agents`.
pub async fn register(ctx: &ShardCtx, req: &Request) -> Reply<Response> {
    let info: AgentInfo = json_body(req)?;
    let id = info.agent_id.clone();
    match ask_owner(ctx, &id, Msg::AgentUpsert(Box::new(info))).await? {
        Msg::Ok => Ok(ok_status()),
        Msg::Full => Ok(agents_full()),
        _ => Ok(unexpected()),
    }
}

/// `GET /api/registry/agents`: every shard's agents, merged by `agent_id`.
pub async fn list(ctx: &ShardCtx) -> Reply<Response> {
    let mut all: Vec<AgentRecord> = Vec::new();
    for r in ask_all(ctx, |_| Msg::AgentList).await? {
        match r {
            Msg::Agents(v) => all.extend(*v),
            _ => return Ok(unexpected()),
        }
    }
    all.sort_by(|a, b| a.info.agent_id.cmp(&b.info.agent_id));
    Ok(ok_json(agent_list_body(&all)))
}

/// `GET /api/registry/agents/{id}`.
pub async fn get(ctx: &ShardCtx, raw_id: &str) -> Reply<Response> {
    let id = path_param(raw_id)?;
    match ask_owner(ctx, &id, Msg::AgentGet(id.clone().into())).await? {
        Msg::Agent(Some(rec)) => Ok(ok_json(agent_body(&rec))),
        Msg::Agent(None) => Ok(not_found_200()),
        _ => Ok(unexpected()),
    }
}

/// `DELETE /api/registry/agents/{id}`.
pub async fn delete(ctx: &ShardCtx, raw_id: &str) -> Reply<Response> {
    let id = path_param(raw_id)?;
    match ask_owner(ctx, &id, Msg::AgentDelete(id.clone().into())).await? {
        Msg::Ok => Ok(ok_status()),
        Msg::NotFound => Ok(not_found_200()),
        _ => Ok(unexpected()),
    }
}

/// `GET /api/registry/route?skill=X`: the best candidate of every shard, then the one
/// with the smallest `route_key` (earliest registered, then `agent_id`).
pub async fn route(ctx: &ShardCtx, req: &Request) -> Reply<Response> {
    let Some(skill) = req.query_param("skill") else {
        return Ok(Response::error(
            400,
            "Failed to deserialize query string: missing field `skill`",
        ));
    };
    let skill_box: Box<str> = skill.clone().into();
    let mut best: Option<Box<AgentRecord>> = None;
    for r in ask_all(ctx, |_| Msg::RouteFirst(skill_box.clone())).await? {
        match r {
            Msg::Agent(Some(rec)) => {
                if best
                    .as_ref()
                    .is_none_or(|b| rec.route_key() < b.route_key())
                {
                    best = Some(rec);
                }
            }
            Msg::Agent(None) => {}
            _ => return Ok(unexpected()),
        }
    }
    Ok(match best {
        Some(rec) => ok_json(agent_body(&rec)),
        None => ok_json(route_miss_body(&skill)),
    })
}

/// `GET /api/hub/network/topology`.
pub async fn topology_route(ctx: &ShardCtx) -> Reply<Response> {
    let mut nodes = Vec::new();
    for r in ask_all(ctx, |_| Msg::TopologyNodes).await? {
        match r {
            Msg::Nodes(v) => nodes.extend(*v),
            _ => return Ok(unexpected()),
        }
    }
    Ok(ok_json(topology_body(&topology(nodes))))
}
