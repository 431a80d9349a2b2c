//! The device-token index: what an approved pairing entry's device token grants, on the
//! shard that owns the token (`shard_of(token key)`). Pairing writes it (approve inserts,
//! revoke removes, both through [`super::ops::Op`]); `POST /api/token` reads it.
//!
//! A token is indexed by its key ([`token_key`]): the hex of its keyed hash, what the
//! durable store keeps, so the clear token is never needed after approval.

use std::collections::{HashMap, HashSet, VecDeque};

use chatixia_store::{DeviceTokenRecord, HashKind, Secrets, TokenHash};

/// What a device token grants. In a cluster the same, as JSON, is the token's entry in
/// Redis ([`cluster_tokens_key`], [`grant_value`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceGrant {
    /// Peer id of the approved entry.
    pub peer_id: String,
    /// Always [`super::DEVICE_TOKEN_ROLE`] (`agent`).
    pub role: String,
    /// Mesh of the entry (`None` = default).
    pub mesh: Option<String>,
    /// The numeric id of the pairing entry it came from (pairing's `EntryId`; opaque
    /// here: `POST /api/token` hands it back so pairing can end the claim path).
    pub entry_id: u32,
}

/// Why a device token could not be indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexInsertError {
    /// The token is already indexed (128 random bits: practically never).
    InUse,
    /// The index holds `tokens_max` tokens.
    Full,
}

/// Device token key → grant, for the tokens one shard owns. Holds only approved,
/// unrevoked tokens: insert on approve, remove on revoke.
///
/// In a cluster it also remembers the keys of tokens revoked here ([`revoke`]), so that
/// a lookup refuses them without asking Redis: while Redis has not taken the revocation
/// (unreachable, refusing, or its reply lost) the cluster's token hash still holds the
/// token, and `POST /api/token` falls back to that hash for tokens it does not hold.
///
/// [`revoke`]: Self::revoke
#[derive(Debug, Clone)]
pub struct DeviceTokenIndex {
    tokens: HashMap<String, DeviceGrant>,
    tokens_max: usize,
    /// Keys of tokens revoked here, oldest first in `revoked_order`.
    revoked: HashSet<String>,
    revoked_order: VecDeque<String>,
}

/// Revoked token keys a shard remembers ([`DeviceTokenIndex::revoke`]): about 200 bytes
/// each (the 64-hex-digit key twice), so at most ~3 MiB per shard. The memory is only
/// needed while the cluster's records of a revocation wait for Redis (seconds, or until
/// Redis is back), but every revocation in a cluster is remembered, taken or not. When
/// full, the oldest key is forgotten: a lookup of that token asks the cluster's hash
/// again, which no longer holds it unless its removal still waits after 16,384 later
/// revocations of tokens of this shard.
pub const REVOKED_KEYS_MAX: usize = 16_384;

impl Default for DeviceTokenIndex {
    fn default() -> Self {
        DeviceTokenIndex::new()
    }
}

impl DeviceTokenIndex {
    /// Default for `tokens_max`.
    pub const DEFAULT_TOKENS_MAX: usize = 100_000;

    /// An empty index holding at most
    /// [`DEFAULT_TOKENS_MAX`](Self::DEFAULT_TOKENS_MAX) tokens.
    pub fn new() -> DeviceTokenIndex {
        DeviceTokenIndex::with_limit(Self::DEFAULT_TOKENS_MAX)
    }

    /// An empty index holding at most `tokens_max` tokens.
    ///
    /// Tokens come only from approvals, which the pairing stores' `entries_max` already
    /// bound, so this is a backstop: set it at least as large as the entries one shard's
    /// share of tokens can come from. When full, [`insert`](Self::insert) fails with
    /// [`IndexInsertError::Full`] and the approval that wanted it is undone (503).
    pub fn with_limit(tokens_max: usize) -> DeviceTokenIndex {
        DeviceTokenIndex {
            tokens: HashMap::new(),
            tokens_max,
            revoked: HashSet::new(),
            revoked_order: VecDeque::new(),
        }
    }

    /// Index `token`.
    pub fn insert(&mut self, token: String, grant: DeviceGrant) -> Result<(), IndexInsertError> {
        if self.tokens.contains_key(&token) {
            return Err(IndexInsertError::InUse);
        }
        if self.tokens.len() >= self.tokens_max {
            return Err(IndexInsertError::Full);
        }
        // Approved (again) here: no longer refused as revoked.
        if self.revoked.remove(&token) {
            self.revoked_order.retain(|k| *k != token);
        }
        self.tokens.insert(token, grant);
        Ok(())
    }

    /// Drop `token` (an approval undone); returns what it granted.
    pub fn remove(&mut self, token: &str) -> Option<DeviceGrant> {
        self.tokens.remove(token)
    }

    /// Drop `token` and remember it as revoked here (in a cluster: [`is_revoked`] until
    /// [`REVOKED_KEYS_MAX`] later revocations push it out); returns what it granted.
    ///
    /// [`is_revoked`]: Self::is_revoked
    pub fn revoke(&mut self, token: &str) -> Option<DeviceGrant> {
        if !self.revoked.contains(token) {
            if self.revoked_order.len() >= REVOKED_KEYS_MAX {
                if let Some(old) = self.revoked_order.pop_front() {
                    self.revoked.remove(&old);
                }
            }
            self.revoked.insert(token.to_owned());
            self.revoked_order.push_back(token.to_owned());
        }
        self.tokens.remove(token)
    }

    /// Whether `token` was revoked here (and is remembered, see [`revoke`]).
    ///
    /// [`revoke`]: Self::revoke
    pub fn is_revoked(&self, token: &str) -> bool {
        self.revoked.contains(token)
    }

