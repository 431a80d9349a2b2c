//! The server on simulated time: every request, refusal, lifetime and quota, driven by
//! scripted clients and a fake relay-socket table.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::auth::{long_term_key, rest_credentials, Nonces};
use crate::policy::{Cidr, PeerPolicy};
use crate::stun::{parse, Message};

const SECRET: &[u8] = b"turn-secret";
const REALM: &str = "chatixia";
const T0: Nanos = 1_700_000_000 * SEC;
const RELAY_IP: &str = "203.0.113.5";

/// Relay sockets as a set; ports in `busy` refuse to open.
#[derive(Default)]
struct FakeRelays {
    open: HashSet<RelayId>,
    ports: Vec<(RelayId, u16)>,
    busy: HashSet<u16>,
    fail: bool,
}

impl Relays for FakeRelays {
    fn open(&mut self, id: RelayId, port: u16) -> Result<(), OpenError> {
        if self.fail {
            return Err(OpenError::Failed);
        }
        if self.busy.contains(&port) {
            return Err(OpenError::InUse);
        }
        assert!(self.open.insert(id), "relay {id:?} opened twice");
        self.ports.push((id, port));
        Ok(())
    }
    fn close(&mut self, id: RelayId) {
        assert!(self.open.remove(&id), "relay {id:?} closed but not open");
    }
}

fn config() -> Config {
    Config {
        realm: REALM.into(),
        secret: SECRET.to_vec(),
        nonces: Nonces::new([3; 32], 600),
        relay_ip: RELAY_IP.parse().unwrap(),
        ports: (50000, 50099),
        lifetime_max_secs: 3600,
        allocations_max: 100,
        allocations_per_user_max: 10,
        allocations_per_ip_max: 10,
        permissions_max: 4,
        channels_max: 3,
        bytes_per_sec_max: 0,
        policy: PeerPolicy {
            allow: vec![],
            deny: vec![],
            listen: vec!["203.0.113.5:3478".parse().unwrap()],
            own_ips: vec![RELAY_IP.parse().unwrap()],
            relay_ports: (50000, 50199),
        },
        credential_ttl_secs: 86_400,
        revoked_max: 16,
    }
}

struct Rig {
    s: Server,
    relays: FakeRelays,
    now: Nanos,
    out: Vec<u8>,
}

impl Rig {
    fn new() -> Rig {
        Rig::with(config())
    }
    fn with(cfg: Config) -> Rig {
        Rig {
            s: Server::new(cfg, 42),
            relays: FakeRelays::default(),
            now: T0,
            out: Vec::new(),
        }
    }
    /// Sends `pkt` from `c`; returns the reply (parsed bytes) or the action.
    fn send(&mut self, c: ClientKey, pkt: &[u8]) -> Action {
        self.out.clear();
        self.s
            .on_client(self.now, c, pkt, &mut self.relays, &mut self.out)
    }
    fn reply(&mut self, c: ClientKey, pkt: &[u8]) -> Vec<u8> {
        match self.send(c, pkt) {
            Action::Reply(r) => self.out[r].to_vec(),
            a => panic!("expected a reply, got {a:?}"),
        }
    }
    fn advance(&mut self, secs: u64) {
        self.now += secs * SEC;
    }
    fn sweep(&mut self) {
        self.s.sweep(self.now, &mut self.relays);
    }
}

fn udp(addr: &str) -> ClientKey {
    ClientKey {
        transport: Transport::Udp(0),
        addr: addr.parse().unwrap(),
    }
}

/// A scripted TURN client with REST credentials for `peer`.
struct Client {
    key: ClientKey,
    username: String,
    password: String,
    nonce: Option<Vec<u8>>,
    seq: u8,
    sha256: bool,
}

