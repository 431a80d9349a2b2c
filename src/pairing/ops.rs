//! Pairing's typed operations: what another shard asks the owner of a code
//! (`shard_of(code)`), an entry (`shard_of(entry id)`) or a client IP's rate-limit bucket
//! (`shard_of(ip string)`), and the reply. [`Op::apply`] is the whole owner side.

use std::net::IpAddr;

use chatixia_store::TokenHash;

use crate::pairing::{
    Code, CodeInsertError, CodeStore, CreateError, Entry, EntryId, Issuer, PairingStore,
    RateLimiter, Status,
};
use crate::time::UnixTime;

/// The pairing state one shard owns.
pub struct Store {
    pub codes: CodeStore,
    pub entries: PairingStore,
    pub rate: RateLimiter,
}

impl Store {
    pub fn new() -> Store {
        Store {
            codes: CodeStore::new(),
            entries: PairingStore::new(),
            rate: RateLimiter::new(),
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
    /// Use an invite code. → `Redeemed`.
    CodeRedeem(Code),
    /// Count a `pair` attempt of this client IP. → `Allowed`.
    RateCheck(Box<IpAddr>),
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
    /// A code was stored; it expires then.
    CodeStored(UnixTime),
    /// The redeemed code's issuer and expiry (`None`: unknown, used or expired).
    Redeemed(Option<Box<(Issuer, UnixTime)>>),
    Entry(Box<Entry>),
    /// `(before, after)` of a transition (the entry is now flagged saving).
    Changed(Box<(Entry, Entry)>),
    Entries(Box<Vec<Entry>>),
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
    pub fn apply(self, store: &mut Store, now: UnixTime) -> Reply {
        match self {
            Op::CodeInsert(b) => {
                let (code, issuer) = *b;
                match store.codes.insert(code, issuer, now) {
                    Ok(expires_at) => Reply::CodeStored(expires_at),
                    Err(CodeInsertError::InUse) => Reply::InUse,
                    Err(CodeInsertError::Full) => Reply::Full,
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
            Op::CodeRedeem(code) => {
                Reply::Redeemed(store.codes.redeem_with_expiry(code, now).map(Box::new))
            }
            Op::RateCheck(ip) => Reply::Allowed(store.rate.check_and_count(*ip, now)),
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
        }
    }
}
