//! The `/ws` upgrade: validate the request, find the token, build the 101 response.

use crate::http::{Method, Request};

/// Where the client put its JWT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `?token=` (the reference's only way; ends up in access logs).
    Query,
    /// `Authorization: Bearer <jwt>`.
    Bearer,
    /// A `Sec-WebSocket-Protocol` value: `bearer.<jwt>` or the bare JWT. The server
    /// selects that value in its answer, as the WebSocket protocol requires.
    Subprotocol(String),
}

/// A valid upgrade request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    pub token: String,
    pub source: TokenSource,
    /// `Sec-WebSocket-Accept` value.
    pub accept: String,
}

/// Why an upgrade is refused: an HTTP status and a reason for the JSON error body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
}

fn refuse(status: u16, reason: &'static str) -> Refusal {
    Refusal { status, reason }
}

/// Looks like a JWT: three base64url parts.
fn jwt_shaped(s: &str) -> bool {
    s.split('.').count() == 3
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// RFC 6455 §4.2.1: the key is 16 bytes (a nonce), base64-encoded (24 characters).
fn is_valid_key(key: &str) -> bool {
    use base64::Engine;
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|nonce| nonce.len() == 16)
}

/// Validates the upgrade and extracts the token (query first, then `Authorization`,
/// then `Sec-WebSocket-Protocol`). JWT verification is the caller's (it needs the
/// secret and the clock).
pub fn parse_upgrade(req: &Request) -> Result<Upgrade, Refusal> {
    let accept = check_upgrade(req)?;
    find_token(req, accept)
}

/// Validates an upgrade that needs no token (the `--ws-echo` test endpoint).
pub fn parse_untokened_upgrade(req: &Request) -> Result<Upgrade, Refusal> {
    Ok(Upgrade {
        token: String::new(),
        source: TokenSource::Query,
        accept: check_upgrade(req)?,
    })
}

