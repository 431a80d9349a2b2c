//! `/api/hub/heartbeat` and `/api/hub/tasks*`.
//!
//! A task lives on its home shard (`shard_of(skill)`, else `shard_of(target)`, else the
//! shard that took the request) and its id is drawn until `shard_of(id)` is that home,
//! so a task is found from its id alone. A task with both a target and a skill also
//! leaves a pointer on the target's shard (see docs/ARCHITECTURE.md).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::auth::principal::Principal;
use crate::durable::task_record;
use crate::http::{Request, Response};
use crate::hub::ops::{Op, Reply};
use crate::hub::{
    heartbeat_body, new_task_id, task_body, task_created_body, Placement, Task, TaskId,
    TaskSubmission, TaskUpdate,
};
use crate::registry::Heartbeat;
use crate::server::common::{
    ask, ask_all, fill_random, json_body, not_found_200, ok_json, ok_status, path_param,
    random_bytes, unexpected, Answer,
};
use crate::server::{Msg, ShardCtx};
use chatixia_store::{Mutation, WriteClass};

/// Redraws of a task id that already exists on its home shard (44 random bits: a clash
/// is practically impossible; this only bounds the loop).
const TASK_ID_TRIES_MAX: usize = 8;

/// Draws a task id that hashes to `home`. Each draw hits `home` with probability
/// 1/shards, so this takes `shards` draws on average; the bound only matters if the
/// random source is broken.
fn draw_task_id(ctx: &ShardCtx, home: usize) -> Answer<TaskId> {
    random_bytes::<1>()?; // fail early (500) if the OS has no randomness
    let draws_max = 64 * ctx.shard.count().max(1) + 64;
    for _ in 0..draws_max {
        let id = new_task_id(&mut fill_random);
        if ctx.shard.shard_of(&id) == home {
            return Ok(id);
        }
    }
    Err(Response::error(500, "could not draw a task id"))
}

/// `POST /api/hub/tasks`.
pub async fn create(ctx: &ShardCtx, req: &Request, peer: IpAddr) -> Answer<Response> {
    crate::limits::require_object(&req.body)?;
    let sub: TaskSubmission = json_body(req)?;
    ctx.config.limits.check_task(&sub)?;
    let source = (!sub.source_agent_id.is_empty()).then_some(sub.source_agent_id.as_str());
    let by = crate::auth::agent::principal(ctx, req, peer, source)?;
    let (home, pointer_for) = match sub.placement() {
        Placement::Skill { skill, pointer_for } => (ctx.shard.shard_of(skill), pointer_for),
        Placement::Agent(agent) => (ctx.shard.shard_of(agent), None),
        Placement::Any => (ctx.shard.id(), None),
    };
    // A targeted skill task whose target lives on another shard leaves a pointer there.
    let pointer_to = pointer_for
        .map(|t| ctx.shard.shard_of(t))
        .filter(|&s| s != home);
    let target = sub.target_agent_id.clone();
    let ttl = sub.ttl;
    let class = if by.peer.is_none() {
        WriteClass::Anonymous
    } else {
        WriteClass::Bounded
    };
    let mut sub = Some(sub);
    for _ in 0..TASK_ID_TRIES_MAX {
        let id = draw_task_id(ctx, home)?;
        let Some(s) = sub.take() else { break };
        let op = Op::Create(Box::new((id.clone(), s, by.clone())));
        match ask(ctx, home, op).await? {
            Reply::Task(Some(task)) => {
                // Durable before it is claimable or acknowledged (issue 10).
                let saved = ctx
                    .commit_as(vec![Mutation::PutTask(task_record(&task))], class)
                    .await;
                if let Err(resp) = saved {
                    let _ = ask_retry(ctx, home, || Op::Remove(Box::new(id.clone()))).await;
                    return Err(resp);
                }
                ask_retry(ctx, home, || Op::Saved(Box::new(id.clone()))).await?;
                if let Some(to) = pointer_to {
                    let deadline = ctx.now().saturating_add_secs(ttl);
                    let ptr = Op::Pointer(Box::new((target, id.clone(), deadline)));
                    if ask(ctx, to, ptr).await.is_err() {
                        tracing::warn!(task = %id, "could not leave a task pointer (mailbox full)");
                    }
                }
                return Ok(ok_json(task_created_body(&id)));
            }
            Reply::Refused(r) => return Ok(ctx.refused("tasks", &r)),
            Reply::InUse => {
                // The submission was consumed by the message; rebuild it from the request.
                sub = Some(json_body(req)?);
            }
            _ => return Ok(unexpected()),
        }
    }
    Ok(Response::error(500, "could not draw a free task id"))
}

