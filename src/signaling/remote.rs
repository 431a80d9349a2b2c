//! Signaling across the nodes of a cluster (`--cluster`, issue 25; docs/ARCHITECTURE.md,
//! "Cluster"). A peer is connected to one node; the others learn where through a
//! directory in Redis, and reach it through that node's channel.
//!
//! * **The directory**: one Redis hash per mesh (`{prefix}m:{mesh}`, `{prefix}nomesh`)
//!   mapping each authorized connected peer to its node, and per node the set of mesh
//!   hashes it wrote to (`{prefix}nm:{node}`), so that a node's entries can be removed
//!   when its lease runs out ([`CLEANUP`]). A shard notes its joins and leaves in its
//!   connection table's outbox ([`super::outbox`]); its directory task ([`run`]) sends
//!   them as scripts. A leave removes the entry only while it still names this node: a
//!   peer that reconnected elsewhere is not removed by its old node's late goodbye.
//!   A join that finds the peer at another node tells that node to close the older
//!   connection (4000), as within one node.
//! * **Peer lists**: `register` lists the peers of this node (its shards), then those
//!   of the other live nodes from the mesh's hash: one script ([`PEERS`]).
//! * **Relays**: a relay to a peer no shard of this node holds goes out as one script
//!   ([`RELAY`]) that looks the target up and publishes the frame to its node's channel
//!   (`SPUBLISH`): one Redis command per relayed message, none within a node. The target
//!   node's owner shard of the peer delivers it ([`on_message`]).
//! * **Faults**: while the link is down relays to other nodes are dropped (counted as
//!   refused) and peer lists hold this node's peers only; when it is back (a new
//!   generation) the link has cleared this node's stale entries ([`CLEANUP`] on connect)
//!   and every shard asserts its peers again ([`on_up`]): joins noted meanwhile still
//!   take their peer's entry (the peer came here), the other peers are asserted, which
//!   takes no entry from another live node (the peer connected there while this node
//!   was cut off or paused: this node closes its own, older, connection).
//!
//! The scripts name keys they are not passed (a node's mesh hashes): a single Redis
//! (or a Sentinel-managed primary), not Redis Cluster.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use chatixia_cluster::{Refused, Script, ShardLink, Value};

use super::outbox::Outgoing;
use super::store::inc;
use super::ConnTable;
use crate::shard::{Owns, Shard};
use crate::ws::codec::close_code;

/// Adds (or moves) a peer's entry: `KEYS[1]` the mesh hash, `KEYS[2]` this node's set of
/// mesh hashes, `KEYS[3]` the nodes' leases; `ARGV` peer, node, channel prefix, the
/// framed "close your older connection" message, `1` when the peer came to this node
/// (a new connection: [`Outgoing::Join`]) or `0` (a re-assertion after the link came
/// back: [`Outgoing::Assert`]). A `1` takes the entry and sends the message to the node
/// named before. A `0` does not take it from another live node (lease on Redis's clock,
/// as [`PEERS`]): the peer connected there while this node was cut off, so this node's
/// connection is the older one, and the message goes to this node instead (as the
/// registry's `PUT`). 1 when written, 0 when not.
pub const JOIN: Script = Script {
    name: "chx_join",
    source: r#"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old and old ~= ARGV[2] and ARGV[5] ~= '1' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local score = redis.call('ZSCORE', KEYS[3], old)
  if score and tonumber(score) >= now then
    redis.call('SPUBLISH', ARGV[3] .. ARGV[2], ARGV[4])
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], KEYS[1])
if old and old ~= ARGV[2] then
  redis.call('SPUBLISH', ARGV[3] .. old, ARGV[4])
end
return 1
"#,
};

/// Removes a peer's entry if it still names this node: `KEYS[1]` the mesh hash; `ARGV`
/// peer, node.
pub const LEAVE: Script = Script {
    name: "chx_leave",
    source: r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"#,
};

