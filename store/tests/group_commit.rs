//! Group commit: concurrent writers share commits (and their fsyncs), and a shard's
//! writes complete on the shard's own thread (a monoio runtime without the `sync` feature,
//! which panics on any cross-thread wake).

mod common;

use std::rc::Rc;
use std::sync::{Arc, Barrier};

use chatixia_store::{Mutation, Store, StoreConfig, SubmitError};
use common::*;

#[test]
fn concurrent_blocking_writers_share_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let s = secrets();
    let (store, _) = Store::open(tmp.path(), &s, StoreConfig::default()).unwrap();
    const THREADS: u64 = 16;
    const PER: u64 = 25;
    let start = Arc::new(Barrier::new(THREADS as usize));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let h = store.handle();
            let s = s.clone();
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                for j in 0..PER {
                    h.write_blocking(approval_write(&s, t * 1000 + j, 64))
                        .unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let st = store.handle().stats();
    let writes = THREADS * PER;
    eprintln!("{st:?}");
    assert_eq!(st.writes, writes);
    assert_eq!(st.mutations, writes * 3);
    assert_eq!(st.commits_failed, 0);
    // 16 writers each waiting for its commit: while one commit syncs, the others queue
    // up and go together into the next one.
    assert!(st.commits < writes, "{st:?}");
    assert!(st.batch_writes_largest > 1, "{st:?}");
    store.close();
    let (_store, snap) = Store::open(tmp.path(), &s, StoreConfig::default()).unwrap();
    assert_eq!(snap.counts().pairings as u64, writes);
    assert_eq!(snap.counts().device_tokens as u64, writes);
    assert_eq!(snap.counts().tasks as u64, writes);
}

#[test]
fn shard_link_batches_and_wakes_on_the_shard_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let s = secrets();
    let config = StoreConfig {
        inflight_max: 64,
        ..StoreConfig::default()
    };
    let (store, _) = Store::open(tmp.path(), &s, config).unwrap();
    let handle = store.handle();
    let before = handle.stats();
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .build()
        .unwrap();
    let s2 = s.clone();
    let done = rt.block_on(async move {
        let s = s2;
        let (bell, mut waiter) = test_bell();
        let link = Rc::new(handle.link(Arc::new(bell)).unwrap());
        // The shard's doorbell task.
        let bell_link = link.clone();
        monoio::spawn(async move {
            while waiter.wait().await.is_ok() {
                bell_link.on_doorbell();
            }
        });
        // 64 writes submitted at once; the 65th is refused (in-flight limit).
        let acks: Vec<_> = (0..64u64)
            .map(|i| link.submit(approval_write(&s, 50_000 + i, 32)).unwrap())
            .collect();
        assert_eq!(link.inflight(), 64);
        assert_eq!(
            link.submit(vec![Mutation::DeleteInvite(1)]).unwrap_err(),
            SubmitError::InFlightFull
        );
        let tasks: Vec<_> = acks.into_iter().map(monoio::spawn).collect();
        let mut ok = 0;
        for t in tasks {
            t.await.unwrap();
            ok += 1;
        }
        assert_eq!(link.inflight(), 0);
        // A dropped Ack does not cancel its write, and frees its slot once committed.
        let dropped = link.submit(vec![Mutation::PutInvite(invite(7))]).unwrap();
        drop(dropped);
        link.submit(vec![Mutation::PutInvite(invite(8))])
            .unwrap()
            .await
            .unwrap();
        ok
    });
    assert_eq!(done, 64);
    let st = store.handle().stats();
    let commits = st.commits - before.commits;
    eprintln!("{st:?}, commits for 64 queued writes: {commits}");
    assert_eq!(st.writes - before.writes, 66);
    // 64 writes queued before the storage thread could commit more than the first.
    assert!(commits < 64, "{st:?}");
    assert!(st.batch_writes_largest >= 2, "{st:?}");
    store.close();
    let (_store, snap) = Store::open(tmp.path(), &s, StoreConfig::default()).unwrap();
    assert_eq!(snap.counts().pairings, 64);
    assert_eq!(snap.counts().invites, 2);
}

#[test]
fn full_queue_is_refused_not_blocked() {
    let tmp = tempfile::tempdir().unwrap();
    let s = secrets();
    let config = StoreConfig {
        queue_depth_max: 2,
        batch_writes_max: 1,
        inflight_max: 1000,
        ..StoreConfig::default()
    };
    let (store, _) = Store::open(tmp.path(), &s, config).unwrap();
    let handle = store.handle();
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .build()
        .unwrap();
    let refused = rt.block_on(async move {
        let bell = Unheard;
        let link = handle.link(Arc::new(bell)).unwrap();
        // Each commit is one fsync'd write; submitting 200 without yielding overruns a
        // queue of 2.
        let mut acks = Vec::new();
        let mut refused = 0;
        for i in 0..200 {
            match link.submit(vec![Mutation::PutInvite(invite(i))]) {
                Ok(a) => acks.push(a),
                Err(e) => {
                    assert_eq!(e, SubmitError::QueueFull);
                    refused += 1;
                }
            }
        }
        drop(acks);
        refused
    });
    assert!(refused > 0);
    assert_eq!(store.handle().stats().queue_full, refused);
}

#[test]
fn submit_after_close_is_refused_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(tmp.path(), &secrets(), StoreConfig::default()).unwrap();
    let handle = store.handle();
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .build()
        .unwrap();
    rt.block_on(async move {
        let bell = Unheard;
        let link = handle.link(Arc::new(bell)).unwrap();
        // Queued before the close: committed by it.
        let ack = link.submit(vec![Mutation::PutInvite(invite(3))]).unwrap();
        store.close();
        link.on_doorbell();
        assert_eq!(ack.await, Ok(()));
        assert_eq!(
            link.submit(vec![Mutation::DeleteInvite(3)]).unwrap_err(),
            SubmitError::Closed
        );
        assert_eq!(link.inflight(), 0);
    });
}