/// The reader of a task route: its principal (reads need no token, also under
/// `--require-agent-auth`), or under `--insecure-open-admin` (the reference hub's
/// operator view, whose admin plane is open to anyone) an admin.
fn reader(ctx: &ShardCtx, req: &Request, peer: IpAddr) -> Answer<Principal> {
    let address = crate::limits::client_key(peer);
    if ctx.config.insecure_open_admin {
        return Ok(Principal {
            admin: true,
            ..Principal::anonymous(address)
        });
    }
    let cfg = &ctx.config;
    crate::auth::principal::resolve(
        req,
        &cfg.api_keys,
        &cfg.jwt_secret,
        ctx.now(),
        cfg.jwt_leeway_secs,
        address,
    )
    // An unknown key decides what is withheld as surely as a wrong one at `/api/token`:
    // it counts against the address's failure budget.
    .inspect(|by| crate::auth::agent::unknown_key(ctx, req, by, peer))
    .map_err(|r| {
        if r.forged {
            crate::auth::budget::failed(ctx, peer, crate::auth::failures::Failure::Agent);
        }
        r.response
    })
}

/// A task as `reader` may see it: whole if [`Task::readable_by`], else with `payload`,
/// `result` and `error` withheld and `"withheld":true` added (issue 20).
fn for_reader(t: &Task, reader: &Principal, sorted: bool) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Withheld<T> {
        #[serde(flatten)]
        task: T,
        withheld: bool,
    }
    if t.readable_by(reader) {
        return if sorted {
            task_body(t)
        } else {
            crate::server::paging::item_json(t)
        };
    }
    let w = t.withheld();
    if sorted {
        wire::json::json_vec(&Withheld {
            task: w.sorted_keys(),
            withheld: true,
        })
    } else {
        wire::json::json_vec(&Withheld {
            task: &w,
            withheld: true,
        })
    }
}

/// `GET /api/hub/tasks/all[?limit=N&cursor=C]`: one page of every shard's tasks, by
/// creation time then id (see `server::paging`); what the caller may not read is
/// withheld ([`for_reader`]).
pub async fn list_page(ctx: &ShardCtx, req: &Request, peer: IpAddr) -> Answer<Response> {
    use crate::server::paging::{page_req, page_response, time_key};
    let reader = reader(ctx, req, peer)?;
    let page = page_req(req, &ctx.config.limits)?;
    let mut all: Vec<Task> = Vec::new();
    for r in ask_all(ctx, |_| Op::ListPage(Box::new(page.clone()))).await? {
        match r {
            Reply::Tasks(v) => all.extend(*v),
            _ => return Ok(unexpected()),
        }
    }
    sort_tasks(&mut all);
    Ok(page_response(
        &all,
        &page,
        &ctx.config.limits,
        |t| time_key(t.created_at, &t.id),
        |t| for_reader(t, &reader, false),
    ))
}

fn sort_tasks(tasks: &mut [Task]) {
    tasks.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
}

/// `GET /api/hub/tasks/{id}` (what the caller may not read is withheld).
pub async fn get(ctx: &ShardCtx, req: &Request, raw_id: &str, peer: IpAddr) -> Answer<Response> {
    let id = path_param(raw_id)?;
    let reader = reader(ctx, req, peer)?;
    let to = ctx.shard.shard_of(&id);
    match ask(ctx, to, Op::Get(Box::new(id))).await? {
        Reply::Task(Some(t)) => Ok(ok_json(for_reader(&t, &reader, true))),
        Reply::Task(None) => Ok(not_found_200()),
        _ => Ok(unexpected()),
    }
}

