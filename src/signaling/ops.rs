//! Signaling's typed operations: what another shard asks or tells the owner of a peer
//! (`shard_of(peer_id)`) or of a client IP's connection count (`shard_of(ip string)`),
//! and the reply. [`Op::apply`] is the whole owner side. (Handing a connection to its
//! owner is not an operation on the store: see `Msg::Adopt`.)

use std::net::IpAddr;

use crate::auth::ApiKeys;
use crate::signaling::{ConnTable, PeerAuthz};
use crate::time::UnixTime;
use crate::ws::codec::close_code;

/// A frame relayed to a peer owned by the receiving shard.
pub struct Relay {
    pub target: Box<str>,
    /// The sender's mesh: the target must be in the same one.
    pub mesh: Option<Box<str>>,
    pub frame: Box<[u8]>,
}

/// A request (or a tell) to the signaling side of one shard. One-word payloads (see
/// `server::msg`).
pub enum Op {
    /// Deliver a relayed frame to a peer of this shard. Tell.
    Relay(Box<Relay>),
    /// This shard's connected authorized peers of a mesh, but one: `(mesh, exclude)`.
    /// → `Peers`.
    PeerList(Box<(Option<Box<str>>, Box<str>)>),
    /// Admit one more connection from this client IP. → `Allowed` (false: over the
    /// per-IP limit).
    IpAcquire(Box<IpAddr>),
    /// A connection of this client IP closed. Tell.
    IpRelease(Box<IpAddr>),
    /// One more approved pairing entry for this peer id `(peer_id, mesh)`; a live
    /// connection of that peer is authorized at once. → `Done` | `Full`.
    PeerAuthorize(Box<(String, Option<String>)>),
    /// One approved entry of this peer id was revoked; when it was the last, its live
    /// connection is closed (4001). → `Done`.
    PeerDeauthorize(Box<String>),
}

/// The signaling owner's answer to an [`Op`] that asks.
pub enum Reply {
    Done,
    Full,
    Allowed(bool),
    Peers(Box<Vec<Box<str>>>),
}

/// What an [`Op`] applies to: this shard's signaling state (the connection table holds
/// its limits) and the API keys (their peers are authorized by their key).
pub struct Store<'a> {
    pub conns: &'a ConnTable,
    pub authz: &'a mut PeerAuthz,
    pub api_keys: &'a ApiKeys,
}

impl Op {
    /// Applies the operation; `None` for a tell.
    pub fn apply(self, store: Store<'_>, now: UnixTime) -> Option<Reply> {
        let Store {
            conns,
            authz,
            api_keys,
        } = store;
        match self {
            Op::Relay(r) => {
                conns.deliver(&r.target, r.mesh.as_deref(), r.frame);
                None
            }
            Op::PeerList(b) => {
                let (mesh, exclude) = *b;
                Some(Reply::Peers(Box::new(
                    conns.list(mesh.as_deref(), &exclude),
                )))
            }
            Op::IpAcquire(ip) => Some(Reply::Allowed(conns.ip_acquire(*ip))),
            Op::IpRelease(ip) => {
                conns.ip_release(*ip);
                None
            }
            Op::PeerAuthorize(b) => {
                let (peer, mesh) = *b;
                if !authz.add(&peer, mesh.as_deref()) {
                    return Some(Reply::Full);
                }
                // A live connection of that peer (on this shard too) is authorized now.
                if !api_keys.has_peer_id(&peer) {
                    conns.set_authorized(&peer, mesh.as_deref());
                }
                Some(Reply::Done)
            }
            Op::PeerDeauthorize(peer) => {
                if authz.remove(&peer, now) {
                    // Its live signaling connections are on this shard too: close them.
                    conns.close_peer(&peer, close_code::REVOKED, "pairing revoked");
                }
                Some(Reply::Done)
            }
        }
    }
}
