//! JSON request bodies parsed the way axum's `Json<T>` extractor does (the reference's
//! status codes and messages), and infallible response serialization. Sans-IO.

pub(crate) mod scan;

use std::fmt;
use std::sync::LazyLock;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A request body type, with the names of its required fields (so a missing one can be
/// reported by name).
pub trait JsonBody: DeserializeOwned {
    /// Fields without a default; if one is absent the body is refused with
    /// [`BodyError::MissingField`].
    const REQUIRED_FIELDS: &'static [&'static str];
}

/// Deepest nesting of arrays and objects accepted in JSON that a peer sends: HTTP request
/// bodies, signaling messages (server and sidecar), the sidecar's IPC lines and
/// DataChannel messages, JWT headers and claims, dashboard cursors, the API keys file.
/// `1` is a scalar inside one array or object (`[1]`), a bare scalar is `0`.
///
/// Why a bound at all: serde_json stops at 128 levels only within one `Deserializer`;
/// a `RawValue` (task payloads, relayed signaling payloads, the sidecar's messages) is
/// skipped without any depth check, and whatever re-parses it starts again at 0 (task
/// payload canonicalization recursed once per level and overflowed a shard's stack at
/// about 8,000 levels). Every JSON input is scanned with [`nesting_depth`] (no
/// recursion) before it is parsed, so nothing downstream recurses deeper than this.
///
/// Why 64: agent payloads, SDP and ICE payloads and MeshMessages nest a few levels;
/// nothing legitimate comes near 64. It leaves room under serde_json's 128 for the places
/// that wrap a client's value and parse it again as one document: a task record on disk
/// is the payload plus one level (a record nested 128 deep made the data directory
/// unloadable), a sidecar `message` event adds three, the relayed signaling frame one.
/// The reference (serde_json's limit on the whole body) refuses 128 levels and deeper
/// with a 400; 65 to 127 levels are refused here and not there (**Differs**).
///
/// A constant, not a flag: raising it above about 120 would break the store's records
/// and the sidecar's events (serde_json's limit), and lowering it has no use.
pub const JSON_DEPTH_MAX: usize = 64;

/// JSON nested deeper than a limit (see [`JSON_DEPTH_MAX`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooDeep {
    /// How deep the input nests ([`nesting_depth`]).
    pub depth: usize,
    /// The limit it exceeds.
    pub limit: usize,
}

impl fmt::Display for TooDeep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "JSON nesting is {} levels deep; the limit is {}",
            self.depth, self.limit
        )
    }
}

impl std::error::Error for TooDeep {}

/// The deepest nesting of arrays and objects in `bytes` (`[[1]]` is 2, `1` is 0),
/// counted in one pass without recursion: brackets inside strings (escapes respected)
/// do not count. Needs no valid JSON: for malformed input it counts the brackets that
/// JSON text would open (an unclosed `[[[` is 3), so it can run before the parser.
pub fn nesting_depth(bytes: &[u8]) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'"' => match string_end(bytes, i) {
                Some(end) => {
                    i = end;
                    continue;
                }
                None => break,
            },
            _ => {}
        }
        i += 1;
    }
    deepest
}

/// The index just past the string that starts with the quote at `start`, or `None` if
/// the input ends inside it. A quote ends the string unless an odd number of
/// backslashes precede it (each escape is a backslash and one more character, so a run
/// of them pairs up): one `memchr` per quote rather than a stop at every escape (an SDP
/// has a `\r\n` in every line).
pub fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        let j = i + memchr::memchr(b'"', bytes.get(i..)?)?;
        let escapes = bytes[start + 1..j]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if escapes % 2 == 0 {
            return Some(j + 1);
        }
        i = j + 1;
    }
}

