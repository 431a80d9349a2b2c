//! Pairing's workflows on the simulator (issue 21): N shards in one thread, the server's
//! own dispatch, simulated time, and faults. Every undo path is taken: after a refused
//! step or a failed commit the entry, the code, the token index and the peer's
//! authorization are as they were (a revocation, retained, stays in effect).

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;

use chatixia_store::{Mutation, Secrets, Snapshot};

use super::{config, world, SimNode};
use crate::auth;
use crate::pairing::api;
use crate::pairing::{Code, Entry, EntryId, Issuer, PairRequest, Status};
use crate::server::Msg;
use crate::shard::sim::Sim;
use crate::shard::{Error, Kind, Outcome};
use crate::time::UnixTime;

const T0: UnixTime = UnixTime(1_800_000_000_000_000_000);

fn issuer() -> Issuer {
    Issuer {
        peer_id: "admin-1".into(),
        mesh: Some("blue".into()),
    }
}

fn json(o: Outcome) -> serde_json::Value {
    let bytes = match o {
        Outcome::Json(b) | Outcome::Accepted(b) => b,
        Outcome::Static(b) => b.to_vec(),
        Outcome::Page { json, .. } => json,
    };
    serde_json::from_slice(&bytes).unwrap()
}

/// A paired device, as `pair` answered.
#[derive(Clone, Debug)]
struct Paired {
    id: String,
    peer_id: String,
    claim: String,
}

/// What a test compares before and after a refused or failed workflow.
#[derive(Debug, PartialEq)]
struct State {
    entries: Vec<Entry>,
    codes: usize,
    tokens: usize,
    authorized: Vec<String>,
}

/// A simulated world and the calls a test makes, each from a chosen shard.
struct World {
    sim: Sim<Msg, SimNode>,
    shards: usize,
    /// The next client address (each `pair` counts against its address's rate limit).
    next_ip: Cell<u32>,
}

impl World {
    fn new(shards: usize, seed: u64) -> World {
        World {
            sim: world(shards, config(), T0, seed),
            shards,
            next_ip: Cell::new(1),
        }
    }

    fn cfg(&self) -> crate::pairing::Config {
        self.sim.node(0).config.pairing.clone()
    }

    fn auth(&self) -> auth::Config {
        self.sim.node(0).config.auth.clone()
    }