/// A relay to a peer of another node: `KEYS[1]` the sender's mesh hash, `KEYS[2]` the
/// nodes' shard counts ([`CORES`]); `ARGV` target, this node, the node channels' prefix,
/// the framed message, the target's [`crate::shard::key_hash`] as its high and low 32
/// bits, the shard channels' prefix. When the target is at another node, publishes to
/// the channel of the shard that owns it there (`shard_of_hash`, computed exactly in
/// doubles: each product stays under 2^53) if that has a subscriber (2), else to the
/// node's channel (1: its link thread hands it to the shard); 0 when not published.
pub const RELAY: Script = Script {
    name: "chx_relay",
    source: r#"
local n = redis.call('HGET', KEYS[1], ARGV[1])
if n and n ~= ARGV[2] then
  local c = tonumber(redis.call('HGET', KEYS[2], n))
  if c and c >= 1 then
    local hi = tonumber(ARGV[5])
    local lo = tonumber(ARGV[6])
    local s = math.floor((hi * c + math.floor(lo * c / 4294967296)) / 4294967296)
    if redis.call('SPUBLISH', ARGV[7] .. s .. ':' .. n, ARGV[4]) > 0 then
      return 2
    end
  end
  redis.call('SPUBLISH', ARGV[3] .. n, ARGV[4])
  return 1
end
return 0
"#,
};

/// Notes a node's shard count (`KEYS[1]` the counts' hash; `ARGV` node, count): what
/// [`RELAY`] needs to name the owner shard's channel there. Run on every connect.
pub const CORES: Script = Script {
    name: "chx_cores",
    source: r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#,
};

/// Removes every entry naming a node: `KEYS[1]` its set of mesh hashes, `KEYS[2]` the
/// nodes' shard counts ([`CORES`]: its count goes too, so that the hash holds the nodes
/// there are, not every id ever used); `ARGV[1]` the node. Run by the node itself on
/// every connect (before its shards assert their peers again, and before [`CORES`]
/// notes its count again) and at a graceful stop, and by the others when its lease ran
/// out. Returns the entries removed.
pub const CLEANUP: Script = Script {
    name: "chx_cleanup",
    source: r#"
redis.call('HDEL', KEYS[2], ARGV[1])
local n = 0
for _, k in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local all = redis.call('HGETALL', k)
  for i = 1, #all, 2 do
    if all[i + 1] == ARGV[1] then
      redis.call('HDEL', k, all[i])
      n = n + 1
    end
  end
end
redis.call('DEL', KEYS[1])
return n
"#,
};

