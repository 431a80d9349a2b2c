//! TURN client (RFC 8656, formerly RFC 5766) over UDP, sans-IO: it takes datagrams
//! from the TURN server and `now`, and hands back datagrams for the server and events.
//!
//! What it does: Allocate with long-term credentials (the first request goes without
//! them, the server's 401 brings REALM and NONCE, the retry carries USERNAME, REALM,
//! NONCE, MESSAGE-INTEGRITY keyed with MD5(username:realm:password) and FINGERPRINT;
//! a 438 Stale Nonce is retried with the fresh nonce); Refresh before the allocation's
//! lifetime ends; CreatePermission for each peer IP (refreshed every
//! [`PERMISSION_REFRESH`] while in use); data through Send and Data indications
//! (ChannelBind/ChannelData are not used). Requests are retransmitted on the RFC 5389
//! schedule ([`TURN_RTO`] doubling, [`TURN_TRIES_MAX`] sends).
//!
//! The message codec ([`Message`], [`integrity_ok`], [`fingerprint_ok`]) is written
//! here (about as small as a dependency's glue would be) and tested against the RFC 5769
//! test vectors.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};

/// The STUN magic cookie.
pub const MAGIC: u32 = 0x2112_A442;
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// First retransmission timeout of a request (RFC 5389 §7.2.1); it doubles per send.
pub const TURN_RTO: Duration = Duration::from_millis(500);
/// Sends of one request before the transaction fails (500 ms … 8 s, then a last 16 s
/// wait: about 31 s in all).
pub const TURN_TRIES_MAX: u32 = 6;
/// 438 Stale Nonce retries of one request before giving up.
pub const STALE_NONCE_RETRIES_MAX: u32 = 3;
/// The allocation lifetime we ask for in Refresh requests (the RFC default).
pub const ALLOCATION_LIFETIME: Duration = Duration::from_secs(600);
/// Refresh this long before the allocation would expire (or at half its lifetime when
/// that is shorter).
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// Permissions last 300 s on the server; we refresh them after this long.
pub const PERMISSION_REFRESH: Duration = Duration::from_secs(240);
/// A permission not used (no datagram sent to the peer, no candidate added) for this
/// long is no longer refreshed and is forgotten.
pub const PERMISSION_IDLE: Duration = Duration::from_secs(600);
/// Peer IPs with a permission (installed or requested). Further peers are refused
/// until some expire: bounded memory whatever the remote candidates say.
pub const PERMISSIONS_MAX: usize = 256;
/// Datagrams for the server not yet taken by the driver; when full, requests and
/// indications are dropped (requests are retransmitted, data is UDP anyway).
pub const TURN_OUT_DATAGRAMS_MAX: usize = 1024;
/// Events not yet taken by the driver (allocation results are few; data comes back
/// directly from [`TurnClient::handle_datagram`]).
pub const TURN_EVENTS_MAX: usize = 64;

// ---- codec ------------------------------------------------------------------------

/// STUN/TURN methods used here.
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
}

/// Attribute types used here.
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const SOFTWARE: u16 = 0x8022;
    pub const FINGERPRINT: u16 = 0x8028;
}

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

/// The 14-bit message type from method and class (RFC 5389 §6).
fn message_type(method: u16, class: Class) -> u16 {
    let c = class.bits();
    (method & 0x000f)
        | ((method & 0x0070) << 1)
        | ((method & 0x0f80) << 2)
        | ((c & 1) << 4)
        | ((c & 2) << 7)
}

fn split_type(t: u16) -> (u16, Class) {
    let method = (t & 0x000f) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0f80);
    let class = match ((t >> 4) & 1) | ((t >> 7) & 2) {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

pub type TransactionId = [u8; 12];

/// A STUN message: header fields and attributes in order (MESSAGE-INTEGRITY and
/// FINGERPRINT are added by [`Message::encode`], and kept as read by
/// [`Message::decode`]).
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
        b.extend_from_slice(&message_type(self.method, self.class).to_be_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&MAGIC.to_be_bytes());
        b.extend_from_slice(&self.tid);
        for (t, v) in &self.attributes {
            put_attr(&mut b, *t, v);
        }
        if let Some(key) = key {
            let n = b.len() - 20 + 24;
            set_len(&mut b, n);
            let mac = hmac_sha1(key, &b);
            put_attr(&mut b, attr::MESSAGE_INTEGRITY, &mac);
        }
        if fingerprint {
            let n = b.len() - 20 + 8;
            set_len(&mut b, n);
            let crc = crc32(&b) ^ FINGERPRINT_XOR;
            put_attr(&mut b, attr::FINGERPRINT, &crc.to_be_bytes());
        }
        let n = b.len() - 20;
        set_len(&mut b, n);
        b
    }

    /// Parses a STUN message (header checks: leading zero bits, magic cookie, length).
    pub fn decode(b: &[u8]) -> Option<Message> {
        if !is_stun(b) {
            return None;
        }
        let len = u16::from_be_bytes([b[2], b[3]]) as usize;
        if len % 4 != 0 || b.len() != 20 + len {
            return None;
        }
        let (method, class) = split_type(u16::from_be_bytes([b[0], b[1]]));
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&b[8..20]);
        let mut attributes = Vec::new();
        for (t, v, _) in attrs(b) {
            attributes.push((t, v?.to_vec()));
        }
        Some(Message {
            method,
            class,
            tid,
            attributes,
        })
    }
}

