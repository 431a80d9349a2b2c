//! The agent registry across the nodes of a cluster (`--cluster`, issue 25;
//! docs/ARCHITECTURE.md, "Cluster"). An agent is held by one node: the one it registers
//! and heartbeats with (its owner shard there, as on a node alone). That node mirrors the
//! agent's public record into Redis; the other nodes list it from there.
//!
//! * **The mirror**: one hash, `{prefix}agents`, agent id → `NODE "\n" RECORD`, where
//!   RECORD is exactly the JSON `GET /api/registry/agents` shows for the agent, and per
//!   node the ids of the entries naming it, a sorted set (`{prefix}ni:{node}`, score 0:
//!   ordered by the ids' bytes), so that its entries can be removed when its lease runs
//!   out ([`CLEANUP`]) and a list page reads only what it shows ([`PAGE`]). The agent store notes, sans-IO, which
//!   agents changed ([`MirrorNotes`](crate::registry::MirrorNotes), kept by the store when the shard is in a cluster); the
//!   shard's mirror task ([`run`]) writes them as scripts ([`PUT`], [`DEL`]). A steady
//!   heartbeat changes only `last_heartbeat`: it is written at most once per
//!   [`HEARTBEAT_WRITE_INTERVAL`](crate::registry::HEARTBEAT_WRITE_INTERVAL) per agent; any other change (a field, the health) is
//!   written at once.
//! * **Moves**: an agent that registers or heartbeats at another node is created there
//!   as on a node alone; that node's write replaces the mirror's entry and tells the
//!   node named before ([`MSG_MOVED`]), which drops its own copy (memory only: its
//!   durable binding stays, as on a node alone after a restart). Whether the agent may
//!   come is its cluster-wide binding's to say (`registry::bindings`); a write of a copy
//!   whose binding is no longer the cluster's does not take the entry, its node drops
//!   the copy instead.
//! * **Reads**: `GET /api/registry/agents` (and `/{id}`) at any node answer this node's
//!   agents and the mirror's entries of the other live nodes ([`PAGE`], [`AGENT`]: the
//!   nodes' leases checked on Redis's clock, as signaling's `PEERS`). An agent this node
//!   holds is answered from here, never twice. No list reads the whole mirror: a page
//!   reads the ids after its cursor from each live node's index, in bounded calls
//!   ([`MIRROR_PAGE_MAX`] ids, [`MIRROR_REPLY_BYTES_MAX`] bytes, at most
//!   [`MIRROR_PAGE_CALLS_MAX`] calls), so one Redis command costs O(live nodes × log N)
//!   plus a few hundred `HGET`s whatever the mirror's size.
//! * **Routes**: `GET /api/registry/route` at any node weighs the other live nodes' best
//!   candidate for the skill ([`ROUTE`]): each node keeps, per skill, a sorted set of its
//!   routable agents ordered as the route key (`{prefix}rs:{node}\n{skill}`, written by
//!   the same scripts as the entries, from each write's
//!   [`RouteEntry`](crate::registry::RouteEntry)), and one call reads the first member of
//!   each live node's set: O(live nodes × log N). The topology reads the other nodes'
//!   agents as a list does ([`elsewhere`]), within its own bound.
//! * **Operator deletes**: `DELETE /api/registry/agents/{id}` at a node that does not hold
//!   the agent removes the mirror's entry and tells the holding node ([`MSG_DELETE`]),
//!   which deletes the agent as its own `DELETE` would ([`DROP`]).
//! * **Faults**: while the link is down the lists hold this node's agents only, and the
//!   changes wait; when it is back the link has removed this node's entries (connect
//!   scripts) and every shard writes all its agents again ([`MirrorNotes`](crate::registry::MirrorNotes)). Such a
//!   write does not take an agent from another live node: the agent moved while this
//!   node was cut off, and this node drops its copy.
//!
//! The scripts name keys they are not passed (another node's index, the leases): a single
//! Redis (or a Sentinel-managed primary), not Redis Cluster.

use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use chatixia_cluster::{Refused, Script, ShardLink, Value};

use crate::registry::MirrorWrite as Write;
use crate::shard::{Owns, Shard};

