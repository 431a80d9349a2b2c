//! The STUN message codec (RFC 8489, with the TURN methods and attributes of RFC 8656):
//! a bounded, zero-copy parser ([`parse`] → [`Msg`]), an appending encoder
//! ([`Builder`]) with MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, XOR
//! addresses, and an owned [`Message`] for clients that prefer a value.
//!
//! Bounds: a message is at most 20 + 65,535 bytes by its length field; it holds at most
//! [`ATTRIBUTES_MAX`] attributes; every attribute must lie inside the message; nothing
//! but MESSAGE-INTEGRITY-SHA256 and FINGERPRINT may follow MESSAGE-INTEGRITY, nothing
//! but FINGERPRINT may follow MESSAGE-INTEGRITY-SHA256, and FINGERPRINT must be last and
//! match. Anything else is a [`ParseError`]: the caller drops the message.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};

/// The STUN magic cookie.
pub const MAGIC: u32 = 0x2112_A442;
/// Bytes of the STUN header.
pub const HEADER_LEN: usize = 20;
/// XORed into the CRC-32 of a FINGERPRINT.
pub const FINGERPRINT_XOR: u32 = 0x5354_554e;
/// Attributes one message may carry. A TURN request needs about a dozen (USERNAME,
/// REALM, NONCE, both integrities, FINGERPRINT, SOFTWARE, LIFETIME, transport, a few
/// XOR-PEER-ADDRESSes); 32 leaves room for any honest client, and keeps the parsed
/// index ([`Msg`]) a fixed 256 bytes on the stack. More: [`ParseError::TooManyAttributes`].
/// MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT (one of each) do not count:
/// they are kept apart from the index, and each can appear once.
pub const ATTRIBUTES_MAX: usize = 32;

/// STUN and TURN methods.
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// Attribute types (RFC 8489 §18.3, RFC 8656 §18).
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub const USERHASH: u16 = 0x001E;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    pub const ALTERNATE_DOMAIN: u16 = 0x8003;
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
    pub const ICMP: u16 = 0x8004;
    pub const SOFTWARE: u16 = 0x8022;
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const ICE_CONTROLLED: u16 = 0x8029;
    pub const ICE_CONTROLLING: u16 = 0x802A;
}

/// The class of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        }
    }
}

/// The 14-bit message type from method and class (RFC 8489 §5).
pub fn message_type(method: u16, class: Class) -> u16 {
    let c = class.bits();
    (method & 0x000f)
        | ((method & 0x0070) << 1)
        | ((method & 0x0f80) << 2)
        | ((c & 1) << 4)
        | ((c & 2) << 7)
}

/// Method and class of a message type.
pub fn split_type(t: u16) -> (u16, Class) {
    let method = (t & 0x000f) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0f80);
    let class = match ((t >> 4) & 1) | ((t >> 7) & 2) {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

/// A transaction id.
pub type TransactionId = [u8; 12];

/// Whether `b` looks like a STUN message (top two bits zero, magic cookie): how a
/// datagram is told from ChannelData and from other protocols sharing a port.
pub fn is_stun(b: &[u8]) -> bool {
    b.len() >= HEADER_LEN
        && b[0] & 0xc0 == 0
        && u32::from_be_bytes([b[4], b[5], b[6], b[7]]) == MAGIC
}

/// Why a message was refused by [`parse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than a header, top bits set, or no magic cookie.
    NotStun,
    /// The length field is not a multiple of 4 or disagrees with the bytes.
    Length,
    /// An attribute runs past the end of the message.
    Truncated,
    /// More than [`ATTRIBUTES_MAX`] attributes.
    TooManyAttributes,
    /// An attribute where none may be (after FINGERPRINT), or an integrity or
    /// fingerprint attribute of the wrong size.
    Misplaced,
    /// FINGERPRINT does not match.
    Fingerprint,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ParseError::NotStun => "not a STUN message",
            ParseError::Length => "bad STUN length",
            ParseError::Truncated => "attribute runs past the message",
            ParseError::TooManyAttributes => "too many attributes",
            ParseError::Misplaced => "misplaced or malformed integrity/fingerprint attribute",
            ParseError::Fingerprint => "FINGERPRINT mismatch",
        })
    }
}

impl std::error::Error for ParseError {}

