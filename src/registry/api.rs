//! `/api/registry/*`, `/api/hub/network/topology`: agents on `shard_of(agent_id)`; lists,
//! routing and topology are scatter-gather.

use crate::http::{Request, Response};
use crate::hub::{topology, topology_body};
use crate::registry::ops::{Op, Reply};
use crate::registry::{
    agent_body, agent_list_body, route_miss_body, AgentInfo, AgentRecord, BindingChange,
};
use crate::server::common::{
    ask_all, ask_owner, ask_owner_retry, json_body, not_found_200, ok_json, ok_status, path_param,
    unexpected, Answer,
};
use crate::server::ShardCtx;
use chatixia_store::{Mutation, WriteClass};

/// How long a request for an agent whose binding change is being saved waits before it
/// asks again. A save is one group commit of the durable store (a few milliseconds).
const BINDING_BUSY_POLL: std::time::Duration = std::time::Duration::from_millis(2);

/// How many times such a request asks before it answers 503: 5,000 × 2 ms = 10 s, far
/// beyond a commit (the store's own timeouts answer sooner when the disk is in trouble).
const BINDING_BUSY_TRIES_MAX: usize = 5_000;

/// The 503 of a request that found the agent's binding change still being saved.
fn binding_busy(agent_id: &str) -> Response {
    Response::error(
        503,
        format!("a change of agent `{agent_id}`'s binding is still being saved; retry"),
    )
}

/// Asks the owner of `agent_id` (`make()`) until it is not busy saving a change of that
/// agent's binding (at most [`BINDING_BUSY_TRIES_MAX`] times, then 503).
pub async fn ask_agent_owner<R: crate::server::msg::ShardRequest>(
    ctx: &ShardCtx,
    agent_id: &str,
    make: impl Fn() -> R,
    busy: impl Fn(&R::Reply) -> bool,
) -> Answer<R::Reply> {
    for _ in 0..BINDING_BUSY_TRIES_MAX {
        let reply = ask_owner(ctx, agent_id, make()).await?;
        if !busy(&reply) {
            return Ok(reply);
        }
        monoio::time::sleep(BINDING_BUSY_POLL).await;
    }
    Err(binding_busy(agent_id))
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

/// The follow-up of a binding change the handler committed (`saved`) or not: clears the
/// agent's saving flag, or undoes the change. Delivered whatever the mailbox (the
/// change is decided).
pub async fn binding_done(ctx: &ShardCtx, change: &BindingChange, saved: bool) {
    let id = change.agent_id.as_str();
    let done = if saved {
        ask_owner_retry(ctx, id, || Op::BindingSaved(Box::new(id.to_owned()))).await
    } else {
        ask_owner_retry(ctx, id, || Op::BindingUndo(Box::new(change.clone()))).await
    };
    if done.is_err() {
        tracing::error!(agent = id, "an agent's binding change left flagged saving");
    }
}

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
    let credential = by.peer.is_some();
    let make = || Op::UpsertFor(Box::new((info.clone(), by.clone())));
    match ask_agent_owner(ctx, &id, make, |r| matches!(r, Reply::Busy)).await? {
        Reply::Done => Ok(ok_status()),
        Reply::Bound(change) => {
            // A new or moved binding is durable before the 2xx (review of issue 20:
            // otherwise a restart forgets it, and whoever heartbeats first takes the
            // agent's pending tasks).
            let put = Mutation::PutAgentBinding(crate::durable::binding_record(
                &change.agent_id,
                &change.owner,
            ));
            let saved = ctx
                .commit_as(vec![put], binding_class(&change, credential))
                .await;
            binding_done(ctx, &change, saved.is_ok()).await;
            saved.map(|()| ok_status())
        }
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

/// `DELETE /api/registry/agents/{id}` (admin): the agent and its binding, from memory
/// and from the durable store (the deletion is durable before the 2xx; if the store
/// refuses it, nothing is removed).
pub async fn delete(ctx: &ShardCtx, raw_id: &str) -> Answer<Response> {
    let id = path_param(raw_id)?;
    let make = || Op::DeleteBegin(Box::new(id.clone()));
    match ask_agent_owner(ctx, &id, make, |r| matches!(r, Reply::Busy)).await? {
        Reply::Done => Ok(ok_status()),
        Reply::NotFound => Ok(not_found_200()),
        Reply::Deleting => {
            // Never refused by the size bound: it frees space.
            let gone = vec![Mutation::DeleteAgentBinding(id.clone())];
            let saved = ctx.commit_as(gone, WriteClass::Progress).await;
            let done = match &saved {
                Ok(()) => {
                    ask_owner_retry(ctx, &id, || Op::DeleteFinish(Box::new(id.clone()))).await
                }
                Err(_) => {
                    ask_owner_retry(ctx, &id, || Op::BindingSaved(Box::new(id.clone()))).await
                }
            };
            saved?;
            done?;
            Ok(ok_status())
        }
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
