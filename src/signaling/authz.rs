//! Which peer ids may signal: the peers of approved pairing entries, for the peer ids
//! this shard owns (`shard_of(peer_id)`, the shard that also runs their signaling
//! connections), and the recently revoked ones. Sans-IO. (The peers of API keys are known
//! to every shard from its copy of the keys.)

use std::collections::HashMap;
use std::time::Duration;

use crate::time::UnixTime;

/// Peer ids authorized by an approved pairing entry, for the peer ids this shard owns,
/// with a count (peer ids are 24-bit random and may repeat across entries; revoking one
/// entry must not deauthorize another with the same peer id) and the mesh the entry
/// inherited from its inviter. Also remembers recently revoked peer ids, so that a JWT
/// issued before the revocation no longer opens `/ws`.
#[derive(Default)]
pub struct PeerAuthz {
    peers: HashMap<String, (u32, Option<Box<str>>)>,
    revoked: HashMap<String, UnixTime>,
}

/// How long a revocation is remembered: past this, every JWT issued before it has
/// expired (300 s lifetime + the largest `--jwt-leeway-secs`, 60 s), so the record is
/// no longer needed.
pub const REVOCATION_MEMORY: Duration = Duration::from_secs(360);

impl PeerAuthz {
    /// Most peer ids one shard tracks: approvals are bounded by the pairing stores'
    /// `entries_max` over all shards, so this is a backstop.
    pub const PEERS_MAX: usize = 100_000;
    /// Most revocations remembered at once; past it the oldest are forgotten early
    /// (their JWTs then still expire within 6 minutes).
    pub const REVOKED_MAX: usize = 100_000;

    pub fn add(&mut self, peer: &str, mesh: Option<&str>) -> bool {
        if let Some((n, _)) = self.peers.get_mut(peer) {
            *n = n.saturating_add(1);
            return true;
        }
        if self.peers.len() >= Self::PEERS_MAX {
            return false;
        }
        self.revoked.remove(peer);
        self.peers
            .insert(peer.to_owned(), (1, mesh.map(Into::into)));
        true
    }

    /// One approval of `peer` was revoked; returns true when none is left.
    pub fn remove(&mut self, peer: &str, now: UnixTime) -> bool {
        let Some((n, _)) = self.peers.get_mut(peer) else {
            return false;
        };
        *n -= 1;
        if *n > 0 {
            return false;
        }
        self.peers.remove(peer);
        if self.revoked.len() >= Self::REVOKED_MAX {
            if let Some(oldest) = self
                .revoked
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| k.clone())
            {
                self.revoked.remove(&oldest);
            }
        }
        self.revoked.insert(peer.to_owned(), now);
        true
    }

    pub fn contains(&self, peer: &str) -> bool {
        self.peers.contains_key(peer)
    }

    /// The mesh of an authorized peer (`Some(None)`: the default mesh).
    pub fn mesh(&self, peer: &str) -> Option<Option<&str>> {
        self.peers.get(peer).map(|(_, m)| m.as_deref())
    }

    /// Whether `peer` lost its last approval recently (and has none now).
    pub fn is_revoked(&self, peer: &str) -> bool {
        self.revoked.contains_key(peer)
    }

    /// Remembers a revocation loaded from the store at start-up (an approval loaded
    /// afterwards clears it, as [`add`](Self::add) does).
    pub fn restore_revoked(&mut self, peer: &str, at: UnixTime) {
        if !self.peers.contains_key(peer) && self.revoked.len() < Self::REVOKED_MAX {
            self.revoked.insert(peer.to_owned(), at);
        }
    }

    /// Forgets revocations older than [`REVOCATION_MEMORY`].
    pub fn sweep(&mut self, now: UnixTime) {
        let keep_after = now.saturating_sub(REVOCATION_MEMORY);
        self.revoked.retain(|_, t| *t > keep_after);
    }
}

/// In a cluster (`--cluster`, issue 25): the hash of the peers approved at any node,
/// `{prefix}authz`, peer id → JSON `{"e":[entry ids],"m":mesh}` (`m` absent: the default
/// mesh; the first approval's mesh stays, as [`PeerAuthz::add`] keeps it). Written by the
/// approving node before its `2xx` and removed entry by entry at revocation
/// (`pairing::cluster`); read when a peer that neither an API key nor an approval held
/// at the node authorizes connects there ([`cluster_mesh`]).
pub fn cluster_authz_key(prefix: &str) -> Vec<u8> {
    [prefix.as_bytes(), b"authz"].concat()
}

