//! One shard's TURN server (RFC 8656; RFC 5766 clients accepted), sans-IO.
//!
//! The driver feeds it what arrives and `now` (Unix nanoseconds), and does what it
//! answers:
//! * [`Server::on_client`]: a datagram (or one framed message of a stream) from a
//!   client's 5-tuple ([`ClientKey`]). Answers [`Action::Reply`] (bytes it appended to
//!   `out`, for the same 5-tuple), [`Action::Relay`] (a payload, a range of the input,
//!   to send from a relay socket to a peer) or [`Action::None`].
//! * [`Server::on_peer`]: a datagram that arrived on relay socket [`RelayId`] from a
//!   peer. Appends the ChannelData or Data indication for the client to `out` and says
//!   which client.
//! * [`Server::sweep`] (about once a second): ends allocations whose lifetime or
//!   credential has expired, drops expired permissions and channels.
//! * [`Server::revoke`]: a pairing was revoked: that peer's allocations end and its
//!   older credentials are refused from now on.
//! * [`Server::client_closed`]: a stream (TCP) client went away: its allocation ends.
//!
//! Relay sockets are the driver's: the server picks a port of its range and asks
//! [`Relays::open`]; it calls [`Relays::close`] when an allocation ends.
//!
//! Every table is bounded by a [`Config`] limit, and every refusal is counted in
//! [`Stats`] (for `/metrics`) with the RFC's code: 401 with a fresh nonce, 438 Stale
//! Nonce, 437 Allocation Mismatch, 441 Wrong Credentials, 486 Allocation Quota
//! Reached, 508 Insufficient Capacity, 403 Forbidden, 400, 420, 440, 442, 443.
//! Malformed input is dropped and counted, never answered with a panic.

mod alloc;
mod ports;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use slab::Slab;

use crate::auth::{self, NonceCheck, Nonces};
use crate::framing::{self, CHANNEL_MAX, CHANNEL_MIN};
use crate::policy::{PeerPolicy, Verdict};
use crate::stun::{self, attr, method, Builder, Class, Msg, TransactionId};
use alloc::{Allocation, Channel, Permission};
use ports::{PortPool, Revocations, Rng};

/// Unix time in nanoseconds.
pub type Nanos = u64;
/// One second in [`Nanos`].
pub const SEC: Nanos = 1_000_000_000;

/// Permissions last this long (RFC 8656 §9: 300 s), refreshed by CreatePermission and
/// ChannelBind.
pub const PERMISSION_LIFETIME: Nanos = 300 * SEC;
/// Channel bindings last this long (RFC 8656 §12: 10 minutes).
pub const CHANNEL_LIFETIME: Nanos = 600 * SEC;
/// The default allocation lifetime (RFC 8656 §7.2: 10 minutes).
pub const LIFETIME_DEFAULT_SECS: u64 = 600;
/// How long the answer to an Allocate is kept for its retransmissions: a client gives
/// up on a transaction after 39.5 s (RFC 8489 §6.2.1, Rc = 7, RTO 500 ms).
pub const ALLOCATE_RETRANSMIT_WINDOW: Nanos = 40 * SEC;
/// Relay ports tried (each bind refused as in use) before an Allocate gets 508.
pub const PORT_TRIES_MAX: usize = 8;
/// Longest USERNAME accepted (RFC 8489 §14.3: less than 509 bytes).
pub const USERNAME_BYTES_MAX: usize = 508;

/// How a client reaches the server: a UDP listening socket (its index) or a stream
/// connection (its id). With the client's address it is the 5-tuple an allocation
/// belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp(u16),
    Tcp(u32),
}

/// A client's 5-tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl ClientKey {
    pub fn is_stream(&self) -> bool {
        matches!(self.transport, Transport::Tcp(_))
    }
}

/// A relay socket: its slot (dense, reused) and a generation (so a slot reused by a new
/// allocation never receives the old one's traffic).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RelayId(pub u64);

impl RelayId {
    fn new(slot: usize, gen: u32) -> RelayId {
        RelayId(u64::from(gen) << 32 | slot as u64)
    }

    /// The slot, dense from 0: a driver can index a `Vec` with it.
    pub fn slot(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
}

/// Why a relay socket could not be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// The port is taken (by another program): the server tries another.
    InUse,
    /// Anything else (out of file descriptors): 508.
    Failed,
}

/// The driver's relay sockets.
pub trait Relays {
    /// Opens the relay socket of allocation `id` on `port`.
    fn open(&mut self, id: RelayId, port: u16) -> Result<(), OpenError>;
    /// Closes it (the allocation ended).
    fn close(&mut self, id: RelayId);
}

/// What to do with a client's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing (absorbed, or dropped and counted).
    None,
    /// Send `out[range]` to the client (same 5-tuple).
    Reply(Range<usize>),
    /// Send `input[payload]` from relay `relay` to `peer`.
    Relay {
        relay: RelayId,
        peer: SocketAddr,
        payload: Range<usize>,
    },
}

