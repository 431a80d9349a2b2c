//! STUN messages: decoding, the checks run on received packets, and the Binding
//! response parser (with the transaction id taken from the input so it can match).
#![no_main]

use chatixia_sidecar::stun;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = stun::is_stun(data);
    let _ = stun::fingerprint_ok(data);
    let _ = stun::integrity_ok(data, b"key");
    let mut tid = [0u8; 12];
    if let Some(t) = data.get(8..20) {
        tid.copy_from_slice(t);
    }
    let _ = stun::parse_binding_response(data, &tid);
    let _ = stun::read_xor_address(data, &tid);
    if let Some(m) = stun::Message::decode(data) {
        // A decoded message lists its attributes without MESSAGE-INTEGRITY(-SHA256) and
        // FINGERPRINT (checked while parsing, `turn::stun::parse`); re-encoded with a
        // fresh FINGERPRINT, it decodes to itself.
        let again = m.encode(None, true);
        assert!(stun::fingerprint_ok(&again));
        let back = stun::Message::decode(&again).expect("re-encoded message decodes");
        assert_eq!(back, m);
    }
});