/// Lua shared by the scripts that change an agent's entry (a macro: `Script::source` is
/// one literal). `unroute(routes, rs, nr, id, only)` removes agent `id` from the route
/// indexes its route entry (`{prefix}routes`, id → `{"n":NODE,"m":MEMBER,"s":[SKILL…]}`)
/// names, `{rs}{NODE}\n{SKILL}`, and the entry; a skill whose index is left empty leaves
/// the node's set of skills (`{nr}{NODE}`). With `only` (a node), only while the entry
/// names that node. O(the agent's skills × log N).
macro_rules! unroute_lua {
    () => {
        r#"
local function unroute(routes, rs, nr, id, only)
  local old = redis.call('HGET', routes, id)
  if not old then return end
  local o = cjson.decode(old)
  if only and o.n ~= only then return end
  for _, s in ipairs(o.s) do
    local k = rs .. o.n .. '\n' .. s
    redis.call('ZREM', k, o.m)
    if redis.call('EXISTS', k) == 0 then redis.call('SREM', nr .. o.n, s) end
  end
  redis.call('HDEL', routes, id)
end
"#
    };
}

/// Writes (or takes over) an agent's entry: `KEYS[1]` the mirror hash, `KEYS[2]` this
/// node's index of agents, `KEYS[3]` the nodes' leases, `KEYS[4]` the agents' bindings
/// (`registry::bindings`), `KEYS[5]` the route entries; `ARGV` agent id, this node, the
/// record's JSON, the channel prefix, the framed "moved" message, `1` when the agent
/// itself came to this node (a register or heartbeat) or `0` (a health change, a write
/// again after a reconnect), the prefix of the nodes' agent indexes, the agent's binding
/// here (`""`: none), its route entry (`""`: not routable, see
/// [`RouteEntry`](crate::registry::RouteEntry)), the prefix of the route indexes, the
/// prefix of the nodes' sets of skills. The agent's members in the route indexes are
/// replaced with the entry's (whichever node wrote them before). A `0`
/// write does not take the agent from another live node, and no write takes it while
/// the cluster's binding names another holder than this node's (a steady heartbeat
/// here raced a move that took the binding): it tells this node to drop its copy
/// instead. 1 when written.
pub const PUT: Script = Script {
    name: "chx_agent_put",
    source: concat!(
        unroute_lua!(),
        r#"
if ARGV[8] ~= '' then
  local b = redis.call('HGET', KEYS[4], ARGV[1])
  if b and b ~= ARGV[8] then
    redis.call('SPUBLISH', ARGV[4] .. ARGV[2], ARGV[5])
    return 0
  end
end
local old = redis.call('HGET', KEYS[1], ARGV[1])
local n = old and string.match(old, '^([^\n]*)\n')
if n and n ~= ARGV[2] then
  if ARGV[6] ~= '1' then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local score = redis.call('ZSCORE', KEYS[3], n)
    if score and tonumber(score) >= now then
      redis.call('SPUBLISH', ARGV[4] .. ARGV[2], ARGV[5])
      return 0
    end
  end
  redis.call('SPUBLISH', ARGV[4] .. n, ARGV[5])
  redis.call('ZREM', ARGV[7] .. n, ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '\n' .. ARGV[3])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
unroute(KEYS[5], ARGV[10], ARGV[11], ARGV[1], nil)
if ARGV[9] ~= '' then
  local e = cjson.decode(ARGV[9])
  for _, s in ipairs(e.s) do
    redis.call('ZADD', ARGV[10] .. ARGV[2] .. '\n' .. s, 0, e.m)
    redis.call('SADD', ARGV[11] .. ARGV[2], s)
  end
  redis.call('HSET', KEYS[5], ARGV[1], ARGV[9])
end
return 1
"#
    ),
};

