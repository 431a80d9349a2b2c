//! HTTP/1.1 response encoder (sans-IO): builds the bytes of a response into a buffer.
//!
//! A response to a hot request allocates nothing of its own: the content type is a
//! `&'static str`, header values and the body may be borrowed statics ([`Cow`]), and
//! the bytes go into the connection's reusable output buffer.

use std::borrow::Cow;

use super::parser::HttpError;

/// Header names the encoder writes itself; copies among [`Response::headers`] are
/// dropped so that framing and CORS cannot be duplicated or contradicted.
const OWNED_HEADERS: [&str; 4] = [
    "content-length",
    "transfer-encoding",
    "access-control-allow-origin",
    "access-control-expose-headers",
];

/// A response to encode with [`Response::encode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// `content-type`, written first after the fields the encoder owns.
    pub content_type: Option<&'static str>,
    /// Extra header fields, written in order after the ones the encoder owns.
    /// `content-length`, `transfer-encoding` and the two CORS fields are always
    /// written by the encoder and are ignored here; `connection` is ignored when the
    /// response is encoded with `keep_alive = false`.
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    pub body: Cow<'static, [u8]>,
}

impl Response {
    /// Empty response with this status.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            content_type: None,
            headers: Vec::new(),
            body: Cow::Borrowed(&[]),
        }
    }

    /// A response whose body is already-serialised JSON.
    pub fn json_bytes(status: u16, body: Vec<u8>) -> Self {
        Response {
            status,
            content_type: Some("application/json"),
            headers: Vec::new(),
            body: Cow::Owned(body),
        }
    }

    /// A constant JSON body (no allocation).
    pub fn json_static(status: u16, body: &'static [u8]) -> Self {
        Response {
            status,
            content_type: Some("application/json"),
            headers: Vec::new(),
            body: Cow::Borrowed(body),
        }
    }

    /// Serialise `value` as the JSON body. Should serialisation fail (a `Serialize`
    /// impl that errors, or a map with non-string keys), the result is a 500 error.
    pub fn json<T: serde::Serialize>(status: u16, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Response::json_bytes(status, body),
            Err(_) => Response::error(500, "response serialization failed"),
        }
    }

    /// `{"error": reason}` with content-type `application/json`.
    pub fn error(status: u16, reason: impl Into<String>) -> Self {
        let body = serde_json::json!({ "error": reason.into() });
        let body = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        Response::json_bytes(status, body)
    }

    /// A body with an explicit content type.
    pub fn text(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type: Some(content_type),
            headers: Vec::new(),
            body: Cow::Owned(body.into()),
        }
    }

    /// Add a header field.
    pub fn with_header(mut self, name: &'static str, value: impl Into<Cow<'static, str>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Append the encoded response to `out`: status line with its standard reason
    /// phrase, `content-length` (not for 1xx, 204 and 304), the CORS fields,
    /// `connection: close` when `!keep_alive`, the extra headers, a blank line, then the
    /// body (not for `head_only`, i.e. HEAD requests, nor for 1xx, 204 and 304; a HEAD
    /// response still states the length the body would have).
    ///
    /// A status outside 100..=999 is sent as 500. CR, LF and NUL in header values are
    /// replaced by spaces (no header injection); fields with an invalid name are
    /// skipped.
    pub fn encode(&self, keep_alive: bool, head_only: bool, out: &mut Vec<u8>) {
        let status = if (100..=999).contains(&self.status) {
            self.status
        } else {
            500
        };
        let bodyless = status < 200 || status == 204 || status == 304;
        // Everything this writes, so that a fresh buffer is allocated once: the fixed
        // lines are under 192 bytes (status line, content-length, the two CORS lines,
        // connection, content type), then each header and the body.
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum();
        out.reserve(192 + self.content_type.map_or(0, str::len) + headers + self.body.len());
        out.extend_from_slice(b"HTTP/1.1 ");
        push_decimal(out, u64::from(status));
        out.push(b' ');
        out.extend_from_slice(status_reason(status).as_bytes());
        out.extend_from_slice(b"\r\n");
        if !bodyless {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, self.body.len() as u64);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(
            b"access-control-allow-origin: *\r\naccess-control-expose-headers: *\r\n",
        );
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        }
        if let Some(ct) = self.content_type {
            out.extend_from_slice(b"content-type: ");
            push_sanitised(out, ct.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        for (name, value) in &self.headers {
            if !is_token(name)
                || OWNED_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
                || (self.content_type.is_some() && name.eq_ignore_ascii_case("content-type"))
                || (!keep_alive && name.eq_ignore_ascii_case("connection"))
            {
                continue;
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            push_sanitised(out, value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only && !bodyless {
            out.extend_from_slice(&self.body);
        }
    }
}

/// The error response for a parse error. It also carries `connection: close`, so even
/// an encode with `keep_alive = true` tells the client the connection ends (the parser
/// is dead after an error: the caller must close it).
impl From<HttpError> for Response {
    fn from(err: HttpError) -> Self {
        Response::error(err.status, err.reason).with_header("connection", "close")
    }
}

fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// A header value with CR, LF and NUL replaced by spaces (no header injection).
fn push_sanitised(out: &mut Vec<u8>, value: &[u8]) {
    if value.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) {
        out.extend(value.iter().map(|&b| match b {
            b'\r' | b'\n' | 0 => b' ',
            _ => b,
        }));
    } else {
        out.extend_from_slice(value);
    }
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The standard reason phrase for a status code ("Unknown" for unregistered codes).
pub fn status_reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        418 => "I'm a teapot",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(resp: &Response, keep_alive: bool, head_only: bool) -> String {
        let mut out = Vec::new();
        resp.encode(keep_alive, head_only, &mut out);
        String::from_utf8(out).expect("utf-8")
    }

    /// Split an encoded response into (status line, header lines, body).
    fn split(encoded: &str) -> (&str, Vec<&str>, &str) {
        let (head, body) = encoded.split_once("\r\n\r\n").expect("blank line");
        let mut lines = head.split("\r\n");
        let status = lines.next().expect("status line");
        (status, lines.collect(), body)
    }

    #[test]
    fn json_response_with_cors_and_length() {
        let resp = Response::json(200, &serde_json::json!({"ok": true, "n": 1}));
        let enc = encode(&resp, true, false);
        let (status, headers, body) = split(&enc);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(headers.contains(&"access-control-allow-origin: *"));
        assert!(headers.contains(&"access-control-expose-headers: *"));
        assert!(headers.contains(&"content-type: application/json"));
        assert!(!headers.iter().any(|h| h.starts_with("connection")));
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v, serde_json::json!({"ok": true, "n": 1}));
        assert!(headers.contains(&format!("content-length: {}", body.len()).as_str()));
    }

    #[test]
    fn close_and_head() {
        let resp = Response::text(404, "text/plain", "nope");
        let enc = encode(&resp, false, true);
        assert_eq!(
            enc,
            "HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\
             access-control-allow-origin: *\r\naccess-control-expose-headers: *\r\n\
             connection: close\r\ncontent-type: text/plain\r\n\r\n"
        );
        let enc = encode(&resp, true, false);
        assert!(enc.ends_with("\r\n\r\nnope"));
    }

    #[test]
    fn bodyless_statuses() {
        for status in [101, 204, 304] {
            let resp = Response::text(status, "text/plain", "ignored");
            let enc = encode(&resp, true, false);
            let (_, headers, body) = split(&enc);
            assert_eq!(body, "", "{status}");
            assert!(!headers.iter().any(|h| h.starts_with("content-length")));
        }
        let enc = encode(&Response::new(200), true, false);
        assert!(enc.contains("content-length: 0\r\n"));
        let enc = encode(&Response::new(599), true, false);
        assert!(enc.starts_with("HTTP/1.1 599 Unknown\r\n"));
        let enc = encode(&Response::new(42), true, false);
        assert!(enc.starts_with("HTTP/1.1 500 Internal Server Error\r\n"));
    }

    #[test]
    fn websocket_switch() {
        let resp = Response::new(101)
            .with_header("upgrade", "websocket")
            .with_header("connection", "Upgrade")
            .with_header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let enc = encode(&resp, true, false);
        assert_eq!(
            enc,
            "HTTP/1.1 101 Switching Protocols\r\n\
             access-control-allow-origin: *\r\naccess-control-expose-headers: *\r\n\
             upgrade: websocket\r\nconnection: Upgrade\r\n\
             sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    #[test]
    fn error_from_http_error() {
        let err = HttpError {
            status: 413,
            reason: "request body too large: \"x\"".to_owned(),
        };
        let resp = Response::from(err);
        for keep_alive in [true, false] {
            let enc = encode(&resp, keep_alive, false);
            let (status, headers, body) = split(&enc);
            assert_eq!(status, "HTTP/1.1 413 Content Too Large");
            assert_eq!(
                headers
                    .iter()
                    .filter(|h| **h == "connection: close")
                    .count(),
                1
            );
            assert!(headers.contains(&"content-type: application/json"));
            let v: serde_json::Value = serde_json::from_str(body).expect("json");
            assert_eq!(v["error"], "request body too large: \"x\"");
        }
    }

    #[test]
    fn owned_headers_are_not_duplicated_and_values_are_sanitised() {
        let resp = Response::text(200, "text/plain", "abc")
            .with_header("Content-Length", "999")
            .with_header("access-control-allow-origin", "https://evil")
            .with_header("transfer-encoding", "chunked")
            .with_header("x-inject", "a\r\nset-cookie: s=1")
            .with_header("bad name", "v")
            .with_header("", "v");
        let enc = encode(&resp, true, false);
        let (_, headers, body) = split(&enc);
        assert_eq!(body, "abc");
        assert_eq!(
            headers,
            vec![
                "content-length: 3",
                "access-control-allow-origin: *",
                "access-control-expose-headers: *",
                "content-type: text/plain",
                "x-inject: a  set-cookie: s=1",
            ]
        );
    }

    #[test]
    fn json_serialisation_failure_is_500() {
        let mut map = std::collections::HashMap::new();
        map.insert((1, 2), 3);
        let resp = Response::json(200, &map);
        assert_eq!(resp.status, 500);
        assert!(String::from_utf8_lossy(&resp.body).contains("error"));
    }

    #[test]
    fn appends_to_existing_output() {
        let mut out = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
        Response::new(204).encode(true, false, &mut out);
        Response::json_bytes(200, b"{}".to_vec()).encode(true, false, &mut out);
        let s = String::from_utf8(out).expect("utf-8");
        assert!(s.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n"));
        assert!(s.ends_with("\r\n\r\n{}"));
    }

    #[test]
    fn reasons() {
        assert_eq!(status_reason(200), "OK");
        assert_eq!(status_reason(400), "Bad Request");
        assert_eq!(status_reason(413), "Content Too Large");
        assert_eq!(status_reason(431), "Request Header Fields Too Large");
        assert_eq!(status_reason(0), "Unknown");
    }
}