/// A value of the cluster's approvals hash.
#[derive(serde::Deserialize)]
struct ClusterApproval {
    /// The approving entries (at least one while the value exists).
    #[serde(default)]
    e: Vec<String>,
    /// The mesh (absent: the default mesh).
    #[serde(default)]
    m: Option<String>,
}

/// The mesh an approval in the cluster gives its peer (`Some(None)`: the default mesh),
/// from a value of the approvals hash; `None`: no entry holds it (or not one of ours).
pub fn cluster_mesh(v: &[u8]) -> Option<Option<String>> {
    let a: ClusterApproval = serde_json::from_slice(v).ok()?;
    (!a.e.is_empty()).then_some(a.m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> UnixTime {
        UnixTime::from_secs(secs)
    }

    #[test]
    fn approvals_are_counted_per_peer_id() {
        let mut a = PeerAuthz::default();
        assert!(a.add("p", Some("blue")));
        assert!(a.add("p", None), "a second entry with the same peer id");
        assert_eq!(
            a.mesh("p"),
            Some(Some("blue")),
            "the first approval's mesh stays"
        );
        assert!(!a.remove("p", t(10)), "one approval is left");
        assert!(a.contains("p"));
        assert!(!a.is_revoked("p"));
        assert!(a.remove("p", t(11)), "the last one");
        assert!(!a.contains("p"));
        assert_eq!(a.mesh("p"), None);
        assert!(a.is_revoked("p"));
        assert!(!a.remove("p", t(12)), "nothing left to remove");
        assert!(!a.remove("never", t(12)));
        assert!(!a.is_revoked("never"));
    }

    #[test]
    fn default_mesh_and_reapproval() {
        let mut a = PeerAuthz::default();
        a.add("p", None);
        assert_eq!(a.mesh("p"), Some(None));
        a.remove("p", t(0));
        assert!(a.is_revoked("p"));
        // Approved again: no longer revoked.
        a.add("p", Some("red"));
        assert!(!a.is_revoked("p"));
        assert_eq!(a.mesh("p"), Some(Some("red")));
    }

    #[test]
    fn cluster_approvals_name_their_mesh() {
        assert_eq!(
            cluster_mesh(br#"{"e":["0a0b0c0d"],"m":"blue"}"#),
            Some(Some("blue".into()))
        );
        assert_eq!(cluster_mesh(br#"{"e":["0a0b0c0d"]}"#), Some(None));
        assert_eq!(
            cluster_mesh(br#"{"e":{},"m":"x"}"#),
            None,
            "Lua's empty table"
        );
        assert_eq!(cluster_mesh(br#"{"m":"x"}"#), None);
        assert_eq!(cluster_mesh(b"\xff"), None);
        assert_eq!(cluster_authz_key("chx:"), b"chx:authz".to_vec());
    }

    #[test]
    fn revocations_are_forgotten_after_the_jwt_lifetime() {
        let mut a = PeerAuthz::default();
        a.add("p", None);
        a.remove("p", t(1000));
        let memory = REVOCATION_MEMORY.as_secs();
        a.sweep(t(1000 + memory - 1));
        assert!(a.is_revoked("p"), "still inside the memory");
        a.sweep(t(1000 + memory));
        assert!(!a.is_revoked("p"));
    }

    #[test]
    fn tables_are_bounded() {
        let mut a = PeerAuthz::default();
        for i in 0..PeerAuthz::PEERS_MAX {
            assert!(a.add(&format!("p{i}"), None));
        }
        assert!(!a.add("one-more", None), "full");
        assert!(a.add("p0", None), "a known peer still counts up");
        // Revocations: past REVOKED_MAX the oldest is forgotten first.
        let mut r = PeerAuthz::default();
        for i in 0..=PeerAuthz::REVOKED_MAX {
            r.add(&format!("r{i}"), None);
            r.remove(&format!("r{i}"), t(i as u64));
        }
        assert!(!r.is_revoked("r0"), "the oldest went first");
        assert!(r.is_revoked("r1"));
        assert!(r.is_revoked(&format!("r{}", PeerAuthz::REVOKED_MAX)));
    }
}