/// Removes an agent's entry while it names this node: `KEYS[1]` the mirror hash,
/// `KEYS[2]` this node's index, `KEYS[3]` the route entries; `ARGV` agent id, this node,
/// the prefix of the route indexes, the prefix of the nodes' sets of skills. Its route
/// indexes' members go with it (while its route entry names this node).
pub const DEL: Script = Script {
    name: "chx_agent_del",
    source: concat!(
        unroute_lua!(),
        r#"
redis.call('ZREM', KEYS[2], ARGV[1])
unroute(KEYS[3], ARGV[3], ARGV[4], ARGV[1], ARGV[2])
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old and string.sub(old, 1, #ARGV[2] + 1) == ARGV[2] .. '\n' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"#
    ),
};

/// Removes every entry naming a node: `KEYS[1]` its index of agents, `KEYS[2]` the mirror
/// hash, `KEYS[3]` the route entries; `ARGV` the node, the prefix of the route indexes,
/// the prefix of the nodes' sets of skills. Its route indexes go whole (every skill of its
/// set), and the route entries naming it. Run where signaling's `CLEANUP` is: by the node
/// on every connect and at a graceful stop, by the others when its lease ran out.
pub const CLEANUP: Script = Script {
    name: "chx_agent_cleanup",
    source: concat!(
        unroute_lua!(),
        r#"
local n = 0
local p = ARGV[1] .. '\n'
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  unroute(KEYS[3], ARGV[2], ARGV[3], id, ARGV[1])
  local v = redis.call('HGET', KEYS[2], id)
  if v and string.sub(v, 1, #p) == p then
    redis.call('HDEL', KEYS[2], id)
    n = n + 1
  end
end
redis.call('DEL', KEYS[1])
for _, s in ipairs(redis.call('SMEMBERS', ARGV[3] .. ARGV[1])) do
  redis.call('DEL', ARGV[2] .. ARGV[1] .. '\n' .. s)
end
redis.call('DEL', ARGV[3] .. ARGV[1])
return n
"#
    ),
};

/// Most agent ids one [`PAGE`] call examines (and so most records it returns): a call
/// costs Redis O(live nodes × (log N + this)) plus this many `HGET`s, well under a
/// millisecond, so other nodes' commands interleave between the calls of one list. A
/// page of more (`--list-page-items-max` is 1000 by default) is several calls.
pub const MIRROR_PAGE_MAX: usize = 256;

/// Bytes of records one [`PAGE`] call returns: it stops before a record that would pass
/// this (one record is always returned), so a reply is at most this or one record (a
/// record is bounded by the writing node's `--agent-field-bytes-max` and
/// `--agent-list-items-max`), far under the link's `REPLY_BYTES_MAX` (64 MiB).
pub const MIRROR_REPLY_BYTES_MAX: usize = 1 << 20;

/// Most [`PAGE`] calls one list page makes. With [`MIRROR_PAGE_MAX`] records a call,
/// 64 calls are 16,384 records, beyond any page of the default limits (1000 items,
/// 4 MiB); a page that needs more (a larger `--list-page-items-max`) ends early with
/// `x-next-cursor` at the last agent read, as a page cut by its byte bound does.
pub const MIRROR_PAGE_CALLS_MAX: usize = 64;

/// A bounded slice of the other live nodes' records after a cursor, in `agent_id`
/// order: `KEYS[1]` the mirror hash, `KEYS[2]` the leases; `ARGV` this node, the prefix
/// of the nodes' sorted indexes of agent ids (`{prefix}ni:{node}`, score 0, so ordered
/// by the ids' bytes), the `ZRANGEBYLEX` minimum (`-`, or `(` and the cursor's id), how
/// many ids to examine at most ([`MIRROR_PAGE_MAX`]), the byte budget
/// ([`MIRROR_REPLY_BYTES_MAX`]). Liveness as signaling's `PEERS` (the lease on Redis's
/// clock, as of this call). Reads at most that many ids from each live node's index,
/// merges them by bytes (Lua's `<` on strings follows the server's locale, so a byte
/// comparison of its own) and takes each id's entry while it names that node. Returns
/// `[done, reached, record…]`: `done` 1 when every id after the cursor was examined,
/// else 0 and `reached`, the last id examined (every id up to it was: the next call
/// starts after it).
pub const PAGE: Script = Script {
    name: "chx_agents_page",
    source: r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local want = tonumber(ARGV[4])
local budget = tonumber(ARGV[5])
local lists = {}
local more = false
for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], now, '+inf')) do
  if n ~= ARGV[1] then
    local ids = redis.call('ZRANGEBYLEX', ARGV[2] .. n, ARGV[3], '+', 'LIMIT', 0, want)
    if #ids >= want then more = true end
    if #ids > 0 then lists[#lists + 1] = {n = n, ids = ids, at = 1} end
  end
