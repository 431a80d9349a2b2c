//! Pairing approvals across the nodes of a cluster (`--cluster`, issue 25;
//! docs/ARCHITECTURE.md, "Cluster"; docs/PROTOCOL.md §5.10). A pairing entry lives at
//! the node that took its `pair` (its data directory), but what its approval grants
//! holds at every node: its device token works at `POST /api/token` and its peer may
//! signal (in its mesh) whichever node it reaches.
//!
//! * **The records**: two Redis hashes, written together by one script. The device
//!   tokens, `{prefix}tokens` (`auth::tokens::cluster_tokens_key`): the token's key (the
//!   hex of its keyed hash, as the node's index keys it; never the token) → its grant as
//!   JSON. The approvals, `{prefix}authz` (`signaling::authz::cluster_authz_key`): peer
//!   id → `{"e":[entry ids],"m":mesh}`; entry ids rather than a count, so that writing
//!   an approval again is idempotent and peer ids that repeat across entries (24-bit
//!   random) stay authorized until their last entry is revoked.
//! * **Approve** ([`approve`]): before the approval's commit and its `2xx`, a durable
//!   write ([`APPROVE`], `eval_durable`: in Sentinel mode acknowledged by a replica).
//!   While Redis cannot be written the approval is undone like any other failed step
//!   (the entry stays pending) and answered 503 (failing closed). A write that may have
//!   run (a lost connection, `NOREPLICAS`) is removed again, best effort; one left behind
//!   grants nothing anyone can use (nobody holds its token: it was never answered).
//! * **Revoke** ([`revoke`]): the records go ([`UNAPPROVE`], durable) after the
//!   revocation took effect at this node (which fails closed whatever Redis says). The
//!   other nodes are told to close the peer's connections (`signaling::remote`) when the
//!   cluster holds no other approval of that peer id: asked before the removal (so that
//!   a lost reply cannot leave them untold), and from the removal's reply. While Redis
//!   cannot be written the other nodes may still accept the token and admit the peer
//!   (not one already told of the revocation): the revoke answers 202 saying so. The
//!   shard keeps the removal ([`Unsynced`]) and sends it again while the link is up,
//!   backing off from [`UNSYNCED_RETRY_INTERVAL`] ([`retry_unsynced`]: a link that
//!   stays up while Redis refuses the script, or too busy to take it, is not followed by
//!   a connect), and the records also go at this node's next connect to Redis
//!   ([`assert_all`]); either tells the other nodes to close the peer then. This node
//!   refuses the token meanwhile though Redis's token hash still holds it
//!   (`auth::tokens::DeviceTokenIndex::revoke`).
//! * **Asserted on every connect** ([`assert_all`], each shard for the entries it owns):
//!   every approved entry's records are written again (idempotent), then every revoked
//!   entry's removed (those still kept, `--pairing-retention`); a peer whose last
//!   approval this removes is broadcast as revoked.
//! * **Revoked while its node is away** ([`revoke_away`], [`REVOKE_AWAY`]): a device must
//!   be revocable while the node holding its entry is down. Each approval is also noted
//!   by entry id (`{prefix}pap`: its token key and peer), so that any node can take its
//!   records out of Redis for an entry whose node is not live (decided in the script, by
//!   the node's lease on Redis's clock); the id is then noted in `{prefix}prv` with the
//!   token key, the peer and the node: [`APPROVE`] refuses to write that token's
//!   approval back (under whatever `--node-id` its node returns) and names the id, and
//!   the node revokes the entry in its own store (server/cluster.rs, on `Up`). The note
//!   stays until the entry is retired ([`forget_revoked_away`]), so a node that could
//!   not save its own revocation is refused again at its next connect; a second
//!   revocation answers the same (a retry after a lost reply or an unconfirmed write).
//!   Until the node is back the revocation lives only in Redis (Redis's durability).
//!
//! Bounded: the hashes hold one token, one note and at most one approval per approved
//! entry of every node (each node's `--pair-entries-max` per shard), and one note per
//! entry revoked while its node was away. An approving node that is gone for good
//! leaves its approvals in effect until they are revoked at another node, or removed
//! with `redis-cli HDEL` (README).

use std::cell::RefCell;

use chatixia_cluster::{Refused, Script, ShardLink, Value};

mod unsynced;
pub use unsynced::{retry_unsynced, Due, Unsynced, UNSYNCED_RETRY_INTERVAL};

use super::{Entry, EntryId, PairingStore, Status};
use crate::auth::tokens::{cluster_tokens_key, grant_value, token_key, DeviceGrant};
use crate::shard::{Error, Owns, Shard};
use crate::signaling::authz::cluster_authz_key;

