//! Sans-IO WebSocket client for the signaling connection, on the wire crate's client
//! codec: the upgrade request, its `101` read by [`ResponseParser`], then
//! [`ClientDecoder`] for server frames and the masked encoders for ours. The driver
//! feeds bytes read from TCP into [`WsClient::feed`] and writes out whatever
//! [`WsClient::take_outbound`] returns. Masks come from a generator seeded by the
//! caller (no randomness inside).

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use tungstenite::handshake::derive_accept_key;
use wire::http::client::{write_request, ResponseParser};
use wire::ws::client::{
    encode_close_masked, encode_pong_masked, encode_text_masked, ClientDecoder, ClientEvent,
};

use super::url::Url;

/// Largest signaling message we accept. An SDP offer is a few KiB and a peer list of
/// thousands of ids well under a MiB; a larger frame fails the connection and we
/// reconnect (with backoff).
pub const WS_MESSAGE_BYTES_MAX: usize = 1024 * 1024;

/// Close code we send when we end the session ourselves.
const CLOSE_NORMAL: u16 = 1000;

/// What the connection produced.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEvent {
    /// The upgrade succeeded.
    Open,
    Text(String),
    /// The server closed the connection with this code (1005: none given).
    Closed(u16),
}

/// Why the connection is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsError {
    /// The upgrade response was malformed or too large.
    BadUpgrade(String),
    /// The server answered the upgrade with another status.
    Refused(u16),
    /// The `sec-websocket-accept` did not match our key.
    WrongAccept,
    /// A frame broke the protocol or our size limit.
    Frame(&'static str),
    NotOpen,
}

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WsError::BadUpgrade(e) => write!(f, "bad upgrade response: {e}"),
            WsError::Refused(code) => write!(f, "upgrade refused: HTTP {code}"),
            WsError::WrongAccept => {
                f.write_str("upgrade response has a wrong sec-websocket-accept")
            }
            WsError::Frame(e) => write!(f, "bad frame: {e}"),
            WsError::NotOpen => f.write_str("websocket not open"),
        }
    }
}

impl std::error::Error for WsError {}

enum State {
    Handshaking {
        accept: String,
        head: ResponseParser,
    },
    Open(ClientDecoder),
    Closed,
}

pub struct WsClient {
    state: State,
    outbound: Vec<u8>,
    rng: ChaCha8Rng,
}

impl WsClient {
    /// Starts a connection to `url` (its path gets `?token=`); the upgrade request is
    /// already in the outbound buffer. `seed` drives the key and the frame masks.
    pub fn new(url: &Url, token: &str, seed: u64) -> WsClient {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut nonce = [0u8; 16];
        rng.fill_bytes(&mut nonce);
        let key = base64_16(&nonce);
        let sep = if url.path.contains('?') { '&' } else { '?' };
        let path = format!("{}{sep}token={token}", url.path);
        let mut outbound = Vec::new();
        write_request(
            "GET",
            &path,
            &url.host_header(),
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", &key),
            ],
            None,
            &mut outbound,
        );
        WsClient {
            state: State::Handshaking {
                accept: derive_accept_key(key.as_bytes()),
                head: ResponseParser::new(),
            },
            outbound,
            rng,
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open(_))
    }

    /// Bytes to write to the socket.
    pub fn take_outbound(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outbound)
    }

    fn mask(&mut self) -> [u8; 4] {
        self.rng.next_u32().to_ne_bytes()
    }

    /// Queues a text frame. Errors if the connection is not open.
    pub fn send_text(&mut self, text: &str) -> Result<(), WsError> {
        if !self.is_open() {
            return Err(WsError::NotOpen);
        }
        let mask = self.mask();
        encode_text_masked(text.as_bytes(), mask, &mut self.outbound);
        Ok(())
    }

    /// Bytes read from the socket; returns what they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<WsEvent>, WsError> {
        let mut events = Vec::new();
        let frames = match &mut self.state {
            State::Handshaking { accept, head } => {
                head.feed(bytes);
                let resp = match head.poll() {
                    Ok(Some(r)) => r,
                    Ok(None) => return Ok(events),
                    Err(e) => return Err(WsError::BadUpgrade(e)),
                };
                if resp.status != 101 {
                    return Err(WsError::Refused(resp.status));
                }
                if resp.header("sec-websocket-accept") != Some(accept.as_str()) {
                    return Err(WsError::WrongAccept);
                }
                let rest = head.take_rest();
                self.state = State::Open(ClientDecoder::new(WS_MESSAGE_BYTES_MAX));
                events.push(WsEvent::Open);
                rest
            }
            State::Open(_) => bytes.to_vec(),
            State::Closed => return Ok(events),
        };
        let State::Open(dec) = &mut self.state else {
            return Ok(events);
        };
        let mut got = Vec::new();
        let r = dec.decode(&frames, |e| got.push(e));
        for e in got {
            match e {
                ClientEvent::Text(t) => {
                    events.push(WsEvent::Text(String::from_utf8_lossy(&t).into_owned()))
                }
                ClientEvent::Ping(p) => {
                    let mask = self.mask();
                    encode_pong_masked(&p, mask, &mut self.outbound);
                }
                ClientEvent::Close(code) => {
                    // Answer the close (RFC 6455 §5.5.1); the driver writes it out.
                    let mask = self.mask();
                    encode_close_masked(CLOSE_NORMAL, mask, &mut self.outbound);
                    self.state = State::Closed;
                    events.push(WsEvent::Closed(code));
                    return Ok(events);
                }
                ClientEvent::Binary(_) | ClientEvent::Pong => {}
            }
        }
        if let Err(e) = r {
            self.state = State::Closed;
            return Err(WsError::Frame(e));
        }
        Ok(events)
    }
}