end
local function before(a, b)
  local k = math.min(#a, #b)
  for i = 1, k do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local out = {0, ''}
local bytes = 0
local taken = 0
local cut = false
while taken < want do
  local best = nil
  for _, l in ipairs(lists) do
    local id = l.ids[l.at]
    if id and (best == nil or before(id, best.ids[best.at])) then best = l end
  end
  if best == nil then break end
  local id = best.ids[best.at]
  local v = redis.call('HGET', KEYS[1], id)
  local p = best.n .. '\n'
  if v and string.sub(v, 1, #p) == p then
    local rec = string.sub(v, #p + 1)
    if #out > 2 and bytes + #rec > budget then
      cut = true
      break
    end
    out[#out + 1] = rec
    bytes = bytes + #rec
  end
  best.at = best.at + 1
  taken = taken + 1
  out[2] = id
end
if not cut and not more then
  local left = false
  for _, l in ipairs(lists) do
    if l.ids[l.at] then left = true end
  end
  if not left then out[1] = 1 end
end
return out
"#,
};

/// One agent's record when another live node holds it: `KEYS` as [`PAGE`]; `ARGV`
/// agent id, this node. The JSON or nil.
pub const AGENT: Script = Script {
    name: "chx_agent",
    source: r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return false end
local n = string.match(v, '^([^\n]*)\n')
if not n or n == ARGV[2] then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[2], n)
if score and tonumber(score) >= now then return string.sub(v, #n + 2) end
return false
"#,
};

/// Most members of one node's route index of a skill that [`ROUTE`] examines: the first
/// that checks out (its route entry and mirror entry still name that node) is that node's
/// best candidate. The writes keep the indexes exact (every script that changes an entry
/// changes its members in the same step), so the first member always checks out and this
/// bound is a guard, not a search: a node whose first this-many members did not check out
/// offers no candidate to that call.
pub const ROUTE_PROBE_MAX: usize = 8;

/// The best route for a skill among the agents the other live nodes hold (`GET
/// /api/registry/route` in a cluster): `KEYS[1]` the mirror hash, `KEYS[2]` the leases,
/// `KEYS[3]` the route entries; `ARGV` this node, the prefix of the route indexes, the
/// skill, [`ROUTE_PROBE_MAX`].
///
/// Why a sorted set per node and skill (`{prefix}rs:{NODE}\n{SKILL}`, score 0, members
/// `time_key(registered_at, id)`, so that the first member in byte order is the node's
/// smallest [`AgentRecord::route_key`](crate::registry::AgentRecord::route_key)) rather
/// than one per skill: the read takes the first member of each live node's index but this
/// node's (whose agents the shards answer), O(live nodes × log N), and never walks past
/// the entries of this node or of a node whose lease ran out (not yet removed by
/// [`CLEANUP`]), which a single index per skill would have to skip, one by one. A node id
/// has no `\n` (`--node-id`), so the keys do not collide. Only routable agents are
/// indexed (`active`, as the holding node's health tick last said, and the skill listed).
/// Liveness as [`PAGE`]'s. Returns `[member, record]` of the smallest member, or an empty
/// array.
pub const ROUTE: Script = Script {
    name: "chx_agent_route",
    source: r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local probe = tonumber(ARGV[4])
local function before(a, b)
  local k = math.min(#a, #b)
  for i = 1, k do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local best, rec = nil, nil
for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], now, '+inf')) do
  if n ~= ARGV[1] then
    local p = n .. '\n'
    for _, m in ipairs(redis.call('ZRANGE', ARGV[2] .. p .. ARGV[3], 0, probe - 1)) do
      local id = string.sub(m, 22)
      local e = redis.call('HGET', KEYS[3], id)
      local v = redis.call('HGET', KEYS[1], id)
      if e and v and string.sub(v, 1, #p) == p then
        local o = cjson.decode(e)
        if o.n == n and o.m == m then
          if best == nil or before(m, best) then
            best = m
            rec = string.sub(v, #p + 1)
          end
          break
        end
      end
    end
  end
end
if best then return {best, rec} end
return {}
"#,
};

/// An operator's delete of an agent another node holds: `KEYS[1]` the mirror hash,
/// `KEYS[2]` the bindings (`registry::bindings`), `KEYS[3]` the route entries; `ARGV`
/// agent id, this node, the channel prefix, the framed "delete" message, the prefix of
/// the nodes' agent indexes, the prefix of the route indexes, the prefix of the nodes'
/// sets of skills. Removes the entry, its route indexes' members and the agent's cluster
/// binding and tells its node; the node's name, or nil when no other node held it.
pub const DROP: Script = Script {
    name: "chx_agent_drop",
    source: concat!(
        unroute_lua!(),
        r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return false end
local n = string.match(v, '^([^\n]*)\n')
if not n or n == ARGV[2] then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', ARGV[5] .. n, ARGV[1])
unroute(KEYS[3], ARGV[6], ARGV[7], ARGV[1], nil)
redis.call('SPUBLISH', ARGV[3] .. n, ARGV[4])
return n
"#
    ),
};

/// The scripts the registry runs (loaded by the link on every connect).
pub fn scripts() -> Vec<Script> {
    vec![PUT, DEL, CLEANUP, PAGE, AGENT, DROP, ROUTE]
}

/// What a node runs on every connect (before its shards write their agents again) and
/// at a graceful stop: its entries go ([`CLEANUP`]). `(script, keys, args)`.
pub fn on_connect(prefix: &str, node: &str) -> (&'static str, Vec<Vec<u8>>, Vec<Vec<u8>>) {
    (
        CLEANUP.name,
        vec![
            node_agents_key(prefix, node),
            agents_key(prefix),
            routes_key(prefix),
        ],
        vec![
            node.as_bytes().to_vec(),
            route_index_prefix(prefix),
            node_skills_prefix(prefix),
        ],
    )
}

/// Nodes whose lease ran out: their mirror entries go (the lease entry itself is
/// removed by signaling's `forget_nodes`).
pub fn forget_nodes(link: &ShardLink, gone: &[String]) {
    let prefix = link.prefix().to_string();
    for node in gone {
        let (script, keys, args) = on_connect(&prefix, node);
        if let Err(e) = link.eval_nowait(script, keys, args) {
            tracing::debug!(node = %node, error = ?e, "gone node's agents not removed now");
        }
    }
}

/// The mirror hash.
fn agents_key(prefix: &str) -> Vec<u8> {
    [prefix.as_bytes(), b"agents"].concat()
}

/// The prefix of the nodes' sorted indexes of agent ids.
fn node_agents_prefix(prefix: &str) -> Vec<u8> {
    [prefix.as_bytes(), b"ni:"].concat()
}

/// The agent ids whose entries name a node, a sorted set (score 0: ordered by the ids'
/// bytes), written with each entry: what [`CLEANUP`] removes and [`PAGE`] reads.
fn node_agents_key(prefix: &str, node: &str) -> Vec<u8> {
    [&node_agents_prefix(prefix)[..], node.as_bytes()].concat()
}

/// The route entries: agent id → `{"n":NODE,"m":MEMBER,"s":[SKILL…]}`, which route indexes
/// hold the agent (what [`PUT`], [`DEL`], [`DROP`] and [`CLEANUP`] remove).
fn routes_key(prefix: &str) -> Vec<u8> {
    [prefix.as_bytes(), b"routes"].concat()
}

/// The prefix of the route indexes, `{prefix}rs:{NODE}\n{SKILL}`: sorted sets (score 0)
/// of the members (`time_key(registered_at, id)`) of a node's routable agents with that
/// skill ([`ROUTE`]).
fn route_index_prefix(prefix: &str) -> Vec<u8> {
    [prefix.as_bytes(), b"rs:"].concat()
}

/// The prefix of the nodes' sets of skills that have a route index (`{prefix}nr:{NODE}`):
/// what [`CLEANUP`] removes whole.
fn node_skills_prefix(prefix: &str) -> Vec<u8> {
    [prefix.as_bytes(), b"nr:"].concat()
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
/// listed in `server::cluster`): the agent (the route key) moved to another node, drop
/// this node's copy; an operator deleted the agent at another node, delete it here.
pub const MSG_MOVED: u8 = b'm';
pub const MSG_DELETE: u8 = b'd';

/// A message as the link frames it on a channel (`chatixia_cluster::frame`:
/// `[u16 key length][key][body]`), the route key being the agent (the receiving node
/// hands it to the agent's owner shard). The empty id `""` is a key like any other (the
/// link's own messages use a length no key has, `chatixia_cluster::LINK_KEY_LEN`). An
/// agent id is bounded by `--agent-field-bytes-max`, far below the longest key
/// (`ROUTE_KEY_BYTES_MAX`); a longer one would be cut (and reach no one).
fn framed(route_key: &[u8], kind: u8) -> Vec<u8> {
    let key = &route_key[..route_key.len().min(chatixia_cluster::ROUTE_KEY_BYTES_MAX)];
    chatixia_cluster::frame(key, &[kind]).unwrap_or_default()
}

/// The link is up again (a new generation): the link removed this node's entries on
/// connect; this shard writes all its agents again.
pub fn on_up(store: &std::cell::RefCell<crate::registry::AgentStore>) {
    if let Some(m) = store.borrow_mut().mirror_mut() {
        m.assert_bindings = true;
        m.ask_resync();
    }
}

/// The link is down: what is noted is written again (all of it) once it is back.
pub fn on_down(store: &std::cell::RefCell<crate::registry::AgentStore>) {
    if let Some(m) = store.borrow_mut().mirror_mut() {
        m.resync = true;
    }
}

/// Why an inbound message was not understood (a bug or another version: logged, dropped).
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

/// What a message from another node asks of the agent's owner shard here.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// The agent moved to another node: drop this node's copy
    /// ([`AgentStore::drop_moved`](crate::registry::AgentStore::drop_moved)).
    Moved(String),
    /// An operator deleted the agent at another node: delete it as
    /// `DELETE /api/registry/agents/{id}` does (`registry::api::delete`).
    Delete(String),
}

/// Reads a message this node's channel delivered for agent `route_key`.
pub fn on_message(route_key: &[u8], body: &[u8]) -> Result<Inbound, Malformed> {
    let id = std::str::from_utf8(route_key).map_err(|_| Malformed)?;
    match body {
        [MSG_MOVED] => Ok(Inbound::Moved(id.to_owned())),
        [MSG_DELETE] => Ok(Inbound::Delete(id.to_owned())),
        _ => Err(Malformed),
    }
}

/// What [`elsewhere`] read of the other live nodes' agents after a cursor.
#[derive(Debug, Default)]
pub struct Elsewhere {
    /// Their records (the list's JSON, with their ids), in `agent_id` order.
    pub records: Vec<(String, Vec<u8>)>,
    /// `None`: every agent after the cursor was read. `Some(id)`: those up to `id` (and
    /// no further): a page merged with them ends at `id` at the latest.
    pub reached: Option<String>,
}

/// The records of the agents the other live nodes hold whose ids come after `after`, in
/// order: at least `want` of them or `bytes` of records, unless fewer are left. Read by
/// bounded [`PAGE`] calls ([`MIRROR_PAGE_MAX`] ids, [`MIRROR_REPLY_BYTES_MAX`] bytes
/// each, at most [`MIRROR_PAGE_CALLS_MAX`]), each a short script, so that other
/// commands run between them. Empty on a node alone and while the link is down (the
/// list then holds this node's agents only); a call that fails after the first ends
/// the read where it got (`reached`).
pub async fn elsewhere<S: Shard>(
    sh: &S,
    after: Option<&str>,
    want: usize,
    bytes: usize,
) -> Elsewhere {
    let mut got = Elsewhere::default();
    let Some(link) = sh.cluster() else {
        return got;
    };
    let mut from: Option<String> = after.map(str::to_owned);
    let mut size = 0usize;
    for call in 0..MIRROR_PAGE_CALLS_MAX {
        let min = match &from {
            Some(id) => [b"(".as_slice(), id.as_bytes()].concat(),
            None => b"-".to_vec(),
        };
        let n = want
            .saturating_sub(got.records.len())
            .clamp(1, MIRROR_PAGE_MAX);
        let budget = bytes.saturating_sub(size).clamp(1, MIRROR_REPLY_BYTES_MAX);
        let reply = match link.eval(
            PAGE.name,
            vec![agents_key(link.prefix()), nodes_key(link.prefix())],
            vec![
                link.node_id().as_bytes().to_vec(),
                node_agents_prefix(link.prefix()),
                min,
                n.to_string().into_bytes(),
                budget.to_string().into_bytes(),
            ],
        ) {
            Ok(r) => r.await.map_err(|e| format!("{e:?}")),
            Err(e) => Err(format!("{e:?}")),
        };
        let items = match reply {
            Ok(Value::Array(items)) if items.len() >= 2 => items,
            other => {
                tracing::debug!(reply = ?other, "agent list without (the rest of) the other nodes");
                // The first call: the list holds this node's agents; a later one: it
                // ends where the read got.
                got.reached = if call == 0 { None } else { from };
                return got;
            }
        };
        let mut items = items.into_iter();
        let done = matches!(items.next(), Some(Value::Int(1)));
        let reached = match items.next() {
            Some(Value::Bulk(id)) => String::from_utf8(id).ok(),
            _ => None,
        };
        for v in items {
            if let Value::Bulk(json) = v {
                if let Some(id) = id_of(&json) {
                    size = size.saturating_add(json.len());
                    got.records.push((id, json));
                }
            }
        }
        if done {
            got.reached = None;
            return got;
        }
        // Not done: the script examined at least one id (`reached`).
        let Some(reached) = reached else {
            got.reached = from;
            return got;
        };
        from = Some(reached);
        if got.records.len() >= want || size >= bytes {
            break;
        }
    }
    got.reached = from;
    got
}

/// The record (the list's JSON) of agent `id` when another live node holds it
/// ([`AGENT`]); `None` on a node alone and while the link is down.
pub async fn one_elsewhere<S: Shard>(sh: &S, id: &str) -> Option<Vec<u8>> {
    let link = sh.cluster()?;
    let reply = link
        .eval(
            AGENT.name,
            vec![agents_key(link.prefix()), nodes_key(link.prefix())],
            vec![id.as_bytes().to_vec(), link.node_id().as_bytes().to_vec()],
        )
        .ok()?
        .await;
    match reply {
        Ok(Value::Bulk(json)) if id_of(&json).is_some() => Some(json),
        _ => None,
    }
}

/// An operator's delete of agent `id`, which no shard here holds: removes the mirror's
/// entry and tells the node that holds it ([`DROP`]). That node's name, or `None` (no
/// other node holds it, a node alone, the link down).
pub async fn drop_elsewhere<S: Shard>(sh: &S, id: &str) -> Option<String> {
    let link = sh.cluster()?;
    let prefix = link.prefix();
    let reply = link
        .eval(
            DROP.name,
            vec![
                agents_key(prefix),
                crate::registry::bindings::bindings_key(prefix),
                routes_key(prefix),
            ],
            vec![
                id.as_bytes().to_vec(),
                link.node_id().as_bytes().to_vec(),
                channel_prefix(prefix),
                framed(id.as_bytes(), MSG_DELETE),
                node_agents_prefix(prefix),
                route_index_prefix(prefix),
                node_skills_prefix(prefix),
            ],
        )
        .ok()?
        .await;
    match reply {
        Ok(Value::Bulk(node)) => String::from_utf8(node).ok(),
        _ => None,
    }
}

/// The best route for `skill` among the agents the other live nodes hold ([`ROUTE`]): its
/// member (`time_key(registered_at, id)`, comparable with this node's best) and its
/// record (the list's JSON). `None` on a node alone, while the link is down, and when no
/// other node holds a routable agent with the skill.
pub async fn route_elsewhere<S: Shard>(sh: &S, skill: &str) -> Option<(String, Vec<u8>)> {
    let link = sh.cluster()?;
    let prefix = link.prefix();
    let reply = link
        .eval(
            ROUTE.name,
            vec![agents_key(prefix), nodes_key(prefix), routes_key(prefix)],
            vec![
                link.node_id().as_bytes().to_vec(),
                route_index_prefix(prefix),
                skill.as_bytes().to_vec(),
                ROUTE_PROBE_MAX.to_string().into_bytes(),
            ],
        )
        .ok()?
        .await;
    match reply {
        Ok(Value::Array(items)) => match <[Value; 2]>::try_from(items) {
            Ok([Value::Bulk(member), Value::Bulk(json)]) if id_of(&json).is_some() => {
                Some((String::from_utf8(member).ok()?, json))
            }
            _ => None,
        },
        other => {
            tracing::debug!(reply = ?other, "route without the other nodes");
            None
        }
    }
}

/// A route entry as [`PUT`] stores it: `{"n":NODE,"m":MEMBER,"s":[SKILL…]}`.
fn route_value(node: &str, r: &crate::registry::RouteEntry) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Stored<'a> {
        n: &'a str,
        #[serde(flatten)]
        r: &'a crate::registry::RouteEntry,
    }
    wire::json::json_vec(&Stored { n: node, r })
}

/// The agent id of a mirrored record (`None`: not a record; dropped).
fn id_of(json: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        agent_id: String,
    }
    serde_json::from_slice::<Id>(json).ok().map(|i| i.agent_id)
}