/// `POST /api/hub/tasks/{id}`: by the task's claimer or creator (`Task::updatable_by`),
/// or under `--require-agent-auth` its assignee's token.
pub async fn update(ctx: &ShardCtx, req: &Request, raw_id: &str, peer: IpAddr) -> Answer<Response> {
    let id = path_param(raw_id)?;
    crate::limits::require_object(&req.body)?;
    let upd: TaskUpdate = json_body(req)?;
    ctx.config.limits.check_update(&upd)?;
    let to = ctx.shard.shard_of(&id);
    let by = crate::auth::agent::principal(ctx, req, peer, None)?;
    let credential = by.peer.is_some();
    // The task's report is charged to its poster (`TaskStore::try_update`), and so is
    // its durable write: an authenticated agent's report is held to the store's bound,
    // not to the anonymous share of the task's submitter.
    let class = if credential {
        WriteClass::Bounded
    } else {
        WriteClass::Anonymous
    };
    let op = if credential && ctx.config.require_agent_auth && !by.admin {
        Op::UpdateAs(Box::new((id, upd, by)))
    } else {
        Op::Update(Box::new((id, upd, by)))
    };
    match ask(ctx, to, op).await? {
        Reply::Updated(b) => {
            let (before, after) = *b;
            // Finished tasks are kept in memory only (under the retention).
            let m = if after.is_finished() {
                Mutation::DeleteTask(after.id.clone())
            } else {
                Mutation::PutTask(task_record(&after))
            };
            if let Err(resp) = ctx.commit_as(vec![m], class).await {
                let _ = ask_retry(ctx, to, || Op::Restore(Box::new(before.clone()))).await;
                return Err(resp);
            }
            Ok(ok_status())
        }
        Reply::NotFound => Ok(not_found_200()),
        Reply::Refused(r) => Ok(ctx.refused("tasks", &r)),
        Reply::Forbidden(why) => Ok(Response::error(403, *why)),
        _ => Ok(unexpected()),
    }
}

