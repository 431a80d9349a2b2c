//! Asking another node of a cluster (`--cluster`, issue 25): the owner seam one step
//! further. A key another node owns (a pairing entry that node took, an invite code it
//! issued) is asked of that node as a key another shard owns is asked of that shard:
//! a request goes out, the owner runs the service's own workflow, the answer comes back
//! as an [`Outcome`] or an [`Error`]. Service-agnostic: the request is a tag and bytes
//! the service defines; `server/` runs the workflow a tag names.
//!
//! On the wire (the link's `SPUBLISH` to the owner node's channel, `route_key` choosing
//! its shard): an ask is [`MSG_ASK`], the ask's number (8 bytes, big-endian), the
//! asking node's id and the route key of the asking shard (each a length byte and its
//! bytes), the tag (1 byte), the request's bytes. An answer is [`MSG_ANSWER`], the ask's
//! number, then [`encode_result`]'s bytes. The asking shard waits for its answer at most
//! [`NODE_ASK_TIMEOUT`]; a late answer finds no waiter and is dropped.
//!
//! Bounded: a shard has at most [`NODE_ASKS_IN_FLIGHT_MAX`] asks waiting (more: 503
//! at once, nothing sent).

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::task::{Poll, Waker};
use std::time::Duration;

use chatixia_cluster::ShardLink;

use super::{Error, Kind, Outcome, Shard};

/// The kind byte of an ask (`server::cluster`'s table of message kinds).
pub const MSG_ASK: u8 = b'q';
/// The kind byte of an answer.
pub const MSG_ANSWER: u8 = b'a';

/// Asks one shard may have waiting: each holds a waker and, once answered, the answer
/// (a pairing entry's JSON, a page of at most `--list-response-bytes-max`). An
/// operator's and a device's requests, not a data path: 256 is far beyond what one
/// shard serves at once; more is 503 ("too many requests to other nodes").
pub const NODE_ASKS_IN_FLIGHT_MAX: usize = 256;

/// How long an ask waits for its answer: the other node's workflow includes a durable
/// write (a few ms) and two hops through Redis. Longer: 503 naming the node.
pub const NODE_ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes of an answer's error message kept (a peer node is trusted, but bounded).
const ANSWER_MESSAGE_BYTES_MAX: usize = 4096;

enum Slot {
    Waiting(u64, Option<Waker>),
    Done(Result<Outcome, Error>),
}

/// A shard's asks waiting for answers from other nodes (the server holds one per shard).
pub struct NodeAsks {
    slots: RefCell<slab::Slab<Slot>>,
    next: std::cell::Cell<u64>,
    /// A route key that picks this shard (answers come back to it), found once.
    reply_key: RefCell<Option<Vec<u8>>>,
}

impl Default for NodeAsks {
    fn default() -> Self {
        // Numbers start at random: an answer meant for this node's previous process (a
        // restart within an ask's timeout) must not wake an ask of this one.
        let mut start = [0u8; 8];
        super::fill_random(&mut start);
        NodeAsks {
            slots: RefCell::new(slab::Slab::new()),
            next: std::cell::Cell::new(u64::from_be_bytes(start)),
            reply_key: RefCell::new(None),
        }
    }
}

/// Removes an ask's slot when the ask ends, whichever way (answered, timed out, or its
/// future dropped): a slot is never left behind.
struct SlotGuard<'a> {
    asks: &'a NodeAsks,
    key: usize,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let mut slots = self.asks.slots.borrow_mut();
        if slots.contains(self.key) {
            slots.remove(self.key);
        }
    }
}

impl NodeAsks {
    /// Whether no borrow of the table is held (debug builds check it before a shard asks
    /// itself).
    pub fn is_unborrowed(&self) -> bool {
        self.slots.try_borrow_mut().is_ok() && self.reply_key.try_borrow_mut().is_ok()
    }

    /// Asks waiting now.
    pub fn in_flight(&self) -> usize {
        self.slots.borrow().len()
    }

    /// An answer from another node (the body after [`MSG_ANSWER`]): wakes its ask.
    /// `false` when malformed; an answer no ask waits for (late) is dropped, `true`.
    pub fn on_answer(&self, body: &[u8]) -> bool {
        let Some((n, rest)) = take_u64(body) else {
            return false;
        };
        let Some(result) = decode_result(rest) else {
            return false;
        };
        let mut slots = self.slots.borrow_mut();
        let found = slots
            .iter()
            .find(|(_, s)| matches!(s, Slot::Waiting(m, _) if *m == n))
            .map(|(k, _)| k);
        if let Some(k) = found {
            if let Slot::Waiting(_, Some(w)) = std::mem::replace(&mut slots[k], Slot::Done(result))
            {
                w.wake();
            }
        }
        true
    }

    fn reply_key<S: Shard>(&self, sh: &S) -> Vec<u8> {
        if let Some(k) = &*self.reply_key.borrow() {
            return k.clone();
        }
        // Each try picks this shard with probability 1/shards.
        let mut i = 0u64;
        let key = loop {
            let k = format!("~ask{i}").into_bytes();
            if sh.shard_of(&k) == sh.id() || i > 100_000 {
                break k;
            }
            i += 1;
        };
        *self.reply_key.borrow_mut() = Some(key.clone());
        key
    }
}