/// Whether `b` looks like a STUN message (top bits zero, magic cookie).
pub fn is_stun(b: &[u8]) -> bool {
    b.len() >= 20 && b[0] & 0xc0 == 0 && u32::from_be_bytes([b[4], b[5], b[6], b[7]]) == MAGIC
}

fn put_attr(b: &mut Vec<u8>, t: u16, v: &[u8]) {
    b.extend_from_slice(&t.to_be_bytes());
    b.extend_from_slice(&(v.len() as u16).to_be_bytes());
    b.extend_from_slice(v);
    b.resize(b.len() + (4 - v.len() % 4) % 4, 0);
}

fn set_len(b: &mut [u8], len: usize) {
    b[2..4].copy_from_slice(&(len as u16).to_be_bytes());
}

/// The attributes of a message as `(type, value, offset of the attribute header)`;
/// `None` as value for one that overruns the message (and iteration stops).
fn attrs(b: &[u8]) -> impl Iterator<Item = (u16, Option<&[u8]>, usize)> {
    let mut i = 20;
    let mut done = false;
    std::iter::from_fn(move || {
        if done || i + 4 > b.len() {
            return None;
        }
        let t = u16::from_be_bytes([b[i], b[i + 1]]);
        let l = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
        let at = i;
        let v = b.get(i + 4..i + 4 + l);
        if v.is_none() {
            done = true;
        }
        i += 4 + l.div_ceil(4) * 4;
        Some((t, v, at))
    })
}

fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).expect("HMAC takes any key size");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The long-term credential key: MD5(username ":" realm ":" password) (RFC 5389
/// §15.4; SASLprep is not applied: our credentials are ASCII).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// Whether the message's MESSAGE-INTEGRITY verifies with `key` (false without one).
pub fn integrity_ok(b: &[u8], key: &[u8]) -> bool {
    let Some((v, at)) = attrs(b).find_map(|(t, v, at)| {
        if t == attr::MESSAGE_INTEGRITY {
            Some((v?, at))
        } else {
            None
        }
    }) else {
        return false;
    };
    if v.len() != 20 {
        return false;
    }
    let mut head = b[..at].to_vec();
    set_len(&mut head, at - 20 + 24);
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).expect("HMAC takes any key size");
    mac.update(&head);
    mac.verify_slice(v).is_ok()
}

/// Whether the message ends with a FINGERPRINT that matches.
pub fn fingerprint_ok(b: &[u8]) -> bool {
    let Some((v, at)) = attrs(b).find_map(|(t, v, at)| {
        if t == attr::FINGERPRINT {
            Some((v?, at))
        } else {
            None
        }
    }) else {
        return false;
    };
    if v.len() != 4 || at + 8 != b.len() {
        return false;
    }
    let mut head = b[..at].to_vec();
    set_len(&mut head, at - 20 + 8);
    crc32(&head) ^ FINGERPRINT_XOR == u32::from_be_bytes([v[0], v[1], v[2], v[3]])
}

/// CRC-32 (ISO 3309 / ITU-T V.42, as zlib), bitwise: messages here are small.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An XOR-*-ADDRESS value.
pub fn xor_address(a: SocketAddr, tid: &TransactionId) -> Vec<u8> {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC.to_be_bytes());
    mask[4..].copy_from_slice(tid);
    let port = a.port() ^ (MAGIC >> 16) as u16;
    let mut v = vec![0];
    match a.ip() {
        IpAddr::V4(ip) => {
            v.push(1);
            v.extend_from_slice(&port.to_be_bytes());
            v.extend(ip.octets().iter().zip(mask).map(|(a, m)| a ^ m));
        }
        IpAddr::V6(ip) => {
            v.push(2);
            v.extend_from_slice(&port.to_be_bytes());
            v.extend(ip.octets().iter().zip(mask).map(|(a, m)| a ^ m));
        }
    }
    v
}

