//! Sans-IO HTTP/1.1 client for the one request the sidecar makes: `POST TOKEN_URL`
//! with `x-api-key`, answered by `{"token","peer_id","role"}`.
//!
//! The request asks for `connection: close`; the driver feeds every byte read into
//! [`ResponseReader::feed`] and calls [`ResponseReader::finish`] at end of stream.

use serde::Deserialize;

use super::url::Url;

/// Largest token response we accept (head and body together). A JWT and a peer id are
/// well under 8 KiB; a server that sends more is broken or hostile, and we stop
/// reading and fail the attempt (the backoff retries).
pub const TOKEN_RESPONSE_BYTES_MAX: usize = 64 * 1024;

/// What `/api/token` answers.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct TokenResponse {
    pub token: String,
    pub peer_id: String,
    #[serde(default)]
    pub role: String,
}

/// The request bytes.
pub fn token_request(url: &Url, api_key: &str) -> Vec<u8> {
    format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\nx-api-key: {}\r\ncontent-length: 0\r\naccept: application/json\r\nconnection: close\r\n\r\n",
        url.path,
        url.host_header(),
        api_key
    )
    .into_bytes()
}

/// Accumulates a response; bounded by [`TOKEN_RESPONSE_BYTES_MAX`].
#[derive(Default)]
pub struct ResponseReader {
    buf: Vec<u8>,
}

impl ResponseReader {
    /// Adds bytes; returns the parsed response once the body is complete (by
    /// content-length or chunked framing), `Ok(None)` while more is needed.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<TokenResponse>, String> {
        if self.buf.len() + bytes.len() > TOKEN_RESPONSE_BYTES_MAX {
            return Err("token response too large".into());
        }
        self.buf.extend_from_slice(bytes);
        self.try_parse(false)
    }

    /// End of stream: a body framed by the close is complete now.
    pub fn finish(&mut self) -> Result<TokenResponse, String> {
        match self.try_parse(true)? {
            Some(r) => Ok(r),
            None => Err("token response truncated".into()),
        }
    }

    fn try_parse(&self, eof: bool) -> Result<Option<TokenResponse>, String> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if eof => return Err("truncated response head".into()),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(format!("bad response: {e}")),
        };
        let code = resp.code.unwrap_or(0);
        let mut content_length = None;
        let mut chunked = false;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value).unwrap_or("");
                content_length = Some(
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| "bad content-length")?,
                );
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = String::from_utf8_lossy(h.value)
                    .to_ascii_lowercase()
                    .contains("chunked");
            }
        }
        let rest = &self.buf[head_len..];
        let body: Vec<u8> = if chunked {
            match dechunk(rest)? {
                Some(b) => b,
                None if eof => return Err("truncated chunked body".into()),
                None => return Ok(None),
            }
        } else if let Some(n) = content_length {
            if rest.len() < n {
                if eof {
                    return Err("truncated body".into());
                }
                return Ok(None);
            }
            rest[..n].to_vec()
        } else if eof {
            rest.to_vec()
        } else {
            return Ok(None);
        };
        if !(200..300).contains(&code) {
            return Err(format!(
                "token exchange failed: HTTP {code}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| format!("bad token response: {e}"))
    }
}

/// Decodes a complete chunked body, `None` if incomplete.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size")?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| "bad chunk size")?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"token":"a.b.c","peer_id":"agent-1","role":"agent"}"#;

    #[test]
    fn content_length_in_pieces() {
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
            BODY.len()
        );
        let mut r = ResponseReader::default();
        let (a, b) = resp.as_bytes().split_at(30);
        assert_eq!(r.feed(a).unwrap(), None);
        let t = r.feed(b).unwrap().unwrap();
        assert_eq!(t.peer_id, "agent-1");
        assert_eq!(t.token, "a.b.c");
    }

    #[test]
    fn chunked_and_close_delimited() {
        let resp = format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{BODY}\r\n0\r\n\r\n",
            BODY.len()
        );
        let mut r = ResponseReader::default();
        assert!(r.feed(resp.as_bytes()).unwrap().is_some());
        let mut r = ResponseReader::default();
        assert_eq!(
            r.feed(format!("HTTP/1.1 200 OK\r\n\r\n{BODY}").as_bytes())
                .unwrap(),
            None
        );
        assert!(r.finish().is_ok());
    }

    #[test]
    fn errors() {
        let mut r = ResponseReader::default();
        let e = r
            .feed(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 3\r\n\r\nno!")
            .unwrap_err();
        assert!(e.contains("401"), "{e}");
        let mut r = ResponseReader::default();
        assert!(r.feed(&vec![b'x'; TOKEN_RESPONSE_BYTES_MAX + 1]).is_err());
        let req = String::from_utf8(token_request(
            &Url::parse("http://h:1/api/token").unwrap(),
            "k",
        ))
        .unwrap();
        assert!(req.starts_with("POST /api/token HTTP/1.1\r\nhost: h:1\r\nx-api-key: k\r\n"));
    }
}
