//! TURN client (RFC 8656, formerly RFC 5766), sans-IO: it takes messages from the TURN
//! server and `now`, and hands back messages for the server and events. The messages
//! travel as UDP datagrams, or framed on a TCP connection (`turn:…?transport=tcp`, RFC
//! 8656 §3.1: TURN over TCP to the server, relaying UDP to peers), or on TLS over TCP
//! (`turns:`, RFC 7065; ALPN `stun.turn`, RFC 7443); over a stream a request is sent
//! once ([`TurnClient::reliable`]) and the driver splits the stream with
//! `turn::framing::StreamFramer`.
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
//! Messages are built and read with the workspace's STUN codec (`turn::stun`, through
//! [`super::stun`]).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::stun::{
    attr, integrity_ok, long_term_key, method, read_xor_address, xor_address, Class, Message,
    TransactionId,
};

/// First retransmission timeout of a request (RFC 5389 §7.2.1); it doubles per send.
pub const TURN_RTO: Duration = Duration::from_millis(500);
/// Sends of one request before the transaction fails (500 ms … 8 s, then a last 16 s
/// wait: about 31 s in all).
pub const TURN_TRIES_MAX: u32 = 6;
/// Over TCP a request is sent once and fails after this (RFC 8489 §6.2.2: 39.5 s).
pub const TURN_RELIABLE_TIMEOUT: Duration = Duration::from_millis(39_500);
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
    rng: ChaCha8Rng,
    /// Over a reliable transport (TCP): no retransmissions.
    reliable: bool,
}

impl TurnClient {
    /// A client for `server`; `seed` drives its transaction ids (randomness comes from
    /// outside: the engine's generator).
    pub fn new(server: SocketAddr, username: &str, password: &str, seed: u64) -> TurnClient {
        TurnClient {
            rng: ChaCha8Rng::seed_from_u64(seed),
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
            reliable: false,
        }
    }

    /// Over a reliable transport (TCP): requests are sent once and time out after
    /// [`TURN_RELIABLE_TIMEOUT`].
    pub fn reliable(mut self) -> TurnClient {
        self.reliable = true;
        self
    }

    /// The transport to the server was lost (a closed TCP connection): the allocation
    /// is gone.
    pub fn lost(&mut self, reason: &str) {
        if self.state != State::Failed {
            self.fail(reason.to_string());
        }
    }

    fn new_tid(&mut self) -> TransactionId {
        let mut t = [0u8; 12];
        self.rng.fill_bytes(&mut t);
        t
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
        let tid = self.new_tid();
        let bytes = self.build(kind, tid);
        self.push_out(bytes.clone());
        let next = now
            + if self.reliable {
                TURN_RELIABLE_TIMEOUT
            } else {
                TURN_RTO
            };
        self.transactions.push(Transaction {
            tid,
            kind,
            bytes,
            sends: 1,
            next,
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
        let tid = self.new_tid();
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
            if t.sends >= TURN_TRIES_MAX || self.reliable {
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
    Message::decode(b).is_some_and(|m| m.get(attr::USERNAME).is_some())
}

/// How the client reaches its TURN server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnTransport {
    Udp,
    Tcp,
    /// TLS over TCP (`turns:`); the URL's host is the name checked against the
    /// server's certificate (and sent as SNI).
    Tls,
}

/// `turn:host[:port][?transport=udp|tcp]` or `turns:host[:port][?transport=tcp]` →
/// `(host, port, transport)`. The port defaults to 3478 (`turn:`) or 5349 (`turns:`,
/// RFC 7065). `turns:` with `transport=udp` (DTLS) is refused: not supported.
pub fn parse_turn_url(s: &str) -> Result<(String, u16, TurnTransport), String> {
    let (rest, tls) = match (s.strip_prefix("turns:"), s.strip_prefix("turn:")) {
        (Some(r), _) => (r, true),
        (None, Some(r)) => (r, false),
        (None, None) => {
            return Err(format!(
                "TURN url {s:?}: expected turn:host[:port][?transport=udp|tcp] or turns:host[:port]"
            ))
        }
    };
    let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut transport = if tls {
        TurnTransport::Tls
    } else {
        TurnTransport::Udp
    };
    for kv in query.split('&').filter(|q| !q.is_empty()) {
        if let Some(t) = kv.strip_prefix("transport=") {
            transport = match (tls, t.to_ascii_lowercase().as_str()) {
                (false, "udp") => TurnTransport::Udp,
                (false, "tcp") => TurnTransport::Tcp,
                (true, "tcp") => TurnTransport::Tls,
                (true, "udp") => {
                    return Err(format!(
                        "TURN url {s:?}: turns: over UDP (DTLS) is not supported; use turns:…?transport=tcp"
                    ))
                }
                _ => return Err(format!("TURN url {s:?}: transport must be udp or tcp")),
            };
        }
    }
    let default_port = if tls { 5349 } else { 3478 };
    let (host, port) = super::url::host_port(hostport, default_port)
        .map_err(|e| format!("TURN url {s:?}: {e}"))?;
    Ok((host, port, transport))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::fingerprint_ok;

    #[test]
    fn turn_urls() {
        assert_eq!(
            parse_turn_url("turn:127.0.0.1:3479?transport=udp").unwrap(),
            ("127.0.0.1".to_string(), 3479, TurnTransport::Udp)
        );
        assert_eq!(
            parse_turn_url("turn:t").unwrap(),
            ("t".to_string(), 3478, TurnTransport::Udp)
        );
        assert_eq!(
            parse_turn_url("turn:[::1]:5000?transport=TCP").unwrap(),
            ("::1".to_string(), 5000, TurnTransport::Tcp)
        );
        assert!(parse_turn_url("turn:t?transport=sctp").is_err());
        assert_eq!(
            parse_turn_url("turns:turn.example").unwrap(),
            ("turn.example".to_string(), 5349, TurnTransport::Tls)
        );
        assert_eq!(
            parse_turn_url("turns:127.0.0.1:443?transport=tcp").unwrap(),
            ("127.0.0.1".to_string(), 443, TurnTransport::Tls)
        );
        let e = parse_turn_url("turns:t:5349?transport=udp").unwrap_err();
        assert!(e.contains("DTLS"), "{e}");
        assert!(parse_turn_url("stun:t").is_err());
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
        let mut c = TurnClient::new(SERVER.parse().unwrap(), "1:mesh", "pw", 1);
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
        let mut c = TurnClient::new(SERVER.parse().unwrap(), "u", "p", 2);
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
    fn over_tcp_a_request_is_sent_once() {
        let now = Instant::now();
        let mut c = TurnClient::new(SERVER.parse().unwrap(), "u", "p", 2).reliable();
        c.start(now);
        assert!(c.poll_transmit().is_some());
        assert_eq!(c.poll_timeout(), Some(now + TURN_RELIABLE_TIMEOUT));
        c.handle_timeout(now + TURN_RELIABLE_TIMEOUT);
        assert!(c.poll_transmit().is_none(), "no retransmission over TCP");
        assert!(matches!(c.poll_event(), Some(TurnEvent::Failed(_))));
        // A lost connection fails an allocation at once.
        let mut c = TurnClient::new(SERVER.parse().unwrap(), "u", "p", 3).reliable();
        c.start(now);
        c.lost("TCP connection closed");
        assert!(c.is_failed());
        assert!(matches!(c.poll_event(), Some(TurnEvent::Failed(r)) if r.contains("closed")));
    }

    #[test]
    fn refused_credentials_fail() {
        let now = Instant::now();
        let mut c = TurnClient::new(SERVER.parse().unwrap(), "u", "wrong", 3);
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
