//! The store end to end (chosen engine, storage thread, group commit):
//! `cargo bench -p chatixia-store --bench store` (`-- quick` for a short run,
//! `-- startup` for the 100,000-entry start-up only).
//!
//! * `approve xN`: N client threads, each looping one durable write of an approved
//!   pairing entry (a request waiting for its 2xx): writes/s, commits/s (one fsync each),
//!   writes per commit, p99 of one write.
//! * `task4k xN`: the same with one 4 KiB pending task per write.
//! * `startup100000`: lock, redb recovery, full integrity check, decode of 100,000
//!   approved entries (with the integrity check's share: a start without it would take
//!   the total minus that).

use std::path::Path;
use std::time::{Duration, Instant};

fn p99(mut lat: Vec<Duration>) -> Duration {
    lat.sort();
    lat[(lat.len() * 99 / 100).min(lat.len() - 1)]
}

fn walk_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A pairing record as an approval writes it (~400 bytes encoded).
fn approved_entry(s: &chatixia_store::Secrets, id: u32) -> chatixia_store::Mutation {
    use chatixia_store::{HashKind, Mutation, PairingRecord, PairingStatus};
    let token = format!("dt_{id:032x}");
    Mutation::PutPairing(PairingRecord {
        id,
        agent_name: format!("agent {id}"),
        peer_id: format!("agent-{id:06x}"),
        status: PairingStatus::Approved,
        created_at_ns: 1_795_239_689_000_000_000,
        updated_at_ns: 1_795_239_689_000_000_000,
        mesh: None,
        invited_by: "agent-001".into(),
        claim_hash: Some(s.token_hash(HashKind::ClaimSecret, "claim")),
        token_hash: Some(s.token_hash(HashKind::DeviceToken, &token)),
        sealed_token: Some(s.seal(id, &token)),
    })
}

fn pending_task(id: u32, len: usize) -> chatixia_store::Mutation {
    chatixia_store::Mutation::PutTask(chatixia_store::TaskRecord {
        id: format!("t{id:011}"),
        skill: "echo".into(),
        target_agent_id: String::new(),
        source_agent_id: "agent-001".into(),
        assigned_agent_id: String::new(),
        payload: serde_json::Value::String("x".repeat(len)).into(),
        state: "pending".into(),
        result: String::new(),
        error: String::new(),
        created_at_ns: 1,
        updated_at_ns: 1,
        ttl: 300,
        created_by: None,
        claimed_by: None,
        reported_by: None,
    })
}

/// The chosen path end to end: writers → bounded queue → storage thread → one redb
/// commit per drained group. `clients` threads each loop `write_blocking` (a request
/// waiting for its 2xx); writes/s, commits/s (each commit is one fsync) and the p99 of one
/// write.
fn store_group_commit(clients: usize, per_client: usize, task_len: usize) {
    use chatixia_store::{Secrets, Store, StoreConfig};
    use std::sync::{Arc, Barrier};
    let dir = tempfile::tempdir_in(".").expect("tempdir");
    let s = Secrets::derive(b"bench");
    let (store, _) = Store::open(dir.path(), &s, StoreConfig::default()).expect("open");
    let barrier = Arc::new(Barrier::new(clients + 1));
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let h = store.handle();
            let b = barrier.clone();
            let s = s.clone();
            std::thread::spawn(move || {
                b.wait();
                let mut lat = Vec::with_capacity(per_client);
                for j in 0..per_client {
                    let id = (c * 1_000_000 + j) as u32;
                    let w = if task_len > 0 {
                        vec![pending_task(id, task_len)]
                    } else {
                        vec![approved_entry(&s, id)]
                    };
                    let t = Instant::now();
                    h.write_blocking(w).expect("write");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    barrier.wait();
    let t0 = Instant::now();
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.join().expect("worker"));
    }
    let el = t0.elapsed().as_secs_f64();
    let st = store.handle().stats();
    println!(
        "store  {:7} x{clients:<3} {:8.0} writes/s {:6.0} commits(fsyncs)/s {:5.1} writes/commit  p99 {:6.2} ms",
        if task_len > 0 { "task4k" } else { "approve" },
        st.writes as f64 / el,
        st.commits as f64 / el,
        st.writes as f64 / st.commits.max(1) as f64,
        p99(lat).as_secs_f64() * 1e3
    );
}

/// Start-up of the real store on `total` approved pairing entries: lock, redb recovery
/// and full integrity check, then decode every record.
fn store_startup(total: u32) {
    use chatixia_store::{Backend as _, DataDir, RedbBackend, Secrets, Store, StoreConfig};
    let dir = tempfile::tempdir_in(".").expect("tempdir");
    let s = Secrets::derive(b"bench");
    {
        let (store, _) = Store::open(dir.path(), &s, StoreConfig::default()).expect("open");
        let h = store.handle();
        for chunk in (0..total).collect::<Vec<_>>().chunks(10_000) {
            h.write_blocking(chunk.iter().map(|&id| approved_entry(&s, id)).collect())
                .expect("fill");
        }
        store.close();
    }
    let t0 = Instant::now();
    let backend = RedbBackend::open(DataDir::open(dir.path()).expect("dir"), &s).expect("open");
    let opened = t0.elapsed();
    let snap = backend.load().expect("load");
    let el = t0.elapsed();
    assert_eq!(snap.pairings.len(), total as usize);
    println!(
        "store  startup{total}  open+check {:7.1} ms (of which the integrity check {:7.1} ms)  \
         load {:7.1} ms  total {:7.1} ms (without the check {:7.1} ms)  on disk {:.1} MiB",
        opened.as_secs_f64() * 1e3,
        snap.check_elapsed.as_secs_f64() * 1e3,
        (el - opened).as_secs_f64() * 1e3,
        el.as_secs_f64() * 1e3,
        (el - snap.check_elapsed).as_secs_f64() * 1e3,
        walk_size(dir.path()) as f64 / 1048576.0
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "quick");
    if args.iter().any(|a| a == "startup") {
        store_startup(100_000);
        return;
    }
    let n = if quick { 100 } else { 400 };
    for (clients, task_len) in [(1, 0), (64, 0), (1, 4096), (64, 4096)] {
        let per_client = if clients == 1 { n } else { n * 2 / clients };
        store_group_commit(clients, per_client.max(1), task_len);
    }
    store_startup(if quick { 25_000 } else { 100_000 });
}
