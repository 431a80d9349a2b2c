//! The fast path of [`super::interpret_str`]: a signaling message of the usual shape read
//! in one pass, with no parser state machine in between.
//!
//! Why: serde_json read a relayed message three times over (the depth count aside): its
//! derive walked the fields, its `RawValue` skipped the payload, and
//! [`crate::json::check_strict`] scanned the payload again for what the skip lets
//! through. That was ~3,600 of a relayed message's ~10,400 user-space
//! instructions (callgrind, `scripts/bench-instructions.sh relay-local`).
//!
//! What it reads: one JSON object whose keys carry no escapes, with `type` and `peer_id`
//! strings and an optional `target_id` (a string or `null`) that carry none either, each
//! at most once, and any other members; the `payload` and every unknown member's value
//! are checked against the JSON grammar as serde_json's skip checks it (strings: no
//! control characters, only the escapes JSON has, four hex digits after `\u`; numbers:
//! the grammar, no leading zeros), and the payload against what serde_json's full parse
//! also refuses (a lone surrogate escape, a number beyond `f64`: [`check_strict`] walks
//! it when it has a `\uD…` escape, an exponent or a number of more than
//! [`NUMBER_DIGITS_EXACT_MAX`] digits).
//!
//! Anything else — a top-level array (serde reads a struct from one too), escaped keys or
//! ids, a field twice, a missing field, a value of the wrong type, malformed JSON — is
//! handed back (`None`) to the serde path, which decides as before. So this path decides
//! only what it reads in full, and what it decides is what the serde path decides: the
//! randomised test below and the `signaling` fuzz target compare the two on every
//! input.

use std::borrow::Cow;

use super::{Action, RelayKind};
use crate::json::check_strict;
use crate::json::scan::{special, value, ws};

/// [`super::interpret_str`] for a message of the usual shape; `None` for the serde path.
pub(super) fn interpret<'a>(text: &'a str, identity: &str) -> Option<Action<'a>> {
    let b = text.as_bytes();
    let mut i = ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(b, i + 1);
    let mut kind: Option<&str> = None;
    let mut peer: Option<&str> = None;
    let mut target: Option<Option<&str>> = None;
    let mut payload: Option<&str> = None;
    // Whether the payload needs serde's full walk (see the module docs).
    let mut payload_strict = false;
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            let (key, after) = plain_string(text, i)?;
            i = ws(b, after);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = ws(b, i + 1);
            match key {
                "type" => i = once(&mut kind, plain_string(text, i)?)?,
                "peer_id" => i = once(&mut peer, plain_string(text, i)?)?,
                "target_id" => {
                    if target.is_some() {
                        return None;
                    }
                    if b[i..].starts_with(b"null") {
                        target = Some(None);
                        i += 4;
                    } else {
                        let (t, after) = plain_string(text, i)?;
                        target = Some(Some(t));
                        i = after;
                    }
                }
                "payload" => {
                    if payload.is_some() {
                        return None;
                    }
                    let end = value(b, i, &mut payload_strict)?;
                    payload = Some(&text[i..end]);
                    i = end;
                }
                // Not read: checked as serde's skip checks it.
                _ => i = value(b, i, &mut false)?,
            }
            i = ws(b, i);
            match b.get(i) {
                Some(b',') => i = ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    if ws(b, i) != b.len() {
        return None;
    }
    // Missing fields: serde's error (and its answer).
    let (kind, peer) = (kind?, peer?);
    // From here, in the serde path's order.
    if peer != identity {
        return Some(Action::Ignore(
            "peer_id differs from the connection's identity",
        ));
    }
    let kind = match kind {
        "register" => return Some(Action::Register),
        "heartbeat" => return Some(Action::Heartbeat),
        "offer" => RelayKind::Offer,
        "answer" => RelayKind::Answer,
        "ice_candidate" => RelayKind::IceCandidate,
        _ => return Some(Action::Ignore("unknown type")),
    };
    let Some(Some(target)) = target else {
        return Some(Action::Ignore("relay without target_id"));
    };
    // A `null` payload is serde's `None`: relayed as `null` all the same.
    let payload = payload.unwrap_or("null");
    if payload_strict && check_strict(payload).is_err() {
        return Some(Action::Ignore("unparsable frame"));
    }
    Some(Action::Relay {
        kind,
        target: Cow::Borrowed(target),
        payload,
    })
}

/// Sets a field read once; `None` (serde's "duplicate field") when it was already set.
fn once<'a>(slot: &mut Option<&'a str>, (s, after): (&'a str, usize)) -> Option<usize> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(s);
    Some(after)
}

/// The string starting with the quote at `i`, when it has no escape: its text and the
/// index past its closing quote.
fn plain_string(text: &str, i: usize) -> Option<(&str, usize)> {
    let b = text.as_bytes();
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let end = special(b, i + 1);
    if b.get(end) != Some(&b'"') {
        return None;
    }
    // Quotes are ASCII: both ends are on character boundaries.
    Some((&text[i + 1..end], end + 1))
}

