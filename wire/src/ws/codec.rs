//! Incremental WebSocket frame codec (RFC 6455), server side.
//!
//! Frame headers are tungstenite's `FrameHeader`, read and written here in place
//! ([`parse_header`], [`push_header`]: the same fields, lengths and errors as its
//! `parse` and `format`, checked against them in the tests) rather than through its
//! `io::Read` cursor and `io::Write`: 8,653 → 8,545 user-space instructions per relayed
//! message (callgrind, docs/BENCHMARKS.md). Payloads stay in our buffers. The decoder
//! holds no memory while idle: it decodes straight from the caller's (pooled) read
//! buffer and keeps only the bytes of an incomplete frame, plus a message being
//! reassembled from fragments.

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Close codes used by the server.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Application range: this connection was replaced by a newer one of the same peer.
    pub const REPLACED: u16 = 4000;
    /// Application range: the peer's pairing was revoked.
    pub const REVOKED: u16 = 4001;
}

/// A complete message or control frame.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEvent {
    /// A text message, its UTF-8 checked here (RFC 6455 §8.1): consumers need not check
    /// it again.
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<(u16, String)>),
}

/// A protocol violation: close the connection with `code` and `reason`.
#[derive(Debug, PartialEq, Eq)]
pub struct WsError {
    pub code: u16,
    pub reason: &'static str,
}

fn err(code: u16, reason: &'static str) -> WsError {
    WsError { code, reason }
}

/// Control frames carry at most 125 bytes (RFC 6455 §5.5).
const CONTROL_PAYLOAD_MAX: u64 = 125;
/// Longest frame header: 2 bytes, an 8-byte extended length, a 4-byte mask.
const FRAME_HEADER_MAX: usize = 14;

/// The decoder of one connection.
#[derive(Debug)]
pub struct Decoder {
    /// Largest message (after reassembly) accepted; larger ones close with 1009.
    message_size_max: usize,
    /// Bytes of a frame not complete yet. Empty (no allocation) between frames.
    partial: Vec<u8>,
    /// A fragmented message in progress: (is_text, bytes so far).
    fragments: Option<(bool, Vec<u8>)>,
    /// Bytes of a fragmented text message already known to be UTF-8 (up to a character
    /// boundary): each fragment is checked as it arrives, so invalid text fails at once.
    text_checked: usize,
}

impl Decoder {
    pub fn new(message_size_max: usize) -> Self {
        Decoder {
            message_size_max,
            partial: Vec::new(),
            fragments: None,
            text_checked: 0,
        }
    }

    /// Heap bytes held between reads (0 when idle).
    pub fn held_bytes(&self) -> usize {
        self.partial.capacity() + self.fragments.as_ref().map_or(0, |(_, v)| v.capacity())
    }

    /// The most [`held_bytes`](Self::held_bytes) can be, whatever the input: one
    /// incomplete frame (a header and at most `message_size_max` of payload, with at most
    /// as much again of spare capacity: never more than twice what the peer sent) and
    /// one fragmented message in progress (at most `message_size_max`, with at most as
    /// much again of spare capacity from growing).
    pub fn held_bytes_max(&self) -> usize {
        2 * (FRAME_HEADER_MAX + self.message_size_max) + 2 * self.message_size_max
    }

    /// Decodes `input` (appended to any partial frame), calling `on_event` for each
    /// complete message or control frame. After an error the connection must close.
    pub fn decode(
        &mut self,
        input: &[u8],
        mut on_event: impl FnMut(WsEvent),
    ) -> Result<(), WsError> {
        if self.partial.is_empty() {
            let used = self.decode_frames(input, &mut on_event)?;
            if used < input.len() {
                self.partial.extend_from_slice(&input[used..]);
            }
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(input);
            let used = self.decode_frames(&buf, &mut on_event)?;
            buf.drain(..used);
            if !buf.is_empty() {
                // What is left is one incomplete frame. Room beyond twice its bytes (a
                // larger read it came with) is given back; up to that it is kept, so a
                // large frame arriving in many reads grows by doubling instead of being
                // copied whole at every read (quadratic in the frame's size).
                if buf.capacity() > 2 * buf.len() {
                    buf.shrink_to_fit();
                }
                self.partial = buf;
            }
        }
        Ok(())
    }