/// `POST /api/hub/heartbeat`: (1) the agent's owner upserts it, claims the tasks local to
/// it and hands back the pointers left for the agent; (2) each pointer's home shard
/// claims that id if still pending; (3) every other shard among `shard_of(skill)` claims
/// its matching tasks. Each claim is a local state change on the task's only shard, so
/// a task is assigned at most once however heartbeats race.
pub async fn heartbeat(ctx: &ShardCtx, req: &Request, peer: IpAddr) -> Answer<Response> {
    crate::limits::require_object(&req.body)?;
    let hb: Heartbeat = json_body(req)?;
    ctx.config.limits.check_heartbeat(&hb)?;
    let by = crate::auth::agent::principal(ctx, req, peer, Some(&hb.agent_id))?;
    let claimer = by.holder();
    let credential = by.peer.is_some();
    let agent = hb.agent_id.clone();
    let skills = hb.skill_names.clone();
    let owner = ctx.shard.shard_of(&agent);
    // A heartbeat of an agent whose binding change is being saved asks again shortly.
    let make = || Op::Heartbeat(Box::new((hb.clone(), by.clone())));
    let busy = |r: &Reply| matches!(r, Reply::Busy);
    let (claimed, pointers, change) =
        match crate::registry::api::ask_agent_owner(ctx, &agent, make, busy).await? {
            Reply::HeartbeatDone(b) => *b,
            Reply::Refused(r) => return Ok(ctx.refused("agents", &r)),
            Reply::Forbidden(why) => return Ok(Response::error(403, *why)),
            _ => return Ok(unexpected()),
        };
    let gathered: Answer<Vec<Task>> = async {
        let mut claimed = claimed;
        // Pointers, grouped by home shard.
        let mut by_home: BTreeMap<usize, Vec<TaskId>> = BTreeMap::new();
        for id in pointers {
            by_home.entry(ctx.shard.shard_of(&id)).or_default().push(id);
        }
        // Skill shards other than the owner (the owner already claimed its local ones).
        let mut skill_shards: Vec<usize> = skills
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| ctx.shard.shard_of(s))
            .filter(|&s| s != owner)
            .collect();
        // Shards holding tasks away from their claim home since a restart with another
        // shard count (see `durable::split`).
        skill_shards.extend(
            ctx.config
                .stray_task_shards
                .iter()
                .copied()
                .filter(|&s| s != owner),
        );
        skill_shards.sort_unstable();
        skill_shards.dedup();

        let mut first_error = None;
        for (home, ids) in by_home {
            let keep = ids.clone();
            let op = Op::ClaimIds(Box::new((agent.clone(), ids, claimer.clone())));
            match ask(ctx, home, op).await {
                Ok(Reply::Tasks(v)) => claimed.extend(*v),
                Ok(_) => return Err(unexpected()),
                Err(resp) => {
                    // Keep the pointers for the next heartbeat.
                    let deadline = ctx.now().saturating_add_secs(crate::hub::DEFAULT_TTL_SECS);
                    for id in keep {
                        let ptr = Msg::Hub(Op::Pointer(Box::new((agent.clone(), id, deadline))));
                        let _ = ctx.shard.try_tell(owner, ptr);
                    }
                    first_error.get_or_insert(resp);
                }
            }
        }
        for s in skill_shards {
            let op = Op::ClaimFor(Box::new((agent.clone(), skills.clone(), claimer.clone())));
            match ask(ctx, s, op).await {
                Ok(Reply::Tasks(v)) => claimed.extend(*v),
                Ok(_) => return Err(unexpected()),
                // Tasks stay pending on that shard for the next heartbeat; what was already
                // claimed must still be handed out, so the answer is not an error.
                Err(_) => tracing::warn!(shard = s, "heartbeat could not reach a skill shard"),
            }
        }
        if claimed.is_empty() {
            if let Some(resp) = first_error {
                return Err(resp);
            }
        }
        Ok(claimed)
    }
    .await;
    let mut claimed = match gathered {
        Ok(c) => c,
        Err(resp) => {
            if let Some(change) = &change {
                crate::registry::api::binding_done(ctx, change, false).await;
            }
            return Err(resp);
        }
    };
    sort_tasks(&mut claimed);
    // Claims are durable before the agent gets them; a heartbeat that claims nothing
    // writes nothing.
    let mut write: Vec<Mutation> = claimed
        .iter()
        .map(|t| Mutation::PutTask(task_record(t)))
        .collect();
    // A claim adds the agent's id to stored tasks: never refused by the size bound,
    // which would keep a full store full. A new or moved binding of the agent (its
    // first heartbeat, or another credential taking it over) is durable in the same
    // write before the 2xx (review of issue 20); a new one is held to the bound.
    let class = match &change {
        Some(ch) => {
            write.push(Mutation::PutAgentBinding(crate::durable::binding_record(
                &ch.agent_id,
                &ch.owner,
            )));
            crate::registry::api::binding_class(ch, credential)
        }
        None => WriteClass::Progress,
    };
    let saved = ctx.commit_as(write, class).await;
    if let Some(change) = &change {
        crate::registry::api::binding_done(ctx, change, saved.is_ok()).await;
    }
    if let Err(resp) = saved {
        // Not acknowledged: the tasks go back to pending for the next heartbeat.
        for t in &claimed {
            let mut back = t.clone();
            crate::hub::STATE_PENDING.clone_into(&mut back.state);
            back.assigned_agent_id.clear();
            back.access.claimed_by = None;
            let home = ctx.shard.shard_of(&t.id);
            let _ = ask_retry(ctx, home, || Op::Restore(Box::new(back.clone()))).await;
        }
        return Err(resp);
    }
    Ok(ok_json(heartbeat_body(&claimed)))
}

/// Asks shard `to` until the message is delivered: the follow-ups of a change the store
/// already decided (make a saved task claimable, drop or restore an unsaved one) must not
/// be dropped because of a burst. Waiting on a full mailbox is the backpressure.
async fn ask_retry(ctx: &ShardCtx, to: usize, make: impl Fn() -> Op) -> Answer<Reply> {
    const BACKOFF: std::time::Duration = std::time::Duration::from_millis(5);
    loop {
        match ctx.shard.ask(to, Msg::Hub(make())).await {
            Ok(Msg::HubReply(r)) => return Ok(r),
            Ok(_) => return Err(unexpected()),
            Err(reactor::AskError::Full(_)) => monoio::time::sleep(BACKOFF).await,
            Err(reactor::AskError::NoReply) => {
                return Err(Response::error(500, format!("shard {to} gave no reply")))
            }
        }
    }
}
