//! The task hub across the nodes of a cluster (`--cluster`, issue 25; docs/ARCHITECTURE.md
//! "Cluster: the task hub"). On a node alone a task lives on one shard and a claim is a
//! local state change there. In a cluster Redis is the hub's store of record: a task
//! posted at one node is read, claimed and reported at any other, a claim is made once
//! however heartbeats at several nodes race, and a node's death loses nothing (its
//! tasks were never its own).
//!
//! The hub's rules stay in Rust ([`Task::matches`], [`Task::updatable_by`], the
//! budgets' [`Line`]s): a change reads the task's record and its version, applies the
//! rule here, and writes the new record back only if the version is still the one read
//! ([`store::PUT`], a compare-and-set of a batch, each item on its own). Two nodes claiming the
//! same task both read it pending; Redis runs one `PUT` after the other, the second
//! finds a newer version and claims nothing. Each `PUT` is written with
//! `eval_durable` before its 2xx (Sentinel: `WAIT` for a replica).
//!
//! Keys (`{prefix}` is `--cluster-prefix`):
//! * `{prefix}t:{id}`: a hash, `r` the task's record (the data directory's `TaskRecord`
//!   as JSON, payload text verbatim) and `v` its version (1 on create, +1 on each
//!   change).
//! * Sorted sets whose members are [`time_key`]s (`created_at` then id: the order the
//!   hub lists and claims in): `{prefix}ta` every task (score 0, read by lex: the list
//!   pages), `{prefix}tp:t:{agent}` pending tasks by target and `{prefix}tp:s:{skill}`
//!   by skill (score 0: claims in creation order), `{prefix}tl` unfinished tasks by
//!   deadline and `{prefix}tf` finished ones by last update (score in seconds: the
//!   sweep); `{prefix}tc` claims not confirmed yet, by the time after which any node
//!   takes them back (`confirm`, [`sweep_unconfirmed`]).
//! * `{prefix}tb`: a hash of counters: `n`/`b` tasks and bytes held, `an`/`ab` those
//!   of anonymous clients, `n:{client}`/`b:{client}` each client's, `s:{state}` tasks by
//!   state (the dashboard's counts). A client's or a state's field goes when it counts
//!   nothing: states are any string an update sends, and a field kept at 0 for each
//!   would grow the hash (and every dashboard summary's `HGETALL`) without bound.
//!
//! Budgets are cluster-wide: this node's per-shard limits (`--task-store-bytes-max`,
//! `--task-client-bytes-max`, `--task-client-tasks-max`, the 65,536 tasks of a shard)
//! times its shard count, with the same anonymous share; the nodes of a cluster are
//! expected to run with the same flags. A refusal is the same 429/503 as a node alone,
//! and what a node alone never refuses (a claim, an expiry) is not refused here either.
//!
//! Bounded: a heartbeat reads at most [`CLAIM_CANDIDATES_MAX`] candidates of each of
//! its indexes and claims at most `claim_bytes_max`; a list page reads `limit + 1`
//! records; the sweep handles [`SWEEP_BATCH_MAX`] tasks a turn. Every task is in at
//! most five sorted sets; the counters hash holds two fields per client with tasks.

mod store;
mod takeback;

use std::collections::BTreeMap;

use chatixia_cluster::{ShardLink, Value};

use crate::hub::{
    new_task_id, task_created_body, Task, TaskStoreConfig, TaskSubmission, TaskUpdate,
    STATE_ASSIGNED, STATE_FAILED, STATE_PENDING, TASK_STORE_NAMES, TTL_EXPIRED_ERROR,
};
use crate::limits::{Charge, Holder, Principal};
use crate::registry::OK_BODY;
use crate::shard::paging::{time_key, PageReq};
use crate::shard::{fill_random, random, Error, Outcome, Owns, Shard};
use crate::time::UnixTime;
use std::cell::RefCell;
use store::*;
pub use store::{scripts, TOMBSTONE_MS};
use takeback::put;
pub use takeback::{retry_take_backs, TakeBacks, TAKE_BACKS_MAX, TAKE_BACK_RETRY_INTERVAL};