impl Client {
    fn new(addr: &str, peer: &str, expiry: u64) -> Client {
        let (username, password) = rest_credentials(SECRET, expiry, peer);
        Client {
            key: udp(addr),
            username,
            password,
            nonce: None,
            seq: 0,
            sha256: false,
        }
    }
    fn tid(&mut self) -> TransactionId {
        self.seq += 1;
        [self.seq; 12]
    }
    fn ltk(&self) -> [u8; 16] {
        long_term_key(&self.username, REALM, &self.password)
    }
    /// A request with credentials (when a nonce is known) and a fingerprint.
    fn request(&mut self, method: u16, attrs: Vec<(u16, Vec<u8>)>) -> Vec<u8> {
        let tid = self.tid();
        self.request_tid(method, attrs, tid)
    }
    fn request_tid(
        &mut self,
        method: u16,
        attrs: Vec<(u16, Vec<u8>)>,
        tid: TransactionId,
    ) -> Vec<u8> {
        let mut m = Message::new(method, Class::Request, tid);
        m.attributes = attrs;
        let Some(nonce) = self.nonce.clone() else {
            return m.encode(None, true);
        };
        m = m
            .with(attr::USERNAME, self.username.as_bytes())
            .with(attr::REALM, REALM.as_bytes())
            .with(attr::NONCE, nonce);
        if self.sha256 {
            let mut b = Vec::new();
            let mut w = Builder::new(&mut b, method, Class::Request, tid);
            for (t, v) in &m.attributes {
                w.attr(*t, v);
            }
            w.integrity_sha256(&self.ltk()).fingerprint();
            w.finish();
            return b;
        }
        m.encode(Some(&self.ltk()), true)
    }
    fn allocate_attrs() -> Vec<(u16, Vec<u8>)> {
        vec![(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])]
    }
    /// 401 then success: the relayed address.
    fn allocate(&mut self, rig: &mut Rig) -> SocketAddr {
        let r = self.try_allocate(rig);
        let m = parse(&r).unwrap();
        assert_eq!(m.class, Class::Success, "{:?}", m.error_code());
        m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap()
    }
    /// Allocate, learning the nonce from a 401 if needed; the final answer.
    fn try_allocate(&mut self, rig: &mut Rig) -> Vec<u8> {
        if self.nonce.is_none() {
            let first = self.request(method::ALLOCATE, Self::allocate_attrs());
            let r = rig.reply(self.key, &first);
            let m = parse(&r).unwrap();
            assert_eq!(m.error_code().map(|e| e.0), Some(401));
            assert!(!m.has_integrity(), "a 401 carries no MESSAGE-INTEGRITY");
            assert_eq!(m.get(attr::REALM), Some(REALM.as_bytes()));
            self.nonce = Some(m.get(attr::NONCE).unwrap().to_vec());
        }
        let req = self.request(method::ALLOCATE, Self::allocate_attrs());
        rig.reply(self.key, &req)
    }
    fn permission(&mut self, rig: &mut Rig, peers: &[&str]) -> Vec<u8> {
        let tid = self.tid();
        let attrs = peers
            .iter()
            .map(|p| {
                (
                    attr::XOR_PEER_ADDRESS,
                    stun::xor_address(p.parse().unwrap(), &tid),
                )
            })
            .collect();
        let req = self.request_tid(method::CREATE_PERMISSION, attrs, tid);
        rig.reply(self.key, &req)
    }
    fn channel_bind(&mut self, rig: &mut Rig, number: u16, peer: &str) -> Vec<u8> {
        let tid = self.tid();
        let mut n = number.to_be_bytes().to_vec();
        n.extend_from_slice(&[0, 0]);
        let attrs = vec![
            (attr::CHANNEL_NUMBER, n),
            (
                attr::XOR_PEER_ADDRESS,
                stun::xor_address(peer.parse().unwrap(), &tid),
            ),
        ];
        let req = self.request_tid(method::CHANNEL_BIND, attrs, tid);
        rig.reply(self.key, &req)
    }
    fn refresh(&mut self, rig: &mut Rig, lifetime: u32) -> Vec<u8> {
        let req = self.request(
            method::REFRESH,
            vec![(attr::LIFETIME, lifetime.to_be_bytes().to_vec())],
        );
        rig.reply(self.key, &req)
    }
}

fn code(resp: &[u8]) -> Option<u16> {
    parse(resp).unwrap().error_code().map(|e| e.0)
}

fn send_indication(peer: &str, data: &[u8]) -> Vec<u8> {
    let tid = [9u8; 12];
    Message::new(method::SEND, Class::Indication, tid)
        .with(
            attr::XOR_PEER_ADDRESS,
            stun::xor_address(peer.parse().unwrap(), &tid),
        )
        .with(attr::DATA, data)
        .encode(None, false)
}

const NOW_S: u64 = T0 / SEC;

