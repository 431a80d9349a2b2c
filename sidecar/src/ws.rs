//! Sans-IO WebSocket client for the signaling connection: our own upgrade request and
//! response check, then tungstenite's [`WebSocketContext`] over in-memory buffers. The
//! driver feeds bytes read from TCP into [`WsClient::feed`] and writes out whatever
//! [`WsClient::take_outbound`] returns.

use std::io::{self, Read, Write};

use tungstenite::handshake::client::generate_key;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::Message;

use super::url::Url;

/// Largest upgrade response head we accept. A 101 with a few headers is a few hundred
/// bytes; past this we fail the connection attempt (and back off).
pub const WS_HANDSHAKE_BYTES_MAX: usize = 16 * 1024;

/// Largest signaling message we accept. An SDP offer is a few KiB and a peer list of
/// thousands of ids well under a MiB; a larger frame closes the connection (tungstenite
/// refuses it) and we reconnect.
pub const WS_MESSAGE_BYTES_MAX: usize = 1024 * 1024;

/// What the connection produced.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEvent {
    /// The upgrade succeeded.
    Open,
    Text(String),
    /// The server closed the connection (close frame) or the stream is unusable.
    Closed,
}

/// Bytes between the codec and the socket.
#[derive(Default)]
struct Mem {
    inbound: Vec<u8>,
    read_pos: usize,
    outbound: Vec<u8>,
}

impl Read for Mem {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = &self.inbound[self.read_pos..];
        if avail.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.read_pos += n;
        if self.read_pos == self.inbound.len() {
            self.inbound.clear();
            self.read_pos = 0;
        }
        Ok(n)
    }
}

impl Write for Mem {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbound.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum State {
    Handshaking { accept: String, head: Vec<u8> },
    Open(Box<WebSocketContext>),
    Closed,
}

pub struct WsClient {
    state: State,
    io: Mem,
}

impl WsClient {
    /// Starts a connection to `url` (its path gets `?token=`); the upgrade request is
    /// already in the outbound buffer.
    pub fn new(url: &Url, token: &str) -> WsClient {
        let key = generate_key();
        let sep = if url.path.contains('?') { '&' } else { '?' };
        let request = format!(
            "GET {}{sep}token={token} HTTP/1.1\r\nhost: {}\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: {key}\r\n\r\n",
            url.path,
            url.host_header()
        );
        WsClient {
            state: State::Handshaking {
                accept: derive_accept_key(key.as_bytes()),
                head: Vec::new(),
            },
            io: Mem {
                outbound: request.into_bytes(),
                ..Mem::default()
            },
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open(_))
    }

    /// Bytes to write to the socket.
    pub fn take_outbound(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.io.outbound)
    }

    /// Queues a text frame. Errors if the connection is not open.
    pub fn send_text(&mut self, text: String) -> Result<(), String> {
        match &mut self.state {
            State::Open(ctx) => ctx
                .write(&mut self.io, Message::text(text))
                .and_then(|_| ctx.flush(&mut self.io))
                .map_err(|e| e.to_string()),
            _ => Err("websocket not open".into()),
        }
    }

    /// Bytes read from the socket; returns what they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<WsEvent>, String> {
        let mut events = Vec::new();
        if let State::Handshaking { accept, head } = &mut self.state {
            if head.len() + bytes.len() > WS_HANDSHAKE_BYTES_MAX + WS_MESSAGE_BYTES_MAX {
                return Err("upgrade response too large".into());
            }
            head.extend_from_slice(bytes);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            let n = match resp.parse(head) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) if head.len() > WS_HANDSHAKE_BYTES_MAX => {
                    return Err("upgrade response head too large".into())
                }
                Ok(httparse::Status::Partial) => return Ok(events),
                Err(e) => return Err(format!("bad upgrade response: {e}")),
            };
            if resp.code != Some(101) {
                return Err(format!("upgrade refused: HTTP {}", resp.code.unwrap_or(0)));
            }
            let ok = resp.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("sec-websocket-accept") && h.value == accept.as_bytes()
            });
            if !ok {
                return Err("upgrade response has a wrong sec-websocket-accept".into());
            }
            let rest = head[n..].to_vec();
            let config = WebSocketConfig::default()
                .max_message_size(Some(WS_MESSAGE_BYTES_MAX))
                .max_frame_size(Some(WS_MESSAGE_BYTES_MAX));
            self.state = State::Open(Box::new(WebSocketContext::from_partially_read(
                rest,
                Role::Client,
                Some(config),
            )));
            events.push(WsEvent::Open);
        } else {
            self.io.inbound.extend_from_slice(bytes);
        }
        let State::Open(ctx) = &mut self.state else {
            return Ok(events);
        };
        loop {
            match ctx.read(&mut self.io) {
                Ok(Message::Text(t)) => events.push(WsEvent::Text(t.as_str().to_owned())),
                Ok(Message::Close(_)) => {
                    // tungstenite queued the close reply; the driver writes it out.
                    let _ = ctx.flush(&mut self.io);
                    self.state = State::Closed;
                    events.push(WsEvent::Closed);
                    break;
                }
                Ok(_) => {} // binary frames are ignored; pings are answered by tungstenite
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    let _ = ctx.flush(&mut self.io);
                    break;
                }
                Err(e) => {
                    self.state = State::Closed;
                    return Err(e.to_string());
                }
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_and_frames() {
        let url = Url::parse("ws://127.0.0.1:9/ws").unwrap();
        let mut c = WsClient::new(&url, "tok");
        let req = String::from_utf8(c.take_outbound()).unwrap();
        assert!(req.starts_with("GET /ws?token=tok HTTP/1.1\r\n"), "{req}");
        let key = req
            .lines()
            .find_map(|l| l.strip_prefix("sec-websocket-key: "))
            .unwrap();
        let accept = derive_accept_key(key.trim().as_bytes());
        // Response head plus one unmasked server text frame "hi" in the same read.
        let mut bytes = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        bytes.extend_from_slice(&[0x81, 2, b'h', b'i']);
        let (a, b) = bytes.split_at(20);
        assert!(c.feed(a).unwrap().is_empty());
        assert_eq!(
            c.feed(b).unwrap(),
            vec![WsEvent::Open, WsEvent::Text("hi".into())]
        );
        c.send_text("yo".into()).unwrap();
        let out = c.take_outbound();
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1], 0x80 | 2); // masked, as a client must
                                      // ping → pong queued
        assert!(c.feed(&[0x89, 0]).unwrap().is_empty());
        assert_eq!(c.take_outbound()[0], 0x8A);
    }

    #[test]
    fn refused_upgrade() {
        let url = Url::parse("ws://h/ws").unwrap();
        let mut c = WsClient::new(&url, "t");
        assert!(c.feed(b"HTTP/1.1 401 Unauthorized\r\n\r\n").is_err());
    }
}
