//! The hub's workflows: the heartbeat with its task claims, and tasks (create, read,
//! list, update). Typed inputs (parsed bodies, the caller's principal) in, an
//! [`Outcome`] or an [`Error`] out, on any [`Shard`].
//!
//! A task lives on its home shard (`shard_of(skill)`, else `shard_of(target)`, else the
//! shard that took the request) and its id is drawn until `shard_of(id)` is that home,
//! so a task is found from its id alone. A task with both a target and a skill also
//! leaves a pointer on the target's shard (see docs/ARCHITECTURE.md).
//!
//! Durability (issue 10): a change is applied on its owner, made durable, and only then
//! acknowledged; when the store does not take it, the change is undone on its owner
//! through room reserved there before it was made (`shard::reserve`), so an undo is
//! never lost to a full mailbox.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::hub::cluster::TakeBacks;
use crate::hub::ops::{HeartbeatCall, Op, Reply, Store};
use crate::hub::records::task_record;
use crate::hub::{
    for_reader, heartbeat_body, new_task_id, task_created_body, Placement, Task, TaskId,
    TaskStoreConfig, TaskSubmission, TaskUpdate, DEFAULT_TTL_SECS, HEARTBEAT_IDLE_BODY,
    TASK_STORE_NAMES,
};
use crate::limits::{too_big, FieldLimits, Principal};
use crate::registry::{Heartbeat, AGENT_STORE_NAMES, NOT_FOUND_BODY, OK_BODY};
use crate::shard::paging::{page_of, page_req, time_key, PageLimits};
use crate::shard::{
    ask, ask_all, fill_random, random, reserve, settle, tell, Durability, Error, FollowUp, Outcome,
    Owns, Request, Shard, ShardId,
};
use chatixia_store::{Mutation, WriteClass};

/// What the hub's routes are held to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// A task's `skill`, `target_agent_id`, `source_agent_id`, and an update's `state`.
    pub fields: FieldLimits,
    /// Bytes of a task's `payload` as JSON text (`--task-payload-bytes-max`). Larger: 413.
    pub payload_bytes_max: usize,
    /// Bytes of an update's `result` and `error` (`--task-result-bytes-max`). Larger: 413.
    pub result_bytes_max: usize,
    /// Largest `ttl` in seconds (`--task-ttl-max`). Above: 422.
    pub ttl_max: u64,
    /// List pages.
    pub pages: PageLimits,
    /// `--require-agent-auth`: an update needs the assignee's token (see `update`).
    pub require_agent_auth: bool,
    /// Shards holding tasks away from their claim home since a restart with another
    /// shard count: heartbeats ask them too (`server::boot`).
    pub stray_task_shards: Vec<usize>,
    /// Each shard's task store: its byte budget and client quotas, the bytes one
    /// heartbeat claims, the anonymous share, how long finished tasks are kept
    /// (`--task-store-bytes-max`, `--task-client-bytes-max`, `--task-client-tasks-max`,
    /// `--list-response-bytes-max`, `--anonymous-share-percent`, `--task-retention`).
    pub tasks: TaskStoreConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            fields: FieldLimits::default(),
            payload_bytes_max: 64 * 1024,
            result_bytes_max: 64 * 1024,
            ttl_max: 7 * 24 * 3600,
            pages: PageLimits::default(),
            require_agent_auth: false,
            stray_task_shards: Vec::new(),
            tasks: TaskStoreConfig::default(),
        }
    }
}

impl Config {
    /// `POST /api/hub/tasks`.
    pub fn check_task(&self, t: &TaskSubmission) -> Result<(), Error> {
        self.fields.id("skill", &t.skill)?;
        self.fields.id("target_agent_id", &t.target_agent_id)?;
        self.fields.id("source_agent_id", &t.source_agent_id)?;
        if t.payload.len() > self.payload_bytes_max {
            return Err(too_big(
                "payload",
                t.payload.len(),
                self.payload_bytes_max,
                "--task-payload-bytes-max",
            ));
        }
        if t.ttl > self.ttl_max {
            return Err(Error::unprocessable(format!(
                "field `ttl` is {}; the most is {} seconds (--task-ttl-max)",
                t.ttl, self.ttl_max
            )));
        }
        Ok(())
    }

