//! The client's side of the signaling messages (PROTOCOL.md §7): the messages a peer
//! sends, as an owned [`SignalMessage`] with builders, and reading what the server sends.
//! Used by the sidecar and the load generator; the server's side (interpreting a peer's
//! frame without copying it, building relays and peer lists) is the parent module.
//!
//! Reading is layout-independent: builds differ in how they write the same message
//! (chatixia-core writes `{"type":"peer_list","peer_id":"registry","payload":{…}}`, the
//! reference, serde_json over a sorted map, `{"payload":{…},"peer_id":"registry",
//! "type":"peer_list"}`), so nothing here depends on layout except a fast path that
//! checks exactly what it assumes and falls back to a real parse otherwise. The fast path
//! matters for peer lists: 10,000 peers registering each receive a list of up to 10,000
//! ids, and parsing them all into `serde_json::Value`s would cost a load generator more
//! than the server spends writing them.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A frame on the signaling WebSocket.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SignalMessage {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub peer_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_id: Option<String>,
    #[serde(default)]
    pub payload: Value,
}

impl SignalMessage {
    pub fn register(me: &str) -> SignalMessage {
        SignalMessage {
            kind: "register".into(),
            peer_id: me.into(),
            target_id: None,
            payload: Value::Null,
        }
    }

    /// `offer` or `answer` with `{"sdp"}`.
    pub fn sdp(kind: &str, me: &str, to: &str, sdp: String) -> SignalMessage {
        SignalMessage {
            kind: kind.into(),
            peer_id: me.into(),
            target_id: Some(to.into()),
            payload: json!({ "sdp": sdp }),
        }
    }

    /// `ice_candidate` with `{"candidate","sdpMid","sdpMLineIndex"}`; `candidate` is the
    /// attribute value without `a=` (`candidate:1 1 udp …`), as browsers and webrtc-rs
    /// send it.
    pub fn candidate(me: &str, to: &str, candidate: String, mid: &str) -> SignalMessage {
        SignalMessage {
            kind: "ice_candidate".into(),
            peer_id: me.into(),
            target_id: Some(to.into()),
            payload: json!({ "candidate": candidate, "sdpMid": mid, "sdpMLineIndex": 0 }),
        }
    }

    /// A frame from the signaling server; `None` when it is not a signaling message or
    /// nests deeper than [`crate::json::JSON_DEPTH_MAX`] (a relayed payload comes from
    /// another peer, through whatever server the client was pointed at).
    pub fn parse(text: &str) -> Option<SignalMessage> {
        crate::json::check_depth(text.as_bytes(), crate::json::JSON_DEPTH_MAX).ok()?;
        serde_json::from_str(text).ok()
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("signal messages serialize")
    }
}

/// Known exact layouts of a `peer_list` frame: (prefix, suffix); the ids lie between.
const PEER_LIST_LAYOUTS: [(&[u8], &[u8]); 2] = [
    // chatixia-core (wire::ws::signaling::peer_list_frame).
    (
        b"{\"type\":\"peer_list\",\"peer_id\":\"registry\",\"payload\":{\"peers\":[",
        b"]}}",
    ),
    // The reference registry (keys sorted).
    (
        b"{\"payload\":{\"peers\":[",
        b"]},\"peer_id\":\"registry\",\"type\":\"peer_list\"}",
    ),
];

/// The number of ids in a `peer_list` message, or `None` for any other message
/// (including text that is not JSON).
pub fn count_peer_list(text: &[u8]) -> Option<usize> {
    if let Some(n) = count_peer_list_fast(text) {
        return Some(n);
    }
    let v: Value = serde_json::from_slice(text).ok()?;
    if v.get("type")?.as_str()? != "peer_list" {
        return None;
    }
    Some(v.get("payload")?.get("peers")?.as_array()?.len())
}

/// The fast path: an exactly known layout whose list holds only plain strings (no
/// escapes, no nesting), so every id is exactly two quotes. `None` means "not sure",
/// never "not a peer list".
fn count_peer_list_fast(text: &[u8]) -> Option<usize> {
    if memchr::memchr(b'\\', text).is_some() {
        return None;
    }
    PEER_LIST_LAYOUTS.iter().find_map(|(prefix, suffix)| {
        let list = text.strip_prefix(*prefix)?.strip_suffix(*suffix)?;
        if list.iter().any(|b| matches!(b, b'[' | b']' | b'{' | b'}')) {
            return None;
        }
        let quotes = memchr::memchr_iter(b'"', list).count();
        (quotes % 2 == 0).then_some(quotes / 2)
    })
}