    fn ip(&self) -> IpAddr {
        let n = self.next_ip.get();
        self.next_ip.set(n + 1);
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    fn generate(&self, on: usize) -> Result<String, Error> {
        let (sh, cfg) = (self.sim.shard(on), self.cfg());
        let out = self
            .sim
            .block_on(async move { api::issue_code(&sh, &cfg, issuer()).await })?;
        Ok(json(out)["code"].as_str().unwrap().to_owned())
    }

    fn pair_from(&self, on: usize, code: &str, ip: IpAddr) -> Result<Paired, Error> {
        let (sh, cfg) = (self.sim.shard(on), self.cfg());
        let body = PairRequest {
            code: code.into(),
            agent_name: "  laptop ".into(),
        };
        let out = self
            .sim
            .block_on(async move { api::pair(&sh, &cfg, body, ip).await })?;
        let v = json(out);
        assert_eq!(v["status"], "pending_approval");
        Ok(Paired {
            id: v["id"].as_str().unwrap().into(),
            peer_id: v["peer_id"].as_str().unwrap().into(),
            claim: v["claim_secret"].as_str().unwrap().into(),
        })
    }

    fn pair(&self, on: usize, code: &str) -> Result<Paired, Error> {
        self.pair_from(on, code, self.ip())
    }

    /// Approves; the device token.
    fn approve(&self, on: usize, id: &str) -> Result<String, Error> {
        let (sh, cfg, id) = (self.sim.shard(on), self.cfg(), id.to_owned());
        let out = self
            .sim
            .block_on(async move { api::approve(&sh, &cfg, &id).await })?;
        let v = json(out);
        assert_eq!(v["status"], "approved");
        Ok(v["device_token"].as_str().unwrap().into())
    }

    fn reject(&self, on: usize, id: &str) -> Result<Outcome, Error> {
        let (sh, cfg, id) = (self.sim.shard(on), self.cfg(), id.to_owned());
        self.sim
            .block_on(async move { api::reject(&sh, &cfg, &id).await })
    }

    fn revoke(&self, on: usize, id: &str) -> Result<Outcome, Error> {
        let (sh, cfg, id) = (self.sim.shard(on), self.cfg(), id.to_owned());
        self.sim
            .block_on(async move { api::revoke(&sh, &cfg, &id).await })
    }

    /// The claim path with the device's claim secret.
    fn status(&self, on: usize, p: &Paired) -> Result<serde_json::Value, Error> {
        let (sh, cfg) = (self.sim.shard(on), self.cfg());
        let (id, bearer, ip) = (p.id.clone(), format!("Bearer {}", p.claim), self.ip());
        let out = self
            .sim
            .block_on(async move { api::status(&sh, &cfg, Some(&bearer), &id, ip).await })?;
        Ok(json(out))
    }

    /// `POST /api/token` with a device token, then what the router does with a used one.
    fn exchange(&self, on: usize, token: &str) -> Result<auth::api::Issued, Error> {
        let (sh, cfg, auth_cfg) = (self.sim.shard(on), self.cfg(), self.auth());
        let (token, ip) = (token.to_owned(), self.ip());
        self.sim.block_on(async move {
            let issued = auth::api::token(&sh, &auth_cfg, None, Some(&token), ip).await?;
            if let Some(entry) = issued.device_entry {
                api::token_used(&sh, &cfg, EntryId::from_u32(entry)).await;
            }
            Ok(issued)
        })
    }

    fn entry(&self, id: &str) -> Option<Entry> {
        (0..self.shards).find_map(|s| {
            self.sim
                .node(s)
                .state
                .pairing
                .borrow()
                .entries
                .get(id)
                .cloned()
        })
    }

    fn state(&self) -> State {
        let mut entries = Vec::new();
        let (mut codes, mut tokens) = (0, 0);
        for s in 0..self.shards {
            let node = self.sim.node(s);
            let p = node.state.pairing.borrow();
            entries.extend(p.entries.list_all().into_iter().cloned());
            codes += p.codes.len();
            tokens += node.state.tokens.borrow().len();
        }
        entries.sort_by_key(|e| e.id);
        let mut authorized: Vec<String> = entries
            .iter()
            .map(|e| e.peer_id.clone())
            .filter(|p| self.authorized(p))
            .collect();
        authorized.dedup();
        State {
            entries,
            codes,
            tokens,
            authorized,
        }
    }

    /// Whether `peer` may signal, on its owner shard (and nowhere else).
    fn authorized(&self, peer: &str) -> bool {
        let owner = reactor::shard_of(peer, self.shards);
        for s in (0..self.shards).filter(|&s| s != owner) {
            assert!(!self.sim.node(s).state.authz.borrow().contains(peer));
        }
        self.sim.node(owner).state.authz.borrow().contains(peer)
    }

    fn revoked(&self, peer: &str) -> bool {
        let owner = reactor::shard_of(peer, self.shards);
        self.sim.node(owner).state.authz.borrow().is_revoked(peer)
    }

    /// A pending entry and its device (code generated on shard 0, paired from the last).
    fn pending(&self) -> Paired {
        let code = self.generate(0).unwrap();
        self.pair(self.shards - 1, &code).unwrap()
    }

    /// An approved entry and its device token.
    fn approved(&self) -> (Paired, String) {
        let p = self.pending();
        let token = self.approve(self.shards / 2, &p.id).unwrap();
        (p, token)
    }

    fn owner(&self, key: &str) -> usize {
        reactor::shard_of(key, self.shards)
    }

    /// The last sequence number of shard `s`'s change log.
    fn changes(&self, s: usize) -> u64 {
        self.sim.node(s).state.changes.borrow().seq()
    }

    /// Entry `id` is held by its owner shard, and no other.
    fn held_by_its_owner_only(&self, id: &str) {
        let owner = self.owner(id);
        for s in 0..self.shards {
            let held = self
                .sim
                .node(s)
                .state
                .pairing
                .borrow()
                .entries
                .get(id)
                .is_some();
            assert_eq!(held, s == owner, "entry {id} on shard {s}");
        }
    }
}

fn unavailable<T: std::fmt::Debug>(r: Result<T, Error>) -> Error {
    let e = r.unwrap_err();
    assert_eq!(e.kind, Kind::Unavailable, "{e}");
    e
}

#[test]
fn a_device_pairs_is_approved_claims_its_token_and_uses_it() {
    for shards in [1, 2, 4] {
        let w = World::new(shards, 11);
        let code = w.generate(0).unwrap();
        assert_eq!(w.state().codes, 1);
        let p = w.pair(shards - 1, &code).unwrap();
        w.held_by_its_owner_only(&p.id);
        let e = w.entry(&p.id).unwrap();
        assert_eq!((e.status, e.saving), (Status::PendingApproval, false));
        assert_eq!(e.agent_name, "laptop");
        assert_eq!(e.mesh.as_deref(), Some("blue"), "inherited from the issuer");
        assert_eq!(w.state().codes, 0, "the code is used");
        assert_eq!(
            w.pair(0, &code).unwrap_err().kind,
            Kind::Unauthorized,
            "once"
        );
        // Pending: the claim path has no token yet; a wrong secret is refused.
        let s = w.status(0, &p).unwrap();
        assert_eq!(s["status"], "pending_approval");
        assert!(s.get("device_token").is_none());
        let wrong = Paired {
            claim: "cs_wrong".into(),
            ..p.clone()
        };
        assert_eq!(w.status(0, &wrong).unwrap_err().kind, Kind::Unauthorized);

        let token = w.approve(shards / 2, &p.id).unwrap();
        assert!(token.starts_with("dt_"));
        let e = w.entry(&p.id).unwrap();
        assert_eq!((e.status, e.saving), (Status::Approved, false));
        assert_eq!(w.state().tokens, 1);
        assert!(w.authorized(&p.peer_id));
        // Approved: the device claims its token, once.
        let s = w.status(shards - 1, &p).unwrap();
        assert_eq!(s["device_token"], token.as_str());
        // The device exchanges it: the claim path stops serving it.
        let issued = w.exchange(0, &token).unwrap();
        assert_eq!(issued.body.peer_id, p.peer_id);
        assert_eq!(issued.body.role, "agent");
        assert_eq!(
            issued.device_entry,
            Some(EntryId::parse(&p.id).unwrap().value())
        );
        assert!(w.status(0, &p).unwrap().get("device_token").is_none());
        let e = w.entry(&p.id).unwrap();
        assert!(e.token_claimed && e.device_token.is_empty() && !e.saving);
        // The token keeps working.
        assert!(w.exchange(shards - 1, &token).is_ok());
        // What was saved: the invite, the entry (pending, approved, claimed) and the
        // token grant; the invite deleted with the pairing.
        let kinds: Vec<&str> = w
            .sim
            .durable()
            .iter()
            .map(|m| match m {
                Mutation::PutInvite(_) => "invite",
                Mutation::DeleteInvite(_) => "-invite",
                Mutation::PutPairing(_) => "pairing",
                Mutation::PutDeviceToken(_) => "token",
                _ => "other",
            })
            .collect();
        assert_eq!(
            kinds,
            ["invite", "-invite", "pairing", "pairing", "token", "pairing"],
            "{shards} shards"
        );
    }
}

#[test]
fn a_rejected_entry_is_final_and_never_authorized() {
    for shards in [1, 2, 4] {
        let w = World::new(shards, 5);
        let p = w.pending();
        let r = w.reject(0, &p.id).unwrap();
        assert_eq!(json(r), serde_json::json!({"status": "ok"}));
        let e = w.entry(&p.id).unwrap();
        assert_eq!((e.status, e.saving), (Status::Rejected, false));
        for again in [
            w.reject(0, &p.id),
            w.approve(0, &p.id).map(|_| Outcome::Static(b"")),
        ] {
            let e = again.unwrap_err();
            assert_eq!(e.kind, Kind::NotFound);
            assert_eq!(e.message.as_deref(), Some("not found or not pending"));
        }
        assert!(!w.authorized(&p.peer_id));
        assert_eq!(w.state().tokens, 0);
    }
}

#[test]
fn a_revocation_stops_the_token_and_deauthorizes_the_peer_on_its_owner() {
    for shards in [1, 2, 4] {
        let w = World::new(shards, 3);
        let (p, token) = w.approved();
        assert!(w.authorized(&p.peer_id));
        let r = w.revoke(shards - 1, &p.id).unwrap();
        assert!(matches!(r, Outcome::Json(_)), "saved: 200");
        assert_eq!(json(r), serde_json::json!({"status": "ok"}));
        let e = w.entry(&p.id).unwrap();
        assert_eq!((e.status, e.saving), (Status::Revoked, false));
        assert!(e.device_token.is_empty() && e.token_claimed);
        assert_eq!(w.state().tokens, 0);
        assert!(!w.authorized(&p.peer_id));
        assert!(
            w.revoked(&p.peer_id),
            "older JWTs of the peer are refused on /ws"
        );
        // The token is refused (and counts as a wrong secret); nothing to claim.
        assert_eq!(
            w.exchange(0, &token).unwrap_err(),
            Error::bare(Kind::Unauthorized)
        );
        assert!(w.status(0, &p).unwrap().get("device_token").is_none());
        let e = w.revoke(0, &p.id).unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_deref()),
            (Kind::NotFound, Some("not found or not approved"))
        );
        // Saved: the entry, the revocation and the deletion of the grant, at once.
        let last = w.sim.durable();
        let tail: Vec<bool> = last[last.len() - 3..]
            .iter()
            .map(|m| {
                matches!(
                    m,
                    Mutation::PutPairing(_)
                        | Mutation::PutRevocation(_)
                        | Mutation::DeleteDeviceToken(_)
                )
            })
            .collect();
        assert_eq!(tail, [true, true, true]);
    }
}

