//! Task payload canonicalization (`hub::Payload`) and the body check in front of it, at
//! any depth. The input is compact so that depth is cheap to reach: the first byte `c`
//! gives a count N (`c` itself below 200, around the bound; else `(c - 199) * 1000`, up
//! to 56,000), the second how each of the N units nests (`[`…`]`, `{"k":`…`}`, or
//! `[{"a":1,"k":`…`}]`, two levels), the rest is the innermost JSON. A four-byte input
//! reaches 100,000 levels, which mutating a JSON text does not in a short run (the
//! recursive canonicalization overflowed a shard's stack at about 8,000).
//!
//! Checked: nothing accepted nests deeper than `JSON_DEPTH_MAX`; a body deeper than it is
//! refused with `TooDeep` naming its exact depth; canonical text is its own canonical
//! form and no deeper than its input; a body is accepted only with a payload that
//! canonicalizes on its own to the same text.
#![no_main]

use chatixia_core::hub::{Payload, TaskSubmission};
use libfuzzer_sys::fuzz_target;
use wire::json::{nesting_depth, parse_body, BodyError, TooDeep, JSON_DEPTH_MAX};

fuzz_target!(|data: &[u8]| {
    let [count, style, inner @ ..] = data else {
        return;
    };
    let n = match usize::from(*count) {
        c if c < 200 => c,
        c => (c - 199) * 1000,
    };
    let (open, close) = match style % 3 {
        0 => ("[", "]"),
        1 => (r#"{"k":"#, "}"),
        _ => (r#"[{"a":1,"k":"#, "}]"),
    };
    let inner = String::from_utf8_lossy(inner);
    let mut payload = String::with_capacity(n * (open.len() + close.len()) + inner.len());
    for _ in 0..n {
        payload.push_str(open);
    }
    payload.push_str(&inner);
    for _ in 0..n {
        payload.push_str(close);
    }
    let depth = nesting_depth(payload.as_bytes());

    let alone = Payload::from_json(&payload);
    if let Ok(p) = &alone {
        assert!(depth <= JSON_DEPTH_MAX, "accepted a payload {depth} deep");
        assert!(nesting_depth(p.get().as_bytes()) <= depth);
        assert_eq!(
            Payload::from_json(p.get())
                .expect("canonical reparses")
                .get(),
            p.get()
        );
    }

    let body = format!(r#"{{"skill":"s","payload":{payload}}}"#);
    let body_depth = nesting_depth(body.as_bytes());
    match parse_body::<TaskSubmission>(body.as_bytes()) {
        Ok(sub) => {
            assert!(
                body_depth <= JSON_DEPTH_MAX,
                "accepted a body {body_depth} deep"
            );
            let alone = alone.expect("a payload accepted in a body is accepted alone");
            assert_eq!(sub.payload.get(), alone.get());
        }
        Err(e) if body_depth > JSON_DEPTH_MAX => assert_eq!(
            e,
            BodyError::TooDeep(TooDeep {
                depth: body_depth,
                limit: JSON_DEPTH_MAX
            })
        ),
        Err(e) => assert!(e.status() == 400 || e.status() == 422, "{e:?}"),
    }
});