/// The `type` of a message, or `None` when it is not a JSON object with one.
pub fn message_type(text: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(text).ok()?;
    Some(v.get("type")?.as_str()?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let r: Value = serde_json::from_str(&SignalMessage::register("a").to_text()).unwrap();
        assert_eq!(r, json!({"type":"register","peer_id":"a","payload":null}));
        let c = SignalMessage::candidate(
            "a",
            "b",
            "candidate:1 1 udp 1 1.2.3.4 5 typ host".into(),
            "0",
        );
        let v: Value = serde_json::from_str(&c.to_text()).unwrap();
        assert_eq!(v["target_id"], "b");
        assert_eq!(v["payload"]["sdpMid"], "0");
        assert_eq!(v["payload"]["sdpMLineIndex"], 0);
        let m: SignalMessage = serde_json::from_str(
            r#"{"type":"peer_list","peer_id":"registry","payload":{"peers":["x"]}}"#,
        )
        .unwrap();
        assert_eq!(m.kind, "peer_list");
    }

    /// Frames nest at most `JSON_DEPTH_MAX` levels (the server enforces the same bound
    /// on what it relays; another server might not).
    #[test]
    fn parse_bounds_nesting() {
        let limit = crate::json::JSON_DEPTH_MAX;
        let frame = |n: usize| {
            let x = "[".repeat(n) + &"]".repeat(n);
            format!(r#"{{"type":"offer","peer_id":"b","target_id":"a","payload":{x}}}"#)
        };
        let m = SignalMessage::parse(&frame(limit - 1)).unwrap();
        assert_eq!(m.kind, "offer");
        for depth in [limit + 1, 127, 100_000] {
            assert_eq!(SignalMessage::parse(&frame(depth - 1)), None);
        }
        assert_eq!(SignalMessage::parse("not json"), None);
    }

    /// What a client sends is what the server interprets.
    #[test]
    fn the_server_reads_what_a_client_writes() {
        use super::super::{interpret, Action, RelayKind};
        let reg = SignalMessage::register("a").to_text();
        assert_eq!(interpret(reg.as_bytes(), "a"), Action::Register);
        let offer = SignalMessage::sdp("offer", "a", "b", "v=0".into()).to_text();
        let Action::Relay {
            kind,
            target,
            payload,
        } = interpret(offer.as_bytes(), "a")
        else {
            panic!("{offer}")
        };
        assert_eq!(
            (kind, target.as_ref(), payload),
            (RelayKind::Offer, "b", r#"{"sdp":"v=0"}"#)
        );
    }

    /// Frames exactly as the reference registry writes them (captured from it).
    const REF_EMPTY: &[u8] = br#"{"payload":{"peers":[]},"peer_id":"registry","type":"peer_list"}"#;
    const REF_THREE: &[u8] =
        br#"{"payload":{"peers":["peer-0","peer-1","peer-2"]},"peer_id":"registry","type":"peer_list"}"#;

    #[test]
    fn counts_the_reference_frames() {
        assert_eq!(count_peer_list_fast(REF_EMPTY), Some(0));
        assert_eq!(count_peer_list_fast(REF_THREE), Some(3));
        assert_eq!(count_peer_list(REF_EMPTY), Some(0));
        assert_eq!(count_peer_list(REF_THREE), Some(3));
    }

    #[test]
    fn counts_our_frames() {
        let f = |p: &[&str]| super::super::peer_list_frame(p.iter().copied());
        assert_eq!(count_peer_list_fast(&f(&[])), Some(0));
        assert_eq!(count_peer_list(&f(&[])), Some(0));
        assert_eq!(count_peer_list(&f(&["a", "b", "c"])), Some(3));
        // Ids that defeat the fast path are still counted right by the parse.
        let odd = f(&["a\"b", "c]d", "e\\f", "{x}"]);
        assert_eq!(count_peer_list_fast(&odd), None);
        assert_eq!(count_peer_list(&odd), Some(4));
    }

    #[test]
    fn counts_any_key_order_and_spacing() {
        let frames: [&[u8]; 5] = [
            br#"{"peer_id":"registry","type":"peer_list","payload":{"peers":["a","b"]}}"#,
            br#"{ "type" : "peer_list" , "payload" : { "peers" : [ "a" , "b" ] } }"#,
            b"{\n  \"payload\": {\n    \"peers\": [\n      \"a\",\n      \"b\"\n    ]\n  },\n  \"type\": \"peer_list\"\n}",
            br#"{"payload":{"extra":[1,2,3],"peers":["a","b"]},"type":"peer_list"}"#,
            br#"{"type":"peer_list","payload":{"peers":["a","b"],"more":{"x":"]"}}}"#,
        ];
        for f in frames {
            assert_eq!(
                count_peer_list(f),
                Some(2),
                "{}",
                String::from_utf8_lossy(f)
            );
        }
    }

    #[test]
    fn other_messages_are_not_peer_lists() {
        for f in [
            &br#"{"type":"offer","peer_id":"x","payload":{"peers":["a"]}}"#[..],
            br#"{"payload":{"sdp":"v=0"},"peer_id":"x","type":"answer"}"#,
            br#"{"type":"peer_joined","peer_id":"x"}"#,
            b"not json",
            b"",
            // A fast-path layout lookalike whose type is something else.
            br#"{"payload":{"peers":[]},"peer_id":"registry","type":"peer_listing"}"#,
        ] {
            assert_eq!(count_peer_list(f), None, "{}", String::from_utf8_lossy(f));
        }
    }

    #[test]
    fn reads_message_types() {
        assert_eq!(message_type(REF_THREE).as_deref(), Some("peer_list"));
        assert_eq!(
            message_type(br#"{"payload":{},"type":"peer_left"}"#).as_deref(),
            Some("peer_left")
        );
        assert_eq!(message_type(b"[1]"), None);
    }
}