/// Reads an XOR-*-ADDRESS value.
pub fn read_xor_address(v: &[u8], tid: &TransactionId) -> Option<SocketAddr> {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC.to_be_bytes());
    mask[4..].copy_from_slice(tid);
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC >> 16) as u16;
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

/// ERROR-CODE as (code, reason).
fn error_code(m: &Message) -> (u16, String) {
    match m.get(attr::ERROR_CODE) {
        Some(v) if v.len() >= 4 => (
            (v[2] & 0x07) as u16 * 100 + v[3] as u16,
            String::from_utf8_lossy(&v[4..]).into_owned(),
        ),
        _ => (0, String::new()),
    }
}

// ---- client -----------------------------------------------------------------------

/// What the client tells its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TurnEvent {
    /// The allocation exists: `relayed` is the relayed transport address (our relay
    /// candidate), `mapped` our address as the server sees it.
    Allocated {
        relayed: SocketAddr,
        mapped: Option<SocketAddr>,
    },
    /// The allocation failed or was lost; no relay until a new client allocates.
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Allocate,
    Refresh,
    Permission(IpAddr),
}

struct Transaction {
    tid: TransactionId,
    kind: Kind,
    bytes: Vec<u8>,
    sends: u32,
    next: Instant,
    stale_retries: u32,
}

struct Permission {
    /// An address of the peer (the port is ignored by the server).
    addr: SocketAddr,
    /// A CreatePermission for it is in flight.
    pending: bool,
    /// When to refresh (only meaningful once installed).
    refresh_at: Option<Instant>,
    last_used: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    Allocating,
    Allocated,
    Failed,
}

/// One allocation on one TURN server.
pub struct TurnClient {
    server: SocketAddr,
    username: String,
    password: String,
    realm: Option<String>,
    nonce: Option<Vec<u8>>,
    key: Option<[u8; 16]>,
    state: State,
    relayed: Option<SocketAddr>,
    refresh_at: Option<Instant>,
    transactions: Vec<Transaction>,
    permissions: HashMap<IpAddr, Permission>,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<TurnEvent>,
    /// Datagrams dropped because [`TURN_OUT_DATAGRAMS_MAX`] was reached.
    pub dropped: u64,
}

fn new_tid() -> TransactionId {
    let mut t = [0u8; 12];
    let _ = getrandom::getrandom(&mut t);
    t
}

impl TurnClient {
    pub fn new(server: SocketAddr, username: &str, password: &str) -> TurnClient {
        TurnClient {
            server,
            username: username.to_string(),
            password: password.to_string(),
            realm: None,
            nonce: None,
            key: None,
            state: State::Idle,
            relayed: None,
            refresh_at: None,
            transactions: Vec::new(),
            permissions: HashMap::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            dropped: 0,
        }
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The relayed address, once allocated.
    pub fn relayed(&self) -> Option<SocketAddr> {
        self.relayed
    }

    pub fn is_failed(&self) -> bool {
        self.state == State::Failed
    }

    /// Sends the first Allocate request.
    pub fn start(&mut self, now: Instant) {
        if self.state != State::Idle {
            return;
        }
        self.state = State::Allocating;
        self.request(now, Kind::Allocate, 0);
    }

    /// A datagram for the server.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<TurnEvent> {
        self.events.pop_front()
    }

    fn push_out(&mut self, b: Vec<u8>) {
        if self.out.len() >= TURN_OUT_DATAGRAMS_MAX {
            self.dropped += 1;
            return;
        }
        self.out.push_back(b);
    }

    fn event(&mut self, e: TurnEvent) {
        if self.events.len() < TURN_EVENTS_MAX {
            self.events.push_back(e);
        }
    }

    fn fail(&mut self, reason: String) {
        tracing::warn!(server = %self.server, %reason, "TURN allocation failed");
        self.state = State::Failed;
        self.relayed = None;
        self.refresh_at = None;
        self.transactions.clear();
        self.permissions.clear();
        self.event(TurnEvent::Failed(reason));
    }

    fn build(&self, kind: Kind, tid: TransactionId) -> Vec<u8> {
        let m = match kind {
            Kind::Allocate => Message::new(method::ALLOCATE, Class::Request, tid)
                .with(attr::REQUESTED_TRANSPORT, [17u8, 0, 0, 0]),
            Kind::Refresh => Message::new(method::REFRESH, Class::Request, tid).with(
                attr::LIFETIME,
                (ALLOCATION_LIFETIME.as_secs() as u32).to_be_bytes(),
            ),
            Kind::Permission(ip) => {
                let addr = self
                    .permissions
                    .get(&ip)
                    .map_or(SocketAddr::new(ip, 0), |p| p.addr);
                Message::new(method::CREATE_PERMISSION, Class::Request, tid)
                    .with(attr::XOR_PEER_ADDRESS, xor_address(addr, &tid))
            }
        };
        match (&self.key, &self.realm, &self.nonce) {
            (Some(key), Some(realm), Some(nonce)) => m
                .with(attr::USERNAME, self.username.as_bytes())
                .with(attr::REALM, realm.as_bytes())
                .with(attr::NONCE, nonce.clone())
                .encode(Some(key), true),
            _ => m.encode(None, true),
        }
    }

