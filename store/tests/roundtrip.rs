//! Every record kind written through the storage thread, read back after a reopen.

mod common;

use chatixia_store::{
    AgentBindingRecord, BindingOwner, HashKind, Mutation, PairingStatus, Secrets, Store,
    StoreConfig, StoreError,
};
use common::*;

#[test]
fn every_record_kind_round_trips_through_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let s = secrets();
    let (store, snap) = Store::open(tmp.path(), &s, StoreConfig::default()).unwrap();
    assert_eq!(snap.counts().total(), 0);
    let h = store.handle();

    // Pairing: created pending, then approved (a state change is a put of the new record).
    let pending = pairing(&s, 1, PairingStatus::PendingApproval);
    h.write_blocking(vec![Mutation::PutPairing(pending.clone())])
        .unwrap();
    let approved = pairing(&s, 1, PairingStatus::Approved);
    h.write_blocking(vec![
        Mutation::PutPairing(approved.clone()),
        Mutation::PutDeviceToken(grant(&s, 1)),
    ])
    .unwrap();
    // Another entry approved then revoked: grant deleted, revocation stored.
    h.write_blocking(vec![
        Mutation::PutPairing(pairing(&s, 2, PairingStatus::Approved)),
        Mutation::PutDeviceToken(grant(&s, 2)),
    ])
    .unwrap();
    let revoked = pairing(&s, 2, PairingStatus::Revoked);
    h.write_blocking(vec![
        Mutation::PutPairing(revoked.clone()),
        Mutation::DeleteDeviceToken(grant(&s, 2).hash),
        Mutation::PutRevocation(revocation(2)),
    ])
    .unwrap();
    // Invites: one stays, one redeemed (deleted).
    h.write_blocking(vec![
        Mutation::PutInvite(invite(123_456)),
        Mutation::PutInvite(invite(42)),
    ])
    .unwrap();
    h.write_blocking(vec![Mutation::DeleteInvite(42)]).unwrap();
    // Tasks: one pending, one assigned, one finished (deleted); a 64 KiB payload.
    let mut assigned = task(11, 10);
    assigned.state = "assigned".into();
    assigned.assigned_agent_id = "agent-x".into();
    h.write_blocking(vec![
        Mutation::PutTask(task(10, 64 * 1024)),
        Mutation::PutTask(assigned.clone()),
        Mutation::PutTask(task(12, 10)),
    ])
    .unwrap();
    h.write_blocking(vec![Mutation::DeleteTask(task_id(12))])
        .unwrap();
    let stats = h.stats();
    assert_eq!(stats.writes, 8);
    assert_eq!(stats.commits_failed, 0);
    store.close();

    let (store, snap) = Store::open(tmp.path(), &s, StoreConfig::default()).unwrap();
    let mut pairings = snap.pairings.clone();
    pairings.sort_by_key(|p| p.id);
    assert_eq!(pairings, vec![approved.clone(), revoked]);
    assert_eq!(snap.device_tokens, vec![grant(&s, 1)]);
    assert_eq!(snap.revocations, vec![revocation(2)]);
    assert_eq!(snap.invites, vec![invite(123_456)]);
    let mut tasks = snap.tasks.clone();
    tasks.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(tasks, vec![task(10, 64 * 1024), assigned]);
    let c = snap.counts();
    assert_eq!(
        (
            c.pairings,
            c.device_tokens,
            c.revocations,
            c.invites,
            c.tasks
        ),
        (2, 1, 1, 1, 2)
    );
    assert_eq!(c.total(), 7);

    // The stored secrets: the token verifies against its hash, the sealed token opens.
    let p = &pairings[0];
    assert!(s.verify(
        HashKind::DeviceToken,
        &token_of(1),
        p.token_hash.as_ref().unwrap()
    ));
    assert!(s.verify(
        HashKind::ClaimSecret,
        "claim-1",
        p.claim_hash.as_ref().unwrap()
    ));
    assert_eq!(
        s.unseal(1, p.sealed_token.as_ref().unwrap()).unwrap(),
        token_of(1)
    );
    store.close();

    // No token in clear anywhere in the data directory.
    let bytes = std::fs::read(tmp.path().join(chatixia_store::DB_FILE)).unwrap();
    for t in [token_of(1), token_of(2)] {
        assert!(
            !bytes.windows(t.len()).any(|w| w == t.as_bytes()),
            "{t} found in clear"
        );
    }
}

#[test]
fn another_server_secret_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(tmp.path(), &secrets(), StoreConfig::default()).unwrap();
    store
        .handle()
        .write_blocking(vec![Mutation::PutInvite(invite(1))])
        .unwrap();
    store.close();
    let err = Store::open(
        tmp.path(),
        &Secrets::derive(b"other"),
        StoreConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(err, StoreError::SecretMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("state.redb"), "{err}");
    // The right secret still opens it.
    let (_store, snap) = Store::open(tmp.path(), &secrets(), StoreConfig::default()).unwrap();
    assert_eq!(snap.invites, vec![invite(1)]);
}