    /// `POST /api/hub/tasks/{id}`.
    pub fn check_update(&self, u: &TaskUpdate) -> Result<(), Error> {
        self.fields.field("state", &u.state)?;
        for (name, v) in [("result", &u.result), ("error", &u.error)] {
            if v.len() > self.result_bytes_max {
                return Err(too_big(
                    name,
                    v.len(),
                    self.result_bytes_max,
                    "--task-result-bytes-max",
                ));
            }
        }
        Ok(())
    }
}

fn unexpected() -> Error {
    tracing::error!("unexpected reply from a hub");
    Error::internal("internal error")
}

/// Redraws of a task id that already exists on its home shard (44 random bits: a clash
/// is practically impossible; this only bounds the loop).
const TASK_ID_TRIES_MAX: usize = 8;

/// Draws a task id that hashes to `home`. Each draw hits `home` with probability
/// 1/shards, so this takes `shards` draws on average; the bound only matters if the
/// random source is broken.
fn draw_task_id<S: Shard>(sh: &S, home: ShardId) -> Result<TaskId, Error> {
    random(&mut [0u8; 1])?; // fail early (500) if the OS has no randomness
    let draws_max = 64 * sh.count().max(1) + 64;
    for _ in 0..draws_max {
        let id = new_task_id(&mut fill_random);
        if sh.shard_of(id.as_bytes()) == home {
            return Ok(id);
        }
    }
    Err(Error::internal("could not draw a task id"))
}

/// The durable store's size bound a change for `by` is held to: its anonymous share for
/// a client without credentials.
fn write_class(by: &Principal) -> WriteClass {
    if by.peer.is_none() {
        WriteClass::Anonymous
    } else {
        WriteClass::Bounded
    }
}

/// `POST /api/hub/tasks` by `by`: stored on its home shard, durable before it is
/// claimable or acknowledged.
pub async fn create<S: Shard + Owns<RefCell<TakeBacks>>>(
    sh: &S,
    cfg: &Config,
    sub: TaskSubmission,
    by: Principal,
) -> Result<Outcome, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    cfg.check_task(&sub)?;
    // In a cluster, Redis is the hub's store of record (`hub::cluster`).
    if let Some(link) = sh.cluster() {
        return crate::hub::cluster::create(sh, link, &cfg.tasks, sub, by).await;
    }
    let home = match sub.placement() {
        Placement::Skill { skill, .. } => sh.shard_of(skill.as_bytes()),
        Placement::Agent(agent) => sh.shard_of(agent.as_bytes()),
        Placement::Any => sh.id(),
    };
    let class = write_class(&by);
    // The follow-up on the home shard (saved, or removed when the store refuses it) is
    // never refused: its room is taken before the task is.
    let room = reserve(sh, home)?;
    let mut sub = sub;
    for _ in 0..TASK_ID_TRIES_MAX {
        let id = draw_task_id(sh, home)?;
        let op = Op::Create(Box::new((id.clone(), sub, by.clone())));
        match ask(sh, home, op).await? {
            Reply::Task(Some(task)) => {
                let put = vec![Mutation::PutTask(task_record(&task))];
                if let Err(e) = sh.commit(put, Durability::Now(class)).await {
                    settle(room, Op::Remove(Box::new(id)));
                    return Err(e);
                }
                settle(room, Op::Saved(Box::new(id.clone())));
                // The answer waits until the task is claimable (`Sync`) and its pointer
                // left (`repoint`: a targeted skill task whose target lives on another
                // shard): a heartbeat that starts after it, through any shard, gets the
                // task (its ask could otherwise be read there before the tells). Best
                // effort: a mailbox full past the ask's patience answers anyway.
                if ask(sh, home, Op::Sync).await.is_err() {
                    tracing::warn!(task = %id, "could not confirm the task is claimable (mailbox full)");
                }
                repoint(sh, &task, home).await;
                return Ok(Outcome::Json(task_created_body(&id)));
            }
            Reply::Refused(r) => return Err(r.error(&TASK_STORE_NAMES)),
            // The id was taken: the submission comes back for another draw.
            Reply::InUse(back) => sub = *back,
            _ => return Err(unexpected()),
        }
    }
    Err(Error::internal("could not draw a free task id"))
}

fn sort_tasks(tasks: &mut [Task]) {
    tasks.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
}