/// How long the mirror task waits before trying again when the link's queue for this
/// shard is full (`Refused::Busy`): a turn of the link's pipeline.
const LINK_BUSY_RETRY: Duration = Duration::from_millis(1);

/// The shard's mirror task (in a cluster): writes what the agent store noted, and all
/// its agents again after the link came back. Runs until the shard stops.
pub async fn run<S>(sh: std::rc::Rc<S>)
where
    S: Shard + Owns<std::cell::RefCell<crate::registry::AgentStore>> + 'static,
{
    let store: &std::cell::RefCell<crate::registry::AgentStore> = sh.owned();
    loop {
        // Wait for notes, and for the link to be up.
        poll_fn(|cx| {
            let mut st = store.borrow_mut();
            let Some(m) = st.mirror_mut() else {
                return Poll::Pending;
            };
            let up = sh.cluster().is_some_and(ShardLink::is_up);
            if !m.is_pending() || !up {
                m.set_waker(cx.waker());
                return Poll::Pending;
            }
            Poll::Ready(())
        })
        .await;
        let Some(link) = sh.cluster() else { return };
        let assert = store
            .borrow_mut()
            .mirror_mut()
            .is_some_and(|m| std::mem::take(&mut m.assert_bindings));
        if assert && !crate::registry::bindings::assert_all(&*sh, store, link).await {
            // The link failed meanwhile: its next `Up` asks again.
            continue;
        }
        let lost = store
            .borrow_mut()
            .mirror_mut()
            .is_some_and(|m| std::mem::take(&mut m.lost));
        if lost {
            remove_stale(&*sh, store, link).await;
        }
        let writes = store.borrow_mut().mirror_writes(sh.now());
        send(&*sh, store, link, writes).await;
    }
}

