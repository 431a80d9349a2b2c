//! RESP2 on the wire: commands out (arrays of bulk strings, written directly:
//! [`encode_command`]), replies in as [`Value`]s through the sans-IO `redis-protocol`
//! codec.

use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;

use crate::Value;

/// Appends `args` as one command (a RESP2 array of bulk strings) to `out`: `*N\r\n`,
/// then `$len\r\n` and the bytes and `\r\n` for each. Written directly rather than
/// through `redis-protocol`'s encoder, which builds a frame per argument in a new
/// `Vec`, sizes the output by counting digits with `f64::log10` (twice per argument)
/// and zero-fills it first: ~3% of a node's CPU on cross-node relays (`perf`). The
/// crate still decodes (the part with cases); `tests::direct_encoding_matches_the_codec`
/// checks the two agree. `pub` for the criterion bench (`cargo bench -p
/// chatixia-cluster --bench resp`).
#[doc(hidden)]
pub fn encode_command<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    let body = args
        .iter()
        .fold(0usize, |n, a| n.saturating_add(a.as_ref().len()));
    // Each argument's header is at most `$` + 20 digits + CRLF, and its CRLF after.
    out.reserve(
        args.len()
            .saturating_mul(25)
            .saturating_add(body)
            .saturating_add(23),
    );
    push_header(out, b'*', args.len());
    for a in args {
        let a = a.as_ref();
        push_header(out, b'$', a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// `kind`, `n` in decimal, CRLF.
fn push_header(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The first complete reply in `buf` and the bytes it took; `Ok(None)` when `buf` holds
/// only part of one. An error means the stream is not RESP2 (the connection is useless).
pub(crate) fn decode_reply(buf: &[u8]) -> Result<Option<(Value, usize)>, String> {
    // The codec and `to_value` recurse once per nested array: a reply nested past
    // `REPLY_DEPTH_MAX` (from something that is not a sane Redis) is refused before
    // either runs, or it would overflow the link thread's stack and abort the node.
    if nests_deeper_than(buf, REPLY_DEPTH_MAX) {
        return Err(format!(
            "a reply nested deeper than {REPLY_DEPTH_MAX} arrays"
        ));
    }
    match decode(buf) {
        Ok(Some((frame, n))) => Ok(Some((to_value(frame), n))),
        Ok(None) => Ok(None),
        Err(e) => Err(format!("a reply that is not RESP2: {e}")),
    }
}

/// Arrays a reply may nest: the deepest this link reads is 3 (a script's list of lists,
/// inside nothing; a pushed `smessage` is 1). Deeper is refused as not RESP from Redis.
pub(crate) const REPLY_DEPTH_MAX: usize = 32;

/// Whether the first reply in `buf` nests more than `max` arrays, found without
/// recursion (a stack of at most `max` counts). Incomplete or malformed input answers
/// `false`: the codec then waits for more or refuses it.
fn nests_deeper_than(buf: &[u8], max: usize) -> bool {
    let mut open: Vec<i64> = Vec::new();
    let mut pos = 0;
    loop {
        let Some(kind) = buf.get(pos).copied() else {
            return false;
        };
        // A line is a kind byte, its text and `\r\n`: a `\r\n` in the kind's place is
        // not RESP (the codec refuses it).
        let Some(eol) = memchr_crlf(&buf[pos..]).filter(|&e| e >= 1) else {
            return false;
        };
        let line = &buf[pos + 1..pos + eol];
        let after = pos + eol + 2;
        let n: Option<i64> = std::str::from_utf8(line).ok().and_then(|t| t.parse().ok());
        match kind {
            b'*' => {
                let Some(n) = n else { return false };
                pos = after;
                if n > 0 {
                    if open.len() >= max {
                        return true;
                    }
                    open.push(n);
                    continue;
                }
            }
            b'$' => {
                let Some(n) = n else { return false };
                pos = if n < 0 {
                    after
                } else {
                    match usize::try_from(n)
                        .ok()
                        .and_then(|n| after.checked_add(n + 2))
                    {
                        Some(p) => p,
                        None => return false,
                    }
                };
            }
            b'+' | b'-' | b':' => pos = after,
            _ => return false,
        }
        // One element done: close the arrays it completes.
        loop {
            match open.last_mut() {
                None => return false,
                Some(left) => {
                    *left -= 1;
                    if *left > 0 {
                        break;
                    }
                    open.pop();
                }
            }
        }
    }
}

/// Bytes of one line of a reply (an array's or a bulk string's header, a simple string,
/// an error, an integer) the scanner keeps while the line is split between reads:
/// Redis's lines are a number or a short message; a longer one is not RESP from Redis
/// and fails the connection.
const LINE_BYTES_MAX: usize = 64 << 10;

/// Finds where a reply ends as its bytes arrive, reading each byte once and keeping
/// none but a split line ([`LINE_BYTES_MAX`]): the connection decodes a reply only once
/// it is whole (not again at every read of a large one), and can read past a reply
/// over `REPLY_BYTES_MAX` without keeping it (`conn::Conn::decode`).
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Elements left in each array open, innermost last (at most [`REPLY_DEPTH_MAX`]).
    open: Vec<i64>,
    /// Bytes of a bulk string's body and its `\r\n` not yet passed.
    bulk_left: u64,
    /// The line being read, while it is split between reads.
    line: Vec<u8>,
}

impl Scan {
    /// Passes `buf`, the bytes after those already fed: `Ok(Some(n))` when the reply
    /// ends after the first `n` bytes of `buf` (the scanner is then ready for the next
    /// reply), `Ok(None)` when all of `buf` is part of it and more is to come, `Err`
    /// when the stream is not RESP2 (the connection is useless).
    pub(crate) fn feed(&mut self, buf: &[u8]) -> Result<Option<usize>, String> {
        let mut pos = 0;
        loop {
            if self.bulk_left > 0 {
                let n = usize::try_from(self.bulk_left)
                    .unwrap_or(usize::MAX)
                    .min(buf.len() - pos);
                pos += n;
                self.bulk_left -= n as u64;
                if self.bulk_left > 0 {
                    return Ok(None);
                }
                if self.element_done() {
                    return Ok(Some(pos));
                }
                continue;
            }
            let rest = &buf[pos..];
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                if self.line.len() + rest.len() > LINE_BYTES_MAX {
                    return Err(format!("a reply line over {LINE_BYTES_MAX} bytes"));
                }
                self.line.extend_from_slice(rest);
                return Ok(None);
            };
            if self.line.len() + nl + 1 > LINE_BYTES_MAX {
                return Err(format!("a reply line over {LINE_BYTES_MAX} bytes"));
            }
            self.line.extend_from_slice(&rest[..=nl]);
            pos += nl + 1;
            let line = std::mem::take(&mut self.line);
            let Some(text) = line
                .strip_suffix(b"\r\n")
                .and_then(|l| l.get(1..))
                .filter(|_| line.len() >= 3)
            else {
                return Err("a reply that is not RESP2: a line without its kind or \\r\\n".into());
            };
            let num = || {
                std::str::from_utf8(text)
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok())
                    .ok_or_else(|| {
                        "a reply that is not RESP2: a length that is not a number".to_string()
                    })
            };
            let done = match line[0] {
                b'*' => {
                    let n = num()?;
                    if n > 0 {
                        if self.open.len() >= REPLY_DEPTH_MAX {
                            return Err(format!(
                                "a reply nested deeper than {REPLY_DEPTH_MAX} arrays"
                            ));
                        }
                        self.open.push(n);
                        false
                    } else {
                        true
                    }
                }
                b'$' => {
                    let n = num()?;
                    match u64::try_from(n) {
                        Ok(n) => {
                            self.bulk_left = n.saturating_add(2);
                            false
                        }
                        Err(_) => true,
                    }
                }
                b'+' | b'-' | b':' => true,
                k => return Err(format!("a reply that is not RESP2: kind byte {k:#04x}")),
            };
            if done && self.element_done() {
                return Ok(Some(pos));
            }
        }
    }

    /// One element ended: closes the arrays it completes; whether the reply ended.
    fn element_done(&mut self) -> bool {
        loop {
            match self.open.last_mut() {
                None => return true,
                Some(left) => {
                    *left -= 1;
                    if *left > 0 {
                        return false;
                    }
                    self.open.pop();
                }
            }
        }
    }
}