/// One attribute in a parsed message: type, value offset and value length (a message
/// is up to 20 + 65,535 bytes, so an offset needs more than 16 bits).
#[derive(Clone, Copy, Debug, Default)]
struct AttrRef {
    ty: u16,
    len: u16,
    at: u32,
}

/// A parsed message: a view of the bytes plus an index of its attributes. Attributes
/// after MESSAGE-INTEGRITY (other than MESSAGE-INTEGRITY-SHA256 and FINGERPRINT) are
/// ignored, as RFC 8489 §14.5 requires; they are not in the index.
#[derive(Clone, Debug)]
pub struct Msg<'a> {
    raw: &'a [u8],
    pub method: u16,
    pub class: Class,
    pub tid: TransactionId,
    attrs: [AttrRef; ATTRIBUTES_MAX],
    count: usize,
    /// Offset of the MESSAGE-INTEGRITY attribute header.
    integrity: Option<usize>,
    /// Offset of the MESSAGE-INTEGRITY-SHA256 attribute header.
    integrity_sha256: Option<usize>,
    /// A FINGERPRINT was present (and matched).
    pub fingerprint: bool,
}

/// Parses and validates one STUN message (the whole of `b`; see the module's bounds).
pub fn parse(b: &[u8]) -> Result<Msg<'_>, ParseError> {
    if !is_stun(b) {
        return Err(ParseError::NotStun);
    }
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    if len % 4 != 0 || b.len() != HEADER_LEN + len {
        return Err(ParseError::Length);
    }
    let (method, class) = split_type(u16::from_be_bytes([b[0], b[1]]));
    let mut tid = [0u8; 12];
    tid.copy_from_slice(&b[8..20]);
    let mut m = Msg {
        raw: b,
        method,
        class,
        tid,
        attrs: [AttrRef::default(); ATTRIBUTES_MAX],
        count: 0,
        integrity: None,
        integrity_sha256: None,
        fingerprint: false,
    };
    let mut i = HEADER_LEN;
    let mut seen = 0usize;
    while i < b.len() {
        if i + 4 > b.len() {
            return Err(ParseError::Truncated);
        }
        let ty = u16::from_be_bytes([b[i], b[i + 1]]);
        let l = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
        let end = i + 4 + l;
        if end > b.len() {
            return Err(ParseError::Truncated);
        }
        // The bound counts the attributes listed or skipped, not MESSAGE-INTEGRITY(-SHA256)
        // and FINGERPRINT (at most one of each is taken; a second is skipped, and
        // counted): a message of `ATTRIBUTES_MAX` attributes with its integrity and
        // fingerprint, as `Message::encode` writes it, parses (found by fuzzing).
        let special = match ty {
            attr::FINGERPRINT => true,
            attr::MESSAGE_INTEGRITY_SHA256 => m.integrity_sha256.is_none(),
            attr::MESSAGE_INTEGRITY => m.integrity.is_none() && m.integrity_sha256.is_none(),
            _ => false,
        };
        if !special {
            seen += 1;
            if seen > ATTRIBUTES_MAX {
                return Err(ParseError::TooManyAttributes);
            }
        }
        if m.fingerprint {
            // Nothing may follow FINGERPRINT.
            return Err(ParseError::Misplaced);
        }
        match ty {
            attr::FINGERPRINT => {
                if l != 4 || end.div_ceil(4) * 4 != b.len() {
                    return Err(ParseError::Misplaced);
                }
                if !fingerprint_matches(b, i) {
                    return Err(ParseError::Fingerprint);
                }
                m.fingerprint = true;
            }
            attr::MESSAGE_INTEGRITY_SHA256 if m.integrity_sha256.is_none() => {
                if !(16..=32).contains(&l) || l % 4 != 0 {
                    return Err(ParseError::Misplaced);
                }
                m.integrity_sha256 = Some(i);
            }
            attr::MESSAGE_INTEGRITY if m.integrity.is_none() && m.integrity_sha256.is_none() => {
                if l != 20 {
                    return Err(ParseError::Misplaced);
                }
                m.integrity = Some(i);
            }
            _ if m.integrity.is_some() || m.integrity_sha256.is_some() => {
                // Ignored: after an integrity attribute (RFC 8489 §14.5, §14.6).
            }
            _ => {
                m.attrs[m.count] = AttrRef {
                    ty,
                    len: l as u16,
                    at: (i + 4) as u32,
                };
                m.count += 1;
            }
        }
        i = i + 4 + l.div_ceil(4) * 4;
    }
    Ok(m)
}