/// `Ok` when serde_json's full parse accepts `text`, which serde_json has already
/// accepted as a `RawValue`; checked without building a tree.
///
/// Why: a `RawValue` (a relayed signaling payload, spliced into the outgoing frame as it
/// came) is validated by *skipping* its values, which accepts what the full parse
/// refuses: a lone UTF-16 surrogate escape (`"\ud83d\r"`) and a number beyond `f64`
/// (`1e999`, "number out of range"). Spliced, such a payload made a frame that the
/// reference's parser, or any Rust receiver's (the sidecar's), cannot read (both found
/// by the signaling fuzz target). Those are the only two things the skip lets through
/// (serde_json's `ignore_escape` checks a `\u`'s four hex digits and nothing more, its
/// `ignore_number` the grammar and not the value).
///
/// Cost: the full walk unescapes every string into the parser's scratch, which made a
/// relayed 3 KiB SDP offer 2.3 times as slow (criterion, `cargo bench --bench
/// signaling`). So a scan ([`may_be_refused`]: one `memmem` over the text, a byte loop
/// over what lies between strings) first looks for what could be refused, a `\ud`/`\uD`
/// escape, an exponent or a run of more than [`NUMBER_DIGITS_EXACT_MAX`] digits, and only
/// then is the value walked. The walk recurses once per level: callers check
/// [`nesting_depth`] against [`JSON_DEPTH_MAX`] first, and serde_json stops at 128.
pub fn check_strict(text: &str) -> Result<(), serde_json::Error> {
    if !may_be_refused(text.as_bytes()) {
        return Ok(());
    }
    serde_json::from_str::<Strict>(text).map(|_| ())
}

/// Digits a number may have before it could exceed `f64` (about 1.8e308): a run of
/// more is walked in full by [`check_strict`] (a long fraction is walked needlessly,
/// and passes).
pub const NUMBER_DIGITS_EXACT_MAX: usize = 308;

/// Whether valid JSON `b` holds something that serde_json's full parse might refuse:
/// see [`check_strict`]. False positives cost a walk; a false negative would let a
/// refused value through, so anything unsure answers `true`.
fn may_be_refused(b: &[u8]) -> bool {
    // Outside strings valid JSON has no backslash: one search over the whole text finds
    // every `\u` escape (an escaped backslash before a `u` is a harmless false positive).
    static ESCAPE_U: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\\u"));
    if ESCAPE_U
        .find_iter(b)
        .any(|k| matches!(b.get(k + 2), Some(b'd' | b'D')))
    {
        return true;
    }
    let mut i = 0;
    let mut digits = 0usize;
    while let Some(&c) = b.get(i) {
        match c {
            b'"' => {
                let Some(end) = string_end(b, i) else {
                    return true;
                };
                i = end;
                digits = 0;
                continue;
            }
            b'0'..=b'9' => {
                digits += 1;
                if digits > NUMBER_DIGITS_EXACT_MAX {
                    return true;
                }
            }
            // In valid JSON an `e` right after a digit is an exponent (in `true` and
            // `false` it follows a letter).
            b'e' | b'E' if digits > 0 => return true,
            _ => digits = 0,
        }
        i += 1;
    }
    false
}

/// A JSON value walked in full and dropped: see [`check_strict`].
struct Strict;

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `deserialize_any`, not `deserialize_ignored_any`: the latter is the skipping
        // path that lets the values above through.
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_str<E>(self, _: &str) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        while seq.next_element::<Strict>()?.is_some() {}
        Ok(Strict)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        while map.next_entry::<Strict, Strict>()?.is_some() {}
        Ok(Strict)
    }
}

/// `Err` when `bytes` nests deeper than `limit` ([`nesting_depth`]).
pub fn check_depth(bytes: &[u8], limit: usize) -> Result<(), TooDeep> {
    // Nothing nests deeper than it opens brackets: a body with few (every request's,
    // nearly) needs no string-aware walk. `memchr2` finds them a vector at a time (a
    // relayed SDP is a kilobyte of string with two brackets); the walk was a third of
    // a heartbeat body's parse (callgrind).
    if memchr::memchr2_iter(b'[', b'{', bytes)
        .take(limit.saturating_add(1))
        .count()
        <= limit
    {
        return Ok(());
    }
    let depth = nesting_depth(bytes);
    if depth > limit {
        return Err(TooDeep { depth, limit });
    }
    Ok(())
}

