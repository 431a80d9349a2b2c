//! The start-up split of the loaded snapshot by owner shard (issue 10). Each service
//! converts its own records (`hub::records`, `pairing::records`, `auth::tokens`); this is
//! the one place that names them all.
//!
//! The store (`chatixia-store`) runs on its own thread; each shard holds a `ShardLink`
//! and commits through the shard layer ([`crate::shard::Shard::commit`]). A handler
//! applies a change on the owner shard first (flagged `saving`, so the record's next
//! change waits for this one), commits it, answers 2xx only once the commit is
//! acknowledged, and undoes the change (503) otherwise. See docs/ARCHITECTURE.md, "Durable state".
//!
//! Sans-IO: plain conversions and a pure split; the shard loads its part at start.

use chatixia_store::{Secrets, Snapshot};
use reactor::shard_of;

use crate::auth::tokens::{grant_of, token_key, DeviceGrant};
use crate::hub::records::task_of;
use crate::hub::{Placement, Task, TaskSubmission};
use crate::limits::principal::Owner;
use crate::pairing::records::{entry_of, invite_of};
use crate::pairing::{Code, Entry, Issuer, Status};
use crate::registry::records::binding_of;
use crate::time::UnixTime;

/// Where the store lives when neither `--data-dir` nor `CHATIXIA_DATA_DIR` is given.
pub const DEFAULT_DATA_DIR: &str = "./chatixia-data";

/// One shard's part of the loaded state.
#[derive(Default)]
pub struct ShardBoot {
    /// Entries with `shard_of(entry id) == this shard`.
    pub entries: Vec<Entry>,
    /// Device tokens with `shard_of(token key)` here: `(key, grant)`.
    pub tokens: Vec<(String, DeviceGrant)>,
    /// Keys of revoked entries' tokens with `shard_of(token key)` here: refused at this
    /// node whatever the cluster's token hash still holds (`DeviceTokenIndex::revoke`;
    /// used in a cluster only).
    pub revoked_tokens: Vec<String>,
    /// Approved peers with `shard_of(peer_id)` here: `(peer, mesh)`.
    pub authorized: Vec<(String, Option<String>)>,
    /// Revoked peers with `shard_of(peer_id)` here, and when.
    pub revoked: Vec<(String, UnixTime)>,
    /// Live invite codes with `shard_of(code)` here.
    pub invites: Vec<(Code, Issuer, UnixTime)>,
    /// Tasks with `shard_of(id)` here (the shard every lookup by id asks).
    pub tasks: Vec<Task>,
    /// Pointers for target agents owned here to tasks living elsewhere:
    /// `(agent, task id, deadline)`.
    pub pointers: Vec<(String, String, UnixTime)>,
    /// Agent bindings with `shard_of(agent id)` here (the agent's owner).
    pub bindings: Vec<(String, Owner)>,
}

/// Splits a loaded snapshot by owner shard for `shards` shards (any count: the owners
/// are recomputed, so a restart with another `--cores` re-homes everything). Also
/// returns the shards that hold tasks away from their claim home (`shard_of(skill)`,
/// `shard_of(target)`): heartbeats ask those too (see `hub::api::heartbeat`).
pub fn split(snapshot: Snapshot, shards: usize, secrets: &Secrets) -> (Vec<ShardBoot>, Vec<usize>) {
    let mut boots: Vec<ShardBoot> = (0..shards).map(|_| ShardBoot::default()).collect();
    let mut stray = Vec::new();
    for r in snapshot.pairings {
        let e = entry_of(r, secrets);
        if e.status == Status::Approved {
            boots[shard_of(&e.peer_id, shards)]
                .authorized
                .push((e.peer_id.clone(), e.mesh.clone()));
        }
        if e.status == Status::Revoked {
            if let Some(h) = &e.token_hash {
                let key = token_key(h);
                boots[shard_of(&key, shards)].revoked_tokens.push(key);
            }
        }
        boots[shard_of(e.id.to_string(), shards)].entries.push(e);
    }
    for r in snapshot.device_tokens {
        let key = token_key(&r.hash);
        boots[shard_of(&key, shards)]
            .tokens
            .push((key, grant_of(r)));
    }
    for r in snapshot.revocations {
        boots[shard_of(&r.peer_id, shards)]
            .revoked
            .push((r.peer_id, UnixTime::from_secs(r.not_before_secs)));
    }
    for r in snapshot.invites {
        let key = r.code;
        // Six-digit codes stored by an older server load as six-digit codes.
        let Some((code, issuer, expires_at)) = invite_of(r) else {
            tracing::error!(
                key,
                "an invite code record holds no valid code; it is not loaded"
            );
            continue;
        };
        boots[shard_of(code.to_string(), shards)]
            .invites
            .push((code, issuer, expires_at));
    }
    for r in snapshot.tasks {
        let t = task_of(r);
        let home = shard_of(&t.id, shards);
        let claim_home = match claim_home(&t) {
            Some(key) => shard_of(key, shards),
            None => home,
        };
        // A targeted task is found by its agent's owner through a pointer wherever the
        // task lives away from that owner (a skill task targeted at an agent included:
        // `hub::api::create` leaves the same pointer).
        if !t.target_agent_id.is_empty() {
            let agent_home = shard_of(&t.target_agent_id, shards);
            if agent_home != home {
                boots[agent_home].pointers.push((
                    t.target_agent_id.clone(),
                    t.id.clone(),
                    t.deadline(),
                ));
            }
        }
        if claim_home != home && !stray.contains(&home) {
            stray.push(home);
        }
        boots[home].tasks.push(t);
    }
    for r in snapshot.agent_bindings {
        let (agent, owner) = binding_of(r);
        boots[shard_of(&agent, shards)]
            .bindings
            .push((agent, owner));
    }
    stray.sort_unstable();
    (boots, stray)
}