/// `GET /api/hub/tasks/all[?limit=N&cursor=C]`: one page of every shard's tasks, by
/// creation time then id (`shard::paging`); what `reader` may not read is withheld.
pub async fn list_page<S: Shard>(
    sh: &S,
    cfg: &Config,
    reader: &Principal,
    limit: Option<&str>,
    cursor: Option<&str>,
) -> Result<Outcome, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let page = page_req(limit, cursor, &cfg.pages)?;
    let mut all: Vec<Task> = Vec::new();
    for r in ask_all(sh, |_| Op::ListPage(Box::new(page.clone()))).await? {
        match r {
            Reply::Tasks(v) => all.extend(*v),
            _ => return Err(unexpected()),
        }
    }
    // In a cluster: the tasks in Redis, with any this node held before it joined.
    if let Some(link) = sh.cluster() {
        all.extend(crate::hub::cluster::page(link, &page).await?);
    }
    sort_tasks(&mut all);
    Ok(page_of(
        &all,
        &page,
        &cfg.pages,
        |t| time_key(t.created_at, &t.id),
        |t| for_reader(t, reader, false),
    ))
}

/// `GET /api/hub/tasks/{id}` (what `reader` may not read is withheld).
pub async fn get<S: Shard>(sh: &S, reader: &Principal, id: String) -> Result<Outcome, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    if let Some(link) = sh.cluster() {
        if let Some(found) = crate::hub::cluster::get(link, reader, &id).await? {
            return Ok(found);
        }
    }
    let to = sh.shard_of(id.as_bytes());
    match ask(sh, to, Op::Get(Box::new(id))).await? {
        Reply::Task(Some(t)) => Ok(Outcome::Json(for_reader(&t, reader, true))),
        Reply::Task(None) => Ok(Outcome::Static(NOT_FOUND_BODY.as_bytes())),
        _ => Err(unexpected()),
    }
}

/// `POST /api/hub/tasks/{id}` by `by`: the task's claimer or creator
/// (`Task::updatable_by`), or under `--require-agent-auth` its assignee's token (the
/// router has checked that a token was sent). Durable before it is acknowledged; put
/// back when the store does not take it.
pub async fn update<S: Shard + Owns<RefCell<Store>> + Owns<RefCell<TakeBacks>>>(
    sh: &S,
    cfg: &Config,
    id: String,
    upd: TaskUpdate,
    by: Principal,
) -> Result<Outcome, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    cfg.check_update(&upd)?;
    let to = sh.shard_of(id.as_bytes());
    let credential = by.peer.is_some();
    // The task's report is charged to its poster (`TaskStore::try_update`), and so is
    // its durable write: an authenticated agent's report is held to the store's bound,
    // not to the anonymous share of the task's submitter.
    let class = if credential {
        WriteClass::Bounded
    } else {
        WriteClass::Anonymous
    };
    let as_agent = credential && cfg.require_agent_auth && !by.admin;
    if let Some(link) = sh.cluster() {
        let done = crate::hub::cluster::update(
            sh,
            link,
            &cfg.tasks,
            &id,
            upd.clone(),
            by.clone(),
            as_agent,
        )
        .await?;
        if let Some(done) = done {
            return Ok(done);
        }
    }
    let op = if as_agent {
        Op::UpdateAs(Box::new((id, upd, by)))
    } else {
        Op::Update(Box::new((id, upd, by)))
    };
    let room = reserve(sh, to)?;
    match ask(sh, to, op).await? {
        Reply::Updated(b) => {
            let (before, after) = *b;
            // Finished tasks are kept in memory only (under the retention).
            let m = if after.is_finished() {
                Mutation::DeleteTask(after.id.clone())
            } else {
                Mutation::PutTask(task_record(&after))
            };
            if let Err(e) = sh.commit(vec![m], Durability::Now(class)).await {
                put_back(sh, room, Op::Restore(Box::new(before)));
                return Err(e);
            }
            // Pending again, a task aimed at an agent that lives elsewhere needs its
            // pointer again (its first claim used it): left, and the answer waits for
            // it as a post's does.
            if after.is_pending() && !before.is_pending() {
                repoint(sh, &after, to).await;
            }
            Ok(Outcome::Static(OK_BODY.as_bytes()))
        }
        Reply::NotFound => Ok(Outcome::Static(NOT_FOUND_BODY.as_bytes())),
        Reply::Refused(r) => Err(r.error(&TASK_STORE_NAMES)),
        Reply::Forbidden(why) => Err(Error::forbidden(*why)),
        _ => Err(unexpected()),
    }
}

/// Claims asked of one shard in a heartbeat, with the room to put them back there.
struct Claims<R> {
    room: R,
    tasks: Vec<Task>,
}

