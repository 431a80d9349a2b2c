//! What a cluster node reads from Redis and from the other nodes (issue 25): the link's
//! RESP reply decoder (a reply nested past its limit is refused, never a stack overflow),
//! what a shard's own subscription takes from the replies it decodes, and a message from another node's channel handed to signaling (`remote::on_message`:
//! malformed bytes are refused, nothing panics).
#![no_main]

use std::cell::RefCell;

use chatixia_cluster::fuzzing::{decode_reply, pipe_messages};
use chatixia_core::auth::ApiKeys;
use chatixia_core::signaling::remote::{on_message, Here};
use chatixia_core::signaling::{ConnTable, PeerAuthz};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((_, n))) = decode_reply(data) {
        assert!(n <= data.len());
    }
    // A shard's own subscription: replies decoded, its channel's messages split.
    for (key, body) in pipe_messages(data, b"chx:s:0:n") {
        assert!(key.len() + body.len() + 2 <= data.len());
    }
    // A node's channel: `[u16 key length][key][body]`.
    if let Some((len, rest)) = data.split_first_chunk::<2>() {
        let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
        let (key, body) = rest.split_at(len);
        let ws = ConnTable::default();
        let authz = RefCell::new(PeerAuthz::default());
        let keys = ApiKeys::parse(br#"{"keys": {}}"#).unwrap();
        let here = Here {
            ws: &ws,
            authz: &authz,
            api_keys: &keys,
            now: chatixia_core::time::UnixTime::from_secs(1),
        };
        let _ = on_message(&here, key, body);
    }
});
