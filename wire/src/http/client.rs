//! The HTTP/1.1 client side, sans-IO (shared by the load generator, the sidecar and
//! the tests): a request writer and an incremental response
//! parser (httparse for the head, Content-Length bodies only; the servers we measure
//! always send one).

/// Largest response head accepted; a larger one is an error (a sane server's head is a
/// few hundred bytes).
pub const RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Largest response body accepted: a listing of tens of thousands of agents is a few
/// MiB. A larger body is an error rather than an unbounded buffer.
pub const RESPONSE_BODY_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Headers parsed per response (more: an error).
const HEADERS_MAX: usize = 48;

/// Appends one request to `out`.
pub fn write_request(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    out: &mut Vec<u8>,
) {
    use std::io::Write;
    let _ = write!(out, "{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    match body {
        Some(b) => {
            let _ = write!(out, "Content-Length: {}\r\n\r\n", b.len());
            out.extend_from_slice(b);
        }
        None => out.extend_from_slice(b"\r\n"),
    }
}

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Lower-case header names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses responses from bytes as they arrive (keep-alive: one after another).
#[derive(Debug, Default)]
pub struct ResponseParser {
    buf: Vec<u8>,
}

impl ResponseParser {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete response, if there is one. A `101 Switching Protocols` has
    /// no body: what follows it belongs to the new protocol ([`Self::take_rest`]).
    pub fn poll(&mut self) -> Result<Option<Response>, String> {
        self.poll_inner(false)
    }

    /// Like [`poll`](Self::poll), for the response to a HEAD request: it has no body,
    /// whatever its `Content-Length` says (RFC 9110 §9.3.2).
    pub fn poll_head(&mut self) -> Result<Option<Response>, String> {
        self.poll_inner(true)
    }

    fn poll_inner(&mut self, head: bool) -> Result<Option<Response>, String> {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if self.buf.len() > RESPONSE_HEAD_BYTES_MAX {
                    return Err(format!(
                        "response head larger than {RESPONSE_HEAD_BYTES_MAX} bytes"
                    ));
                }
                return Ok(None);
            }
            Err(e) => return Err(format!("malformed HTTP response: {e}")),
        };
        let status = resp.code.unwrap_or(0);
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v);
        if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            return Err("chunked responses are not supported by the bench client".into());
        }
        let body_len = if head || status == 101 || status == 204 || status == 304 {
            0
        } else {
            match find("content-length") {
                Some(v) => v
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| format!("bad content-length {v:?}"))?,
                None => 0,
            }
        };
        if body_len > RESPONSE_BODY_BYTES_MAX {
            return Err(format!(
                "response body of {body_len} bytes exceeds {RESPONSE_BODY_BYTES_MAX}"
            ));
        }
        if self.buf.len() < head_len + body_len {
            return Ok(None);
        }
        let body = self.buf[head_len..head_len + body_len].to_vec();
        self.buf.drain(..head_len + body_len);
        Ok(Some(Response {
            status,
            headers,
            body,
        }))
    }

    /// Bytes received after the last response (e.g. WebSocket frames after a 101).
    pub fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_requests() {
        let mut out = Vec::new();
        write_request(
            "POST",
            "/api/token",
            "127.0.0.1:80",
            &[("X-API-Key", "k")],
            Some(b"{}"),
            &mut out,
        );
        assert_eq!(
            out,
            b"POST /api/token HTTP/1.1\r\nHost: 127.0.0.1:80\r\nX-API-Key: k\r\nContent-Length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn parses_pipelined_responses_in_pieces() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00";
        let mut p = ResponseParser::new();
        let mut got = Vec::new();
        for chunk in raw.chunks(7) {
            p.feed(chunk);
            while got.len() < 3 {
                match p.poll().unwrap() {
                    Some(r) => got.push(r),
                    None => break,
                }
            }
        }
        assert_eq!(got[0].status, 200);
        assert_eq!(got[0].body, b"ok");
        assert_eq!(got[1].status, 401);
        assert_eq!(got[2].status, 101);
        assert_eq!(got[2].header("upgrade"), Some("websocket"));
        assert_eq!(p.take_rest(), b"\x81\x00");
    }

    #[test]
    fn refuses_garbage_and_chunked() {
        let mut p = ResponseParser::new();
        p.feed(b"NOT HTTP\r\n\r\n");
        assert!(p.poll().is_err());
        let mut p = ResponseParser::new();
        p.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(p.poll().is_err());
    }
}
