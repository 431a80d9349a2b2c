//! Auth's typed operations: the device-token index, on `shard_of(token)` (pairing writes
//! it on approve and revoke; `POST /api/token` reads it), and the failure ledger of the
//! client addresses a shard owns (`auth::budget`). [`Op::apply`] is the owner side.

use std::net::IpAddr;

use super::failures::{FailureLedger, Verdict};
use super::tokens::{DeviceGrant, DeviceTokenIndex, IndexInsertError};
use crate::time::UnixTime;

/// A request to the device-token index of one shard (one-word payloads, see
/// `server::msg`).
pub enum Op {
    /// What this device token grants. → `Grant`.
    Lookup(Box<String>),
    /// Index an approved entry's token. → `Done` | `InUse` | `Full`.
    Insert(Box<(String, DeviceGrant)>),
    /// Drop a token whose approval was undone. → `Done` | `NotFound`.
    Remove(Box<String>),
    /// Drop a revoked token and refuse it from now on, whatever the cluster's token
    /// hash still says (`DeviceTokenIndex::revoke`). → `Done` | `NotFound`.
    Revoke(Box<String>),
    /// May this client address try a secret now? → `Failures`.
    FailureCheck(Box<IpAddr>),
    /// This client address presented a wrong secret (told). → `Failures`.
    FailureRecord(Box<IpAddr>),
}

/// The index owner's answer to an [`Op`].
pub enum Reply {
    Done,
    NotFound,
    InUse,
    Full,
    Grant(Option<Box<DeviceGrant>>),
    /// A `Lookup` of a token revoked here: refused, not looked for elsewhere.
    Revoked,
    /// The address's standing after a `FailureCheck` or `FailureRecord`.
    Failures(Box<Verdict>),
}

/// The state auth's operations apply to, on the owner shard.
pub struct Store<'a> {
    pub tokens: &'a mut DeviceTokenIndex,
    pub failures: &'a mut FailureLedger,
}

impl Op {
    /// Applies the operation to the shard's device-token index or failure ledger.
    pub fn apply(self, store: Store<'_>, now: UnixTime) -> Reply {
        let tokens = store.tokens;
        match self {
            Op::Lookup(t) if tokens.is_revoked(&t) => Reply::Revoked,
            Op::Lookup(t) => Reply::Grant(tokens.lookup(&t).cloned().map(Box::new)),
            Op::Insert(b) => {
                let (token, grant) = *b;
                match tokens.insert(token, grant) {
                    Ok(()) => Reply::Done,
                    Err(IndexInsertError::InUse) => Reply::InUse,
                    Err(IndexInsertError::Full) => Reply::Full,
                }
            }
            Op::Remove(t) => match tokens.remove(&t) {
                Some(_) => Reply::Done,
                None => Reply::NotFound,
            },
            Op::Revoke(t) => match tokens.revoke(&t) {
                Some(_) => Reply::Done,
                None => Reply::NotFound,
            },
            Op::FailureCheck(a) => Reply::Failures(Box::new(store.failures.check(*a, now))),
            Op::FailureRecord(a) => Reply::Failures(Box::new(store.failures.fail(*a, now))),
        }
    }
}