#[test]
fn allocate_with_a_challenge_then_long_term_credentials() {
    let mut rig = Rig::new();
    let mut c = Client::new("198.51.100.1:4000", "peer-a", NOW_S + 86_400);
    let r = c.try_allocate(&mut rig);
    let m = parse(&r).unwrap();
    assert_eq!((m.method, m.class), (method::ALLOCATE, Class::Success));
    assert!(
        m.verify(&c.ltk()),
        "the success is signed with the same key"
    );
    assert!(m.fingerprint);
    let relayed = m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(relayed.ip(), RELAY_IP.parse::<IpAddr>().unwrap());
    assert!((50000..=50099).contains(&relayed.port()));
    assert_eq!(m.u32(attr::LIFETIME), Some(600));
    assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS), Some(c.key.addr));
    assert_eq!(rig.s.allocations(), 1);
    assert_eq!(rig.relays.open.len(), 1);
    assert_eq!(rig.s.stats.refused(Refusal::Unauthorized), 1);
    // A Binding request on the same port gets the mapped address, no credentials.
    let b = Message::new(method::BINDING, Class::Request, [5; 12]).encode(None, true);
    let r = rig.reply(c.key, &b);
    let m = parse(&r).unwrap();
    assert_eq!(m.class, Class::Success);
    assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS), Some(c.key.addr));
}

#[test]
fn message_integrity_sha256_is_answered_in_kind() {
    let mut rig = Rig::new();
    let mut c = Client::new("198.51.100.1:4000", "peer-a", NOW_S + 100);
    c.sha256 = true;
    let r = c.try_allocate(&mut rig);
    let m = parse(&r).unwrap();
    assert_eq!(m.class, Class::Success);
    assert!(m.has_integrity_sha256() && m.verify(&c.ltk()));
}

#[test]
fn retransmitted_allocate_gets_the_same_answer_another_gets_437() {
    let mut rig = Rig::new();
    let mut c = Client::new("198.51.100.1:4000", "peer-a", NOW_S + 100);
    c.try_allocate(&mut rig); // learns the nonce
    let mut c = Client {
        nonce: c.nonce.clone(),
        ..Client::new("198.51.100.2:4000", "peer-a", NOW_S + 100)
    };
    // (Nonces are bound to the client address: this one needs its own.)
    c.nonce = None;
    let _ = c.try_allocate(&mut rig);
    let tid = [77u8; 12];
    let c3key = udp("198.51.100.3:4000");
    let mut c3 = Client::new("198.51.100.3:4000", "peer-b", NOW_S + 100);
    c3.key = c3key;
    let first = c3.request(method::ALLOCATE, Client::allocate_attrs());
    let r = rig.reply(c3key, &first);
    c3.nonce = Some(parse(&r).unwrap().get(attr::NONCE).unwrap().to_vec());
    let req = c3.request_tid(method::ALLOCATE, Client::allocate_attrs(), tid);
    let a = rig.reply(c3key, &req);
    let b = rig.reply(c3key, &req);
    assert_eq!(a, b, "a retransmission gets the same bytes");
    assert_eq!(rig.relays.open.len(), 3, "and no second relay");
    let other = c3.request(method::ALLOCATE, Client::allocate_attrs());
    let r = rig.reply(c3key, &other);
    assert_eq!(code(&r), Some(437));
    assert!(parse(&r).unwrap().verify(&c3.ltk()));
    assert_eq!(rig.s.stats.refused(Refusal::Mismatch), 1);
    // After the retransmission window, the cached answer is gone: 437 too.
    rig.advance(60);
    rig.sweep();
    assert_eq!(code(&rig.reply(c3key, &req)), Some(437));
}

#[test]
fn credentials_are_checked() {
    let mut rig = Rig::new();
    // Wrong password.
    let mut c = Client::new("198.51.100.1:4000", "peer-a", NOW_S + 100);
    c.password = "wrong".into();
    let r = c.try_allocate(&mut rig);
    assert_eq!(code(&r), Some(401));
    let m = parse(&r).unwrap();
    assert!(m.get(attr::NONCE).is_some() && m.get(attr::REALM).is_some());
    // An expired credential.
    let mut c = Client::new("198.51.100.1:4001", "peer-a", NOW_S - 1);
    assert_eq!(code(&c.try_allocate(&mut rig)), Some(401));
    // A user name that is not `<expiry>:<peer>`.
    let mut c = Client::new("198.51.100.1:4002", "peer-a", NOW_S + 100);
    c.username = "alice".into();
    assert_eq!(code(&c.try_allocate(&mut rig)), Some(401));
    // Another client's nonce: 438 with a nonce of our own.
    let mut a = Client::new("198.51.100.1:4003", "peer-a", NOW_S + 100);
    a.try_allocate(&mut rig);
    let mut b = Client::new("198.51.100.1:4004", "peer-a", NOW_S + 100);
    b.nonce = a.nonce.clone();
    let r = b.try_allocate(&mut rig);
    assert_eq!(code(&r), Some(438));
    b.nonce = Some(parse(&r).unwrap().get(attr::NONCE).unwrap().to_vec());
    b.allocate(&mut rig);
    // Missing USERNAME with an integrity: 400.
    let bad = Message::new(method::ALLOCATE, Class::Request, [1; 12])
        .with(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])
        .encode(Some(b"k"), false);
    assert_eq!(code(&rig.reply(udp("198.51.100.1:4005"), &bad)), Some(400));
    assert_eq!(rig.s.allocations(), 2);
    assert_eq!(rig.s.stats.refused(Refusal::StaleNonce), 1);
}

