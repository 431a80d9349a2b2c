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
    if let Some(mut m) = stun::Message::decode(data) {
        // Decoded messages keep MESSAGE-INTEGRITY and FINGERPRINT as read; without
        // them, a message re-encodes (with a fresh FINGERPRINT) and decodes to itself.
        m.attributes.retain(|(t, _)| {
            *t != stun::attr::MESSAGE_INTEGRITY && *t != stun::attr::FINGERPRINT
        });
        let again = m.encode(None, true);
        assert!(stun::fingerprint_ok(&again));
        let mut back = stun::Message::decode(&again).expect("re-encoded message decodes");
        back.attributes.pop();
        assert_eq!(back, m);
    }
});
