//! ChannelData messages (RFC 8656 §12.4) and the framing of STUN and ChannelData on a
//! byte stream (TURN over TCP or TLS, RFC 8656 §12.5 and §3.1).
//!
//! On a stream each message is delimited by its own header: a STUN message is 20
//! bytes plus its length field; a ChannelData message is 4 bytes plus its length,
//! padded to a multiple of 4. Over UDP a ChannelData datagram may or may not carry the
//! padding; both are accepted.

/// First channel number (RFC 8656 §12).
pub const CHANNEL_MIN: u16 = 0x4000;
/// Last channel number accepted. RFC 8656 §12 allows 0x4000–0x4FFF and reserves
/// 0x5000–0x7FFF; RFC 5766 allowed up to 0x7FFF and its clients use that range (coturn's
/// `turnutils_uclient` picks numbers anywhere in it). Accepting them is harmless: on
/// the wire they are ChannelData either way (first byte 0x40–0x7F, RFC 7983).
pub const CHANNEL_MAX: u16 = 0x7FFF;

/// Whether the first byte starts a ChannelData message (top bits `01`).
pub fn is_channel_data(b: &[u8]) -> bool {
    b.first().is_some_and(|b| b & 0xc0 == 0x40)
}

/// A ChannelData datagram: `(channel number, payload)`. `None` when it is shorter than
/// its length says (extra bytes, the padding, are ignored).
pub fn parse_channel_data(b: &[u8]) -> Option<(u16, &[u8])> {
    if b.len() < 4 || !is_channel_data(b) {
        return None;
    }
    let ch = u16::from_be_bytes([b[0], b[1]]);
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    let payload = b.get(4..4 + len)?;
    Some((ch, payload))
}

/// Appends a ChannelData message to `out`; `pad` (streams) pads it to a multiple of 4.
/// Payloads longer than 65,535 bytes are cut (a UDP datagram is never longer).
pub fn write_channel_data(out: &mut Vec<u8>, channel: u16, payload: &[u8], pad: bool) {
    let payload = &payload[..payload.len().min(u16::MAX as usize)];
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    if pad {
        let p = (4 - payload.len() % 4) % 4;
        out.extend_from_slice(&[0u8; 3][..p]);
    }
}

/// The size of the message at the start of `b` on a stream (header included, padding
/// included for ChannelData), once its header has arrived. `Err` for bytes that start
/// neither kind of message: the stream cannot be resynchronized and must be closed.
pub fn stream_message_len(b: &[u8]) -> Result<Option<usize>, FramingError> {
    let Some(&first) = b.first() else {
        return Ok(None);
    };
    match first & 0xc0 {
        0x00 => {
            if b.len() < 20 {
                return Ok(None);
            }
            if u32::from_be_bytes([b[4], b[5], b[6], b[7]]) != crate::stun::MAGIC {
                return Err(FramingError::NotTurn);
            }
            let len = u16::from_be_bytes([b[2], b[3]]) as usize;
            if len % 4 != 0 {
                return Err(FramingError::NotTurn);
            }
            Ok(Some(20 + len))
        }
        0x40 => {
            if b.len() < 4 {
                return Ok(None);
            }
            let len = u16::from_be_bytes([b[2], b[3]]) as usize;
            Ok(Some(4 + len.div_ceil(4) * 4))
        }
        // 0x80–0xFF: neither (an HTTP request's "GET " looks like ChannelData 0x4745 and
        // waits for its bytes: the driver's idle timeout ends such a connection).
        _ => Err(FramingError::NotTurn),
    }
}

/// The stream carried something that is not STUN or ChannelData.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FramingError {
    NotTurn,
}

impl std::fmt::Display for FramingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the stream carries something other than STUN or ChannelData")
    }
}

/// Splits a byte stream into messages. Bytes are appended with [`StreamFramer::push`]
/// and whole messages taken with [`StreamFramer::next`]. It holds at most one partial
/// message: at most 4 + 65,535 + 3 bytes (a ChannelData) or 20 + 65,532 (STUN), so
/// [`STREAM_BUFFER_BYTES_MAX`] bounds it.
#[derive(Default)]
pub struct StreamFramer {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out.
    start: usize,
}

/// The largest message a stream can carry, and so the most a framer holds of a partial
/// one (plus one read's worth the caller pushes at a time).
pub const STREAM_BUFFER_BYTES_MAX: usize = 4 + 65_535 + 3;

impl StreamFramer {
    pub fn new() -> StreamFramer {
        StreamFramer::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next whole message, if one has arrived. `Err`: the stream is not TURN.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<&[u8]>, FramingError> {
        let rest = &self.buf[self.start..];
        let Some(n) = stream_message_len(rest)? else {
            self.compact();
            return Ok(None);
        };
        if rest.len() < n {
            self.compact();
            return Ok(None);
        }
        let at = self.start;
        self.start += n;
        Ok(Some(&self.buf[at..at + n]))
    }

    /// Bytes held that do not yet form a message.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.is_empty() && self.buf.capacity() > 4096 {
            self.buf = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{method, Builder, Class};

    #[test]
    fn channel_data_roundtrip_and_bounds() {
        let mut out = Vec::new();
        write_channel_data(&mut out, 0x4001, b"hello", false);
        assert_eq!(out, b"\x40\x01\x00\x05hello");
        assert_eq!(parse_channel_data(&out), Some((0x4001, &b"hello"[..])));
        let mut padded = Vec::new();
        write_channel_data(&mut padded, 0x4001, b"hello", true);
        assert_eq!(padded.len(), 12);
        assert_eq!(parse_channel_data(&padded), Some((0x4001, &b"hello"[..])));
        assert_eq!(parse_channel_data(&out[..8]), None);
        assert_eq!(parse_channel_data(b"\x40\x01\x00"), None);
        assert_eq!(parse_channel_data(b"\x00\x01\x00\x00"), None);
    }

    #[test]
    fn stream_framing_in_pieces() {
        let mut stream = Vec::new();
        let mut w = Builder::new(&mut stream, method::BINDING, Class::Request, [1; 12]);
        w.attr(crate::stun::attr::SOFTWARE, b"abc").fingerprint();
        let stun_len = w.finish();
        assert_eq!(stun_len, 20 + 8 + 8);
        write_channel_data(&mut stream, 0x4000, b"xyz", true);
        write_channel_data(&mut stream, 0x4002, b"", true);
        // Fed one byte at a time, the messages come out whole, in order.
        let mut f = StreamFramer::new();
        let mut got = Vec::new();
        for b in &stream {
            f.push(std::slice::from_ref(b));
            while let Some(m) = f.next().unwrap() {
                got.push(m.to_vec());
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].len(), stun_len);
        assert_eq!(got[1], b"\x40\x00\x00\x03xyz\x00");
        assert_eq!(got[2], b"\x40\x02\x00\x00");
        assert_eq!(f.pending(), 0);
        // Garbage ends the stream.
        let mut g = StreamFramer::new();
        g.push(b"\xff\x00\x00\x00");
        assert_eq!(g.next(), Err(FramingError::NotTurn));
        let mut g = StreamFramer::new();
        g.push(&[0u8; 20]); // no magic cookie
        assert_eq!(g.next(), Err(FramingError::NotTurn));
    }
}
