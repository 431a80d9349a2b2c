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
use crate::json::{check_strict, NUMBER_DIGITS_EXACT_MAX};

/// Containers open at once that [`value`] follows (a bit each in a `u128`). Callers
/// have bounded the whole message to [`crate::json::JSON_DEPTH_MAX`] (64) first; a
/// deeper value is handed to serde rather than tracked.
const NESTING_TRACKED_MAX: u32 = 128;

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

/// Past JSON whitespace from `i`.
fn ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
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

/// The index past the string starting with the quote at `i`, checked as serde_json
/// checks a string it skips; `strict` set when it has a `\uD…` escape (a surrogate,
/// which the full parse refuses unpaired).
fn string(b: &[u8], i: usize, strict: &mut bool) -> Option<usize> {
    let mut j = i + 1;
    loop {
        let k = special(b, j);
        match b.get(k)? {
            b'"' => return Some(k + 1),
            b'\\' => {}
            // A control character, which a JSON string may not hold.
            _ => return None,
        }
        match b.get(k + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => j = k + 2,
            b'u' => {
                let hex = b.get(k + 2..k + 6)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                *strict |= matches!(hex[0], b'd' | b'D');
                j = k + 6;
            }
            _ => return None,
        }
    }
}

/// Bytes [`special`] looks at a word at a time before it hands the rest of a string to
/// `memchr`: most strings (keys, ids, short values) end within them, and for those a
/// call and its set-up cost more than the search (callgrind: ~100 instructions a key).
const SHORT_STRING_MAX: usize = 64;

/// The index of the first byte from `from` that is a quote, a backslash or a control
/// character (what stops a JSON string), or `b.len()`.
fn special(b: &[u8], from: usize) -> usize {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES << 7;
    let mut i = from;
    // Eight bytes at a time (the test serde_json makes): a byte's high bit is set in
    // the mask where it is below 0x20 or equal to the quote or the backslash, and the
    // lowest set bit is exact (a borrow only spreads upwards, past the first match).
    while let Some(word) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(word.try_into().unwrap_or_default());
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        let found = (w.wrapping_sub(ONES * 0x20)
            | (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash))
            & !w
            & HIGH;
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
        if i - from >= SHORT_STRING_MAX {
            return special_long(b, i);
        }
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return i;
        }
        i += 1;
    }
    i
}

/// [`special`] past its first bytes: `memchr` finds the quote or the backslash a vector
/// at a time, and the bytes before it are checked for controls the same way.
fn special_long(b: &[u8], from: usize) -> usize {
    let rest = &b[from..];
    let end = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
    // Without an early exit, so that it runs a vector at a time; controls are rare.
    if rest[..end].iter().fold(false, |seen, &c| seen | (c < 0x20)) {
        return from + rest.iter().position(|&c| c < 0x20).unwrap_or(end);
    }
    from + end
}

/// The index past the number starting at `i` (JSON's grammar: digits on both sides of a
/// point; a leading `0` is the whole integer part, so in `01` the number ends before the
/// `1`, which every caller then refuses as not what may follow a value); `strict` set
/// when it has an exponent or more than [`NUMBER_DIGITS_EXACT_MAX`] digits in all (a
/// long fraction sets it needlessly: the walk passes it).
fn number(b: &[u8], mut i: usize, strict: &mut bool) -> Option<usize> {
    let digits = |b: &[u8], i: usize| b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    let int = match b.get(i)? {
        b'0' => 1,
        b'1'..=b'9' => digits(b, i),
        _ => return None,
    };
    i += int;
    let mut frac = 0;
    if b.get(i) == Some(&b'.') {
        frac = digits(b, i + 1);
        if frac == 0 {
            return None;
        }
        i += 1 + frac;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        *strict = true;
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let exp = digits(b, i);
        if exp == 0 {
            return None;
        }
        i += exp;
    }
    *strict |= int + frac > NUMBER_DIGITS_EXACT_MAX;
    Some(i)
}

/// Past `key :` of an object member at `i` (the key any string), at the member's value.
fn member_key(b: &[u8], i: usize, strict: &mut bool) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let i = ws(b, string(b, i, strict)?);
    (b.get(i) == Some(&b':')).then(|| ws(b, i + 1))
}

/// The index past the JSON value starting at `i` (no whitespace before it), checked as
/// serde_json checks a value it skips; `strict` as [`string`] and [`number`] set it.
/// Iterative: one bit per open container (1 for an object).
fn value(b: &[u8], mut i: usize, strict: &mut bool) -> Option<usize> {
    let mut open: u128 = 0;
    let mut depth: u32 = 0;
    loop {
        // At a value.
        match *b.get(i)? {
            b'"' => i = string(b, i, strict)?,
            c @ (b'{' | b'[') => {
                i = ws(b, i + 1);
                let close = if c == b'{' { b'}' } else { b']' };
                if b.get(i) == Some(&close) {
                    i += 1;
                } else {
                    if depth == NESTING_TRACKED_MAX {
                        return None;
                    }
                    open = open << 1 | u128::from(c == b'{');
                    depth += 1;
                    if c == b'{' {
                        i = member_key(b, i, strict)?;
                    }
                    continue;
                }
            }
            b't' => i = literal(b, i, b"true")?,
            b'f' => i = literal(b, i, b"false")?,
            b'n' => i = literal(b, i, b"null")?,
            b'-' | b'0'..=b'9' => i = number(b, i, strict)?,
            _ => return None,
        }
        // After a value: close what ends here, then on to the next one.
        loop {
            if depth == 0 {
                return Some(i);
            }
            i = ws(b, i);
            let object = open & 1 == 1;
            match (b.get(i)?, object) {
                (b',', _) => {
                    i = ws(b, i + 1);
                    if object {
                        i = member_key(b, i, strict)?;
                    }
                    break;
                }
                (b'}', true) | (b']', false) => {
                    i += 1;
                    open >>= 1;
                    depth -= 1;
                }
                _ => return None,
            }
        }
    }
}

/// The index past `word` at `i`.
fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    b[i..].starts_with(word).then_some(i + word.len())
}

#[cfg(test)]
mod edges;

#[cfg(test)]
mod tests {
    use super::super::{interpret_str, interpret_str_parsed};
    use super::*;

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

    /// `special` finds the first quote, backslash or control at every place in strings
    /// of every length around its word size and its hand-over to `memchr`, past
    /// non-ASCII text, as a byte-by-byte search does.
    #[test]
    fn special_finds_the_first_stop() {
        let naive = |b: &[u8], from: usize| {
            from + b[from..]
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .unwrap_or(b.len() - from)
        };
        let filler = "aé€\u{7f}zZ ~".as_bytes();
        for len in 0..(3 * SHORT_STRING_MAX + 20) {
            let base: Vec<u8> = filler.iter().copied().cycle().take(len).collect();
            for from in [0, 1, 7] {
                if from > len {
                    continue;
                }
                assert_eq!(special(&base, from), naive(&base, from), "{len} {from}");
                for at in from..len {
                    for stop in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                        let mut b = base.clone();
                        b[at] = stop;
                        // A second stop later does not move the first.
                        if at + 3 < len {
                            b[at + 3] = b'"';
                        }
                        assert_eq!(
                            special(&b, from),
                            naive(&b, from),
                            "{len} {from} {at} {stop}"
                        );
                    }
                }
            }
        }
    }

    /// Deterministic xorshift64*.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
            xs[self.below(xs.len())]
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