    fn request(&mut self, now: Instant, kind: Kind, stale_retries: u32) {
        let tid = new_tid();
        let bytes = self.build(kind, tid);
        self.push_out(bytes.clone());
        self.transactions.push(Transaction {
            tid,
            kind,
            bytes,
            sends: 1,
            next: now + TURN_RTO,
            stale_retries,
        });
    }

    /// Asks for a permission for `peer`'s IP (no-op when there is one, or one is
    /// requested). Before the allocation exists the request waits for it.
    pub fn add_permission(&mut self, now: Instant, peer: SocketAddr) {
        if self.state == State::Failed {
            return;
        }
        let ip = peer.ip();
        if let Some(p) = self.permissions.get_mut(&ip) {
            p.last_used = now;
            return;
        }
        if self.permissions.len() >= PERMISSIONS_MAX {
            tracing::debug!(%peer, "TURN permission table full");
            return;
        }
        self.permissions.insert(
            ip,
            Permission {
                addr: peer,
                pending: false,
                refresh_at: None,
                last_used: now,
            },
        );
        if self.state == State::Allocated {
            self.request_permission(now, ip);
        }
    }

    fn request_permission(&mut self, now: Instant, ip: IpAddr) {
        if let Some(p) = self.permissions.get_mut(&ip) {
            p.pending = true;
            self.request(now, Kind::Permission(ip), 0);
        }
    }

    /// Wraps `data` for `peer` in a Send indication (asking for a permission first
    /// when there is none). `None` before the allocation exists.
    pub fn send_indication(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        data: &[u8],
    ) -> Option<Vec<u8>> {
        if self.state != State::Allocated {
            return None;
        }
        self.add_permission(now, peer);
        let tid = new_tid();
        Some(
            Message::new(method::SEND, Class::Indication, tid)
                .with(attr::XOR_PEER_ADDRESS, xor_address(peer, &tid))
                .with(attr::DATA, data)
                .encode(None, false),
        )
    }

    /// A datagram from the server. Returns `(peer, data)` for a Data indication; other
    /// messages update the state (see [`TurnClient::poll_event`]).
    pub fn handle_datagram(&mut self, now: Instant, b: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
        let m = Message::decode(b)?;
        if m.class == Class::Indication {
            if m.method != method::DATA || self.state != State::Allocated {
                return None;
            }
            let peer = read_xor_address(m.get(attr::XOR_PEER_ADDRESS)?, &m.tid)?;
            let mut attributes = m.attributes;
            let i = attributes.iter().position(|(t, _)| *t == attr::DATA)?;
            return Some((peer, attributes.swap_remove(i).1));
        }
        let i = self.transactions.iter().position(|t| t.tid == m.tid)?;
        if m.get(attr::MESSAGE_INTEGRITY).is_some() {
            if let Some(key) = self.key {
                if !integrity_ok(b, &key) {
                    tracing::debug!("TURN response with a bad MESSAGE-INTEGRITY ignored");
                    return None;
                }
            }
        }
        let t = self.transactions.swap_remove(i);
        match m.class {
            Class::Success => self.on_success(now, t.kind, &m),
            Class::Error => self.on_error(now, t, &m),
            _ => {}
        }
        None
    }

    fn on_success(&mut self, now: Instant, kind: Kind, m: &Message) {
        let lifetime = m
            .get(attr::LIFETIME)
            .filter(|v| v.len() == 4)
            .map(|v| Duration::from_secs(u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as u64));
        match kind {
            Kind::Allocate => {
                let Some(relayed) = m
                    .get(attr::XOR_RELAYED_ADDRESS)
                    .and_then(|v| read_xor_address(v, &m.tid))
                else {
                    self.fail("Allocate success without XOR-RELAYED-ADDRESS".into());
                    return;
                };
                let mapped = m
                    .get(attr::XOR_MAPPED_ADDRESS)
                    .and_then(|v| read_xor_address(v, &m.tid));
                self.state = State::Allocated;
                self.relayed = Some(relayed);
                self.schedule_refresh(now, lifetime.unwrap_or(ALLOCATION_LIFETIME));
                tracing::info!(server = %self.server, %relayed, ?mapped, "TURN allocation");
                self.event(TurnEvent::Allocated { relayed, mapped });
                let waiting: Vec<IpAddr> = self.permissions.keys().copied().collect();
                for ip in waiting {
                    self.request_permission(now, ip);
                }
            }
            Kind::Refresh => {
                self.schedule_refresh(now, lifetime.unwrap_or(ALLOCATION_LIFETIME));
            }
            Kind::Permission(ip) => {
                if let Some(p) = self.permissions.get_mut(&ip) {
                    p.pending = false;
                    p.refresh_at = Some(now + PERMISSION_REFRESH);
                    tracing::debug!(peer = %ip, "TURN permission");
                }
            }
        }
    }