/// `fail_commits(1)` at each commit: the change is undone, and the workflow can be
/// repeated; a revocation is kept (retained) and stays in effect.
#[test]
fn a_failed_commit_undoes_every_step() {
    for shards in [1, 2, 4] {
        let w = World::new(shards, 17);
        // generate-code: the code is taken back.
        w.sim.fail_commits(1);
        unavailable(w.generate(0));
        assert_eq!(w.state().codes, 0);

        // pair: the entry is removed and the code put back (it pairs afterwards).
        let code = w.generate(0).unwrap();
        let before = w.state();
        w.sim.fail_commits(1);
        unavailable(w.pair(shards - 1, &code));
        assert_eq!(w.state(), before, "{shards} shards: pair undone");
        let p = w.pair(shards - 1, &code).unwrap();

        // approve: the peer deauthorized, the token dropped, the entry pending again.
        let before = w.state();
        w.sim.fail_commits(1);
        unavailable(w.approve(0, &p.id));
        assert_eq!(w.state(), before, "{shards} shards: approve undone");
        assert!(!w.authorized(&p.peer_id));
        // reject: pending again.
        w.sim.fail_commits(1);
        unavailable(w.reject(0, &p.id));
        assert_eq!(w.state(), before, "{shards} shards: reject undone");
        // Both can be repeated.
        let token = w.approve(0, &p.id).unwrap();

        // The device uses its token while the store refuses the change: the claim path
        // stays closed in memory (fail closed), the entry is not left saving.
        w.sim.fail_commits(1);
        assert!(w.exchange(0, &token).is_ok());
        let e = w.entry(&p.id).unwrap();
        assert!(e.token_claimed && !e.saving);

        // revoke: the store is unavailable; the revocation is kept to be written on
        // recovery (202) and is in effect now.
        w.sim.fail_commits(1);
        let r = w.revoke(0, &p.id).unwrap();
        let Outcome::Accepted(_) = &r else {
            panic!("{r:?}")
        };
        let v = json(r);
        assert_eq!(
            (v["ok"].as_bool(), v["saved"].as_bool()),
            (Some(true), Some(false))
        );
        let e = w.entry(&p.id).unwrap();
        assert_eq!((e.status, e.saving), (Status::Revoked, false));
        assert!(!w.authorized(&p.peer_id));
        assert_eq!(w.state().tokens, 0);
        assert!(w.exchange(0, &token).is_err());
    }
}

