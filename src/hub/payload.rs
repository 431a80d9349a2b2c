//! A task payload kept as JSON text (`serde_json::value::RawValue`), as signaling keeps
//! its payloads: numbers come back exactly as sent (a `serde_json::Value` would round
//! anything beyond f64), and its size in bytes is known for the store's memory budget.
//!
//! The reference stores a `serde_json::Value`, so objects come back with sorted keys and
//! no whitespace; [`Payload`] canonicalizes to the same shape (keys sorted, duplicates
//! resolved last-wins, strings re-escaped as serde_json writes them) but keeps every
//! number's text verbatim. One visible difference: a number such as `1e5` comes back as
//! `1e5`, where the reference writes `100000.0`.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use wire::json::{TooDeep, JSON_DEPTH_MAX};

/// Canonical JSON text of a task payload; see the [module docs](self).
#[derive(Clone)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// `null`, the payload of a submission without one.
    pub fn null() -> Self {
        Payload(raw("null".to_owned()))
    }

    /// Parses and canonicalizes JSON text.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        let v: &RawValue = serde_json::from_str(text)?;
        Self::from_raw(v)
    }

    fn from_raw(v: &RawValue) -> Result<Self, serde_json::Error> {
        let mut out = String::with_capacity(v.get().len());
        canonical(v.get(), &mut out)?;
        Ok(Payload(raw(out)))
    }

    /// The canonical JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Size of the JSON text in bytes.
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    /// Never true: the shortest payload is a one-digit number.
    pub fn is_empty(&self) -> bool {
        self.0.get().is_empty()
    }
}

/// Text already known to be valid JSON (canonical output or a literal).
fn raw(text: String) -> Box<RawValue> {
    RawValue::from_string(text).unwrap_or_else(|_| {
        // Unreachable: `canonical` only writes valid JSON. Never panic on input.
        RawValue::from_string("null".to_owned()).unwrap_or_default()
    })
}

/// An object of the input: where it is, and its members in output order.
struct Object {
    /// Index of its `{` in the input, and just past its `}`.
    start: usize,
    end: usize,
    /// Its members sorted by (unescaped) key, the last of duplicates kept (as a
    /// `BTreeMap`): each key and where its value is in the input.
    members: Vec<(String, Range<usize>)>,
}

/// An array or object open during [`objects`]: for an object, its index, the key of
/// the member being read and where that member's value starts.
enum Open {
    Array,
    Object(usize, String, usize),
}

fn malformed(what: &str) -> serde_json::Error {
    serde_json::Error::custom(format!("malformed JSON payload: {what}"))
}

/// Writes the JSON text `text` with sorted keys and no whitespace, scalars other than
/// strings verbatim. Without recursion, and without copying anything twice: a first pass
/// ([`objects`]) finds every object and sorts its members, a second ([`emit`]) writes
/// the text in order, jumping to each member's value. Both keep the open arrays and
/// objects on an explicit stack of at most [`JSON_DEPTH_MAX`] entries (deeper is an
/// error naming the depth). Request bodies are refused at that depth before they get
/// here (`wire::json::parse_body`); the bound is checked again so that no caller can
/// reach a deeper walk. Work is linear in the text plus sorting each object's keys.
///
/// `text` has been validated by serde_json (a `RawValue`); anything unexpected is still
/// an error, never a panic.
fn canonical(text: &str, out: &mut String) -> Result<(), serde_json::Error> {
    let objects = objects(text)?;
    emit(text, &objects, out)
}