impl<'a> Msg<'a> {
    /// The message's bytes.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The first attribute of type `ty` (integrity and fingerprint attributes excluded).
    pub fn get(&self, ty: u16) -> Option<&'a [u8]> {
        self.attrs[..self.count]
            .iter()
            .find(|a| a.ty == ty)
            .map(|a| self.value(a))
    }

    /// Every attribute of type `ty`, in order.
    pub fn get_all(&self, ty: u16) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.attrs[..self.count]
            .iter()
            .filter(move |a| a.ty == ty)
            .map(|a| self.value(a))
    }

    /// Types of the attributes (integrity and fingerprint excluded), in order.
    pub fn types(&self) -> impl Iterator<Item = u16> + '_ {
        self.attrs[..self.count].iter().map(|a| a.ty)
    }

    fn value(&self, a: &AttrRef) -> &'a [u8] {
        let raw: &'a [u8] = self.raw;
        &raw[a.at as usize..a.at as usize + a.len as usize]
    }

    /// Whether the message carries MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256.
    pub fn has_integrity(&self) -> bool {
        self.integrity.is_some() || self.integrity_sha256.is_some()
    }

    /// Whether it carries MESSAGE-INTEGRITY-SHA256.
    pub fn has_integrity_sha256(&self) -> bool {
        self.integrity_sha256.is_some()
    }

    /// Verifies the message's integrity with `key`: MESSAGE-INTEGRITY-SHA256 when
    /// present (RFC 8489 §14.6: it takes precedence), else MESSAGE-INTEGRITY. False
    /// when it carries neither.
    pub fn verify(&self, key: &[u8]) -> bool {
        if let Some(at) = self.integrity_sha256 {
            let l = u16::from_be_bytes([self.raw[at + 2], self.raw[at + 3]]) as usize;
            let want = &self.raw[at + 4..at + 4 + l];
            let mut mac = hmac_sha256(key);
            feed_with_len(&mut |d| mac.update(d), self.raw, at, at + 4 + l);
            return mac.verify_truncated_left(want).is_ok();
        }
        if let Some(at) = self.integrity {
            let want = &self.raw[at + 4..at + 24];
            let mut mac = hmac_sha1(key);
            feed_with_len(&mut |d| mac.update(d), self.raw, at, at + 24);
            return mac.verify_slice(want).is_ok();
        }
        false
    }

    /// ERROR-CODE as (code, reason), if present and well formed.
    pub fn error_code(&self) -> Option<(u16, &'a str)> {
        let v = self.get(attr::ERROR_CODE)?;
        if v.len() < 4 {
            return None;
        }
        let code = (v[2] & 0x07) as u16 * 100 + v[3] as u16;
        Some((code, std::str::from_utf8(&v[4..]).unwrap_or("")))
    }

    /// An XOR-*-ADDRESS attribute, decoded.
    pub fn xor_address(&self, ty: u16) -> Option<SocketAddr> {
        read_xor_address(self.get(ty)?, &self.tid)
    }

    /// A 32-bit attribute (LIFETIME and the like).
    pub fn u32(&self, ty: u16) -> Option<u32> {
        let v = self.get(ty)?;
        (v.len() == 4).then(|| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
    }
}

/// Feeds `raw[..upto]` to `f` with the header's length field replaced so that the
/// message appears to end at `end` (how integrity and fingerprint are computed).
fn feed_with_len(f: &mut dyn FnMut(&[u8]), raw: &[u8], upto: usize, end: usize) {
    f(&raw[0..2]);
    f(&((end - HEADER_LEN) as u16).to_be_bytes());
    f(&raw[4..upto]);
}

fn fingerprint_matches(raw: &[u8], at: usize) -> bool {
    let mut h = crc32fast::Hasher::new();
    feed_with_len(&mut |d| h.update(d), raw, at, at + 8);
    let want = u32::from_be_bytes([raw[at + 4], raw[at + 5], raw[at + 6], raw[at + 7]]);
    h.finalize() ^ FINGERPRINT_XOR == want
}