/// `POST /api/hub/heartbeat` by `by`: (1) the agent's owner checks its binding, upserts
/// it, claims the tasks local to it and hands back the pointers left for the agent; (2)
/// each pointer's home shard claims that id if still pending; (3) every other shard among
/// `shard_of(skill)` claims its matching tasks. Each claim is a local state change on
/// the task's only shard, so a task is assigned at most once however heartbeats race.
/// Claims are durable before the agent gets them; when the store does not take them they
/// go back to pending on their shards (room for that is reserved before each claim).
pub async fn heartbeat<S: Shard + Owns<RefCell<Store>> + Owns<RefCell<TakeBacks>>>(
    sh: &S,
    agents: &crate::registry::Config,
    cfg: &Config,
    hb: Heartbeat,
    by: Principal,
) -> Result<Outcome, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
    crate::registry::ops::Op: Request<S::Msg>,
{
    agents.check_heartbeat(&hb)?;
    let credential = by.peer.is_some();
    let owner = sh.shard_of(hb.agent_id.as_bytes());
    // Room on the owner for putting back its claims, and for the follow-up of a change
    // of the agent's binding (saved or undone), taken before anything changes.
    let owner_room = reserve(sh, owner)?;
    let binding_room = reserve(sh, owner)?;
    // A heartbeat of an agent whose binding change is being saved asks again shortly.
    let again = |r| match r {
        Reply::Busy(b) => Err(Op::Heartbeat(b)),
        r => Ok(r),
    };
    // The heartbeat goes to the owner and comes back in one block (`HeartbeatCall`):
    // its agent id, skills and principal are used again below, never copied.
    let mut op = Op::Heartbeat(HeartbeatCall::new(hb, by));
    // In a cluster, an agent not held here bound to this principal is checked against
    // the cluster's binding first (`registry::bindings`), once; undone if the heartbeat
    // is refused after it.
    let mut cluster = None;
    let undo = |sh: &S, cluster: Option<crate::registry::bindings::Bound>| {
        if let Some(b) = cluster {
            crate::registry::bindings::undo(sh, b);
        }
    };
    let call = loop {
        let asked = crate::registry::api::ask_owner_while_busy(sh, owner, op, again).await;
        let reply = match asked {
            Ok(Ok(r)) => r,
            Ok(Err(back)) => {
                undo(sh, cluster);
                return Err(match back {
                    Op::Heartbeat(b) => crate::registry::api::still_saving(&b.hb.agent_id),
                    _ => unexpected(),
                });
            }
            Err(e) => {
                undo(sh, cluster);
                return Err(e);
            }
        };
        let refused = match reply {
            Reply::HeartbeatDone(b) => break b,
            Reply::AskCluster(mut b) if !b.cleared => {
                match Box::pin(crate::registry::bindings::bind(sh, &b.hb.agent_id, &b.by)).await {
                    Ok(bound) => cluster = bound,
                    Err(e) => return Err(e),
                }
                b.cleared = true;
                op = Op::Heartbeat(b);
                continue;
            }
            Reply::Refused(r) => r.error(&AGENT_STORE_NAMES),
            Reply::Forbidden(why) => Error::forbidden(*why),
            _ => unexpected(),
        };
        undo(sh, cluster);
        return Err(refused);
    };
    let HeartbeatCall {
        hb,
        by,
        claimed,
        pointers,
        change,
        ..
    } = *call;
    let (agent, skills) = (hb.agent_id, hb.skill_names);
    let gathered = gather_claims(
        sh, cfg, owner, owner_room, &agent, &skills, &by, claimed, pointers,
    )
    .await;
    let parts = match gathered {
        Ok(parts) => parts,
        Err(e) => {
            if let Some(change) = &change {
                crate::registry::api::binding_done(binding_room, change, false);
            }
            undo(sh, cluster);
            return Err(e);
        }
    };
    // A heartbeat that claims nothing and keeps its binding writes nothing. A claim adds
    // the agent's id to stored tasks: never refused by the size bound, which would keep a
    // full store full.
    let mut writes: Vec<Mutation> = parts
        .iter()
        .flat_map(|p| p.tasks.iter())
        .map(|t| Mutation::PutTask(task_record(t)))
        .collect();
    // A new or moved binding of the agent (its first heartbeat, or another credential
    // taking it over) is durable in the same write before the 2xx (review of issue 20);
    // a new one is held to the bound.
    let class = match &change {
        Some(ch) => {
            writes.push(Mutation::PutAgentBinding(
                crate::registry::records::binding_record(&ch.agent_id, &ch.owner),
            ));
            crate::registry::api::binding_class(ch, credential)
        }
        None => WriteClass::Progress,
    };
    let saved = sh.commit(writes, Durability::Now(class)).await;
    if let Some(change) = &change {
        crate::registry::api::binding_done(binding_room, change, saved.is_ok());
    }
    if let Err(e) = saved {
        undo(sh, cluster);
        // Not acknowledged: the tasks go back to pending on their shards, with the
        // pointers their claims used up.
        for p in parts {
            if !p.tasks.is_empty() {
                let home = p.room.to();
                let aimed: Vec<Task> = p
                    .tasks
                    .iter()
                    .filter(|t| !t.target_agent_id.is_empty())
                    .cloned()
                    .collect();
                put_back(sh, p.room, Op::Unclaim(Box::new(p.tasks)));
                for t in &aimed {
                    repoint(sh, t, home).await;
                }
            }
        }
        return Err(e);
    }
    let mut claimed: Vec<Task> = parts.into_iter().flat_map(|p| p.tasks).collect();
    // In a cluster, the tasks in Redis (durable before they are handed out). While
    // Redis cannot be asked they stay pending there for a later heartbeat: the agent's
    // own heartbeat still succeeds with what this node holds.
    if let Some(link) = sh.cluster() {
        // Boxed, as the binding check above: a Redis round trip's state is kept out of
        // every heartbeat's future (moved whole at each step, cluster or not).
        let claimer = by.holder();
        let claim = crate::hub::cluster::claim(sh, link, &cfg.tasks, &agent, &skills, &claimer);
        match Box::pin(claim).await {
            Ok(more) => claimed.extend(more),
            Err(e) => {
                tracing::debug!(agent = %agent, error = ?e, "no cluster claims this heartbeat")
            }
        }
    }
    sort_tasks(&mut claimed);
    if claimed.is_empty() {
        return Ok(Outcome::Static(HEARTBEAT_IDLE_BODY));
    }
    Ok(Outcome::Json(heartbeat_body(&claimed)))
}

