//! Tasks filtered for a page (the operator dashboard's list), newest first, sans-IO:
//! each shard answers its part ([`tasks_part`], `Op::Query`); the asking shard merges
//! the parts ([`merge_tasks`]). Cursor paging by `(created_at, id)` descending, so no
//! shard sends more than `limit` rows and pages stay consistent while tasks change.

use serde::Serialize;

use crate::hub::Task;
use crate::shard::paging::{merge_parts, Page, Part};

/// Characters of a task's result or error sent in a row (the rest is cut with `…`).
pub const TASK_TEXT_MAX: usize = 240;

/// A filtered page of tasks, newest first (the dashboard's `GET /api/dashboard/tasks`).
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
    pub fn parse_cursor(raw: Option<&str>) -> Result<Option<(u64, String)>, String> {
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
    merge_parts(
        parts,
        limit,
        |a, b| b.key.cmp(&a.key),
        |r| format!("{}.{}", r.key.0, r.key.1),
    )
}

#[cfg(test)]
mod tests;