/// A full mailbox on any shard a workflow needs: 503, and nothing changed (the rate
/// count of `pair` aside); where a shard is known only after the first change (the
/// approved peer's, a revoked token's), the change is undone first.
#[test]
fn a_full_mailbox_at_each_step_changes_nothing() {
    let shards = 4;
    let w = World::new(shards, 23);
    // generate-code: the code's owner (random: drawn until shard k owns one).
    for k in 0..shards {
        let mut refused = false;
        for _ in 0..64 {
            let before = w.state();
            w.sim.set_full(k, true);
            let r = w.generate(0);
            w.sim.set_full(k, false);
            match r {
                Ok(code) => assert_ne!(w.owner(&code), k),
                Err(e) => {
                    assert_eq!(e.kind, Kind::Unavailable);
                    assert_eq!(w.state(), before);
                    refused = true;
                    break;
                }
            }
        }
        assert!(refused, "shard {k} owned none of 64 codes");
    }

    // pair: the client's owner (rate check), the code's owner, the entry's owner.
    for k in 0..shards {
        let code = w.generate(0).unwrap();
        let code_key = Code::parse(&code).unwrap().to_string();
        let ip = w.ip();
        let client_owner = w.owner(&crate::limits::client_key(ip));
        let before = w.state();
        w.sim.set_full(k, true);
        let r = w.pair_from(1, &code, ip);
        w.sim.set_full(k, false);
        match r {
            Ok(p) => {
                assert!(k != client_owner && k != w.owner(&code_key));
                assert_ne!(w.owner(&p.id), k);
            }
            Err(e) => {
                assert_eq!(e.kind, Kind::Unavailable, "{e}");
                assert_eq!(w.state(), before, "pair refused on a full shard {k}");
            }
        }
        if k == client_owner || k == w.owner(&code_key) {
            assert_eq!(w.state().codes, before.codes, "the code is still live");
        }
    }

    // approve: the entry's owner, the token's owner (before any change), the peer's
    // owner (after the entry changed: undone).
    for k in 0..shards {
        let p = w.pending();
        let (entry_owner, peer_owner) = (w.owner(&p.id), w.owner(&p.peer_id));
        let before = w.state();
        w.sim.set_full(k, true);
        let r = w.approve(1, &p.id);
        w.sim.set_full(k, false);
        match r {
            Ok(_) => assert!(k != entry_owner && k != peer_owner),
            Err(e) => {
                assert_eq!(e.kind, Kind::Unavailable, "{e}");
                assert_eq!(w.state(), before, "approve refused on a full shard {k}");
            }
        }
        if k == entry_owner || k == peer_owner {
            assert!(w.approve(1, &p.id).is_ok(), "approvable afterwards");
        }
    }

    // reject: the entry's owner.
    for k in 0..shards {
        let p = w.pending();
        let before = w.state();
        w.sim.set_full(k, true);
        let r = w.reject(2, &p.id);
        w.sim.set_full(k, false);
        if k == w.owner(&p.id) {
            unavailable(r);
            assert_eq!(w.state(), before);
        } else {
            r.unwrap();
        }
    }

    // revoke: the entry's owner; the peer's and the token's owners (after the entry
    // changed: undone, the entry approved again and the token working).
    for k in 0..shards {
        let (p, token) = w.approved();
        let (entry_owner, peer_owner) = (w.owner(&p.id), w.owner(&p.peer_id));
        let before = w.state();
        w.sim.set_full(k, true);
        let r = w.revoke(3, &p.id);
        w.sim.set_full(k, false);
        match r {
            Ok(_) => {
                assert!(k != entry_owner && k != peer_owner);
                assert!(!w.authorized(&p.peer_id));
            }
            Err(e) => {
                assert_eq!(e.kind, Kind::Unavailable, "{e}");
                assert_eq!(w.state(), before, "revoke refused on a full shard {k}");
                assert!(w.exchange(0, &token).is_ok(), "the token still works");
                assert!(w.revoke(3, &p.id).is_ok(), "revocable afterwards");
            }
        }
    }

    // The peer's owner is full and is not the entry's: the entry changed first, so the
    // change is undone before the 503 (its owner notes both in its change log).
    let away = |make: &dyn Fn() -> Paired| {
        (0..64)
            .map(|_| make())
            .find(|p| w.owner(&p.peer_id) != w.owner(&p.id))
            .expect("a peer id owned away from its entry within 64 draws")
    };
    let p = away(&|| w.pending());
    let (entry_owner, peer_owner) = (w.owner(&p.id), w.owner(&p.peer_id));
    // (Drawn until the new token's owner is not the peer's: that would refuse the
    // approval before the entry changed.)
    let mut undone = false;
    for _ in 0..64 {
        let (before, seq) = (w.state(), w.changes(entry_owner));
        w.sim.set_full(peer_owner, true);
        unavailable(w.approve(entry_owner, &p.id));
        w.sim.set_full(peer_owner, false);
        assert_eq!(w.state(), before, "approve undone");
        match w.changes(entry_owner) - seq {
            0 => continue,
            2 => {
                undone = true;
                break;
            }
            n => panic!("{n} changes"),
        }
    }
    assert!(undone, "approved, then restored");
    let token = w.approve(entry_owner, &p.id).unwrap();
    let (before, seq) = (w.state(), w.changes(entry_owner));
    w.sim.set_full(peer_owner, true);
    unavailable(w.revoke(entry_owner, &p.id));
    w.sim.set_full(peer_owner, false);
    assert_eq!(w.state(), before, "revoke undone");
    assert_eq!(w.changes(entry_owner), seq + 2, "revoked, then restored");
    assert!(w.authorized(&p.peer_id));
    assert!(w.exchange(0, &token).is_ok(), "the token still works");
}