    fn schedule_refresh(&mut self, now: Instant, lifetime: Duration) {
        let after = lifetime.saturating_sub(REFRESH_MARGIN).max(lifetime / 2);
        self.refresh_at = Some(now + after);
    }

    fn on_error(&mut self, now: Instant, t: Transaction, m: &Message) {
        let (code, reason) = error_code(m);
        let fresh_nonce = m.get(attr::NONCE).map(<[u8]>::to_vec);
        if let Some(r) = m.get(attr::REALM) {
            let realm = String::from_utf8_lossy(r).into_owned();
            if self.realm.as_deref() != Some(&realm) {
                self.key = Some(long_term_key(&self.username, &realm, &self.password));
                self.realm = Some(realm);
            }
        }
        let authed = self.key.is_some() && self.nonce.is_some();
        match code {
            401 if t.kind == Kind::Allocate && !authed_request(&t.bytes) => {
                if fresh_nonce.is_none() || self.realm.is_none() {
                    self.fail("401 without REALM/NONCE".into());
                    return;
                }
                self.nonce = fresh_nonce;
                self.request(now, t.kind, t.stale_retries);
            }
            438 if t.stale_retries < STALE_NONCE_RETRIES_MAX && fresh_nonce.is_some() => {
                self.nonce = fresh_nonce;
                self.request(now, t.kind, t.stale_retries + 1);
            }
            _ => {
                let why = format!("{code} {reason}");
                match t.kind {
                    Kind::Allocate | Kind::Refresh => {
                        let what = if t.kind == Kind::Allocate {
                            "Allocate"
                        } else {
                            "Refresh"
                        };
                        let detail = if code == 401 && authed {
                            " (credentials refused)"
                        } else {
                            ""
                        };
                        self.fail(format!("{what} refused: {why}{detail}"));
                    }
                    Kind::Permission(ip) => {
                        tracing::debug!(peer = %ip, error = %why, "TURN CreatePermission refused");
                        self.permissions.remove(&ip);
                    }
                }
            }
        }
    }

    /// Retransmissions, refreshes and permission upkeep that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut expired = Vec::new();
        let mut resend = Vec::new();
        for t in &mut self.transactions {
            if t.next > now {
                continue;
            }
            if t.sends >= TURN_TRIES_MAX {
                expired.push(t.tid);
                continue;
            }
            t.sends += 1;
            t.next = now + TURN_RTO * (1 << (t.sends - 1));
            resend.push(t.bytes.clone());
        }
        for b in resend {
            self.push_out(b);
        }
        for tid in expired {
            let Some(i) = self.transactions.iter().position(|t| t.tid == tid) else {
                continue;
            };
            let t = self.transactions.swap_remove(i);
            match t.kind {
                Kind::Allocate => self.fail("TURN server did not answer Allocate".into()),
                Kind::Refresh => self.fail("TURN server did not answer Refresh".into()),
                Kind::Permission(ip) => {
                    tracing::warn!(peer = %ip, "TURN server did not answer CreatePermission");
                    self.permissions.remove(&ip);
                }
            }
            if self.state == State::Failed {
                return;
            }
        }
        if self.state != State::Allocated {
            return;
        }
        if self.refresh_at.is_some_and(|r| r <= now)
            && !self.transactions.iter().any(|t| t.kind == Kind::Refresh)
        {
            self.refresh_at = None;
            self.request(now, Kind::Refresh, 0);
        }
        self.permissions
            .retain(|_, p| p.pending || now.duration_since(p.last_used) < PERMISSION_IDLE);
        let due: Vec<IpAddr> = self
            .permissions
            .iter()
            .filter(|(_, p)| !p.pending && p.refresh_at.is_some_and(|r| r <= now))
            .map(|(ip, _)| *ip)
            .collect();
        for ip in due {
            self.request_permission(now, ip);
        }
    }

    /// When [`TurnClient::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let txn = self.transactions.iter().map(|t| t.next).min();
        let perm = self
            .permissions
            .values()
            .filter(|p| !p.pending)
            .filter_map(|p| p.refresh_at)
            .min();
        [txn, self.refresh_at, perm].into_iter().flatten().min()
    }
}

