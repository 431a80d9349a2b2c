//! Agent bindings across the nodes of a cluster (`--cluster`, issue 25;
//! docs/ARCHITECTURE.md, "Cluster"; docs/PROTOCOL.md §1.6 and §3.5a). On a node alone an
//! agent id is bound to the credential or address that first registered it
//! (`agents/binding.rs`); in a cluster that binding is cluster-wide, so a client without
//! the agent's credential cannot take its id at a node that never held it.
//!
//! * **The bindings**: one hash, `{prefix}bindings`, agent id → its holder, exactly what
//!   a node stores in its data directory (`agent_binding`): `P:` and the credential's
//!   peer id (an operator-issued name, never the key or the token), or `A:` and the
//!   client key of the address ([`owner_value`]).
//! * **Checked at first contact**: a register or heartbeat that is not a steady one of
//!   the agent's holder here (the agent held here, bound to exactly that principal) asks
//!   Redis once ([`BIND`], [`bind`]) before the agent's owner shard acts: no entry → it
//!   is set to the principal; a principal that may act for the agent (a credential for
//!   it, or one holding the binding, as `Principal::may_act_for`) → it moves to the
//!   principal; anything else → 403, the same refusal as a node alone. While the link is
//!   down such a request is refused with 503 (failing closed); steady requests never
//!   touch Redis. A request refused here after `BIND` changed the entry puts it back
//!   ([`RESTORE`]), except one refused because no replica confirmed the write (Sentinel,
//!   `NOREPLICAS`): the binding then stays on the primary (the answer, 503, says so; the
//!   caller's retry finds it its own), and is lost only if the primary is.
//! * **Asserted on every connect**: each shard writes the bindings it holds (records and
//!   those loaded from its data directory) without overwriting another holder
//!   ([`ASSERT`], [`assert_all`]): the binding already in Redis is the earlier one and
//!   wins, here too (in memory: [`AgentStore::adopt_binding`]); each such conflict is
//!   logged and counted (`chatixia_cluster_binding_conflicts_total`).
//! * **Deleted with the agent**: an operator's `DELETE` at the node that holds the
//!   agent (or asked by another node) removes the entry while it still names that
//!   node's binding ([`UNBIND`]); at a node that does not hold it, with the mirror's
//!   entry (`registry::mirror::DROP`); an id no node holds, unconditionally
//!   ([`unbind_any`]).
//!
//! Not under `--require-agent-auth`: there an agent acts only with its own token, and
//! bindings decide nothing (`AgentStore::enable_cluster_bindings` is not called).
//!
//! Bounded: an entry exists while a node holds the binding (a record, or a stored binding
//! counted against that shard's `agents_max`) or until an operator deletes the id, so
//! the hash holds at most the nodes' `agents_max` × shards entries of at most
//! `--agent-field-bytes-max` for the id and about as much for the holder (a peer id or
//! a client key of at most 45 bytes).

use std::cell::RefCell;
use std::time::Duration;

use chatixia_cluster::{Refused, Script, ShardLink, Value};

use crate::limits::principal::{bound_message, Owner, Principal};
use crate::registry::AgentStore;
use crate::shard::{Error, Shard};

/// Checks and takes an agent's binding: `KEYS[1]` the bindings hash; `ARGV` agent id,
/// the principal's holder value, `1` when its credential is for the agent (it may act
/// whatever the binding), the values it holds (`P:peer`, or `""` without a credential;
/// `A:address`). `{1, previous or nil}` when allowed (the entry now names the
/// principal), `{0, current}` when refused.
pub const BIND: Script = Script {
    name: "chx_bind",
    source: r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and ARGV[3] ~= '1' and cur ~= ARGV[4] and cur ~= ARGV[5] then
  return {0, cur}
end
if cur ~= ARGV[2] then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return {1, cur}
"#,
};