/// Leaves the pointer of `task` (living on shard `home`) for its target, if it is aimed
/// at an agent owned by another shard: at a post, and again when the task becomes
/// pending after a claim used the pointer up. Waits until it is there (`Op::Sync`).
/// Best effort: a full mailbox leaves the task claimable through its skill.
async fn repoint<S: Shard>(sh: &S, task: &Task, home: ShardId)
where
    Op: Request<S::Msg, Reply = Reply>,
{
    if task.target_agent_id.is_empty() {
        return;
    }
    let owner = sh.shard_of(task.target_agent_id.as_bytes());
    if owner == home {
        return;
    }
    let ptr = Op::Pointer(Box::new((
        task.target_agent_id.clone(),
        task.id.clone(),
        task.deadline(),
    )));
    if tell(sh, owner, ptr).await.is_err() || ask(sh, owner, Op::Sync).await.is_err() {
        tracing::warn!(task = %task.id, "could not leave a task pointer (mailbox full)");
    }
}

/// Sends `op`, which may make a task pending again (a claim put back, an update undone),
/// into `room`: this shard's hints from that shard go first (`hub::hints`, a retry here
/// may come before that shard tells).
fn put_back<S: Shard + Owns<RefCell<Store>>>(sh: &S, room: S::Room, op: Op)
where
    Op: Request<S::Msg>,
{
    Owns::<RefCell<Store>>::owned(sh)
        .borrow_mut()
        .hints
        .barrier(room.to());
    settle(room, op);
}