/// Whether a request we built carries credentials (a USERNAME attribute).
fn authed_request(b: &[u8]) -> bool {
    attrs(b).any(|(t, _, _)| t == attr::USERNAME)
}

/// `turn:host[:port][?transport=udp]` → `(host, port)`; `turns:` and other transports
/// are refused (this client speaks UDP only).
pub fn parse_turn_url(s: &str) -> Result<(String, u16), String> {
    let rest = s.strip_prefix("turn:").ok_or_else(|| {
        format!("TURN url {s:?}: expected turn:host[:port] (turns: is not supported)")
    })?;
    let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
    for kv in query.split('&').filter(|q| !q.is_empty()) {
        if let Some(t) = kv.strip_prefix("transport=") {
            if !t.eq_ignore_ascii_case("udp") {
                return Err(format!("TURN url {s:?}: only transport=udp is supported"));
            }
        }
    }
    super::config::parse_stun_url(&format!("stun:{hostport}"))
        .map_err(|e| e.replace("STUN", "TURN"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 5769 §2.1: sample request, short-term credentials.
    fn rfc5769_request() -> Vec<u8> {
        hex("00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
             80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
             00 24 00 04 6e 00 01 ff
             80 29 00 08 93 2f f9 b1 51 26 3b 36
             00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
             00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
             80 28 00 04 e5 7a 3b cf")
    }

    /// RFC 5769 §2.2: sample IPv4 response.
    fn rfc5769_response() -> Vec<u8> {
        hex("01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
             80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
             00 20 00 08 00 01 a1 47 e1 12 a6 43
             00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
             80 28 00 04 c0 7d 4c 96")
    }

    /// RFC 5769 §2.4: sample request with long-term credentials.
    fn rfc5769_long_term() -> Vec<u8> {
        hex("00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
             00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
             00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34
             6f 4c 39 46 53 54 76 79 36 34 73 41
             00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
             00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66")
    }

    const SHORT_TERM: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

    #[test]
    fn rfc5769_sample_request() {
        let b = rfc5769_request();
        let m = Message::decode(&b).unwrap();
        assert_eq!((m.method, m.class), (method::BINDING, Class::Request));
        assert_eq!(m.get(attr::SOFTWARE), Some(&b"STUN test client"[..]));
        assert_eq!(m.get(attr::USERNAME), Some(&b"evtj:h6vY"[..]));
        assert!(integrity_ok(&b, SHORT_TERM));
        assert!(!integrity_ok(&b, b"wrong"));
        assert!(fingerprint_ok(&b));
        let mut bad = b.clone();
        bad[47] ^= 1; // PRIORITY
        assert!(!integrity_ok(&bad, SHORT_TERM));
        assert!(!fingerprint_ok(&bad));
    }

    #[test]
    fn rfc5769_sample_response_and_reencoding() {
        let b = rfc5769_response();
        let m = Message::decode(&b).unwrap();
        assert_eq!(m.class, Class::Success);
        let a = read_xor_address(m.get(attr::XOR_MAPPED_ADDRESS).unwrap(), &m.tid);
        assert_eq!(a, Some("192.0.2.1:32853".parse().unwrap()));
        assert!(integrity_ok(&b, SHORT_TERM));
        assert!(fingerprint_ok(&b));
        // Our encoder reproduces it byte for byte (its SOFTWARE padding is a space,
        // ours a zero: both are covered by the HMAC and CRC, so re-pad theirs).
        let rebuilt = Message::new(method::BINDING, Class::Success, m.tid)
            .with(attr::SOFTWARE, &b"test vector "[..])
            .with(
                attr::XOR_MAPPED_ADDRESS,
                xor_address("192.0.2.1:32853".parse().unwrap(), &m.tid),
            );
        let enc = rebuilt.encode(Some(SHORT_TERM), true);
        assert!(integrity_ok(&enc, SHORT_TERM) && fingerprint_ok(&enc));
        assert_eq!(enc.len(), b.len());
    }

    #[test]
    fn rfc5769_long_term_credentials() {
        let b = rfc5769_long_term();
        let m = Message::decode(&b).unwrap();
        assert_eq!(m.get(attr::REALM), Some(&b"example.org"[..]));
        assert_eq!(
            m.get(attr::NONCE),
            Some(&b"f//499k954d6OL34oL9FSTvy64sA"[..])
        );
        // The password after SASLprep is "TheMatrIX".
        let key = long_term_key("マトリックス", "example.org", "TheMatrIX");
        assert!(integrity_ok(&b, &key));
        assert!(!integrity_ok(
            &b,
            &long_term_key("x", "example.org", "TheMatrIX")
        ));
        // Rebuilt from its attributes by our encoder: the same bytes.
        let rebuilt = Message {
            attributes: m
                .attributes
                .iter()
                .filter(|(t, _)| *t != attr::MESSAGE_INTEGRITY)
                .cloned()
                .collect(),
            ..m
        };
        assert_eq!(rebuilt.encode(Some(&key), false), b);
    }

    #[test]
    fn message_types_and_addresses() {
        assert_eq!(message_type(method::ALLOCATE, Class::Request), 0x0003);
        assert_eq!(message_type(method::ALLOCATE, Class::Success), 0x0103);
        assert_eq!(message_type(method::ALLOCATE, Class::Error), 0x0113);
        assert_eq!(message_type(method::SEND, Class::Indication), 0x0016);
        assert_eq!(message_type(method::DATA, Class::Indication), 0x0017);
        assert_eq!(
            split_type(0x0118),
            (method::CREATE_PERMISSION, Class::Error)
        );
        let tid = [9u8; 12];
        for a in ["10.1.2.3:4000", "[2001:db8::1]:5060"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(read_xor_address(&xor_address(a, &tid), &tid), Some(a));
        }
        assert!(Message::decode(&[0u8; 20]).is_none());
        let mut short = rfc5769_request();
        short[3] = 0xff;
        assert!(Message::decode(&short).is_none());
    }

    #[test]
    fn turn_urls() {
        assert_eq!(
            parse_turn_url("turn:127.0.0.1:3479?transport=udp").unwrap(),
            ("127.0.0.1".to_string(), 3479)
        );
        assert_eq!(parse_turn_url("turn:t").unwrap(), ("t".to_string(), 3478));
        assert!(parse_turn_url("turn:t?transport=tcp").is_err());
        assert!(parse_turn_url("turns:t:5349").is_err());
    }

    // ---- the client against a scripted server ----------------------------------------

    const SERVER: &str = "192.0.2.10:3478";
    const RELAYED: &str = "192.0.2.10:50000";

    fn reply(req: &[u8], class: Class, attrs: Vec<(u16, Vec<u8>)>, key: Option<&[u8]>) -> Vec<u8> {
        let m = Message::decode(req).unwrap();
        Message {
            method: m.method,
            class,
            tid: m.tid,
            attributes: attrs,
        }
        .encode(key, true)
    }

    fn err(code: u16, extra: Vec<(u16, Vec<u8>)>) -> Vec<(u16, Vec<u8>)> {
        let mut v = vec![(
            attr::ERROR_CODE,
            vec![0, 0, (code / 100) as u8, (code % 100) as u8],
        )];
        v.extend(extra);
        v
    }

    fn realm_nonce(nonce: &str) -> Vec<(u16, Vec<u8>)> {
        vec![
            (attr::REALM, b"chatixia".to_vec()),
            (attr::NONCE, nonce.as_bytes().to_vec()),
        ]
    }

    /// Runs the client to an allocation: 401, then authenticated success.
    fn allocated(now: Instant) -> (TurnClient, [u8; 16]) {
        let mut c = TurnClient::new(SERVER.parse().unwrap(), "1:mesh", "pw");
        c.start(now);
        let first = c.poll_transmit().unwrap();
        assert!(fingerprint_ok(&first));
        assert!(!authed_request(&first));
        c.handle_datagram(
            now,
            &reply(&first, Class::Error, err(401, realm_nonce("n1")), None),
        );
        let second = c.poll_transmit().unwrap();
        let key = long_term_key("1:mesh", "chatixia", "pw");
        assert!(
            integrity_ok(&second, &key),
            "authenticated with the long-term key"
        );
        assert!(fingerprint_ok(&second));
        let m = Message::decode(&second).unwrap();
        assert_eq!(m.get(attr::NONCE), Some(&b"n1"[..]));
        assert_eq!(m.get(attr::USERNAME), Some(&b"1:mesh"[..]));
        let ok = vec![
            (
                attr::XOR_RELAYED_ADDRESS,
                xor_address(RELAYED.parse().unwrap(), &m.tid),
            ),
            (attr::LIFETIME, 600u32.to_be_bytes().to_vec()),
        ];
        c.handle_datagram(now, &reply(&second, Class::Success, ok, Some(&key)));
        assert_eq!(
            c.poll_event(),
            Some(TurnEvent::Allocated {
                relayed: RELAYED.parse().unwrap(),
                mapped: None
            })
        );
        (c, key)
    }

    #[test]
    fn allocates_with_long_term_credentials() {
        let now = Instant::now();
        let (c, _) = allocated(now);
        assert_eq!(c.relayed(), Some(RELAYED.parse().unwrap()));
        // Refresh is due a minute before the lifetime ends.
        assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(540)));
    }

    #[test]
    fn stale_nonce_is_retried_and_refresh_is_sent() {
        let now = Instant::now();
        let (mut c, key) = allocated(now);
        let later = now + Duration::from_secs(540);
        c.handle_timeout(later);
        let refresh = c.poll_transmit().unwrap();
        let m = Message::decode(&refresh).unwrap();
        assert_eq!(m.method, method::REFRESH);
        c.handle_datagram(
            later,
            &reply(
                &refresh,
                Class::Error,
                err(438, realm_nonce("n2")),
                Some(&key),
            ),
        );
        let again = c.poll_transmit().unwrap();
        let m2 = Message::decode(&again).unwrap();
        assert_eq!(m2.method, method::REFRESH);
        assert_eq!(m2.get(attr::NONCE), Some(&b"n2"[..]));
        assert_ne!(m2.tid, m.tid);
        c.handle_datagram(
            later,
            &reply(
                &again,
                Class::Success,
                vec![(attr::LIFETIME, 600u32.to_be_bytes().to_vec())],
                Some(&key),
            ),
        );
        assert_eq!(c.poll_timeout(), Some(later + Duration::from_secs(540)));
        assert!(c.poll_event().is_none());
    }

    #[test]
    fn permissions_send_and_data() {
        let now = Instant::now();
        let (mut c, key) = allocated(now);
        let peer: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let ind = c.send_indication(now, peer, b"hello").unwrap();
        let m = Message::decode(&ind).unwrap();
        assert_eq!((m.method, m.class), (method::SEND, Class::Indication));
        assert_eq!(
            read_xor_address(m.get(attr::XOR_PEER_ADDRESS).unwrap(), &m.tid),
            Some(peer)
        );
        assert_eq!(m.get(attr::DATA), Some(&b"hello"[..]));
        // The first send asked for a permission.
        let perm = c.poll_transmit().unwrap();
        let pm = Message::decode(&perm).unwrap();
        assert_eq!(pm.method, method::CREATE_PERMISSION);
        assert!(integrity_ok(&perm, &key));
        c.handle_datagram(now, &reply(&perm, Class::Success, vec![], Some(&key)));
        // Only one permission per IP, refreshed after 4 minutes while in use.
        c.add_permission(now, "198.51.100.7:1".parse().unwrap());
        assert!(c.poll_transmit().is_none());
        let t = now + PERMISSION_REFRESH;
        c.send_indication(t, peer, b"x");
        c.handle_timeout(t);
        let again = Message::decode(&c.poll_transmit().unwrap()).unwrap();
        assert_eq!(again.method, method::CREATE_PERMISSION);
        // A Data indication comes back as (peer, data).
        let tid = [3u8; 12];
        let data = Message::new(method::DATA, Class::Indication, tid)
            .with(attr::XOR_PEER_ADDRESS, xor_address(peer, &tid))
            .with(attr::DATA, &b"back"[..])
            .encode(None, true);
        assert_eq!(c.handle_datagram(t, &data), Some((peer, b"back".to_vec())));
    }

    #[test]
    fn retransmits_then_fails() {
        let now = Instant::now();
        let mut c = TurnClient::new(SERVER.parse().unwrap(), "u", "p");
        c.start(now);
        let first = c.poll_transmit().unwrap();
        let mut t = now;
        for _ in 1..TURN_TRIES_MAX {
            t = c.poll_timeout().unwrap();
            c.handle_timeout(t);
            assert_eq!(c.poll_transmit().unwrap(), first);
        }
        c.handle_timeout(c.poll_timeout().unwrap());
        assert!(matches!(c.poll_event(), Some(TurnEvent::Failed(_))));
        assert!(c.is_failed());
        assert!(t - now < Duration::from_secs(16));
    }

    #[test]
    fn refused_credentials_fail() {
        let now = Instant::now();
        let mut c = TurnClient::new(SERVER.parse().unwrap(), "u", "wrong");
        c.start(now);
        let first = c.poll_transmit().unwrap();
        c.handle_datagram(
            now,
            &reply(&first, Class::Error, err(401, realm_nonce("n")), None),
        );
        let second = c.poll_transmit().unwrap();
        c.handle_datagram(
            now,
            &reply(&second, Class::Error, err(401, realm_nonce("n")), None),
        );
        match c.poll_event() {
            Some(TurnEvent::Failed(r)) => assert!(r.contains("401"), "{r}"),
            e => panic!("{e:?}"),
        }
    }
}
