//! Reading `bench ws-relay`'s own frames: the intended send time it puts in each
//! relayed SDP. The signaling messages themselves are read with
//! `wire::ws::signaling::client` (any layout, any build).

use serde_json::Value;

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
