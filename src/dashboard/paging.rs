//! Paging and filtering of agents and tasks for the dashboard (sans-IO): each shard
//! pages its own records ([`agents_part`], [`tasks_part`]); the asking shard merges the
//! parts ([`merge_agents`], [`merge_tasks`]). Cursor paging: a page is the first `limit`
//! matching records after the cursor in a total order (agents by a sort key then
//! `agent_id`; tasks newest first, by `(created_at, id)` descending), so no shard sends more than `limit`
//! rows whatever the number of agents, and pages stay consistent while records change.

use serde::Serialize;

use crate::hub::Task;
use crate::registry::{AgentRecord, Health};
use crate::time::UnixTime;

/// Rows per page when `limit` is not given.
pub const PAGE_LIMIT_DEFAULT: usize = 50;
/// The most rows a page may ask for (larger: 400): bounds each shard's reply.
pub const PAGE_LIMIT_MAX: usize = 500;
/// Longest text filter accepted (longer: 400).
pub const FILTER_LEN_MAX: usize = 256;
/// Longest cursor accepted (longer: 400). A cursor the server hands out holds two stored
/// fields (a sort value and an id, each at most 256 bytes by default,
/// `--agent-field-bytes-max`), JSON-escaped at up to 6 bytes per byte: 3,084 bytes at
/// most. (It was the filters' 512, which cut paging at a long host name and id.)
pub const CURSOR_BYTES_MAX: usize = 4096;
/// Characters of a task's result or error sent in a row (the rest is cut with `…`).
pub const TASK_TEXT_MAX: usize = 240;

/// `limit` of a paged route: default [`PAGE_LIMIT_DEFAULT`], 1..=[`PAGE_LIMIT_MAX`].
pub fn parse_limit(raw: Option<&str>) -> Result<usize, String> {
    match raw {
        None | Some("") => Ok(PAGE_LIMIT_DEFAULT),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=PAGE_LIMIT_MAX).contains(&n) => Ok(n),
            _ => Err(format!("limit must be 1..={PAGE_LIMIT_MAX}")),
        },
    }
}

/// A text filter: `None` when absent or empty; too long is an error.
pub fn parse_filter(name: &str, raw: Option<String>) -> Result<Option<String>, String> {
    match raw {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) if s.len() > FILTER_LEN_MAX => {
            Err(format!("{name} is longer than {FILTER_LEN_MAX} bytes"))
        }
        Some(s) => Ok(Some(s)),
    }
}

/// What agents are ordered by (then by `agent_id`, which makes the order total).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AgentSort {
    #[default]
    Id,
    /// `active`, `stale`, `offline`.
    Health,
    Host,
    Mode,
    /// Last heartbeat, oldest first (`desc`: newest first).
    Heartbeat,
}

impl AgentSort {
    /// `sort`: `id` (default), `health`, `host`, `mode` or `heartbeat`.
    pub fn parse(raw: Option<String>) -> Result<AgentSort, String> {
        match raw.as_deref() {
            None | Some("") | Some("id") => Ok(AgentSort::Id),
            Some("health") => Ok(AgentSort::Health),
            Some("host") => Ok(AgentSort::Host),
            Some("mode") => Ok(AgentSort::Mode),
            Some("heartbeat") => Ok(AgentSort::Heartbeat),
            Some(_) => Err("sort must be id, health, host, mode or heartbeat".into()),
        }
    }

    fn value(self, r: &AgentRecord) -> SortVal<&str> {
        match self {
            AgentSort::Id => SortVal::N(0),
            AgentSort::Health => SortVal::N(match r.health {
                Health::Active => 0,
                Health::Stale => 1,
                Health::Offline => 2,
            }),
            AgentSort::Host => SortVal::S(&r.info.hostname),
            AgentSort::Mode => SortVal::S(&r.info.mode),
            AgentSort::Heartbeat => SortVal::N(r.last_heartbeat.0),
        }
    }
}

/// A sort value: a number or a text (one sort uses one kind).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum SortVal<S> {
    N(u64),
    S(S),
}