    /// Decodes whole frames from `buf`; returns the bytes consumed.
    fn decode_frames(
        &mut self,
        buf: &[u8],
        on_event: &mut impl FnMut(WsEvent),
    ) -> Result<usize, WsError> {
        let mut pos = 0;
        loop {
            let (header, len, head_len) = match parse_header(&buf[pos..]) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(pos),
                Err(ReservedOpcode) => {
                    return Err(err(close_code::PROTOCOL_ERROR, "malformed frame header"))
                }
            };
            let is_control = matches!(header.opcode, OpCode::Control(_));
            if is_control && (len > CONTROL_PAYLOAD_MAX || !header.is_final) {
                return Err(err(
                    close_code::PROTOCOL_ERROR,
                    "oversized or fragmented control frame",
                ));
            }
            let in_progress = self.fragments.as_ref().map_or(0, |(_, v)| v.len());
            if !is_control && len.saturating_add(in_progress as u64) > self.message_size_max as u64
            {
                return Err(err(close_code::MESSAGE_TOO_BIG, "message too big"));
            }
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(err(close_code::PROTOCOL_ERROR, "reserved bits set"));
            }
            let Some(mask) = header.mask else {
                return Err(err(
                    close_code::PROTOCOL_ERROR,
                    "client frames must be masked",
                ));
            };
            let len = len as usize;
            let start = pos + head_len;
            if buf.len() - start < len {
                return Ok(pos); // incomplete: wait for more bytes
            }
            let mut payload = buf[start..start + len].to_vec();
            unmask(&mut payload, mask);
            pos = start + len;
            self.on_frame(header.opcode, header.is_final, payload, on_event)?;
        }
    }

    fn on_frame(
        &mut self,
        opcode: OpCode,
        fin: bool,
        payload: Vec<u8>,
        on_event: &mut impl FnMut(WsEvent),
    ) -> Result<(), WsError> {
        match opcode {
            OpCode::Control(Control::Ping) => on_event(WsEvent::Ping(payload)),
            OpCode::Control(Control::Pong) => on_event(WsEvent::Pong),
            OpCode::Control(Control::Close) => on_event(WsEvent::Close(parse_close(&payload)?)),
            OpCode::Control(_) => {
                return Err(err(close_code::PROTOCOL_ERROR, "unknown control opcode"))
            }
            OpCode::Data(Data::Continue) => {
                let Some((is_text, mut acc)) = self.fragments.take() else {
                    return Err(err(
                        close_code::PROTOCOL_ERROR,
                        "continuation without a message",
                    ));
                };
                acc.extend_from_slice(&payload);
                if is_text {
                    self.text_checked = utf8_checked(&acc, self.text_checked)?;
                }
                if fin {
                    self.finish(is_text, acc, on_event)?;
                } else {
                    self.fragments = Some((is_text, acc));
                }
            }
            OpCode::Data(d @ (Data::Text | Data::Binary)) => {
                if self.fragments.is_some() {
                    return Err(err(
                        close_code::PROTOCOL_ERROR,
                        "new message inside a fragmented one",
                    ));
                }
                let is_text = d == Data::Text;
                if fin {
                    self.finish(is_text, payload, on_event)?;
                } else {
                    if is_text {
                        self.text_checked = utf8_checked(&payload, 0)?;
                    }
                    self.fragments = Some((is_text, payload));
                }
            }
            OpCode::Data(_) => return Err(err(close_code::PROTOCOL_ERROR, "unknown data opcode")),
        }
        Ok(())
    }

    fn finish(
        &mut self,
        is_text: bool,
        msg: Vec<u8>,
        on_event: &mut impl FnMut(WsEvent),
    ) -> Result<(), WsError> {
        if is_text {
            // Checked and kept as a `String` (no copy): the one UTF-8 pass a message gets.
            let text = String::from_utf8(msg)
                .map_err(|_| err(close_code::INVALID_PAYLOAD, "text message is not UTF-8"))?;
            on_event(WsEvent::Text(text));
        } else {
            on_event(WsEvent::Binary(msg));
        }
        Ok(())
    }
}

