//! Signaling message shapes (PROTOCOL.md §7) and the reconnect backoff.

use std::time::Duration;

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
    /// nests deeper than `wire::json::JSON_DEPTH_MAX` (a relayed payload comes from
    /// another peer, through whatever server `SIGNALING_URL` names).
    pub fn parse(text: &str) -> Option<SignalMessage> {
        wire::json::check_depth(text.as_bytes(), wire::json::JSON_DEPTH_MAX).ok()?;
        serde_json::from_str(text).ok()
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("signal messages serialize")
    }
}

/// First reconnect delay after the signaling connection drops or fails.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Exponential backoff 1 s → 30 s, reset once a connection gets as far as `peer_list`.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_INITIAL,
        }
    }
}

impl Backoff {
    /// The delay to wait now; doubles the next one.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }
    pub fn reset(&mut self) {
        self.next = BACKOFF_INITIAL;
    }
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
        let limit = wire::json::JSON_DEPTH_MAX;
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

    #[test]
    fn backoff_doubles_to_cap() {
        let mut b = Backoff::default();
        let v: Vec<u64> = (0..7).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(v, vec![1, 2, 4, 8, 16, 30, 30]);
        b.reset();
        assert_eq!(b.next_delay().as_secs(), 1);
    }
}
