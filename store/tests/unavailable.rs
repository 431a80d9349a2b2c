//! The storage thread when the disk refuses writes (issue 22), on a backend whose disk is
//! switched by the test: writes fail at once with `Unavailable` while it is down, the
//! thread retries on its own (recover + a probe or the retained writes), retained writes
//! (revocations) are answered `Deferred`, kept up to `retained_writes_max` and written
//! first, in order, once it recovers.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatixia_store::backup::Export;
use chatixia_store::{Backend, Mutation, Snapshot, Store, StoreConfig, StoreError, SubmitError};
use common::*;

/// What the fake disk holds and whether it takes writes.
#[derive(Default)]
struct Disk {
    full: AtomicBool,
    committed: Mutex<Vec<Mutation>>,
    recovers: AtomicUsize,
}

struct Fake {
    disk: Arc<Disk>,
    poisoned: bool,
}

fn unavailable() -> StoreError {
    StoreError::Unavailable {
        file: "/fake/state.redb".into(),
        reason: "No space left on device (os error 28)".into(),
    }
}

impl Backend for Fake {
    fn commit(
        &mut self,
        writes: &[&[Mutation]],
        admit: chatixia_store::Admit<'_>,
    ) -> Result<(), StoreError> {
        if self.poisoned || self.disk.full.load(Ordering::SeqCst) {
            self.poisoned = true;
            return Err(unavailable());
        }
        let mut c = self.disk.committed.lock().unwrap();
        for (i, w) in writes.iter().enumerate() {
            if admit(i, 0) {
                c.extend(w.iter().cloned());
            }
        }
        Ok(())
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot::default())
    }

    fn describe(&self) -> String {
        "fake".into()
    }

    fn needs_recovery(&self) -> bool {
        self.poisoned
    }

    fn recover(&mut self) -> Result<(), StoreError> {
        self.disk.recovers.fetch_add(1, Ordering::SeqCst);
        if self.disk.full.load(Ordering::SeqCst) {
            return Err(unavailable());
        }
        self.poisoned = false;
        Ok(())
    }

    fn export(&self) -> Result<Box<dyn Export>, StoreError> {
        Err(unavailable())
    }
}

fn revoke(i: u64) -> Vec<Mutation> {
    vec![Mutation::PutRevocation(revocation(i))]
}

#[test]
fn writes_fail_fast_while_down_retained_ones_are_kept_bounded_and_written_first() {
    let disk = Arc::new(Disk::default());
    let config = StoreConfig {
        retry_interval: Duration::from_millis(100),
        retained_writes_max: 2,
        ..StoreConfig::default()
    };
    let backend = Fake {
        disk: disk.clone(),
        poisoned: false,
    };
    let (store, _) = Store::start(backend, config).unwrap();
    let h = store.handle();
    h.write_blocking(revoke(0)).unwrap();
    assert!(h.health().available);

    disk.full.store(true, Ordering::SeqCst);
    let err = h.write_blocking(revoke(1)).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    let health = h.health();
    assert!(!health.available);
    assert!(
        health.reason.as_deref().unwrap().contains("No space left"),
        "{health:?}"
    );
    assert!(health.since_ns > 0);

    // Retained writes through a shard link: kept (Deferred) up to the bound, then refused.
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    let h2 = h.clone();
    let results = rt.block_on(async move {
        let bell = Unheard;
        let link = h2.link(Arc::new(bell)).unwrap();
        let mut out = Vec::new();
        for i in 2..5 {
            let ack = link.submit_retained(revoke(i)).unwrap();
            // The doorbell's reader is this test: poll the link until done.
            let t0 = Instant::now();
            let mut ack = Box::pin(ack);
            let r = loop {
                link.on_doorbell();
                let waker = std::task::Waker::noop();
                let mut cx = std::task::Context::from_waker(waker);
                if let std::task::Poll::Ready(r) = ack.as_mut().poll(&mut cx) {
                    break r;
                }
                assert!(t0.elapsed() < Duration::from_secs(10));
                monoio::time::sleep(Duration::from_millis(2)).await;
            };
            out.push(r);
        }
        out
    });
    assert!(
        matches!(results[0], Err(StoreError::Deferred { .. })),
        "{results:?}"
    );
    assert!(matches!(results[1], Err(StoreError::Deferred { .. })));
    assert!(
        matches!(results[2], Err(StoreError::Unavailable { .. })),
        "past retained_writes_max: refused like any write: {results:?}"
    );
    let st = h.stats();
    assert_eq!((st.retained, st.retained_refused), (2, 1));
    assert!(st.refused_unavailable >= 4);
    assert_eq!(st.unavailable_episodes, 1);

    // It keeps retrying on its own, without any request.
    let r0 = disk.recovers.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(450));
    assert!(disk.recovers.load(Ordering::SeqCst) >= r0 + 2);

    // The disk takes writes again: the thread recovers by itself and writes the retained
    // revocations, in order, before anything else.
    disk.full.store(false, Ordering::SeqCst);
    let t0 = Instant::now();
    while !h.health().available {
        assert!(t0.elapsed() < Duration::from_secs(5), "never recovered");
        std::thread::sleep(Duration::from_millis(10));
    }
    h.write_blocking(revoke(9)).unwrap();
    let committed = disk.committed.lock().unwrap().clone();
    let peers: Vec<String> = committed
        .iter()
        .map(|m| match m {
            Mutation::PutRevocation(r) => r.peer_id.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    let want: Vec<String> = [0, 2, 3, 9]
        .iter()
        .map(|&i| revocation(i).peer_id)
        .collect();
    assert_eq!(peers, want);
    let st = h.stats();
    assert_eq!((st.retained, st.recoveries), (0, 1));
    // One backup at a time, and a backend that cannot export ends the stream with the
    // reason.
    let bell = Unheard;
    let mut b = h.backup(Arc::new(bell)).unwrap();
    let t0 = Instant::now();
    let end = loop {
        if let Some(c) = b.pop() {
            break c;
        }
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        matches!(&end, chatixia_store::Chunk::End(Err(e)) if e.contains("No space")),
        "{end:?}"
    );
    let bell = Unheard;
    assert!(!matches!(
        h.backup(Arc::new(bell)),
        Err(SubmitError::BackupRunning)
    ));
    store.close();
}
