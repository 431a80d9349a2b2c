//! WebSocket frames, client side (RFC 6455): frames a client sends are masked, frames it
//! receives are not. Sans-IO like [`super::codec`]: the caller supplies the mask (so
//! tests are deterministic) and feeds received bytes in.

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// A complete frame received from a server.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientEvent {
    Text(Vec<u8>),
    Binary(usize),
    Ping(Vec<u8>),
    Pong,
    /// A close frame and its code (1005 when it carried none).
    Close(u16),
}

fn encode_masked(opcode: OpCode, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    super::codec::encode_frame(opcode, payload, Some(mask), out);
}

/// Appends a masked text frame.
pub fn encode_text_masked(payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    encode_masked(OpCode::Data(Data::Text), payload, mask, out);
}

/// Appends a masked pong answering a ping.
pub fn encode_pong_masked(payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    encode_masked(OpCode::Control(Control::Pong), payload, mask, out);
}

/// Appends a masked close frame with `code`.
pub fn encode_close_masked(code: u16, mask: [u8; 4], out: &mut Vec<u8>) {
    encode_masked(
        OpCode::Control(Control::Close),
        &code.to_be_bytes(),
        mask,
        out,
    );
}

/// Decoder of the frames a server sends (unmasked, not fragmented: the signaling
/// server never fragments; a fragmented or masked frame is an error here).
#[derive(Debug)]
pub struct ClientDecoder {
    /// Largest frame accepted; a larger one is an error (the buffer would grow without
    /// bound otherwise).
    frame_bytes_max: usize,
    /// Bytes of a frame not complete yet.
    partial: Vec<u8>,
}

impl ClientDecoder {
    pub fn new(frame_bytes_max: usize) -> Self {
        ClientDecoder {
            frame_bytes_max,
            partial: Vec::new(),
        }
    }

    /// Decodes `input` (after any partial frame), calling `on_event` per frame.
    pub fn decode(
        &mut self,
        input: &[u8],
        mut on_event: impl FnMut(ClientEvent),
    ) -> Result<(), &'static str> {
        if self.partial.is_empty() {
            let used = self.frames(input, &mut on_event)?;
            self.partial.extend_from_slice(&input[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(input);
            let used = self.frames(&buf, &mut on_event)?;
            buf.drain(..used);
            self.partial = buf;
            if self.partial.is_empty() {
                self.partial = Vec::new(); // give the memory back while idle
            }
        }
        Ok(())
    }

    fn frames(
        &self,
        buf: &[u8],
        on_event: &mut impl FnMut(ClientEvent),
    ) -> Result<usize, &'static str> {
        let mut pos = 0;
        loop {
            let (header, len, head_len) = match super::codec::parse_header(&buf[pos..]) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(pos),
                Err(_) => return Err("malformed frame header"),
            };
            if len > self.frame_bytes_max as u64 {
                return Err("frame larger than the client's limit");
            }
            if header.mask.is_some() {
                return Err("server frames must not be masked");
            }
            if !header.is_final {
                return Err("fragmented frames are not supported");
            }
            let start = pos + head_len;
            let len = len as usize;
            if buf.len() - start < len {
                return Ok(pos);
            }
            let payload = &buf[start..start + len];
            pos = start + len;
            match header.opcode {
                OpCode::Data(Data::Text) => on_event(ClientEvent::Text(payload.to_vec())),
                OpCode::Data(Data::Binary) => on_event(ClientEvent::Binary(len)),
                OpCode::Control(Control::Ping) => on_event(ClientEvent::Ping(payload.to_vec())),
                OpCode::Control(Control::Pong) => on_event(ClientEvent::Pong),
                OpCode::Control(Control::Close) => {
                    let code = if payload.len() >= 2 {
                        u16::from_be_bytes([payload[0], payload[1]])
                    } else {
                        1005
                    };
                    on_event(ClientEvent::Close(code))
                }
                _ => return Err("unexpected opcode"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::codec::{encode_close, encode_ping, encode_text, Decoder, WsEvent};

    #[test]
    fn masked_frames_decode_on_the_server_side() {
        let mut out = Vec::new();
        encode_text_masked(b"hello", [1, 2, 3, 4], &mut out);
        encode_pong_masked(b"p", [9, 9, 9, 9], &mut out);
        encode_close_masked(1000, [5, 6, 7, 8], &mut out);
        let mut d = Decoder::new(1024);
        let mut got = Vec::new();
        d.decode(&out, |e| got.push(e)).unwrap();
        assert_eq!(
            got,
            vec![
                WsEvent::Text("hello".into()),
                WsEvent::Pong,
                WsEvent::Close(Some((1000, String::new())))
            ]
        );
    }

    #[test]
    fn server_frames_decode_byte_by_byte() {
        let mut out = Vec::new();
        encode_text(b"{\"type\":\"peer_list\"}", &mut out);
        encode_ping(b"x", &mut out);
        encode_close(1001, "bye", &mut out);
        let mut d = ClientDecoder::new(1024);
        let mut got = Vec::new();
        for b in &out {
            d.decode(std::slice::from_ref(b), |e| got.push(e)).unwrap();
        }
        assert_eq!(
            got,
            vec![
                ClientEvent::Text(b"{\"type\":\"peer_list\"}".to_vec()),
                ClientEvent::Ping(b"x".to_vec()),
                ClientEvent::Close(1001)
            ]
        );
    }

    #[test]
    fn masked_or_oversized_server_frames_are_errors() {
        let mut out = Vec::new();
        encode_text_masked(b"hi", [1, 1, 1, 1], &mut out);
        assert!(ClientDecoder::new(1024).decode(&out, |_| {}).is_err());
        let mut big = Vec::new();
        encode_text(&[b'a'; 100], &mut big);
        assert!(ClientDecoder::new(10).decode(&big, |_| {}).is_err());
    }
}