/// The server's settings (one per shard; immutable).
#[derive(Clone, Debug)]
pub struct Config {
    /// REALM of the long-term credentials (`--turn-realm`).
    pub realm: String,
    /// The TURN REST shared secret (`TURN_SECRET`).
    pub secret: Vec<u8>,
    pub nonces: Nonces,
    /// The relayed address's IP (what clients and their peers see).
    pub relay_ip: IpAddr,
    /// This shard's relay ports (inclusive).
    pub ports: (u16, u16),
    /// Largest allocation lifetime granted (`--turn-lifetime-max`).
    pub lifetime_max_secs: u64,
    /// Allocations on this shard (`--turn-allocations-per-shard-max`; over: 508).
    pub allocations_max: usize,
    /// Allocations of one peer id on this shard (`--turn-allocations-per-user-max`;
    /// over: 486).
    pub allocations_per_user_max: usize,
    /// Allocations of one client IP on this shard (`--turn-allocations-per-ip-max`;
    /// over: 486).
    pub allocations_per_ip_max: usize,
    /// Permissions per allocation (`--turn-permissions-max`; over: 508).
    pub permissions_max: usize,
    /// Channels per allocation (`--turn-channels-max`; over: 508).
    pub channels_max: usize,
    /// Relayed bytes per second per allocation, both ways together
    /// (`--turn-allocation-bytes-per-sec-max`; over: dropped; 0: no limit).
    pub bytes_per_sec_max: u64,
    pub policy: PeerPolicy,
    /// Lifetime of the REST credentials the server hands out (to tell when a
    /// credential was issued from its expiry, for revocation).
    pub credential_ttl_secs: u64,
    /// Revoked peers remembered per shard (see `ports::Revocations`).
    pub revoked_max: usize,
}

/// Refusals, each answered with its code and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no or wrong credentials, an expired or revoked credential.
    Unauthorized,
    /// 438: a stale or foreign nonce.
    StaleNonce,
    /// 437: Allocate on a 5-tuple that has an allocation, or a request on one without.
    Mismatch,
    /// 441: another user name than the allocation's.
    WrongCredentials,
    /// 486: the peer id's allocations on this shard.
    UserQuota,
    /// 486: the client IP's allocations on this shard.
    IpQuota,
    /// 508: the shard's allocations.
    ShardFull,
    /// 508: no relay port could be opened.
    RelayPorts,
    /// 508: the allocation's permissions.
    Permissions,
    /// 508: the allocation's channels.
    Channels,
    /// 403: the peer address is refused by the policy.
    PeerForbidden,
    /// 400: a missing or malformed attribute.
    BadRequest,
    /// 420: an unknown comprehension-required attribute.
    UnknownAttribute,
    /// 442: a transport other than UDP.
    Transport,
    /// 440/443: an address family the relay does not have.
    AddressFamily,
}

impl Refusal {
    pub const ALL: [Refusal; 15] = [
        Refusal::Unauthorized,
        Refusal::StaleNonce,
        Refusal::Mismatch,
        Refusal::WrongCredentials,
        Refusal::UserQuota,
        Refusal::IpQuota,
        Refusal::ShardFull,
        Refusal::RelayPorts,
        Refusal::Permissions,
        Refusal::Channels,
        Refusal::PeerForbidden,
        Refusal::BadRequest,
        Refusal::UnknownAttribute,
        Refusal::Transport,
        Refusal::AddressFamily,
    ];

    /// The `reason` label in `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "unauthorized",
            Refusal::StaleNonce => "stale_nonce",
            Refusal::Mismatch => "allocation_mismatch",
            Refusal::WrongCredentials => "wrong_credentials",
            Refusal::UserQuota => "user_quota",
            Refusal::IpQuota => "ip_quota",
            Refusal::ShardFull => "shard_capacity",
            Refusal::RelayPorts => "relay_ports",
            Refusal::Permissions => "permissions",
            Refusal::Channels => "channels",
            Refusal::PeerForbidden => "peer_forbidden",
            Refusal::BadRequest => "bad_request",
            Refusal::UnknownAttribute => "unknown_attribute",
            Refusal::Transport => "transport",
            Refusal::AddressFamily => "address_family",
        }
    }

    fn code(self) -> (u16, &'static str) {
        match self {
            Refusal::Unauthorized => (401, "Unauthorized"),
            Refusal::StaleNonce => (438, "Stale Nonce"),
            Refusal::Mismatch => (437, "Allocation Mismatch"),
            Refusal::WrongCredentials => (441, "Wrong Credentials"),
            Refusal::UserQuota | Refusal::IpQuota => (486, "Allocation Quota Reached"),
            Refusal::ShardFull | Refusal::RelayPorts | Refusal::Permissions | Refusal::Channels => {
                (508, "Insufficient Capacity")
            }
            Refusal::PeerForbidden => (403, "Forbidden"),
            Refusal::BadRequest => (400, "Bad Request"),
            Refusal::UnknownAttribute => (420, "Unknown Attribute"),
            Refusal::Transport => (442, "Unsupported Transport Protocol"),
            Refusal::AddressFamily => (440, "Address Family not Supported"),
        }
    }
}

