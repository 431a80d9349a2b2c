//! The one HTTP request the sidecar makes: `POST TOKEN_URL` with `x-api-key`, answered
//! by `{"token","peer_id","role"}`. Written and read with the wire crate's HTTP/1.1
//! client side ([`write_request`], [`ResponseParser`]); the driver feeds every byte
//! read into [`ResponseReader::feed`] and calls [`ResponseReader::finish`] at end of
//! stream.

use serde::Deserialize;
use wire::http::client::{write_request, ResponseParser};

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

/// Why the token exchange failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    TooLarge,
    Truncated,
    Malformed(String),
    /// A non-2xx status and the start of its body.
    Status(u16, String),
    BadBody(String),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::TooLarge => f.write_str("token response too large"),
            TokenError::Truncated => f.write_str("token response truncated"),
            TokenError::Malformed(e) => write!(f, "bad token response: {e}"),
            TokenError::Status(code, body) => {
                write!(f, "token exchange failed: HTTP {code}: {body}")
            }
            TokenError::BadBody(e) => write!(f, "bad token response: {e}"),
        }
    }
}

impl std::error::Error for TokenError {}

/// The request bytes.
pub fn token_request(url: &Url, api_key: &str) -> Vec<u8> {
    let mut out = Vec::new();
    write_request(
        "POST",
        &url.path,
        &url.host_header(),
        &[
            ("x-api-key", api_key),
            ("content-length", "0"),
            ("accept", "application/json"),
            ("connection", "close"),
        ],
        None,
        &mut out,
    );
    out
}

/// Accumulates a response; bounded by [`TOKEN_RESPONSE_BYTES_MAX`].
#[derive(Default)]
pub struct ResponseReader {
    parser: ResponseParser,
    fed: usize,
}

impl ResponseReader {
    /// Adds bytes; returns the parsed response once the body is complete,
    /// `Ok(None)` while more is needed.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<TokenResponse>, TokenError> {
        self.fed += bytes.len();
        if self.fed > TOKEN_RESPONSE_BYTES_MAX {
            return Err(TokenError::TooLarge);
        }
        self.parser.feed(bytes);
        match self.parser.poll().map_err(TokenError::Malformed)? {
            None => Ok(None),
            Some(r) if !(200..300).contains(&r.status) => Err(TokenError::Status(
                r.status,
                String::from_utf8_lossy(&r.body[..r.body.len().min(200)]).into_owned(),
            )),
            Some(r) => serde_json::from_slice(&r.body)
                .map(Some)
                .map_err(|e| TokenError::BadBody(e.to_string())),
        }
    }

    /// End of stream before a complete response.
    pub fn finish(&mut self) -> TokenError {
        TokenError::Truncated
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
    fn request_shape() {
        let url = Url::parse("http://127.0.0.1:8080/api/token").unwrap();
        let req = String::from_utf8(token_request(&url, "ak_1")).unwrap();
        assert!(req.starts_with("POST /api/token HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(req.contains("x-api-key: ak_1\r\n") && req.ends_with("\r\n\r\n"));
    }

    #[test]
    fn errors() {
        let mut r = ResponseReader::default();
        let e = r
            .feed(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 3\r\n\r\nno!")
            .unwrap_err();
        assert_eq!(e, TokenError::Status(401, "no!".into()));
        let mut r = ResponseReader::default();
        assert!(r.feed(&vec![b'x'; TOKEN_RESPONSE_BYTES_MAX + 1]).is_err());
        let mut r = ResponseReader::default();
        assert!(r
            .feed(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            .is_err());
    }
}