#[test]
fn stale_nonce_gets_438_and_a_fresh_one() {
    let mut rig = Rig::new();
    let mut c = Client::new("198.51.100.1:4000", "peer-a", NOW_S + 86_400);
    c.allocate(&mut rig);
    rig.advance(601);
    let r = c.refresh(&mut rig, 600);
    assert_eq!(code(&r), Some(438));
    let m = parse(&r).unwrap();
    let fresh = m.get(attr::NONCE).unwrap().to_vec();
    assert_ne!(Some(&fresh), c.nonce.as_ref());
    c.nonce = Some(fresh);
    let r = c.refresh(&mut rig, 600);
    assert_eq!(parse(&r).unwrap().class, Class::Success);
}

#[test]
fn permissions_send_and_data_indications() {
    let mut rig = Rig::new();
    let mut c = Client::new("198.51.100.1:4000", "peer-a", NOW_S + 100);
    let relayed = c.allocate(&mut rig);
    let peer = "192.0.2.77:9000";
    // No permission yet: the Send indication is dropped.
    assert_eq!(rig.send(c.key, &send_indication(peer, b"hi")), Action::None);
    assert_eq!(rig.s.stats.dropped(Dropped::NoPermission), 1);
    let r = c.permission(&mut rig, &[peer]);
    assert_eq!(parse(&r).unwrap().class, Class::Success);
    let ind = send_indication(peer, b"hello peer");
    match rig.send(c.key, &ind) {
        Action::Relay {
            relay,
            peer: p,
            payload,
        } => {
            assert_eq!(p, peer.parse().unwrap());
            assert_eq!(&ind[payload], b"hello peer");
            assert!(rig.relays.ports.contains(&(relay, relayed.port())));
        }
        a => panic!("{a:?}"),
    }
    // The peer answers on the relay: a Data indication for the client.
    let relay = rig.relays.ports[0].0;
    let mut out = Vec::new();
    let to = rig.s.on_peer(
        rig.now,
        relay,
        peer.parse().unwrap(),
        b"hello client",
        &mut out,
    );
    assert_eq!(to, Some(c.key));
    let m = parse(&out).unwrap();
    assert_eq!((m.method, m.class), (method::DATA, Class::Indication));
    assert_eq!(m.get(attr::DATA), Some(&b"hello client"[..]));
    assert_eq!(
        m.xor_address(attr::XOR_PEER_ADDRESS),
        Some(peer.parse().unwrap())
    );
    // Another port of the same IP is covered by the permission; another IP is not.
    out.clear();
    assert!(rig
        .s
        .on_peer(
            rig.now,
            relay,
            "192.0.2.77:1".parse().unwrap(),
            b"x",
            &mut out
        )
        .is_some());
    out.clear();
    assert!(rig
        .s
        .on_peer(
            rig.now,
            relay,
            "192.0.2.78:9000".parse().unwrap(),
            b"x",
            &mut out
        )
        .is_none());
    // Permissions expire after 300 s unless refreshed.
    rig.advance(301);
    assert_eq!(rig.send(c.key, &ind), Action::None);
    out.clear();
    assert!(rig
        .s
        .on_peer(rig.now, relay, peer.parse().unwrap(), b"x", &mut out)
        .is_none());
    assert_eq!(rig.s.stats.to_peer_packets, 1);
    assert_eq!(rig.s.stats.to_client_packets, 2);
}

