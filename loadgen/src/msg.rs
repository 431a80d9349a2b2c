//! Reading the server's signaling messages (PROTOCOL.md §4) as JSON: any key order,
//! any spacing, escapes. Builds differ in how they write the same message —
//! chatixia-core writes `{"type":"peer_list","peer_id":"registry","payload":{…}}`,
//! the reference (serde_json over a sorted map) writes
//! `{"payload":{…},"peer_id":"registry","type":"peer_list"}` — so nothing here may
//! depend on layout except a fast path that checks exactly what it assumes and falls
//! back to a real parse otherwise.
//!
//! The fast path matters for peer lists: 10,000 peers registering each receive a
//! list of up to 10,000 ids, and parsing them all into `serde_json::Value`s would
//! cost the load generator more than the server spends writing them.

use serde_json::Value;

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

/// The intended send time (ns) that `bench ws-relay` put in a frame's SDP:
/// `"payload":{"sdp":"bench:<ns>:<padding>"}`. The fast path finds the marker as we
/// wrote it; a server that re-serialises (other spacing, escapes) is read by a parse.
pub fn relay_sent_at(text: &[u8]) -> Option<u64> {
    if let Some(at) = memchr::memmem::find(text, b"\"sdp\":\"bench:") {
        let rest = &text[at + 13..];
        let end = memchr::memchr(b':', rest)?;
        if let Some(n) = std::str::from_utf8(&rest[..end])
            .ok()
            .and_then(|s| s.parse().ok())
        {
            return Some(n);
        }
    }
    // Frames that are not ours (peer lists, errors) are skipped without a parse.
    memchr::memmem::find(text, b"bench:")?;
    let v: Value = serde_json::from_slice(text).ok()?;
    let sdp = v.get("payload")?.get("sdp")?.as_str()?;
    sdp.strip_prefix("bench:")?.split(':').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let f = |p: &[&str]| wire::ws::signaling::peer_list_frame(p.iter().copied());
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

    #[test]
    fn reads_the_relay_send_time_in_any_layout() {
        let ours =
            br#"{"type":"offer","peer_id":"a","target_id":"b","payload":{"sdp":"bench:12345:xx"}}"#;
        let sorted =
            br#"{"payload":{"sdp":"bench:12345:xx"},"peer_id":"a","target_id":"b","type":"offer"}"#;
        let spaced = br#"{ "payload" : { "sdp" : "bench:12345:xx" }, "type" : "answer" }"#;
        for f in [&ours[..], sorted, spaced] {
            assert_eq!(
                relay_sent_at(f),
                Some(12345),
                "{}",
                String::from_utf8_lossy(f)
            );
        }
        assert_eq!(relay_sent_at(br#"{"payload":{"sdp":"v=0"}}"#), None);
        assert_eq!(relay_sent_at(b"garbage"), None);
    }
}