/// Writes approvals: `KEYS` the token hash, the approvals hash, the approved entries'
/// hash and the revoked-away hash ([`keys`]); `ARGV` in groups of six: token key, grant
/// (JSON), peer, entry id, `1` when a mesh follows, the mesh. Idempotent: an entry id
/// already listed is not added again; a peer's first approval's mesh stays. An approval
/// revoked at another node while its node was away ([`REVOKE_AWAY`]: noted with its
/// token key, so whatever `--node-id` its node has when it comes back) is not written
/// again; a note of another token key is of another entry that had the same id (ids
/// are drawn at each node and reused once their node is gone), and goes; a note that
/// cannot be read as one is taken as naming this approval (failing closed). Returns the
/// approvals added, or (when any was refused so) the ids refused.
pub const APPROVE: Script = Script {
    name: "chx_pair_approve",
    source: r#"
local n, refused = 0, {}
for i = 1, #ARGV - 5, 6 do
  local peer, id = ARGV[i + 2], ARGV[i + 3]
  local away = redis.call('HGET', KEYS[4], id)
  local ok, note = false, nil
  if away then ok, note = pcall(cjson.decode, away) end
  if away and (not ok or type(note) ~= 'table' or type(note.k) ~= 'string' or note.k == ARGV[i]) then
    refused[#refused + 1] = id
  else
  if away then redis.call('HDEL', KEYS[4], id) end
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[3], id, cjson.encode({k = ARGV[i], p = peer}))
  local cur = redis.call('HGET', KEYS[2], peer)
  local read, rec = false, nil
  if cur then read, rec = pcall(cjson.decode, cur) end
  if not read or type(rec) ~= 'table' or type(rec.e) ~= 'table' then
    -- None, or unreadable (its other entries' nodes write theirs again at their next
    -- connect): a fresh one.
    rec = {e = {}}
    if ARGV[i + 4] == '1' then rec.m = ARGV[i + 5] end
  end
  local found = false
  for _, e in ipairs(rec.e) do
    if e == id then found = true end
  end
  if not found then
    rec.e[#rec.e + 1] = id
    local encoded, out = pcall(cjson.encode, rec)
    if not encoded then
      rec = {e = {id}}
      if ARGV[i + 4] == '1' then rec.m = ARGV[i + 5] end
      out = cjson.encode(rec)
    end
    redis.call('HSET', KEYS[2], peer, out)
    n = n + 1
  end
  end
end
if #refused > 0 then return refused end
return n
"#,
};

/// The Lua of taking entry `id` out of `peer`'s approval in the approvals hash
/// (`KEYS[2]`), shared by [`UNAPPROVE`] and [`REVOKE_AWAY`]: defines
/// `unapprove_peer(peer, id)`, true when that was the peer's last approval (the field
/// goes).
macro_rules! unapprove_peer_lua {
    () => {
        r#"
local function unreadable_approval(peer)
  -- It cannot say which entries approve the peer: a revocation fails closed (the peer
  -- loses every approval in the cluster until their nodes assert them again) rather
  -- than failing every time.
  redis.log(redis.LOG_WARNING, 'chatixia: unreadable approval of peer ' .. peer .. ' removed')
  redis.call('HDEL', KEYS[2], peer)
  return true
end
local function unapprove_peer(peer, id)
  local cur = redis.call('HGET', KEYS[2], peer)
  if not cur then return false end
  local ok, rec = pcall(cjson.decode, cur)
  if not ok or type(rec) ~= 'table' or type(rec.e) ~= 'table' then
    return unreadable_approval(peer)
  end
  local keep, found = {}, false
  for _, e in ipairs(rec.e) do
    if e == id then found = true else keep[#keep + 1] = e end
  end
  if found and #keep == 0 then
    redis.call('HDEL', KEYS[2], peer)
    return true
  elseif found then
    rec.e = keep
    local encoded, out = pcall(cjson.encode, rec)
    if not encoded then return unreadable_approval(peer) end
    redis.call('HSET', KEYS[2], peer, out)
  end
  return false
end
"#
    };
}

/// Removes approvals: `KEYS` as [`APPROVE`]'s; `ARGV` in groups of three: token key
/// (`""`: none), peer, entry id. Idempotent. A note of a revocation made while the
/// entry's node was away stays (it keeps [`APPROVE`] from writing the approval back
/// should the node's own revocation not have been saved); it goes when the entry is
/// retired ([`forget_revoked_away`]). Returns the peers whose last approval this
/// removed.
pub const UNAPPROVE: Script = Script {
    name: "chx_pair_unapprove",
    source: concat!(
        unapprove_peer_lua!(),
        r#"
local out = {}
for i = 1, #ARGV - 2, 3 do
  if ARGV[i] ~= '' then redis.call('HDEL', KEYS[1], ARGV[i]) end
  local peer, id = ARGV[i + 1], ARGV[i + 2]
  redis.call('HDEL', KEYS[3], id)
  if unapprove_peer(peer, id) then out[#out + 1] = peer end
end
return out
"#
    ),
};

/// Revokes, at any node, an approved entry whose node is not live (killed, or cut off
/// from Redis past its lease): `KEYS` as [`APPROVE`]'s, then the entries' directory
/// (`pairing::directory`) and the nodes' leases (`{prefix}nodes`); `ARGV` the entry id
/// and the node the directory names for it. Takes what the approval wrote (its token,
/// its approval of the peer: the same as [`UNAPPROVE`]) and notes the id, with the
/// token key, the peer and the node, in the revoked-away hash, so that its node, when it
/// connects again, does not write the approval back ([`APPROVE`] refuses it) but
/// revokes the entry in its own store ([`assert_all`]). Returns `{1, peer, last}`
/// (`last`: `"1"` when the peer holds no approval in the cluster now); the same again
/// for an entry already revoked so (a retry after a lost reply or a write no replica
/// confirmed); `{0}` when the cluster holds no approval of the entry (pending,
/// rejected, revoked, or approved before its node noted approvals: it cannot be told
/// apart from here); `{-1}` when the directory names another node now; `{-2}` when that
/// node's lease runs (on Redis's clock, in the same script as the change: a node back
/// from away has taken its lease before it asserts its approvals, so the two cannot
/// cross).
pub const REVOKE_AWAY: Script = Script {
    name: "chx_pair_revoke_away",
    source: concat!(
        unapprove_peer_lua!(),
        r#"
local id = ARGV[1]
if redis.call('HGET', KEYS[5], id) ~= ARGV[2] then return {-1} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = redis.call('ZSCORE', KEYS[6], ARGV[2])
if exp and tonumber(exp) >= now then return {-2} end
local done = redis.call('HGET', KEYS[4], id)
local ok, note = false, nil
if done then ok, note = pcall(cjson.decode, done) end
if ok and type(note) == 'table' and note.n == ARGV[2] and type(note.p) == 'string' then
  local again = '0'
  if redis.call('HEXISTS', KEYS[2], note.p) == 0 then again = '1' end
  return {1, note.p, again}
end
local cur = redis.call('HGET', KEYS[3], id)
local rec = cur and cjson.decode(cur)
if type(rec) ~= 'table' or type(rec.k) ~= 'string' or type(rec.p) ~= 'string' then
  return {0}
end
local peer = rec.p
redis.call('HDEL', KEYS[1], rec.k)
redis.call('HDEL', KEYS[3], id)
redis.call('HSET', KEYS[4], id, cjson.encode({k = rec.k, p = peer, n = ARGV[2]}))
local last = '0'
if unapprove_peer(peer, id) then last = '1' end
return {1, peer, last}
"#
    ),
};

/// The scripts of pairing (loaded by the link on every connect).
pub fn scripts() -> Vec<Script> {
    vec![APPROVE, UNAPPROVE, REVOKE_AWAY]
}

/// Approvals (or removals) per script when asserting: 256 × 6 arguments (about 60 KiB)
/// keeps Redis from running one long script for a shard's 10,000 entries; the shard
/// sends them one batch after another.
pub const ASSERT_BATCH_MAX: usize = 256;

/// How long a write waits before trying again when the link's queue for this shard is
/// full (`Refused::Busy`): a turn of the link's pipeline.
const LINK_BUSY_RETRY: std::time::Duration = std::time::Duration::from_millis(1);

/// Most tries of a revocation's removal while the link's queue is full (about a second
/// of [`LINK_BUSY_RETRY`]); past it the removal is kept for [`retry_unsynced`].
const BUSY_TRIES_MAX: u32 = 1000;

/// The [`APPROVE`] arguments of one approval.
fn approve_args(key: &str, grant: &DeviceGrant) -> [Vec<u8>; 6] {
    let (has_mesh, mesh) = match &grant.mesh {
        Some(m) => (b"1", m.as_bytes().to_vec()),
        None => (b"0", Vec::new()),
    };
    [
        key.as_bytes().to_vec(),
        grant_value(grant),
        grant.peer_id.as_bytes().to_vec(),
        EntryId::from_u32(grant.entry_id).to_string().into_bytes(),
        has_mesh.to_vec(),
        mesh,
    ]
}

/// The [`UNAPPROVE`] arguments of one approval.
fn unapprove_args(key: Option<&str>, peer: &str, entry: EntryId) -> [Vec<u8>; 3] {
    [
        key.unwrap_or("").as_bytes().to_vec(),
        peer.as_bytes().to_vec(),
        entry.to_string().into_bytes(),
    ]
}

/// `{prefix}pap`: entry id → `{"k": token key, "p": peer}` of each approval in the
/// cluster (what [`REVOKE_AWAY`] takes when the entry's node is away).
fn approved_key(prefix: &str) -> Vec<u8> {
    [prefix.as_bytes(), b"pap"].concat()
}

/// `{prefix}prv`: entry id → `{"k": token key, "p": peer, "n": node}` for each approval
/// revoked at another node while its entry's node was away, until the entry is retired.
fn revoked_away_key(prefix: &str) -> Vec<u8> {
    [prefix.as_bytes(), b"prv"].concat()
}

/// The leases of the nodes (the cluster link's `{prefix}nodes`: node → lease expiry).
fn nodes_key(prefix: &str) -> Vec<u8> {
    [prefix.as_bytes(), b"nodes"].concat()
}

/// Retired entries' notes of a revocation made while their node was away go (best
/// effort, not awaited; with the entries' directory notes, `pairing::directory`).
pub fn forget_revoked_away<S: Shard>(sh: &S, ids: &[EntryId]) {
    let Some(link) = sh.cluster() else { return };
    if ids.is_empty() {
        return;
    }
    let mut cmd = vec![b"HDEL".to_vec(), revoked_away_key(link.prefix())];
    cmd.extend(ids.iter().map(|id| id.to_string().into_bytes()));
    let _ = link.command_nowait(cmd);
}

/// The keys of [`APPROVE`] and [`UNAPPROVE`] (and the first four of [`REVOKE_AWAY`]).
fn keys(link: &ShardLink) -> Vec<Vec<u8>> {
    vec![
        cluster_tokens_key(link.prefix()),
        cluster_authz_key(link.prefix()),
        approved_key(link.prefix()),
        revoked_away_key(link.prefix()),
    ]
}

/// The 503 of an approval the cluster cannot take.
fn unavailable(why: &str) -> Error {
    Error::unavailable(format!(
        "cluster unavailable: the approval cannot be written to the cluster ({why}); the \
         entry stays pending, retry"
    ))
}

/// Refuses an approval at once while the link is down (before anything changes here).
pub fn check_up<S: Shard>(sh: &S) -> Result<(), Error> {
    match sh.cluster() {
        Some(link) if !link.is_up() => Err(unavailable("Redis is unreachable")),
        _ => Ok(()),
    }
}

/// Writes an approval's records ([`APPROVE`], durable) before its `2xx`: `Ok` on a node
/// alone and once written (in Sentinel mode, acknowledged by a replica); else 503, and
/// a write that may have run is removed again (best effort).
pub async fn approve<S: Shard>(sh: &S, key: &str, grant: &DeviceGrant) -> Result<(), Error> {
    let Some(link) = sh.cluster() else {
        return Ok(());
    };
    let reply = match link.eval_durable(APPROVE.name, keys(link), approve_args(key, grant).into()) {
        Ok(r) => r.await,
        Err(Refused::Down(why)) => return Err(unavailable(&why)),
        Err(Refused::Busy) => return Err(unavailable("too many commands in flight")),
        Err(Refused::Closed) => return Err(unavailable("the link has stopped")),
    };
    let why = match reply {
        Ok(Value::Int(_)) => return Ok(()),
        // Revoked at another node while this one was away (this entry was approved
        // here before, and its approval undone here): nothing was written, nothing to
        // undo; it stays revoked in the cluster.
        Ok(Value::Array(_)) => {
            return Err(Error::conflict(
                "this pairing entry was revoked at another node of the cluster; it cannot \
                 be approved",
            ))
        }
        Ok(Value::Error(e)) if e.starts_with("NOREPLICAS") => {
            format!("the approval was not replicated: {e}")
        }
        Ok(other) => {
            tracing::error!(reply = ?other, "unexpected reply to APPROVE");
            "unexpected reply".to_owned()
        }
        Err(e) => format!("{e:?}"),
    };
    undo(sh, key, grant);
    Err(unavailable(&why))
}

/// An approval whose records were (or may have been) written is undone: they go, best
/// effort (not awaited; logged when it cannot be sent). One left behind authorizes
/// nothing anyone can use: its token was never answered.
pub fn undo<S: Shard>(sh: &S, key: &str, grant: &DeviceGrant) {
    let Some(link) = sh.cluster() else { return };
    let entry = EntryId::from_u32(grant.entry_id);
    let args = unapprove_args(Some(key), &grant.peer_id, entry);
    if let Err(e) = link.eval_nowait(UNAPPROVE.name, keys(link), args.into()) {
        tracing::warn!(%entry, error = ?e, "an undone approval's cluster records not removed");
    }
}

/// Why a revoked entry's records are not (known to be) out of the cluster yet
/// ([`revoke`]).
#[derive(Debug)]
pub struct Unremoved {
    pub why: String,
    /// Kept for [`retry_unsynced`] (else only this node's next connect removes them).
    pub retried: bool,
}

/// Removes a revoked entry's records ([`UNAPPROVE`], durable): `Ok` on a node alone and
/// once removed; else why not (the removal is then kept for [`retry_unsynced`], and the
/// records also go at this node's next connect, [`assert_all`]).
pub async fn revoke<S: Shard + Owns<RefCell<Unsynced>>>(
    sh: &S,
    key: Option<&str>,
    peer: &str,
    entry: EntryId,
) -> Result<(), Unremoved> {
    let Some(link) = sh.cluster() else {
        return Ok(());
    };
    // Whether this takes the peer's last approval in the cluster, asked before the
    // removal and told to the other nodes now, while the link is up: a removal whose
    // reply is lost would leave nobody to tell them (the next connect finds it done).
    let told = last_approval(link, peer, entry).await;
    if told {
        crate::signaling::remote::broadcast_revocation(link, peer);
    }
    let args = unapprove_args(key, peer, entry);
    let mut tries = 0;
    let reply = loop {
        match link.eval_durable(UNAPPROVE.name, keys(link), args.to_vec()) {
            Ok(r) => break r.await,
            Err(Refused::Busy) if tries < BUSY_TRIES_MAX => {
                tries += 1;
                sh.sleep(LINK_BUSY_RETRY).await;
            }
            Err(Refused::Busy) => {
                let retried = sh.owned().borrow_mut().keep(entry, key, peer);
                let why = "too many commands in flight".into();
                return Err(Unremoved { why, retried });
            }
            Err(Refused::Down(why)) => {
                let retried = sh.owned().borrow_mut().keep(entry, key, peer);
                return Err(Unremoved { why, retried });
            }
            Err(Refused::Closed) => {
                let why = "the link has stopped".into();
                return Err(Unremoved {
                    why,
                    retried: false,
                });
            }
        }
    };
    let why = match reply {
        Ok(Value::Array(gone)) => {
            // The peers that hold no approval anywhere in the cluster now: every other
            // node closes them (the shard that deauthorized the peer here closed its
            // own connections). Decided by the cluster's records, not this node's: a
            // peer id another entry approves at another node stays connected.
            for p in gone {
                if let Value::Bulk(p) = p {
                    let p = String::from_utf8_lossy(&p);
                    if !(told && p == peer) {
                        crate::signaling::remote::broadcast_revocation(link, &p);
                    }
                }
            }
            return Ok(());
        }
        Ok(Value::Error(e)) => e,
        Ok(other) => format!("unexpected reply {other:?}"),
        Err(e) => format!("{e:?}"),
    };
    // It may have run (no replica confirmed it): a peer left with no approval in the
    // cluster is closed at the other nodes now, as above; else when a retry or this
    // node's next connect ([`assert_all`]) removes it.
    let retried = sh.owned().borrow_mut().keep(entry, key, peer);
    if !told {
        announce_unapproved(link, &[peer]).await;
    }
    Err(Unremoved { why, retried })
}

/// Whether `peer`'s approval in the cluster names no entry but `entry` (or there is
/// none): its removal leaves the peer unapproved everywhere. `false` when Redis cannot
/// say (the removal's own reply decides then).
async fn last_approval(link: &ShardLink, peer: &str, entry: EntryId) -> bool {
    #[derive(serde::Deserialize)]
    struct Approval {
        e: Vec<String>,
    }
    let ask = vec![
        b"HGET".to_vec(),
        cluster_authz_key(link.prefix()),
        peer.as_bytes().to_vec(),
    ];
    let Ok(reply) = link.command(ask) else {
        return false;
    };
    let id = entry.to_string();
    match reply.await {
        Ok(Value::Nil) => true,
        Ok(Value::Bulk(v)) => {
            serde_json::from_slice::<Approval>(&v).is_ok_and(|a| a.e.iter().all(|e| *e == id))
        }
        _ => false,
    }
}

/// Tells the other nodes to close each of `peers` that holds no approval in the cluster
/// now (one `HMGET`): after a removal whose reply said nothing (not confirmed by a
/// replica). Best effort: nothing while Redis cannot be asked.
async fn announce_unapproved(link: &ShardLink, peers: &[&str]) {
    if peers.is_empty() {
        return;
    }
    let mut ask = vec![b"HMGET".to_vec(), cluster_authz_key(link.prefix())];
    ask.extend(peers.iter().map(|p| p.as_bytes().to_vec()));
    let Ok(reply) = link.command(ask) else { return };
    if let Ok(Value::Array(values)) = reply.await {
        for (p, v) in peers.iter().zip(values) {
            if matches!(v, Value::Nil) {
                crate::signaling::remote::broadcast_revocation(link, p);
            }
        }
    }
}

/// What [`revoke_away`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum RevokedAway {
    /// The approval is gone from the cluster (now, or by an earlier request); `last`:
    /// the peer holds no approval in the cluster now (its connections at every node are
    /// to close).
    Revoked { peer: String, last: bool },
    /// The revocation ran on the primary but no replica confirmed it (or its reply was
    /// lost and a second look found it done there): the token is refused there already,
    /// so the peer's connections are to close as for `Revoked`, but the answer is a 503
    /// (`why`): a failover before a replica has it would bring the approval back.
    Unconfirmed {
        peer: String,
        last: bool,
        why: String,
    },
    /// The cluster holds no approval of the entry.
    NotApproved,
    /// The directory names another node for it now.
    Moved,
    /// The entry's node holds its lease (it came back): ask it.
    Live,
}

/// Revokes approved entry `id`, held by `node`, which is not live ([`REVOKE_AWAY`],
/// durable: in Sentinel mode acknowledged by a replica). `Err` (503) while Redis cannot
/// take it.
pub async fn revoke_away<S: Shard>(sh: &S, id: EntryId, node: &str) -> Result<RevokedAway, Error> {
    let unavailable = |why: &str| {
        Error::unavailable(format!(
            "cluster unavailable: the revocation cannot be written to the cluster ({why}); retry"
        ))
    };
    let Some(link) = sh.cluster() else {
        return Ok(RevokedAway::NotApproved);
    };
    let mut keys = keys(link);
    keys.push(super::directory::entries_key(link));
    keys.push(nodes_key(link.prefix()));
    let args = vec![id.to_string().into_bytes(), node.as_bytes().to_vec()];
    let refused = |r: Refused| match r {
        Refused::Down(why) => unavailable(&why),
        Refused::Busy => unavailable("too many commands in flight"),
        Refused::Closed => unavailable("the link has stopped"),
    };
    let reply = link
        .eval_durable(REVOKE_AWAY.name, keys.clone(), args.clone())
        .map_err(refused)?
        .await;
    let why = match reply {
        Ok(Value::Array(v)) => return parsed(&v).ok_or_else(|| unavailable("unexpected reply")),
        Ok(Value::Error(e)) if e.starts_with("NOREPLICAS") => e,
        Ok(Value::Error(e)) => return Err(unavailable(&e)),
        Ok(other) => {
            tracing::error!(reply = ?other, "unexpected reply to REVOKE_AWAY");
            return Err(unavailable("unexpected reply"));
        }
        Err(e) => format!("{e:?}"),
    };
    // It may have run (on the primary, or before the connection failed): it answers the
    // same again if it did (and runs now if it did not), so a second look says whose
    // connections to close. Not durable either way: answered 503.
    let again = link
        .eval(REVOKE_AWAY.name, keys, args)
        .map_err(refused)?
        .await;
    match again {
        Ok(Value::Array(v)) => match parsed(&v) {
            Some(RevokedAway::Revoked { peer, last }) => {
                Ok(RevokedAway::Unconfirmed { peer, last, why })
            }
            Some(other) => Ok(other),
            None => Err(unavailable("unexpected reply")),
        },
        _ => Err(unavailable(&why)),
    }
}

/// [`REVOKE_AWAY`]'s reply (`None`: not one of its shapes).
fn parsed(v: &[Value]) -> Option<RevokedAway> {
    match v {
        [Value::Int(1), Value::Bulk(peer), Value::Bulk(last)] => Some(RevokedAway::Revoked {
            peer: String::from_utf8_lossy(peer).into_owned(),
            last: last == b"1",
        }),
        [Value::Int(0)] => Some(RevokedAway::NotApproved),
        [Value::Int(-1)] => Some(RevokedAway::Moved),
        [Value::Int(-2)] => Some(RevokedAway::Live),
        _ => {
            tracing::error!(reply = ?v, "unexpected reply to REVOKE_AWAY");
            None
        }
    }
}

/// What a shard asserts on connect: its approved entries' records and its revoked
/// entries' removals.
#[derive(Debug, Default, PartialEq)]
pub struct Assertions {
    /// Token key and grant of each approved entry (not one being saved: its approval
    /// writes, or undoes, its own records).
    pub approved: Vec<(String, DeviceGrant)>,
    /// Token key (if any), peer and id of each revoked entry still kept.
    pub revoked: Vec<Removal>,
}

/// What the entries of a shard assert ([`assert_all`]).
pub fn assertions(entries: &PairingStore) -> Assertions {
    let mut a = Assertions::default();
    for e in entries.list_all() {
        match e.status {
            Status::Approved if !e.saving => {
                // Not `Entry::device_grant`: a token used (or loaded from the store) is no
                // longer held in clear, and grants the same.
                if let Some(hash) = &e.token_hash {
                    let grant = DeviceGrant {
                        peer_id: e.peer_id.clone(),
                        role: crate::auth::DEVICE_TOKEN_ROLE.to_owned(),
                        mesh: e.mesh.clone(),
                        entry_id: e.id.value(),
                    };
                    a.approved.push((token_key(hash), grant));
                }
            }
            Status::Revoked => a.revoked.push(revoked_of(e)),
            _ => {}
        }
    }
    a
}

/// A revoked entry's records to remove from the cluster: token key (if any), peer, id.
type Removal = (Option<String>, String, EntryId);

fn revoked_of(e: &Entry) -> Removal {
    (
        e.token_hash.as_ref().map(token_key),
        e.peer_id.clone(),
        e.id,
    )
}

/// The link is up (a new generation): writes this shard's approvals again, then removes
/// its revoked entries' records, in batches of [`ASSERT_BATCH_MAX`]; each peer whose
/// last approval in the cluster a removal took is broadcast as revoked (its connections
/// at the other nodes close, 4001). Returns the approved entries that were revoked at
/// another node while this one was away ([`REVOKE_AWAY`]; not written again), for the
/// caller to revoke here; `None` when a batch was not taken (the link failed, a
/// replica did not confirm: the next `Up` asserts again). A failed batch does not hold
/// the others back.
pub async fn assert_all<S: Shard + Owns<RefCell<Unsynced>>>(
    sh: &S,
    a: Assertions,
) -> Option<Vec<EntryId>> {
    let Some(link) = sh.cluster() else {
        return Some(Vec::new());
    };
    let mut revoked_away = Vec::new();
    // The removals run even when an approval batch failed: nothing about approvals may
    // hold revocations back.
    let mut complete = true;
    for batch in a.approved.chunks(ASSERT_BATCH_MAX) {
        let args = batch.iter().flat_map(|(k, g)| approve_args(k, g)).collect();
        match send(sh, link, APPROVE.name, args).await {
            Some(Value::Int(_)) => {}
            Some(Value::Array(ids)) => revoked_away.extend(ids.iter().filter_map(|v| match v {
                Value::Bulk(id) => EntryId::parse(std::str::from_utf8(id).ok()?),
                _ => None,
            })),
            // The next batch all the same: one the script refuses must not hold the
            // others back (a link that is down fails them at once).
            other => {
                tracing::debug!(reply = ?other, "pairing approvals not asserted now");
                complete = false;
            }
        }
    }
    for batch in a.revoked.chunks(ASSERT_BATCH_MAX) {
        match remove(sh, link, batch).await {
            Ok(()) => {}
            // One removal the script refuses must not hold the others of its batch
            // back: one at a time (not on NOREPLICAS: a missing confirmation, or Redis's
            // own min-replicas-to-write, holds for every removal alike).
            Err(Some(Value::Error(e))) if batch.len() > 1 && !e.starts_with("NOREPLICAS") => {
                complete &= one_by_one(batch, |one| remove(sh, link, one)).await;
            }
            Err(_) => complete = false,
        }
    }
    // Not followed by another connect while the link stays up: the server runs the
    // removals again (`Unsynced::tick`), from the entries as they are then (an entry
    // revoked while an approval batch that failed went out included).
    if !complete && link.is_up() {
        sh.owned().borrow_mut().reassert_later();
    }
    complete.then_some(revoked_away)
}

/// Sends each of `batch` alone through `send` (after the script refused the batch):
/// `true` when all were taken. Stops at the second refusal while none was taken yet: a
/// refusal that holds for every removal (an ACL, say) costs two scripts, not one per
/// removal; a single bad one still lets the others through.
async fn one_by_one<'a, T, F, Fut>(batch: &'a [T], mut send: F) -> bool
where
    F: FnMut(&'a [T]) -> Fut,
    Fut: std::future::Future<Output = Result<(), Option<Value>>>,
{
    let (mut taken, mut refused) = (0, 0);
    for one in batch.chunks(1) {
        if send(one).await.is_ok() {
            taken += 1;
        } else {
            refused += 1;
            if taken == 0 && refused >= SPLIT_REFUSALS_MAX {
                return false;
            }
        }
    }
    refused == 0
}

/// Refusals of single removals, with none taken, after which a split batch is given up
/// ([`one_by_one`]): two in a row mean the refusal is not about one removal.
const SPLIT_REFUSALS_MAX: u32 = 2;

/// One [`UNAPPROVE`] of an assertion's revoked entries, waiting while the link is busy:
/// [`removed`].
async fn remove<S: Shard>(
    sh: &S,
    link: &ShardLink,
    batch: &[Removal],
) -> Result<(), Option<Value>> {
    let reply = send(sh, link, UNAPPROVE.name, unapprove_batch_args(batch)).await;
    removed(link, batch, reply, "late").await
}

/// The [`UNAPPROVE`] arguments of `batch`.
fn unapprove_batch_args(batch: &[Removal]) -> Vec<Vec<u8>> {
    batch
        .iter()
        .flat_map(|(k, p, id)| unapprove_args(k.as_deref(), p, *id))
        .collect()
}

/// What an [`UNAPPROVE`] of `batch` answered (`None`: not sent, the link down, or the
/// reply lost): `Ok` when Redis took it, the peers whose last approval went told to the
/// other nodes as revoked; else the reply, a peer that a write no replica confirmed may
/// have left unapproved told all the same ([`announce_unapproved`]). `when` is for the
/// log.
async fn removed(
    link: &ShardLink,
    batch: &[Removal],
    reply: Option<Value>,
    when: &str,
) -> Result<(), Option<Value>> {
    match reply {
        Some(Value::Array(gone)) => {
            for p in gone {
                if let Value::Bulk(p) = p {
                    let peer = String::from_utf8_lossy(&p);
                    tracing::info!(%peer, when, "a revocation reached the cluster");
                    crate::signaling::remote::broadcast_revocation(link, &peer);
                }
            }
            Ok(())
        }
        other => {
            tracing::debug!(reply = ?other, when, "pairing revocations not in the cluster yet");
            let peers: Vec<&str> = batch.iter().map(|(_, p, _)| p.as_str()).collect();
            announce_unapproved(link, &peers).await;
            Err(other)
        }
    }
}

/// One script of an assertion, waiting while the link's queue is full; `None` when the
/// link is down or the reply is lost.
async fn send<S: Shard>(
    sh: &S,
    link: &ShardLink,
    script: &str,
    args: Vec<Vec<u8>>,
) -> Option<Value> {
    loop {
        match link.eval_durable(script, keys(link), args.clone()) {
            Ok(r) => return r.await.ok(),
            Err(Refused::Busy) => sh.sleep(LINK_BUSY_RETRY).await,
            Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(mesh: Option<&str>) -> DeviceGrant {
        DeviceGrant {
            peer_id: "agent-0a1b2c".into(),
            role: "agent".into(),
            mesh: mesh.map(Into::into),
            entry_id: 0x0a0b_0c0d,
        }
    }

    #[test]
    fn a_split_batch_lets_the_others_through_and_gives_up_on_a_refusal_of_all() {
        fn now<F: std::future::Future>(f: F) -> F::Output {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match std::pin::pin!(f).poll(&mut cx) {
                std::task::Poll::Ready(v) => v,
                std::task::Poll::Pending => panic!("pending"),
            }
        }
        let run = |refuse: &dyn Fn(u32) -> bool| {
            let sent = std::cell::RefCell::new(Vec::new());
            let all = now(one_by_one(&[1u32, 2, 3, 4, 5][..], |one: &[u32]| {
                let id = one[0];
                sent.borrow_mut().push(id);
                let r = if refuse(id) {
                    Err(Some(Value::Error("ERR".into())))
                } else {
                    Ok(())
                };
                async move { r }
            }));
            (all, sent.into_inner())
        };
        assert_eq!(run(&|_| false), (true, vec![1, 2, 3, 4, 5]));
        // One bad removal, first or not: the others are sent.
        assert_eq!(run(&|id| id == 1), (false, vec![1, 2, 3, 4, 5]));
        assert_eq!(run(&|id| id == 3), (false, vec![1, 2, 3, 4, 5]));
        // Refused alike: two scripts, not five.
        assert_eq!(run(&|_| true), (false, vec![1, 2]));
    }

    #[test]
    fn arguments_keep_the_default_mesh_apart_from_an_empty_one() {
        let [k, g, p, id, has, m] = approve_args("ab12", &grant(None));
        assert_eq!(
            (&k[..], &p[..], &id[..]),
            (&b"ab12"[..], &b"agent-0a1b2c"[..], &b"0a0b0c0d"[..])
        );
        assert_eq!(
            crate::auth::tokens::grant_of_value(&g),
            Some(grant(None)),
            "the grant, never the token"
        );
        assert_eq!((&has[..], &m[..]), (&b"0"[..], &b""[..]));
        let [.., has, m] = approve_args("ab12", &grant(Some("")));
        assert_eq!((&has[..], &m[..]), (&b"1"[..], &b""[..]));
        let [k, p, id] = unapprove_args(None, "p", EntryId::from_u32(1));
        assert_eq!(
            (&k[..], &p[..], &id[..]),
            (&b""[..], &b"p"[..], &b"00000001"[..])
        );
    }
}