/// Checks `bytes[from..]` (`from` on a character boundary) as the start of UTF-8 text:
/// the new boundary up to which it is valid, or 1007 when it can no longer become valid
/// (an incomplete character at the end may still be completed by the next fragment).
fn utf8_checked(bytes: &[u8], from: usize) -> Result<usize, WsError> {
    match std::str::from_utf8(&bytes[from..]) {
        Ok(_) => Ok(bytes.len()),
        Err(e) if e.error_len().is_none() => Ok(from + e.valid_up_to()),
        Err(_) => Err(err(
            close_code::INVALID_PAYLOAD,
            "text message is not UTF-8",
        )),
    }
}

fn parse_close(p: &[u8]) -> Result<Option<(u16, String)>, WsError> {
    match p.len() {
        0 => Ok(None),
        1 => Err(err(close_code::PROTOCOL_ERROR, "close payload of one byte")),
        _ => {
            let code = u16::from_be_bytes([p[0], p[1]]);
            let reason = std::str::from_utf8(&p[2..])
                .map_err(|_| err(close_code::INVALID_PAYLOAD, "close reason is not UTF-8"))?;
            Ok(Some((code, reason.to_string())))
        }
    }
}

/// Whether an endpoint may send `code` in a close frame (RFC 6455 §7.4): the defined
/// codes, the registered range and the private range; never 1004–1006, 1015 or < 1000.
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// XORs `buf` with the repeated 4-byte `mask` (RFC 6455 §5.3), eight bytes at a time:
/// the byte loop was most of a relayed frame's decode (callgrind).
fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut words = buf.chunks_exact_mut(8);
    for w in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(w);
        w.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ wide).to_ne_bytes());
    }
    // The rest starts at a multiple of 8, so at the mask's first byte.
    for (i, x) in words.into_remainder().iter_mut().enumerate() {
        *x ^= mask[i & 3];
    }
}

fn encode(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    encode_frame(opcode, payload, None, out);
}

/// Appends one final frame: unmasked (server to client) or masked with `mask` (client
/// to server, see [`super::client`]).
pub(crate) fn encode_frame(
    opcode: OpCode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
    out: &mut Vec<u8>,
) {
    push_header(out, opcode, payload.len() as u64, mask);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(m) = mask {
        unmask(&mut out[start..], m); // XOR with the mask: masking and unmasking agree
    }
}

/// Appends a text frame.
pub fn encode_text(payload: &[u8], out: &mut Vec<u8>) {
    encode(OpCode::Data(Data::Text), payload, out);
}

/// Appends the header of a text frame whose payload of `len` bytes the caller appends
/// next (so that a payload built in place needs no second copy).
pub fn encode_text_header(len: usize, out: &mut Vec<u8>) {
    push_header(out, OpCode::Data(Data::Text), len as u64, None);
}

/// Whether `bytes` are exactly one final, unmasked text frame, as this server writes a
/// relayed message (`signaling::relay_text_frame`): what a node checks of a relay
/// another node sent through Redis before writing it to a client as it is (defence in
/// depth: Redis is trusted, but bytes on its channels are not written blind). The
/// payload's UTF-8 is the sending node's check.
pub fn is_one_text_frame(bytes: &[u8]) -> bool {
    match parse_header(bytes) {
        Ok(Some((h, len, head_len))) => {
            h.is_final
                && !(h.rsv1 || h.rsv2 || h.rsv3)
                && h.mask.is_none()
                && h.opcode == OpCode::Data(Data::Text)
                && u64::try_from(bytes.len() - head_len).is_ok_and(|n| n == len)
        }
        _ => false,
    }
}

/// A frame header naming a reserved opcode (3–7, 11–15): the one header tungstenite's
/// `FrameHeader::parse` refuses.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ReservedOpcode;