/// The key whose owner claims a task on heartbeats (as `hub::api::create` places it).
fn claim_home(t: &Task) -> Option<&str> {
    let sub = TaskSubmission {
        skill: t.skill.clone(),
        target_agent_id: t.target_agent_id.clone(),
        source_agent_id: String::new(),
        payload: serde_json::Value::Null.into(),
        ttl: t.ttl,
    };
    match sub.placement() {
        Placement::Skill { .. } => Some(t.skill.as_str()),
        Placement::Agent(_) => Some(t.target_agent_id.as_str()),
        Placement::Any => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::records::task_record;
    use crate::hub::TaskAccess;
    use crate::limits::Holder;
    use crate::pairing::records::{entry_record, invite_record, test_entry as entry};
    use crate::registry::records::binding_record;
    use chatixia_store::TaskRecord;

    /// Issue 20: a six-digit code stored by an older server (its record's `code` the
    /// plain number) loads as that six-digit code; a long code round-trips; a key no
    /// code has is not loaded.
    #[test]
    fn invite_records_of_both_formats_load_on_their_owner() {
        let secrets = Secrets::derive(b"s");
        let issuer = Issuer {
            peer_id: "admin-1".into(),
            mesh: Some("blue".into()),
        };
        let long = Code::parse("K7QM-3XPA-9T2D").unwrap();
        let mut snap = Snapshot::default();
        let mut old = invite_record(Code::from_u32(42), &issuer, UnixTime(9));
        assert_eq!(old.code, 42, "six-digit keys are unchanged");
        old.code = 123_456;
        snap.invites.push(old);
        snap.invites.push(invite_record(long, &issuer, UnixTime(9)));
        let mut bad = invite_record(long, &issuer, UnixTime(9));
        bad.code = 7_000_000;
        snap.invites.push(bad);
        for shards in [1, 3] {
            let (boots, _) = split(snap.clone(), shards, &secrets);
            let mut found = Vec::new();
            for (i, b) in boots.iter().enumerate() {
                for (code, who, at) in &b.invites {
                    assert_eq!(shard_of(code.to_string(), shards), i);
                    assert_eq!((who, *at), (&issuer, UnixTime(9)));
                    found.push(*code);
                }
            }
            found.sort();
            assert_eq!(found, vec![Code::from_u32(123_456), long]);
        }
    }

    /// Issue 20: who created and who claimed a task survive a restart; a record written
    /// before they were kept loads with neither.
    #[test]
    fn task_access_round_trips_and_old_records_load() {
        let mut t = Task {
            id: "9f1c03ab-77e".into(),
            skill: "s".into(),
            target_agent_id: String::new(),
            source_agent_id: "bob".into(),
            assigned_agent_id: "alice".into(),
            payload: serde_json::json!({"k": 1}).into(),
            state: "assigned".into(),
            result: String::new(),
            error: String::new(),
            created_at: UnixTime::from_secs(100),
            updated_at: UnixTime::from_secs(101),
            ttl: 300,
            holder: crate::limits::Charge::Anonymous("10.0.0.1".into()),
            access: TaskAccess {
                created_by: Some(Holder {
                    peer: None,
                    admin: false,
                    address: "10.0.0.1".into(),
                }),
                claimed_by: Some(Holder {
                    peer: Some("alice-sidecar".into()),
                    admin: false,
                    address: "10.0.0.2".into(),
                }),
                reported_by: Some(Holder {
                    peer: Some("alice-sidecar".into()),
                    admin: false,
                    address: "10.0.0.3".into(),
                }),
            },
        };
        let json = serde_json::to_string(&task_record(&t)).unwrap();
        let back: TaskRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(task_of(back), t);
        let old = json.split(",\"created_by\"").next().unwrap().to_owned() + "}";
        let loaded = task_of(serde_json::from_str(&old).unwrap());
        t.access = TaskAccess::default();
        // Without a creator it is charged as anonymous with no address.
        t.holder = crate::limits::Charge::default();
        assert_eq!(loaded, t);
    }

    #[test]
    fn split_places_every_record_on_its_owner_for_any_count() {
        let secrets = Secrets::derive(b"s");
        let task = |id: &str, skill: &str, target: &str| Task {
            id: id.into(),
            skill: skill.into(),
            target_agent_id: target.into(),
            source_agent_id: String::new(),
            assigned_agent_id: String::new(),
            payload: serde_json::Value::Null.into(),
            state: "pending".into(),
            result: String::new(),
            error: String::new(),
            created_at: UnixTime::from_secs(100),
            updated_at: UnixTime::from_secs(100),
            ttl: 300,
            access: TaskAccess {
                created_by: Some(Holder {
                    peer: None,
                    admin: false,
                    address: "10.0.0.1".into(),
                }),
                claimed_by: None,
                reported_by: None,
            },
            holder: crate::limits::Charge::Anonymous("10.0.0.1".into()),
        };
        let mut snap = Snapshot::default();
        snap.pairings
            .push(entry_record(&entry(1, Status::Approved), &secrets));
        snap.pairings
            .push(entry_record(&entry(2, Status::PendingApproval), &secrets));
        for i in 0..40 {
            snap.tasks
                .push(task_record(&task(&format!("t{i}"), "", &format!("ag{i}"))));
            let owner = if i % 2 == 0 {
                Owner::Peer(format!("ag{i}-sidecar"))
            } else {
                Owner::Address("10.0.0.1".into())
            };
            snap.agent_bindings
                .push(binding_record(&format!("ag{i}"), &owner));
        }
        for shards in [1, 3, 7] {
            let (boots, stray) = split(snap.clone(), shards, &secrets);
            let mut tasks = 0;
            for (s, b) in boots.iter().enumerate() {
                for e in &b.entries {
                    assert_eq!(shard_of(e.id.to_string(), shards), s);
                }
                for (peer, _) in &b.authorized {
                    assert_eq!(shard_of(peer, shards), s);
                }
                for t in &b.tasks {
                    assert_eq!(shard_of(&t.id, shards), s);
                    // The holder survives the record: a restart charges the same budget.
                    assert_eq!(
                        t.holder,
                        crate::limits::Charge::Anonymous("10.0.0.1".into())
                    );
                    tasks += 1;
                }
                for (agent, id, _) in &b.pointers {
                    assert_eq!(shard_of(agent, shards), s);
                    assert_ne!(shard_of(id, shards), s);
                    assert!(stray.contains(&shard_of(id, shards)));
                }
            }
            assert_eq!(tasks, 40);
            let mut bindings = 0;
            for (s, b) in boots.iter().enumerate() {
                for (agent, owner) in &b.bindings {
                    assert_eq!(shard_of(agent, shards), s);
                    let want = snap
                        .agent_bindings
                        .iter()
                        .find(|r| r.agent_id == *agent)
                        .cloned()
                        .map(binding_of);
                    assert_eq!(want, Some((agent.clone(), owner.clone())));
                    bindings += 1;
                }
            }
            assert_eq!(bindings, 40);
            let authorized: usize = boots.iter().map(|b| b.authorized.len()).sum();
            assert_eq!(authorized, 1);
            if shards == 1 {
                assert!(stray.is_empty());
            }
        }
    }
}
