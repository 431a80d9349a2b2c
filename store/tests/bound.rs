//! Issue 20, finding 3: the stored records have a size bound (`--data-bytes-max`). A
//! write that would grow them past it is refused as a whole and nothing of it is
//! applied; writes that free space pass; anonymous writes stop at their share; a store
//! already over its bound still opens with everything in it.

mod common;

use chatixia_store::{Mutation, Store, StoreConfig, StoreError, WriteClass};
use common::*;

const LEN: usize = 4000;

fn config(max: u64) -> StoreConfig {
    StoreConfig {
        data_bytes_max: max,
        anonymous_data_bytes_max: max / 2,
        ..StoreConfig::default()
    }
}

/// Writes tasks `from..` one write each until one is refused; returns the ids written
/// and the refusal.
fn fill(h: &chatixia_store::StoreHandle, from: u64, class: WriteClass) -> (Vec<u64>, StoreError) {
    let mut ok = Vec::new();
    for i in from.. {
        match h.write_blocking_as(vec![Mutation::PutTask(task(i, LEN))], class) {
            Ok(()) => ok.push(i),
            Err(e) => return (ok, e),
        }
        assert!(ok.len() < 10_000, "never refused");
    }
    unreachable!()
}

#[test]
fn the_records_have_a_size_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let s = secrets();
    let max = 100_000;
    let (store, snap) = Store::open(tmp.path(), &s, config(max)).unwrap();
    assert_eq!(snap.data_bytes, 0);
    let h = store.handle();

    // Anonymous writes stop at half the bound, with a refusal that says so.
    let (anon, e) = fill(&h, 0, WriteClass::Anonymous);
    let StoreError::Full {
        bytes,
        bytes_max,
        anonymous: true,
    } = e
    else {
        panic!("{e:?}")
    };
    assert_eq!(bytes_max, max / 2);
    assert!(
        bytes <= max / 2 && bytes + LEN as u64 > max / 2 - 200,
        "{bytes}"
    );
    assert!(e.to_string().contains("--anonymous-share-percent"), "{e}");
    assert!(!anon.is_empty());
    // Other writes go on to the whole bound.
    let (rest, e) = fill(&h, 1000, WriteClass::Bounded);
    assert!(
        matches!(
            e,
            StoreError::Full {
                anonymous: false,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("--data-bytes-max"), "{e}");
    assert!(!rest.is_empty());
    let stats = h.stats();
    assert!(stats.data_bytes <= max && stats.data_bytes > max - 2 * LEN as u64);
    assert_eq!((stats.refused_anonymous, stats.refused_full), (1, 1));
    // A write with a deletion that frees more than it adds passes; a replacement of
    // the same size passes; a larger one does not.
    let first = anon[0];
    h.write_blocking(vec![
        Mutation::DeleteTask(task_id(first)),
        Mutation::PutTask(task(5000, LEN / 2)),
    ])
    .unwrap();
    h.write_blocking(vec![Mutation::PutTask(task(5000, LEN / 2))])
        .unwrap();
    let refused = h.write_blocking(vec![Mutation::PutTask(task(5000, 20 * LEN))]);
    assert!(
        matches!(refused, Err(StoreError::Full { .. })),
        "{refused:?}"
    );
    // Progress (a claim adding an agent id to a stored task) is never refused.
    let mut claimed = task(rest[0], LEN);
    claimed.assigned_agent_id = "agent-with-a-long-name".into();
    h.write_blocking_as(vec![Mutation::PutTask(claimed)], WriteClass::Progress)
        .unwrap();
    let bytes = h.stats().data_bytes;
    store.close();

    // Reopened: the refused writes are not there, the size is the same, and a lower
    // bound still opens the store (only growth is refused).
    let (store, snap) = Store::open(tmp.path(), &s, config(max / 4)).unwrap();
    assert_eq!(snap.data_bytes, bytes);
    let mut ids: Vec<String> = snap.tasks.iter().map(|t| t.id.clone()).collect();
    ids.sort();
    let mut want: Vec<String> = anon[1..]
        .iter()
        .chain(&rest)
        .chain(&[5000])
        .map(|&i| task_id(i))
        .collect();
    want.sort();
    assert_eq!(ids, want);
    let t5000 = snap.tasks.iter().find(|t| t.id == task_id(5000)).unwrap();
    let claimed = snap
        .tasks
        .iter()
        .find(|t| t.id == task_id(rest[0]))
        .unwrap();
    assert_eq!(claimed.assigned_agent_id, "agent-with-a-long-name");
    assert_eq!(
        *t5000,
        task(5000, LEN / 2),
        "the refused replacement was not applied"
    );
    let h = store.handle();
    assert!(matches!(
        h.write_blocking(vec![Mutation::PutTask(task(9000, 10))]),
        Err(StoreError::Full { .. })
    ));
    h.write_blocking(vec![Mutation::DeleteTask(task_id(rest[0]))])
        .unwrap();
    assert!(h.stats().data_bytes < bytes);
}

#[test]
fn a_refused_write_in_a_group_commit_leaves_the_others() {
    // Writes queued together share one transaction: the refused one is skipped, the
    // others are applied and acknowledged.
    let tmp = tempfile::tempdir().unwrap();
    let s = secrets();
    let (store, _) = Store::open(tmp.path(), &s, config(3 * LEN as u64)).unwrap();
    let h = store.handle();
    let results: Vec<Result<(), StoreError>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..6)
            .map(|i| {
                let h = h.clone();
                sc.spawn(move || h.write_blocking(vec![Mutation::PutTask(task(i, LEN))]))
            })
            .collect();
        hs.into_iter().map(|j| j.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!((1..=2).contains(&ok), "{results:?}");
    assert!(results
        .iter()
        .all(|r| r.is_ok() || matches!(r, Err(StoreError::Full { .. }))));
    store.close();
    let (_store, snap) = Store::open(tmp.path(), &s, config(3 * LEN as u64)).unwrap();
    assert_eq!(snap.tasks.len(), ok);
}