#[test]
fn writes_after_close_fail_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(tmp.path(), &secrets(), StoreConfig::default()).unwrap();
    let h = store.handle();
    store.close();
    assert_eq!(
        h.write_blocking(vec![Mutation::DeleteInvite(1)]),
        Err(StoreError::Closed)
    );
}

#[test]
fn load_of_100k_entries_counts_them_and_times_it() {
    let tmp = tempfile::tempdir().unwrap();
    let s = secrets();
    let (store, _) = Store::open(tmp.path(), &s, StoreConfig::default()).unwrap();
    let h = store.handle();
    const N: u64 = 100_000;
    for chunk in (0..N).collect::<Vec<_>>().chunks(10_000) {
        let w = chunk
            .iter()
            .map(|&i| Mutation::PutPairing(pairing(&s, i, PairingStatus::PendingApproval)))
            .collect();
        h.write_blocking(w).unwrap();
    }
    store.close();
    let (_store, snap) = Store::open(tmp.path(), &s, StoreConfig::default()).unwrap();
    assert_eq!(snap.counts().pairings, N as usize);
    assert_eq!(snap.counts().total(), N as usize);
    assert!(snap.elapsed > std::time::Duration::ZERO);
    eprintln!("loaded {N} pairing entries in {:?}", snap.elapsed);
}