#[test]
fn channels_both_ways_and_their_limits() {
    let mut rig = Rig::new();
    let mut c = Client::new("198.51.100.1:4000", "peer-a", NOW_S + 100);
    c.allocate(&mut rig);
    let peer = "192.0.2.77:9000";
    let r = c.channel_bind(&mut rig, 0x4000, peer);
    assert_eq!(parse(&r).unwrap().class, Class::Success);
    // ChannelData from the client goes to the peer (the binding made a permission).
    let mut cd = Vec::new();
    framing::write_channel_data(&mut cd, 0x4000, b"payload", false);
    match rig.send(c.key, &cd) {
        Action::Relay {
            peer: p, payload, ..
        } => {
            assert_eq!(p, peer.parse().unwrap());
            assert_eq!(&cd[payload], b"payload");
        }
        a => panic!("{a:?}"),
    }
    // An unbound channel is dropped.
    let mut other = Vec::new();
    framing::write_channel_data(&mut other, 0x4001, b"x", false);
    assert_eq!(rig.send(c.key, &other), Action::None);
    assert_eq!(rig.s.stats.dropped(Dropped::UnknownChannel), 1);
    // The peer's datagrams come back as ChannelData.
    let relay = rig.relays.ports[0].0;
    let mut out = Vec::new();
    rig.s
        .on_peer(rig.now, relay, peer.parse().unwrap(), b"back", &mut out)
        .unwrap();
    assert_eq!(out, b"\x40\x00\x00\x04back");
    // Rebinding the same pair refreshes; a number or a peer already bound otherwise: 400.
    assert_eq!(
        parse(&c.channel_bind(&mut rig, 0x4000, peer))
            .unwrap()
            .class,
        Class::Success
    );
    assert_eq!(
        code(&c.channel_bind(&mut rig, 0x4000, "192.0.2.77:9001")),
        Some(400)
    );
    assert_eq!(code(&c.channel_bind(&mut rig, 0x4001, peer)), Some(400));
    // Out of range numbers: 400.
    assert_eq!(code(&c.channel_bind(&mut rig, 0x3fff, peer)), Some(400));
    assert_eq!(code(&c.channel_bind(&mut rig, 0x8000, peer)), Some(400));
    // --turn-channels-max (3 here): the fourth is 508.
    for (i, n) in [0x4001u16, 0x4002].iter().enumerate() {
        let p = format!("192.0.2.{}:9000", 80 + i);
        assert_eq!(
            parse(&c.channel_bind(&mut rig, *n, &p)).unwrap().class,
            Class::Success
        );
    }
    assert_eq!(
        code(&c.channel_bind(&mut rig, 0x4003, "192.0.2.90:9000")),
        Some(508)
    );
    assert_eq!(rig.s.stats.refused(Refusal::Channels), 1);
    // --turn-permissions-max (4 here; 3 used by the channels): two more at once is 508
    // and installs neither; one more is fine.
    assert_eq!(
        code(&c.permission(&mut rig, &["192.0.2.91:1", "192.0.2.92:1"])),
        Some(508)
    );
    assert_eq!(
        parse(&c.permission(&mut rig, &["192.0.2.91:1"]))
            .unwrap()
            .class,
        Class::Success
    );
    assert_eq!(code(&c.permission(&mut rig, &["192.0.2.92:1"])), Some(508));
    assert_eq!(rig.s.stats.refused(Refusal::Permissions), 2);
    // A channel lapses after 600 s; its permission after 300 s.
    rig.advance(601);
    assert_eq!(rig.send(c.key, &cd), Action::None);
}

#[test]
fn channel_data_on_a_stream_is_padded() {
    let mut rig = Rig::new();
    let mut c = Client::new("198.51.100.1:4000", "peer-a", NOW_S + 100);
    c.key.transport = Transport::Tcp(7);
    c.allocate(&mut rig);
    c.channel_bind(&mut rig, 0x4000, "192.0.2.77:9000");
    let relay = rig.relays.ports[0].0;
    let mut out = Vec::new();
    rig.s
        .on_peer(
            rig.now,
            relay,
            "192.0.2.77:9000".parse().unwrap(),
            b"abcde",
            &mut out,
        )
        .unwrap();
    assert_eq!(out, b"\x40\x00\x00\x05abcde\0\0\0");
    // The stream closes: the allocation ends.
    rig.s.client_closed(&c.key, &mut rig.relays);
    assert_eq!(rig.s.allocations(), 0);
    assert!(rig.relays.open.is_empty());
}

