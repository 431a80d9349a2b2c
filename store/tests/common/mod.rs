//! Record makers shared by the store's tests.
#![allow(dead_code)] // each test file uses a different subset

use chatixia_store::{
    DeviceTokenRecord, HashKind, InviteRecord, Mutation, PairingRecord, PairingStatus,
    RevocationRecord, Secrets, TaskRecord,
};

pub const SECRET: &[u8] = b"test-server-secret";

pub fn secrets() -> Secrets {
    Secrets::derive(SECRET)
}

pub fn token_of(i: u64) -> String {
    format!("dt_{i:032x}")
}

pub fn pairing(s: &Secrets, i: u64, status: PairingStatus) -> PairingRecord {
    let approved = status != PairingStatus::PendingApproval;
    PairingRecord {
        id: i as u32,
        agent_name: format!("agent name {i}"),
        peer_id: format!("agent-{:06x}", i & 0xff_ffff),
        status,
        created_at_ns: 1_795_239_689_000_000_000 + i,
        updated_at_ns: 1_795_239_690_000_000_000 + i,
        mesh: i.is_multiple_of(2).then(|| format!("mesh-{i}")),
        invited_by: "agent-001".into(),
        claim_hash: Some(s.token_hash(HashKind::ClaimSecret, &format!("claim-{i}"))),
        token_hash: approved.then(|| s.token_hash(HashKind::DeviceToken, &token_of(i))),
        sealed_token: (status == PairingStatus::Approved).then(|| s.seal(i as u32, &token_of(i))),
    }
}

pub fn grant(s: &Secrets, i: u64) -> DeviceTokenRecord {
    DeviceTokenRecord {
        hash: s.token_hash(HashKind::DeviceToken, &token_of(i)),
        peer_id: format!("agent-{:06x}", i & 0xff_ffff),
        role: "agent".into(),
        mesh: None,
        entry_id: i as u32,
    }
}

pub fn revocation(i: u64) -> RevocationRecord {
    RevocationRecord {
        peer_id: format!("agent-{:06x}", i & 0xff_ffff),
        not_before_secs: 1_795_239_700 + i,
        entry_id: Some(i as u32),
    }
}

pub fn invite(i: u64) -> InviteRecord {
    InviteRecord {
        code: i % 1_000_000,
        issuer_peer_id: "agent-001".into(),
        mesh: Some("m".into()),
        expires_at_ns: 1_795_239_989_000_000_000 + i,
    }
}

/// A task whose payload is `len` bytes derived from `i` (so a torn record cannot pass).
pub fn task(i: u64, len: usize) -> TaskRecord {
    TaskRecord {
        id: task_id(i),
        skill: "echo".into(),
        target_agent_id: String::new(),
        source_agent_id: "agent-001".into(),
        assigned_agent_id: String::new(),
        payload: serde_json::json!({ "i": i, "blob": blob(i, len) }).into(),
        state: "pending".into(),
        result: String::new(),
        error: String::new(),
        created_at_ns: 1_795_239_689_000_000_000 + i,
        updated_at_ns: 1_795_239_689_000_000_000 + i,
        ttl: 300,
        created_by: None,
        claimed_by: None,
        reported_by: None,
    }
}

pub fn task_id(i: u64) -> String {
    format!("t{i:011}")
}

pub fn blob(i: u64, len: usize) -> String {
    (0..len)
        .map(|j| char::from(b'a' + ((i as usize * 7 + j) % 26) as u8))
        .collect()
}

/// One write touching three tables (approval-like): entry, grant and a task.
pub fn approval_write(s: &Secrets, i: u64, task_len: usize) -> Vec<Mutation> {
    vec![
        Mutation::PutPairing(pairing(s, i, PairingStatus::Approved)),
        Mutation::PutDeviceToken(grant(s, i)),
        Mutation::PutTask(task(i, task_len)),
    ]
}

/// The store's doorbell as the server makes it: the reactor's bell, which a task of the
/// test's monoio runtime (epoll) awaits. Call on that runtime.
pub struct TestBell(pub reactor::Bell);

impl chatixia_store::Doorbell for TestBell {
    fn ring(&self) {
        self.0.ring();
    }
}

pub fn test_bell() -> (TestBell, reactor::BellWaiter) {
    let (bell, waiter) = reactor::Bell::new(reactor::IoDriver::Epoll).unwrap();
    (TestBell(bell), waiter)
}

/// A doorbell nobody awaits: the test polls the link or the stream itself.
pub struct Unheard;

impl chatixia_store::Doorbell for Unheard {
    fn ring(&self) {}
}
