//! Pairing's typed operations: what another shard asks the owner of a code
//! (`shard_of(code)`), an entry (`shard_of(entry id)`) or a client IP's rate-limit bucket
//! (`shard_of(ip string)`), and the reply. [`Op::apply`] is the whole owner side.

use std::net::IpAddr;

use crate::pairing::{
    Code, CodeInsertError, CodeStore, CreateError, Entry, EntryId, Issuer, PairingStore,
    RateLimiter,
};
use crate::pairing::guard::{GuardLimits, GuessGuard};
use crate::time::UnixTime;

/// The pairing state one shard owns.
pub struct Store {
    pub codes: CodeStore,
    pub entries: PairingStore,
    pub rate: RateLimiter,
    /// Guessing defence across addresses (global wrong-guess rate, burnt buckets).
    pub guard: GuessGuard,
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
            guard: GuessGuard::new(limits),
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
pub enum Op {
    /// Store an invite code. → `Done` | `InUse` | `Full`.
    CodeInsert(Box<(Code, Issuer)>),
    /// Use an invite code. → `Issuer` | `Throttled` (too many wrong guesses here).
    CodeRedeem(Code),
    /// Count a `pair` attempt of this client IP. → `Allowed`.
    RateCheck(Box<IpAddr>),
    /// Create a pending entry `(id, peer_id, agent_name, issuer)`.
    /// → `Entry` | `InUse` | `Full`.
    EntryCreate(Box<(EntryId, String, String, Issuer)>),
    /// Approve with this pre-drawn device token randomness. → `Entry` | `NotFound`.
    EntryApprove(Box<(EntryId, [u8; 16])>),
    /// Reject. → `Entry` | `NotFound`.
    EntryReject(EntryId),
    /// Undo an approval whose token could not be activated (back to pending).
    /// → `Entry` | `NotFound`.
    EntryWithdraw(EntryId),
    /// Revoke. → `Entry` | `NotFound`.
    EntryRevoke(EntryId),
    /// The shard's entries (`true`: pending only). → `Entries`.
    EntryList(bool),
}

/// The pairing owner's answer to an [`Op`].
pub enum Reply {
    Done,
    NotFound,
    InUse,
    Full,
    /// Whether the attempt is allowed (false: rate limited).
    Allowed(bool),
    /// The issuing key holds this many live codes here, its quota.
    Quota(usize),
    /// Redemptions on this shard are paused; seconds to wait.
    Throttled(u64),
    Issuer(Option<Box<Issuer>>),
    Entry(Box<Entry>),
    Entries(Box<Vec<Entry>>),
}

fn entry_or_not_found<E>(r: Result<&Entry, E>) -> Reply {
    match r {
        Ok(e) => Reply::Entry(Box::new(e.clone())),
        Err(_) => Reply::NotFound,
    }
}

impl Op {
    /// Applies the operation to the shard's pairing stores.
    pub fn apply(self, store: &mut Store, now: UnixTime) -> Reply {
        match self {
            Op::CodeInsert(b) => {
                let (code, issuer) = *b;
                match store.codes.insert(code, issuer, now) {
                    Ok(_) => Reply::Done,
                    Err(CodeInsertError::InUse) => Reply::InUse,
                    Err(CodeInsertError::Full) => Reply::Full,
                    Err(CodeInsertError::IssuerQuota { codes_max }) => Reply::Quota(codes_max),
                }
            }
            Op::CodeRedeem(code) => {
                if let Err(t) = store.guard.check(now) {
                    return Reply::Throttled(t.retry_after_secs);
                }
                match store.codes.redeem(code, now) {
                    Some(issuer) => Reply::Issuer(Some(Box::new(issuer))),
                    None => {
                        let burnt = store.guard.wrong_guess(code, &mut store.codes, now);
                        if burnt > 0 {
                            tracing::warn!(burnt, "invite codes burnt after wrong guesses near them");
                        }
                        Reply::Issuer(None)
                    }
                }
            }
            Op::RateCheck(ip) => Reply::Allowed(store.rate.check_and_count(*ip, now)),
            Op::EntryCreate(b) => {
                let (id, peer_id, name, issuer) = *b;
                match store.entries.create(id, peer_id, &name, issuer, now) {
                    Ok(e) => Reply::Entry(Box::new(e.clone())),
                    Err(CreateError::IdInUse) => Reply::InUse,
                    Err(CreateError::Full) => Reply::Full,
                }
            }
            Op::EntryApprove(b) => {
                let (id, bytes) = *b;
                // The token's randomness was drawn by the requesting shard; hand exactly
                // it to the store.
                let mut rng = |buf: &mut [u8]| {
                    let n = buf.len().min(bytes.len());
                    buf[..n].copy_from_slice(&bytes[..n]);
                };
                entry_or_not_found(store.entries.approve(&id.to_string(), &mut rng, now))
            }
            Op::EntryReject(id) => entry_or_not_found(store.entries.reject(&id.to_string(), now)),
            Op::EntryWithdraw(id) => {
                entry_or_not_found(store.entries.withdraw_approval(&id.to_string(), now))
            }
            Op::EntryRevoke(id) => entry_or_not_found(store.entries.revoke(&id.to_string(), now)),
            Op::EntryList(pending_only) => {
                let list = if pending_only {
                    store.entries.list_pending()
                } else {
                    store.entries.list_all()
                };
                Reply::Entries(Box::new(list.into_iter().cloned().collect()))
            }
        }
    }
}