    /// What `token` grants, if it is indexed.
    pub fn lookup(&self, token: &str) -> Option<&DeviceGrant> {
        self.tokens.get(token)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether no token is indexed.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The configured limit.
    pub fn tokens_max(&self) -> usize {
        self.tokens_max
    }
}

/// The key of a device token in the index (and the routing key of its owner shard): the
/// hex of its keyed hash.
pub fn token_key(hash: &TokenHash) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(hash.0.len() * 2);
    for &b in &hash.0 {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// The index key of a device token presented by a client.
pub fn token_key_of(secrets: &Secrets, token: &str) -> String {
    token_key(&secrets.token_hash(HashKind::DeviceToken, token))
}

/// In a cluster (`--cluster`, issue 25): the hash of every approved device token of
/// every node, `{prefix}tokens`, its key ([`token_key`], the keyed hash: never the token)
/// → its grant as JSON ([`grant_value`]). Written by the approving node before its
/// `2xx` (`pairing::cluster`), read by `POST /api/token` at a node whose own index does
/// not hold the token.
pub fn cluster_tokens_key(prefix: &str) -> Vec<u8> {
    [prefix.as_bytes(), b"tokens"].concat()
}

/// A grant as the cluster's token hash keeps it (JSON).
pub fn grant_value(g: &DeviceGrant) -> Vec<u8> {
    serde_json::to_vec(g).unwrap_or_default()
}

/// The grant of a value of the cluster's token hash (`None`: not one of ours).
pub fn grant_of_value(v: &[u8]) -> Option<DeviceGrant> {
    serde_json::from_slice(v).ok()
}

/// The durable record of an indexed token.
pub fn token_record(hash: TokenHash, g: &DeviceGrant) -> DeviceTokenRecord {
    DeviceTokenRecord {
        hash,
        peer_id: g.peer_id.clone(),
        role: g.role.clone(),
        mesh: g.mesh.clone(),
        entry_id: g.entry_id,
    }
}

/// The grant of a loaded record.
pub fn grant_of(r: DeviceTokenRecord) -> DeviceGrant {
    DeviceGrant {
        peer_id: r.peer_id,
        role: r.role,
        mesh: r.mesh,
        entry_id: r.entry_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> DeviceGrant {
        DeviceGrant {
            peer_id: "agent-a1b2c3".into(),
            role: super::super::DEVICE_TOKEN_ROLE.into(),
            mesh: Some("blue".into()),
            entry_id: 0x0bad_c0de,
        }
    }

    #[test]
    fn a_revoked_token_is_refused_until_later_revocations_push_it_out() {
        let mut idx = DeviceTokenIndex::new();
        idx.insert("k0".into(), grant()).unwrap();
        assert_eq!(idx.revoke("k0"), Some(grant()));
        assert!(idx.is_revoked("k0") && idx.lookup("k0").is_none());
        // A key never indexed here (another node's token) is remembered as well.
        assert_eq!(idx.revoke("elsewhere"), None);
        assert!(idx.is_revoked("elsewhere"));
        // Revoking again does not take a second place.
        idx.revoke("k0");
        for i in 1..REVOKED_KEYS_MAX - 1 {
            idx.revoke(&format!("k{i}"));
        }
        assert!(idx.is_revoked("k0"), "{REVOKED_KEYS_MAX} remembered");
        idx.revoke("one-more");
        assert!(!idx.is_revoked("k0"), "the oldest goes first");
        assert!(idx.is_revoked("elsewhere") && idx.is_revoked("one-more"));
        assert_eq!(idx.revoked.len(), REVOKED_KEYS_MAX);
        assert_eq!(idx.revoked_order.len(), REVOKED_KEYS_MAX);
        // Approved again (an entry restored): no longer refused.
        idx.insert("one-more".into(), grant()).unwrap();
        assert!(!idx.is_revoked("one-more"));
        assert_eq!(idx.lookup("one-more"), Some(&grant()));
        assert_eq!(idx.revoked.len(), idx.revoked_order.len());
    }

    #[test]
    fn insert_lookup_remove_and_the_limit() {
        let mut idx = DeviceTokenIndex::with_limit(1);
        assert_eq!(idx.tokens_max(), 1);
        idx.insert("k1".into(), grant()).unwrap();
        assert_eq!(idx.lookup("k1"), Some(&grant()));
        assert_eq!(idx.lookup("k2"), None);
        assert_eq!(idx.lookup(""), None);
        assert_eq!(
            idx.insert("k1".into(), grant()),
            Err(IndexInsertError::InUse)
        );
        assert_eq!(
            idx.insert("k2".into(), grant()),
            Err(IndexInsertError::Full)
        );
        assert_eq!(idx.remove("k1"), Some(grant()));
        assert_eq!(idx.lookup("k1"), None);
        assert!(idx.is_empty());
        assert_eq!(idx.remove("k1"), None);
    }

    #[test]
    fn keys_are_the_hash_hex_and_records_round_trip() {
        let secrets = Secrets::derive(b"s");
        let hash = secrets.token_hash(HashKind::DeviceToken, "dt_0123");
        let key = token_key_of(&secrets, "dt_0123");
        assert_eq!(key, token_key(&hash));
        assert_eq!(key.len(), hash.0.len() * 2);
        assert!(key
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(key, token_key_of(&secrets, "dt_0124"));
        assert_eq!(grant_of_value(&grant_value(&grant())), Some(grant()));
        assert_eq!(grant_of_value(b"{}"), None);
        let r = token_record(hash, &grant());
        assert_eq!(r.entry_id, 0x0bad_c0de);
        assert_eq!(grant_of(r), grant());
    }
}
