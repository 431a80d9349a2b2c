//! Pairing's typed operations: what another shard asks the owner of a code
//! (`shard_of(code)`), an entry (`shard_of(entry id)`) or a client IP's rate-limit bucket
//! (`shard_of(ip string)`), and the reply. [`Op::apply`] is the whole owner side.

use std::net::IpAddr;

use chatixia_store::TokenHash;

use crate::pairing::budget::AddressBudget;
use crate::pairing::guard::{GuardLimits, GuessGuard};
use crate::pairing::{
    Code, CodeInsertError, CodeStore, CreateError, Entry, EntryId, Issuer, PairingStore,
    RateLimiter, Status,
};
use crate::shard::{ChangeLog, Topic};
use crate::time::UnixTime;

/// The pairing state one shard owns.
pub struct Store {
    pub codes: CodeStore,
    pub entries: PairingStore,
    pub rate: RateLimiter,
    /// Wrong codes per client key (IPv4 address, IPv6 /64) per 24 h.
    pub budget: AddressBudget,
    /// Guessing defence for six-digit codes (global wrong-guess rate, burnt buckets).
    pub guard: GuessGuard,
    /// What `/metrics` shows of pairing on this shard.
    pub counters: Counters,
}

/// Pairing counters of one shard (`/metrics`, `chatixia_pair_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// `pair` attempts refused by the per-IP rate limit (429).
    pub refused_rate: u64,
    /// `pair` attempts refused because the client key spent its daily budget (429).
    pub refused_address: u64,
    /// Six-digit redemptions refused by the guessing guard (429).
    pub refused_guard: u64,
    /// Codes looked up and not live (401).
    pub wrong_codes: u64,
    /// Six-digit codes burnt by the guard.
    pub codes_burnt: u64,
    /// Addresses in the rate-limit table now (at most 65,536).
    pub rate_addresses: u64,
    /// Client keys in the daily-budget table now (at most `--pair-budget-addresses-max`).
    pub budget_keys: u64,
    /// Invite codes held now (at most `CodeStore::DEFAULT_CODES_MAX`).
    pub codes: u64,
}

impl Store {
    pub fn new() -> Store {
        Store::with_guard(GuardLimits::default())
    }