/// Validates the method and the upgrade headers; returns the `Sec-WebSocket-Accept`.
fn check_upgrade(req: &Request) -> Result<String, Refusal> {
    if req.method != Method::Get {
        return Err(refuse(405, "the WebSocket endpoint takes GET"));
    }
    if !req.is_upgrade_websocket() {
        return Err(refuse(
            400,
            "not a WebSocket upgrade (Connection: upgrade and Upgrade: websocket required)",
        ));
    }
    if req.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(refuse(
            426,
            "unsupported Sec-WebSocket-Version (13 required)",
        ));
    }
    let key = match req.header("sec-websocket-key").map(str::trim) {
        Some(k) if is_valid_key(k) => k,
        _ => {
            return Err(refuse(
                400,
                "missing or malformed Sec-WebSocket-Key (16 bytes of base64 required)",
            ))
        }
    };
    Ok(tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

fn find_token(req: &Request, accept: String) -> Result<Upgrade, Refusal> {
    if let Some(t) = req.query_param("token").filter(|t| !t.is_empty()) {
        return Ok(Upgrade {
            token: t,
            source: TokenSource::Query,
            accept,
        });
    }
    if let Some(auth) = req.header("authorization") {
        let mut parts = auth.trim().splitn(2, ' ');
        if let (Some(scheme), Some(t)) = (parts.next(), parts.next()) {
            if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() {
                return Ok(Upgrade {
                    token: t.trim().to_string(),
                    source: TokenSource::Bearer,
                    accept,
                });
            }
        }
    }
    if let Some(protos) = req.header("sec-websocket-protocol") {
        for p in protos.split(',').map(str::trim) {
            let t = p.strip_prefix("bearer.").unwrap_or(p);
            if jwt_shaped(t) {
                return Ok(Upgrade {
                    token: t.to_string(),
                    source: TokenSource::Subprotocol(p.to_string()),
                    accept,
                });
            }
        }
    }
    Err(refuse(
        400,
        "missing token (give ?token=, Authorization: Bearer, or a Sec-WebSocket-Protocol value)",
    ))
}

/// The `101 Switching Protocols` response.
pub fn switching_protocols(up: &Upgrade) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: ",
    );
    out.extend_from_slice(up.accept.as_bytes());
    if let TokenSource::Subprotocol(p) = &up.source {
        out.extend_from_slice(b"\r\nsec-websocket-protocol: ");
        out.extend_from_slice(p.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Event, Limits, Parser};

    fn req(raw: &str) -> Request {
        let mut p = Parser::new(Limits::default());
        p.feed(raw.as_bytes());
        match p.poll() {
            Some(Event::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    const UPGRADE: &str = "host: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    #[test]
    fn query_token_and_rfc_accept_key() {
        let up = parse_upgrade(&req(&format!(
            "GET /ws?token=a.b.c HTTP/1.1\r\n{UPGRADE}\r\n"
        )))
        .unwrap();
        assert_eq!(up.token, "a.b.c");
        assert_eq!(up.source, TokenSource::Query);
        // RFC 6455 §1.3 example.
        assert_eq!(up.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let resp = String::from_utf8(switching_protocols(&up)).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(resp.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(!resp.contains("sec-websocket-protocol"));
    }

    #[test]
    fn untokened_upgrade_still_validates_the_handshake() {
        let up = parse_untokened_upgrade(&req(&format!("GET /ws-echo HTTP/1.1\r\n{UPGRADE}\r\n")))
            .unwrap();
        assert_eq!(up.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(up.token.is_empty());
        let bad = UPGRADE.replace("version: 13", "version: 8");
        let r = parse_untokened_upgrade(&req(&format!("GET /ws-echo HTTP/1.1\r\n{bad}\r\n")));
        assert_eq!(r.unwrap_err().status, 426);
    }

    #[test]
    fn bearer_and_subprotocol_tokens() {
        let up = parse_upgrade(&req(&format!(
            "GET /ws HTTP/1.1\r\nauthorization: Bearer x.y.z\r\n{UPGRADE}\r\n"
        )))
        .unwrap();
        assert_eq!(
            (up.token.as_str(), up.source),
            ("x.y.z", TokenSource::Bearer)
        );
        let up = parse_upgrade(&req(&format!(
            "GET /ws HTTP/1.1\r\nsec-websocket-protocol: chat, bearer.h.p.s\r\n{UPGRADE}\r\n"
        )))
        .unwrap();
        assert_eq!(up.token, "h.p.s");
        assert_eq!(up.source, TokenSource::Subprotocol("bearer.h.p.s".into()));
        assert!(String::from_utf8(switching_protocols(&up))
            .unwrap()
            .contains("sec-websocket-protocol: bearer.h.p.s\r\n"));
    }

    #[test]
    fn refusals() {
        let r = parse_upgrade(&req(&format!("GET /ws HTTP/1.1\r\n{UPGRADE}\r\n"))).unwrap_err();
        assert_eq!(r.status, 400);
        assert!(r.reason.contains("missing token"));
        let r =
            parse_upgrade(&req(&format!("GET /ws?token= HTTP/1.1\r\n{UPGRADE}\r\n"))).unwrap_err();
        assert_eq!(r.status, 400);
        let r = parse_upgrade(&req("GET /ws?token=a.b.c HTTP/1.1\r\nhost: x\r\n\r\n")).unwrap_err();
        assert_eq!(r.status, 400);
        let r = parse_upgrade(&req(&format!(
            "GET /ws?token=a.b.c HTTP/1.1\r\n{}\r\n",
            UPGRADE.replace("version: 13", "version: 8")
        )))
        .unwrap_err();
        assert_eq!(r.status, 426);
        let r = parse_upgrade(&req(&format!(
            "POST /ws?token=a.b.c HTTP/1.1\r\n{UPGRADE}\r\n"
        )))
        .unwrap_err();
        assert_eq!(r.status, 405);
    }

    #[test]
    fn key_must_be_16_bytes_of_base64() {
        for bad in [
            "not base64 at all!!!!!!!",
            "AAAAAAAAAAAAAAAAAAAAAAAA", // 18 bytes
            "AAAAAAAAAAAAAAAAAAAAAA==x",
            "dGhlIHNhbXBsZSBub25jZQ=",
            "",
        ] {
            let r = parse_upgrade(&req(&format!(
                "GET /ws?token=a.b.c HTTP/1.1\r\n{}\r\n",
                UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", bad)
            )))
            .unwrap_err();
            assert_eq!(r.status, 400, "{bad:?}");
            assert!(r.reason.contains("Sec-WebSocket-Key"), "{}", r.reason);
        }
        assert!(is_valid_key("AAAAAAAAAAAAAAAAAAAAAA=="));
    }
}
