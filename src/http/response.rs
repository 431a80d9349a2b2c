//! HTTP/1.1 response encoder (sans-IO): builds the bytes of a response into a buffer.

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
    /// Extra header fields, written in order after the ones the encoder owns.
    /// `content-length`, `transfer-encoding` and the two CORS fields are always
    /// written by the encoder and are ignored here; `connection` is ignored when the
    /// response is encoded with `keep_alive = false`.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// Empty response with this status.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A response whose body is already-serialised JSON.
    pub fn json_bytes(status: u16, body: Vec<u8>) -> Self {
        Response {
            status,
            headers: vec![("content-type", "application/json".to_owned())],
            body,
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
            headers: vec![("content-type", content_type.to_owned())],
            body: body.into(),
        }
    }

    /// Add a header field.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
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
        out.reserve(128 + self.body.len());
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
        for (name, value) in &self.headers {
            if !is_token(name)
                || OWNED_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
                || (!keep_alive && name.eq_ignore_ascii_case("connection"))
            {
                continue;
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            let value = value.as_bytes();
            if value.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) {
                out.extend(value.iter().map(|&b| match b {
                    b'\r' | b'\n' | 0 => b' ',
                    _ => b,
                }));
            } else {
                out.extend_from_slice(value);
            }
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
