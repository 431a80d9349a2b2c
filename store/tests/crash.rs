//! Crash test: a child process writes through the storage thread from several threads
//! and prints each acknowledged write; it is killed with SIGKILL mid-stream. On reopen
//! every acknowledged write is there, and every write present is there whole (all three
//! records of it, each byte-exact), acknowledged or not.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;

use chatixia_store::{PairingStatus, Store, StoreConfig, StoreHandle};
use common::*;

const DIR_ENV: &str = "CHATIXIA_STORE_CRASH_DIR";
const BASE_ENV: &str = "CHATIXIA_STORE_CRASH_BASE";
/// `blocking`: 8 threads with `write_blocking`; `link`: one monoio shard with 64 tasks
/// writing through a `ShardLink` (the path a shard takes).
const MODE_ENV: &str = "CHATIXIA_STORE_CRASH_MODE";
const LINK_TASKS: u64 = 64;
const WRITERS: u64 = 8;
/// Ids of writer `w` in a round with base `b`: `b + w * STRIDE + j`.
const STRIDE: u64 = 1_000_000;
const TASK_LEN: usize = 4096;

/// Not a test on its own: the child of `acknowledged_writes_survive_sigkill`.
#[test]
#[ignore = "child-process entry point: run by its parent test with --ignored"]
fn crash_child_writer() {
    let (Ok(dir), Ok(base)) = (std::env::var(DIR_ENV), std::env::var(BASE_ENV)) else {
        return;
    };
    let base: u64 = base.parse().unwrap();
    let (store, _) = Store::open(Path::new(&dir), &secrets(), StoreConfig::default()).unwrap();
    if std::env::var(MODE_ENV).as_deref() == Ok("link") {
        link_writer(store.handle(), base);
        return;
    }
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let h = store.handle();
            std::thread::spawn(move || {
                let s = secrets();
                for j in 0.. {
                    let id = base + w * STRIDE + j;
                    h.write_blocking(approval_write(&s, id, TASK_LEN)).unwrap();
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "ACK {id}");
                    let _ = out.flush();
                }
            })
        })
        .collect();
    for w in writers {
        let _ = w.join();
    }
}

/// 64 concurrent writers on one monoio shard, each awaiting its `Ack` before printing.
fn link_writer(handle: StoreHandle, base: u64) {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (bell, mut waiter) = test_bell();
        let link = Rc::new(handle.link(Arc::new(bell)).unwrap());
        let bell_link = link.clone();
        monoio::spawn(async move {
            while waiter.wait().await.is_ok() {
                bell_link.on_doorbell();
            }
        });
        let writers: Vec<_> = (0..LINK_TASKS)
            .map(|w| {
                let link = link.clone();
                monoio::spawn(async move {
                    let s = secrets();
                    for j in 0.. {
                        let id = base + w * STRIDE + j;
                        let ack = link.submit(approval_write(&s, id, TASK_LEN)).unwrap();
                        ack.await.unwrap();
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "ACK {id}");
                        let _ = out.flush();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await;
        }
    });
}

/// Runs one child round and kills it after `kill_after` acknowledgements; returns the
/// acknowledged ids (every line it printed before dying).
fn round(dir: &Path, base: u64, kill_after: usize, mode: &str) -> Vec<u64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_writer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir)
        .env(BASE_ENV, base.to_string())
        .env(MODE_ENV, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    let mut killed = false;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(id) = line.strip_prefix("ACK ") {
            acked.push(id.parse().unwrap());
        }
        if !killed && acked.len() >= kill_after {
            child.kill().unwrap(); // SIGKILL
            killed = true;
        }
        // Keep reading: lines printed before the kill are acknowledged too.
    }
    let status = child.wait().unwrap();
    assert!(killed, "child ended on its own: {status:?}");
    acked
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    if std::env::var(DIR_ENV).is_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let s = secrets();
    let mut all_acked = BTreeSet::new();
    let rounds = [
        (1u64, 150usize, "blocking"),
        (2, 40, "link"),
        (3, 300, "link"),
        (4, 100, "blocking"),
    ];
    for (r, kill_after, mode) in rounds {
        let acked = round(&dir, r * 100 * STRIDE, kill_after, mode);
        assert!(acked.len() >= kill_after);
        all_acked.extend(acked);

        let (store, snap) = Store::open(&dir, &s, StoreConfig::default()).unwrap();
        let pairings: BTreeSet<u64> = snap.pairings.iter().map(|p| u64::from(p.id)).collect();
        let grants: BTreeSet<u64> = snap
            .device_tokens
            .iter()
            .map(|g| u64::from(g.entry_id))
            .collect();
        let tasks: BTreeSet<String> = snap.tasks.iter().map(|t| t.id.clone()).collect();
        // Every acknowledged write is there.
        let missing: Vec<_> = all_acked
            .iter()
            .filter(|i| !pairings.contains(*i))
            .collect();
        assert!(
            missing.is_empty(),
            "round {r}: acknowledged but missing: {missing:?}"
        );
        // Every write present is whole: its three records, each exact.
        assert_eq!(pairings, grants, "round {r}");
        for p in &snap.pairings {
            let i = u64::from(p.id);
            let sealed = p.sealed_token.as_ref().expect("sealed token");
            assert_eq!(s.unseal(p.id, sealed).unwrap(), token_of(i));
            let mut want = pairing(&s, i, PairingStatus::Approved);
            want.sealed_token = p.sealed_token.clone(); // random nonce
            assert_eq!(p, &want);
            assert!(tasks.contains(&task_id(i)), "round {r}: {i} has no task");
        }
        for g in &snap.device_tokens {
            assert_eq!(g, &grant(&s, u64::from(g.entry_id)));
        }
        for t in &snap.tasks {
            let i: u64 = t.id[1..].parse().unwrap();
            assert_eq!(t, &task(i, TASK_LEN));
        }
        assert_eq!(snap.tasks.len(), snap.pairings.len());
        eprintln!(
            "round {r} ({mode}): {} acknowledged so far, {} present ({} written but not acknowledged), loaded in {:?}",
            all_acked.len(),
            pairings.len(),
            pairings.len() - all_acked.len(),
            snap.elapsed
        );
        store.close();
    }
}
