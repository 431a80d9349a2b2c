//! The JSON body of every route that takes one, parsed as the handlers do
//! (`wire::json::parse_body`): registry (`AgentInfo`, `Heartbeat`), hub
//! (`TaskSubmission`, `TaskUpdate`), pairing (`PairRequest`, then its validation), and
//! auth (a bearer JWT, verified). Whatever arrives: no panic, and a refusal is a 400 or
//! a 422 with a message.
#![no_main]

use chatixia_core::hub::{TaskSubmission, TaskUpdate};
use chatixia_core::pairing::PairRequest;
use chatixia_core::registry::{AgentInfo, Heartbeat};
use libfuzzer_sys::fuzz_target;
use wire::json::{parse_body, BodyError, JsonBody};

fn check<T: JsonBody>(data: &[u8]) -> Option<T> {
    match parse_body::<T>(data) {
        Ok(v) => Some(v),
        Err(e) => {
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
    }
    let _ = check::<TaskUpdate>(data);
    if let Some(p) = check::<PairRequest>(data) {
        if let Err(e) = p.validate() {
            assert!((400..500).contains(&e.status()));
        }
    }
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = chatixia_core::auth::verify(b"dev-secret-change-me", token, 1_800_000_000);
    }
});
