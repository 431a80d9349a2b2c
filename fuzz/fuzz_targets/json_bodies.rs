//! The JSON body of every route that takes one, parsed as the handlers do
//! (`wire::json::parse_body`): registry (`AgentInfo`, `Heartbeat`), hub
//! (`TaskSubmission`, `TaskUpdate`), pairing (`PairRequest`, then its validation), and
//! auth (a bearer JWT, verified). Whatever arrives: no panic, and a refusal is a 400 or
//! a 422 with a message; nothing nesting deeper than `JSON_DEPTH_MAX` is accepted, and
//! such a body is refused with `TooDeep` naming its depth. The task body's `payload` is
//! canonicalized (`hub::Payload`); `task_payload` reaches far greater depths.
#![no_main]

use chatixia_core::hub::{TaskSubmission, TaskUpdate};
use chatixia_core::pairing::PairRequest;
use chatixia_core::registry::{AgentInfo, Heartbeat};
use libfuzzer_sys::fuzz_target;
use wire::json::{nesting_depth, parse_body, BodyError, JsonBody, TooDeep, JSON_DEPTH_MAX};

fn check<T: JsonBody>(data: &[u8]) -> Option<T> {
    let depth = nesting_depth(data);
    match parse_body::<T>(data) {
        Ok(v) => {
            assert!(depth <= JSON_DEPTH_MAX, "accepted a body {depth} deep");
            Some(v)
        }
        Err(e) => {
            if depth > JSON_DEPTH_MAX {
                let limit = JSON_DEPTH_MAX;
                assert_eq!(e, BodyError::TooDeep(TooDeep { depth, limit }));
            }
            let status = e.status();
            assert!(status == 400 || status == 422, "{status}");
            assert!(!e.response_text().is_empty());
            if let BodyError::MissingField { field, .. } = &e {
                assert!(T::REQUIRED_FIELDS.contains(field), "{field}");
            }
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = check::<AgentInfo>(data);
    let _ = check::<Heartbeat>(data);
    if let Some(t) = check::<TaskSubmission>(data) {
        let _ = t.placement();
        let again = chatixia_core::hub::Payload::from_json(t.payload.get()).expect("canonical");
        assert_eq!(again.get(), t.payload.get());
    }
    let _ = check::<TaskUpdate>(data);
    if let Some(p) = check::<PairRequest>(data) {
        if let Err(e) = p.validate() {
            let status = chatixia_core::server::respond::status(e.kind());
            assert!((400..500).contains(&status));
        }
    }
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = chatixia_core::auth::verify(b"dev-secret-change-me", token, 1_800_000_000);
    }
});
