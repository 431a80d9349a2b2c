//! Auth's typed operations: the device-token index, on `shard_of(token)`. Pairing writes
//! it (approve, revoke); `POST /api/token` reads it. [`Op::apply`] is the owner side.

use crate::pairing::{DeviceGrant, DeviceTokenIndex, IndexInsertError};

/// A request to the device-token index of one shard (one-word payloads, see
/// `server::msg`).
pub enum Op {
    /// What this device token grants. → `Grant`.
    Lookup(Box<String>),
    /// Index an approved entry's token. → `Done` | `InUse` | `Full`.
    Insert(Box<(String, DeviceGrant)>),
    /// Drop a revoked token. → `Done` | `NotFound`.
    Remove(Box<String>),
}

/// The index owner's answer to an [`Op`].
pub enum Reply {
    Done,
    NotFound,
    InUse,
    Full,
    Grant(Option<Box<DeviceGrant>>),
}

impl Op {
    /// Applies the operation to the shard's device-token index.
    pub fn apply(self, tokens: &mut DeviceTokenIndex) -> Reply {
        match self {
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
        }
    }
}