/// Candidates a heartbeat reads from each of its indexes (the agent's targeted tasks,
/// each skill's): a claim is bounded by `claim_bytes_max` anyway, and what is past
/// this stays pending for the agent's next heartbeat.
pub const CLAIM_CANDIDATES_MAX: usize = 64;

/// Tasks the sweep fails (past their TTL) or removes (past retention) per script: one
/// Redis call stays short; the rest wait for the next turn (every `EXPIRE_INTERVAL`).
pub const SWEEP_BATCH_MAX: usize = 128;

/// Retries of a change that lost a race (another node changed the task between the read
/// and the write): each retry reads the task again and applies the rule again.
const RACE_RETRIES_MAX: usize = 4;

/// `POST /api/hub/tasks` in a cluster: written to Redis (durably) before the 2xx.
pub async fn create<S: Shard + Owns<RefCell<TakeBacks>>>(
    sh: &S,
    link: &ShardLink,
    cfg: &TaskStoreConfig,
    sub: TaskSubmission,
    by: Principal,
) -> Result<Outcome, Error> {
    random(&mut [0u8; 1])?;
    let budget = budget(cfg, sh.count());
    let now = sh.now();
    for _ in 0..RACE_RETRIES_MAX {
        let id = new_task_id(&mut fill_random);
        let task = Task::new_pending(
            sub.clone(),
            id.clone(),
            Charge::of(&by),
            Some(by.holder()),
            now,
        );
        let put1 = Put::new(
            id.clone(),
            time_key(task.created_at, &id),
            0,
            None,
            Some(task),
        );
        match put(sh, link, &budget, std::slice::from_ref(&put1))
            .await?
            .into_iter()
            .next()
        {
            Some(Put1::Written(_)) => return Ok(Outcome::Json(task_created_body(&id))),
            Some(Put1::Refused(r)) => return Err(r.error(&TASK_STORE_NAMES)),
            // The id exists (44 random bits): draw another.
            _ => continue,
        }
    }
    Err(Error::internal("could not draw a free task id"))
}

/// `GET /api/hub/tasks/{id}` in a cluster. `Ok(None)`: not in Redis (the caller looks
/// on this node, where tasks from before it joined the cluster may be).
pub async fn get(link: &ShardLink, reader: &Principal, id: &str) -> Result<Option<Outcome>, Error> {
    Ok(read_one(link, id)
        .await?
        .map(|(_, t)| Outcome::Json(crate::hub::for_reader(&t, reader, true))))
}

/// `POST /api/hub/tasks/{id}` in a cluster: the same rules as a node alone
/// (`hub::ops::Op::Update`/`UpdateAs`), applied to the record read from Redis and
/// written back only if nobody changed it meanwhile (else read again). `Ok(None)`: not
/// in Redis.
pub async fn update<S: Shard + Owns<RefCell<TakeBacks>>>(
    sh: &S,
    link: &ShardLink,
    cfg: &TaskStoreConfig,
    id: &str,
    upd: TaskUpdate,
    by: Principal,
    as_agent: bool,
) -> Result<Option<Outcome>, Error> {
    let budget = budget(cfg, sh.count());
    for _ in 0..RACE_RETRIES_MAX {
        let Some((version, before)) = read_one(link, id).await? else {
            return Ok(None);
        };
        if as_agent {
            let agent = by.peer.as_deref().unwrap_or_default();
            if before.assigned_agent_id != agent {
                return Err(Error::forbidden(format!(
                    "task is assigned to `{}`: an agent may only report its own tasks",
                    before.assigned_agent_id
                )));
            }
        } else if let Err(why) = before.updatable_by(&by) {
            return Err(Error::forbidden(why));
        }
        let mut after = before.clone();
        after.apply_update(upd.clone(), Some(&by.holder()), sh.now());
        let member = time_key(before.created_at, id);
        let p = Put::new(id.to_owned(), member, version, Some(before), Some(after));
        match put(sh, link, &budget, &[p]).await?.into_iter().next() {
            Some(Put1::Written(_)) => return Ok(Some(Outcome::Static(OK_BODY.as_bytes()))),
            Some(Put1::Refused(r)) => return Err(r.error(&TASK_STORE_NAMES)),
            _ => continue,
        }
    }
    Err(Error::unavailable(
        "the task kept changing under this update; retry",
    ))
}

