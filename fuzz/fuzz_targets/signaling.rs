//! Signaling message interpretation (a text frame from a peer): whatever arrives, a
//! relayed frame (payload spliced raw) is valid JSON naming the sender and target, and
//! nests at most `JSON_DEPTH_MAX` levels; a deeper message is refused with its depth;
//! and the one-pass reading decides as the serde path does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::json::{nesting_depth, TooDeep, JSON_DEPTH_MAX};
use wire::ws::signaling::{self, Action};

fuzz_target!(|data: &[u8]| {
    // The identity is taken from the input too, so that frames can match it.
    let (identity, text) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (
            String::from_utf8_lossy(&data[..i]).into_owned(),
            &data[i + 1..],
        ),
        None => ("peer-a".to_owned(), data),
    };
    let depth = nesting_depth(text);
    let action = signaling::interpret(text, &identity);
    if let Ok(s) = std::str::from_utf8(text) {
        assert_eq!(action, signaling::interpret_str_parsed(s, &identity));
    }
    if depth > JSON_DEPTH_MAX {
        let limit = JSON_DEPTH_MAX;
        assert_eq!(action, Action::TooDeep(TooDeep { depth, limit }));
    }
    if let Action::Relay {
        kind,
        target,
        payload,
    } = action
    {
        let frame = signaling::relay_frame(kind, &identity, &target, payload);
        assert!(nesting_depth(&frame) <= JSON_DEPTH_MAX);
        let v: serde_json::Value = serde_json::from_slice(&frame).expect("relay frame is JSON");
        assert_eq!(v["type"], kind.as_str());
        assert_eq!(v["peer_id"], identity.as_str());
        assert_eq!(v["target_id"], &*target);
        // The server's framed builder: the same JSON in a text frame.
        let framed = signaling::relay_text_frame(kind, &identity, &target, payload);
        let mut want = Vec::new();
        wire::ws::codec::encode_text(&frame, &mut want);
        assert_eq!(framed, want);
    }
    let _ = signaling::relay_frame_reencoded(text);
});
