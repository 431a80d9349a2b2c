//! The task hub's records in Redis (`--cluster`; see the [parent](super) for the
//! design): the keys, the scripts ([`PUT`], a batch of compare-and-sets; [`READ`] and
//! [`DUE`], bounded reads), a change's budget deltas and index moves derived from the
//! task before and after, and taking back a write that cannot be counted on. The
//! workflows (create, claim, update, list, sweep) are the parent's.

use chatixia_cluster::{Refused, Script, ShardLink, Value};
use chatixia_store::TaskRecord;

use crate::hub::records::{task_of, task_record};
use crate::hub::tasks::task_line;
use crate::hub::{Task, TaskId, TaskStoreConfig};
use crate::limits::{Budget, Charge, Line, Refusal};
use crate::shard::Error;
use crate::time::UnixTime;
use std::collections::BTreeMap;

/// How long the tombstone of a create taken back before it arrived stays (see [`PUT`]):
/// longer than a command can take to reach Redis on a connection the node gave up on
/// (TCP retransmits for up to ~15 minutes at Linux's defaults).
pub const TOMBSTONE_MS: u64 = 900_000;

/// The fields of a task's hash: its record and its version.
pub(super) const FIELD_RECORD: &[u8] = b"r";
pub(super) const FIELD_VERSION: &[u8] = b"v";
/// A batch of compare-and-set writes of task records, each on its own.
///
/// `KEYS[1]` the counters hash, then every key an item names. `ARGV[1]` the limits
/// (`items_max bytes_max client_items_max client_bytes_max anon_items_max
/// anon_bytes_max`, spaces between), then per item: the index (into `KEYS`) of its
/// task hash, its member (time key), the version it must have (`0`: must not exist),
/// the new record (`""`: delete), the old and new state (`""`: none, for `s:` counts),
/// the number of charge deltas, of sorted-set removals and of additions, the record it
/// must hold besides its version (`""`: any; taking back a write of ours); then each
/// delta (client, `1` if anonymous, `1` if it has a quota, items, bytes), each removal
/// (key index), each addition (key index, score).
///
/// A score starting with `+` is that many seconds after Redis's own clock (`TIME`): the
/// unconfirmed claims' deadlines, compared by every node with the same clock. Taking
/// back a create (a record that must be there, to delete) that finds no task leaves a
/// tombstone (version `t`, no record, gone after [`TOMBSTONE_MS`]): the create may still
/// be on its way (sent on a connection that then failed), and arriving after its
/// take-back it must not make the task.
///
/// Per item: `{1, new version}` written, `{0, current version}` lost the race, `{2,
/// which, items held, bytes held}` refused by a budget (`client`, `anon` or `full`;
/// nothing written). Growth is checked as `limits::ClientLedger::admit` does: a client
/// that would hold more against its quota, the whole store, the anonymous share.
pub const PUT: Script = Script {
    name: "chx_tasks_put",
    source: r#"
local lim = {}
for x in string.gmatch(ARGV[1], '%d+') do lim[#lim + 1] = tonumber(x) end
local tb = KEYS[1]
local out = {}
local i = 2
local function num(k) return tonumber(redis.call('HGET', tb, k) or '0') end
local function score(x)
  if string.sub(x, 1, 1) == '+' then
    local t = redis.call('TIME')
    return tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(string.sub(x, 2))
  end
  return x
end
while i <= #ARGV do
  local tk = KEYS[tonumber(ARGV[i])]
  local member, want, rec = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local so, sn = ARGV[i + 4], ARGV[i + 5]
  local nd, nr, na = tonumber(ARGV[i + 6]), tonumber(ARGV[i + 7]), tonumber(ARGV[i + 8])
  local exact = ARGV[i + 9]
  local d0 = i + 10
  local r0 = d0 + 5 * nd
  local a0 = r0 + nr
  i = a0 + 2 * na
  local cur = redis.call('HGET', tk, 'v') or '0'
  if cur ~= want or (exact ~= '' and redis.call('HGET', tk, 'r') ~= exact) then
    if exact ~= '' and rec == '' and cur == '0' then
      redis.call('HSET', tk, 'v', 't')
      redis.call('PEXPIRE', tk, 900000)
    end
    out[#out + 1] = {0, cur}
  else
    local refused = nil
    local tn, tbytes, an, ab = 0, 0, 0, 0
    for d = 0, nd - 1 do
      local k = d0 + 5 * d
      local c, anon, quota = ARGV[k], ARGV[k + 1], ARGV[k + 2]
      local dn, db = tonumber(ARGV[k + 3]), tonumber(ARGV[k + 4])
      tn, tbytes = tn + dn, tbytes + db
      if anon == '1' then an, ab = an + dn, ab + db end
      if not refused and quota == '1' and (dn > 0 or db > 0) then
        local hn, hb = num('n:' .. c), num('b:' .. c)
        if (dn > 0 and hn + dn > lim[3]) or (db > 0 and hb + db > lim[4]) then
          refused = {2, 'client', hn, hb}
        end
      end
    end
    if not refused and (tn > 0 or tbytes > 0) then
      local hn, hb = num('n'), num('b')
      if (tn > 0 and hn + tn > lim[1]) or (tbytes > 0 and hb + tbytes > lim[2]) then
        refused = {2, 'full', hn, hb}
      end
    end
    if not refused and (an > 0 or ab > 0) then
      local hn, hb = num('an'), num('ab')
      if (an > 0 and hn + an > lim[5]) or (ab > 0 and hb + ab > lim[6]) then
        refused = {2, 'anon', hn, hb}
      end
    end
    if refused then
      out[#out + 1] = refused
    else
      local v = tonumber(cur) + 1
      if rec == '' then
        redis.call('DEL', tk)
      else
        redis.call('HSET', tk, 'r', rec, 'v', v)
      end
      for d = 0, nd - 1 do
        local k = d0 + 5 * d
        local c = ARGV[k]
        local dn, db = tonumber(ARGV[k + 3]), tonumber(ARGV[k + 4])
        if redis.call('HINCRBY', tb, 'n:' .. c, dn) <= 0 then redis.call('HDEL', tb, 'n:' .. c) end
        if redis.call('HINCRBY', tb, 'b:' .. c, db) <= 0 then redis.call('HDEL', tb, 'b:' .. c) end
      end
      redis.call('HINCRBY', tb, 'n', tn)
      redis.call('HINCRBY', tb, 'b', tbytes)
      redis.call('HINCRBY', tb, 'an', an)
      redis.call('HINCRBY', tb, 'ab', ab)
      if so ~= '' and redis.call('HINCRBY', tb, 's:' .. so, -1) <= 0 then
        redis.call('HDEL', tb, 's:' .. so)
      end
      if sn ~= '' then redis.call('HINCRBY', tb, 's:' .. sn, 1) end
      for r = 0, nr - 1 do redis.call('ZREM', KEYS[tonumber(ARGV[r0 + r])], member) end
      for a = 0, na - 1 do
        redis.call('ZADD', KEYS[tonumber(ARGV[a0 + 2 * a])], score(ARGV[a0 + 2 * a + 1]), member)
      end
      out[#out + 1] = {1, v}
    end
  end
end
return out
"#,
};

/// Reads the records of the members of sorted sets: `KEYS` the sets, `ARGV[1]` the
/// prefix of task hashes (`{prefix}t:`), `ARGV[2]` where to start (a lex bound: `-` or
/// `(member` ascending, `+` or `(member` with `ARGV[4]` = `rev`), `ARGV[3]` how many
/// members of each set. A flat array of member, version, record for each member whose
/// task exists (every write keeps the two together; one missing is skipped).
pub const READ: Script = Script {
    name: "chx_tasks_read",
    source: r#"
local out = {}
for _, key in ipairs(KEYS) do
  local ms
  if ARGV[4] == 'rev' then
    ms = redis.call('ZRANGE', key, ARGV[2], '-', 'BYLEX', 'REV', 'LIMIT', 0, tonumber(ARGV[3]))
  else
    ms = redis.call('ZRANGE', key, ARGV[2], '+', 'BYLEX', 'LIMIT', 0, tonumber(ARGV[3]))
  end
  for _, m in ipairs(ms) do
    local id = string.sub(m, 22)
    local got = redis.call('HMGET', ARGV[1] .. id, 'v', 'r')
    if got[1] and got[2] then
      out[#out + 1] = m
      out[#out + 1] = got[1]
      out[#out + 1] = got[2]
    end
  end
end
return out
"#,
};

/// The sweep's candidates: `KEYS[1]` a sorted set by time (`tl`, `tf` or `tc`),
/// `ARGV[1]` the prefix of task hashes, `ARGV[2]` the score up to which (inclusive; `+N`:
/// N seconds after Redis's clock, as in [`PUT`]), `ARGV[3]` how many. The same flat
/// array as [`READ`]; a member whose task is gone leaves the set.
pub const DUE: Script = Script {
    name: "chx_tasks_due",
    source: r#"
local out = {}
local upto = ARGV[2]
if string.sub(upto, 1, 1) == '+' then
  local t = redis.call('TIME')
  upto = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(string.sub(upto, 2))
end
local ms = redis.call('ZRANGE', KEYS[1], '-inf', upto, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(ms) do
  local id = string.sub(m, 22)
  local got = redis.call('HMGET', ARGV[1] .. id, 'v', 'r')
  if got[1] and got[2] then
    out[#out + 1] = m
    out[#out + 1] = got[1]
    out[#out + 1] = got[2]
  else
    redis.call('ZREM', KEYS[1], m)
  end
end
return out
"#,
};

/// The hub's scripts (loaded by the link on every connect).
pub fn scripts() -> Vec<Script> {
    vec![PUT, READ, DUE]
}

pub(super) fn key(prefix: &str, parts: &[&str]) -> Vec<u8> {
    let mut k = prefix.as_bytes().to_vec();
    for p in parts {
        k.extend_from_slice(p.as_bytes());
    }
    k
}

/// The Redis keys of one prefix.
pub(super) struct Keys<'a>(pub(super) &'a str);

impl Keys<'_> {
    pub(super) fn task(&self, id: &str) -> Vec<u8> {
        key(self.0, &["t:", id])
    }
    pub(super) fn task_prefix(&self) -> Vec<u8> {
        key(self.0, &["t:"])
    }
    pub(super) fn all(&self) -> Vec<u8> {
        key(self.0, &["ta"])
    }
    pub(super) fn by_target(&self, agent: &str) -> Vec<u8> {
        key(self.0, &["tp:t:", agent])
    }
    pub(super) fn by_skill(&self, skill: &str) -> Vec<u8> {
        key(self.0, &["tp:s:", skill])
    }
    pub(super) fn live(&self) -> Vec<u8> {
        key(self.0, &["tl"])
    }
    pub(super) fn finished(&self) -> Vec<u8> {
        key(self.0, &["tf"])
    }
    pub(super) fn counters(&self) -> Vec<u8> {
        key(self.0, &["tb"])
    }
    /// Claims not confirmed yet, by the time after which any node takes them back
    /// (`hub::cluster::claim`, `sweep_unconfirmed`).
    pub(super) fn unconfirmed(&self) -> Vec<u8> {
        key(self.0, &["tc"])
    }

    /// The sorted sets a task is in, with its score there (as `hub::tasks`' index).
    pub(super) fn indexes(&self, t: &Task) -> Vec<(Vec<u8>, String)> {
        let mut out = vec![(self.all(), "0".to_owned())];
        if t.is_finished() {
            out.push((self.finished(), secs(t.updated_at)));
        } else {
            out.push((self.live(), secs(t.deadline())));
        }
        if t.is_pending() {
            out.push((self.by_target(&t.target_agent_id), "0".to_owned()));
            if !t.skill.is_empty() {
                out.push((self.by_skill(&t.skill), "0".to_owned()));
            }
        }
        out
    }
}

pub(super) fn secs(t: UnixTime) -> String {
    format!("{:.6}", t.as_secs_f64())
}

/// The cluster-wide budget: this node's per-shard limits times its shards.
pub(super) fn budget(cfg: &TaskStoreConfig, shards: usize) -> Budget {
    let b = cfg.budget();
    let n = shards.max(1);
    Budget {
        items_max: b.items_max.saturating_mul(n),
        bytes_max: b.bytes_max.saturating_mul(n),
        client_items_max: b.client_items_max.saturating_mul(n),
        client_bytes_max: b.client_bytes_max.saturating_mul(n),
        anonymous_share_percent: b.anonymous_share_percent,
    }
}

/// No limit: the budget of the changes a node alone never refuses (`TaskStore`'s
/// `claim_for` and `expire` recharge without admitting: a claim adds the few bytes of
/// `assigned`, an expiry those of `TTL expired`; refusing them would leave a task that
/// no heartbeat can claim and no sweep can fail, and a full store full), and of taking
/// back an unreplicated write.
pub(super) fn unlimited() -> Budget {
    Budget {
        items_max: usize::MAX,
        bytes_max: usize::MAX,
        client_items_max: usize::MAX,
        client_bytes_max: usize::MAX,
        anonymous_share_percent: 100,
    }
}

/// A quota key of the counters hash for a client (its kind and name: two kinds never
/// share a counter).
pub(super) fn client_key(c: &Charge) -> String {
    c.to_string()
}

/// One compare-and-set of a task (an item of [`PUT`]).
pub(super) struct Put {
    pub(super) id: TaskId,
    pub(super) member: String,
    /// The version read (`0`: a new task).
    pub(super) version: u64,
    pub(super) before: Option<Task>,
    /// `None`: delete.
    pub(super) after: Option<Task>,
    /// Also require the stored record to be `before`'s, byte for byte (taking back a
    /// write of ours: at `version` it may be another node's write instead).
    pub(super) exact: bool,
    /// A sorted set the member goes into (with its score) or out of besides the ones
    /// its records name: a claim's entry in the unconfirmed claims
    /// ([`Keys::unconfirmed`]), added by the claim, removed by its confirmation or by
    /// taking it back. (The score of a removal is the one an inverse adds again.)
    pub(super) also_add: Option<(Vec<u8>, String)>,
    pub(super) also_remove: Option<(Vec<u8>, String)>,
}

impl Put {
    /// A compare-and-set of `id` at `version`, moving no set but the records' own.
    pub(super) fn new(
        id: TaskId,
        member: String,
        version: u64,
        before: Option<Task>,
        after: Option<Task>,
    ) -> Put {
        Put {
            id,
            member,
            version,
            before,
            after,
            exact: false,
            also_add: None,
            also_remove: None,
        }
    }

    /// What puts this write back where it is still ours: at the version it wrote and
    /// holding the record it wrote (byte for byte), the record before it, and the
    /// sets moved back.
    pub(super) fn inverse(&self) -> Put {
        Put {
            id: self.id.clone(),
            member: self.member.clone(),
            version: self.version + 1,
            before: self.after.clone(),
            after: self.before.clone(),
            exact: true,
            also_add: self.also_remove.clone(),
            also_remove: self.also_add.clone(),
        }
    }
}

/// What became of one [`Put`].
#[derive(Debug, PartialEq)]
pub(super) enum Put1 {
    Written(u64),
    Raced,
    Refused(Refusal),
}

pub(super) fn unavailable(why: impl std::fmt::Display) -> Error {
    Error::unavailable(format!(
        "cluster unavailable: the task hub is shared through Redis and cannot be reached \
         ({why}); retry"
    ))
}

pub(super) fn refused(e: Refused) -> Error {
    match e {
        Refused::Down(why) => unavailable(why),
        Refused::Busy => unavailable("too many commands in flight"),
        Refused::Closed => unavailable("the link has stopped"),
    }
}

#[derive(Debug)]
pub(super) enum PutError {
    /// Not sent, or refused as a whole: nothing ran.
    Unavailable(Error),
    /// The link's `NOREPLICAS` (`chatixia_cluster::ran_unreplicated`): the script ran on
    /// the primary, no replica confirmed it in time.
    NotReplicated(String),
    /// The connection failed after the batch was written: it may have run.
    MaybeRan(Error),
}

pub(super) async fn put_once(
    link: &ShardLink,
    budget: &Budget,
    puts: &[Put],
) -> Result<Vec<Put1>, PutError> {
    use PutError::Unavailable as U;
    let keys_of = Keys(link.prefix());
    let mut keys: Vec<Vec<u8>> = vec![keys_of.counters()];
    let mut index: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    let mut at = |keys: &mut Vec<Vec<u8>>, k: Vec<u8>| -> Vec<u8> {
        let n = *index.entry(k.clone()).or_insert_with(|| {
            keys.push(k);
            keys.len()
        });
        n.to_string().into_bytes()
    };
    let lim = format!(
        "{} {} {} {} {} {}",
        budget.items_max,
        budget.bytes_max,
        budget.client_items_max,
        budget.client_bytes_max,
        budget.anonymous_items_max(),
        budget.anonymous_bytes_max()
    );
    let mut args: Vec<Vec<u8>> = vec![lim.into_bytes()];
    for p in puts {
        let task_key = at(&mut keys, keys_of.task(&p.id));
        let record = match &p.after {
            Some(t) => serde_json::to_vec(&task_record(t))
                .map_err(|e| U(Error::internal(format!("task record: {e}"))))?,
            None => Vec::new(),
        };
        let exact = match (&p.before, p.exact) {
            (Some(t), true) => serde_json::to_vec(&task_record(t))
                .map_err(|e| U(Error::internal(format!("task record: {e}"))))?,
            _ => Vec::new(),
        };
        let state = |t: &Option<Task>| t.as_ref().map(|t| t.state.clone()).unwrap_or_default();
        let deltas = deltas(
            p.before.as_ref().map(task_line).as_ref(),
            p.after.as_ref().map(task_line).as_ref(),
        );
        let removes: Vec<Vec<u8>> = p
            .before
            .iter()
            .flat_map(|t| keys_of.indexes(t))
            .chain(p.also_remove.iter().cloned())
            .map(|(k, _)| k)
            .collect();
        let adds: Vec<(Vec<u8>, String)> = p
            .after
            .iter()
            .flat_map(|t| keys_of.indexes(t))
            .chain(p.also_add.iter().cloned())
            .collect();
        args.extend([
            task_key,
            p.member.clone().into_bytes(),
            p.version.to_string().into_bytes(),
            record,
            state(&p.before).into_bytes(),
            state(&p.after).into_bytes(),
            deltas.len().to_string().into_bytes(),
            removes.len().to_string().into_bytes(),
            adds.len().to_string().into_bytes(),
            exact,
        ]);
        for (c, dn, db) in &deltas {
            args.extend([
                client_key(c).into_bytes(),
                if c.is_anonymous() { b"1" } else { b"0" }.to_vec(),
                if c.has_quota() { b"1" } else { b"0" }.to_vec(),
                dn.to_string().into_bytes(),
                db.to_string().into_bytes(),
            ]);
        }
        for k in removes {
            args.push(at(&mut keys, k));
        }
        for (k, score) in adds {
            args.push(at(&mut keys, k));
            args.push(score.into_bytes());
        }
    }
    let reply = link
        .eval_durable(PUT.name, keys, args)
        .map_err(|e| U(refused(e)))?
        .await
        .map_err(|e| PutError::MaybeRan(unavailable(format!("{e:?}"))))?;
    let items = match reply {
        Value::Array(items) => items,
        // The link's NOREPLICAS (its WAIT): the script ran. Redis's own, under
        // `min-replicas-to-write`, refused the script before its first write: nothing
        // ran (an error like any other).
        Value::Error(e) if chatixia_cluster::ran_unreplicated(&e) => {
            return Err(PutError::NotReplicated(e))
        }
        Value::Error(e) => return Err(U(unavailable(e))),
        other => {
            tracing::error!(reply = ?other, "unexpected reply to the task PUT");
            return Err(U(unavailable("unexpected reply")));
        }
    };
    if items.len() != puts.len() {
        return Err(U(unavailable("unexpected reply")));
    }
    Ok(items.into_iter().map(|v| put1(v, budget)).collect())
}

pub(super) fn int(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Value::Bulk(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

pub(super) fn put1(v: Value, b: &Budget) -> Put1 {
    let Value::Array(a) = v else {
        return Put1::Raced;
    };
    let (items, bytes) = (
        usize::try_from(int(a.get(2))).unwrap_or(usize::MAX),
        usize::try_from(int(a.get(3))).unwrap_or(usize::MAX),
    );
    match int(a.first()) {
        1 => Put1::Written(int(a.get(1))),
        2 => Put1::Refused(match a.get(1) {
            Some(Value::Bulk(w)) if w == b"client" => Refusal::ClientQuota {
                items,
                bytes,
                items_max: b.client_items_max,
                bytes_max: b.client_bytes_max,
            },
            Some(Value::Bulk(w)) if w == b"anon" => Refusal::AnonymousShare {
                items,
                bytes,
                items_max: b.anonymous_items_max(),
                bytes_max: b.anonymous_bytes_max(),
                percent: b.anonymous_share_percent,
            },
            _ => Refusal::Full {
                items,
                bytes,
                items_max: b.items_max,
                bytes_max: b.bytes_max,
            },
        }),
        _ => Put1::Raced,
    }
}

/// Per client, what a change from `old` to `new` adds (negative: frees), as
/// `limits::ClientLedger::admit` counts it.
pub(super) fn deltas(old: Option<&Line>, new: Option<&Line>) -> Vec<(Charge, i64, i64)> {
    let mut out: Vec<(Charge, i64, i64)> = Vec::with_capacity(4);
    let mut add = |c: &Charge, items: usize, bytes: usize, sign: i64| {
        let (i, b) = (sign * items as i64, sign * bytes as i64);
        match out.iter_mut().find(|d| d.0 == *c) {
            Some(d) => {
                d.1 += i;
                d.2 += b;
            }
            None => out.push((c.clone(), i, b)),
        }
    };
    for (c, i, b) in old.into_iter().flat_map(Line::parts) {
        add(c, i, b, -1);
    }
    for (c, i, b) in new.into_iter().flat_map(Line::parts) {
        add(c, i, b, 1);
    }
    out
}

/// A task with its version, as read.
pub(super) struct Read {
    pub(super) member: String,
    pub(super) version: u64,
    pub(super) task: Task,
}

pub(super) fn parse_reads(v: Value) -> Result<Vec<Read>, Error> {
    let items = match v {
        Value::Array(items) => items,
        Value::Error(e) => return Err(unavailable(e)),
        _ => return Err(unavailable("unexpected reply")),
    };
    let mut out = Vec::with_capacity(items.len() / 3);
    for c in items.chunks(3) {
        let (Some(Value::Bulk(m)), Some(Value::Bulk(r))) = (c.first(), c.get(2)) else {
            continue;
        };
        let Ok(rec) = serde_json::from_slice::<TaskRecord>(r) else {
            tracing::warn!(member = %String::from_utf8_lossy(m), "unreadable task record in Redis");
            continue;
        };
        out.push(Read {
            member: String::from_utf8_lossy(m).into_owned(),
            version: int(c.get(1)),
            task: task_of(rec),
        });
    }
    Ok(out)
}

/// One task and its version (`None`: no such task).
pub(super) async fn read_one(link: &ShardLink, id: &str) -> Result<Option<(u64, Task)>, Error> {
    let k = Keys(link.prefix()).task(id);
    let reply = link
        .command(vec![
            b"HMGET".to_vec(),
            k,
            FIELD_VERSION.to_vec(),
            FIELD_RECORD.to_vec(),
        ])
        .map_err(refused)?
        .await
        .map_err(|e| unavailable(format!("{e:?}")))?;
    let Value::Array(a) = reply else {
        return Err(unavailable("unexpected reply"));
    };
    let (Some(v), Some(Value::Bulk(r))) = (a.first(), a.get(1)) else {
        return Ok(None);
    };
    let rec: TaskRecord = serde_json::from_slice(r)
        .map_err(|e| Error::internal(format!("unreadable task record in Redis: {e}")))?;
    Ok(Some((int(Some(v)), task_of(rec))))
}