/// The cluster's part of a heartbeat: claims, for `agent`, the pending tasks in Redis
/// targeted at it (unless its id is empty) or with one of its `skills`, oldest first,
/// at most `claim_bytes_max` (at least one). Each claim is a compare-and-set: a task
/// another node claimed first is skipped. Durable before it returns.
pub async fn claim<S: Shard + Owns<RefCell<TakeBacks>>>(
    sh: &S,
    link: &ShardLink,
    cfg: &TaskStoreConfig,
    agent: &str,
    skills: &[String],
    claimer: &Holder,
) -> Result<Vec<Task>, Error> {
    let keys = Keys(link.prefix());
    let mut sets: Vec<Vec<u8>> = Vec::new();
    if !agent.is_empty() {
        sets.push(keys.by_target(agent));
    }
    for s in skills.iter().filter(|s| !s.is_empty()) {
        sets.push(keys.by_skill(s));
    }
    sets.sort();
    sets.dedup();
    if sets.is_empty() {
        return Ok(Vec::new());
    }
    let reply = link
        .eval(
            READ.name,
            sets,
            vec![
                keys.task_prefix(),
                b"-".to_vec(),
                CLAIM_CANDIDATES_MAX.to_string().into_bytes(),
            ],
        )
        .map_err(refused)?
        .await
        .map_err(|e| unavailable(format!("{e:?}")))?;
    let mut found = parse_reads(reply)?;
    found.sort_by(|a, b| a.member.cmp(&b.member));
    found.dedup_by(|a, b| a.member == b.member);
    let now = sh.now();
    // By Redis's clock (`+N` in `PUT`): the sweeping node compares it with the same.
    let unconfirmed_until = format!("+{}", CLAIM_CONFIRM_TIMEOUT.as_secs());
    let mut bytes = 0usize;
    let mut puts = Vec::new();
    for r in found {
        let t = &r.task;
        // The reference's rule, as `TaskStore::claim_for_agent`: by target only for a
        // non-empty agent id.
        let by_target = !agent.is_empty() && t.target_agent_id == agent;
        let by_skill = !t.skill.is_empty() && skills.contains(&t.skill);
        if !t.is_pending() || !(by_target || by_skill) {
            continue;
        }
        let size = crate::hub::task_bytes(t);
        if !puts.is_empty() && bytes + size > cfg.claim_bytes_max {
            break;
        }
        bytes += size;
        let mut after = r.task.clone();
        STATE_ASSIGNED.clone_into(&mut after.state);
        agent.clone_into(&mut after.assigned_agent_id);
        after.access.claimed_by = Some(claimer.clone());
        after.updated_at = now;
        let mut p = Put::new(
            r.task.id.clone(),
            r.member,
            r.version,
            Some(r.task),
            Some(after),
        );
        p.also_add = Some((keys.unconfirmed(), unconfirmed_until.clone()));
        puts.push(p);
    }
    if puts.is_empty() {
        return Ok(Vec::new());
    }
    // Never refused by a budget, as on a node alone (`unlimited`).
    let results = put(sh, link, &unlimited(), &puts).await?;
    let claimed: Vec<(Put, u64)> = puts
        .into_iter()
        .zip(results)
        .filter_map(|(p, r)| match r {
            Put1::Written(v) => Some((p, v)),
            _ => None,
        })
        .collect();
    confirm(sh, link, claimed).await
}