/// The peers of a mesh at the other live nodes: `KEYS[1]` the mesh hash, `KEYS[2]` the
/// nodes' leases; `ARGV[1]` this node. A node is live while its lease runs, on Redis's
/// clock, as of this call (a node that joined a moment ago is listed at once, one whose
/// lease ran out is not, whether or not its entries are removed yet).
pub const PEERS: Script = Script {
    name: "chx_peers",
    source: r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local live = {}
local out = {}
for i = 1, #all, 2 do
  local n = all[i + 1]
  if n ~= ARGV[1] then
    local ok = live[n]
    if ok == nil then
      local score = redis.call('ZSCORE', KEYS[2], n)
      ok = (score and tonumber(score) >= now) or false
      live[n] = ok
    end
    if ok then out[#out + 1] = all[i] end
  end
end
return out
"#,
};

/// The scripts signaling runs (loaded by the link on every connect).
pub fn scripts() -> Vec<Script> {
    vec![JOIN, LEAVE, RELAY, CLEANUP, PEERS, CORES]
}

/// What a node runs on every connect to note its shard count ([`CORES`]).
pub fn on_connect_cores(
    prefix: &str,
    node: &str,
    cores: usize,
) -> (&'static str, Vec<Vec<u8>>, Vec<Vec<u8>>) {
    (
        CORES.name,
        vec![cores_key(prefix)],
        vec![node.as_bytes().to_vec(), cores.to_string().into_bytes()],
    )
}

/// The channel of one shard of a node (`{prefix}s:{shard}:{node}`): the shard's own
/// subscription ([`chatixia_cluster::pipe`]). Its own namespace (`s:`), so that no node
/// id (which may hold `:`) names another's channel.
pub fn shard_channel(prefix: &str, node: &str, shard: usize) -> Vec<u8> {
    format!("{prefix}s:{shard}:{node}").into_bytes()
}

/// The hash of the nodes' shard counts.
fn cores_key(prefix: &str) -> Vec<u8> {
    [prefix.as_bytes(), b"cores"].concat()
}

/// The prefix of the shards' channels.
fn shard_channel_prefix(prefix: &str) -> Vec<u8> {
    [prefix.as_bytes(), b"s:"].concat()
}

/// What a node runs on every connect before its shards assert their peers: its own
/// stale entries go ([`CLEANUP`]). `(script, keys, args)`.
pub fn on_connect(prefix: &str, node: &str) -> (&'static str, Vec<Vec<u8>>, Vec<Vec<u8>>) {
    (
        CLEANUP.name,
        vec![node_meshes_key(prefix, node), cores_key(prefix)],
        vec![node.as_bytes().to_vec()],
    )
}

/// The mesh's directory hash.
fn mesh_key(prefix: &str, mesh: Option<&str>) -> Vec<u8> {
    match mesh {
        Some(m) => [prefix.as_bytes(), b"m:", m.as_bytes()].concat(),
        None => [prefix.as_bytes(), b"nomesh"].concat(),
    }
}

/// The set of mesh hashes a node wrote to.
fn node_meshes_key(prefix: &str, node: &str) -> Vec<u8> {
    [prefix.as_bytes(), b"nm:", node.as_bytes()].concat()
}

/// The prefix of the nodes' channels (`{prefix}n:{node}`, the link's).
fn channel_prefix(prefix: &str) -> Vec<u8> {
    [prefix.as_bytes(), b"n:"].concat()
}

/// The sorted set of the nodes' leases (the link's).
fn nodes_key(prefix: &str) -> Vec<u8> {
    [prefix.as_bytes(), b"nodes"].concat()
}

/// Message kinds on a node's channel (the body's first byte; every service's kinds are
/// listed in `server::cluster`).
pub const MSG_RELAY: u8 = b'r';
pub const MSG_REPLACED: u8 = b'k';
pub const MSG_REVOKED: u8 = b'v';

/// A message as the link frames it on a channel (`chatixia_cluster::frame`:
/// `[u16 key length][key][body]`), the route key being the peer (the receiving node hands
/// it to the peer's owner shard). A peer id is far shorter than the longest key
/// (`ROUTE_KEY_BYTES_MAX`, 65534 bytes); a longer one would be cut (and reach no one).
fn framed(route_key: &[u8], body: &[u8]) -> Vec<u8> {
    let key = &route_key[..route_key.len().min(chatixia_cluster::ROUTE_KEY_BYTES_MAX)];
    chatixia_cluster::frame(key, body).unwrap_or_default()
}

/// A relay's body: kind, whether a mesh follows, its length, the mesh, the frame.
fn relay_body(mesh: Option<&str>, frame: &[u8]) -> Vec<u8> {
    let m = mesh.unwrap_or("").as_bytes();
    let mut v = Vec::with_capacity(4 + m.len() + frame.len());
    v.push(MSG_RELAY);
    v.push(u8::from(mesh.is_some()));
    v.extend_from_slice(&(m.len() as u16).to_be_bytes());
    v.extend_from_slice(m);
    v.extend_from_slice(frame);
    v
}

/// Why an inbound message was not understood (a bug or another version: logged, dropped).
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

/// What a message from another node may change on the peer's owner shard.
pub struct Here<'a> {
    pub ws: &'a ConnTable,
    pub authz: &'a std::cell::RefCell<super::PeerAuthz>,
    pub api_keys: &'a crate::auth::ApiKeys,
    pub now: crate::time::UnixTime,
}

/// What [`on_message`] did that the server must finish.
#[derive(Debug, PartialEq, Eq)]
pub enum Done {
    Nothing,
    /// The peer's last approval was revoked at another node and none is held here: its
    /// embedded-TURN allocations on this node go too.
    Revoked,
}

