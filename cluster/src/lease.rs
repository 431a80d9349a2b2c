//! The sans-IO parts of the link thread's duties: the node's lease (its script, the
//! members it reports), the subscription probe and the reconnect backoff. Each takes
//! `now` and replies; the link thread does the I/O.

use std::time::{Duration, Instant};

use crate::Value;

/// Renews this node's lease and lists the members, in one round trip on Redis's clock.
/// `KEYS[1]` is `{prefix}nodes`, a sorted set of node ids scored by lease expiry (Unix
/// ms), `KEYS[2]` `{prefix}holders`, node id → the incarnation (a random token drawn at
/// each process start) that holds its lease; `ARGV[1]` the node id, `ARGV[2]` the lease
/// in ms, `ARGV[3]` this process's incarnation.
///
/// A lease that runs (score ≥ now) and is held by another incarnation is not touched:
/// the reply is `{"held", ms it runs still, its expiry}` (two processes started with one
/// `--node-id`; or this one was paused past its lease and another took the id
/// meanwhile). Otherwise the lease is taken or renewed and the reply is `{live, gone,
/// lapsed}`: the nodes whose lease runs and those whose lease ran out but are still in
/// the set, and 1 when this process's own lease had run out, been removed or been held
/// by another incarnation before this renewal. Nothing here removes a gone node: the
/// server removes it (`ZREM`) once it has cleaned up what the node held, so a crash
/// between the two leaves it listed as gone and the next node's renewal reports it
/// again.
pub(crate) const LEASE_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prev = redis.call('ZSCORE', KEYS[1], ARGV[1])
local holder = redis.call('HGET', KEYS[2], ARGV[1])
if prev and tonumber(prev) >= now and holder and holder ~= ARGV[3] then
  return {'held', tonumber(prev) - now, tonumber(prev)}
end
local lapsed = 0
if (not prev) or tonumber(prev) < now or holder ~= ARGV[3] then lapsed = 1 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now))
return {live, gone, lapsed}
"#;

/// Hands this process's lease back at a graceful stop: removes the node from
/// `KEYS[1]` (`{prefix}nodes`) and its holder from `KEYS[2]` only while `ARGV[2]` (this
/// incarnation) holds it (`ARGV[1]` the node id): a process that lost the id to another
/// does not remove that one's lease. 1 when handed back.
pub(crate) const HAND_BACK_SCRIPT: &str = r#"
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
"#;

/// The error a guarded script ([`guarded`]) answers when this incarnation does not hold
/// the node's lease.
pub(crate) const NOT_HOLDER: &str = "CHX_NOT_HOLDER";