/// Why a request body was refused. Mirrors axum's `Json` extractor, which the reference
/// uses: malformed JSON is 400, well-formed JSON of the wrong shape is 422; nesting
/// deeper than [`JSON_DEPTH_MAX`] is 422 too (checked first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Not valid JSON (syntax error, truncated, trailing characters). HTTP 400.
    Syntax {
        /// serde_json's message, e.g. `expected value at line 1 column 1`.
        message: String,
    },
    /// A required field is absent. HTTP 422.
    MissingField {
        /// The field's name, e.g. `agent_id`.
        field: &'static str,
        /// serde_json's message, e.g. ``missing field `agent_id` at line 1 column 17``.
        message: String,
    },
    /// Valid JSON of the wrong shape: wrong type, out of range (a `port` above 65535),
    /// `null` for a string, duplicate field, not an object. HTTP 422.
    Data {
        /// serde_json's message, e.g. `invalid type: string "x", expected u16 at line 1 column 12`.
        message: String,
    },
    /// Arrays and objects nested deeper than [`JSON_DEPTH_MAX`] (whether or not the
    /// rest is valid JSON). HTTP 422. **Differs**: the reference answers 400 from 128
    /// levels on (serde_json's limit), and has no other bound.
    TooDeep(TooDeep),
}

impl BodyError {
    /// The HTTP status the reference answers with: 400 or 422.
    pub fn status(&self) -> u16 {
        match self {
            BodyError::Syntax { .. } => 400,
            BodyError::MissingField { .. } | BodyError::Data { .. } | BodyError::TooDeep(_) => 422,
        }
    }

    /// The `text/plain` body axum sends with that status.
    ///
    /// One difference: axum runs serde through `serde_path_to_error`, which prefixes
    /// errors below the top level with their path (`port: invalid type: …`); this crate
    /// does not depend on it, so the path prefix is absent. Missing top-level fields and
    /// syntax errors have no prefix in axum either, so those match exactly.
    pub fn response_text(&self) -> String {
        match self {
            BodyError::Syntax { message } => {
                format!("Failed to parse the request body as JSON: {message}")
            }
            BodyError::MissingField { message, .. } | BodyError::Data { message } => {
                format!("Failed to deserialize the JSON body into the target type: {message}")
            }
            BodyError::TooDeep(e) => format!("request body: {e}"),
        }
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.response_text())
    }
}

impl std::error::Error for BodyError {}

/// Parses a request body as `T`, the way axum's `Json<T>` extractor would.
/// Unknown fields are ignored; the whole input must be one JSON value, nested at most
/// [`JSON_DEPTH_MAX`] levels (checked first, without recursion).
pub fn parse_body<T: JsonBody>(bytes: &[u8]) -> Result<T, BodyError> {
    check_depth(bytes, JSON_DEPTH_MAX).map_err(BodyError::TooDeep)?;
    // Valid UTF-8 checked once for the whole body (one pass, vectorised), so serde does
    // not check each string again; a body that is not UTF-8 is parsed from the bytes,
    // for serde's own error (with its line and column).
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    }
    .map_err(|e| classify::<T>(&e))
}

fn classify<T: JsonBody>(e: &serde_json::Error) -> BodyError {
    use serde_json::error::Category;
    let message = e.to_string();
    match e.classify() {
        Category::Data => {
            let missing = message
                .strip_prefix("missing field `")
                .and_then(|rest| {
                    T::REQUIRED_FIELDS
                        .iter()
                        .find(|f| rest.strip_prefix(**f).is_some_and(|r| r.starts_with('`')))
                })
                .copied();
            match missing {
                Some(field) => BodyError::MissingField { field, message },
                None => BodyError::Data { message },
            }
        }
        Category::Syntax | Category::Eof | Category::Io => BodyError::Syntax { message },
    }
}