fn take_u64(b: &[u8]) -> Option<(u64, &[u8])> {
    let (n, rest) = b.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*n), rest))
}

fn take_short(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&n, rest) = b.split_first()?;
    let n = usize::from(n);
    (rest.len() >= n).then(|| rest.split_at(n))
}

fn unavailable(node: &str, why: impl std::fmt::Display) -> Error {
    Error::unavailable(format!(
        "cluster unavailable: node `{node}`, which holds this, could not be asked ({why}); retry"
    ))
}

/// Asks node `node` (its shard for `route_key`) to run the workflow `tag` with
/// `request`; its answer, or 503 when the link refuses, too many asks wait, or no
/// answer came within [`NODE_ASK_TIMEOUT`].
pub async fn ask_node<S: Shard>(
    sh: &S,
    asks: &NodeAsks,
    node: &str,
    route_key: &[u8],
    tag: u8,
    request: &[u8],
) -> Result<Outcome, Error> {
    let Some(link) = sh.cluster() else {
        return Err(Error::internal("not in a cluster"));
    };
    if node.len() > usize::from(u8::MAX) {
        return Err(Error::internal("node id too long to ask"));
    }
    if asks.in_flight() >= NODE_ASKS_IN_FLIGHT_MAX {
        return Err(unavailable(node, "too many requests to other nodes"));
    }
    let reply_key = asks.reply_key(sh);
    let n = asks.next.get();
    asks.next.set(n.wrapping_add(1));
    let me = link.node_id().as_bytes();
    let mut body = Vec::with_capacity(12 + me.len() + reply_key.len() + request.len());
    body.push(MSG_ASK);
    body.extend_from_slice(&n.to_be_bytes());
    body.push(me.len().min(255) as u8);
    body.extend_from_slice(&me[..me.len().min(255)]);
    body.push(reply_key.len() as u8);
    body.extend_from_slice(&reply_key);
    body.push(tag);
    body.extend_from_slice(request);
    let key = asks.slots.borrow_mut().insert(Slot::Waiting(n, None));
    let _guard = SlotGuard { asks, key };
    if let Err(e) = link.publish(node, route_key, &body) {
        return Err(unavailable(node, format!("{e:?}")));
    }
    let wait = poll_fn(|cx| {
        let mut slots = asks.slots.borrow_mut();
        match slots.get_mut(key) {
            Some(Slot::Waiting(_, w)) => {
                *w = Some(cx.waker().clone());
                Poll::Pending
            }
            Some(Slot::Done(..)) => match slots.remove(key) {
                Slot::Done(r) => Poll::Ready(Some(r)),
                Slot::Waiting(..) => Poll::Ready(None),
            },
            None => Poll::Ready(None),
        }
    });
    let mut wait = std::pin::pin!(wait);
    let mut timeout = std::pin::pin!(sh.sleep(NODE_ASK_TIMEOUT));
    let answered = poll_fn(|cx| {
        if let Poll::Ready(r) = wait.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if timeout.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await;
    // Timed out: the slot goes with the guard (a late answer finds nothing).
    answered.unwrap_or_else(|| Err(unavailable(node, "no answer in time")))
}

/// An ask from another node, parsed (the body after its kind byte).
#[derive(Debug, PartialEq, Eq)]
pub struct Asked<'a> {
    pub number: u64,
    pub from: &'a str,
    pub reply_key: &'a [u8],
    pub tag: u8,
    pub request: &'a [u8],
}

/// Parses an ask (`body` after [`MSG_ASK`]); `None` when malformed.
pub fn parse_ask(body: &[u8]) -> Option<Asked<'_>> {
    let (number, rest) = take_u64(body)?;
    let (from, rest) = take_short(rest)?;
    let (reply_key, rest) = take_short(rest)?;
    let (&tag, request) = rest.split_first()?;
    Some(Asked {
        number,
        from: std::str::from_utf8(from).ok()?,
        reply_key,
        tag,
        request,
    })
}

/// Sends the answer to `asked` back to its node (best effort: a lost answer is the
/// asker's timeout).
pub fn answer(link: &ShardLink, asked: &Asked<'_>, result: &Result<Outcome, Error>) {
    let mut body = vec![MSG_ANSWER];
    body.extend_from_slice(&asked.number.to_be_bytes());
    body.extend_from_slice(&encode_result(result));
    if let Err(e) = link.publish(asked.from, asked.reply_key, &body) {
        tracing::debug!(node = asked.from, error = ?e, "answer to another node not sent");
    }
}

const KINDS: [Kind; 10] = [
    Kind::BadRequest,
    Kind::Unauthorized,
    Kind::Forbidden,
    Kind::NotFound,
    Kind::Conflict,
    Kind::TooLarge,
    Kind::Unprocessable,
    Kind::TooMany,
    Kind::Unavailable,
    Kind::Internal,
];

