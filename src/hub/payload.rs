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

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

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
        canonical(v, &mut out)?;
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

/// Writes `v` with sorted keys and no whitespace, scalars other than strings verbatim.
/// Recursion depth is bounded by serde_json's nesting limit (128), checked when the
/// request body was parsed.
fn canonical(v: &RawValue, out: &mut String) -> Result<(), serde_json::Error> {
    let text = v.get();
    match text.as_bytes().first() {
        Some(b'{') => {
            let map: BTreeMap<String, &RawValue> = serde_json::from_str(text)?;
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k)?);
                out.push(':');
                canonical(v, out)?;
            }
            out.push('}');
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text)?;
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out)?;
            }
            out.push(']');
        }
        Some(b'"') => {
            let s: String = serde_json::from_str(text)?;
            out.push_str(&serde_json::to_string(&s)?);
        }
        Some(_) => out.push_str(text.trim()),
        None => return Err(serde_json::Error::custom("empty JSON value")),
    }
    Ok(())
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
}