/// A message this node's channel delivered for peer `route_key`, on its owner shard: a
/// relay to deliver to the peer if it is here (never sent on again); the notice that
/// the peer connected to another node (its connection here closes with 4000); or that
/// its pairing was revoked at another node (unless an API key or an approval held here
/// authorizes it, its connection here closes with 4001 and a new one is refused as
/// revoked, as on the node that revoked it).
pub fn on_message(here: &Here<'_>, route_key: &[u8], body: &[u8]) -> Result<Done, Malformed> {
    let ws = here.ws;
    let target = std::str::from_utf8(route_key).map_err(|_| Malformed)?;
    match body.split_first() {
        Some((&MSG_RELAY, rest)) => {
            let (&has_mesh, rest) = rest.split_first().ok_or(Malformed)?;
            let (len, rest) = rest.split_first_chunk::<2>().ok_or(Malformed)?;
            let len = usize::from(u16::from_be_bytes(*len));
            if rest.len() < len {
                return Err(Malformed);
            }
            let (mesh, frame) = rest.split_at(len);
            let mesh = std::str::from_utf8(mesh).map_err(|_| Malformed)?;
            let mesh = (has_mesh == 1).then_some(mesh);
            // Written to the client as it is: one text frame, as the sending node
            // built it, or nothing (Redis's channels are trusted, not blindly).
            if !crate::ws::codec::is_one_text_frame(frame) {
                return Err(Malformed);
            }
            ws.deliver_here(target, mesh, frame.into());
            Ok(Done::Nothing)
        }
        Some((&MSG_REPLACED, _)) => {
            ws.close_peer(
                target,
                close_code::REPLACED,
                "replaced by a newer connection of the same peer on another node",
            );
            Ok(Done::Nothing)
        }
        Some((&MSG_REVOKED, _)) => {
            if here.api_keys.has_peer_id(target) || here.authz.borrow().contains(target) {
                return Ok(Done::Nothing);
            }
            here.authz.borrow_mut().restore_revoked(target, here.now);
            ws.close_peer(target, close_code::REVOKED, "pairing revoked");
            Ok(Done::Revoked)
        }
        _ => Err(Malformed),
    }
}

/// `peer` holds no approval in the cluster any more (its last one was revoked): every
/// other live node closes its connections there too (4001) and refuses it as revoked
/// ([`on_message`]). One publish per node; a node that misses it (its link was down)
/// still refuses the peer's new signaling, whose approval it looks up in Redis, and
/// checks the peers it admitted again when it reconnects.
pub fn broadcast_revocation(link: &ShardLink, peer: &str) {
    let me = link.node_id();
    publish_revocation(link, peer, |n| n != me);
}

/// [`broadcast_revocation`] to every live node, this one included (a revocation made
/// here of an approval another node held: this node's connections of the peer close
/// the same way, through the link).
pub fn broadcast_revocation_everywhere(link: &ShardLink, peer: &str) {
    publish_revocation(link, peer, |_| true);
}

fn publish_revocation(link: &ShardLink, peer: &str, to: impl Fn(&str) -> bool) {
    for node in link.live_nodes().iter().filter(|n| to(n)) {
        if let Err(e) = link.publish(node, peer.as_bytes(), &[MSG_REVOKED]) {
            tracing::warn!(%peer, %node, error = ?e, "revocation not sent to a node");
        }
    }
}

/// Peers per `HMGET` when [`recheck_approvals`] asks the cluster's approvals: a reply of
/// at most 256 values (about 40 KiB) per round trip for a shard's connections.
const RECHECK_BATCH_MAX: usize = 256;

