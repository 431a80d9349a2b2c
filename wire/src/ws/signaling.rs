//! Signaling messages (PROTOCOL.md §7), sans-IO: what a text frame asks for, and the
//! frames the server sends.
//!
//! Relays splice the sender's `payload` bytes into the outgoing frame as they came
//! (`serde_json::value::RawValue`): the payload (an SDP of a few KiB) is validated as
//! JSON once and never decoded into a tree or re-encoded. A message nesting deeper
//! than [`JSON_DEPTH_MAX`] is refused before it is parsed ([`Action::TooDeep`]): the
//! server itself never recurses over a payload, but its receivers do (a Python agent's
//! `json.loads` raises at about 1,000 levels, serde_json at 128).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::codec;
use crate::json::{check_depth, check_strict, TooDeep, JSON_DEPTH_MAX};

pub mod client;
mod scan;
pub use client::SignalMessage;

/// The kinds of relayed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayKind {
    Offer,
    Answer,
    IceCandidate,
}

impl RelayKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayKind::Offer => "offer",
            RelayKind::Answer => "answer",
            RelayKind::IceCandidate => "ice_candidate",
        }
    }
}

/// What a text frame asks the server to do. Borrowed from the frame: interpreting
/// allocates nothing unless an id needs unescaping.
#[derive(Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Answer with the peer list.
    Register,
    /// Forward to `target` the sender's `payload` (raw JSON, `null` when absent) in a
    /// frame built by [`relay_frame`] or [`relay_text_frame`].
    Relay {
        kind: RelayKind,
        target: Cow<'a, str>,
        payload: &'a str,
    },
    /// Keep-alive; nothing to do.
    Heartbeat,
    /// Dropped, with why (for debug logs and counters): the connection stays open.
    Ignore(&'static str),
    /// Dropped because it nests deeper than [`JSON_DEPTH_MAX`] (whether or not it is
    /// valid JSON): the server answers with an [`error_frame`] naming the depth and the
    /// limit, and the connection stays open.
    TooDeep(TooDeep),
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    peer_id: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "borrowed_option")]
    target_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
}

/// `Option<Cow<str>>` borrowed from the input: serde's `borrow` does not reach through
/// the `Option` (an owned `String` per relayed message otherwise), the newtype does.
fn borrowed_option<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'a>>::deserialize(d)?.map(|b| b.0))
}

/// Interprets one text frame from the connection whose identity is `identity`, given as
/// bytes (a frame that is not UTF-8 is unparsable).
pub fn interpret<'a>(text: &'a [u8], identity: &str) -> Action<'a> {
    match std::str::from_utf8(text) {
        Ok(text) => interpret_str(text, identity),
        Err(_) => match check_depth(text, JSON_DEPTH_MAX) {
            Err(e) => Action::TooDeep(e),
            Ok(()) => Action::Ignore("unparsable frame"),
        },
    }
}

/// [`interpret`] of a text message whose UTF-8 is already checked (the codec's
/// `WsEvent::Text`): parsed as a `str`, so serde does not check each string again as
/// it reads it (from bytes it does: ~670 instructions a relayed offer).
///
/// A message of the usual shape is read in one pass (`scan`); anything else by serde
/// ([`interpret_str_parsed`]), which decides the same wherever both decide.
pub fn interpret_str<'a>(text: &'a str, identity: &str) -> Action<'a> {
    if let Err(e) = check_depth(text.as_bytes(), JSON_DEPTH_MAX) {
        return Action::TooDeep(e);
    }
    scan::interpret(text, identity).unwrap_or_else(|| parsed(text, identity))
}

/// [`interpret_str`] through serde alone: the definition the one-pass reading is
/// checked against (its tests, the `signaling` fuzz target).
pub fn interpret_str_parsed<'a>(text: &'a str, identity: &str) -> Action<'a> {
    if let Err(e) = check_depth(text.as_bytes(), JSON_DEPTH_MAX) {
        return Action::TooDeep(e);
    }
    parsed(text, identity)
}

