//! The protocol side of the relay floors (`ring_relay`, `epoll_relay`): what
//! `bench ws-relay` needs from a signaling server, with as little work as possible.
//! The event loops around it differ; this part only parses input and queues output
//! (`Conn::out`, and the fd in `State::dirty`) for the loop to send.

use std::collections::HashMap;

use base64::Engine;
use sha1::{Digest, Sha1};

const TOKEN_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 17\r\n\r\n{\"token\":\"floor\"}";
const PEER_LIST: &[u8] =
    b"{\"type\":\"peer_list\",\"peer_id\":\"registry\",\"payload\":{\"peers\":[]}}";
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// A connection whose unparsed input grows past this is not one of ours: dropped input.
const INBUF_MAX: usize = 1 << 20;

#[derive(Default)]
pub struct Conn {
    pub open: bool,
    ws: bool,
    /// Received bytes not yet parsed (a partial HTTP head or WebSocket frame).
    inbuf: Vec<u8>,
    /// Bytes queued behind the send in flight.
    pub out: Vec<u8>,
    /// The bytes of the send in flight (not touched until it completes), and how many
    /// of them went out already: `ring_relay`'s (`epoll_relay` writes from `out`).
    #[allow(dead_code)]
    pub inflight: Vec<u8>,
    #[allow(dead_code)]
    pub off: usize,
    pub sending: bool,
    /// In the list of connections with bytes to send at the end of this loop turn.
    pub dirty: bool,
    /// The client closed; the fd is closed once the send in flight completes.
    pub closing: bool,
    id: Vec<u8>,
}

#[derive(Default)]
pub struct State {
    /// By fd.
    pub conns: Vec<Conn>,
    ids: HashMap<Vec<u8>, i32>,
    /// Connections with bytes in `out` to send at the end of this loop turn.
    pub dirty: Vec<i32>,
    scratch: Vec<u8>,
}

impl State {
    /// A new connection on `fd` (accepted, TCP_NODELAY set).
    pub fn accepted(&mut self, fd: i32) {
        if self.conns.len() <= fd as usize {
            self.conns.resize_with(fd as usize + 1, Conn::default);
        }
        self.conns[fd as usize] = Conn {
            open: true,
            ..Conn::default()
        };
    }

    /// Bytes received on `fd`: parsed, what is left of a partial unit kept.
    pub fn received(&mut self, fd: i32, data: &[u8]) {
        if self.conns[fd as usize].inbuf.is_empty() {
            let used = self.input(fd, data);
            self.conns[fd as usize]
                .inbuf
                .extend_from_slice(&data[used..]);
        } else {
            let mut b = std::mem::take(&mut self.conns[fd as usize].inbuf);
            b.extend_from_slice(data);
            let used = self.input(fd, &b);
            b.drain(..used);
            if b.len() > INBUF_MAX {
                b.clear();
            }
            self.conns[fd as usize].inbuf = b;
        }
    }

    fn queue(&mut self, fd: i32, bytes: &[u8]) {
        let c = &mut self.conns[fd as usize];
        if !c.open || c.closing {
            return;
        }
        c.out.extend_from_slice(bytes);
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(fd);
        }
    }

    /// Queues `payload` as one unmasked text frame to `fd`.
    fn queue_text(&mut self, fd: i32, payload: &[u8]) {
        let c = &mut self.conns[fd as usize];
        if !c.open || c.closing {
            return;
        }
        let n = payload.len();
        if n < 126 {
            c.out.extend_from_slice(&[0x81, n as u8]);
        } else if n < 65536 {
            c.out
                .extend_from_slice(&[0x81, 126, (n >> 8) as u8, n as u8]);
        } else {
            c.out.extend_from_slice(&[0x81, 127]);
            c.out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        self.queue(fd, payload);
    }

    /// Parses what `fd` sent; returns the bytes consumed (the rest is a partial unit).
    fn input(&mut self, fd: i32, data: &[u8]) -> usize {
        if self.conns[fd as usize].ws {
            self.frames(fd, data)
        } else {
            self.http(fd, data)
        }
    }

    fn http(&mut self, fd: i32, data: &[u8]) -> usize {
        let mut p = 0;
        while let Some(end) = memchr::memmem::find(&data[p..], b"\r\n\r\n") {
            let head = &data[p..p + end + 4];
            p += end + 4;
            if !head.starts_with(b"GET /ws") {
                self.queue(fd, TOKEN_RESPONSE);
                continue;
            }
            let key = head
                .split(|&b| b == b'\n')
                .find_map(|line| {
                    let colon = memchr::memchr(b':', line)?;
                    line[..colon]
                        .eq_ignore_ascii_case(b"sec-websocket-key")
                        .then(|| line[colon + 1..].trim_ascii())
                })
                .unwrap_or_default();
            let mut h = Sha1::new();
            h.update(key);
            h.update(WS_GUID);
            let accept = base64::engine::general_purpose::STANDARD.encode(h.finalize());
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
            );
            self.queue(fd, resp.as_bytes());
            self.conns[fd as usize].ws = true;
            return p + self.frames(fd, &data[p..]);
        }
        p
    }

    fn frames(&mut self, fd: i32, data: &[u8]) -> usize {
        let mut p = 0;
        loop {
            let d = &data[p..];
            if d.len() < 2 {
                return p;
            }
            let (op, masked, len7) = (d[0] & 0x0f, d[1] & 0x80 != 0, (d[1] & 0x7f) as usize);
            let (len, mut hdr) = match len7 {
                126 if d.len() >= 4 => (u16::from_be_bytes([d[2], d[3]]) as usize, 4),
                127 if d.len() >= 10 => (
                    u64::from_be_bytes(d[2..10].try_into().expect("8 bytes")) as usize,
                    10,
                ),
                126 | 127 => return p,
                n => (n, 2),
            };
            if masked {
                hdr += 4;
            }
            if d.len() < hdr + len {
                return p;
            }
            if op == 1 {
                let mask = if masked {
                    d[hdr - 4..hdr].try_into().expect("4 bytes")
                } else {
                    [0; 4]
                };
                self.text(fd, &d[hdr..hdr + len], mask);
            }
            p += hdr + len;
        }
    }

    fn text(&mut self, fd: i32, payload: &[u8], mask: [u8; 4]) {
        let mut s = std::mem::take(&mut self.scratch);
        s.clear();
        s.extend_from_slice(payload);
        let m = u32::from_ne_bytes(mask) as u64;
        let m = m | m << 32;
        let mut chunks = s.chunks_exact_mut(8);
        for c in &mut chunks {
            let w = u64::from_ne_bytes((&*c).try_into().expect("8 bytes")) ^ m;
            c.copy_from_slice(&w.to_ne_bytes());
        }
        for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        if let Some(at) = memchr::memmem::find(&s, b"\"target_id\":\"") {
            let from = at + 13;
            if let Some(n) = memchr::memchr(b'"', &s[from..]) {
                if let Some(&to) = self.ids.get(&s[from..from + n]) {
                    self.queue_text(to, &s);
                }
            }
        } else if memchr::memmem::find(&s, b"\"register\"").is_some() {
            if let Some(at) = memchr::memmem::find(&s, b"\"peer_id\":\"") {
                let from = at + 11;
                if let Some(n) = memchr::memchr(b'"', &s[from..]) {
                    let id = s[from..from + n].to_vec();
                    self.ids.insert(id.clone(), fd);
                    self.conns[fd as usize].id = id;
                    self.queue_text(fd, PEER_LIST);
                }
            }
        }
        self.scratch = s;
    }

    /// The client closed `fd`: forget its id, close once no send is in flight.
    pub fn closed(&mut self, fd: i32) {
        let c = &mut self.conns[fd as usize];
        if !c.id.is_empty() && self.ids.get(&c.id) == Some(&fd) {
            self.ids.remove(&c.id);
        }
        c.closing = true;
        c.out.clear();
        if !c.sending {
            self.close_now(fd);
        }
    }

    pub fn close_now(&mut self, fd: i32) {
        // Keep the entry (it may sit in the dirty list) but reset it.
        self.conns[fd as usize] = Conn::default();
        // SAFETY: closing our accepted fd; no operation of ours references it any more
        // (the loop calls this once its receive has ended and no send is in flight).
        unsafe { libc::close(fd) };
    }
}