/// Messages dropped without an answer, counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Not STUN or ChannelData, or a malformed one (bad length, truncated attribute,
    /// too many attributes, fingerprint mismatch).
    Malformed,
    /// Data (Send, ChannelData) on a 5-tuple without an allocation, or from a peer to a
    /// relay whose allocation is gone.
    NoAllocation,
    /// Data to or from a peer without a permission.
    NoPermission,
    /// ChannelData on a channel that is not bound.
    UnknownChannel,
    /// Over `--turn-allocation-bytes-per-sec-max`.
    Rate,
    /// A Send indication to an address the policy refuses (the server's own listen
    /// port).
    PeerForbidden,
    /// A response or an indication a server does not take.
    Unexpected,
}

impl Dropped {
    pub const ALL: [Dropped; 7] = [
        Dropped::Malformed,
        Dropped::NoAllocation,
        Dropped::NoPermission,
        Dropped::UnknownChannel,
        Dropped::Rate,
        Dropped::PeerForbidden,
        Dropped::Unexpected,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dropped::Malformed => "malformed",
            Dropped::NoAllocation => "no_allocation",
            Dropped::NoPermission => "no_permission",
            Dropped::UnknownChannel => "unknown_channel",
            Dropped::Rate => "rate",
            Dropped::PeerForbidden => "peer_forbidden",
            Dropped::Unexpected => "unexpected",
        }
    }
}

/// What the server counted (per shard; `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub allocations_created: u64,
    /// Ended by their lifetime, a credential's expiry, Refresh 0, a closed stream.
    pub allocations_ended: u64,
    /// Ended by a revocation.
    pub allocations_revoked: u64,
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
    pub refused: [u64; 15],
    pub dropped: [u64; 7],
}

impl Stats {
    pub fn refused(&self, r: Refusal) -> u64 {
        self.refused[r as usize]
    }
    pub fn dropped(&self, d: Dropped) -> u64 {
        self.dropped[d as usize]
    }
}

/// One shard's TURN server.
pub struct Server {
    cfg: Config,
    allocs: Slab<Allocation>,
    /// Generation of each slot (bumped when its allocation ends).
    gens: Vec<u32>,
    by_client: HashMap<ClientKey, usize>,
    per_ip: HashMap<IpAddr, u32>,
    per_user: HashMap<Box<str>, u32>,
    ports: PortPool,
    revoked: Revocations,
    rng: Rng,
    pub stats: Stats,
}

/// An authenticated request's credentials.
struct Authed {
    key: [u8; 16],
    cred_expiry: u64,
    /// Where the peer id starts in the USERNAME.
    peer_at: usize,
}

fn secs(now: Nanos) -> u64 {
    now / SEC
}

/// Attribute types this server understands in requests (others in the
/// comprehension-required range get 420).
fn understood(ty: u16) -> bool {
    matches!(
        ty,
        attr::MAPPED_ADDRESS
            | attr::USERNAME
            | attr::ERROR_CODE
            | attr::UNKNOWN_ATTRIBUTES
            | attr::CHANNEL_NUMBER
            | attr::LIFETIME
            | attr::XOR_PEER_ADDRESS
            | attr::DATA
            | attr::REALM
            | attr::NONCE
            | attr::XOR_RELAYED_ADDRESS
            | attr::REQUESTED_ADDRESS_FAMILY
            | attr::EVEN_PORT
            | attr::REQUESTED_TRANSPORT
            | attr::XOR_MAPPED_ADDRESS
            | attr::PRIORITY
            | attr::USE_CANDIDATE
    ) || ty >= 0x8000
}

fn family_byte(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        1
    } else {
        2
    }
}