fn hmac_sha1(key: &[u8]) -> Hmac<sha1::Sha1> {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    <Hmac<sha1::Sha1> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

fn hmac_sha256(key: &[u8]) -> Hmac<sha2::Sha256> {
    <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

// ---- encoding ------------------------------------------------------------------------

/// Writes one message at the end of a buffer (which may already hold other messages:
/// a batch of datagrams is built in one buffer). Attributes are appended in order;
/// [`Builder::integrity`], [`Builder::integrity_sha256`] and [`Builder::fingerprint`]
/// go last, in that order; [`Builder::finish`] writes the length.
pub struct Builder<'b> {
    buf: &'b mut Vec<u8>,
    start: usize,
    tid: TransactionId,
}

impl<'b> Builder<'b> {
    pub fn new(buf: &'b mut Vec<u8>, method: u16, class: Class, tid: TransactionId) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&message_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC.to_be_bytes());
        buf.extend_from_slice(&tid);
        Builder { buf, start, tid }
    }

    /// An attribute (padded with zeros to a multiple of 4). Values longer than 65,535
    /// bytes are cut there (no caller builds one).
    pub fn attr(&mut self, ty: u16, v: &[u8]) -> &mut Self {
        let v = &v[..v.len().min(u16::MAX as usize)];
        self.buf.extend_from_slice(&ty.to_be_bytes());
        self.buf.extend_from_slice(&(v.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(v);
        let pad = (4 - v.len() % 4) % 4;
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        self
    }

    pub fn u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    /// An XOR-*-ADDRESS attribute.
    pub fn xor_address(&mut self, ty: u16, a: SocketAddr) -> &mut Self {
        let mut v = [0u8; 20];
        let n = write_xor_address(&mut v, a, &self.tid);
        self.attr(ty, &v[..n])
    }

    /// ERROR-CODE with its reason phrase.
    pub fn error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        let mut v = Vec::with_capacity(4 + reason.len());
        v.extend_from_slice(&[0, 0, (code / 100) as u8, (code % 100) as u8]);
        v.extend_from_slice(reason.as_bytes());
        self.attr(attr::ERROR_CODE, &v)
    }

    fn set_len(&mut self, end: usize) {
        let n = (end - self.start - HEADER_LEN) as u16;
        self.buf[self.start + 2..self.start + 4].copy_from_slice(&n.to_be_bytes());
    }

    /// MESSAGE-INTEGRITY (HMAC-SHA1) keyed with `key`.
    pub fn integrity(&mut self, key: &[u8]) -> &mut Self {
        let end = self.buf.len() + 24;
        self.set_len(end);
        let mut mac = hmac_sha1(key);
        mac.update(&self.buf[self.start..]);
        let tag = mac.finalize().into_bytes();
        self.attr(attr::MESSAGE_INTEGRITY, &tag)
    }

    /// MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256, 32 bytes) keyed with `key`.
    pub fn integrity_sha256(&mut self, key: &[u8]) -> &mut Self {
        let end = self.buf.len() + 36;
        self.set_len(end);
        let mut mac = hmac_sha256(key);
        mac.update(&self.buf[self.start..]);
        let tag = mac.finalize().into_bytes();
        self.attr(attr::MESSAGE_INTEGRITY_SHA256, &tag)
    }

    /// FINGERPRINT (CRC-32 of the message so far, XORed).
    pub fn fingerprint(&mut self) -> &mut Self {
        let end = self.buf.len() + 8;
        self.set_len(end);
        let crc = crc32fast::hash(&self.buf[self.start..]) ^ FINGERPRINT_XOR;
        self.attr(attr::FINGERPRINT, &crc.to_be_bytes())
    }

    /// Writes the length; returns the message's size in bytes.
    pub fn finish(mut self) -> usize {
        let end = self.buf.len();
        self.set_len(end);
        end - self.start
    }
}

/// Writes an XOR-*-ADDRESS value into `out` (8 bytes for IPv4, 20 for IPv6); returns
/// its length.
pub fn write_xor_address(out: &mut [u8; 20], a: SocketAddr, tid: &TransactionId) -> usize {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC.to_be_bytes());
    mask[4..].copy_from_slice(tid);
    let port = a.port() ^ (MAGIC >> 16) as u16;
    out[0] = 0;
    out[2..4].copy_from_slice(&port.to_be_bytes());
    match a.ip() {
        IpAddr::V4(ip) => {
            out[1] = 1;
            for (k, b) in ip.octets().iter().enumerate() {
                out[4 + k] = b ^ mask[k];
            }
            8
        }
        IpAddr::V6(ip) => {
            out[1] = 2;
            for (k, b) in ip.octets().iter().enumerate() {
                out[4 + k] = b ^ mask[k];
            }
            20
        }
    }
}

/// An XOR-*-ADDRESS value as bytes.
pub fn xor_address(a: SocketAddr, tid: &TransactionId) -> Vec<u8> {
    let mut v = [0u8; 20];
    let n = write_xor_address(&mut v, a, tid);
    v[..n].to_vec()
}

/// Reads an XOR-*-ADDRESS value.
pub fn read_xor_address(v: &[u8], tid: &TransactionId) -> Option<SocketAddr> {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC.to_be_bytes());
    mask[4..].copy_from_slice(tid);
    read_address(v, &mask)
}