/// The objects of `text` in input order, each with its members sorted.
fn objects(text: &str) -> Result<Vec<Object>, serde_json::Error> {
    let b = text.as_bytes();
    let mut objects: Vec<Object> = Vec::new();
    let mut open: Vec<Open> = Vec::new();
    let mut i = 0;
    'value: loop {
        i = skip_ws(b, i);
        match b.get(i) {
            Some(&c @ (b'[' | b'{')) => {
                if open.len() == JSON_DEPTH_MAX {
                    let e = TooDeep {
                        depth: wire::json::nesting_depth(b),
                        limit: JSON_DEPTH_MAX,
                    };
                    return Err(serde_json::Error::custom(format!("payload: {e}")));
                }
                let start = i;
                i = skip_ws(b, i + 1);
                if c == b'[' {
                    if b.get(i) == Some(&b']') {
                        i += 1;
                    } else {
                        open.push(Open::Array);
                        continue 'value;
                    }
                } else {
                    objects.push(Object {
                        start,
                        end: 0,
                        members: Vec::new(),
                    });
                    if b.get(i) == Some(&b'}') {
                        i += 1;
                        if let Some(o) = objects.last_mut() {
                            o.end = i;
                        }
                    } else {
                        let (key, value) = member_key(text, i)?;
                        open.push(Open::Object(objects.len() - 1, key, value));
                        i = value;
                        continue 'value;
                    }
                }
            }
            Some(b'"') => {
                i = wire::json::string_end(b, i).ok_or_else(|| malformed("string"))?;
            }
            Some(_) => {
                let end = scalar_end(b, i);
                if end == i {
                    return Err(malformed("expected a value"));
                }
                i = end;
            }
            None => return Err(malformed("expected a value")),
        }
        // A value ended at `i`: close what it completes, or go on to the next one.
        loop {
            let value_end = i;
            i = skip_ws(b, i);
            let Some(top) = open.last_mut() else {
                return match i == b.len() {
                    true => Ok(objects),
                    false => Err(malformed("trailing characters")),
                };
            };
            match (top, b.get(i)) {
                (Open::Array, Some(b',')) => {
                    i += 1;
                    continue 'value;
                }
                (Open::Array, Some(b']')) => {
                    i += 1;
                    open.pop();
                }
                (Open::Object(o, key, value), Some(b',')) => {
                    let member = (std::mem::take(key), *value..value_end);
                    objects[*o].members.push(member);
                    let (next, at) = member_key(text, i + 1)?;
                    (*key, *value) = (next, at);
                    i = at;
                    continue 'value;
                }
                (Open::Object(o, key, value), Some(b'}')) => {
                    let o = *o;
                    let member = (std::mem::take(key), *value..value_end);
                    i += 1;
                    open.pop();
                    let object = &mut objects[o];
                    object.members.push(member);
                    object.end = i;
                    // Sorted by key, the last of duplicates kept.
                    let sorted: BTreeMap<String, Range<usize>> =
                        std::mem::take(&mut object.members).into_iter().collect();
                    object.members = sorted.into_iter().collect();
                }
                _ => return Err(malformed("expected `,` or a closing bracket")),
            }
        }
    }
}

/// An array or object being written by [`emit`]: an object's index in `objects` and
/// how many of its members are written.
enum Writing {
    Array,
    Object(usize, usize),
}

