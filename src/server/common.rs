//! What the router reads from an HTTP request before it calls a service: JSON bodies
//! (an object, of the expected shape), path parameters, the credentials presented.

use crate::http::{Request, Response};
use wire::json::{parse_body, JsonBody};

/// A handler's early exit: the response to send.
pub type Answer<T> = Result<T, Response>;

/// The JSON body of `req` as `T`: 415 without `Content-Type: application/json`, 400 for
/// malformed JSON, 422 for a missing field or a wrong type.
pub fn json_body<T: JsonBody>(req: &Request) -> Answer<T> {
    if !req.content_type_is_json() {
        return Err(Response::error(
            415,
            "expected request with `Content-Type: application/json`",
        ));
    }
    parse_body::<T>(&req.body).map_err(|e| Response::error(e.status(), e.response_text()))
}

/// Refuses a body that is valid JSON but not an object (`[]`, `"x"`, `1`): serde would
/// read a JSON array into a struct field by field, so `[]` would be an empty task.
/// 422, as for any body of the wrong shape.
pub fn require_object(body: &[u8]) -> Answer<()> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        return Err(Response::error(
            422,
            "Failed to deserialize the JSON body into the target type: expected a JSON object, got an array",
        ));
    }
    Ok(())
}

/// A path segment, percent-decoded (as axum's `Path` does). Invalid escapes or UTF-8 → 400.
pub fn path_param(raw: &str) -> Answer<String> {
    if !raw.contains('%') {
        return Ok(raw.to_owned());
    }
    // The crate keeps a `%` without two hex digits as it is; this API refuses it.
    let bytes = raw.as_bytes();
    let escapes_valid = bytes
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'%')
        .all(|(i, _)| {
            bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        });
    if !escapes_valid {
        return Err(Response::error(400, "invalid percent-encoding in path"));
    }
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| Response::error(400, "path is not valid UTF-8"))
}

/// The credentials `req` presents (`Authorization`, `X-API-Key`), for auth's workflows.
pub fn presented(req: &Request) -> crate::auth::Presented<'_> {
    crate::auth::Presented {
        authorization: req.header("authorization"),
        api_key: req.header("x-api-key"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_params_are_percent_decoded() {
        assert_eq!(path_param("abc").unwrap(), "abc");
        assert_eq!(path_param("a%20b%2Fc").unwrap(), "a b/c");
        assert_eq!(path_param("%C3%A9").unwrap(), "é");
        for bad in ["%", "%4", "%zz", "a%2", "%%41"] {
            assert_eq!(path_param(bad).unwrap_err().status, 400, "{bad}");
        }
        assert_eq!(path_param("%FF").unwrap_err().status, 400);
    }
}