/// How long a claim may stay unconfirmed before any node takes it back
/// ([`sweep_unconfirmed`]): a node confirms its claims at once, before the heartbeat's
/// answer, so only a node that died (or lost Redis) between the two leaves one; its
/// tasks are then claimable again after this, plus up to a turn of the sweep.
pub const CLAIM_CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How often each node's first shard takes back the claims left unconfirmed past
/// [`CLAIM_CONFIRM_TIMEOUT`] (one `ZRANGE` of a set that is empty but for the moment
/// between a claim and its confirmation, or after a node died there).
pub const CLAIM_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Confirms `claimed` (each written at its version) before the heartbeat hands them
/// out: a second compare-and-set that takes each out of the unconfirmed claims. A
/// claim that another node took back meanwhile (it found it unconfirmed past
/// [`CLAIM_CONFIRM_TIMEOUT`]: this node was stalled) is not handed out, nor is any when
/// Redis does not answer the confirmation (the claims are then taken back, now or once
/// Redis is reachable again): a task is handed out only if no other node can ever hand
/// it out again. A node that dies after the confirmation and before the answer leaves
/// its task `assigned` (at most once, never twice).
async fn confirm<S: Shard + Owns<RefCell<TakeBacks>>>(
    sh: &S,
    link: &ShardLink,
    claimed: Vec<(Put, u64)>,
) -> Result<Vec<Task>, Error> {
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let confirms: Vec<Put> = claimed
        .iter()
        .map(|(p, v)| {
            let mut c = Put::new(
                p.id.clone(),
                p.member.clone(),
                *v,
                p.after.clone(),
                p.after.clone(),
            );
            // Out of the unconfirmed claims the claim put it in.
            c.also_remove = p.also_add.clone();
            c
        })
        .collect();
    match put_once(link, &unlimited(), &confirms).await {
        Ok(results) => Ok(claimed
            .into_iter()
            .zip(results)
            .filter(|(_, r)| matches!(r, Put1::Written(_)))
            .filter_map(|((p, _), _)| p.after)
            .collect()),
        Err(e) => {
            // The claim is ours at its version (the confirmation did not run) or at
            // the next (it ran): one of the two take-backs matches, the other finds
            // another version or record and changes nothing.
            let back: Vec<Vec<Put>> = claimed
                .iter()
                .map(|(p, _)| {
                    let unconfirmed = p.inverse();
                    let mut confirmed = p.inverse();
                    confirmed.version += 1;
                    vec![unconfirmed, confirmed]
                })
                .collect();
            takeback::take_back_these(sh, link, back).await;
            Err(match e {
                PutError::Unavailable(e) | PutError::MaybeRan(e) => e,
                PutError::NotReplicated(e) => {
                    unavailable(format!("the claim was not replicated: {e}"))
                }
            })
        }
    }
}