/// Reads a MAPPED-ADDRESS value (not XORed).
pub fn read_mapped_address(v: &[u8]) -> Option<SocketAddr> {
    read_address(v, &[0u8; 16])
}

fn read_address(v: &[u8], mask: &[u8; 16]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2] ^ mask[0], v[3] ^ mask[1]]);
    let ip = match v[1] {
        1 if v.len() == 8 => {
            let mut o = [0u8; 4];
            for (k, b) in o.iter_mut().enumerate() {
                *b = v[4 + k] ^ mask[k];
            }
            IpAddr::V4(Ipv4Addr::from(o))
        }
        2 if v.len() == 20 => {
            let mut o = [0u8; 16];
            for (k, b) in o.iter_mut().enumerate() {
                *b = v[4 + k] ^ mask[k];
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

// ---- the owned message ---------------------------------------------------------------

/// A STUN message as a value: header fields and attributes in order (for clients and
/// tests; the server works on [`Msg`] and [`Builder`]). MESSAGE-INTEGRITY and
/// FINGERPRINT are added by [`Message::encode`]; [`Message::decode`] keeps the other
/// attributes before them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub method: u16,
    pub class: Class,
    pub tid: TransactionId,
    pub attributes: Vec<(u16, Vec<u8>)>,
}

impl Message {
    pub fn new(method: u16, class: Class, tid: TransactionId) -> Message {
        Message {
            method,
            class,
            tid,
            attributes: Vec::new(),
        }
    }

    pub fn with(mut self, ty: u16, value: impl Into<Vec<u8>>) -> Message {
        self.attributes.push((ty, value.into()));
        self
    }

    /// The first attribute of type `ty`.
    pub fn get(&self, ty: u16) -> Option<&[u8]> {
        self.attributes
            .iter()
            .find(|(t, _)| *t == ty)
            .map(|(_, v)| v.as_slice())
    }

    /// Wire bytes; with `key`, a MESSAGE-INTEGRITY over everything before it; with
    /// `fingerprint`, a FINGERPRINT last. Padding bytes are zero.
    pub fn encode(&self, key: Option<&[u8]>, fingerprint: bool) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        let mut w = Builder::new(&mut b, self.method, self.class, self.tid);
        for (t, v) in &self.attributes {
            w.attr(*t, v);
        }
        if let Some(key) = key {
            w.integrity(key);
        }
        if fingerprint {
            w.fingerprint();
        }
        w.finish();
        b
    }

    /// Parses a message (see [`parse`] for what is refused).
    pub fn decode(b: &[u8]) -> Option<Message> {
        let m = parse(b).ok()?;
        Some(Message {
            method: m.method,
            class: m.class,
            tid: m.tid,
            attributes: m.attrs[..m.count]
                .iter()
                .map(|a| (a.ty, m.value(a).to_vec()))
                .collect(),
        })
    }
}

/// Whether `b` carries a MESSAGE-INTEGRITY(-SHA256) that verifies with `key`.
pub fn integrity_ok(b: &[u8], key: &[u8]) -> bool {
    parse(b).is_ok_and(|m| m.verify(key))
}

/// Whether `b` ends with a FINGERPRINT that matches.
pub fn fingerprint_ok(b: &[u8]) -> bool {
    parse(b).is_ok_and(|m| m.fingerprint)
}

#[cfg(test)]
mod tests;