/// Refused steps after the first change: an entry store that is full puts the code
/// back; a token index or an authorization table that is full undoes the approval.
#[test]
fn a_refused_step_undoes_the_steps_before_it() {
    for shards in [1, 2] {
        // The entry store is full: the redeemed code is put back.
        let w = World::new(shards, 29);
        let code = w.generate(0).unwrap();
        for s in 0..shards {
            let mut p = w.sim.node(s).state.pairing.borrow_mut();
            for i in 0..crate::pairing::PairingStore::DEFAULT_ENTRIES_MAX as u32 {
                let mut e = w_entry(i + (s as u32) * 100_000);
                e.status = Status::Rejected;
                p.entries.insert_loaded(e);
            }
        }
        let before = w.state();
        let e = unavailable(w.pair(0, &code));
        assert_eq!(
            e.message.as_deref(),
            Some("too many pairing requests, try again later")
        );
        assert_eq!(w.state(), before, "code back, no entry");

        // The token index is full: the entry goes back to pending.
        let w = World::new(shards, 31);
        let p = w.pending();
        for s in 0..shards {
            *w.sim.node(s).state.tokens.borrow_mut() = auth::DeviceTokenIndex::with_limit(0);
        }
        let before = w.state();
        let e = unavailable(w.approve(0, &p.id));
        assert_eq!(
            e.message.as_deref(),
            Some("could not activate the device token; try again later")
        );
        assert_eq!(w.state(), before);

        // The peer's authorization table is full: the token is dropped again too.
        let w = World::new(shards, 37);
        let p = w.pending();
        {
            let mut authz = w.sim.node(w.owner(&p.peer_id)).state.authz.borrow_mut();
            for i in 0..crate::signaling::PeerAuthz::PEERS_MAX {
                authz.add(&format!("filler-{i}"), None);
            }
        }
        let before = w.state();
        unavailable(w.approve(0, &p.id));
        assert_eq!(w.state(), before, "token dropped, entry pending");
        assert_eq!(w.state().tokens, 0);
    }
}