/// One turn of taking back the claims left unconfirmed past [`CLAIM_CONFIRM_TIMEOUT`]
/// (run by every node's first shard every [`CLAIM_SWEEP_INTERVAL`]): each task still
/// `assigned` by such a claim is `pending` again (its claimer never handed it out),
/// at most [`SWEEP_BATCH_MAX`] a turn; one changed since leaves the set as it is.
/// Each is a compare-and-set on the version read, and a confirmation is one too: of a
/// claim and its confirmation racing, one wins. Returns how many went back.
pub async fn sweep_unconfirmed<S: Shard + Owns<RefCell<TakeBacks>>>(
    sh: &S,
    link: &ShardLink,
) -> usize {
    let keys = Keys(link.prefix());
    let now = sh.now();
    let due = link.eval(
        DUE.name,
        vec![keys.unconfirmed()],
        vec![
            keys.task_prefix(),
            b"+0".to_vec(),
            SWEEP_BATCH_MAX.to_string().into_bytes(),
        ],
    );
    let reads = match due {
        Ok(r) => match r.await {
            Ok(v) => parse_reads(v).unwrap_or_default(),
            Err(_) => return 0,
        },
        Err(_) => return 0,
    };
    let puts: Vec<Put> = reads
        .into_iter()
        .map(|r| {
            let mut after = r.task.clone();
            if r.task.state == STATE_ASSIGNED {
                // As a node alone puts back a claim (`Op::Unclaim`): nobody's task.
                STATE_PENDING.clone_into(&mut after.state);
                after.assigned_agent_id.clear();
                after.access.claimed_by = None;
                after.updated_at = now;
            }
            let mut p = Put::new(
                r.task.id.clone(),
                r.member,
                r.version,
                Some(r.task),
                Some(after),
            );
            p.also_remove = Some((keys.unconfirmed(), "0".into()));
            p
        })
        .collect();
    if puts.is_empty() {
        return 0;
    }
    match put(sh, link, &unlimited(), &puts).await {
        Ok(rs) => {
            let n = puts
                .iter()
                .zip(&rs)
                .filter(|(p, r)| {
                    matches!(r, Put1::Written(_)) && p.after.as_ref().is_some_and(Task::is_pending)
                })
                .count();
            if n > 0 {
                tracing::info!(tasks = n, "claims left unconfirmed (their node died or lost Redis between a claim and its answer) taken back: pending again");
            }
            n
        }
        Err(e) => {
            tracing::debug!(error = %e, "cluster unconfirmed-claims sweep");
            0
        }
    }
}

/// `GET /api/hub/tasks/all` in a cluster: one page of the tasks in Redis, by creation
/// time then id, after the cursor; `limit + 1` records read.
pub async fn page(link: &ShardLink, page: &PageReq) -> Result<Vec<Task>, Error> {
    let keys = Keys(link.prefix());
    let min = match &page.after {
        Some(after) => [b"(".as_slice(), after.as_bytes()].concat(),
        None => b"-".to_vec(),
    };
    let reply = link
        .eval(
            READ.name,
            vec![keys.all()],
            vec![
                keys.task_prefix(),
                min,
                page.limit.saturating_add(1).to_string().into_bytes(),
            ],
        )
        .map_err(refused)?
        .await
        .map_err(|e| unavailable(format!("{e:?}")))?;
    Ok(parse_reads(reply)?.into_iter().map(|r| r.task).collect())
}

/// Tasks the dashboard's filtered list reads from Redis per script: one call stays
/// short; the list reads window after window, newest first.
pub const QUERY_SCAN_MAX: usize = 512;

/// The dashboard's filtered list in a cluster: the part of the tasks in Redis. Every
/// task is read (in windows of [`QUERY_SCAN_MAX`], each filtered as it comes), as a
/// node alone's shards each filter all they hold: a matching task behind any number of
/// newer ones is found, and `total` counts every match. Bounded by the cluster's task
/// budget (`--task-store-bytes-max`, the tasks of a shard); only the first `limit`
/// rows after the cursor are kept.
pub async fn query_part(
    link: &ShardLink,
    q: &crate::hub::query::TaskQuery,
) -> Result<crate::shard::paging::Part<crate::hub::query::TaskRow>, Error> {
    let keys = Keys(link.prefix());
    let mut part = crate::shard::paging::Part::default();
    let mut max = b"+".to_vec();
    loop {
        let reply = link
            .eval(
                READ.name,
                vec![keys.all()],
                vec![
                    keys.task_prefix(),
                    max,
                    QUERY_SCAN_MAX.to_string().into_bytes(),
                    b"rev".to_vec(),
                ],
            )
            .map_err(refused)?
            .await
            .map_err(|e| unavailable(format!("{e:?}")))?;
        let reads = parse_reads(reply)?;
        let more = reads.len() >= QUERY_SCAN_MAX;
        let Some(last) = reads.last().map(|r| r.member.clone()) else {
            return Ok(part);
        };
        let tasks: Vec<Task> = reads.into_iter().map(|r| r.task).collect();
        // Windows come newest first, and so do each window's rows.
        let p = crate::hub::query::tasks_part(tasks.iter(), q);
        part.total += p.total;
        part.after += p.after;
        let room = q.limit.saturating_sub(part.rows.len());
        part.rows.extend(p.rows.into_iter().take(room));
        if !more {
            return Ok(part);
        }
        max = format!("({last}").into_bytes();
    }
}