/// Standard base64 of a 16-byte nonce (the `sec-websocket-key`).
fn base64_16(b: &[u8; 16]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(24);
    for c in b.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &x)| n | (x as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::ws::codec::{encode_close, encode_ping, encode_text, Decoder, WsEvent as SrvEvent};

    fn accept_for(req: &str) -> String {
        let key = req
            .lines()
            .find_map(|l| l.strip_prefix("sec-websocket-key: "))
            .unwrap();
        derive_accept_key(key.trim().as_bytes())
    }

    #[test]
    fn handshake_and_frames() {
        let url = Url::parse("ws://127.0.0.1:9/ws").unwrap();
        let mut c = WsClient::new(&url, "tok", 7);
        let req = String::from_utf8(c.take_outbound()).unwrap();
        assert!(req.starts_with("GET /ws?token=tok HTTP/1.1\r\n"), "{req}");
        let accept = accept_for(&req);
        // Response head plus one server text frame "hi" in the same read.
        let mut bytes = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        encode_text(b"hi", &mut bytes);
        let (a, b) = bytes.split_at(20);
        assert!(c.feed(a).unwrap().is_empty());
        assert_eq!(
            c.feed(b).unwrap(),
            vec![WsEvent::Open, WsEvent::Text("hi".into())]
        );
        c.send_text("yo").unwrap();
        // ping → pong; our frames are masked and decode on the server side.
        let mut ping = Vec::new();
        encode_ping(b"p", &mut ping);
        assert!(c.feed(&ping).unwrap().is_empty());
        let out = c.take_outbound();
        let mut d = Decoder::new(1024);
        let mut got = Vec::new();
        d.decode(&out, |e| got.push(e)).unwrap();
        assert_eq!(got, vec![SrvEvent::Text("yo".into()), SrvEvent::Pong]);
    }

    #[test]
    fn close_code_is_reported() {
        let url = Url::parse("ws://h/ws").unwrap();
        let mut c = WsClient::new(&url, "t", 1);
        let accept = accept_for(&String::from_utf8(c.take_outbound()).unwrap());
        let mut bytes =
            format!("HTTP/1.1 101 Switching Protocols\r\nsec-websocket-accept: {accept}\r\n\r\n")
                .into_bytes();
        encode_close(4000, "replaced", &mut bytes);
        assert_eq!(
            c.feed(&bytes).unwrap(),
            vec![WsEvent::Open, WsEvent::Closed(4000)]
        );
        assert!(!c.take_outbound().is_empty(), "close answered");
    }

    #[test]
    fn refused_upgrade_and_key_encoding() {
        let url = Url::parse("ws://h/ws").unwrap();
        let mut c = WsClient::new(&url, "t", 2);
        assert_eq!(
            c.feed(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n"),
            Err(WsError::Refused(401))
        );
        // RFC 6455 §1.3's sample nonce.
        let nonce = *b"the sample nonce";
        assert_eq!(base64_16(&nonce), "dGhlIHNhbXBsZSBub25jZQ==");
    }
}