/// An outcome or error as bytes: a form byte, then its fields (lengths as 4 bytes
/// big-endian).
pub fn encode_result(r: &Result<Outcome, Error>) -> Vec<u8> {
    let mut out = Vec::new();
    let bytes = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    };
    match r {
        Ok(Outcome::Json(b)) => {
            out.push(b'J');
            bytes(&mut out, b);
        }
        Ok(Outcome::Static(b)) => {
            out.push(b'J');
            bytes(&mut out, b);
        }
        Ok(Outcome::Accepted(b)) => {
            out.push(b'A');
            bytes(&mut out, b);
        }
        Ok(Outcome::Page { json, next }) => {
            out.push(b'P');
            bytes(&mut out, json);
            bytes(&mut out, next.as_deref().unwrap_or("").as_bytes());
            out.push(u8::from(next.is_some()));
        }
        Err(e) => {
            out.push(b'E');
            let kind = KINDS.iter().position(|k| *k == e.kind).unwrap_or(9) as u8;
            out.push(kind);
            match &e.message {
                Some(m) => {
                    out.push(1);
                    bytes(&mut out, m.as_bytes());
                }
                None => out.push(0),
            }
            out.extend_from_slice(&e.retry_after.unwrap_or(u64::MAX).to_be_bytes());
        }
    }
    out
}

fn take_bytes(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (n, rest) = b.split_first_chunk::<4>()?;
    let n = usize::try_from(u32::from_be_bytes(*n)).ok()?;
    (rest.len() >= n).then(|| rest.split_at(n))
}

/// The inverse of [`encode_result`]; `None` when malformed.
pub fn decode_result(b: &[u8]) -> Option<Result<Outcome, Error>> {
    let (&form, rest) = b.split_first()?;
    match form {
        b'J' => Some(Ok(Outcome::Json(take_bytes(rest)?.0.to_vec()))),
        b'A' => Some(Ok(Outcome::Accepted(take_bytes(rest)?.0.to_vec()))),
        b'P' => {
            let (json, rest) = take_bytes(rest)?;
            let (next, rest) = take_bytes(rest)?;
            let has = *rest.first()? == 1;
            let next = std::str::from_utf8(next).ok()?.to_owned();
            Some(Ok(Outcome::Page {
                json: json.to_vec(),
                next: has.then_some(next),
            }))
        }
        b'E' => {
            let (&kind, rest) = rest.split_first()?;
            let kind = *KINDS.get(usize::from(kind))?;
            let (&has, rest) = rest.split_first()?;
            let (message, rest) = if has == 1 {
                let (m, rest) = take_bytes(rest)?;
                let m = String::from_utf8_lossy(m);
                let m: String = m.chars().take(ANSWER_MESSAGE_BYTES_MAX).collect();
                (Some(m), rest)
            } else {
                (None, rest)
            };
            let (retry, _) = take_u64(rest)?;
            Some(Err(Error {
                kind,
                message,
                retry_after: (retry != u64::MAX).then_some(retry),
            }))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_round_trip_and_garbage_is_refused() {
        let cases = [
            Ok(Outcome::Json(br#"{"a":1}"#.to_vec())),
            Ok(Outcome::Accepted(b"{}".to_vec())),
            Ok(Outcome::Page {
                json: b"[]".to_vec(),
                next: Some("6162".into()),
            }),
            Ok(Outcome::Page {
                json: b"[1]".to_vec(),
                next: None,
            }),
            Err(Error::unauthorized("no")),
            Err(Error::bare(Kind::Unauthorized)),
            Err(Error::too_many("slow down").retry_after(7)),
        ];
        for c in cases {
            let b = encode_result(&c);
            assert_eq!(decode_result(&b), Some(c.clone()));
            for cut in 0..b.len() {
                // Never a panic; a truncated answer is refused or (a page's flag) read.
                let _ = decode_result(&b[..cut]);
            }
        }
        assert_eq!(
            decode_result(&encode_result(&Ok(Outcome::Static(b"{}")))),
            Some(Ok(Outcome::Json(b"{}".to_vec())))
        );
        assert_eq!(decode_result(b"Z"), None);
        assert_eq!(decode_result(b"E\xff"), None);
    }

    #[test]
    fn asks_parse_and_malformed_ones_do_not() {
        let mut b = 7u64.to_be_bytes().to_vec();
        b.extend_from_slice(&[2, b'n', b'1', 1, b'k', 3]);
        b.extend_from_slice(b"req");
        assert_eq!(
            parse_ask(&b),
            Some(Asked {
                number: 7,
                from: "n1",
                reply_key: b"k",
                tag: 3,
                request: b"req"
            })
        );
        for cut in 0..12 {
            assert_eq!(parse_ask(&b[..cut]), None, "{cut}");
        }
        let asks = NodeAsks::default();
        assert!(!asks.on_answer(b"short"));
        let mut late = 9u64.to_be_bytes().to_vec();
        late.extend_from_slice(&encode_result(&Ok(Outcome::Json(b"1".to_vec()))));
        assert!(
            asks.on_answer(&late),
            "a late answer is dropped, not malformed"
        );
    }
}
