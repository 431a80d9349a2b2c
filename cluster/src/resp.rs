//! RESP2 on the wire, through the sans-IO `redis-protocol` codec: commands out (arrays of
//! bulk strings), replies in as [`Value`]s.

use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, OwnedFrame};

use crate::Value;

/// Appends `args` as one command (a RESP2 array of bulk strings) to `out`.
pub(crate) fn encode_command<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    let items: Vec<BorrowedFrame<'_>> = args
        .iter()
        .map(|a| BorrowedFrame::BulkString(a.as_ref()))
        .collect();
    let frame = BorrowedFrame::Array(&items);
    let len = frame.encode_len(false);
    let at = out.len();
    out.resize(at + len, 0);
    match encode_borrowed(&mut out[at..], &frame, false) {
        Ok(n) => out.truncate(at + n),
        // Cannot happen (the buffer is sized by the codec itself); write it by hand then.
        Err(_) => {
            out.truncate(at);
            encode_by_hand(out, args);
        }
    }
}

fn encode_by_hand<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// The first complete reply in `buf` and the bytes it took; `Ok(None)` when `buf` holds
/// only part of one. An error means the stream is not RESP2 (the connection is useless).
pub(crate) fn decode_reply(buf: &[u8]) -> Result<Option<(Value, usize)>, String> {
    match decode(buf) {
        Ok(Some((frame, n))) => Ok(Some((to_value(frame), n))),
        Ok(None) => Ok(None),
        Err(e) => Err(format!("a reply that is not RESP2: {e}")),
    }
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
        let mut hand = Vec::new();
        encode_by_hand(&mut hand, &[b"SET".as_slice(), b"k", b""]);
        assert_eq!(hand, out[1..]);
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