#[test]
fn peer_policy_refusals_are_403() {
    let mut rig = Rig::new();
    let mut c = Client::new("198.51.100.1:4000", "peer-a", NOW_S + 100);
    c.allocate(&mut rig);
    for p in [
        "127.0.0.1:80",
        "10.0.0.1:80",
        "169.254.169.254:80",
        "0.0.0.0:80",
        "224.0.0.1:80",
        "100.64.1.1:80",
    ] {
        assert_eq!(code(&c.permission(&mut rig, &[p])), Some(403), "{p}");
        assert_eq!(code(&c.channel_bind(&mut rig, 0x4000, p)), Some(403), "{p}");
    }
    // IPv4-mapped IPv6: the family does not match an IPv4 relay (443) — and the policy
    // would refuse it anyway (tested in policy.rs).
    assert_eq!(
        code(&c.permission(&mut rig, &["[::ffff:127.0.0.1]:80"])),
        Some(443)
    );
    // All or nothing: one refused peer installs none.
    assert_eq!(
        code(&c.permission(&mut rig, &["192.0.2.1:1", "10.0.0.1:1"])),
        Some(403)
    );
    assert_eq!(
        rig.send(c.key, &send_indication("192.0.2.1:1", b"x")),
        Action::None
    );
    // The server's own address: its relay range is reachable (relay to relay), its
    // listen port is not.
    assert_eq!(
        parse(&c.channel_bind(&mut rig, 0x4000, "203.0.113.5:50050"))
            .unwrap()
            .class,
        Class::Success
    );
    assert_eq!(
        code(&c.channel_bind(&mut rig, 0x4001, "203.0.113.5:3478")),
        Some(403)
    );
    // A permission for the own IP does not let Send reach the listen port.
    assert_eq!(
        rig.send(c.key, &send_indication("203.0.113.5:3478", b"x")),
        Action::None
    );
    assert_eq!(rig.s.stats.dropped(Dropped::PeerForbidden), 1);
    assert!(matches!(
        rig.send(c.key, &send_indication("203.0.113.5:50051", b"x")),
        Action::Relay { .. }
    ));
    // --turn-allow-peer opens a range.
    let mut cfg = config();
    cfg.policy.allow = vec!["127.0.0.0/8".parse::<Cidr>().unwrap()];
    let mut rig = Rig::with(cfg);
    let mut c = Client::new("198.51.100.1:4000", "peer-a", NOW_S + 100);
    c.allocate(&mut rig);
    assert_eq!(
        parse(&c.permission(&mut rig, &["127.0.0.1:3480"]))
            .unwrap()
            .class,
        Class::Success
    );
}

#[test]
fn quotas_are_486_and_capacity_508() {
    let mut cfg = config();
    cfg.allocations_per_user_max = 2;
    cfg.allocations_per_ip_max = 3;
    cfg.allocations_max = 6;
    let mut rig = Rig::with(cfg);
    // Per user (peer id), whatever the address.
    for i in 0..2 {
        Client::new(&format!("198.51.100.{i}:4000"), "peer-a", NOW_S + 100).allocate(&mut rig);
    }
    let r = Client::new("198.51.100.9:4000", "peer-a", NOW_S + 100).try_allocate(&mut rig);
    assert_eq!(code(&r), Some(486));
    assert_eq!(rig.s.stats.refused(Refusal::UserQuota), 1);
    // Per client IP, whatever the user.
    for i in 0..3 {
        Client::new(
            &format!("198.51.100.20:{}", 4000 + i),
            &format!("u{i}"),
            NOW_S + 100,
        )
        .allocate(&mut rig);
    }
    let r = Client::new("198.51.100.20:5000", "u9", NOW_S + 100).try_allocate(&mut rig);
    assert_eq!(code(&r), Some(486));
    assert_eq!(rig.s.stats.refused(Refusal::IpQuota), 1);
    // The shard's allocations: 6.
    Client::new("198.51.100.30:5000", "v", NOW_S + 100).allocate(&mut rig);
    let r = Client::new("198.51.100.31:5000", "w", NOW_S + 100).try_allocate(&mut rig);
    assert_eq!(code(&r), Some(508));
    assert_eq!(rig.s.stats.refused(Refusal::ShardFull), 1);
    assert_eq!(rig.s.allocations(), 6);
}

#[test]
fn relay_ports_run_out_or_are_busy() {
    let mut cfg = config();
    cfg.ports = (50000, 50002);
    let mut rig = Rig::with(cfg);
    // Two of three ports are taken by someone else: the third is found.
    rig.relays.busy = [50000, 50001].into_iter().collect();
    let relayed = Client::new("198.51.100.1:4000", "a", NOW_S + 100).allocate(&mut rig);
    assert_eq!(relayed.port(), 50002);
    // None left: 508, and nothing leaked.
    let r = Client::new("198.51.100.2:4000", "b", NOW_S + 100).try_allocate(&mut rig);
    assert_eq!(code(&r), Some(508));
    assert_eq!(rig.s.stats.refused(Refusal::RelayPorts), 1);
    assert_eq!(rig.s.ports_free(), 2);
    rig.relays.busy.clear();
    Client::new("198.51.100.3:4000", "c", NOW_S + 100).allocate(&mut rig);
    // Out of file descriptors: 508.
    rig.relays.fail = true;
    let r = Client::new("198.51.100.4:4000", "d", NOW_S + 100).try_allocate(&mut rig);
    assert_eq!(code(&r), Some(508));
}