/// The frame header at the start of `buf`: its fields, the payload's length and the
/// header's own length; `Ok(None)` while `buf` holds only part of it. What
/// tungstenite's `FrameHeader::parse` answers for the same bytes
/// (`tests::headers_parse_as_tungstenite_parses_them`), without its cursor.
pub(crate) fn parse_header(
    buf: &[u8],
) -> Result<Option<(FrameHeader, u64, usize)>, ReservedOpcode> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    let extra = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let masked = second & 0x80 != 0;
    let head_len = 2 + extra + if masked { 4 } else { 0 };
    let Some(head) = buf.get(..head_len) else {
        return Ok(None);
    };
    let len = match extra {
        0 => u64::from(second & 0x7F),
        _ => head[2..2 + extra]
            .iter()
            .fold(0u64, |n, &b| n << 8 | u64::from(b)),
    };
    let mask = match head[2 + extra..] {
        [a, b, c, d] => Some([a, b, c, d]),
        _ => None,
    };
    let opcode = OpCode::from(first & 0x0F);
    if let OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) = opcode {
        return Err(ReservedOpcode);
    }
    let header = FrameHeader {
        is_final: first & 0x80 != 0,
        rsv1: first & 0x40 != 0,
        rsv2: first & 0x20 != 0,
        rsv3: first & 0x10 != 0,
        opcode,
        mask,
    };
    Ok(Some((header, len, head_len)))
}

/// Appends the header of a final frame of `opcode` with `len` bytes of payload, masked
/// with `mask` when given: what tungstenite's `FrameHeader::format` writes for it
/// (`tests::headers_are_written_as_tungstenite_writes_them`), without its `io::Write`.
pub(crate) fn push_header(out: &mut Vec<u8>, opcode: OpCode, len: u64, mask: Option<[u8; 4]>) {
    let first = 0x80 | u8::from(opcode);
    let masked = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.extend_from_slice(&[first, masked | len as u8]);
    } else if len <= 0xFFFF {
        out.extend_from_slice(&[first, masked | 126]);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[first, masked | 127]);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if let Some(m) = mask {
        out.extend_from_slice(&m);
    }
}

/// Appends a binary frame.
pub fn encode_binary(payload: &[u8], out: &mut Vec<u8>) {
    encode(OpCode::Data(Data::Binary), payload, out);
}

/// Appends a pong answering a ping.
pub fn encode_pong(payload: &[u8], out: &mut Vec<u8>) {
    encode(OpCode::Control(Control::Pong), payload, out);
}

/// Appends a server ping.
pub fn encode_ping(payload: &[u8], out: &mut Vec<u8>) {
    encode(OpCode::Control(Control::Ping), payload, out);
}

/// Appends a close frame; the reason is cut to fit the 125-byte control limit.
pub fn encode_close(code: u16, reason: &str, out: &mut Vec<u8>) {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut p = Vec::with_capacity(2 + cut);
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..cut]);
    encode(OpCode::Control(Control::Close), &p, out);
}