impl SortVal<&str> {
    fn owned(&self) -> SortVal<String> {
        match self {
            SortVal::N(n) => SortVal::N(*n),
            SortVal::S(s) => SortVal::S((*s).to_owned()),
        }
    }
}

/// An agent's position in a sorted listing: `(value, agent_id)`.
pub type AgentKey = (SortVal<String>, String);

/// `GET /api/dashboard/agents` parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentQuery {
    pub limit: usize,
    pub sort: AgentSort,
    /// Descending.
    pub desc: bool,
    /// Rows after this position.
    pub cursor: Option<AgentKey>,
    pub health: Option<Health>,
    /// Case-insensitive substring of the id, host name, IP, mode or a skill.
    pub q: Option<String>,
}

impl AgentQuery {
    /// The cursor of a page for `sort`: the `agent_id` itself when sorting by id, else
    /// the JSON `[value, agent_id]` (also by id when the id is empty or starts with `[`,
    /// see [`Self::cursor_of`]).
    pub fn parse_cursor(sort: AgentSort, raw: Option<String>) -> Result<Option<AgentKey>, String> {
        let Some(raw) = raw.filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        if raw.len() > CURSOR_BYTES_MAX {
            return Err("cursor too long".into());
        }
        if sort == AgentSort::Id && !raw.starts_with('[') {
            return Ok(Some((SortVal::N(0), raw)));
        }
        // `[value, agent_id]` is 1 level; the bound every JSON input has applies (serde's
        // untagged `SortVal` buffers what it reads, recursively).
        if let Err(e) = wire::json::check_depth(raw.as_bytes(), wire::json::JSON_DEPTH_MAX) {
            return Err(format!("malformed cursor: {e}"));
        }
        serde_json::from_str::<AgentKey>(&raw)
            .map(Some)
            .map_err(|_| "malformed cursor".into())
    }

    /// The cursor after `key`. By id it is the id itself, except for an empty id (an
    /// empty cursor means the first page, so paging would start over) and one starting
    /// with `[` (read back as JSON): those take the JSON form too.
    fn cursor_of(&self, key: &AgentKey) -> String {
        if self.sort == AgentSort::Id && !key.1.is_empty() && !key.1.starts_with('[') {
            key.1.clone()
        } else {
            serde_json::to_string(key).unwrap_or_default()
        }
    }

    /// `health` must be `active`, `stale` or `offline`.
    pub fn parse_health(raw: Option<String>) -> Result<Option<Health>, String> {
        match raw.as_deref() {
            None | Some("") => Ok(None),
            Some("active") => Ok(Some(Health::Active)),
            Some("stale") => Ok(Some(Health::Stale)),
            Some("offline") => Ok(Some(Health::Offline)),
            Some(_) => Err("health must be active, stale or offline".into()),
        }
    }

    fn matches(&self, r: &AgentRecord, q_lower: Option<&str>) -> bool {
        if self.health.is_some_and(|h| h != r.health) {
            return false;
        }
        let Some(q) = q_lower else { return true };
        let i = &r.info;
        contains_ci(&i.agent_id, q)
            || contains_ci(&i.hostname, q)
            || contains_ci(&i.ip, q)
            || contains_ci(&i.mode, q)
            || i.capabilities.skills.iter().any(|s| contains_ci(s, q))
    }
}

fn contains_ci(hay: &str, needle_lower: &str) -> bool {
    if hay.is_ascii() && needle_lower.is_ascii() {
        hay.as_bytes()
            .windows(needle_lower.len().max(1))
            .any(|w| w.eq_ignore_ascii_case(needle_lower.as_bytes()))
            || needle_lower.is_empty()
    } else {
        hay.to_lowercase().contains(needle_lower)
    }
}

/// One agent as the dashboard lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentRow {
    pub agent_id: String,
    pub health: Health,
    pub hostname: String,
    pub ip: String,
    pub port: u16,
    pub mode: String,
    pub status: String,
    pub skills: Vec<String>,
    pub sidecar_peer_id: String,
    /// Seconds since the epoch.
    pub last_heartbeat: f64,
    pub registered_at: f64,
    #[serde(skip)]
    key: AgentKey,
}