/// The link is up again (a new generation): the peers connected here on an approval
/// held at another node (neither an API key nor an approval here authorizes them) are
/// checked against the cluster's approvals (`authz::cluster_authz_key`) once more. One
/// whose approval is gone (its revocation's broadcast was missed: this node, or the one
/// that revoked it, was away from Redis) is closed with 4001 and refused as revoked, as
/// [`on_message`] does. Returns those peers (their embedded-TURN allocations go too).
/// Nothing when the link fails meanwhile (the next `Up` checks again).
pub async fn recheck_approvals<S>(sh: &S, api_keys: &crate::auth::ApiKeys) -> Vec<String>
where
    S: Shard + Owns<ConnTable> + Owns<std::cell::RefCell<super::PeerAuthz>>,
{
    let Some(link) = sh.cluster() else {
        return Vec::new();
    };
    let ws: &ConnTable = sh.owned();
    let authz: &std::cell::RefCell<super::PeerAuthz> = sh.owned();
    let peers: Vec<Box<str>> = ws
        .authorized_peers()
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| !api_keys.has_peer_id(p) && !authz.borrow().contains(p))
        .collect();
    let mut revoked = Vec::new();
    for batch in peers.chunks(RECHECK_BATCH_MAX) {
        let mut args = vec![
            b"HMGET".to_vec(),
            super::authz::cluster_authz_key(link.prefix()),
        ];
        args.extend(batch.iter().map(|p| p.as_bytes().to_vec()));
        let values = match link.command(args) {
            Ok(r) => match r.await {
                Ok(Value::Array(v)) if v.len() == batch.len() => v,
                other => {
                    tracing::debug!(reply = ?other, "approvals not checked again now");
                    return revoked;
                }
            },
            Err(e) => {
                tracing::debug!(error = ?e, "approvals not checked again now");
                return revoked;
            }
        };
        for (peer, v) in batch.iter().zip(values) {
            let approved = match v {
                Value::Bulk(v) => super::authz::cluster_mesh(&v).is_some(),
                _ => false,
            };
            // Approved here meanwhile: its own approval authorizes it.
            if approved || authz.borrow().contains(peer) {
                continue;
            }
            tracing::info!(%peer, "a revocation found late: closing the peer here");
            authz.borrow_mut().restore_revoked(peer, sh.now());
            ws.close_peer(peer, close_code::REVOKED, "pairing revoked");
            revoked.push(peer.to_string());
        }
    }
    revoked
}

/// The link is up again (a new generation): the link cleared this node's stale entries
/// on connect; this shard asserts every peer it holds.
pub fn on_up(ws: &ConnTable) {
    if let Some(o) = ws.outbox.borrow_mut().as_mut() {
        o.resync = true;
        o.wake();
    }
}

/// The link is down: relays waiting cannot go out (dropped, counted as refused); joins
/// and leaves wait for it (a join sent then still takes the peer's entry: the peer
/// came here), and the directory is asserted again when it is back.
pub fn on_down(ws: &ConnTable) {
    let dropped = match ws.outbox.borrow_mut().as_mut() {
        Some(o) => {
            o.resync = true;
            o.drop_relays()
        }
        None => 0,
    };
    for _ in 0..dropped {
        inc(&ws.refused);
    }
}

/// Nodes whose lease ran out: their directory entries go, then their lease entry (one
/// shard of each node does this; both steps are idempotent).
pub fn forget_nodes(link: &ShardLink, gone: &[String]) {
    let prefix = link.prefix().to_string();
    for node in gone {
        let r = link
            .eval_nowait(
                CLEANUP.name,
                vec![node_meshes_key(&prefix, node), cores_key(&prefix)],
                vec![node.as_bytes().to_vec()],
            )
            .and_then(|()| {
                link.command_nowait(vec![
                    b"ZREM".to_vec(),
                    nodes_key(&prefix),
                    node.as_bytes().to_vec(),
                ])
            });
        match r {
            Ok(()) => tracing::info!(node = %node, "cluster node gone: its peers are removed"),
            Err(e) => tracing::debug!(node = %node, error = ?e, "gone node not removed now"),
        }
    }
}