    /// A store with these guessing-guard limits.
    pub fn with_guard(limits: GuardLimits) -> Store {
        let mut codes = CodeStore::new();
        codes.set_issuer_codes_max(limits.codes_per_key_max);
        Store {
            codes,
            entries: PairingStore::new(),
            rate: RateLimiter::new(),
            budget: AddressBudget::with_keys_max(
                limits.wrong_per_address_max,
                limits.budget_addresses_max,
            ),
            guard: GuessGuard::new(limits),
            counters: Counters::default(),
        }
    }
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

/// A request to the pairing stores of one shard. Every payload is at most one word
/// (see `server::msg`).
///
/// Durable changes (issue 10) are applied here first and flagged `saving`; the asking
/// handler commits them to the store and then sends `EntrySaved` (acknowledged) or
/// `EntryRestore` / `CodeRestore` / `CodeRemove` (not acknowledged: undo).
pub enum Op {
    /// Store an invite code. → `CodeStored` | `InUse` | `Full`.
    CodeInsert(Box<(Code, Issuer)>),
    /// Undo a code insertion the store did not acknowledge. → `Done`.
    CodeRemove(Code),
    /// Put a code back (its redemption was not acknowledged). → `Done`.
    CodeRestore(Box<(Code, Issuer, UnixTime)>),
    /// Use an invite code. → `Redeemed` | `Throttled` (six-digit codes only: too many
    /// wrong guesses here).
    CodeRedeem(Code),
    /// Count a `pair` attempt of this client IP; if the request is well-formed (`true`:
    /// its code will be looked up), also reserve one wrong code of the client key's
    /// daily budget. → `Allowed(false)` (rate limited) | `Spent` | `Allowed(true)`.
    RateCheck(Box<(IpAddr, bool)>),
    /// The client's code was right: give its reservation back. → `Done`.
    GuessRefund(Box<IpAddr>),
    /// This shard's pairing counters. → `Counters`.
    Counters,
    /// Create a pending entry `(id, peer_id, agent_name, issuer, claim secret hash)`,
    /// flagged saving. → `Entry` | `InUse` | `Full`.
    EntryCreate(Box<(EntryId, String, String, Issuer, TokenHash)>),
    /// Approve with this device token and its hash. → `Changed` | `NotFound` | `Busy`.
    EntryApprove(Box<(EntryId, String, TokenHash)>),
    /// Reject. → `Changed` | `NotFound` | `Busy`.
    EntryReject(EntryId),
    /// Revoke. → `Changed` | `NotFound` | `Busy`.
    EntryRevoke(EntryId),
    /// The entry's device token was used: stop serving it on the claim path.
    /// → `Changed` (to save) | `Done` (nothing changed) | `Busy` | `NotFound`.
    EntryTokenUsed(EntryId),
    /// The store acknowledged the entry's change: clear `saving`. → `Done`.
    EntrySaved(EntryId),
    /// The store did not acknowledge the change: put the entry back as it was (`None`:
    /// remove it). → `Done`.
    EntryRestore(Box<(EntryId, Option<Entry>)>),
    /// One entry. → `Entry` | `NotFound`.
    EntryGet(EntryId),
    /// The shard's entries (`true`: pending only). → `Entries`.
    EntryList(bool),
    /// How many entries are pending and approved on this shard. → `StatusCounts`.
    StatusCounts,
}

/// The pairing owner's answer to an [`Op`].
pub enum Reply {
    Done,
    NotFound,
    InUse,
    Full,
    /// Another change of the entry is being saved: retry (409).
    Busy,
    /// Whether the attempt is allowed (false: rate limited).
    Allowed(bool),
    /// The issuing key holds this many live codes here, its quota.
    Quota(usize),
    /// Redemptions on this shard are paused; seconds to wait.
    Throttled(u64),
    /// The client key spent its daily budget of wrong codes; seconds to wait.
    Spent(u64),
    Counters(Box<Counters>),
    /// A code was stored; it expires then.
    CodeStored(UnixTime),
    /// The redeemed code's issuer and expiry (`None`: unknown, used or expired).
    Redeemed(Option<Box<(Issuer, UnixTime)>>),
    Entry(Box<Entry>),
    /// `(before, after)` of a transition (the entry is now flagged saving).
    Changed(Box<(Entry, Entry)>),
    Entries(Box<Vec<Entry>>),
    /// `[pending, approved]` entries.
    StatusCounts(Box<[u64; 2]>),
}

/// Applies a transition to entry `id` unless another change of it is being saved; on
/// success the entry is flagged saving and both versions are returned.
fn transition<E>(
    store: &mut Store,
    id: EntryId,
    f: impl FnOnce(&mut PairingStore) -> Result<&Entry, E>,
) -> Reply {
    let Some(before) = store.entries.get_mut(id).map(|e| e.clone()) else {
        return Reply::NotFound;
    };
    if before.saving {
        return Reply::Busy;
    }
    if f(&mut store.entries).is_err() {
        return Reply::NotFound;
    }
    match store.entries.get_mut(id) {
        Some(e) => {
            e.saving = true;
            Reply::Changed(Box::new((before, e.clone())))
        }
        None => Reply::NotFound,
    }
}

impl Op {
    /// Applies the operation to the shard's pairing stores.
    /// Applies the operation; a change to an entry (created, transitioned, saved or put
    /// back) is noted in `changes`.
    pub fn apply(self, store: &mut Store, now: UnixTime, changes: &mut ChangeLog) -> Reply {
        let entry = match &self {
            Op::EntryCreate(b) => Some(b.0.to_string()),
            Op::EntryApprove(b) => Some(b.0.to_string()),
            Op::EntryReject(id) | Op::EntryRevoke(id) | Op::EntrySaved(id) => Some(id.to_string()),
            Op::EntryRestore(b) => Some(b.0.to_string()),
            _ => None,
        };
        let reply = self.apply_inner(store, now);
        if let (true, Some(id)) = (
            matches!(reply, Reply::Entry(_) | Reply::Changed(_) | Reply::Done),
            entry,
        ) {
            changes.push(Topic::Pairing, &id);
        }
        reply
    }