/// Size of a text frame's header for a payload of `len` bytes.
pub fn text_frame_len(len: usize) -> usize {
    len + if len < 126 {
        2
    } else if len <= 0xFFFF {
        4
    } else {
        10
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every first and second byte, with each extended length and mask, cut at every
    /// length: the same answer as tungstenite's parser (fields, payload length, bytes
    /// taken, incomplete, refused).
    #[test]
    fn headers_parse_as_tungstenite_parses_them() {
        let tails: [&[u8]; 3] = [
            &[
                0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x11, 0x22, 0x33, 0x44,
            ],
            &[0xff; 12],
            &[0x80, 0, 0, 0, 0, 0, 0xff, 0xfe, 0xa1, 0xb2, 0xc3, 0xd4],
        ];
        let mut checked = 0;
        for first in 0..=255u8 {
            for second in 0..=255u8 {
                for tail in tails {
                    let mut full = vec![first, second];
                    full.extend_from_slice(tail);
                    full.push(0x5a); // a payload byte after the header
                    for cut in 0..=full.len() {
                        let b = &full[..cut];
                        let mut cur = std::io::Cursor::new(b);
                        let theirs = FrameHeader::parse(&mut cur);
                        let ours = parse_header(b);
                        match (theirs, ours) {
                            (Ok(Some((h, len))), Ok(Some((g, l, n)))) => {
                                assert_eq!((h, len), (g, l), "{b:02x?}");
                                assert_eq!(cur.position() as usize, n, "{b:02x?}");
                            }
                            (Ok(None), Ok(None)) | (Err(_), Err(ReservedOpcode)) => {}
                            (t, o) => panic!("{b:02x?}: tungstenite {t:?}, ours {o:?}"),
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 2_000_000);
    }

    #[test]
    fn one_text_frame_is_what_a_relay_from_another_node_must_be() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536] {
            let mut f = Vec::new();
            encode_text(&vec![b'x'; len], &mut f);
            assert!(is_one_text_frame(&f), "{len}");
            assert!(!is_one_text_frame(&f[..f.len() - 1]), "{len}: short");
            let mut long = f.clone();
            long.push(b'x');
            assert!(!is_one_text_frame(&long), "{len}: trailing bytes");
        }
        let mut f = Vec::new();
        encode_binary(b"x", &mut f);
        assert!(!is_one_text_frame(&f), "binary");
        let mut f = Vec::new();
        encode_frame(OpCode::Data(Data::Text), b"x", Some([1, 2, 3, 4]), &mut f);
        assert!(!is_one_text_frame(&f), "masked");
        assert!(!is_one_text_frame(&[0x01, 0x01, b'x']), "not final");
        assert!(!is_one_text_frame(&[0xc1, 0x01, b'x']), "rsv1");
        assert!(!is_one_text_frame(&[0x83, 0x01, b'x']), "reserved opcode");
        assert!(!is_one_text_frame(b""));
        assert!(!is_one_text_frame(b"garbage!"));
    }

    #[test]
    fn headers_are_written_as_tungstenite_writes_them() {
        let opcodes = [
            OpCode::Data(Data::Text),
            OpCode::Data(Data::Binary),
            OpCode::Data(Data::Continue),
            OpCode::Control(Control::Close),
            OpCode::Control(Control::Ping),
            OpCode::Control(Control::Pong),
        ];
        let lens = [
            0u64,
            1,
            125,
            126,
            127,
            255,
            256,
            0xFFFF,
            0x1_0000,
            0x1_0001,
            1 << 32,
            u64::MAX,
        ];
        for opcode in opcodes {
            for len in lens {
                for mask in [None, Some([0xde, 0xad, 0xbe, 0xef])] {
                    let mut theirs = Vec::new();
                    let header = FrameHeader {
                        opcode,
                        mask,
                        ..FrameHeader::default()
                    };
                    header.format(len, &mut theirs).unwrap();
                    let mut ours = vec![0x42]; // appended, not overwritten
                    push_header(&mut ours, opcode, len, mask);
                    assert_eq!(&ours[1..], &theirs[..], "{opcode:?} {len} {mask:?}");
                }
            }
        }
    }

    /// A client frame, masked.
    fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xFFFF {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    fn decode_all(d: &mut Decoder, input: &[u8]) -> Result<Vec<WsEvent>, WsError> {
        let mut evs = Vec::new();
        d.decode(input, |e| evs.push(e))?;
        Ok(evs)
    }

    #[test]
    fn text_ping_close_and_byte_by_byte() {
        let mut wire = client_frame(1, true, br#"{"type":"register"}"#);
        wire.extend(client_frame(9, true, b"hi"));
        wire.extend(client_frame(8, true, &[0x03, 0xe8, b'b', b'y', b'e']));
        let mut d = Decoder::new(1024);
        let evs = decode_all(&mut d, &wire).unwrap();
        assert_eq!(
            evs,
            vec![
                WsEvent::Text(r#"{"type":"register"}"#.into()),
                WsEvent::Ping(b"hi".to_vec()),
                WsEvent::Close(Some((1000, "bye".into())))
            ]
        );
        assert_eq!(d.held_bytes(), 0, "idle decoder holds nothing");
        let mut d = Decoder::new(1024);
        let mut evs = Vec::new();
        for b in &wire {
            d.decode(&[*b], |e| evs.push(e)).unwrap();
        }
        assert_eq!(evs.len(), 3);
        assert_eq!(
            d.partial.capacity(),
            0,
            "partial buffer released after a frame completes"
        );
    }

    #[test]
    fn fragments_reassemble_and_limits_hold() {
        let mut wire = client_frame(1, false, b"hel");
        wire.extend(client_frame(9, true, b"")); // a ping may interleave
        wire.extend(client_frame(0, true, b"lo"));
        let mut d = Decoder::new(5);
        let evs = decode_all(&mut d, &wire).unwrap();
        assert_eq!(
            evs,
            vec![WsEvent::Ping(vec![]), WsEvent::Text("hello".into())]
        );
        // Over the limit: a single frame, and across fragments.
        let mut d = Decoder::new(5);
        assert_eq!(
            decode_all(&mut d, &client_frame(1, true, b"123456"))
                .unwrap_err()
                .code,
            1009
        );
        let mut d = Decoder::new(5);
        let mut wire = client_frame(1, false, b"123");
        wire.extend(client_frame(0, true, b"456"));
        assert_eq!(decode_all(&mut d, &wire).unwrap_err().code, 1009);
        // The limit is checked from the header, before the payload arrives.
        let mut d = Decoder::new(1000);
        let big = client_frame(1, true, &vec![b'a'; 70_000]);
        assert_eq!(decode_all(&mut d, &big[..14]).unwrap_err().code, 1009);
    }

    #[test]
    fn messages_before_a_close_in_one_read_come_first() {
        // The session echoes (or answers) these before it writes its close frame: the
        // decoder must hand them over in order, the close last.
        let mut wire = client_frame(1, true, b"hi");
        wire.extend(client_frame(2, true, &[0, 1, 2]));
        wire.extend(client_frame(9, true, b"p"));
        wire.extend(client_frame(8, true, &[0x03, 0xe8]));
        wire.extend(client_frame(1, true, b"after the close"));
        let evs = decode_all(&mut Decoder::new(100), &wire).unwrap();
        assert_eq!(
            &evs[..4],
            &[
                WsEvent::Text("hi".into()),
                WsEvent::Binary(vec![0, 1, 2]),
                WsEvent::Ping(b"p".to_vec()),
                WsEvent::Close(Some((1000, String::new()))),
            ]
        );
    }

    #[test]
    fn a_large_frame_in_small_reads_holds_at_most_twice_what_arrived() {
        let payload = vec![b'a'; 1 << 20];
        let wire = client_frame(1, true, &payload);
        let mut d = Decoder::new(2 << 20);
        let mut evs = Vec::new();
        for (i, chunk) in wire.chunks(1000).enumerate() {
            d.decode(chunk, |e| evs.push(e)).unwrap();
            let fed = ((i + 1) * 1000).min(wire.len());
            if fed < wire.len() {
                assert!(d.held_bytes() <= 2 * fed, "{} > 2 x {fed}", d.held_bytes());
            }
        }
        assert_eq!(
            evs,
            vec![WsEvent::Text(String::from_utf8(payload).unwrap())]
        );
        assert_eq!(d.held_bytes(), 0);
    }

    #[test]
    fn invalid_utf8_in_a_fragment_fails_at_once() {
        // Autobahn 6.4.1: the second fragment is invalid; the third never needs to come.
        let mut d = Decoder::new(1000);
        let first = client_frame(1, false, "κόσμε".as_bytes());
        assert_eq!(decode_all(&mut d, &first).unwrap(), vec![]);
        let bad = client_frame(0, false, &[0xf4, 0x90, 0x80, 0x80]);
        assert_eq!(decode_all(&mut d, &bad).unwrap_err().code, 1007);
        // A character split across fragments is fine.
        let mut d = Decoder::new(1000);
        let mut wire = client_frame(1, false, &[b'a', 0xce]);
        wire.extend(client_frame(0, false, &[0xba]));
        wire.extend(client_frame(0, true, b"b"));
        assert_eq!(
            decode_all(&mut d, &wire).unwrap(),
            vec![WsEvent::Text("aκb".into())]
        );
    }

    #[test]
    fn protocol_errors() {
        let mut unmasked = client_frame(1, true, b"x");
        unmasked[1] &= 0x7f;
        unmasked.truncate(2);
        unmasked.push(b'x');
        assert_eq!(
            decode_all(&mut Decoder::new(100), &unmasked)
                .unwrap_err()
                .code,
            1002
        );
        assert_eq!(
            decode_all(&mut Decoder::new(100), &client_frame(0, true, b"x"))
                .unwrap_err()
                .code,
            1002
        );
        assert_eq!(
            decode_all(
                &mut Decoder::new(100),
                &client_frame(1, true, &[0xff, 0xfe])
            )
            .unwrap_err()
            .code,
            1007
        );
        assert_eq!(
            decode_all(&mut Decoder::new(100), &client_frame(9, false, b""))
                .unwrap_err()
                .code,
            1002
        );
        assert_eq!(
            decode_all(&mut Decoder::new(100), &client_frame(3, true, b""))
                .unwrap_err()
                .code,
            1002
        );
        let evs = decode_all(&mut Decoder::new(100), &client_frame(2, true, b"\x00\x01")).unwrap();
        assert_eq!(evs, vec![WsEvent::Binary(vec![0, 1])]);
    }

    #[test]
    fn close_codes() {
        for ok in [1000, 1001, 1003, 1007, 1011, 3000, 4000, 4999] {
            assert!(valid_close_code(ok), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 2000, 5000] {
            assert!(!valid_close_code(bad), "{bad}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut d = Decoder::new(4096);
            let mut buf = Vec::new();
            for _ in 0..(x % 64) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(x as u8);
            }
            let _ = d.decode(&buf, |_| {});
            assert!(d.held_bytes() <= d.held_bytes_max());
        }
        // Masked frames with random lengths and payloads, fed in random pieces to one
        // decoder until it refuses them: what it holds stays within its limit.
        for _ in 0..500 {
            let mut d = Decoder::new(4096);
            let mut stream = Vec::new();
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let len = (x % 6000) as usize;
                let opcode = [0x1, 0x2, 0x0, 0x9][(x >> 20) as usize % 4];
                let fin = if (x >> 30) % 2 == 0 { 0x80 } else { 0 };
                stream.push(fin | opcode);
                if len < 126 {
                    stream.push(0x80 | len as u8);
                } else {
                    stream.push(0x80 | 126);
                    stream.extend_from_slice(&(len as u16).to_be_bytes());
                }
                stream.extend_from_slice(&(x as u32).to_be_bytes());
                stream.extend((0..len).map(|i| (x >> (i % 56)) as u8));
            }
            let mut rest = &stream[..];
            while !rest.is_empty() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let n = ((x % 20_000) as usize + 1).min(rest.len());
                let ok = d.decode(&rest[..n], |_| {}).is_ok();
                assert!(
                    d.held_bytes() <= d.held_bytes_max(),
                    "{} > {}",
                    d.held_bytes(),
                    d.held_bytes_max()
                );
                if !ok {
                    break;
                }
                rest = &rest[n..];
            }
        }
    }

    #[test]
    fn unmasking_agrees_with_the_byte_loop_at_every_length() {
        let mask = [0x12, 0x9a, 0xff, 0x01];
        for len in 0..70 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 5) as u8).collect();
            let mut fast = data.clone();
            unmask(&mut fast, mask);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(fast, slow, "length {len}");
        }
    }

    #[test]
    fn server_frames_are_unmasked_and_sized() {
        let mut out = Vec::new();
        encode_text(b"abc", &mut out);
        assert_eq!(out, vec![0x81, 3, b'a', b'b', b'c']);
        assert_eq!(text_frame_len(3), 5);
        let mut out = Vec::new();
        encode_text(&vec![b'x'; 300], &mut out);
        assert_eq!(&out[..4], &[0x81, 126, 1, 44]);
        assert_eq!(out.len(), text_frame_len(300));
        let mut out = Vec::new();
        encode_close(1001, "going away", &mut out);
        assert_eq!(&out[..4], &[0x88, 12, 0x03, 0xe9]);
        let mut out = Vec::new();
        encode_close(1008, &"é".repeat(100), &mut out);
        assert!(out.len() <= 127);
    }
}