impl AgentRow {
    fn of(r: &AgentRecord, key: AgentKey) -> AgentRow {
        let i = &r.info;
        AgentRow {
            agent_id: i.agent_id.clone(),
            health: r.health,
            hostname: i.hostname.clone(),
            ip: i.ip.clone(),
            port: i.port,
            mode: i.mode.clone(),
            status: i.status.clone(),
            skills: i.capabilities.skills.clone(),
            sidecar_peer_id: i.sidecar_peer_id.clone(),
            last_heartbeat: r.last_heartbeat.as_secs_f64(),
            registered_at: r.registered_at.as_secs_f64(),
            key,
        }
    }
}

/// One shard's part of a page.
#[derive(Clone, Debug, PartialEq)]
pub struct Part<R> {
    /// Matching records on this shard (whatever the cursor).
    pub total: usize,
    /// Matching records after the cursor.
    pub after: usize,
    /// The first `limit` of them, in page order.
    pub rows: Vec<R>,
}

impl<R> Default for Part<R> {
    fn default() -> Self {
        Part {
            total: 0,
            after: 0,
            rows: Vec::new(),
        }
    }
}

/// A merged page.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Page<R> {
    pub items: Vec<R>,
    /// Matching records on all shards.
    pub total: usize,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// One shard's agents for `q` (the store lists them by `agent_id`). O(agents) for the
/// counts, plus a partial selection of the `limit` first when sorting by another key;
/// at most `limit` rows are copied.
pub fn agents_part<'a>(
    agents: impl Iterator<Item = &'a AgentRecord>,
    q: &AgentQuery,
) -> Part<AgentRow> {
    let q_lower = q.q.as_ref().map(|s| s.to_lowercase());
    let mut part = Part::default();
    let cursor = q
        .cursor
        .as_ref()
        .map(|(v, id)| (v.as_ref_val(), id.as_str()));
    let ordered = |a: &(SortVal<&str>, &str), b: &(SortVal<&str>, &str)| {
        if q.desc {
            b.cmp(a)
        } else {
            a.cmp(b)
        }
    };
    let mut after: Vec<((SortVal<&str>, &str), &AgentRecord)> = Vec::new();
    for r in agents.filter(|r| q.matches(r, q_lower.as_deref())) {
        part.total += 1;
        let key = (q.sort.value(r), r.info.agent_id.as_str());
        if cursor
            .as_ref()
            .is_some_and(|c| ordered(&key, c) != std::cmp::Ordering::Greater)
        {
            continue;
        }
        part.after += 1;
        // By id ascending the store's order is the page's: stop copying at `limit`.
        if q.sort == AgentSort::Id && !q.desc && after.len() >= q.limit {
            continue;
        }
        after.push((key, r));
    }
    if after.len() > q.limit {
        after.select_nth_unstable_by(q.limit, |a, b| ordered(&a.0, &b.0));
        after.truncate(q.limit);
    }
    after.sort_unstable_by(|a, b| ordered(&a.0, &b.0));
    part.rows = after
        .into_iter()
        .map(|((v, id), r)| AgentRow::of(r, (v.owned(), id.to_owned())))
        .collect();
    part
}

impl SortVal<String> {
    fn as_ref_val(&self) -> SortVal<&str> {
        match self {
            SortVal::N(n) => SortVal::N(*n),
            SortVal::S(s) => SortVal::S(s.as_str()),
        }
    }
}

/// Merges the shards' parts into one page in `q`'s order.
pub fn merge_agents(parts: Vec<Part<AgentRow>>, q: &AgentQuery) -> Page<AgentRow> {
    merge(
        parts,
        q.limit,
        |a, b| {
            if q.desc {
                b.key.cmp(&a.key)
            } else {
                a.key.cmp(&b.key)
            }
        },
        |r| q.cursor_of(&r.key),
    )
}