/// The peers of `mesh` connected to the other live nodes, but `exclude`: one script
/// ([`PEERS`]) over the mesh's hash. Empty on a node alone, and while the link is down (the list then
/// holds this node's peers only).
pub async fn peers_elsewhere<S: Shard>(sh: &S, mesh: Option<&str>, exclude: &str) -> Vec<Box<str>> {
    let Some(link) = sh.cluster() else {
        return Vec::new();
    };
    let reply = match link.eval(
        PEERS.name,
        vec![mesh_key(link.prefix(), mesh), nodes_key(link.prefix())],
        vec![link.node_id().as_bytes().to_vec()],
    ) {
        Ok(r) => r.await,
        Err(e) => {
            tracing::debug!(error = ?e, "peer list without the other nodes");
            return Vec::new();
        }
    };
    let items = match reply {
        Ok(Value::Array(items)) => items,
        other => {
            tracing::debug!(reply = ?other, "peer list without the other nodes");
            return Vec::new();
        }
    };
    items
        .into_iter()
        .filter_map(|v| match v {
            Value::Bulk(p) => String::from_utf8(p).ok(),
            _ => None,
        })
        .filter(|p| p != exclude)
        .map(String::into_boxed_str)
        .collect()
}

/// Commands this shard's directory task keeps in the link at once before it sends
/// another relay: a relayed frame is up to 64 KiB, so the link's own bound
/// (`inflight_max`, 4096 commands) would let a flood to remote peers hold 256 MiB per
/// shard while Redis is slow; this holds it to 32 MiB. The task waits (the outbox fills,
/// then refuses) rather than queueing more.
const RELAYS_INFLIGHT_MAX: usize = 512;

/// How long the directory task waits before trying again when the link's queue for
/// this shard is full (`Refused::Busy`): a turn of the link's pipeline.
const LINK_BUSY_RETRY: Duration = Duration::from_millis(1);

/// The shard's directory task (in a cluster): sends what the connection table's outbox
/// holds, and asserts every peer again after the link came back. Runs until the shard
/// stops.
pub async fn run<S>(sh: std::rc::Rc<S>)
where
    S: Shard + Owns<ConnTable> + 'static,
{
    let ws: &ConnTable = sh.owned();
    loop {
        // Wait for items or a resync.
        poll_fn(|cx| {
            let mut ob = ws.outbox.borrow_mut();
            let Some(o) = ob.as_mut() else {
                return Poll::Pending;
            };
            if o.is_empty() && !o.resync {
                o.set_waker(cx.waker());
                return Poll::Pending;
            }
            Poll::Ready(())
        })
        .await;
        let Some(link) = sh.cluster() else { return };
        if !link.is_up() {
            on_down(ws);
            // `on_up` wakes the task again.
            poll_fn(|cx| {
                let mut ob = ws.outbox.borrow_mut();
                match ob.as_mut() {
                    Some(o) if !link.is_up() => {
                        o.set_waker(cx.waker());
                        Poll::Pending
                    }
                    _ => Poll::Ready(()),
                }
            })
            .await;
            continue;
        }
        let (items, resync) = {
            let mut ob = ws.outbox.borrow_mut();
            let Some(o) = ob.as_mut() else { return };
            let resync = std::mem::take(&mut o.resync);
            (o.take(), resync)
        };
        let items = if resync {
            // What was queued (joins of peers that came here, leaves), then every other
            // peer held now, asserted: it takes no entry from another live node. After
            // the queued leaves, so that a leave of an older connection of a peer held
            // now does not remove its entry for good.
            let asserts: Vec<Outgoing> = {
                let queued: std::collections::HashSet<&str> = items
                    .iter()
                    .filter_map(|i| match i {
                        Outgoing::Join { peer, .. } => Some(&**peer),
                        _ => None,
                    })
                    .collect();
                ws.authorized_peers()
                    .into_iter()
                    .filter(|(peer, _)| !queued.contains(&**peer))
                    .map(|(peer, mesh)| Outgoing::Assert { peer, mesh })
                    .collect()
            };
            let mut all = items;
            all.extend(asserts);
            all
        } else {
            items
        };
        send(&*sh, ws, link, items).await;
    }
}