#[test]
fn lifetimes_refresh_and_sweep() {
    let mut rig = Rig::new();
    let mut c = Client::new("198.51.100.1:4000", "peer-a", NOW_S + 86_400);
    c.allocate(&mut rig);
    // Refresh asks for 3 h: clamped to --turn-lifetime-max (3600).
    let r = c.refresh(&mut rig, 3 * 3600);
    assert_eq!(parse(&r).unwrap().u32(attr::LIFETIME), Some(3600));
    // Less than the default is raised to it.
    let r = c.refresh(&mut rig, 30);
    assert_eq!(parse(&r).unwrap().u32(attr::LIFETIME), Some(600));
    rig.advance(599);
    rig.sweep();
    assert_eq!(rig.s.allocations(), 1);
    rig.advance(2);
    rig.sweep();
    assert_eq!(rig.s.allocations(), 0, "expired with its lifetime");
    assert!(rig.relays.open.is_empty());
    // Refresh 0 deletes at once.
    let mut c = Client::new("198.51.100.1:4001", "peer-a", NOW_S + 86_400);
    c.allocate(&mut rig);
    let r = c.refresh(&mut rig, 0);
    assert_eq!(parse(&r).unwrap().u32(attr::LIFETIME), Some(0));
    assert_eq!(rig.s.allocations(), 0);
    // Refresh without an allocation: 437.
    assert_eq!(code(&c.refresh(&mut rig, 600)), Some(437));
    // A credential that expires ends its allocation at the next sweep.
    let mut c = Client::new("198.51.100.1:4002", "peer-a", rig.now / SEC + 5);
    c.allocate(&mut rig);
    rig.advance(6);
    rig.sweep();
    assert_eq!(rig.s.allocations(), 0);
    assert_eq!(rig.s.stats.allocations_ended, 3);
}

#[test]
fn another_user_name_on_an_allocation_is_441() {
    let mut rig = Rig::new();
    let mut c = Client::new("198.51.100.1:4000", "peer-a", NOW_S + 100);
    c.allocate(&mut rig);
    let (u, p) = rest_credentials(SECRET, NOW_S + 200, "peer-a");
    c.username = u;
    c.password = p;
    assert_eq!(code(&c.refresh(&mut rig, 600)), Some(441));
}

#[test]
fn revocation_ends_allocations_and_refuses_older_credentials() {
    let mut rig = Rig::new();
    let ttl = 86_400;
    let mut a1 = Client::new("198.51.100.1:4000", "peer-a", NOW_S + ttl);
    let mut a2 = Client::new("198.51.100.1:4001", "peer-a", NOW_S + ttl);
    let mut b = Client::new("198.51.100.1:4002", "peer-b", NOW_S + ttl);
    a1.allocate(&mut rig);
    a2.allocate(&mut rig);
    b.allocate(&mut rig);
    rig.advance(10);
    let ended = rig.s.revoke("peer-a", rig.now / SEC, &mut rig.relays);
    assert_eq!(ended, 2);
    assert_eq!(rig.s.allocations(), 1);
    assert_eq!(rig.relays.open.len(), 1);
    assert_eq!(rig.s.stats.allocations_revoked, 2);
    // Its credentials (issued before the revocation) no longer allocate...
    let r = a1.try_allocate(&mut rig);
    assert_eq!(code(&r), Some(401));
    // ...credentials issued after it do (a new approval).
    rig.advance(1);
    let mut fresh = Client::new("198.51.100.1:4003", "peer-a", rig.now / SEC + ttl);
    fresh.allocate(&mut rig);
    assert_eq!(rig.s.allocations(), 2);
}