#[cfg(test)]
mod edges;

#[cfg(test)]
mod tests {
    use super::super::{interpret_str, interpret_str_parsed};
    use super::*;
    use crate::test_rng::Rng;

    /// What the fast path decides, or that it hands the message on.
    fn fast(text: &str) -> Option<Action<'_>> {
        interpret(text, "a")
    }

    #[test]
    fn reads_the_usual_messages() {
        let offer = r#"{"type": "offer", "peer_id": "a", "target_id": "b", "payload": {"sdp": "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n", "type": "offer"}}"#;
        assert_eq!(
            fast(offer),
            Some(Action::Relay {
                kind: RelayKind::Offer,
                target: Cow::Borrowed("b"),
                payload: r#"{"sdp": "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n", "type": "offer"}"#,
            })
        );
        assert_eq!(
            fast(r#"{"type":"register","peer_id":"a"}"#),
            Some(Action::Register)
        );
        assert_eq!(
            fast("\n { \"peer_id\" :\"a\" ,\"type\":\"heartbeat\" } \r\n"),
            Some(Action::Heartbeat)
        );
        assert_eq!(
            fast(r#"{"type":"answer","peer_id":"a","target_id":"b","payload":null}"#),
            Some(Action::Relay {
                kind: RelayKind::Answer,
                target: Cow::Borrowed("b"),
                payload: "null",
            })
        );
        assert_eq!(
            fast(r#"{"type":"offer","peer_id":"a","target_id":null}"#),
            Some(Action::Ignore("relay without target_id"))
        );
        assert_eq!(
            fast(r#"{"type":"offer","peer_id":"z","target_id":"b"}"#),
            Some(Action::Ignore(
                "peer_id differs from the connection's identity"
            ))
        );
        assert_eq!(
            fast(r#"{"type":"offer","peer_id":"a","target_id":"b","payload":"\udc00"}"#),
            Some(Action::Ignore("unparsable frame"))
        );
    }

    #[test]
    fn hands_on_what_it_does_not_read() {
        for text in [
            r#"["register","a"]"#,
            r#"{"type":"register","peer_id":"\u0061"}"#,
            r#"{"typ\u0065":"register","peer_id":"a"}"#,
            r#"{"type":"register","peer_id":"a","type":"register"}"#,
            r#"{"type":"register"}"#,
            r#"{"type":"register","peer_id":7}"#,
            r#"{"type":"register","peer_id":"a",}"#,
            r#"{"type":"register","peer_id":"a"} x"#,
            r#"{"type":"register","peer_id":"a","x":01}"#,
            r#"{"type":"register","peer_id":"a","x":[1,]}"#,
            r#"{"type":"register","peer_id":"a","x":"\x"}"#,
            "{\"type\":\"register\",\"peer_id\":\"a\",\"x\":\"\t\"}",
            r#"{"type":"register","peer_id":"a","x":1.}"#,
            r#"{"type":"register","peer_id":"a","x":-}"#,
            r#"{"type":"register","peer_id":"a","x":{"k"}}"#,
            r#"{"type":"register","peer_id":"a","x":[}"#,
        ] {
            assert_eq!(fast(text), None, "{text}");
            // And the whole interpretation is the serde path's.
            assert_eq!(interpret_str(text, "a"), interpret_str_parsed(text, "a"));
        }
    }

    /// Mostly `usual`, now and then (1 in `odds`) one of `odd`.
    fn either<'a>(rng: &mut Rng, odds: usize, usual: &[&'a str], odd: &[&'a str]) -> &'a str {
        if rng.below(odds) == 0 {
            rng.pick(odd)
        } else {
            rng.pick(usual)
        }
    }

    /// A random JSON-ish value: mostly valid, sometimes not quite (what the grammar's
    /// edges look like: escapes, surrogates, exponents, leading zeros, whitespace).
    fn random_value(rng: &mut Rng, depth: usize, out: &mut String) {
        const ATOMS: &[&str] = &[
            "0",
            "-0",
            "1",
            "-12.5e3",
            "1e999",
            "1E+2",
            "2.0e-7",
            "18446744073709551616",
            "true",
            "false",
            "null",
            r#""""#,
            r#""x""#,
            r#""v=0\r\na=x\r\n""#,
            r#""\ud83d\ude00""#,
            r#""\ud83d""#,
            r#""\uDC00x""#,
            r#""\u00e9\/\b\f""#,
            "\"é ü\"",
            r#""\\ud83d""#,
            r#""a\"b""#,
            // Long (past `special`'s word-at-a-time start), escapes between.
            r#""v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\na=extmap-allow-mixed\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n""#,
            r#""xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxé""#,
        ];
        const ODD_ATOMS: &[&str] = &[
            "01",
            "1.",
            ".5",
            "-",
            "nul",
            "tru",
            r#""\q""#,
            r#""\u12""#,
            "\"\t\"",
            "+1",
            "\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\u{1}x\"",
        ];
        if depth > 3 || rng.below(3) == 0 {
            out.push_str(either(rng, 15, ATOMS, ODD_ATOMS));
            return;
        }
        let object = rng.below(2) == 0;
        out.push(if object { '{' } else { '[' });
        for k in 0..rng.below(4) {
            if k > 0 {
                out.push_str(either(rng, 30, &[",", ", "], &[" ,", ",,"]));
            }
            if object {
                out.push_str(either(
                    rng,
                    10,
                    &[r#""k""#, r#""type""#, "\"\""],
                    &[r#""\udc00""#, "k"],
                ));
                out.push_str(either(rng, 30, &[":", ": ", " : "], &["", "::"]));
            }
            random_value(rng, depth + 1, out);
        }
        if rng.below(40) == 0 {
            out.push(',');
        }
        out.push(if object { '}' } else { ']' });
    }

    /// A random message: the usual fields in any order, sometimes twice, missing, of
    /// another type, escaped, with extra members; then sometimes a byte or two changed.
    fn random_message(rng: &mut Rng) -> String {
        let mut members: Vec<String> = Vec::new();
        let types = [
            r#""offer""#,
            r#""answer""#,
            r#""ice_candidate""#,
            r#""register""#,
            r#""heartbeat""#,
        ];
        let odd_types = [r#""dance""#, r#""of\u0066er""#, "7", "null", r#""""#];
        let ids = [r#""a""#, r#""b""#, r#""é""#];
        let odd_ids = [r#""\u0061""#, r#""a ""#, "null", "1", r#""a\n""#];
        let count = |rng: &mut Rng| {
            [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 2][rng.below(20)]
        };
        for _ in 0..count(rng) {
            members.push(format!(r#""type":{}"#, either(rng, 10, &types, &odd_types)));
        }
        for _ in 0..count(rng) {
            members.push(format!(
                r#""peer_id":{}"#,
                either(rng, 20, &[r#""a""#], &odd_ids)
            ));
        }
        for _ in 0..count(rng) {
            members.push(format!(
                r#""target_id":{}"#,
                either(rng, 10, &ids, &odd_ids)
            ));
        }
        for (key, odds) in [
            (r#""payload""#, 2),
            (r#""x""#, 2),
            (r#""pay\u006coad""#, 20),
        ] {
            for _ in 0..usize::from(rng.below(odds) == 0) {
                let mut v = String::new();
                random_value(rng, 0, &mut v);
                members.push(format!("{key}:{v}"));
            }
        }
        // Shuffle.
        for i in (1..members.len()).rev() {
            members.swap(i, rng.below(i + 1));
        }
        let mut text = format!(
            "{{{}}}",
            members.join(either(rng, 10, &[",", ", "], &[" ,\n", ",,"]))
        );
        if rng.below(10) == 0 {
            text = format!(" {text}\n");
        }
        if rng.below(6) == 0 {
            // Damage: replace, insert or cut at a random place (staying UTF-8).
            let mut bytes = text.into_bytes();
            let at = rng.below(bytes.len());
            let junk = *b"\"\\{}[],: 0e-.ntu\x01x";
            match rng.below(3) {
                0 => bytes[at] = junk[rng.below(junk.len())],
                1 => bytes.insert(at, junk[rng.below(junk.len())]),
                _ => bytes.truncate(at),
            }
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    }

    /// The fast path against the serde path on many random messages: whatever the fast
    /// path decides, the serde path decides the same; and it decides most well-formed
    /// messages itself (it is the fast path for them).
    #[test]
    fn decides_as_the_serde_path_does() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut valid, mut decided, mut relays) = (0, 0, 0);
        let cases = 200_000;
        for _ in 0..cases {
            let text = random_message(&mut rng);
            let want = interpret_str_parsed(&text, "a");
            let parsable = want != Action::Ignore("unparsable frame");
            valid += usize::from(parsable);
            if let Some(got) = fast(&text) {
                assert_eq!(got, want, "{text}");
                decided += usize::from(parsable);
                relays += usize::from(matches!(got, Action::Relay { .. }));
            }
            assert_eq!(interpret_str(&text, "a"), want, "{text}");
        }
        // Not a tautology: the generator reaches the fast path's decisions, relays
        // too, and the fast path decides nearly every message serde can read.
        eprintln!("{valid} parsable, {decided} of them decided here, {relays} relays");
        assert!(valid > cases / 4, "{valid} of {cases}");
        assert!(decided > valid * 4 / 5, "{decided} of {valid}");
        assert!(relays > cases / 10, "{relays} of {cases}");
    }
}