/// Steps (2) and (3) of [`heartbeat`]: the owner's claims (`claimed`, with its room),
/// then the pointers' home shards and the skill shards. `Err` only when nothing was
/// claimed and a pointer's home could not be asked.
#[allow(clippy::too_many_arguments)]
async fn gather_claims<S: Shard + Owns<RefCell<Store>>>(
    sh: &S,
    cfg: &Config,
    owner: ShardId,
    owner_room: S::Room,
    agent: &str,
    skills: &[String],
    by: &Principal,
    claimed: Vec<Task>,
    pointers: Vec<TaskId>,
) -> Result<Vec<Claims<S::Room>>, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    // `agent` and `skills` are copied only into the messages that carry them (most
    // heartbeats send none: their agent's skills are claimed at its owner).
    let mut parts: Vec<Claims<S::Room>> = vec![Claims {
        room: owner_room,
        tasks: claimed,
    }];
    // Pointers, grouped by home shard.
    let mut by_home: BTreeMap<ShardId, Vec<TaskId>> = BTreeMap::new();
    for id in pointers {
        by_home
            .entry(sh.shard_of(id.as_bytes()))
            .or_default()
            .push(id);
    }
    // Skill shards other than the owner (the owner already claimed its local ones), and
    // shards holding tasks away from their claim home since a restart with another
    // shard count.
    let mut skill_shards: Vec<ShardId> = skills
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| sh.shard_of(s.as_bytes()))
        .chain(cfg.stray_task_shards.iter().copied())
        .filter(|&s| s != owner)
        .collect();
    skill_shards.sort_unstable();
    skill_shards.dedup();
    // Skill shards that said "none left" for every skill of this heartbeat they hold,
    // and have said nothing since, are not asked again (`hub::hints`). Not in a cluster
    // (tasks are Redis's there), not the stray shards (which hold tasks of skills homed
    // elsewhere), not this shard (its own claim is cheap, and nothing tells it).
    let hintable =
        |s: ShardId| s != sh.id() && sh.cluster().is_none() && !cfg.stray_task_shards.contains(&s);
    // The heartbeat's skills that skill shard `s` holds.
    let held = |s: ShardId| {
        skills
            .iter()
            .map(String::as_str)
            .filter(move |k| !k.is_empty() && sh.shard_of(k.as_bytes()) == s)
    };
    {
        let now = sh.now();
        let hints = &mut Owns::<RefCell<Store>>::owned(sh).borrow_mut().hints;
        skill_shards.retain(|&s| {
            let skip =
                hintable(s) && !sh.mail_waiting_from(s) && held(s).all(|k| hints.none_left(k, now));
            hints.skipped += u64::from(skip);
            !skip
        });
    }
    // Who claims, made only for the messages that carry it.
    let claimer = if by_home.is_empty() && skill_shards.is_empty() {
        crate::limits::Holder::default()
    } else {
        by.holder()
    };

    let mut first_error = None;
    for (home, ids) in by_home {
        let keep = ids.clone();
        let claimed = match reserve(sh, home) {
            Ok(room) => {
                let op = Op::ClaimIds(Box::new((agent.to_owned(), ids, claimer.clone())));
                match ask(sh, home, op).await {
                    Ok(Reply::Tasks(v)) => Ok((room, *v)),
                    Ok(_) => return Err(unexpected()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match claimed {
            Ok((room, tasks)) => parts.push(Claims { room, tasks }),
            Err(e) => {
                // Keep the pointers for the next heartbeat (best effort).
                let deadline = sh.now().saturating_add_secs(DEFAULT_TTL_SECS);
                for id in keep {
                    let ptr = Op::Pointer(Box::new((agent.to_owned(), id, deadline)));
                    let _ = tell(sh, owner, ptr).await;
                }
                first_error.get_or_insert(e);
            }
        }
    }
    for s in skill_shards {
        // Tasks stay pending on a shard that cannot be reached, for the next heartbeat;
        // what was already claimed must still be handed out, so that is not an error.
        let Ok(room) = reserve(sh, s) else {
            tracing::warn!(
                shard = s,
                "heartbeat could not reserve room on a skill shard"
            );
            continue;
        };
        // A "none left" is worth asking for where a hint may be used (see above).
        let hint = hintable(s);
        let asked = Owns::<RefCell<Store>>::owned(sh).borrow().hints.asking(s);
        let op = Op::ClaimFor(Box::new((
            agent.to_owned(),
            skills.to_vec(),
            claimer.clone(),
            hint,
        )));
        match ask(sh, s, op).await {
            Ok(Reply::ClaimedFor(b)) => {
                let (tasks, none) = *b;
                if let (Some(none), true) = (none, hint) {
                    let held: Vec<&str> = held(s).collect();
                    let store = Owns::<RefCell<Store>>::owned(sh);
                    store
                        .borrow_mut()
                        .hints
                        .record(s, &held, none, asked, sh.now());
                }
                parts.push(Claims { room, tasks })
            }
            Ok(_) => return Err(unexpected()),
            Err(_) => tracing::warn!(shard = s, "heartbeat could not reach a skill shard"),
        }
    }
    let total: usize = parts.iter().map(|p| p.tasks.len()).sum();
    if total == 0 {
        if let Some(e) = first_error {
            return Err(e);
        }
    }
    Ok(parts)
}