#[test]
fn unknown_attributes_transport_and_family() {
    let mut rig = Rig::new();
    let mut c = Client::new("198.51.100.1:4000", "peer-a", NOW_S + 100);
    c.try_allocate(&mut rig); // nonce
    rig.s.release_all(&mut rig.relays);
    // DONT-FRAGMENT (not supported): 420 naming it.
    let req = c.request(
        method::ALLOCATE,
        vec![
            (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]),
            (attr::DONT_FRAGMENT, vec![]),
        ],
    );
    let r = rig.reply(c.key, &req);
    assert_eq!(code(&r), Some(420));
    assert_eq!(
        parse(&r).unwrap().get(attr::UNKNOWN_ATTRIBUTES),
        Some(&attr::DONT_FRAGMENT.to_be_bytes()[..])
    );
    // TCP relaying: 442.
    let req = c.request(
        method::ALLOCATE,
        vec![(attr::REQUESTED_TRANSPORT, vec![6, 0, 0, 0])],
    );
    assert_eq!(code(&rig.reply(c.key, &req)), Some(442));
    // No REQUESTED-TRANSPORT: 400.
    let req = c.request(method::ALLOCATE, vec![]);
    assert_eq!(code(&rig.reply(c.key, &req)), Some(400));
    // An IPv6 relay from an IPv4 server: 440.
    let req = c.request(
        method::ALLOCATE,
        vec![
            (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]),
            (attr::REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0]),
        ],
    );
    assert_eq!(code(&rig.reply(c.key, &req)), Some(440));
    // EVEN-PORT: an even relay port.
    let req = c.request(
        method::ALLOCATE,
        vec![
            (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]),
            (attr::EVEN_PORT, vec![0]),
        ],
    );
    let r = rig.reply(c.key, &req);
    let p = parse(&r)
        .unwrap()
        .xor_address(attr::XOR_RELAYED_ADDRESS)
        .unwrap();
    assert_eq!(p.port() % 2, 0);
    // Other methods: 400.
    let req = c.request(0x00a, vec![]);
    assert_eq!(code(&rig.reply(c.key, &req)), Some(400));
}

#[test]
fn the_rate_limit_drops_and_counts() {
    let mut cfg = config();
    cfg.bytes_per_sec_max = 1000;
    let mut rig = Rig::with(cfg);
    let mut c = Client::new("198.51.100.1:4000", "peer-a", NOW_S + 100);
    c.allocate(&mut rig);
    c.channel_bind(&mut rig, 0x4000, "192.0.2.77:9000");
    let mut cd = Vec::new();
    framing::write_channel_data(&mut cd, 0x4000, &[0u8; 400], false);
    let relayed = (0..5)
        .filter(|_| matches!(rig.send(c.key, &cd), Action::Relay { .. }))
        .count();
    assert_eq!(relayed, 2, "1000 bytes of burst: two 400-byte packets");
    assert_eq!(rig.s.stats.dropped(Dropped::Rate), 3);
    rig.now += SEC / 2; // 500 bytes more
    assert!(matches!(rig.send(c.key, &cd), Action::Relay { .. }));
    assert_eq!(rig.send(c.key, &cd), Action::None);
}

#[test]
fn garbage_is_dropped_and_counted_never_a_panic() {
    let mut rig = Rig::new();
    let mut c = Client::new("198.51.100.1:4000", "peer-a", NOW_S + 100);
    c.allocate(&mut rig);
    c.channel_bind(&mut rig, 0x4000, "192.0.2.77:9000");
    for g in [
        &b""[..],
        b"\x00",
        b"GET / HTTP/1.1\r\n\r\n",
        &[0xffu8; 64],
        b"\x40\x00\xff\xff",
    ] {
        assert_eq!(rig.send(c.key, g), Action::None);
    }
    assert_eq!(rig.s.stats.dropped(Dropped::Malformed), 5);
    // Every byte flip of real requests, through the whole server: no panic.
    let samples = vec![
        c.request(method::ALLOCATE, Client::allocate_attrs()),
        c.request(method::REFRESH, vec![(attr::LIFETIME, vec![0, 0, 2, 88])]),
        send_indication("192.0.2.77:9000", b"data"),
        c.permission_bytes("192.0.2.77:9000"),
        b"\x40\x00\x00\x04abcd".to_vec(),
    ];
    let mut seed = 1u64;
    for s in &samples {
        for i in 0..s.len() {
            for _ in 0..4 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let mut g = s.clone();
                g[i] ^= (seed >> 56) as u8 | 1;
                let _ = rig.send(c.key, &g);
                let _ = rig.send(udp("198.51.100.99:1"), &g);
                let mut out = Vec::new();
                let relay = RelayId(seed);
                let _ = rig.s.on_peer(
                    rig.now,
                    relay,
                    "192.0.2.77:9000".parse().unwrap(),
                    &g,
                    &mut out,
                );
            }
        }
    }
    assert!(rig.s.stats.dropped(Dropped::Malformed) > 5);
}

impl Client {
    fn permission_bytes(&mut self, peer: &str) -> Vec<u8> {
        let tid = self.tid();
        self.request_tid(
            method::CREATE_PERMISSION,
            vec![(
                attr::XOR_PEER_ADDRESS,
                stun::xor_address(peer.parse().unwrap(), &tid),
            )],
            tid,
        )
    }
}