/// The serde path of [`interpret_str`], the depth checked.
fn parsed<'a>(text: &'a str, identity: &str) -> Action<'a> {
    let Ok(msg) = serde_json::from_str::<Incoming<'_>>(text) else {
        return Action::Ignore("unparsable frame");
    };
    if msg.peer_id != identity {
        return Action::Ignore("peer_id differs from the connection's identity");
    }
    let kind = match msg.kind.as_ref() {
        "register" => return Action::Register,
        "heartbeat" => return Action::Heartbeat,
        "offer" => RelayKind::Offer,
        "answer" => RelayKind::Answer,
        "ice_candidate" => RelayKind::IceCandidate,
        _ => return Action::Ignore("unknown type"),
    };
    let Some(target) = msg.target_id else {
        return Action::Ignore("relay without target_id");
    };
    let payload = msg.payload.map_or("null", |p| p.get());
    // The payload is spliced as it came: it must be JSON that a full parse accepts too
    // (see [`check_strict`]); the reference, which parses the whole message, drops such
    // a frame as unparsable.
    if check_strict(payload).is_err() {
        return Action::Ignore("unparsable frame");
    }
    Action::Relay {
        kind,
        target,
        payload,
    }
}

/// [`relay_frame`] already framed as a WebSocket text frame, built in one allocation of
/// exactly its size (the relay's hot path: no second buffer, no copy, and a
/// `into_boxed_slice` that does not reallocate). Ids that need JSON escaping take the
/// general path.
pub fn relay_text_frame(kind: RelayKind, from: &str, target: &str, payload_json: &str) -> Vec<u8> {
    let plain = |s: &str| s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
    if !(plain(from) && plain(target)) {
        let json = relay_frame(kind, from, target, payload_json);
        let mut out = Vec::with_capacity(codec::text_frame_len(json.len()));
        codec::encode_text(&json, &mut out);
        return out;
    }
    const PARTS: [&[u8]; 5] = [
        b"{\"type\":\"",
        b"\",\"peer_id\":\"",
        b"\",\"target_id\":\"",
        b"\",\"payload\":",
        b"}",
    ];
    let fixed: usize = PARTS.iter().map(|p| p.len()).sum();
    let len = fixed + kind.as_str().len() + from.len() + target.len() + payload_json.len();
    let mut out = Vec::with_capacity(codec::text_frame_len(len));
    codec::encode_text_header(len, &mut out);
    for (part, value) in PARTS
        .iter()
        .zip([kind.as_str(), from, target, payload_json, ""])
    {
        out.extend_from_slice(part);
        out.extend_from_slice(value.as_bytes());
    }
    debug_assert_eq!(out.len(), out.capacity());
    out
}

/// `{"type":…,"peer_id":…,"target_id":…,"payload":…}` with `payload` spliced raw.
pub fn relay_frame(kind: RelayKind, from: &str, target: &str, payload_json: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + from.len() + target.len() + payload_json.len());
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_str().as_bytes());
    out.extend_from_slice(b"\",\"peer_id\":");
    push_json_str(&mut out, from);
    out.extend_from_slice(b",\"target_id\":");
    push_json_str(&mut out, target);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(payload_json.as_bytes());
    out.push(b'}');
    out
}

/// The same frame built the conventional way (decode to a tree, re-encode): kept for
/// the benchmark that measures what splicing saves.
pub fn relay_frame_reencoded(text: &[u8]) -> Option<Vec<u8>> {
    let v: serde_json::Value = serde_json::from_slice(text).ok()?;
    let out = serde_json::json!({
        "type": v.get("type")?, "peer_id": v.get("peer_id")?,
        "target_id": v.get("target_id")?, "payload": v.get("payload").cloned().unwrap_or_default(),
    });
    serde_json::to_vec(&out).ok()
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json escapes exactly as JSON requires; writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `{"type":"peer_list","peer_id":"registry","payload":{"peers":[…]}}`.
pub fn peer_list_frame<'a>(peers: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(
        b"{\"type\":\"peer_list\",\"peer_id\":\"registry\",\"payload\":{\"peers\":[",
    );
    for (i, p) in peers.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_str(&mut out, p);
    }
    out.extend_from_slice(b"]}}");
    out
}