fn w_entry(n: u32) -> Entry {
    Entry {
        id: EntryId::from_u32(n),
        agent_name: "x".into(),
        peer_id: format!("agent-{n:06x}"),
        device_token: String::new(),
        status: Status::PendingApproval,
        created_at: T0,
        updated_at: T0,
        mesh: None,
        invited_by: "admin-1".into(),
        token_hash: None,
        claim_hash: None,
        token_claimed: false,
        saving: false,
    }
}

/// A follow-up whose owner's mailbox stays full past the ask patience goes into the room
/// reserved for it, and is applied once the owner drains its mailbox: never lost.
#[test]
fn a_follow_up_to_a_full_mailbox_waits_in_its_room() {
    let w = World::new(2, 41);
    let code = Code::parse("K7QM-3XPA-9T2D").unwrap();
    let owner = w.owner(&code.to_string());
    w.sim.node(owner).state.pairing.borrow_mut().codes.restore(
        code,
        issuer(),
        T0.saturating_add_secs(300),
    );
    let sh = w.sim.shard(1 - owner);
    let room = crate::shard::reserve(&sh, owner).unwrap();
    w.sim.set_full(owner, true);
    let t0 = w.sim.now();
    let applied = Rc::new(Cell::new(None));
    let a = applied.clone();
    w.sim.spawn(async move {
        a.set(Some(
            api::follow_up(&sh, room, || crate::pairing::ops::Op::CodeRemove(code)).await,
        ));
    });
    w.sim.run();
    assert_eq!(
        applied.get(),
        Some(false),
        "not confirmed: it waits in the room"
    );
    assert!(w.sim.now().saturating_duration_since(t0) >= crate::shard::ASK_PATIENCE);
    // The room took it although the mailbox is full.
    assert_eq!(w.state().codes, 0);
    w.sim.set_full(owner, false);
}