/// Sends `items` through the link in order, waiting while its queue is full; stops (the
/// rest handled as by [`on_down`]) when the link goes down.
async fn send<S: Shard>(sh: &S, ws: &ConnTable, link: &ShardLink, mut items: VecDeque<Outgoing>) {
    let prefix = link.prefix();
    let node = link.node_id();
    while let Some(item) = items.pop_front() {
        if matches!(item, Outgoing::Relay { .. }) && link.inflight() >= RELAYS_INFLIGHT_MAX {
            items.push_front(item);
            sh.sleep(LINK_BUSY_RETRY).await;
            if !link.is_up() {
                put_back_for_resync(ws, items);
                return;
            }
            continue;
        }
        let sent = match &item {
            Outgoing::Join { peer, mesh } | Outgoing::Assert { peer, mesh } => link.eval_nowait(
                JOIN.name,
                vec![
                    mesh_key(prefix, mesh.as_deref()),
                    node_meshes_key(prefix, node),
                    nodes_key(prefix),
                ],
                vec![
                    peer.as_bytes().to_vec(),
                    node.as_bytes().to_vec(),
                    channel_prefix(prefix),
                    framed(peer.as_bytes(), &[MSG_REPLACED]),
                    if matches!(item, Outgoing::Join { .. }) {
                        b"1".to_vec()
                    } else {
                        b"0".to_vec()
                    },
                ],
            ),
            Outgoing::Leave { peer, mesh } => link.eval_nowait(
                LEAVE.name,
                vec![mesh_key(prefix, mesh.as_deref())],
                vec![peer.as_bytes().to_vec(), node.as_bytes().to_vec()],
            ),
            Outgoing::Relay {
                target,
                mesh,
                frame,
            } => {
                let h = crate::shard::key_hash(target.as_bytes());
                let keys = [mesh_key(prefix, mesh.as_deref()), cores_key(prefix)];
                let args = [
                    target.as_bytes().to_vec(),
                    node.as_bytes().to_vec(),
                    channel_prefix(prefix),
                    framed(target.as_bytes(), &relay_body(mesh.as_deref(), frame)),
                    (h >> 32).to_string().into_bytes(),
                    (h & 0xffff_ffff).to_string().into_bytes(),
                    shard_channel_prefix(prefix),
                ];
                // The shard's own connection when it is up (no thread on the way), else
                // the link. While it is up but full (Redis slow to read) the relay waits
                // as for a busy link: through the link, another connection, it would
                // overtake those queued on the shard's.
                let k: [&[u8]; 2] = [&keys[0], &keys[1]];
                let a: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                match ws.pipe().filter(|p| p.is_up()) {
                    Some(p) if !p.has_room() => Err(Refused::Busy),
                    Some(p) if p.eval(&k, &a) => Ok(()),
                    _ => link.eval_nowait_publishing(RELAY.name, keys.to_vec(), args.to_vec()),
                }
            }
        };
        match sent {
            Ok(()) => {}
            Err(Refused::Busy) => {
                items.push_front(item);
                sh.sleep(LINK_BUSY_RETRY).await;
            }
            Err(Refused::Down(_) | Refused::Closed) => {
                items.push_front(item);
                put_back_for_resync(ws, items);
                return;
            }
        }
    }
}