/// `{"type":"error","peer_id":"registry","payload":{"reason":…}}`.
pub fn error_frame(reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + reason.len());
    out.extend_from_slice(b"{\"type\":\"error\",\"peer_id\":\"registry\",\"payload\":{\"reason\":");
    push_json_str(&mut out, reason);
    out.extend_from_slice(b"}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(v: &[u8]) -> Value {
        serde_json::from_slice(v).unwrap()
    }

    /// The relayed JSON of `text` from `a`, as the server builds it.
    fn relayed(text: &[u8]) -> (RelayKind, String, Vec<u8>) {
        let Action::Relay {
            kind,
            target,
            payload,
        } = interpret(text, "a")
        else {
            panic!("not a relay: {}", String::from_utf8_lossy(text))
        };
        let frame = relay_frame(kind, "a", &target, payload);
        (kind, target.into_owned(), frame)
    }

    #[test]
    fn relays_keep_the_payload_bytes() {
        let text = br#"{"type":"offer","peer_id":"a","target_id":"b","payload":{"sdp":"v=0\r\n","z":1,"a":[1,2]}}"#;
        let (kind, target, frame) = relayed(text);
        assert_eq!((kind, target.as_str()), (RelayKind::Offer, "b"));
        let s = String::from_utf8(frame.clone()).unwrap();
        assert!(
            s.ends_with(r#""payload":{"sdp":"v=0\r\n","z":1,"a":[1,2]}}"#),
            "{s}"
        );
        assert_eq!(
            parse(&frame),
            json!({"type":"offer","peer_id":"a","target_id":"b","payload":{"sdp":"v=0\r\n","z":1,"a":[1,2]}})
        );
        assert_eq!(parse(&frame), parse(&relay_frame_reencoded(text).unwrap()));
        // Missing payload relays null, as the reference's default.
        let (_, _, frame) = relayed(br#"{"type":"answer","peer_id":"a","target_id":"b"}"#);
        assert_eq!(parse(&frame)["payload"], Value::Null);
        let (kind, _, _) = relayed(
            br#"{"type":"ice_candidate","peer_id":"a","target_id":"b","payload":{"candidate":"c","sdpMid":"0","sdpMLineIndex":0}}"#,
        );
        assert_eq!(kind, RelayKind::IceCandidate);
        // The target id is borrowed from the frame, unless it had to be unescaped.
        let Action::Relay { target, .. } =
            interpret(br#"{"type":"offer","peer_id":"a","target_id":"b"}"#, "a")
        else {
            panic!()
        };
        assert!(matches!(target, Cow::Borrowed("b")));
        let (_, target, _) = relayed(br#"{"type":"offer","peer_id":"a","target_id":"b\u0062\n"}"#);
        assert_eq!(target, "bb\n");
        assert_eq!(
            interpret(br#"{"type":"offer","peer_id":"a","target_id":null}"#, "a"),
            Action::Ignore("relay without target_id")
        );
        assert_eq!(
            interpret(br#"{"type":"offer","peer_id":"a","target_id":7}"#, "a"),
            Action::Ignore("unparsable frame")
        );
    }

    /// The framed builder is byte for byte a text frame around [`relay_frame`], for
    /// plain ids and ids that need escaping, at every header size (7-, 16- and 64-bit
    /// lengths), in an allocation of exactly its size.
    #[test]
    fn relay_text_frame_is_the_relay_frame_framed() {
        for (from, target) in [("a", "b"), ("agent-1", "peer \"q\" \\ \n\u{1}"), ("é", "ü")] {
            for payload_len in [0usize, 10, 90, 120, 125, 126, 127, 65_400, 65_535, 70_000] {
                let payload = format!("\"{}\"", "x".repeat(payload_len));
                for kind in [RelayKind::Offer, RelayKind::Answer, RelayKind::IceCandidate] {
                    let json = relay_frame(kind, from, target, &payload);
                    let mut want = Vec::new();
                    codec::encode_text(&json, &mut want);
                    let got = relay_text_frame(kind, from, target, &payload);
                    assert_eq!(got, want, "{kind:?} {from:?} {target:?} {payload_len}");
                    assert_eq!(got.len(), got.capacity());
                }
            }
        }
    }

    #[test]
    fn ignores_what_the_spec_ignores() {
        assert_eq!(
            interpret(b"not json", "a"),
            Action::Ignore("unparsable frame")
        );
        assert_eq!(
            interpret(
                br#"{"type":"offer","peer_id":"mallory","target_id":"b","payload":{}}"#,
                "a"
            ),
            Action::Ignore("peer_id differs from the connection's identity")
        );
        assert_eq!(
            interpret(br#"{"type":"offer","peer_id":"a","payload":{}}"#, "a"),
            Action::Ignore("relay without target_id")
        );
        assert_eq!(
            interpret(br#"{"type":"dance","peer_id":"a"}"#, "a"),
            Action::Ignore("unknown type")
        );
        assert_eq!(
            interpret(br#"{"type":"register","peer_id":"a","payload":{}}"#, "a"),
            Action::Register
        );
        assert_eq!(
            interpret(br#"{"type":"register","peer_id":"a"}"#, "a"),
            Action::Register
        );
        assert_eq!(
            interpret(br#"{"type":"heartbeat","peer_id":"a"}"#, "a"),
            Action::Heartbeat
        );
        assert_eq!(
            interpret(br#"{"type":"register"}"#, "a"),
            Action::Ignore("unparsable frame")
        );
        // Payloads serde_json's RawValue passes and its full parse (the reference's, a
        // Rust receiver's) refuses: lone UTF-16 surrogate escapes, numbers beyond f64, in
        // values and in keys. Spliced, they made frames that do not parse (found by the
        // signaling fuzz target).
        for payload in [
            r#""\ud83d\r""#,
            r#""\ud83d""#,
            r#""\ude00x""#,
            r#"{"a":["\ud83d\u0041"]}"#,
            r#"{"\udc00":1}"#,
            r#"[[123455E6789012345678901234567890]]"#,
            r#"{"n":-1e400}"#,
        ] {
            let text =
                format!(r#"{{"type":"offer","peer_id":"a","target_id":"b","payload":{payload}}}"#);
            assert!(serde_json::from_str::<serde_json::Value>(&text).is_err());
            assert_eq!(
                interpret(text.as_bytes(), "a"),
                Action::Ignore("unparsable frame"),
                "{payload}"
            );
        }
        // A pair, and escaped backslashes before a `u`, are fine.
        for payload in [
            r#""\ud83d\ude00""#,
            r#""\\ud83d""#,
            r#""\\\u0041 \\""#,
            r#"[1e308,-0.0,18446744073709551616,{"k":[true,null]}]"#,
        ] {
            let text =
                format!(r#"{{"type":"offer","peer_id":"a","target_id":"b","payload":{payload}}}"#);
            assert!(
                serde_json::from_str::<serde_json::Value>(&text).is_ok(),
                "{payload}"
            );
            assert!(
                matches!(interpret(text.as_bytes(), "a"), Action::Relay { .. }),
                "{payload}"
            );
        }
        // Escaped identity compares by value.
        assert_eq!(
            interpret(br#"{"type":"register","peer_id":"\u0061"}"#, "a"),
            Action::Register
        );
    }

    /// A message at the limit is relayed (its payload one level less deep); one level
    /// deeper, or 100,000, or deep and malformed, is refused with its depth.
    #[test]
    fn messages_deeper_than_the_limit_are_refused() {
        let nested = |n: usize| "[".repeat(n) + &"]".repeat(n);
        let msg = |payload: &str| {
            format!(r#"{{"type":"offer","peer_id":"a","target_id":"b","payload":{payload}}}"#)
        };
        let at = msg(&nested(JSON_DEPTH_MAX - 1));
        let (_, _, frame) = relayed(at.as_bytes());
        assert_eq!(crate::json::nesting_depth(&frame), JSON_DEPTH_MAX);
        for depth in [JSON_DEPTH_MAX + 1, 100_000] {
            let limit = JSON_DEPTH_MAX;
            for text in [
                msg(&nested(depth - 1)),
                msg(&"[".repeat(depth - 1)),
                format!(
                    r#"{{"type":"register","peer_id":"a","x":{}}}"#,
                    nested(depth - 1)
                ),
            ] {
                assert_eq!(
                    interpret(text.as_bytes(), "a"),
                    Action::TooDeep(TooDeep { depth, limit })
                );
            }
        }
        assert_eq!(
            parse(&error_frame(
                &TooDeep {
                    depth: 65,
                    limit: 64
                }
                .to_string()
            )),
            json!({"type":"error","peer_id":"registry","payload":{"reason":"JSON nesting is 65 levels deep; the limit is 64"}})
        );
    }

    #[test]
    fn server_frames() {
        assert_eq!(
            parse(&peer_list_frame(["p2", "p\"3"])),
            json!({"type":"peer_list","peer_id":"registry","payload":{"peers":["p2","p\"3"]}})
        );
        assert_eq!(
            parse(&peer_list_frame(std::iter::empty())),
            json!({"type":"peer_list","peer_id":"registry","payload":{"peers":[]}})
        );
        assert_eq!(
            parse(&error_frame("not authorized")),
            json!({"type":"error","peer_id":"registry","payload":{"reason":"not authorized"}})
        );
    }

    /// `relay_text_frame` equals `encode_text(relay_frame)` for ids
    /// with 0x7f, non-ASCII, U+2028, '/', empty, every control char, at JSON lengths
    /// exactly around each header boundary (125/126, 65535/65536), in an allocation of
    /// exactly its size.
    #[test]
    fn relay_text_frame_boundaries() {
        let mut ids: Vec<String> = vec![
            "".into(),
            "a".into(),
            "\u{7f}".into(),
            "x\u{7f}y".into(),
            "é".into(),
            "\u{2028}\u{2029}".into(),
            "a/b".into(),
            "<\u{0}>".into(),
            "\u{10ffff}".into(),
            "'".into(),
            "\u{1b}[0m".into(),
        ];
        for c in 0u8..0x20 {
            ids.push(format!("p{}q", c as char));
        }
        for from in &ids {
            for target in ["b", from.as_str(), "\u{7f}\"\\"] {
                for kind in [RelayKind::Offer, RelayKind::Answer, RelayKind::IceCandidate] {
                    let base = relay_frame(kind, from, target, "\"\"").len();
                    for want_len in [124usize, 125, 126, 127, 65_534, 65_535, 65_536, 65_537] {
                        if want_len < base {
                            continue;
                        }
                        let payload = format!("\"{}\"", "x".repeat(want_len - base));
                        let json = relay_frame(kind, from, target, &payload);
                        assert_eq!(json.len(), want_len);
                        let mut want = Vec::new();
                        codec::encode_text(&json, &mut want);
                        let got = relay_text_frame(kind, from, target, &payload);
                        assert_eq!(got, want, "{kind:?} {from:?} {target:?} {want_len}");
                        assert_eq!(got.len(), got.capacity(), "{from:?} {target:?} {want_len}");
                        assert_eq!(got.len(), codec::text_frame_len(want_len));
                    }
                }
            }
        }
    }
}