fn merge<R>(
    parts: Vec<Part<R>>,
    limit: usize,
    order: impl Fn(&R, &R) -> std::cmp::Ordering,
    cursor_of: impl Fn(&R) -> String,
) -> Page<R> {
    let total = parts.iter().map(|p| p.total).sum();
    let after: usize = parts.iter().map(|p| p.after).sum();
    let mut items: Vec<R> = parts.into_iter().flat_map(|p| p.rows).collect();
    items.sort_by(&order);
    items.truncate(limit);
    let next_cursor = (after > items.len())
        .then(|| items.last().map(&cursor_of))
        .flatten();
    Page {
        items,
        total,
        next_cursor,
    }
}

/// `GET /api/dashboard/tasks` parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskQuery {
    pub limit: usize,
    /// Rows after this position (`<created_at nanos>.<id>`, newest first).
    pub cursor: Option<(u64, String)>,
    pub state: Option<String>,
    /// The task's source, target or assignee.
    pub agent: Option<String>,
}

impl TaskQuery {
    /// A task cursor: `<nanos>.<id>`.
    pub fn parse_cursor(raw: Option<String>) -> Result<Option<(u64, String)>, String> {
        let Some(raw) = raw.filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let (n, id) = raw.split_once('.').ok_or("malformed cursor")?;
        let n = n.parse::<u64>().map_err(|_| "malformed cursor")?;
        Ok(Some((n, id.to_owned())))
    }

    fn matches(&self, t: &Task) -> bool {
        self.state.as_ref().is_none_or(|s| &t.state == s)
            && self.agent.as_ref().is_none_or(|a| {
                &t.source_agent_id == a || &t.target_agent_id == a || &t.assigned_agent_id == a
            })
    }
}

/// One task as the dashboard lists it (no payload; result and error cut).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskRow {
    pub id: String,
    pub state: String,
    pub skill: String,
    pub source_agent_id: String,
    pub target_agent_id: String,
    pub assigned_agent_id: String,
    pub result: String,
    pub error: String,
    pub created_at: f64,
    pub updated_at: f64,
    pub ttl: u64,
    #[serde(skip)]
    key: (u64, String),
}

fn cut(s: &str) -> String {
    match s.char_indices().nth(TASK_TEXT_MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

impl TaskRow {
    fn of(t: &Task) -> TaskRow {
        TaskRow {
            id: t.id.clone(),
            state: t.state.clone(),
            skill: t.skill.clone(),
            source_agent_id: t.source_agent_id.clone(),
            target_agent_id: t.target_agent_id.clone(),
            assigned_agent_id: t.assigned_agent_id.clone(),
            result: cut(&t.result),
            error: cut(&t.error),
            created_at: t.created_at.as_secs_f64(),
            updated_at: t.updated_at.as_secs_f64(),
            ttl: t.ttl,
            key: (t.created_at.0, t.id.clone()),
        }
    }
}

fn task_key(t: &Task) -> (u64, &str) {
    (t.created_at.0, t.id.as_str())
}

/// One shard's tasks for `q`, newest first.
pub fn tasks_part<'a>(tasks: impl Iterator<Item = &'a Task>, q: &TaskQuery) -> Part<TaskRow> {
    let mut part = Part::default();
    let mut after: Vec<&Task> = Vec::new();
    for t in tasks.filter(|t| q.matches(t)) {
        part.total += 1;
        if let Some((n, id)) = &q.cursor {
            if task_key(t) >= (*n, id.as_str()) {
                continue;
            }
        }
        after.push(t);
    }
    part.after = after.len();
    if after.len() > q.limit {
        after.select_nth_unstable_by(q.limit, |a, b| task_key(b).cmp(&task_key(a)));
        after.truncate(q.limit);
    }
    after.sort_unstable_by(|a, b| task_key(b).cmp(&task_key(a)));
    part.rows = after.into_iter().map(TaskRow::of).collect();
    part
}

/// Merges the shards' parts into one page, newest first.
pub fn merge_tasks(parts: Vec<Part<TaskRow>>, limit: usize) -> Page<TaskRow> {
    merge(
        parts,
        limit,
        |a, b| b.key.cmp(&a.key),
        |r| format!("{}.{}", r.key.0, r.key.1),
    )
}

/// Seconds since the epoch of `t`, for the summary's `time`.
pub fn secs(t: UnixTime) -> f64 {
    t.as_secs_f64()
}

#[cfg(test)]
mod tests;
