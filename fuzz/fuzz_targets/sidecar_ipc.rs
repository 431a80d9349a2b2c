//! The sidecar's IPC: JSON lines from the agent, framed in fragments, then parsed. A
//! line nesting deeper than `JSON_DEPTH_MAX` is refused with its depth; a message that
//! goes out is no deeper and a peer's sidecar accepts it, as does a full JSON parse;
//! the `message` event built from a peer's DataChannel message parses.
#![no_main]

use chatixia_sidecar::ipc::{
    parse_channel_message, parse_command, Command, Framed, IpcError, LineFramer,
};
use libfuzzer_sys::fuzz_target;
use wire::json::{nesting_depth, TooDeep, JSON_DEPTH_MAX};

fn check(line: &[u8]) {
    let got = parse_command(line);
    let depth = nesting_depth(line);
    let text = std::str::from_utf8(line).map(str::trim);
    if depth > JSON_DEPTH_MAX && text.is_ok_and(|t| !t.is_empty()) {
        let limit = JSON_DEPTH_MAX;
        assert_eq!(got, Err(IpcError::TooDeep(TooDeep { depth, limit })));
    }
    if let Ok(Some(Command::Send { message, .. } | Command::Broadcast { message })) = got {
        assert!(nesting_depth(&message) <= JSON_DEPTH_MAX);
        let text = std::str::from_utf8(&message).expect("messages are UTF-8");
        let m = parse_channel_message(text).expect("a peer accepts what we send");
        // ... and so does any full JSON parse (the reference sidecar's `Value`), and the
        // `message` event the peer's sidecar hands its agent.
        serde_json::from_str::<serde_json::Value>(text).expect("a full parse accepts it");
        let event = chatixia_sidecar::ipc::event_message_raw("peer", &m);
        serde_json::from_slice::<serde_json::Value>(&event).expect("the event parses");
    }
    // A DataChannel message from any peer: what the sidecar hands its agent parses.
    if let Ok(Ok(m)) = text.map(parse_channel_message) {
        let event = chatixia_sidecar::ipc::event_message_raw("peer", &m);
        serde_json::from_slice::<serde_json::Value>(&event).expect("the event parses");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    check(input);
    let mut framer = LineFramer::default();
    let mut out = Vec::new();
    for chunk in input.chunks(usize::from(split) + 1) {
        framer.push(chunk, &mut out);
    }
    for f in out {
        if let Framed::Line(line) = f {
            check(&line);
        }
    }
});