/// The link went down while items waited: joins and leaves go back to the outbox for
/// when it is back (asserts are built again by the resync then), relays are dropped
/// (counted as refused).
fn put_back_for_resync(ws: &ConnTable, items: VecDeque<Outgoing>) {
    let relays = items
        .iter()
        .filter(|i| matches!(i, Outgoing::Relay { .. }))
        .count();
    for _ in 0..relays {
        inc(&ws.refused);
    }
    let rest: VecDeque<Outgoing> = items
        .into_iter()
        .filter(|i| matches!(i, Outgoing::Join { .. } | Outgoing::Leave { .. }))
        .collect();
    let mut ob = ws.outbox.borrow_mut();
    if let Some(o) = ob.as_mut() {
        o.put_back(rest);
        o.resync = true;
        o.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_message_round_trips_through_its_framing() {
        let body = relay_body(Some("mesh-1"), b"\x81\x02hi");
        let f = framed(b"bob", &body);
        assert_eq!(&f[..2], &3u16.to_be_bytes());
        assert_eq!(&f[2..5], b"bob");
        assert_eq!(&f[5..], &body[..]);
        let ws = ConnTable::default();
        let authz = std::cell::RefCell::new(super::super::PeerAuthz::default());
        let keys = crate::auth::ApiKeys::parse(br#"{"keys": {}}"#).unwrap();
        let here = Here {
            ws: &ws,
            authz: &authz,
            api_keys: &keys,
            now: crate::time::UnixTime::from_secs(100),
        };
        // No such peer here: dropped, never sent on (no outbox either way).
        assert_eq!(on_message(&here, b"bob", &body), Ok(Done::Nothing));
        // A relay whose frame is not one text frame as a node writes it: not written.
        let bad = relay_body(Some("mesh-1"), b"\x81\x03hi");
        assert_eq!(on_message(&here, b"bob", &bad), Err(Malformed));
        let bad = relay_body(Some("mesh-1"), b"\x83\x02hi");
        assert_eq!(on_message(&here, b"bob", &bad), Err(Malformed));
        let short = b"r\x01\x00\x09short";
        assert_eq!(on_message(&here, b"bob", short), Err(Malformed));
        assert_eq!(on_message(&here, b"bob", b"?"), Err(Malformed));
        assert_eq!(on_message(&here, b"\xff", &body), Err(Malformed));
        assert_eq!(on_message(&here, b"bob", b""), Err(Malformed));
        // A revocation elsewhere: refused here from now on, unless approved here too.
        assert_eq!(on_message(&here, b"bob", b"v"), Ok(Done::Revoked));
        assert!(authz.borrow().is_revoked("bob"));
        authz.borrow_mut().add("carol", None);
        assert_eq!(on_message(&here, b"carol", b"v"), Ok(Done::Nothing));
        assert!(!authz.borrow().is_revoked("carol"));
    }

    #[test]
    fn keys_keep_meshes_apart_from_the_meshless() {
        assert_eq!(mesh_key("chx:", Some("a")), b"chx:m:a".to_vec());
        assert_eq!(mesh_key("chx:", None), b"chx:nomesh".to_vec());
        assert_ne!(mesh_key("chx:", Some("")), mesh_key("chx:", None));
        assert_eq!(node_meshes_key("chx:", "n1"), b"chx:nm:n1".to_vec());
    }

    /// RELAY's owner shard, as Lua 5.1 computes it (numbers are doubles).
    fn lua_shard(h: u64, c: usize) -> usize {
        let (hi, lo, c) = ((h >> 32) as f64, (h & 0xffff_ffff) as f64, c as f64);
        ((hi * c + (lo * c / 4294967296.0).floor()) / 4294967296.0).floor() as usize
    }

    #[test]
    fn the_relay_scripts_owner_shard_agrees_with_shard_of_hash() {
        assert!(RELAY
            .source
            .contains("math.floor((hi * c + math.floor(lo * c / 4294967296)) / 4294967296)"));
        // splitmix64: many hashes, and the edges.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut hashes = vec![
            0,
            1,
            u64::MAX,
            u64::MAX - 1,
            1 << 63,
            (1 << 32) - 1,
            1 << 32,
        ];
        for _ in 0..20_000 {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            hashes.push(z ^ (z >> 31));
        }
        for (i, peer) in ["alice", "bob", "", "peer-\u{e9}"].iter().enumerate() {
            hashes.push(crate::shard::key_hash(peer.as_bytes()));
            hashes.push(i as u64);
        }
        for c in 1..=64usize {
            // The boundaries between shards, and either side of them.
            for k in 0..c as u128 {
                let b = ((k << 64) / c as u128) as u64;
                hashes.extend([b, b.wrapping_sub(1), b.wrapping_add(1)]);
            }
            for &h in &hashes {
                assert_eq!(
                    lua_shard(h, c),
                    reactor::shard_of_hash(h, c),
                    "hash {h:#x}, {c} shards"
                );
            }
        }
    }
}