/// Tasks by state across the cluster (the dashboard's counts), from the counters.
pub async fn state_counts(link: &ShardLink) -> Result<BTreeMap<String, u64>, Error> {
    let reply = link
        .command(vec![b"HGETALL".to_vec(), Keys(link.prefix()).counters()])
        .map_err(refused)?
        .await
        .map_err(|e| unavailable(format!("{e:?}")))?;
    let Value::Array(a) = reply else {
        return Err(unavailable("unexpected reply"));
    };
    let mut out = BTreeMap::new();
    for kv in a.chunks(2) {
        if let (Some(Value::Bulk(k)), v) = (kv.first(), kv.get(1)) {
            if let Some(state) = k.strip_prefix(b"s:") {
                let n = int(v);
                if n > 0 {
                    out.insert(String::from_utf8_lossy(state).into_owned(), n);
                }
            }
        }
    }
    Ok(out)
}

/// One turn of the cluster's expiry (run by every node; a task two nodes sweep at once
/// is changed by one of them): unfinished tasks past their TTL become `failed` (`TTL
/// expired`), finished ones past retention are deleted; at most [`SWEEP_BATCH_MAX`] of
/// each. Returns how many were changed.
pub async fn sweep<S: Shard + Owns<RefCell<TakeBacks>>>(
    sh: &S,
    link: &ShardLink,
    cfg: &TaskStoreConfig,
) -> usize {
    let keys = Keys(link.prefix());
    let now = sh.now();
    // Never refused by a budget, as on a node alone (`unlimited`).
    let budget = unlimited();
    let retention_nanos = u64::try_from(cfg.retention.as_nanos()).unwrap_or(u64::MAX);
    let mut changed = 0;
    for (set, upto) in [
        (keys.live(), Some(now)),
        (
            keys.finished(),
            now.0.checked_sub(retention_nanos).map(UnixTime),
        ),
    ] {
        let Some(upto) = upto else { continue };
        let due = link.eval(
            DUE.name,
            vec![set],
            vec![
                keys.task_prefix(),
                secs(upto).into_bytes(),
                SWEEP_BATCH_MAX.to_string().into_bytes(),
            ],
        );
        let reads = match due {
            Ok(r) => match r.await {
                Ok(v) => parse_reads(v).unwrap_or_default(),
                Err(_) => return changed,
            },
            Err(_) => return changed,
        };
        let puts: Vec<Put> = reads
            .into_iter()
            .filter_map(|r| {
                let after = if r.task.is_finished() {
                    // Strictly past retention, as `TaskStore::expire`.
                    if r.task.updated_at >= upto {
                        return None;
                    }
                    None
                } else {
                    // Strictly past the deadline.
                    if r.task.deadline() >= now {
                        return None;
                    }
                    let mut t = r.task.clone();
                    STATE_FAILED.clone_into(&mut t.state);
                    TTL_EXPIRED_ERROR.clone_into(&mut t.error);
                    t.updated_at = now;
                    Some(t)
                };
                Some(Put::new(
                    r.task.id.clone(),
                    r.member,
                    r.version,
                    Some(r.task),
                    after,
                ))
            })
            .collect();
        if puts.is_empty() {
            continue;
        }
        match put(sh, link, &budget, &puts).await {
            Ok(rs) => changed += rs.iter().filter(|r| matches!(r, Put1::Written(_))).count(),
            Err(e) => tracing::debug!(error = %e, "cluster task sweep"),
        }
    }
    changed
}