    fn apply_inner(self, store: &mut Store, now: UnixTime) -> Reply {
        match self {
            Op::CodeInsert(b) => {
                let (code, issuer) = *b;
                match store.codes.insert(code, issuer, now) {
                    Ok(expires_at) => Reply::CodeStored(expires_at),
                    Err(CodeInsertError::InUse) => Reply::InUse,
                    Err(CodeInsertError::Full) => Reply::Full,
                    Err(CodeInsertError::IssuerQuota { codes_max }) => Reply::Quota(codes_max),
                }
            }
            Op::CodeRedeem(code) => {
                // Only six-digit codes go through the guard: long codes are never
                // refused or burnt because of other people's guesses.
                if code.digits6().is_some() {
                    if let Err(t) = store.guard.check(now) {
                        store.counters.refused_guard += 1;
                        return Reply::Throttled(t.retry_after_secs);
                    }
                }
                match store.codes.redeem_with_expiry(code, now) {
                    Some(found) => Reply::Redeemed(Some(Box::new(found))),
                    None => {
                        store.counters.wrong_codes += 1;
                        let burnt = store.guard.wrong_guess(code, &mut store.codes, now);
                        store.counters.codes_burnt += burnt as u64;
                        if burnt > 0 {
                            tracing::warn!(
                                burnt,
                                "invite codes burnt after wrong guesses near them"
                            );
                        }
                        Reply::Redeemed(None)
                    }
                }
            }
            Op::CodeRemove(code) => {
                store.codes.remove(code);
                Reply::Done
            }
            Op::CodeRestore(b) => {
                let (code, issuer, expires_at) = *b;
                store.codes.restore(code, issuer, expires_at);
                Reply::Done
            }
            Op::RateCheck(b) => {
                let (ip, well_formed) = *b;
                if !store.rate.check_and_count(ip, now) {
                    store.counters.refused_rate += 1;
                    return Reply::Allowed(false);
                }
                if well_formed {
                    if let Err(spent) = store.budget.reserve(ip, now) {
                        store.counters.refused_address += 1;
                        return Reply::Spent(spent.retry_after_secs);
                    }
                }
                Reply::Allowed(true)
            }
            Op::GuessRefund(ip) => {
                store.budget.refund(*ip);
                Reply::Done
            }
            Op::Counters => Reply::Counters(Box::new(Counters {
                rate_addresses: store.rate.len() as u64,
                budget_keys: store.budget.len() as u64,
                codes: store.codes.len() as u64,
                ..store.counters
            })),
            Op::EntryCreate(b) => {
                let (id, peer_id, name, issuer, claim_hash) = *b;
                match store.entries.create(id, peer_id, &name, issuer, now) {
                    Ok(_) => match store.entries.get_mut(id) {
                        Some(e) => {
                            e.claim_hash = Some(claim_hash);
                            e.saving = true;
                            Reply::Entry(Box::new(e.clone()))
                        }
                        None => Reply::NotFound,
                    },
                    Err(CreateError::IdInUse) => Reply::InUse,
                    Err(CreateError::Full) => Reply::Full,
                }
            }
            Op::EntryApprove(b) => {
                let (id, token, hash) = *b;
                let reply = transition(store, id, |entries| {
                    // The token was drawn by the requesting shard: hand exactly it over.
                    let mut rng = |_: &mut [u8]| {};
                    entries.approve(&id.to_string(), &mut rng, now)
                });
                if let Reply::Changed(_) = reply {
                    if let Some(e) = store.entries.get_mut(id) {
                        e.device_token = token;
                        e.token_hash = Some(hash);
                        e.token_claimed = false;
                        let before = match reply {
                            Reply::Changed(b) => b.0,
                            _ => return Reply::NotFound,
                        };
                        return Reply::Changed(Box::new((before, e.clone())));
                    }
                }
                reply
            }
            Op::EntryReject(id) => transition(store, id, |e| e.reject(&id.to_string(), now)),
            Op::EntryRevoke(id) => {
                let reply = transition(store, id, |e| e.revoke(&id.to_string(), now));
                if let Reply::Changed(b) = reply {
                    let (before, _) = *b;
                    match store.entries.get_mut(id) {
                        Some(e) => {
                            // A revoked entry's token is never served again.
                            e.token_claimed = true;
                            e.device_token.clear();
                            return Reply::Changed(Box::new((before, e.clone())));
                        }
                        None => return Reply::NotFound,
                    }
                }
                reply
            }
            Op::EntryTokenUsed(id) => match store.entries.get_mut(id) {
                None => Reply::NotFound,
                Some(e) if e.token_claimed || e.status != Status::Approved => Reply::Done,
                Some(e) if e.saving => Reply::Busy,
                Some(e) => {
                    let before = e.clone();
                    e.token_claimed = true;
                    e.device_token.clear();
                    e.saving = true;
                    Reply::Changed(Box::new((before, e.clone())))
                }
            },
            Op::EntrySaved(id) => {
                if let Some(e) = store.entries.get_mut(id) {
                    e.saving = false;
                }
                Reply::Done
            }
            Op::EntryRestore(b) => {
                let (id, entry) = *b;
                store.entries.restore(id, entry);
                Reply::Done
            }
            Op::EntryGet(id) => match store.entries.get_mut(id) {
                Some(e) => Reply::Entry(Box::new(e.clone())),
                None => Reply::NotFound,
            },
            Op::EntryList(pending_only) => {
                let list = if pending_only {
                    store.entries.list_pending()
                } else {
                    store.entries.list_all()
                };
                Reply::Entries(Box::new(list.into_iter().cloned().collect()))
            }
            Op::StatusCounts => {
                let mut c = [0u64; 2];
                for e in store.entries.list_all() {
                    match e.status {
                        Status::PendingApproval => c[0] += 1,
                        Status::Approved => c[1] += 1,
                        _ => {}
                    }
                }
                Reply::StatusCounts(Box::new(c))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatixia_store::{HashKind, Secrets};

    const T0: UnixTime = UnixTime(1_795_239_689_000_000_000);

    fn issuer() -> Issuer {
        Issuer {
            peer_id: "admin-1".into(),
            mesh: None,
        }
    }

    fn created(store: &mut Store, id: EntryId) -> Entry {
        let claim = Secrets::derive(b"s").token_hash(HashKind::ClaimSecret, "cs_x");
        let op = Op::EntryCreate(Box::new((
            id,
            "agent-aaaaaa".into(),
            "bot".into(),
            issuer(),
            claim,
        )));
        match op.apply(store, T0, &mut crate::shard::ChangeLog::new()) {
            Reply::Entry(e) => *e,
            _ => panic!("not created"),
        }
    }

    #[test]
    fn a_change_being_saved_holds_the_next_one_and_restore_undoes() {
        let mut s = Store::new();
        let id = EntryId::from_u32(7);
        let e = created(&mut s, id);
        assert!(e.saving && e.claim_hash.is_some());
        // Saving: the next transition waits.
        assert!(matches!(
            Op::EntryReject(id).apply(&mut s, T0, &mut crate::shard::ChangeLog::new()),
            Reply::Busy
        ));
        Op::EntrySaved(id).apply(&mut s, T0, &mut crate::shard::ChangeLog::new());
        let hash = Secrets::derive(b"s").token_hash(HashKind::DeviceToken, "dt_1");
        let op = Op::EntryApprove(Box::new((id, "dt_1".into(), hash)));
        let (before, after) = match op.apply(&mut s, T0, &mut crate::shard::ChangeLog::new()) {
            Reply::Changed(b) => *b,
            _ => panic!("not approved"),
        };
        assert_eq!(before.status, Status::PendingApproval);
        assert_eq!(after.status, Status::Approved);
        assert_eq!(
            (after.device_token.as_str(), after.token_hash),
            ("dt_1", Some(hash))
        );
        assert!(matches!(
            Op::EntryRevoke(id).apply(&mut s, T0, &mut crate::shard::ChangeLog::new()),
            Reply::Busy
        ));
        // Not acknowledged: back to pending, not flagged.
        Op::EntryRestore(Box::new((id, Some(before.clone())))).apply(
            &mut s,
            T0,
            &mut crate::shard::ChangeLog::new(),
        );
        match Op::EntryGet(id).apply(&mut s, T0, &mut crate::shard::ChangeLog::new()) {
            Reply::Entry(e) => assert_eq!(*e, before),
            _ => panic!("gone"),
        }
        // Restoring "did not exist" removes it.
        Op::EntryRestore(Box::new((id, None))).apply(
            &mut s,
            T0,
            &mut crate::shard::ChangeLog::new(),
        );
        assert!(matches!(
            Op::EntryGet(id).apply(&mut s, T0, &mut crate::shard::ChangeLog::new()),
            Reply::NotFound
        ));
    }

    #[test]
    fn token_use_ends_the_claim_path_once_and_revoke_forgets_the_token() {
        let mut s = Store::new();
        let id = EntryId::from_u32(9);
        created(&mut s, id);
        Op::EntrySaved(id).apply(&mut s, T0, &mut crate::shard::ChangeLog::new());
        let hash = Secrets::derive(b"s").token_hash(HashKind::DeviceToken, "dt_9");
        Op::EntryApprove(Box::new((id, "dt_9".into(), hash))).apply(
            &mut s,
            T0,
            &mut crate::shard::ChangeLog::new(),
        );
        // Busy while the approval is being saved.
        assert!(matches!(
            Op::EntryTokenUsed(id).apply(&mut s, T0, &mut crate::shard::ChangeLog::new()),
            Reply::Busy
        ));
        Op::EntrySaved(id).apply(&mut s, T0, &mut crate::shard::ChangeLog::new());
        match Op::EntryTokenUsed(id).apply(&mut s, T0, &mut crate::shard::ChangeLog::new()) {
            Reply::Changed(b) => {
                assert!(b.1.token_claimed && b.1.device_token.is_empty());
            }
            _ => panic!("not changed"),
        }
        Op::EntrySaved(id).apply(&mut s, T0, &mut crate::shard::ChangeLog::new());
        assert!(matches!(
            Op::EntryTokenUsed(id).apply(&mut s, T0, &mut crate::shard::ChangeLog::new()),
            Reply::Done
        ));
        match Op::EntryRevoke(id).apply(&mut s, T0, &mut crate::shard::ChangeLog::new()) {
            Reply::Changed(b) => {
                assert_eq!(b.1.status, Status::Revoked);
                assert_eq!(b.1.token_hash, Some(hash), "kept to delete its grant");
            }
            _ => panic!("not revoked"),
        }
    }

    #[test]
    fn redeemed_codes_can_be_put_back() {
        let mut s = Store::new();
        let code = Code::from_u32(42);
        let expires = match Op::CodeInsert(Box::new((code, issuer()))).apply(
            &mut s,
            T0,
            &mut crate::shard::ChangeLog::new(),
        ) {
            Reply::CodeStored(t) => t,
            _ => panic!("not stored"),
        };
        let (who, at) =
            match Op::CodeRedeem(code).apply(&mut s, T0, &mut crate::shard::ChangeLog::new()) {
                Reply::Redeemed(Some(b)) => *b,
                _ => panic!("not redeemed"),
            };
        assert_eq!((who.clone(), at), (issuer(), expires));
        assert!(matches!(
            Op::CodeRedeem(code).apply(&mut s, T0, &mut crate::shard::ChangeLog::new()),
            Reply::Redeemed(None)
        ));
        Op::CodeRestore(Box::new((code, who, at))).apply(
            &mut s,
            T0,
            &mut crate::shard::ChangeLog::new(),
        );
        assert!(matches!(
            Op::CodeRedeem(code).apply(&mut s, T0, &mut crate::shard::ChangeLog::new()),
            Reply::Redeemed(Some(_))
        ));
        Op::CodeInsert(Box::new((code, issuer()))).apply(
            &mut s,
            T0,
            &mut crate::shard::ChangeLog::new(),
        );
        Op::CodeRemove(code).apply(&mut s, T0, &mut crate::shard::ChangeLog::new());
        assert!(matches!(
            Op::CodeRedeem(code).apply(&mut s, T0, &mut crate::shard::ChangeLog::new()),
            Reply::Redeemed(None)
        ));
    }
}