/// After a refused note: the entries of this node's index that this shard owns and no
/// longer holds are removed.
async fn remove_stale<S: Shard>(
    sh: &S,
    store: &std::cell::RefCell<crate::registry::AgentStore>,
    link: &ShardLink,
) {
    let key = node_agents_key(link.prefix(), link.node_id());
    let again = || {
        if let Some(m) = store.borrow_mut().mirror_mut() {
            m.lost = true;
        }
    };
    let Ok(reply) = link.command(vec![b"ZRANGE".to_vec(), key, b"0".to_vec(), b"-1".to_vec()])
    else {
        return again();
    };
    let Ok(Value::Array(ids)) = reply.await else {
        return again();
    };
    let stale: Vec<Write> = ids
        .into_iter()
        .filter_map(|v| match v {
            Value::Bulk(id) => String::from_utf8(id).ok(),
            _ => None,
        })
        .filter(|id| sh.shard_of(id.as_bytes()) == sh.id() && store.borrow().get(id).is_none())
        .map(|id| Write::Del { id })
        .collect();
    send(sh, store, link, stale).await;
}

/// Sends `writes` through the link in order, waiting while its queue is full; when the
/// link goes down, the rest is written again (all agents) once it is back.
async fn send<S: Shard>(
    sh: &S,
    store: &std::cell::RefCell<crate::registry::AgentStore>,
    link: &ShardLink,
    writes: Vec<Write>,
) {
    let prefix = link.prefix();
    let node = link.node_id();
    let mut writes = std::collections::VecDeque::from(writes);
    while let Some(w) = writes.pop_front() {
        let sent = match &w {
            Write::Put {
                id,
                json,
                came,
                bound,
                route,
            } => link.eval_nowait(
                PUT.name,
                vec![
                    agents_key(prefix),
                    node_agents_key(prefix, node),
                    nodes_key(prefix),
                    crate::registry::bindings::bindings_key(prefix),
                    routes_key(prefix),
                ],
                vec![
                    id.as_bytes().to_vec(),
                    node.as_bytes().to_vec(),
                    json.clone(),
                    channel_prefix(prefix),
                    framed(id.as_bytes(), MSG_MOVED),
                    if *came { b"1".to_vec() } else { b"0".to_vec() },
                    node_agents_prefix(prefix),
                    bound
                        .as_ref()
                        .map(crate::registry::bindings::owner_value)
                        .unwrap_or_default(),
                    route
                        .as_ref()
                        .map(|r| route_value(node, r))
                        .unwrap_or_default(),
                    route_index_prefix(prefix),
                    node_skills_prefix(prefix),
                ],
            ),
            Write::Del { id } => link.eval_nowait(
                DEL.name,
                vec![
                    agents_key(prefix),
                    node_agents_key(prefix, node),
                    routes_key(prefix),
                ],
                vec![
                    id.as_bytes().to_vec(),
                    node.as_bytes().to_vec(),
                    route_index_prefix(prefix),
                    node_skills_prefix(prefix),
                ],
            ),
        };
        match sent {
            Ok(()) => {}
            Err(Refused::Busy) => {
                writes.push_front(w);
                sh.sleep(LINK_BUSY_RETRY).await;
            }
            Err(Refused::Down(_) | Refused::Closed) => {
                // Deletes not sent leave entries behind unless removed after the resync.
                let dels = std::iter::once(&w)
                    .chain(writes.iter())
                    .any(|w| matches!(w, Write::Del { .. }));
                if let Some(m) = store.borrow_mut().mirror_mut() {
                    m.resync = true;
                    m.lost |= dels;
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_their_framing() {
        let f = framed(b"agent-1", MSG_MOVED);
        assert_eq!(&f[..2], &7u16.to_be_bytes());
        assert_eq!(&f[2..9], b"agent-1");
        assert_eq!(
            on_message(b"agent-1", &f[9..]),
            Ok(Inbound::Moved("agent-1".into()))
        );
        assert_eq!(
            on_message(b"a", &[MSG_DELETE]),
            Ok(Inbound::Delete("a".into()))
        );
        assert_eq!(on_message(b"a", b"mx"), Err(Malformed));
        assert_eq!(on_message(b"\xff", &[MSG_MOVED]), Err(Malformed));
        // The empty id is framed as a key of length 0, never as the link's own marker.
        let f = framed(b"", MSG_MOVED);
        assert_eq!(f, [0, 0, MSG_MOVED]);
        assert_ne!(
            u16::from_be_bytes([f[0], f[1]]),
            chatixia_cluster::LINK_KEY_LEN
        );
    }

    #[test]
    fn ids_come_from_the_records() {
        assert_eq!(id_of(br#"{"agent_id":"a","x":1}"#).as_deref(), Some("a"));
        assert_eq!(id_of(b"nope"), None);
    }
}
