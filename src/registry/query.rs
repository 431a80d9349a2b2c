//! Agents filtered and sorted for a page (the operator dashboard's list), sans-IO: each
//! shard answers its part ([`agents_part`], `Op::Query`); the asking shard merges the
//! parts ([`merge_agents`]). Cursor paging: a page is the first `limit` matching agents
//! after the cursor in a total order (a sort key, then `agent_id`), so no shard sends
//! more than `limit` rows whatever the number of agents, and pages stay consistent while
//! agents change.

use serde::Serialize;

use crate::registry::{AgentRecord, Health};
use crate::shard::paging::{merge_parts, Page, Part};

/// Longest cursor accepted (longer: 400). A cursor the server hands out holds two stored
/// fields (a sort value and an id, each at most 256 bytes by default,
/// `--agent-field-bytes-max`), JSON-escaped at up to 6 bytes per byte: 3,084 bytes at
/// most. (It was the filters' 512, which cut paging at a long host name and id.)
pub const CURSOR_BYTES_MAX: usize = 4096;
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
    pub fn parse(raw: Option<&str>) -> Result<AgentSort, String> {
        match raw {
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

/// A filtered, sorted page of agents (the dashboard's `GET /api/dashboard/agents`).
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
    pub fn parse_cursor(sort: AgentSort, raw: Option<&str>) -> Result<Option<AgentKey>, String> {
        let Some(raw) = raw.filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        if raw.len() > CURSOR_BYTES_MAX {
            return Err("cursor too long".into());
        }
        if sort == AgentSort::Id && !raw.starts_with('[') {
            return Ok(Some((SortVal::N(0), raw.to_owned())));
        }
        // `[value, agent_id]` is 1 level; the bound every JSON input has applies (serde's
        // untagged `SortVal` buffers what it reads, recursively).
        if let Err(e) = wire::json::check_depth(raw.as_bytes(), wire::json::JSON_DEPTH_MAX) {
            return Err(format!("malformed cursor: {e}"));
        }
        serde_json::from_str::<AgentKey>(raw)
            .map(Some)
            .map_err(|_| "malformed cursor".into())
    }

    /// The cursor after `key`. By id it is the id itself, except for an empty id (an
    /// empty cursor means the first page, so paging would start over) and one starting
    /// with `[` (read back as JSON): those take the JSON form too.
    pub fn cursor_of(&self, key: &AgentKey) -> String {
        if self.sort == AgentSort::Id && !key.1.is_empty() && !key.1.starts_with('[') {
            key.1.clone()
        } else {
            serde_json::to_string(key).unwrap_or_default()
        }
    }

    /// `health` must be `active`, `stale` or `offline`.
    pub fn parse_health(raw: Option<&str>) -> Result<Option<Health>, String> {
        match raw {
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
    merge_parts(
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

#[cfg(test)]
mod tests;