/// Serializes a value whose `Serialize` cannot fail (string keys only, no fallible custom
/// impls, writing to a `Vec`). Should it ever fail, the body is `null` rather than a panic.
pub fn json_vec<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Body {
        name: String,
    }

    impl JsonBody for Body {
        const REQUIRED_FIELDS: &'static [&'static str] = &["name"];
    }

    #[test]
    fn classifies_like_axum() {
        assert_eq!(parse_body::<Body>(b"{").unwrap_err().status(), 400);
        let err = parse_body::<Body>(b"{}").unwrap_err();
        assert!(matches!(err, BodyError::MissingField { field: "name", .. }));
        assert_eq!(
            parse_body::<Body>(br#"{"name":1}"#).unwrap_err().status(),
            422
        );
        assert!(parse_body::<Body>(br#"{"name":"x","other":1}"#).is_ok());
        assert_eq!(json_vec(&[1, 2]), b"[1,2]");
    }

    /// A body checked as UTF-8 once and parsed as text gives what parsing the bytes
    /// gives: the same value, and for a body that is not UTF-8 serde's own error.
    #[test]
    fn a_body_parses_as_its_bytes_would() {
        let bodies: [&[u8]; 7] = [
            br#"{"name":"x"}"#,
            "{\"name\":\"h\u{e9}llo \u{1f600}\"}".as_bytes(),
            br#"{"name":"a\u00e9\ud83d\ude00"}"#,
            b"{\"name\":\"\xff\"}",
            b"{\"name\":\"ok\"}\xc3",
            b"{\"na\xe9me\":\"x\"}",
            br#"{"name":"x\ud800"}"#,
        ];
        for body in bodies {
            let direct = serde_json::from_slice::<Body>(body).map_err(|e| e.to_string());
            let ours = parse_body::<Body>(body).map_err(|e| e.response_text());
            match (direct, ours) {
                (Ok(a), Ok(b)) => assert_eq!(a.name, b.name),
                (Err(a), Err(b)) => assert!(b.contains(&a), "{b:?} should carry {a:?}"),
                (a, b) => panic!("{body:?}: {a:?} against {b:?}"),
            }
        }
    }

    /// `n` nested arrays around `inner`.
    fn nested(n: usize, inner: &str) -> String {
        "[".repeat(n) + inner + &"]".repeat(n)
    }

    /// `check_strict` agrees with serde_json's full parse on everything its RawValue
    /// accepts, on both sides of each thing the prefilter looks for.
    #[test]
    fn check_strict_agrees_with_the_full_parse() {
        let digits = |n: usize| format!("9{}", "0".repeat(n - 1));
        let mut cases: Vec<String> = [
            r#""plain""#,
            r#""v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n""#,
            r#""\ud83d\ude00""#,
            r#""\uD83D\uDE00""#,
            r#""\ud83d\r""#,
            r#""\uD83D""#,
            r#""\udfff""#,
            r#""\\ud83d""#,
            r#""\u0041\u00e9""#,
            r#"{"\ud800":1}"#,
            r#"{"k":"\ud800\udc00"}"#,
            "1e308",
            "1e309",
            "-1E400",
            "0e99999999999999999999",
            "1.5e-400",
            "[true,false,null,1.0e1]",
            "18446744073709551616",
            "-9223372036854775809",
            r#"{"candidate":"candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host","sdpMLineIndex":0}"#,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for n in [308, 309, 310, 400] {
            cases.push(digits(n));
            cases.push(format!("[-{}]", digits(n)));
            cases.push(format!("0.{}", digits(n)));
            cases.push(format!("{}.5", digits(n)));
        }
        for text in &cases {
            assert!(
                serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok(),
                "{text}"
            );
            let full = serde_json::from_str::<serde_json::Value>(text).is_ok();
            assert_eq!(check_strict(text).is_ok(), full, "{text}");
        }
        // The refusals the skip lets through are among the cases.
        for refused in [r#""\ud83d\r""#, "1e309", &digits(310)] {
            assert!(check_strict(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn nesting_depth_counts_brackets_outside_strings() {
        for (text, depth) in [
            ("", 0),
            ("1", 0),
            (r#""[[[""#, 0),
            ("[]", 1),
            ("{}", 1),
            (r#"{"a":[1,{"b":[]}],"c":{}}"#, 4),
            (r#"["]\"",["\\",[["\"]"]]]]"#, 4),
            (r#"[["\u005b[",[]]]"#, 3),
            // Malformed input: the brackets it opens, never a panic.
            ("[[[", 3),
            ("]]][", 1),
            (r#"["[[[\"#, 1),
            (r#"["\"#, 1),
            (r#"[""#, 1),
        ] {
            assert_eq!(nesting_depth(text.as_bytes()), depth, "{text}");
            // serde_json agrees where it parses.
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
                fn depth_of(v: &serde_json::Value) -> usize {
                    match v {
                        serde_json::Value::Array(a) => {
                            1 + a.iter().map(depth_of).max().unwrap_or(0)
                        }
                        serde_json::Value::Object(o) => {
                            1 + o.values().map(depth_of).max().unwrap_or(0)
                        }
                        _ => 0,
                    }
                }
                assert_eq!(depth_of(&v), depth, "{text}");
            }
        }
        assert_eq!(nesting_depth(nested(100_000, "1").as_bytes()), 100_000);
        assert_eq!(nesting_depth("[".repeat(1_000_000).as_bytes()), 1_000_000);
    }

    /// At the limit a body parses; one level deeper (or 100,000) is 422 naming the
    /// depth and the limit, before serde_json sees it (no recursion, no stack).
    #[test]
    fn bodies_deeper_than_the_limit_are_422() {
        #[derive(serde::Deserialize, Debug)]
        struct Any {
            #[allow(dead_code)]
            v: serde_json::Value,
        }
        impl JsonBody for Any {
            const REQUIRED_FIELDS: &'static [&'static str] = &["v"];
        }
        let at = format!(r#"{{"v":{}}}"#, nested(JSON_DEPTH_MAX - 1, "1"));
        assert!(parse_body::<Any>(at.as_bytes()).is_ok());
        // Unknown fields count too (serde_json skips them without a depth check).
        let at = format!(
            r#"{{"name":"x","junk":{}}}"#,
            nested(JSON_DEPTH_MAX - 1, "")
        );
        assert!(parse_body::<Body>(at.as_bytes()).is_ok());
        for depth in [JSON_DEPTH_MAX + 1, 100_000] {
            for body in [
                format!(r#"{{"name":"x","junk":{}}}"#, nested(depth - 1, "")),
                format!(r#"{{"v":{}}}"#, nested(depth - 1, "1")),
                // Malformed and deep: still the depth.
                format!(r#"{{"v":{}"#, "[".repeat(depth - 1)),
            ] {
                let err = parse_body::<Any>(body.as_bytes()).unwrap_err();
                assert_eq!(
                    err,
                    BodyError::TooDeep(TooDeep {
                        depth,
                        limit: JSON_DEPTH_MAX
                    })
                );
                assert_eq!(err.status(), 422);
                assert_eq!(
                    err.response_text(),
                    format!(
                        "request body: JSON nesting is {depth} levels deep; the limit is {JSON_DEPTH_MAX}"
                    )
                );
                assert!(parse_body::<Body>(body.as_bytes()).is_err());
            }
        }
        assert_eq!(check_depth(b"[[]]", 2), Ok(()));
        assert_eq!(check_depth(b"[[]]", 1), Err(TooDeep { depth: 2, limit: 1 }));
        // More brackets than the limit, in strings or side by side: the walk decides.
        assert_eq!(check_depth(br#"["[[[[", [], {}]"#, 2), Ok(()));
        assert_eq!(check_depth(b"[[][][][]]", 2), Ok(()));
        assert_eq!(
            check_depth(br#"[{"a":[[]]}]"#, 3),
            Err(TooDeep { depth: 4, limit: 3 })
        );
    }

    /// The count's shortcut agrees with the walk for every limit, on bodies with and
    /// without brackets in strings.
    #[test]
    fn check_depth_agrees_with_nesting_depth() {
        for text in [
            "",
            "{}",
            r#"{"a":"[[[","b":[1,[2]]}"#,
            r#"[["\"[", {"x": [[]]}]]"#,
            "[[[[[[[[",
            r#"{"agent_id":"a","skill_names":["s1","s2"]}"#,
        ] {
            let depth = nesting_depth(text.as_bytes());
            for limit in 0..10 {
                assert_eq!(
                    check_depth(text.as_bytes(), limit).is_ok(),
                    depth <= limit,
                    "{text} {limit}"
                );
            }
        }
    }
}
