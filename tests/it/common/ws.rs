//! A blocking WebSocket client for tests: tungstenite over std TcpStream.
#![allow(dead_code)]

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

use super::Server;

pub type Ws = WebSocket<TcpStream>;

/// The server's default JWT secret (the harness unsets SIGNALING_SECRET).
pub const SECRET: &[u8] = b"dev-secret-change-me";

/// A JWT for `peer`, minted with an independent implementation (`jsonwebtoken`).
pub fn jwt_for(peer: &str, exp_in_secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({"sub": peer, "role": "agent", "iat": now, "exp": now + exp_in_secs});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

/// A JWT from the server's own `/api/token`.
pub fn jwt_from_key(srv: &Server, api_key: &str) -> String {
    let r = srv.req("POST", "/api/token", &[("X-API-Key", api_key)], None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["token"].as_str().unwrap().to_string()
}

/// Opens `/ws` with the token in the query; `Err(status)` when the upgrade is refused.
pub fn connect(srv: &Server, token: &str) -> Result<Ws, u16> {
    connect_with(srv, &format!("ws://{}/ws?token={token}", srv.addr), &[])
}

/// Opens `/ws` with `token` from a socket with a 4 KiB receive buffer (and a 10 s read
/// timeout), so that what the server sends it queues as soon as it stops reading.
pub fn slow_client(srv: &Server, token: &str) -> Ws {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&srv.addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let url = format!("ws://{}/ws?token={token}", srv.addr);
    tungstenite::client(url.as_str(), s).unwrap().0
}

pub fn connect_with(srv: &Server, url: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    use tungstenite::client::IntoClientRequest;
    let stream = TcpStream::connect(srv.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tungstenite::client(req, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            Err(resp.status().as_u16())
        }
        Err(e) => panic!("handshake: {e}"),
    }
}

/// Connects and registers `peer`; returns the socket and its peer list.
pub fn join(srv: &Server, peer: &str, token: &str) -> (Ws, Vec<String>) {
    let mut ws = connect(srv, token).unwrap_or_else(|s| panic!("{peer}: upgrade refused with {s}"));
    send(&mut ws, &json!({"type": "register", "peer_id": peer}));
    let list = recv(&mut ws);
    assert_eq!(list["type"], "peer_list", "{list}");
    assert_eq!(list["peer_id"], "registry");
    let peers = list["payload"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    (ws, peers)
}

pub fn send(ws: &mut Ws, v: &Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

/// The next text message as JSON (pings are answered by tungstenite and skipped).
pub fn recv(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Waits for the server's close frame; returns its code and reason.
pub fn recv_close(ws: &mut Ws) -> (u16, String) {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
            Ok(Message::Close(None)) => return (1005, String::new()),
            Ok(Message::Text(t)) => panic!("expected close, got text {t}"),
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    }
}

/// Reads until the server's close frame, skipping text messages already in flight;
/// returns the close code and reason and how many texts came before it.
pub fn recv_close_after_texts(ws: &mut Ws) -> (u16, String, usize) {
    let mut texts = 0;
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string(), texts),
            Ok(Message::Close(None)) => return (1005, String::new(), texts),
            Ok(Message::Text(_)) => texts += 1,
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got {e} after {texts} texts"),
        }
    }
}

/// Asserts nothing but pings arrives within `d`.
pub fn expect_silence(ws: &mut Ws, d: Duration) {
    ws.get_mut().set_read_timeout(Some(d)).unwrap();
    let t = Instant::now();
    loop {
        match ws.read() {
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            Ok(m) => panic!("expected nothing, got {m:?}"),
            Err(_) => break,
        }
    }
    assert!(t.elapsed() >= d.saturating_sub(Duration::from_millis(50)));
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
}

pub fn close_code(c: CloseCode) -> u16 {
    u16::from(c)
}