/// A restart with another shard count: what the workflows saved loads on the new
/// owners, and the device's token, its claim path and a revocation all still hold.
#[test]
fn what_the_workflows_saved_survives_a_restart_with_another_shard_count() {
    for (before, after) in [(1, 4), (4, 2), (2, 1)] {
        let w = World::new(before, 43);
        let (p, token) = w.approved();
        let (q, revoked_token) = w.approved();
        w.revoke(0, &q.id).unwrap();
        let pending_code = w.generate(0).unwrap();
        let snap = snapshot(&w.sim.durable());
        let secrets: Secrets = w.cfg().secrets;
        let (boots, _) = crate::server::boot::split(snap, after, &secrets);
        let v = World::new(after, 47);
        for (s, boot) in boots.into_iter().enumerate() {
            v.sim.node(s).state.load(boot, v.sim.now());
        }
        // The approved device: its token is served on the claim path and works.
        assert_eq!(v.status(0, &p).unwrap()["device_token"], token.as_str());
        assert!(v.authorized(&p.peer_id));
        assert_eq!(
            v.exchange(after - 1, &token).unwrap().body.peer_id,
            p.peer_id
        );
        // The revoked one stays revoked.
        assert!(v.exchange(0, &revoked_token).is_err());
        assert!(!v.authorized(&q.peer_id) && v.revoked(&q.peer_id));
        // The live code pairs on its new owner.
        assert!(v.pair(0, &pending_code).is_ok());
    }
}

/// What a store would load after these commits.
fn snapshot(mutations: &[Mutation]) -> Snapshot {
    use std::collections::BTreeMap;
    let (mut pairings, mut tokens, mut revocations, mut invites) = (
        BTreeMap::new(),
        BTreeMap::new(),
        BTreeMap::new(),
        BTreeMap::new(),
    );
    for m in mutations.iter().cloned() {
        match m {
            Mutation::PutPairing(r) => {
                pairings.insert(r.id, r);
            }
            Mutation::DeletePairing(id) => {
                pairings.remove(&id);
            }
            Mutation::PutDeviceToken(r) => {
                tokens.insert(r.hash, r);
            }
            Mutation::DeleteDeviceToken(h) => {
                tokens.remove(&h);
            }
            Mutation::PutRevocation(r) => {
                revocations.insert(r.peer_id.clone(), r);
            }
            Mutation::PutInvite(r) => {
                invites.insert(r.code, r);
            }
            Mutation::DeleteInvite(k) => {
                invites.remove(&k);
            }
            Mutation::PutTask(_)
            | Mutation::DeleteTask(_)
            | Mutation::PutAgentBinding(_)
            | Mutation::DeleteAgentBinding(_) => {}
        }
    }
    Snapshot {
        pairings: pairings.into_values().collect(),
        device_tokens: tokens.into_values().collect(),
        revocations: revocations.into_values().collect(),
        invites: invites.into_values().collect(),
        ..Snapshot::default()
    }
}
