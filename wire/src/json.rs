//! JSON request bodies parsed the way axum's `Json<T>` extractor does (the reference's
//! status codes and messages), and infallible response serialization. Sans-IO.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A request body type, with the names of its required fields (so a missing one can be
/// reported by name).
pub trait JsonBody: DeserializeOwned {
    /// Fields without a default; if one is absent the body is refused with
    /// [`BodyError::MissingField`].
    const REQUIRED_FIELDS: &'static [&'static str];
}

/// Why a request body was refused. Mirrors axum's `Json` extractor, which the reference
/// uses: malformed JSON is 400, well-formed JSON of the wrong shape is 422.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Not valid JSON (syntax error, truncated, trailing characters, nesting deeper than
    /// serde_json's limit of 128). HTTP 400.
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
}

impl BodyError {
    /// The HTTP status the reference answers with: 400 or 422.
    pub fn status(&self) -> u16 {
        match self {
            BodyError::Syntax { .. } => 400,
            BodyError::MissingField { .. } | BodyError::Data { .. } => 422,
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
/// Unknown fields are ignored; the whole input must be one JSON value.
pub fn parse_body<T: JsonBody>(bytes: &[u8]) -> Result<T, BodyError> {
    serde_json::from_slice(bytes).map_err(|e| classify::<T>(&e))
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
        #[allow(dead_code)]
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
}