/// `source` run only while this incarnation holds the node's lease: the caller appends
/// `{prefix}holders` to the script's keys and the node id and the incarnation to its
/// args; the script itself sees its own keys and args only. Used for the node's connect
/// and stop scripts (they remove every entry naming the node id: run by a process that
/// does not hold the id, they would remove the holder's).
pub(crate) fn guarded(source: &str) -> String {
    format!(
        r#"
local chx_k, chx_a = KEYS, ARGV
local chx_n = #chx_a
if redis.call('HGET', chx_k[#chx_k], chx_a[chx_n - 1]) ~= chx_a[chx_n] then
  return redis.error_reply('{NOT_HOLDER} another process holds this node id')
end
local KEYS = {{unpack(chx_k, 1, #chx_k - 1)}}
local ARGV = {{unpack(chx_a, 1, chx_n - 2)}}
{source}"#
    )
}

/// What [`LEASE_SCRIPT`] answered.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LeaseReply {
    /// Renewed (or taken): the live and gone nodes, each sorted, and whether this
    /// process's lease had lapsed.
    Granted {
        live: Vec<String>,
        gone: Vec<String>,
        lapsed: bool,
    },
    /// Another incarnation holds the node id's lease: it runs `remaining_ms` more and
    /// expires at `expiry_ms` (Unix ms on Redis's clock; a later refusal with a later
    /// expiry means the holder renewed it, so is alive).
    Held { remaining_ms: i64, expiry_ms: i64 },
}

/// [`LeaseReply`] from [`LEASE_SCRIPT`]'s reply.
pub(crate) fn parse_lease_reply(v: &Value) -> Result<LeaseReply, String> {
    let list = |v: &Value| -> Result<Vec<String>, String> {
        let Value::Array(items) = v else {
            return Err(format!("lease renewal: expected a list, got {v:?}"));
        };
        let mut out = items
            .iter()
            .map(|i| {
                i.as_bytes()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .ok_or_else(|| format!("lease renewal: expected a node id, got {i:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.sort();
        Ok(out)
    };
    match v {
        Value::Array(three) if three.len() == 3 && three[0].as_bytes() == Some(b"held") => {
            match (&three[1], &three[2]) {
                (Value::Int(remaining_ms), Value::Int(expiry_ms)) => Ok(LeaseReply::Held {
                    remaining_ms: *remaining_ms,
                    expiry_ms: *expiry_ms,
                }),
                _ => Err(format!("lease renewal: unexpected reply {v:?}")),
            }
        }
        Value::Array(three) if three.len() == 3 => Ok(LeaseReply::Granted {
            live: list(&three[0])?,
            gone: list(&three[1])?,
            lapsed: three[2] == Value::Int(1),
        }),
        Value::Error(e) => Err(format!("lease renewal refused: {e}")),
        other => Err(format!("lease renewal: unexpected reply {other:?}")),
    }
}

/// What was last reported to the shards: a report is due when either list changed, and
/// once after every Up.
#[derive(Default)]
pub(crate) struct Members {
    last: Option<(Vec<String>, Vec<String>)>,
}

impl Members {
    /// Forget the last report (after a Down): the next renewal is reported.
    pub(crate) fn reset(&mut self) {
        self.last = None;
    }

    /// `Some((live, gone))` when it is to be reported.
    pub(crate) fn update(
        &mut self,
        live: Vec<String>,
        gone: Vec<String>,
    ) -> Option<(Vec<String>, Vec<String>)> {
        let next = (live, gone);
        if self.last.as_ref() == Some(&next) {
            return None;
        }
        self.last = Some(next.clone());
        Some(next)
    }
}

/// The subscription probe: a message the link publishes to its own channel every
/// `probe_interval`; the oldest probe not yet seen must be seen within
/// [`PROBE_MISSED_AFTER`] intervals, or the subscription is declared dead.
pub(crate) struct Probe {
    /// This link's tag: a probe from another process with the same node id (a node
    /// restarted under the same name while the old one lingers) is not ours.
    nonce: u64,
    next_seq: u64,
    oldest_unseen: Option<(u64, Instant)>,
}

/// How many probe intervals the oldest unseen probe may take: a Redis busy for one
/// interval (a slow script, a fork for a snapshot) is not a dead subscription.
pub(crate) const PROBE_MISSED_AFTER: u32 = 3;

/// A probe's body: this marker, the nonce and the sequence number (big-endian).
const PROBE_MARK: &[u8] = b"chx-probe:";

impl Probe {
    pub(crate) fn new(nonce: u64) -> Probe {
        Probe {
            nonce,
            next_seq: 0,
            oldest_unseen: None,
        }
    }

    /// After a (re)connect: nothing is outstanding.
    pub(crate) fn reset(&mut self) {
        self.oldest_unseen = None;
    }

    /// The body of the next probe (sent at `now`).
    pub(crate) fn send(&mut self, now: Instant) -> Vec<u8> {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.oldest_unseen.is_none() {
            self.oldest_unseen = Some((seq, now));
        }
        let mut body = PROBE_MARK.to_vec();
        body.extend_from_slice(&self.nonce.to_be_bytes());
        body.extend_from_slice(&seq.to_be_bytes());
        body
    }

    /// A link message (framed with [`crate::LINK_KEY_LEN`]) arrived with `body`: whether
    /// it was one of ours.
    pub(crate) fn seen(&mut self, body: &[u8]) -> bool {
        let Some(rest) = body.strip_prefix(PROBE_MARK) else {
            return false;
        };
        if rest.len() != 16 || rest[..8] != self.nonce.to_be_bytes() {
            return false;
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&rest[8..]);
        let seq = u64::from_be_bytes(seq);
        if matches!(self.oldest_unseen, Some((oldest, _)) if seq >= oldest) {
            self.oldest_unseen = None;
        }
        true
    }

    /// When the oldest unseen probe will have been missed.
    pub(crate) fn deadline(&self, interval: Duration) -> Option<Instant> {
        self.oldest_unseen
            .map(|(_, at)| at + interval * PROBE_MISSED_AFTER)
    }
}

/// The first wait before a reconnect: soon enough that a restarted Redis is found again
/// at once, long enough not to hammer one that refuses.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest wait between reconnects: a Redis that comes back is found within 5 s.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Reconnect backoff: [`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`], back to the minimum
/// after a connection comes up.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff { next: BACKOFF_MIN }
    }

    pub(crate) fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    /// The wait before the next attempt.
    pub(crate) fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn bulks(v: &[&str]) -> Value {
        Value::Array(
            v.iter()
                .map(|s| Value::Bulk(s.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn lease_replies_parse_sorted_and_bad_ones_are_errors() {
        let v = Value::Array(vec![bulks(&["b", "a"]), bulks(&["c"]), Value::Int(0)]);
        assert_eq!(
            parse_lease_reply(&v),
            Ok(LeaseReply::Granted {
                live: s(&["a", "b"]),
                gone: s(&["c"]),
                lapsed: false
            })
        );
        let v = Value::Array(vec![bulks(&["a"]), bulks(&[]), Value::Int(1)]);
        assert_eq!(
            parse_lease_reply(&v),
            Ok(LeaseReply::Granted {
                live: s(&["a"]),
                gone: s(&[]),
                lapsed: true
            })
        );
        let v = Value::Array(vec![
            Value::Bulk(b"held".to_vec()),
            Value::Int(900),
            Value::Int(1_700_000_000_900),
        ]);
        assert_eq!(
            parse_lease_reply(&v),
            Ok(LeaseReply::Held {
                remaining_ms: 900,
                expiry_ms: 1_700_000_000_900
            })
        );
        let v = Value::Array(vec![
            Value::Bulk(b"held".to_vec()),
            Value::Nil,
            Value::Int(1),
        ]);
        assert!(parse_lease_reply(&v).is_err());
        assert!(parse_lease_reply(&Value::Error("ERR x".into()))
            .unwrap_err()
            .contains("ERR x"));
        assert!(parse_lease_reply(&Value::Int(1)).is_err());
        assert!(parse_lease_reply(&Value::Array(vec![bulks(&[]), Value::Int(3)])).is_err());
        assert!(parse_lease_reply(&Value::Array(vec![
            Value::Array(vec![Value::Nil]),
            bulks(&[]),
            Value::Int(0)
        ]))
        .is_err());
    }

    #[test]
    fn members_are_reported_on_change_and_after_a_reset() {
        let mut m = Members::default();
        assert!(m.update(s(&["a"]), s(&[])).is_some());
        assert!(m.update(s(&["a"]), s(&[])).is_none());
        assert!(m.update(s(&["a", "b"]), s(&[])).is_some());
        assert!(m.update(s(&["a"]), s(&["b"])).is_some());
        assert!(m.update(s(&["a"]), s(&["b"])).is_none());
        m.reset();
        assert!(m.update(s(&["a"]), s(&["b"])).is_some());
    }

    #[test]
    fn a_probe_is_missed_three_intervals_after_the_oldest_unseen_one() {
        let t0 = Instant::now();
        let i = Duration::from_secs(1);
        let mut p = Probe::new(7);
        assert_eq!(p.deadline(i), None);
        let b0 = p.send(t0);
        let b1 = p.send(t0 + i);
        assert_eq!(p.deadline(i), Some(t0 + 3 * i));
        assert!(p.seen(&b0));
        assert_eq!(p.deadline(i), None);
        let _b2 = p.send(t0 + 2 * i);
        assert_eq!(p.deadline(i), Some(t0 + 5 * i));
        // An older one seen late does not clear a newer one outstanding.
        assert!(p.seen(&b1));
        assert_eq!(p.deadline(i), Some(t0 + 5 * i));
        // Another link's probe (another nonce) and other bodies are not ours.
        let mut other = Probe::new(8);
        assert!(!p.seen(&other.send(t0)));
        assert!(!p.seen(b"hello"));
        p.reset();
        assert_eq!(p.deadline(i), None);
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new();
        let waits: Vec<_> = (0..8).map(|_| b.next()).collect();
        assert_eq!(waits[0], BACKOFF_MIN);
        assert_eq!(waits[1], BACKOFF_MIN * 2);
        assert_eq!(*waits.last().unwrap(), BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next(), BACKOFF_MIN);
    }
}