/// Issue 20: invite codes are keyed by 64 bits (long codes). Six-digit codes written by
/// an older server, in the `invite` table keyed by u32, still load and can be deleted;
/// long codes round-trip through their own table.
#[test]
fn six_digit_invites_of_an_older_server_still_load_and_long_ones_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let s = secrets();
    let (store, _) = Store::open(tmp.path(), &s, StoreConfig::default()).unwrap();
    store.close();
    // What the older server wrote: `code` a u32 number, in table "invite" (u32 keys).
    {
        let db = redb::Database::create(tmp.path().join(chatixia_store::DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<u32, &[u8]> = redb::TableDefinition::new("invite");
            let mut t = txn.open_table(def).unwrap();
            for code in [123_456u32, 654_321] {
                let old = serde_json::json!({
                    "code": code, "issuer_peer_id": "agent-001", "mesh": "m",
                    "expires_at_ns": 1_795_239_989_000_000_000u64 + u64::from(code),
                });
                let mut v = vec![1u8];
                v.extend(serde_json::to_vec(&old).unwrap());
                t.insert(code, v.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let (store, snap) = Store::open(tmp.path(), &s, StoreConfig::default()).unwrap();
    let mut codes: Vec<u64> = snap.invites.iter().map(|i| i.code).collect();
    codes.sort_unstable();
    assert_eq!(codes, [123_456, 654_321]);
    assert_eq!(snap.invites[0], invite(snap.invites[0].code));
    let mut long = invite(0);
    long.code = 1 << 63 | 0x0fed_cba9_8765_4321;
    let h = store.handle();
    h.write_blocking(vec![
        Mutation::PutInvite(long.clone()),
        Mutation::DeleteInvite(123_456),
    ])
    .unwrap();
    store.close();
    let (store, snap) = Store::open(tmp.path(), &s, StoreConfig::default()).unwrap();
    let mut invites = snap.invites.clone();
    invites.sort_by_key(|i| i.code);
    assert_eq!(invites, vec![invite(654_321), long.clone()]);
    store
        .handle()
        .write_blocking(vec![
            Mutation::DeleteInvite(654_321),
            Mutation::DeleteInvite(long.code),
        ])
        .unwrap();
    store.close();
    let (store, snap) = Store::open(tmp.path(), &s, StoreConfig::default()).unwrap();
    assert!(snap.invites.is_empty(), "{:?}", snap.invites);
    store.close();
}

fn binding(id: &str, owner: BindingOwner) -> AgentBindingRecord {
    AgentBindingRecord {
        agent_id: id.into(),
        owner,
    }
}

/// Review of issue 20: agent bindings round-trip through a reopen, an export and a
/// restore; a data directory and a backup written before bindings were kept load and
/// restore with none (their counts have no `agent_binding`), and take new ones.
#[test]
fn agent_bindings_round_trip_and_older_stores_and_backups_have_none() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let s = secrets();
    let alpha = binding("alpha", BindingOwner::Peer("alpha-sidecar".into()));
    let gamma = binding("gamma", BindingOwner::Address("10.0.0.7".into()));
    let (store, _) = Store::open(&dir, &s, StoreConfig::default()).unwrap();
    let h = store.handle();
    h.write_blocking(vec![
        Mutation::PutAgentBinding(alpha.clone()),
        Mutation::PutAgentBinding(gamma.clone()),
        Mutation::PutAgentBinding(binding("gone", BindingOwner::Address("x".into()))),
        Mutation::PutTask(task(1, 10)),
    ])
    .unwrap();
    // A binding that moves is replaced; a deleted one is gone.
    let moved = binding("gamma", BindingOwner::Peer("gamma-sidecar".into()));
    h.write_blocking(vec![
        Mutation::PutAgentBinding(moved.clone()),
        Mutation::DeleteAgentBinding("gone".into()),
    ])
    .unwrap();
    store.close();
    let (store, snap) = Store::open(&dir, &s, StoreConfig::default()).unwrap();
    let mut got = snap.agent_bindings.clone();
    got.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    assert_eq!(got, vec![alpha.clone(), moved.clone()]);
    assert_eq!(
        (snap.counts().agent_bindings, snap.counts().total()),
        (2, 3)
    );
    assert!(
        snap.summary().contains("2 agent bindings"),
        "{}",
        snap.summary()
    );
    store.close();

    // Export, then restore elsewhere: the bindings come back.
    let mut out = Vec::new();
    let summary = chatixia_store::backup::export(&dir, &s, &mut out).unwrap();
    assert_eq!(summary.counts.agent_bindings, 2);
    let text = String::from_utf8(out.clone()).unwrap();
    assert_eq!(
        text.matches("{\"table\":\"agent_binding\"").count(),
        2,
        "{text}"
    );
    assert!(text.contains("\"agent_binding\":2"), "{text}");
    let file = tmp.path().join("b.jsonl");
    std::fs::write(&file, &out).unwrap();
    let restored = tmp.path().join("r");
    let report = chatixia_store::backup::restore(&file, &restored, &s, false).unwrap();
    assert_eq!(report.counts.agent_bindings, 2);
    let (store, snap) = Store::open(&restored, &s, StoreConfig::default()).unwrap();
    assert_eq!(snap.agent_bindings.len(), 2);
    store.close();

    // A backup written before bindings were kept: no such lines, no such count.
    let old: String = text
        .lines()
        .filter(|l| !l.contains("\"table\":\"agent_binding\""))
        .map(|l| format!("{l}\n"))
        .collect();
    let body_end = old.rfind("{\"end\":").unwrap();
    let body = &old[..body_end];
    let sha = {
        use sha2::Digest as _;
        let d = sha2::Sha256::digest(body.as_bytes());
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let end = format!(
        "{{\"end\":{{\"records\":{{\"pairing\":0,\"device_token\":0,\"revocation\":0,\
         \"invite\":0,\"task\":1}},\"total\":1,\"sha256\":\"{sha}\"}}}}\n"
    );
    let old_file = tmp.path().join("old.jsonl");
    std::fs::write(&old_file, format!("{body}{end}")).unwrap();
    let report =
        chatixia_store::backup::restore(&old_file, &tmp.path().join("o"), &s, false).unwrap();
    assert_eq!((report.counts.tasks, report.counts.agent_bindings), (1, 0));

    // A data directory written before bindings were kept: no table, no count in its
    // state (nor in state.redb.seen).
    let legacy = tmp.path().join("legacy");
    let (store, _) = Store::open(&legacy, &s, StoreConfig::default()).unwrap();
    store
        .handle()
        .write_blocking(vec![Mutation::PutTask(task(2, 10))])
        .unwrap();
    store.close();
    let strip = |bytes: &[u8]| {
        let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        v.as_object_mut().unwrap().remove("agent_binding").unwrap();
        serde_json::to_vec(&v).unwrap()
    };
    {
        let db = redb::Database::create(legacy.join(chatixia_store::DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, &[u8]> =
                redb::TableDefinition::new("agent_binding");
            assert!(txn.delete_table(def).unwrap());
            let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
            let mut m = txn.open_table(meta).unwrap();
            use redb::ReadableTable as _;
            let state = strip(m.get("state").unwrap().unwrap().value());
            m.insert("state", state.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let seen = legacy.join(chatixia_store::SEEN_FILE);
    std::fs::write(&seen, strip(&std::fs::read(&seen).unwrap())).unwrap();
    let (store, snap) = Store::open(&legacy, &s, StoreConfig::default()).unwrap();
    assert_eq!((snap.tasks.len(), snap.agent_bindings.len()), (1, 0));
    store
        .handle()
        .write_blocking(vec![Mutation::PutAgentBinding(alpha.clone())])
        .unwrap();
    store.close();
    let (store, snap) = Store::open(&legacy, &s, StoreConfig::default()).unwrap();
    assert_eq!(snap.agent_bindings, vec![alpha]);
    store.close();
}
