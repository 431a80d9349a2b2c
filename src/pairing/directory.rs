//! Which node holds an invite code or a pairing entry (`--cluster`, issue 25;
//! docs/PROTOCOL.md §5.10). Codes and entries stay at the node that made them (its data
//! directory, its shards); Redis only says where they are, so that any node can send a
//! request about one to its node (`shard::nodes`, `server::forward`):
//!
//! * `{prefix}pc:{code}` → the issuing node, expiring with the code (`PX`): written
//!   durably before `generate-code` answers, deleted when the code is redeemed.
//! * `{prefix}pe` (a hash): entry id → the node that took its `pair`: written durably
//!   before `pair` answers, deleted when the entry is retired (`--pairing-retention`).
//!
//! Bounded: one key per live code of every node (each node's code store bound) and one
//! field per kept entry of every node (`--pair-entries-max` per shard). A node gone for
//! good leaves its fields until an operator removes them; requests about its entries are
//! answered 503 naming it.

use chatixia_cluster::{Refused, Script, ShardLink, Value};

use super::{Code, EntryId};
use crate::shard::{Error, Shard};

/// Notes codes' node: `ARGV[1]` the node, then pairs of a code's key (`KEYS`, in order)
/// and its lifetime in ms. A code another node noted is left to it (codes are drawn at
/// each node: six digits collide across nodes): returns the keys that were taken.
pub const NOTE_CODE: Script = Script {
    name: "chx_pair_note_code",
    source: r#"
local taken = {}
for i, k in ipairs(KEYS) do
  local cur = redis.call('GET', k)
  if cur and cur ~= ARGV[1] then
    taken[#taken + 1] = k
  else
    redis.call('SET', k, ARGV[1], 'PX', ARGV[i + 1])
  end
end
return taken
"#,
};

/// Notes entries' node: `KEYS[1]` the entries hash; `ARGV[1]` this node, `ARGV[2]` how
/// many live nodes follow, then the live nodes, then the entry ids. An id is noted as
/// this node's unless another *live* node holds it (entry ids are 32 random bits, drawn
/// at each node: two nodes can draw the same one); a note naming a node that is not
/// live (gone, or this node under its former `--node-id`) is taken over. Returns the ids
/// another live node holds.
pub const NOTE_ENTRY: Script = Script {
    name: "chx_pair_note_entry",
    source: r#"
local me, n = ARGV[1], tonumber(ARGV[2])
local live = {}
for i = 3, 2 + n do live[ARGV[i]] = true end
local taken = {}
for i = 3 + n, #ARGV do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if cur and cur ~= me and live[cur] then
    taken[#taken + 1] = ARGV[i]
  elseif cur ~= me then
    redis.call('HSET', KEYS[1], ARGV[i], me)
  end
end
return taken
"#,
};

/// Entry ids noted per [`NOTE_ENTRY`] call when a shard notes all its entries again
/// (after every connect): one short script at a time.
pub const NOTE_ENTRIES_BATCH_MAX: usize = 512;

/// Counts a wrong six-digit guess in its bucket across the cluster (the guessing
/// guard's per-code budget, `pairing::guard`, made cluster-wide): `KEYS[1]` the bucket's
/// count (`{prefix}pg:{bucket}`, living a code's lifetime from its first guess), `KEYS[2]`
/// its burn note (`{prefix}pb:{bucket}`); `ARGV[1]` the budget
/// (`--pair-bucket-wrong-guesses-max`), `ARGV[2]` a code's lifetime in ms, `ARGV[3]` now
/// (ns). Once the budget is spent the count starts over and the burn note holds the time:
/// every live six-digit code of the bucket issued before it, at any node, is burnt when
/// it is next redeemed. Returns 1 when it burnt.
pub const WRONG_GUESS: Script = Script {
    name: "chx_pair_wrong_guess",
    source: "local n = redis.call('INCR', KEYS[1]) \
             if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end \
             if n >= tonumber(ARGV[1]) then \
               redis.call('DEL', KEYS[1]) \
               redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2]) \
               return 1 \
             end \
             return 0",
};

/// Counts a wrong code from a client address across the cluster (the daily budget of
/// `--pair-wrong-guesses-per-address-max`, made cluster-wide): `KEYS[1]` the address's
/// count (`{prefix}pa:{client key}`), `ARGV[1]` the window in ms (24 h, from the first
/// wrong code). Returns the count.
pub const ADDRESS_WRONG: Script = Script {
    name: "chx_pair_address_wrong",
    source: "local n = redis.call('INCR', KEYS[1]) \
             if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end \
             return n",
};

/// The window of the per-address budget of wrong codes (as `pairing::budget`'s).
const ADDRESS_WINDOW_MS: u64 = 24 * 3600 * 1000;

/// The directory's scripts (loaded by the link on every connect).
pub fn scripts() -> Vec<Script> {
    vec![NOTE_CODE, NOTE_ENTRY, WRONG_GUESS, ADDRESS_WRONG]
}

fn address_key(link: &ShardLink, client_key: &str) -> Vec<u8> {
    [link.prefix().as_bytes(), b"pa:", client_key.as_bytes()].concat()
}

/// In a cluster, whether the client address `client_key` has tried `max` wrong codes
/// within 24 h at any node ([`ADDRESS_WRONG`]): `Some(seconds until its window ends)`.
/// `None` on a node alone and while Redis cannot be asked (each node's own budget still
/// applies), so N nodes never give a guesser N budgets while Redis is up.
pub async fn address_spent<S: Shard>(sh: &S, client_key: &str, max: u32) -> Option<u64> {
    let link = sh.cluster()?;
    let key = address_key(link, client_key);
    let n = match link
        .command(vec![b"GET".to_vec(), key.clone()])
        .ok()?
        .await
        .ok()?
    {
        Value::Bulk(v) => std::str::from_utf8(&v).ok()?.parse::<u64>().ok()?,
        _ => return None,
    };
    if n < u64::from(max) {
        return None;
    }
    let ttl = match link.command(vec![b"PTTL".to_vec(), key]).ok()?.await.ok()? {
        Value::Int(ms) if ms > 0 => (ms as u64).div_ceil(1000),
        _ => 1,
    };
    Some(ttl)
}

/// Counts a wrong code from `client_key` across the cluster (best effort, not awaited).
pub fn address_wrong<S: Shard>(sh: &S, client_key: &str) {
    let Some(link) = sh.cluster() else { return };
    let _ = link.eval_nowait(
        ADDRESS_WRONG.name,
        vec![address_key(link, client_key)],
        vec![ADDRESS_WINDOW_MS.to_string().into_bytes()],
    );
}

fn code_key(link: &ShardLink, code: &Code) -> Vec<u8> {
    [
        link.prefix().as_bytes(),
        b"pc:",
        code.to_string().as_bytes(),
    ]
    .concat()
}

/// The entries' directory: entry id → the node that holds it.
pub fn entries_key(link: &ShardLink) -> Vec<u8> {
    [link.prefix().as_bytes(), b"pe"].concat()
}

fn unavailable(what: &str, why: impl std::fmt::Display) -> Error {
    Error::unavailable(format!(
        "cluster unavailable: the {what} cannot be noted in the cluster ({why}); retry"
    ))
}

/// Notes that this node issued `code`, live for `ttl_ms`, before the code is answered:
/// `Ok(true)`; `Ok(false)` when another node issued the same code and it is still live
/// (draw another: a code names one invite in the cluster).
pub async fn note_code<S: Shard>(sh: &S, code: &Code, ttl_ms: u64) -> Result<bool, Error> {
    let Some(link) = sh.cluster() else {
        return Ok(true);
    };
    let args = vec![
        link.node_id().as_bytes().to_vec(),
        ttl_ms.max(1).to_string().into_bytes(),
    ];
    let keys = vec![code_key(link, code)];
    note_one(link, "invite code", NOTE_CODE.name, keys, args).await
}

/// Runs a note script durably for one code or entry: `Ok(true)` when noted, `Ok(false)`
/// when another live node holds it (the script answers what it could not take).
async fn note_one(
    link: &ShardLink,
    what: &str,
    script: &str,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
) -> Result<bool, Error> {
    let reply = match link.eval_durable(script, keys, args) {
        Ok(r) => r.await,
        Err(Refused::Down(why)) => return Err(unavailable(what, why)),
        Err(Refused::Busy) => return Err(unavailable(what, "too many commands in flight")),
        Err(Refused::Closed) => return Err(unavailable(what, "the link has stopped")),
    };
    match reply {
        Ok(Value::Array(taken)) => Ok(taken.is_empty()),
        Ok(Value::Error(e)) => Err(unavailable(what, e)),
        Ok(other) => Err(unavailable(what, format!("unexpected reply {other:?}"))),
        Err(e) => Err(unavailable(what, format!("{e:?}"))),
    }
}

/// Codes per [`NOTE_CODE`] call when a shard notes its live codes again.
pub const NOTE_CODES_BATCH_MAX: usize = 256;

/// Notes a shard's live codes again (after each connect to Redis), in batches of
/// [`NOTE_CODES_BATCH_MAX`], each with the lifetime it has left; one another node noted
/// meanwhile stays that node's (logged: this one is redeemed here only). `false` when
/// the link failed midway.
pub async fn note_codes<S: Shard>(sh: &S, codes: &[(Code, u64)]) -> bool {
    let Some(link) = sh.cluster() else {
        return true;
    };
    for batch in codes.chunks(NOTE_CODES_BATCH_MAX) {
        let keys = batch.iter().map(|(c, _)| code_key(link, c)).collect();
        let mut args = vec![link.node_id().as_bytes().to_vec()];
        args.extend(
            batch
                .iter()
                .map(|(_, ttl)| ttl.max(&1).to_string().into_bytes()),
        );
        match link.eval(NOTE_CODE.name, keys, args) {
            Ok(r) => match r.await {
                Ok(Value::Array(taken)) => {
                    if !taken.is_empty() {
                        tracing::warn!(
                            codes = taken.len(),
                            "invite codes issued here are noted for another node"
                        );
                    }
                }
                _ => return false,
            },
            Err(_) => return false,
        }
    }
    true
}

fn note_args(link: &ShardLink, ids: &[EntryId]) -> Vec<Vec<u8>> {
    let live = link.live_nodes();
    let mut args = vec![
        link.node_id().as_bytes().to_vec(),
        live.len().to_string().into_bytes(),
    ];
    args.extend(live.into_iter().map(String::into_bytes));
    args.extend(ids.iter().map(|id| id.to_string().into_bytes()));
    args
}

/// Notes that this node holds entry `id`, before its `pair` is answered: `Ok(true)`;
/// `Ok(false)` when another live node holds an entry with this id (draw another).
pub async fn note_entry<S: Shard>(sh: &S, id: EntryId) -> Result<bool, Error> {
    let Some(link) = sh.cluster() else {
        return Ok(true);
    };
    let (keys, args) = (vec![entries_key(link)], note_args(link, &[id]));
    note_one(link, "pairing entry", NOTE_ENTRY.name, keys, args).await
}

/// Notes every entry `ids` of a shard again (after each connect to Redis: Redis may have
/// lost its data, or this node may run under a new `--node-id`), in batches of
/// [`NOTE_ENTRIES_BATCH_MAX`]; an id another live node holds is logged (its entry here
/// is reachable at this node only). `false` when the link failed midway.
pub async fn note_entries<S: Shard>(sh: &S, ids: &[EntryId]) -> bool {
    let Some(link) = sh.cluster() else {
        return true;
    };
    for batch in ids.chunks(NOTE_ENTRIES_BATCH_MAX) {
        let sent = link.eval(
            NOTE_ENTRY.name,
            vec![entries_key(link)],
            note_args(link, batch),
        );
        match sent {
            Ok(r) => match r.await {
                Ok(Value::Array(taken)) => {
                    for t in taken {
                        if let Value::Bulk(id) = t {
                            tracing::warn!(
                                entry = %String::from_utf8_lossy(&id),
                                "a pairing entry id held here is noted for another live node"
                            );
                        }
                    }
                }
                _ => return false,
            },
            Err(_) => return false,
        }
    }
    true
}

/// The node that issued `code`, when it is another node (`None`: this node, no such
/// code, a node alone, or Redis unreachable: then the code is looked for here only).
pub async fn code_elsewhere<S: Shard>(sh: &S, code: &Code) -> Option<String> {
    let link = sh.cluster()?;
    let got = link
        .command(vec![b"GET".to_vec(), code_key(link, code)])
        .ok()?
        .await
        .ok()?;
    elsewhere(link, got)
}

/// The node that holds entry `id`, when it is another node; `Err` (503) while Redis
/// cannot be asked. `Ok(None)`: this node, no such entry, or a node alone.
pub async fn entry_elsewhere<S: Shard>(sh: &S, id: EntryId) -> Result<Option<String>, Error> {
    let Some(link) = sh.cluster() else {
        return Ok(None);
    };
    let asked = link.command(vec![
        b"HGET".to_vec(),
        entries_key(link),
        id.to_string().into_bytes(),
    ]);
    let got = match asked {
        Ok(r) => r.await.map_err(|e| unavailable_lookup(format!("{e:?}")))?,
        Err(e) => return Err(unavailable_lookup(format!("{e:?}"))),
    };
    Ok(elsewhere(link, got))
}

fn unavailable_lookup(why: String) -> Error {
    Error::unavailable(format!(
        "cluster unavailable: which node holds this pairing entry cannot be asked ({why}); retry"
    ))
}

fn elsewhere(link: &ShardLink, got: Value) -> Option<String> {
    match got {
        Value::Bulk(node) if node != link.node_id().as_bytes() => String::from_utf8(node).ok(),
        _ => None,
    }
}

fn bucket_keys(link: &ShardLink, bucket: u32) -> (Vec<u8>, Vec<u8>) {
    let p = link.prefix().as_bytes();
    let b = bucket.to_string();
    (
        [p, b"pg:", b.as_bytes()].concat(),
        [p, b"pb:", b.as_bytes()].concat(),
    )
}

/// In a cluster, counts a wrong guess of six-digit `code` in its bucket across the
/// nodes ([`WRONG_GUESS`]), so that guesses sent through any node spend the same
/// per-code budget as at a node alone. Best effort: while Redis cannot be asked only the
/// shard's own guard counts it. A long code is not counted.
pub async fn wrong_guess<S: Shard>(sh: &S, code: &Code, bucket_wrong_max: u32) {
    let (Some(link), Some(n)) = (sh.cluster(), code.digits6()) else {
        return;
    };
    let (count, burn) = bucket_keys(link, n / super::guard::BUCKET_WIDTH);
    let life_ms = super::CODE_TTL_SECS * 1000;
    let asked = link.eval(
        WRONG_GUESS.name,
        vec![count, burn],
        vec![
            bucket_wrong_max.max(1).to_string().into_bytes(),
            life_ms.to_string().into_bytes(),
            sh.now().0.to_string().into_bytes(),
        ],
    );
    match asked {
        Ok(r) => {
            if let Ok(Value::Int(1)) = r.await {
                tracing::warn!(
                    "six-digit invite codes burnt across the cluster after wrong guesses near them"
                );
            }
        }
        Err(e) => tracing::debug!(error = ?e, "wrong guess not counted in the cluster"),
    }
}

/// Whether six-digit `code`, live until `expires_at`, was burnt by wrong guesses at any
/// node of the cluster ([`WRONG_GUESS`]'s note is newer than its issue). `false` on a
/// node alone, for a long code, and while Redis cannot be asked (the shard's own guard
/// still applies).
pub async fn burnt<S: Shard>(sh: &S, code: &Code, expires_at: crate::time::UnixTime) -> bool {
    let (Some(link), Some(n)) = (sh.cluster(), code.digits6()) else {
        return false;
    };
    let (_, burn) = bucket_keys(link, n / super::guard::BUCKET_WIDTH);
    let Ok(r) = link.command(vec![b"GET".to_vec(), burn]) else {
        return false;
    };
    let issued = expires_at
        .0
        .saturating_sub(super::CODE_TTL_SECS.saturating_mul(1_000_000_000));
    match r.await {
        Ok(Value::Bulk(at)) => std::str::from_utf8(&at)
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
            .is_some_and(|at| at >= issued),
        _ => false,
    }
}

/// A redeemed code's note goes (best effort, not awaited: one left behind expires with
/// the code, and a request it sends here finds no code).
pub fn forget_code<S: Shard>(sh: &S, code: &Code) {
    let Some(link) = sh.cluster() else { return };
    let _ = link.command_nowait(vec![b"DEL".to_vec(), code_key(link, code)]);
}

/// Retired entries' notes go (best effort, not awaited).
pub fn forget_entries<S: Shard>(sh: &S, ids: &[EntryId]) {
    let Some(link) = sh.cluster() else { return };
    if ids.is_empty() {
        return;
    }
    let mut cmd = vec![b"HDEL".to_vec(), entries_key(link)];
    cmd.extend(ids.iter().map(|id| id.to_string().into_bytes()));
    let _ = link.command_nowait(cmd);
}