/// Undoes a [`BIND`] whose request was refused afterwards: `KEYS[1]` the bindings hash;
/// `ARGV` agent id, the value `BIND` wrote, the one before (`""`: none). Only while the
/// entry is still the one written.
pub const RESTORE: Script = Script {
    name: "chx_bind_restore",
    source: r#"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
return 1
"#,
};

/// Removes an agent's binding while it names `ARGV[2]`: `KEYS[1]` the bindings hash;
/// `ARGV` agent id, holder value. 1 when removed.
pub const UNBIND: Script = Script {
    name: "chx_unbind",
    source: r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"#,
};

/// Asserts a node's bindings: `KEYS[1]` the bindings hash; `ARGV` pairs of agent id and
/// holder value. An absent entry is set; another holder is kept. The conflicts: a flat
/// array of agent id and the holder kept.
pub const ASSERT: Script = Script {
    name: "chx_bind_assert",
    source: r#"
local out = {}
for i = 1, #ARGV - 1, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if not cur then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  elseif cur ~= ARGV[i + 1] then
    out[#out + 1] = ARGV[i]
    out[#out + 1] = cur
  end
end
return out
"#,
};

/// The scripts of the bindings (loaded by the link on every connect).
pub fn scripts() -> Vec<Script> {
    vec![BIND, RESTORE, UNBIND, ASSERT]
}

/// Bindings per [`ASSERT`] call: one script of 512 arguments (about 40 KiB) keeps Redis
/// from running one long script for a shard's 16,384 bindings; the shard sends them one
/// batch after another.
pub const ASSERT_BATCH_MAX: usize = 256;

/// How long an assertion waits before trying again when the link's queue for this shard
/// is full (`Refused::Busy`): a turn of the link's pipeline.
const LINK_BUSY_RETRY: Duration = Duration::from_millis(1);

/// The bindings hash.
pub fn bindings_key(prefix: &str) -> Vec<u8> {
    [prefix.as_bytes(), b"bindings"].concat()
}

/// A holder as the bindings hash keeps it: `P:` and the peer id, or `A:` and the
/// address's client key (what the node's data directory keeps, `agent_binding`).
pub fn owner_value(o: &Owner) -> Vec<u8> {
    match o {
        Owner::Peer(p) => [b"P:", p.as_bytes()].concat(),
        Owner::Address(a) => [b"A:", a.as_bytes()].concat(),
    }
}

/// The holder of a value of the bindings hash (`None`: not one of ours).
pub fn owner_of(v: &[u8]) -> Option<Owner> {
    let s = std::str::from_utf8(v).ok()?;
    if let Some(p) = s.strip_prefix("P:") {
        Some(Owner::Peer(p.to_owned()))
    } else {
        s.strip_prefix("A:").map(|a| Owner::Address(a.to_owned()))
    }
}

/// What a [`bind`] changed in Redis, to [`undo`] when the request is refused after it.
#[derive(Debug)]
pub struct Bound {
    agent_id: String,
    /// The value written.
    mine: Vec<u8>,
    /// The value before (`None`: no entry).
    prev: Option<Vec<u8>>,
}

/// The 503 of a first contact while the cluster cannot be asked.
fn unavailable(agent_id: &str, why: &str) -> Error {
    Error::unavailable(format!(
        "cluster unavailable: agent `{agent_id}` is not bound at this node and its binding \
         cannot be checked across the cluster ({why}); retry (agents bound at this node \
         keep working)"
    ))
}

/// The cluster's check of `by` acting as `agent_id` ([`BIND`]): `Ok` when allowed (the
/// entry now names `by`; what changed, to undo if the request is refused after it),
/// 403 with the same reason as a node alone, or 503 while the link is down.
pub async fn bind<S: Shard>(
    sh: &S,
    agent_id: &str,
    by: &Principal,
) -> Result<Option<Bound>, Error> {
    let Some(link) = sh.cluster() else {
        return Ok(None);
    };
    let mine = owner_value(&by.owner());
    let as_peer = by
        .peer
        .as_ref()
        .map(|p| owner_value(&Owner::Peer(p.clone())))
        .unwrap_or_default();
    let as_address = owner_value(&Owner::Address(by.address.clone()));
    let force = if by.is_for(agent_id) { b"1" } else { b"0" };
    // A 2xx that this binding allowed must outlive the primary's loss (Sentinel mode:
    // acknowledged by a replica, `WAIT`; plain Redis: as `eval`).
    let reply = match link.eval_durable(
        BIND.name,
        vec![bindings_key(link.prefix())],
        vec![
            agent_id.as_bytes().to_vec(),
            mine.clone(),
            force.to_vec(),
            as_peer,
            as_address,
        ],
    ) {
        Ok(r) => r.await,
        Err(Refused::Down(why)) => return Err(unavailable(agent_id, &why)),
        Err(Refused::Busy) => return Err(unavailable(agent_id, "too many commands in flight")),
        Err(Refused::Closed) => return Err(unavailable(agent_id, "the link has stopped")),
    };
    let items = match reply {
        Ok(Value::Array(items)) => items,
        Ok(Value::Error(e)) if e.starts_with("NOREPLICAS") => {
            // The script ran, but no replica confirmed this connection's writes. A
            // refusal wrote nothing and stands whatever the replicas say: read the
            // binding back; only one that would be ours is refused for durability.
            let held = match link.command(vec![
                b"HGET".to_vec(),
                bindings_key(link.prefix()),
                agent_id.as_bytes().to_vec(),
            ]) {
                Ok(r) => r.await.ok(),
                Err(_) => None,
            };
            if let Some(Value::Bulk(v)) = held {
                if v != mine && !by.is_for(agent_id) {
                    if let Some(bound) = owner_of(&v) {
                        return Err(Error::forbidden(bound_message(agent_id, &bound)));
                    }
                }
            }
            return Err(unavailable(
                agent_id,
                &format!("the binding was not replicated: {e}"),
            ));
        }
        Ok(other) => {
            tracing::error!(agent = %agent_id, reply = ?other, "unexpected reply to BIND");
            return Err(unavailable(agent_id, "unexpected reply"));
        }
        Err(e) => return Err(unavailable(agent_id, &format!("{e:?}"))),
    };
    let prev = match items.get(1) {
        Some(Value::Bulk(v)) => Some(v.clone()),
        _ => None,
    };
    match items.first() {
        Some(Value::Int(1)) => Ok((prev.as_deref() != Some(&mine[..])).then(|| Bound {
            agent_id: agent_id.to_owned(),
            mine,
            prev,
        })),
        Some(Value::Int(0)) => {
            // Not one of ours (another version?): refused as a credential binding, whose
            // reason names nothing.
            let bound = prev
                .as_deref()
                .and_then(owner_of)
                .unwrap_or_else(|| Owner::Peer(String::new()));
            Err(Error::forbidden(bound_message(agent_id, &bound)))
        }
        _ => {
            tracing::error!(agent = %agent_id, reply = ?items, "unexpected reply to BIND");
            Err(unavailable(agent_id, "unexpected reply"))
        }
    }
}

/// The request that [`bind`] allowed was refused after it (a budget, the durable store,
/// a race with another request here): the entry goes back as it was, while it is still
/// the one written. Not awaited; when it cannot be sent, the entry keeps naming a
/// principal that was allowed to act for the agent anyway.
pub fn undo<S: Shard>(sh: &S, b: Bound) {
    let Some(link) = sh.cluster() else { return };
    let sent = link.eval_nowait(
        RESTORE.name,
        vec![bindings_key(link.prefix())],
        vec![b.agent_id.into_bytes(), b.mine, b.prev.unwrap_or_default()],
    );
    if let Err(e) = sent {
        tracing::debug!(error = ?e, "a refused request's cluster binding not put back");
    }
}

/// An agent bound to `owner` here was deleted: its cluster binding goes while it still
/// names `owner` ([`UNBIND`]); awaited, so that the delete's 2xx means the id is free
/// at every node. While the link is down the entry stays (logged): an operator's
/// `DELETE` of the id at any node removes it once Redis is back ([`unbind_any`]).
pub async fn unbind<S: Shard>(sh: &S, agent_id: &str, owner: &Owner) {
    let Some(link) = sh.cluster() else { return };
    let sent = link.eval(
        UNBIND.name,
        vec![bindings_key(link.prefix())],
        vec![agent_id.as_bytes().to_vec(), owner_value(owner)],
    );
    let done = match sent {
        Ok(r) => r.await.map_err(|e| format!("{e:?}")),
        Err(e) => Err(format!("{e:?}")),
    };
    if let Err(e) = done {
        tracing::warn!(agent = %agent_id, error = %e, "deleted agent's cluster binding not removed");
    }
}

/// An operator's delete of an id no node holds: its cluster binding goes, whoever it
/// names. Whether there was one.
pub async fn unbind_any<S: Shard>(sh: &S, agent_id: &str) -> bool {
    let Some(link) = sh.cluster() else {
        return false;
    };
    let Ok(reply) = link.command(vec![
        b"HDEL".to_vec(),
        bindings_key(link.prefix()),
        agent_id.as_bytes().to_vec(),
    ]) else {
        return false;
    };
    matches!(reply.await, Ok(Value::Int(1)))
}

/// The link is up: asserts every binding this shard holds ([`ASSERT`], in batches of
/// [`ASSERT_BATCH_MAX`]); another holder already in Redis wins here too
/// ([`AgentStore::adopt_binding`]), logged and counted. `false` when the link failed
/// before all were asserted (the next `Up` asserts them again).
pub async fn assert_all<S: Shard>(sh: &S, store: &RefCell<AgentStore>, link: &ShardLink) -> bool {
    if !store.borrow().cluster_bindings() {
        return true;
    }
    let all = store.borrow().bindings();
    let key = bindings_key(link.prefix());
    for batch in all.chunks(ASSERT_BATCH_MAX) {
        let args: Vec<Vec<u8>> = batch
            .iter()
            .flat_map(|(id, o)| [id.as_bytes().to_vec(), owner_value(o)])
            .collect();
        let reply = loop {
            match link.eval(ASSERT.name, vec![key.clone()], args.clone()) {
                Ok(r) => break r.await,
                Err(Refused::Busy) => sh.sleep(LINK_BUSY_RETRY).await,
                Err(_) => return false,
            }
        };
        let conflicts = match reply {
            Ok(Value::Array(v)) => v,
            other => {
                tracing::debug!(reply = ?other, "bindings not asserted now");
                return false;
            }
        };
        for pair in conflicts.chunks(2) {
            let [Value::Bulk(id), Value::Bulk(cur)] = pair else {
                continue;
            };
            let (Ok(id), Some(owner)) = (std::str::from_utf8(id), owner_of(cur)) else {
                continue;
            };
            tracing::warn!(
                agent = %id,
                "binding conflict: another node bound this agent first; its binding wins here"
            );
            let mut st = store.borrow_mut();
            st.adopt_binding(id, owner);
            if let Some(m) = st.mirror_mut() {
                m.binding_conflicts += 1;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_round_trip_and_never_hold_a_secret() {
        for o in [
            Owner::Peer("alpha-sidecar".into()),
            Owner::Address("127.0.0.1".into()),
            Owner::Peer("P:x".into()),
        ] {
            assert_eq!(owner_of(&owner_value(&o)), Some(o));
        }
        assert_eq!(owner_value(&Owner::Peer("p".into())), b"P:p");
        assert_eq!(owner_of(b"X:1"), None);
        assert_eq!(owner_of(b"\xff"), None);
    }
}