impl Server {
    /// A server with `cfg`; `seed` drives its random choices (relay ports, transaction
    /// ids of Data indications).
    pub fn new(cfg: Config, seed: u64) -> Server {
        Server {
            ports: PortPool::new(cfg.ports.0, cfg.ports.1),
            revoked: Revocations::new(cfg.revoked_max),
            cfg,
            allocs: Slab::new(),
            gens: Vec::new(),
            by_client: HashMap::new(),
            per_ip: HashMap::new(),
            per_user: HashMap::new(),
            rng: Rng::new(seed),
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Allocations held now.
    pub fn allocations(&self) -> usize {
        self.allocs.len()
    }

    /// Revoked peers remembered (bounded by `Config::revoked_max`).
    pub fn revoked_peers(&self) -> usize {
        self.revoked.len()
    }

    /// Relay ports free on this shard.
    pub fn ports_free(&self) -> usize {
        self.ports.len()
    }

    /// The relayed address of the allocation on `client`'s 5-tuple, if any.
    pub fn relayed_address(&self, client: &ClientKey) -> Option<SocketAddr> {
        let k = *self.by_client.get(client)?;
        Some(SocketAddr::new(self.cfg.relay_ip, self.allocs[k].port))
    }

    fn refuse_count(&mut self, r: Refusal) {
        self.stats.refused[r as usize] += 1;
    }

    fn drop_count(&mut self, d: Dropped) -> Action {
        self.stats.dropped[d as usize] += 1;
        Action::None
    }

    // ---- client side ---------------------------------------------------------------

    /// A message from a client (see the module comment).
    pub fn on_client(
        &mut self,
        now: Nanos,
        client: ClientKey,
        pkt: &[u8],
        relays: &mut dyn Relays,
        out: &mut Vec<u8>,
    ) -> Action {
        if framing::is_channel_data(pkt) {
            return self.client_channel_data(now, client, pkt);
        }
        let m = match stun::parse(pkt) {
            Ok(m) => m,
            Err(_) => return self.drop_count(Dropped::Malformed),
        };
        match m.class {
            Class::Request => self.request(now, client, &m, relays, out),
            Class::Indication if m.method == method::SEND => self.send_indication(now, client, &m),
            _ => self.drop_count(Dropped::Unexpected),
        }
    }

    fn client_channel_data(&mut self, now: Nanos, client: ClientKey, pkt: &[u8]) -> Action {
        let Some((number, payload)) = framing::parse_channel_data(pkt) else {
            return self.drop_count(Dropped::Malformed);
        };
        let Some(&k) = self.by_client.get(&client) else {
            return self.drop_count(Dropped::NoAllocation);
        };
        let rate = self.cfg.bytes_per_sec_max;
        let a = &mut self.allocs[k];
        let Some(ch) = a.channel_by_number(number, now) else {
            return self.drop_count(Dropped::UnknownChannel);
        };
        let peer = ch.peer;
        let Some(p) = a.permission(peer.ip(), now) else {
            return self.drop_count(Dropped::NoPermission);
        };
        if p.own && self.cfg.policy.check(peer) != Verdict::Allowed {
            return self.drop_count(Dropped::PeerForbidden);
        }
        if !a.take_tokens(payload.len(), rate, now) {
            return self.drop_count(Dropped::Rate);
        }
        let relay = a.relay;
        self.stats.to_peer_packets += 1;
        self.stats.to_peer_bytes += payload.len() as u64;
        Action::Relay {
            relay,
            peer,
            payload: 4..4 + payload.len(),
        }
    }

    fn send_indication(&mut self, now: Nanos, client: ClientKey, m: &Msg<'_>) -> Action {
        if m.types().any(|t| !understood(t)) {
            // RFC 8489 §6.3.2: an indication with unknown comprehension-required
            // attributes is discarded.
            return self.drop_count(Dropped::Unexpected);
        }
        let Some(&k) = self.by_client.get(&client) else {
            return self.drop_count(Dropped::NoAllocation);
        };
        let (Some(peer), Some(data)) = (m.xor_address(attr::XOR_PEER_ADDRESS), m.get(attr::DATA))
        else {
            return self.drop_count(Dropped::Malformed);
        };
        let rate = self.cfg.bytes_per_sec_max;
        let relay_v4 = self.cfg.relay_ip.is_ipv4();
        let a = &mut self.allocs[k];
        if peer.is_ipv4() != relay_v4 {
            return self.drop_count(Dropped::PeerForbidden);
        }
        let Some(p) = a.permission(peer.ip(), now) else {
            return self.drop_count(Dropped::NoPermission);
        };
        if p.own && self.cfg.policy.check(peer) != Verdict::Allowed {
            return self.drop_count(Dropped::PeerForbidden);
        }
        if !a.take_tokens(data.len(), rate, now) {
            return self.drop_count(Dropped::Rate);
        }
        let relay = a.relay;
        // The DATA value's place in the input (a sub-slice of it).
        let start = data.as_ptr() as usize - m.raw().as_ptr() as usize;
        self.stats.to_peer_packets += 1;
        self.stats.to_peer_bytes += data.len() as u64;
        Action::Relay {
            relay,
            peer,
            payload: start..start + data.len(),
        }
    }

    fn request(
        &mut self,
        now: Nanos,
        client: ClientKey,
        m: &Msg<'_>,
        relays: &mut dyn Relays,
        out: &mut Vec<u8>,
    ) -> Action {
        let unknown: Vec<u16> = m.types().filter(|t| !understood(*t)).take(8).collect();
        if !unknown.is_empty() {
            self.refuse_count(Refusal::UnknownAttribute);
            let mut list = Vec::with_capacity(unknown.len() * 2);
            for t in &unknown {
                list.extend_from_slice(&t.to_be_bytes());
            }
            return self.error(out, m, Refusal::UnknownAttribute, None, |b| {
                b.attr(attr::UNKNOWN_ATTRIBUTES, &list);
            });
        }
        if m.method == method::BINDING {
            let r = self.respond(out, m, Class::Success, None, |b| {
                b.xor_address(attr::XOR_MAPPED_ADDRESS, client.addr);
            });
            return Action::Reply(r);
        }
        if !matches!(
            m.method,
            method::ALLOCATE | method::REFRESH | method::CREATE_PERMISSION | method::CHANNEL_BIND
        ) {
            self.refuse_count(Refusal::BadRequest);
            return self.error(out, m, Refusal::BadRequest, None, |_| {});
        }
        let existing = self.by_client.get(&client).copied();
        // A retransmitted Allocate gets the answer the first one got (before any other
        // check: it is the same request, and the answer is already built).
        if m.method == method::ALLOCATE {
            if let Some(k) = existing {
                if let Some((tid, resp)) = &self.allocs[k].allocate {
                    if *tid == m.tid {
                        let start = out.len();
                        out.extend_from_slice(resp);
                        return Action::Reply(start..out.len());
                    }
                }
            }
        }
        let auth = match self.authenticate(now, client, m, existing, out) {
            Ok(a) => a,
            Err(action) => return action,
        };
        if let Some(k) = existing {
            // The client moved on from its Allocate: its answer is no longer needed.
            if m.method != method::ALLOCATE {
                self.allocs[k].allocate = None;
            }
        }
        match m.method {
            method::ALLOCATE => self.allocate(now, client, m, auth, existing, relays, out),
            method::REFRESH => self.refresh(now, m, auth, existing, relays, out),
            method::CREATE_PERMISSION => self.create_permission(now, m, auth, existing, out),
            _ => self.channel_bind(now, m, auth, existing, out),
        }
    }

    /// The long-term credential check (RFC 8489 §9.2.4) with TURN REST user names.
    fn authenticate(
        &mut self,
        now: Nanos,
        client: ClientKey,
        m: &Msg<'_>,
        existing: Option<usize>,
        out: &mut Vec<u8>,
    ) -> Result<Authed, Action> {
        if !m.has_integrity() {
            return Err(self.challenge(now, client, out, m, Refusal::Unauthorized));
        }
        let (Some(user), Some(realm), Some(nonce)) = (
            m.get(attr::USERNAME),
            m.get(attr::REALM),
            m.get(attr::NONCE),
        ) else {
            self.refuse_count(Refusal::BadRequest);
            return Err(self.error(out, m, Refusal::BadRequest, None, |_| {}));
        };
        if user.len() > USERNAME_BYTES_MAX {
            self.refuse_count(Refusal::BadRequest);
            return Err(self.error(out, m, Refusal::BadRequest, None, |_| {}));
        }
        match self.cfg.nonces.check(nonce, secs(now), client.addr) {
            NonceCheck::Fresh => {}
            NonceCheck::Stale | NonceCheck::Invalid => {
                return Err(self.challenge(now, client, out, m, Refusal::StaleNonce));
            }
        }
        if realm != self.cfg.realm.as_bytes() {
            return Err(self.challenge(now, client, out, m, Refusal::Unauthorized));
        }
        let Some(username) = std::str::from_utf8(user).ok() else {
            return Err(self.challenge(now, client, out, m, Refusal::Unauthorized));
        };
        let Some(rest) = auth::parse_rest_user(username) else {
            return Err(self.challenge(now, client, out, m, Refusal::Unauthorized));
        };
        let issued = rest.expiry.saturating_sub(self.cfg.credential_ttl_secs);
        if rest.expiry < secs(now) || self.revoked.refuses(rest.peer, issued) {
            return Err(self.challenge(now, client, out, m, Refusal::Unauthorized));
        }
        let peer_at = username.len() - rest.peer.len();
        let cached = existing
            .map(|k| &self.allocs[k])
            .filter(|a| &*a.username == username)
            .map(|a| a.key);
        let key = cached.unwrap_or_else(|| {
            let password = auth::rest_password(&self.cfg.secret, username);
            auth::long_term_key(username, &self.cfg.realm, &password)
        });
        if !m.verify(&key) {
            return Err(self.challenge(now, client, out, m, Refusal::Unauthorized));
        }
        if let Some(k) = existing {
            if &*self.allocs[k].username != username {
                self.refuse_count(Refusal::WrongCredentials);
                return Err(self.error(out, m, Refusal::WrongCredentials, Some(&key), |_| {}));
            }
        }
        Ok(Authed {
            key,
            cred_expiry: rest.expiry,
            peer_at,
        })
    }

    /// 401 or 438 with REALM and a fresh NONCE (and no MESSAGE-INTEGRITY).
    fn challenge(
        &mut self,
        now: Nanos,
        client: ClientKey,
        out: &mut Vec<u8>,
        m: &Msg<'_>,
        r: Refusal,
    ) -> Action {
        self.refuse_count(r);
        let nonce = self.cfg.nonces.make(secs(now), client.addr);
        self.error(out, m, r, None, |b| {
            b.attr(attr::REALM, self.cfg.realm.as_bytes())
                .attr(attr::NONCE, &nonce);
        })
    }

    /// An error response (with MESSAGE-INTEGRITY when `key`).
    fn error(
        &self,
        out: &mut Vec<u8>,
        m: &Msg<'_>,
        r: Refusal,
        key: Option<&[u8]>,
        extra: impl FnOnce(&mut Builder<'_>),
    ) -> Action {
        let (mut code, mut reason) = r.code();
        if r == Refusal::AddressFamily && m.method != method::ALLOCATE {
            (code, reason) = (443, "Peer Address Family Mismatch");
        }
        Action::Reply(self.respond(out, m, Class::Error, key, |b| {
            b.error_code(code, reason);
            extra(b);
        }))
    }

    /// A response to `m`: its attributes, then MESSAGE-INTEGRITY(-SHA256) with `key` (the
    /// kind the request used) and FINGERPRINT when the request had one.
    fn respond(
        &self,
        out: &mut Vec<u8>,
        m: &Msg<'_>,
        class: Class,
        key: Option<&[u8]>,
        attrs: impl FnOnce(&mut Builder<'_>),
    ) -> Range<usize> {
        let start = out.len();
        let mut b = Builder::new(out, m.method, class, m.tid);
        attrs(&mut b);
        if let Some(key) = key {
            if m.has_integrity_sha256() {
                b.integrity_sha256(key);
            } else {
                b.integrity(key);
            }
        }
        if m.fingerprint {
            b.fingerprint();
        }
        b.finish();
        start..out.len()
    }

    fn lifetime(&self, m: &Msg<'_>) -> u64 {
        let requested = m
            .u32(attr::LIFETIME)
            .map_or(LIFETIME_DEFAULT_SECS, u64::from);
        requested
            .min(self.cfg.lifetime_max_secs)
            .max(LIFETIME_DEFAULT_SECS.min(self.cfg.lifetime_max_secs))
    }

    #[allow(clippy::too_many_arguments)]
    fn allocate(
        &mut self,
        now: Nanos,
        client: ClientKey,
        m: &Msg<'_>,
        auth: Authed,
        existing: Option<usize>,
        relays: &mut dyn Relays,
        out: &mut Vec<u8>,
    ) -> Action {
        let key = auth.key;
        let refuse = |s: &mut Server, out: &mut Vec<u8>, r: Refusal| {
            s.refuse_count(r);
            s.error(out, m, r, Some(&key), |_| {})
        };
        if existing.is_some() {
            return refuse(self, out, Refusal::Mismatch);
        }
        match m.get(attr::REQUESTED_TRANSPORT) {
            None => return refuse(self, out, Refusal::BadRequest),
            Some(v) if v.len() != 4 => return refuse(self, out, Refusal::BadRequest),
            Some(v) if v[0] != 17 => return refuse(self, out, Refusal::Transport),
            Some(_) => {}
        }
        let requested = m.get(attr::REQUESTED_ADDRESS_FAMILY);
        if requested.is_some() && m.get(attr::ADDITIONAL_ADDRESS_FAMILY).is_some() {
            return refuse(self, out, Refusal::BadRequest);
        }
        if let Some(f) = requested {
            if f.len() != 4 || !matches!(f[0], 1 | 2) {
                return refuse(self, out, Refusal::BadRequest);
            }
            if f[0] != family_byte(self.cfg.relay_ip) {
                return refuse(self, out, Refusal::AddressFamily);
            }
        }
        let even = match m.get(attr::EVEN_PORT) {
            Some([_]) | Some([_, _, _, _]) => true,
            Some(_) => return refuse(self, out, Refusal::BadRequest),
            None => false,
        };
        if self.allocs.len() >= self.cfg.allocations_max {
            return refuse(self, out, Refusal::ShardFull);
        }
        let username =
            std::str::from_utf8(m.get(attr::USERNAME).unwrap_or_default()).unwrap_or_default();
        let peer = &username[auth.peer_at..];
        if self.per_user.get(peer).copied().unwrap_or(0) as usize
            >= self.cfg.allocations_per_user_max
        {
            return refuse(self, out, Refusal::UserQuota);
        }
        let ip = client.addr.ip();
        if self.per_ip.get(&ip).copied().unwrap_or(0) as usize >= self.cfg.allocations_per_ip_max {
            return refuse(self, out, Refusal::IpQuota);
        }
        // A relay socket on a free port of this shard's range.
        let slot = self.allocs.vacant_key();
        if self.gens.len() <= slot {
            self.gens.resize(slot + 1, 0);
        }
        let relay = RelayId::new(slot, self.gens[slot]);
        let mut port = None;
        let mut busy = Vec::new();
        for _ in 0..PORT_TRIES_MAX {
            let Some(p) = self.ports.take(&mut self.rng, even) else {
                break;
            };
            match relays.open(relay, p) {
                Ok(()) => {
                    port = Some(p);
                    break;
                }
                Err(OpenError::InUse) => busy.push(p),
                Err(OpenError::Failed) => {
                    busy.push(p);
                    break;
                }
            }
        }
        for p in busy {
            self.ports.put(p);
        }
        let Some(port) = port else {
            return refuse(self, out, Refusal::RelayPorts);
        };
        let lifetime = self.lifetime(m);
        let relayed = SocketAddr::new(self.cfg.relay_ip, port);
        let r = self.respond(out, m, Class::Success, Some(&key), |b| {
            b.xor_address(attr::XOR_RELAYED_ADDRESS, relayed)
                .u32(attr::LIFETIME, lifetime as u32)
                .xor_address(attr::XOR_MAPPED_ADDRESS, client.addr);
        });
        let a = Allocation {
            client,
            relay,
            port,
            username: username.into(),
            peer_at: auth.peer_at as u16,
            cred_expiry: auth.cred_expiry,
            key,
            expires: now + lifetime * SEC,
            allocate: Some((m.tid, out[r.clone()].into())),
            allocated_at: now,
            permissions: Vec::new(),
            channels: Vec::new(),
            tokens: self.cfg.bytes_per_sec_max,
            filled: now,
        };
        let k = self.allocs.insert(a);
        debug_assert_eq!(k, slot);
        self.by_client.insert(client, k);
        *self.per_ip.entry(ip).or_insert(0) += 1;
        *self.per_user.entry(peer.into()).or_insert(0) += 1;
        self.stats.allocations_created += 1;
        Action::Reply(r)
    }

    fn refresh(
        &mut self,
        now: Nanos,
        m: &Msg<'_>,
        auth: Authed,
        existing: Option<usize>,
        relays: &mut dyn Relays,
        out: &mut Vec<u8>,
    ) -> Action {
        let key = auth.key;
        let Some(k) = existing else {
            self.refuse_count(Refusal::Mismatch);
            return self.error(out, m, Refusal::Mismatch, Some(&key), |_| {});
        };
        if let Some(f) = m.get(attr::REQUESTED_ADDRESS_FAMILY) {
            if f.first() != Some(&family_byte(self.cfg.relay_ip)) {
                self.refuse_count(Refusal::AddressFamily);
                return self.error(out, m, Refusal::AddressFamily, Some(&key), |_| {});
            }
        }
        let lifetime = if m.u32(attr::LIFETIME) == Some(0) {
            self.end(k, relays);
            self.stats.allocations_ended += 1;
            0
        } else {
            let l = self.lifetime(m);
            self.allocs[k].expires = now + l * SEC;
            l
        };
        Action::Reply(self.respond(out, m, Class::Success, Some(&key), |b| {
            b.u32(attr::LIFETIME, lifetime as u32);
        }))
    }

    /// Checks peers for a permission or a channel; `Err` is the refusal.
    fn check_peer(&self, peer: SocketAddr, with_port: bool) -> Result<bool, Refusal> {
        if peer.is_ipv4() != self.cfg.relay_ip.is_ipv4() {
            return Err(Refusal::AddressFamily);
        }
        let p = &self.cfg.policy;
        let v = if with_port {
            p.check(peer)
        } else {
            p.check_ip(peer.ip())
        };
        match v {
            Verdict::Allowed => Ok(p
                .own_ips
                .iter()
                .any(|o| crate::policy::canonical(*o) == crate::policy::canonical(peer.ip()))),
            Verdict::Denied(_) => Err(Refusal::PeerForbidden),
        }
    }

    /// Installs or refreshes permissions for `ips` (all or none); `Err` when over
    /// `--turn-permissions-max`.
    fn permit(&mut self, k: usize, ips: &[(IpAddr, bool)], now: Nanos) -> Result<(), Refusal> {
        let max = self.cfg.permissions_max;
        let a = &mut self.allocs[k];
        a.prune(now);
        let new = ips
            .iter()
            .enumerate()
            .filter(|(i, (ip, _))| {
                !a.permissions.iter().any(|p| p.ip == *ip)
                    && !ips[..*i].iter().any(|(o, _)| o == ip)
            })
            .count();
        if a.permissions.len() + new > max {
            return Err(Refusal::Permissions);
        }
        for &(ip, own) in ips {
            match a.permissions.iter_mut().find(|p| p.ip == ip) {
                Some(p) => p.expires = now + PERMISSION_LIFETIME,
                None => a.permissions.push(Permission {
                    ip,
                    expires: now + PERMISSION_LIFETIME,
                    own,
                }),
            }
        }
        Ok(())
    }

    fn create_permission(
        &mut self,
        now: Nanos,
        m: &Msg<'_>,
        auth: Authed,
        existing: Option<usize>,
        out: &mut Vec<u8>,
    ) -> Action {
        let key = auth.key;
        let Some(k) = existing else {
            self.refuse_count(Refusal::Mismatch);
            return self.error(out, m, Refusal::Mismatch, Some(&key), |_| {});
        };
        let mut ips: Vec<(IpAddr, bool)> = Vec::new();
        let mut refusal = None;
        for v in m.get_all(attr::XOR_PEER_ADDRESS) {
            let Some(peer) = stun::read_xor_address(v, &m.tid) else {
                refusal = Some(Refusal::BadRequest);
                break;
            };
            match self.check_peer(peer, false) {
                Ok(own) => ips.push((peer.ip(), own)),
                Err(r) => {
                    refusal = Some(r);
                    break;
                }
            }
        }
        if ips.is_empty() && refusal.is_none() {
            refusal = Some(Refusal::BadRequest);
        }
        if refusal.is_none() {
            refusal = self.permit(k, &ips, now).err();
        }
        if let Some(r) = refusal {
            self.refuse_count(r);
            return self.error(out, m, r, Some(&key), |_| {});
        }
        Action::Reply(self.respond(out, m, Class::Success, Some(&key), |_| {}))
    }

    fn channel_bind(
        &mut self,
        now: Nanos,
        m: &Msg<'_>,
        auth: Authed,
        existing: Option<usize>,
        out: &mut Vec<u8>,
    ) -> Action {
        let key = auth.key;
        let result = (|| {
            let k = existing.ok_or(Refusal::Mismatch)?;
            let number = match m.get(attr::CHANNEL_NUMBER) {
                Some(v) if v.len() == 4 => u16::from_be_bytes([v[0], v[1]]),
                _ => return Err(Refusal::BadRequest),
            };
            if !(CHANNEL_MIN..=CHANNEL_MAX).contains(&number) {
                return Err(Refusal::BadRequest);
            }
            let peer = m
                .xor_address(attr::XOR_PEER_ADDRESS)
                .ok_or(Refusal::BadRequest)?;
            let own = self.check_peer(peer, true)?;
            let max = self.cfg.channels_max;
            let a = &mut self.allocs[k];
            a.prune(now);
            // RFC 8656 §11.2: a number bound to another peer, or a peer bound to another
            // number, is a 400.
            if a.channels
                .iter()
                .any(|c| (c.number == number) != (c.peer == peer))
            {
                return Err(Refusal::BadRequest);
            }
            let bound = a.channels.iter().any(|c| c.number == number);
            if !bound && a.channels.len() >= max {
                return Err(Refusal::Channels);
            }
            self.permit(k, &[(peer.ip(), own)], now)?;
            let a = &mut self.allocs[k];
            match a.channels.iter_mut().find(|c| c.number == number) {
                Some(c) => c.expires = now + CHANNEL_LIFETIME,
                None => a.channels.push(Channel {
                    number,
                    peer,
                    expires: now + CHANNEL_LIFETIME,
                }),
            }
            Ok(())
        })();
        if let Err(r) = result {
            self.refuse_count(r);
            return self.error(out, m, r, Some(&key), |_| {});
        }
        Action::Reply(self.respond(out, m, Class::Success, Some(&key), |_| {}))
    }

    // ---- peer side -----------------------------------------------------------------

    /// A datagram from `peer` on relay socket `relay`: appends what goes to the client
    /// to `out` and returns the client, or `None` (dropped and counted).
    pub fn on_peer(
        &mut self,
        now: Nanos,
        relay: RelayId,
        peer: SocketAddr,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<ClientKey> {
        let rate = self.cfg.bytes_per_sec_max;
        let Some(a) = self
            .allocs
            .get_mut(relay.slot())
            .filter(|a| a.relay == relay)
        else {
            self.drop_count(Dropped::NoAllocation);
            return None;
        };
        if a.permission(peer.ip(), now).is_none() {
            self.drop_count(Dropped::NoPermission);
            return None;
        }
        if !a.take_tokens(data.len(), rate, now) {
            self.drop_count(Dropped::Rate);
            return None;
        }
        let client = a.client;
        match a.channel_by_peer(peer, now) {
            Some(c) => framing::write_channel_data(out, c.number, data, client.is_stream()),
            None => {
                let mut tid = [0u8; 12];
                tid[..8].copy_from_slice(&self.rng.next_u64().to_ne_bytes());
                tid[8..].copy_from_slice(&(self.rng.next_u64() as u32).to_ne_bytes());
                let mut b = Builder::new(out, method::DATA, Class::Indication, tid);
                b.xor_address(attr::XOR_PEER_ADDRESS, peer)
                    .attr(attr::DATA, data);
                b.finish();
            }
        }
        self.stats.to_client_packets += 1;
        self.stats.to_client_bytes += data.len() as u64;
        Some(client)
    }

    // ---- upkeep --------------------------------------------------------------------

    fn end(&mut self, k: usize, relays: &mut dyn Relays) {
        let a = self.allocs.remove(k);
        self.gens[k] = self.gens[k].wrapping_add(1);
        relays.close(a.relay);
        self.ports.put(a.port);
        self.by_client.remove(&a.client);
        let ip = a.client.addr.ip();
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        if let Some(n) = self.per_user.get_mut(a.peer()) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(a.peer());
            }
        }
    }

    /// Ends what has expired (lifetimes, credentials), prunes permissions and channels,
    /// forgets old Allocate answers and revocations. About once a second.
    pub fn sweep(&mut self, now: Nanos, relays: &mut dyn Relays) {
        let now_s = secs(now);
        let mut done = Vec::new();
        for (k, a) in self.allocs.iter_mut() {
            if a.expires <= now || a.cred_expiry < now_s {
                done.push(k);
                continue;
            }
            a.prune(now);
            if a.allocate.is_some()
                && now.saturating_sub(a.allocated_at) > ALLOCATE_RETRANSMIT_WINDOW
            {
                a.allocate = None;
            }
        }
        for k in done {
            self.end(k, relays);
            self.stats.allocations_ended += 1;
        }
        self.revoked.sweep(now_s, self.cfg.credential_ttl_secs);
    }

    /// The pairing of `peer` was revoked at `at_secs`: its allocations end now and its
    /// credentials issued until then are refused. Returns how many ended.
    pub fn revoke(&mut self, peer: &str, at_secs: u64, relays: &mut dyn Relays) -> usize {
        self.revoked.add(peer, at_secs);
        let done: Vec<usize> = self
            .allocs
            .iter()
            .filter(|(_, a)| a.peer() == peer)
            .map(|(k, _)| k)
            .collect();
        for &k in &done {
            self.end(k, relays);
        }
        self.stats.allocations_revoked += done.len() as u64;
        done.len()
    }

    /// A stream client's connection closed: its allocation ends (RFC 8656 §3.1).
    pub fn client_closed(&mut self, client: &ClientKey, relays: &mut dyn Relays) {
        if let Some(&k) = self.by_client.get(client) {
            self.end(k, relays);
            self.stats.allocations_ended += 1;
        }
    }

    /// Ends every allocation (graceful shutdown).
    pub fn release_all(&mut self, relays: &mut dyn Relays) {
        let all: Vec<usize> = self.allocs.iter().map(|(k, _)| k).collect();
        for k in all {
            self.end(k, relays);
            self.stats.allocations_ended += 1;
        }
    }
}