/// Where the first `\r\n` of `b` starts.
fn memchr_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

fn to_value(frame: OwnedFrame) -> Value {
    match frame {
        OwnedFrame::SimpleString(s) => Value::Simple(String::from_utf8_lossy(&s).into_owned()),
        OwnedFrame::Error(e) => Value::Error(e),
        OwnedFrame::Integer(i) => Value::Int(i),
        OwnedFrame::BulkString(b) => Value::Bulk(b),
        OwnedFrame::Array(items) => Value::Array(items.into_iter().map(to_value).collect()),
        OwnedFrame::Null => Value::Nil,
    }
}

impl Value {
    /// The bytes of a bulk or simple string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(b) => Some(b),
            Value::Simple(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// The error text of an error reply.
    pub fn as_error(&self) -> Option<&str> {
        match self {
            Value::Error(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_is_an_array_of_bulk_strings() {
        let mut out = b"x".to_vec();
        encode_command(&mut out, &[b"SET".as_slice(), b"k", b""]);
        assert_eq!(out, b"x*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    /// The direct encoding is byte for byte the codec's, across argument counts and
    /// lengths of one to six digits, and what it writes decodes back to the arguments.
    #[test]
    fn direct_encoding_matches_the_codec() {
        use redis_protocol::resp2::encode::encode_borrowed;
        use redis_protocol::resp2::types::BorrowedFrame;
        let lens = [0usize, 1, 9, 10, 99, 100, 999, 1000, 65_535, 100_000];
        let blobs: Vec<Vec<u8>> = lens
            .iter()
            .map(|&n| vec![b'a' + (n % 26) as u8; n])
            .collect();
        for count in 0..=blobs.len() {
            for start in 0..blobs.len() {
                let args: Vec<&[u8]> = (0..count)
                    .map(|i| blobs[(start + i) % blobs.len()].as_slice())
                    .collect();
                let mut ours = Vec::new();
                encode_command(&mut ours, &args);
                let items: Vec<BorrowedFrame<'_>> =
                    args.iter().map(|a| BorrowedFrame::BulkString(a)).collect();
                let frame = BorrowedFrame::Array(&items);
                let mut theirs = vec![0u8; frame.encode_len(false)];
                let n = encode_borrowed(&mut theirs, &frame, false).unwrap();
                theirs.truncate(n);
                assert_eq!(ours, theirs, "{count} args from {start}");
                let (v, used) = decode_reply(&ours).unwrap().unwrap();
                assert_eq!(used, ours.len());
                let Value::Array(items) = v else {
                    panic!("not an array")
                };
                let back: Vec<Vec<u8>> = items
                    .iter()
                    .map(|i| i.as_bytes().unwrap().to_vec())
                    .collect();
                assert_eq!(back, args.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn replies_decode_whole_or_not_at_all() {
        let wire = b"+OK\r\n-ERR no\r\n:42\r\n$-1\r\n*2\r\n$1\r\na\r\n*0\r\n$3\r\nab";
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((v, n)) = decode_reply(&wire[at..]).unwrap() {
            got.push(v);
            at += n;
        }
        assert_eq!(
            got,
            vec![
                Value::Simple("OK".into()),
                Value::Error("ERR no".into()),
                Value::Int(42),
                Value::Nil,
                Value::Array(vec![Value::Bulk(b"a".to_vec()), Value::Array(vec![])]),
            ]
        );
        assert_eq!(&wire[at..], b"$3\r\nab");
        assert!(decode_reply(b"?what\r\n").is_err());
    }
}

#[cfg(test)]
mod scan_tests {
    use super::*;

    /// Feeds `wire` in pieces of `step` bytes: where each reply ended.
    fn ends(wire: &[u8], step: usize) -> Vec<usize> {
        let mut s = Scan::default();
        let mut out = Vec::new();
        let (mut at, mut fed) = (0, 0);
        while fed < wire.len() {
            let end = (fed + step).min(wire.len());
            let mut from = fed;
            while let Some(n) = s.feed(&wire[from..end]).unwrap() {
                at = from + n;
                out.push(at);
                from = at;
                if from == end {
                    break;
                }
            }
            fed = end;
        }
        let _ = at;
        out
    }

    #[test]
    fn replies_end_where_the_decoder_says_in_any_pieces() {
        let wire: &[u8] = b"+OK\r\n-ERR no\r\n:42\r\n$-1\r\n*-1\r\n*0\r\n$0\r\n\r\n\
            *2\r\n$3\r\na\r\n\r\n*2\r\n:1\r\n*1\r\n+x\r\n+\r\n";
        let mut want = Vec::new();
        let mut at = 0;
        while let Some((_, n)) = decode_reply(&wire[at..]).unwrap() {
            at += n;
            want.push(at);
        }
        assert_eq!(at, wire.len());
        for step in 1..=wire.len() {
            assert_eq!(ends(wire, step), want, "in pieces of {step}");
        }
    }

    #[test]
    fn what_is_not_resp_is_refused() {
        for bad in [&b"?x\r\n"[..], b"*x\r\n", b"$1\n", b"\r\n"] {
            assert!(Scan::default().feed(bad).is_err(), "{bad:?}");
        }
        let mut deep = Vec::new();
        for _ in 0..=REPLY_DEPTH_MAX {
            deep.extend_from_slice(b"*1\r\n");
        }
        assert!(Scan::default().feed(&deep).unwrap_err().contains("nested"));
        let long = vec![b'+'; LINE_BYTES_MAX + 1];
        assert!(Scan::default().feed(&long).is_err());
    }
}

#[cfg(test)]
mod depth_tests {
    use super::*;

    /// Runs `f` on a thread with a shard's stack (2 MiB): a recursion that would
    /// overflow there aborts the test.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn a_reply_nested_past_the_limit_is_refused_not_a_stack_overflow() {
        let mut deep = Vec::new();
        for _ in 0..200_000 {
            deep.extend_from_slice(b"*1\r\n");
        }
        deep.extend_from_slice(b":1\r\n");
        let r = on_small_stack(move || decode_reply(&deep));
        assert!(r.unwrap_err().contains("nested deeper than"));
        // At the limit it decodes.
        let mut ok = Vec::new();
        for _ in 0..REPLY_DEPTH_MAX {
            ok.extend_from_slice(b"*1\r\n");
        }
        ok.extend_from_slice(b"$2\r\nhi\r\n");
        let (v, n) = decode_reply(&ok).unwrap().unwrap();
        assert_eq!(n, ok.len());
        let mut v = &v;
        for _ in 0..REPLY_DEPTH_MAX {
            match v {
                Value::Array(a) => v = &a[0],
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(v, &Value::Bulk(b"hi".to_vec()));
    }

    #[test]
    fn the_depth_scan_reads_only_the_first_reply_and_skips_bulk_bodies() {
        // A bulk body that looks like arrays does not count.
        let mut b = b"*2\r\n$8\r\n*1\r\n*1\r\n\r\n:5\r\n".to_vec();
        assert!(!nests_deeper_than(&b, 1));
        // What follows the first reply is not looked at.
        b.extend_from_slice(b"*1\r\n*1\r\n*1\r\n:1\r\n");
        assert!(!nests_deeper_than(&b, 1));
        assert!(nests_deeper_than(b"*1\r\n*1\r\n:1\r\n", 1));
        // Incomplete or garbage: left to the codec.
        assert!(!nests_deeper_than(b"*1\r\n*1", 1));
        assert!(!nests_deeper_than(b"?x\r\n", 1));
        assert!(!nests_deeper_than(b"$99999999999999999999\r\n", 1));
        // Found by fuzz/fuzz_targets/cluster_inbound.rs: a line break where a kind byte
        // belongs (it sliced backwards and panicked).
        assert!(!nests_deeper_than(
            b"*2\r\n*+1\r\n$2\r\nab\r\n\r\n$\xff\xff\n",
            8
        ));
        assert!(decode_reply(b"*2\r\n*+1\r\n$2\r\nab\r\n\r\n$\xff\xff\n").is_err());
    }
}
