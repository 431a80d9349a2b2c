use super::*;
use crate::hub::{TaskStore, TaskStoreConfig, TaskSubmission};
use crate::time::UnixTime;

const T0: UnixTime = UnixTime(1_800_000_000_000_000_000);

fn tasks(n: usize) -> Vec<TaskStore> {
    let mut stores: Vec<TaskStore> = (0..2)
        .map(|_| TaskStore::new(TaskStoreConfig::default()))
        .collect();
    for i in 0..n {
        let sub = TaskSubmission {
            skill: "echo".into(),
            source_agent_id: format!("src-{}", i % 3),
            ttl: 300,
            ..TaskSubmission::default()
        };
        // Every other task at the same instant: ties are broken by id.
        let at = UnixTime(T0.0 + (i as u64 / 2) * 1_000_000_000);
        stores[i % 2]
            .create(sub, format!("task{i:08}"), at)
            .unwrap();
    }
    stores
}

#[test]
fn tasks_page_newest_first_and_filter_by_agent_and_state() {
    let stores = tasks(9);
    let mut q = TaskQuery {
        limit: 4,
        ..TaskQuery::default()
    };
    let mut seen = Vec::new();
    loop {
        let parts = stores.iter().map(|s| tasks_part(s.list(), &q)).collect();
        let p = merge_tasks(parts, q.limit);
        assert_eq!(p.total, 9);
        seen.extend(p.items.iter().map(|r| r.id.clone()));
        match p.next_cursor {
            Some(c) => q.cursor = TaskQuery::parse_cursor(Some(&c)).unwrap(),
            None => break,
        }
    }
    let want: Vec<String> = (0..9).rev().map(|i| format!("task{i:08}")).collect();
    assert_eq!(seen, want);

    let by_agent = TaskQuery {
        limit: 50,
        agent: Some("src-1".into()),
        ..TaskQuery::default()
    };
    let parts = stores
        .iter()
        .map(|s| tasks_part(s.list(), &by_agent))
        .collect();
    let p = merge_tasks(parts, 50);
    let got: Vec<&str> = p.items.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(got, ["task00000007", "task00000004", "task00000001"]);

    let done = TaskQuery {
        limit: 50,
        state: Some("completed".into()),
        ..TaskQuery::default()
    };
    let parts = stores.iter().map(|s| tasks_part(s.list(), &done)).collect();
    assert_eq!(merge_tasks(parts, 50).total, 0);
}

#[test]
fn long_results_are_cut() {
    assert_eq!(cut("short"), "short");
    let long = "é".repeat(TASK_TEXT_MAX + 5);
    let c = cut(&long);
    assert_eq!(c.chars().count(), TASK_TEXT_MAX + 1);
    assert!(c.ends_with('…'));
}
#[test]
fn task_cursors() {
    assert_eq!(
        TaskQuery::parse_cursor(Some("12.abc")),
        Ok(Some((12, "abc".into())))
    );
    assert!(TaskQuery::parse_cursor(Some("abc")).is_err());
    assert!(TaskQuery::parse_cursor(Some("x.abc")).is_err());
    assert_eq!(TaskQuery::parse_cursor(Some("")), Ok(None));
}