/// Writes `text` canonically, given its [`objects`].
fn emit(text: &str, objects: &[Object], out: &mut String) -> Result<(), serde_json::Error> {
    let b = text.as_bytes();
    let object_at = |i: usize| {
        objects
            .binary_search_by_key(&i, |o| o.start)
            .map_err(|_| malformed("unexpected object"))
    };
    let mut open: Vec<Writing> = Vec::new();
    let mut i = 0;
    'value: loop {
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b'[') => {
                i = skip_ws(b, i + 1);
                if b.get(i) == Some(&b']') {
                    out.push_str("[]");
                    i += 1;
                } else {
                    out.push('[');
                    open.push(Writing::Array);
                    continue 'value;
                }
            }
            Some(b'{') => {
                let o = object_at(i)?;
                match objects[o].members.first() {
                    None => {
                        out.push_str("{}");
                        i = objects[o].end;
                    }
                    Some((key, value)) => {
                        out.push('{');
                        push_key(key, out)?;
                        open.push(Writing::Object(o, 1));
                        i = value.start;
                        continue 'value;
                    }
                }
            }
            Some(b'"') => i = string(text, i, out)?,
            Some(_) => {
                let end = scalar_end(b, i);
                out.push_str(&text[i..end]);
                i = end;
            }
            None => return Err(malformed("expected a value")),
        }
        loop {
            let Some(top) = open.last_mut() else {
                return Ok(());
            };
            match top {
                Writing::Array => {
                    i = skip_ws(b, i);
                    match b.get(i) {
                        Some(b',') => {
                            out.push(',');
                            i += 1;
                            continue 'value;
                        }
                        Some(b']') => {
                            out.push(']');
                            i += 1;
                            open.pop();
                        }
                        _ => return Err(malformed("expected `,` or `]`")),
                    }
                }
                Writing::Object(o, written) => {
                    let object = &objects[*o];
                    match object.members.get(*written) {
                        Some((key, value)) => {
                            *written += 1;
                            out.push(',');
                            push_key(key, out)?;
                            i = value.start;
                            continue 'value;
                        }
                        None => {
                            out.push('}');
                            i = object.end;
                            open.pop();
                        }
                    }
                }
            }
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Just past the number or literal at `i`.
fn scalar_end(b: &[u8], i: usize) -> usize {
    b[i..]
        .iter()
        .position(|c| matches!(c, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r'))
        .map_or(b.len(), |n| i + n)
}

/// Writes the JSON string starting at `text[start]` as serde_json writes it; returns
/// the index past it. Without a backslash a valid JSON string already is in that form
/// (serde_json escapes only `"`, `\\` and control characters, which valid JSON cannot
/// hold unescaped): it is copied.
fn string(text: &str, start: usize, out: &mut String) -> Result<usize, serde_json::Error> {
    let end = wire::json::string_end(text.as_bytes(), start).ok_or_else(|| malformed("string"))?;
    let token = &text[start..end];
    if !token.contains('\\') {
        out.push_str(token);
    } else {
        let s: String = serde_json::from_str(token)?;
        out.push_str(&serde_json::to_string(&s)?);
    }
    Ok(end)
}

/// `"key":` as serde_json writes the key.
fn push_key(key: &str, out: &mut String) -> Result<(), serde_json::Error> {
    out.push_str(&serde_json::to_string(key)?);
    out.push(':');
    Ok(())
}

/// Reads `"key" :` at `text[i..]` (after `{` or `,`): the unescaped key and the index
/// of its value.
fn member_key(text: &str, i: usize) -> Result<(String, usize), serde_json::Error> {
    let b = text.as_bytes();
    let i = skip_ws(b, i);
    if b.get(i) != Some(&b'"') {
        return Err(malformed("expected a key"));
    }
    let end = wire::json::string_end(b, i).ok_or_else(|| malformed("string"))?;
    let token = &text[i..end];
    let key = match token.contains('\\') {
        true => serde_json::from_str(token)?,
        false => token[1..token.len() - 1].to_owned(),
    };
    let colon = skip_ws(b, end);
    if b.get(colon) != Some(&b':') {
        return Err(malformed("expected `:`"));
    }
    Ok((key, skip_ws(b, colon + 1)))
}

impl Default for Payload {
    fn default() -> Self {
        Payload::null()
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl From<serde_json::Value> for Payload {
    fn from(v: serde_json::Value) -> Self {
        // A Value's map is sorted and its text compact: already canonical.
        Payload(raw(
            serde_json::to_string(&v).unwrap_or_else(|_| "null".into())
        ))
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v: Box<RawValue> = Box::deserialize(d)?;
        Payload::from_raw(&v).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_compact_and_exact_numbers() {
        let p = Payload::from_json(r#" { "b" : [1, {"z":1,"a":2}], "a": null, "a": "\u00e9" } "#)
            .unwrap();
        assert_eq!(p.get(), r#"{"a":"é","b":[1,{"a":2,"z":1}]}"#);
        let big = "123456789012345678901234567890.123456789e400";
        let p =
            Payload::from_json(&format!(r#"{{"n":{big},"m":-0.1000000000000000055511}}"#)).unwrap();
        assert_eq!(
            p.get(),
            format!(r#"{{"m":-0.1000000000000000055511,"n":{big}}}"#)
        );
        assert_eq!(Payload::default().get(), "null");
        assert_eq!(
            Payload::from(serde_json::json!({"k": [true, 1.5]})).get(),
            r#"{"k":[true,1.5]}"#
        );
        assert!(Payload::from_json("{").is_err());
        assert_eq!(serde_json::to_string(&p).unwrap(), p.get());
    }

    /// The previous canonicalization (a re-parse per level, recursive), kept as the
    /// oracle for the two-pass walk: the same output for every input it could handle.
    fn recursive(v: &RawValue, out: &mut String) {
        let text = v.get();
        match text.as_bytes().first() {
            Some(b'{') => {
                let map: BTreeMap<String, &RawValue> = serde_json::from_str(text).unwrap();
                out.push('{');
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push(':');
                    recursive(v, out);
                }
                out.push('}');
            }
            Some(b'[') => {
                let items: Vec<&RawValue> = serde_json::from_str(text).unwrap();
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    recursive(v, out);
                }
                out.push(']');
            }
            Some(b'"') => {
                let s: String = serde_json::from_str(text).unwrap();
                out.push_str(&serde_json::to_string(&s).unwrap());
            }
            _ => out.push_str(text.trim()),
        }
    }

    /// A random JSON text with whitespace, duplicate and unsorted keys, escapes,
    /// non-ASCII, exotic numbers; `depth` levels at most.
    fn random_json(rng: &mut u64, depth: usize, out: &mut String) {
        fn next_of(rng: &mut u64, n: u64) -> u64 {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng % n
        }
        let ws = ["", " ", "\n\t ", "\r\n"];
        let strings = [
            r#""a""#,
            r#""b""#,
            r#""""#,
            r#""\u0062""#,
            r#""é\n\"\\/\/""#,
            r#""\ud83d\ude00""#,
            r#""[{]}""#,
            r#""\u0000\u001f\u007f""#,
            r#""z""#,
            r#""A""#,
        ];
        let scalars = [
            "0",
            "-1",
            "1.5e3",
            "1E-7",
            "123456789012345678901234567890",
            "true",
            "false",
            "null",
        ];
        out.push_str(ws[next_of(rng, 4) as usize]);
        match (depth, next_of(rng, 4)) {
            (0, _) | (_, 0) => {
                if next_of(rng, 2) == 0 {
                    out.push_str(strings[next_of(rng, 10) as usize]);
                } else {
                    out.push_str(scalars[next_of(rng, 8) as usize]);
                }
            }
            (_, 1) => {
                out.push('[');
                let n = next_of(rng, 4);
                for i in 0..n {
                    if i > 0 {
                        out.push(',');
                    }
                    random_json(rng, depth - 1, out);
                }
                out.push_str(ws[next_of(rng, 4) as usize]);
                out.push(']');
            }
            _ => {
                out.push('{');
                let n = next_of(rng, 5);
                for i in 0..n {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(ws[next_of(rng, 4) as usize]);
                    out.push_str(strings[next_of(rng, 10) as usize]);
                    out.push_str(ws[next_of(rng, 4) as usize]);
                    out.push(':');
                    random_json(rng, depth - 1, out);
                }
                out.push_str(ws[next_of(rng, 4) as usize]);
                out.push('}');
            }
        }
        out.push_str(ws[next_of(rng, 4) as usize]);
    }

    #[test]
    fn iterative_matches_the_recursive_canonicalization() {
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..5000 {
            let mut text = String::new();
            random_json(&mut rng, 6, &mut text);
            let raw: &RawValue = serde_json::from_str(&text).unwrap();
            let mut want = String::new();
            recursive(raw, &mut want);
            let got = Payload::from_json(&text).unwrap();
            assert_eq!(got.get(), want, "{text}");
            // Canonical text is its own canonical form.
            assert_eq!(Payload::from_json(got.get()).unwrap().get(), want);
        }
    }

    /// Nesting up to [`JSON_DEPTH_MAX`] is canonicalized; deeper is an error naming
    /// the depth and the limit, at any depth, without recursion (100,000 levels here;
    /// the recursive version overflowed a shard's stack at about 8,000).
    #[test]
    fn nesting_is_bounded_without_recursion() {
        let nested = |n: usize, open: &str, inner: &str, close: &str| {
            open.repeat(n) + inner + &close.repeat(n)
        };
        let at = nested(JSON_DEPTH_MAX, r#"{"b":1, "a":"#, "2", "}");
        let want = nested(JSON_DEPTH_MAX, r#"{"a":"#, "2", r#","b":1}"#);
        assert_eq!(Payload::from_json(&at).unwrap().get(), want);
        let at = nested(JSON_DEPTH_MAX, "[", "1", "]");
        assert_eq!(Payload::from_json(&at).unwrap().get(), at);
        for depth in [JSON_DEPTH_MAX + 1, 100_000] {
            for text in [
                nested(depth, "[", "", "]"),
                nested(depth, r#"{"k":"#, "1", "}"),
                nested(depth - 1, "[", "{}", "]"),
            ] {
                let err = Payload::from_json(&text).unwrap_err().to_string();
                assert_eq!(
                    err,
                    format!(
                        "payload: JSON nesting is {depth} levels deep; the limit is {JSON_DEPTH_MAX}"
                    )
                );
            }
        }
    }
}
