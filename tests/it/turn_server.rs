//! The embedded TURN server (issue 24) over real sockets on 127.0.0.1: allocations,
//! permissions, channels and Send/Data indications over UDP and TCP, and every refusal
//! with its RFC code: 401 with a fresh nonce, 438 for a stale one, 437, 441, 403 for
//! each denied peer range, 486 and 508 for the quotas; garbage dropped and counted;
//! an expired credential and a revoked pairing end their allocations.

use crate::common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::turn_rig::{self, credentials, eventually, metric, Client};
use common::{pending_entry, KEYS_JSON};
use serde_json::Value;
use turn::stun::{attr, method, Class, Message};

fn peer_socket() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

/// Relays both ways through one client, by indications then by a channel.
fn relay_both_ways(c: &mut Client) {
    let relayed = c.relayed();
    assert_eq!(relayed.ip().to_string(), "127.0.0.1");
    let (peer, peer_addr) = peer_socket();
    // Without a permission nothing goes out, and the peer cannot come in.
    c.send_to_peer(peer_addr, b"too early");
    assert!(c.permission(&[peer_addr]).ok());
    c.send_to_peer(peer_addr, b"hello peer");
    let mut buf = [0u8; 2048];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello peer", "the early datagram was dropped");
    assert_eq!(from, relayed, "it comes from the relayed address");
    peer.send_to(b"hello client", relayed).unwrap();
    let (p, d) = c
        .recv_data(Duration::from_secs(2))
        .expect("a Data indication");
    assert_eq!((p, d.as_slice()), (Some(peer_addr), &b"hello client"[..]));
    // A channel: ChannelData both ways.
    assert!(c.channel_bind(0x4001, peer_addr).ok());
    c.send_channel(0x4001, b"over the channel");
    let (n, _) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"over the channel");
    peer.send_to(b"and back", relayed).unwrap();
    let (p, d) = c.recv_data(Duration::from_secs(2)).expect("ChannelData");
    assert_eq!((p, d.as_slice()), (None, &b"and back"[..]));
    // Refresh, then release.
    let r = c.refresh(600);
    assert!(r.ok());
    assert_eq!(r.msg().u32(attr::LIFETIME), Some(600));
    assert_eq!(c.refresh(0).msg().u32(attr::LIFETIME), Some(0));
}

/// On both io drivers (io_uring, and the epoll fallback).
#[test]
fn relays_over_udp_and_tcp() {
    for driver in common::DRIVERS {
        relays_over_udp_and_tcp_on(driver);
    }
}

fn relays_over_udp_and_tcp_on(driver: &str) {
    let (server, turn) = turn_rig::start(2, None, &["--io-driver", driver]);
    let (u, p) = credentials("peer-udp", 3600);
    relay_both_ways(&mut Client::udp(turn, &u, &p));
    let (u, p) = credentials("peer-tcp", 3600);
    let mut c = Client::tcp(turn, &u, &p);
    relay_both_ways(&mut c);
    // STUN Binding on the same port: the mapped address, no credentials.
    let mut c = Client::udp(turn, "", "");
    let r = c.request(method::BINDING, vec![]);
    assert!(r.ok());
    assert_eq!(
        r.msg().xor_address(attr::XOR_MAPPED_ADDRESS),
        Some(c.local_addr())
    );
    assert!(metric(&server, "chatixia_turn_relayed_packets_total", "to_peer") >= 4);
    assert!(metric(&server, "chatixia_turn_relayed_packets_total", "to_client") >= 4);
    assert_eq!(
        metric(&server, "chatixia_turn_allocations_created_total", ""),
        2
    );
    assert!(eventually(Duration::from_secs(2), || metric(
        &server,
        "chatixia_turn_allocations",
        ""
    ) == 0));
}

#[test]
fn a_retransmitted_allocate_gets_the_same_answer_another_gets_437() {
    let (server, turn) = turn_rig::start(1, None, &[]);
    let (u, p) = credentials("peer-a", 3600);
    let mut c = Client::udp(turn, &u, &p);
    let first = c.request(
        method::ALLOCATE,
        vec![(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
    );
    assert_eq!(first.code, Some(401));
    let tid = [7u8; 12];
    let attrs = vec![(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])];
    let a = c.request_tid(method::ALLOCATE, attrs.clone(), tid);
    let b = c.request_tid(method::ALLOCATE, attrs.clone(), tid);
    assert!(a.ok());
    assert_eq!(a.bytes, b.bytes, "the same answer, byte for byte");
    let other = c.request(method::ALLOCATE, attrs);
    assert_eq!(other.code, Some(437));
    assert!(other.msg().verify(&c.key()), "437 is signed");
    assert_eq!(metric(&server, "chatixia_turn_allocations", ""), 1);
    assert_eq!(
        metric(
            &server,
            "chatixia_turn_refused_total",
            "reason=\"allocation_mismatch\""
        ),
        1
    );
    // Another user name on the allocation: 441.
    let (u2, p2) = credentials("peer-other", 3600);
    c.username = u2;
    c.password = p2;
    assert_eq!(c.refresh(600).code, Some(441));
}

#[test]
fn credentials_get_401_with_a_fresh_nonce_and_a_stale_nonce_438() {
    let (server, turn) = turn_rig::start(1, None, &[]);
    // A wrong password.
    let (u, _) = credentials("peer-a", 3600);
    let mut c = Client::udp(turn, &u, "not-the-password");
    let r = c.allocate();
    assert_eq!(r.code, Some(401));
    let m = r.msg();
    assert!(m.get(attr::NONCE).is_some() && m.get(attr::REALM) == Some(b"chatixia"));
    assert!(!m.has_integrity(), "a 401 is not signed");
    // An expired credential.
    let (u, p) = credentials("peer-a", -10);
    assert_eq!(Client::udp(turn, &u, &p).allocate().code, Some(401));
    // A user name that is not `<expiry>:<peer>`.
    assert_eq!(Client::udp(turn, "alice", "pw").allocate().code, Some(401));
    // A nonce that went stale (the server's clock moves 601 s): 438 with a fresh nonce,
    // and the retry with it succeeds.
    let (u, p) = credentials("peer-a", 86_400);
    let mut c = Client::udp(turn, &u, &p);
    let r = c.request(
        method::ALLOCATE,
        vec![(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
    );
    assert_eq!(r.code, Some(401));
    let old = c.nonce.clone();
    server.advance(601.0);
    let r = c.request(
        method::ALLOCATE,
        vec![(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
    );
    assert_eq!(r.code, Some(438));
    assert_ne!(c.nonce, old, "a fresh nonce");
    let r = c.request(
        method::ALLOCATE,
        vec![(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
    );
    assert!(r.ok(), "{:?}", r.msg().error_code());
    assert!(
        metric(
            &server,
            "chatixia_turn_refused_total",
            "reason=\"unauthorized\""
        ) >= 4
    );
    assert_eq!(
        metric(
            &server,
            "chatixia_turn_refused_total",
            "reason=\"stale_nonce\""
        ),
        1
    );
}

#[test]
fn peers_in_denied_ranges_are_403() {
    // No --turn-allow-peer: loopback is refused like every internal range.
    let (server, turn) =
        turn_rig::start(1, None, &["--no-allow", "--turn-deny-peer", "8.8.4.0/24"]);
    let (u, p) = credentials("peer-a", 3600);
    let mut c = Client::udp(turn, &u, &p);
    c.relayed();
    for peer in [
        "127.0.0.2:3480",
        "0.0.0.0:9",
        "10.1.2.3:9",
        "172.16.0.1:9",
        "192.168.1.1:9",
        "100.64.0.1:9",
        "169.254.169.254:80",
        "224.0.0.1:9",
        "255.255.255.255:9",
        "8.8.4.4:53",
    ] {
        let peer: SocketAddr = peer.parse().unwrap();
        assert_eq!(c.permission(&[peer]).code, Some(403), "{peer}");
        assert_eq!(c.channel_bind(0x4000, peer).code, Some(403), "{peer}");
    }
    // IPv4-mapped forms: refused (an IPv6 peer of an IPv4 relay is 443; the policy's
    // own tests cover the mapped ranges).
    let mapped: SocketAddr = "[::ffff:127.0.0.1]:3480".parse().unwrap();
    let code = c.permission(&[mapped]).code;
    assert!(matches!(code, Some(403) | Some(443)), "{code:?}");
    // A public address is fine. The server's own address (127.0.0.1 here) is reachable
    // only at its relay ports (relay to relay): a permission for its IP is granted, but
    // a channel to another port, and its listen address above all, is 403, and a Send
    // indication there is dropped.
    assert!(c.permission(&["8.8.8.8:53".parse().unwrap()]).ok());
    assert_eq!(c.channel_bind(0x4001, turn).code, Some(403));
    assert_eq!(
        c.channel_bind(0x4001, "127.0.0.1:3480".parse().unwrap())
            .code,
        Some(403)
    );
    assert!(c.permission(&["127.0.0.1:1".parse().unwrap()]).ok());
    c.send_to_peer(turn, b"loop");
    assert!(eventually(Duration::from_secs(2), || metric(
        &server,
        "chatixia_turn_dropped_total",
        "reason=\"peer_forbidden\""
    ) == 1));
    assert!(
        metric(
            &server,
            "chatixia_turn_refused_total",
            "reason=\"peer_forbidden\""
        ) >= 22
    );
}

#[test]
fn quotas_are_486_and_capacity_is_508() {
    let (server, turn) = turn_rig::start(
        1,
        None,
        &[
            "--turn-allocations-per-user-max",
            "2",
            "--turn-allocations-per-ip-max",
            "3",
            "--turn-allocations-per-shard-max",
            "4",
            "--turn-permissions-max",
            "2",
            "--turn-channels-max",
            "1",
        ],
    );
    let mut clients = Vec::new();
    // Two allocations of peer-a; the third is 486 (the user's quota).
    for _ in 0..2 {
        let (u, p) = credentials("peer-a", 3600);
        let mut c = Client::udp(turn, &u, &p);
        c.relayed();
        clients.push(c);
    }
    let (u, p) = credentials("peer-a", 3600);
    assert_eq!(Client::udp(turn, &u, &p).allocate().code, Some(486));
    // One more from 127.0.0.1 (another user) fills the IP's quota of 3; the next is 486.
    let (u, p) = credentials("peer-b", 3600);
    let mut c = Client::udp(turn, &u, &p);
    c.relayed();
    clients.push(c);
    let (u, p) = credentials("peer-c", 3600);
    assert_eq!(Client::udp(turn, &u, &p).allocate().code, Some(486));
    assert_eq!(
        metric(
            &server,
            "chatixia_turn_refused_total",
            "reason=\"user_quota\""
        ),
        1
    );
    assert_eq!(
        metric(
            &server,
            "chatixia_turn_refused_total",
            "reason=\"ip_quota\""
        ),
        1
    );
    // Permissions (2) and channels (1) per allocation: 508 past them.
    let c = &mut clients[0];
    let peers: Vec<SocketAddr> = (1..=3)
        .map(|i| format!("127.0.0.{i}:9").parse().unwrap())
        .collect();
    assert!(c.permission(&peers[..2]).ok());
    assert_eq!(c.permission(&peers[2..]).code, Some(508));
    assert!(c.channel_bind(0x4000, peers[0]).ok());
    assert_eq!(c.channel_bind(0x4001, peers[1]).code, Some(508));
    assert_eq!(
        metric(
            &server,
            "chatixia_turn_refused_total",
            "reason=\"permissions\""
        ),
        1
    );
    assert_eq!(
        metric(
            &server,
            "chatixia_turn_refused_total",
            "reason=\"channels\""
        ),
        1
    );
    assert_eq!(metric(&server, "chatixia_turn_allocations", ""), 3);
    drop(clients);
}

#[test]
fn the_shard_capacity_is_508() {
    let (server, turn) = turn_rig::start(1, None, &["--turn-allocations-per-shard-max", "1"]);
    let (u, p) = credentials("peer-a", 3600);
    let mut a = Client::udp(turn, &u, &p);
    a.relayed();
    let (u, p) = credentials("peer-b", 3600);
    assert_eq!(Client::udp(turn, &u, &p).allocate().code, Some(508));
    assert_eq!(
        metric(
            &server,
            "chatixia_turn_refused_total",
            "reason=\"shard_capacity\""
        ),
        1
    );
}

#[test]
fn garbage_is_dropped_and_counted() {
    let (server, turn) = turn_rig::start(1, None, &[]);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let stun_hdr = Message::new(method::ALLOCATE, Class::Request, [1; 12]).encode(None, false);
    let mut bad_len = stun_hdr.clone();
    bad_len[3] = 200; // claims 200 bytes it does not have
    let garbage: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0xff; 100],
        vec![0x00; 7],
        bad_len,
        b"\x40\x00\xff\xff".to_vec(),
        vec![0u8; 3000],
    ];
    for g in &garbage {
        s.send_to(g, turn).unwrap();
    }
    // The server still answers, and counted every one.
    let mut c = Client::udp(turn, "", "");
    assert!(c.request(method::BINDING, vec![]).ok());
    assert!(eventually(Duration::from_secs(2), || metric(
        &server,
        "chatixia_turn_dropped_total",
        "reason=\"malformed\""
    ) >= garbage.len()
        as u64));
    // On TCP, bytes that are not TURN end the connection.
    let mut t = Client::tcp(turn, "", "");
    t.send_raw(&[0xff; 64]);
    assert!(
        t.closed(Duration::from_secs(3)),
        "the connection was closed"
    );
}

/// Sends `msgs` to `to` from `fd` as UDP GSO runs (runs of one size, at most
/// `reactor::udp::GSO_SEGMENTS_MAX` datagrams each), back to back.
fn send_run(fd: std::os::fd::RawFd, to: SocketAddr, msgs: &[Vec<u8>]) {
    let mut sb = reactor::udp::SendBatch::new();
    let list: Vec<(&[u8], SocketAddr)> = msgs.iter().map(|m| (&m[..], to)).collect();
    let mut sent = 0;
    while sent < list.len() {
        sent += sb.send_gso(fd, list[sent..].iter().copied()).unwrap();
    }
}

/// A run of datagrams that arrives as one receive (UDP GRO: here a GSO send on
/// loopback, on a NIC its GRO) is relayed datagram by datagram, both ways, in order;
/// a run of STUN requests gets an answer each; a run whose datagrams are over the
/// datagram limit is dropped and counted, each datagram once.
#[test]
fn coalesced_runs_are_relayed_datagram_by_datagram() {
    use std::os::fd::AsRawFd;
    use turn::framing;
    let (server, turn) = turn_rig::start(1, None, &[]);
    let (u, p) = credentials("peer-gro", 3600);
    let mut c = Client::udp(turn, &u, &p);
    let relayed = c.relayed();
    let (peer, peer_addr) = peer_socket();
    assert!(c.channel_bind(0x4001, peer_addr).ok());
    let fd = c.udp_socket().unwrap().as_raw_fd();
    let coalesced = || metric(&server, "chatixia_turn_coalesced_datagrams_total", "");
    assert_eq!(coalesced(), 0);

    // Client → peer: five ChannelData of 40 payload bytes and a shorter one, one run.
    let payloads: Vec<Vec<u8>> = (0..6u8)
        .map(|i| vec![b'a' + i; if i == 5 { 17 } else { 40 }])
        .collect();
    let run: Vec<Vec<u8>> = payloads
        .iter()
        .map(|p| {
            let mut b = Vec::new();
            framing::write_channel_data(&mut b, 0x4001, p, false);
            b
        })
        .collect();
    send_run(fd, turn, &run);
    let mut buf = [0u8; 2048];
    for want in &payloads {
        let (n, from) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &want[..]);
        assert_eq!(from, relayed);
    }
    assert_eq!(coalesced(), 6, "the run arrived as one receive");

    // Peer → client: a run of four datagrams to the relayed address.
    let back: Vec<Vec<u8>> = (0..4u8).map(|i| vec![b'0' + i; 33]).collect();
    send_run(peer.as_raw_fd(), relayed, &back);
    for want in &back {
        let (p, d) = c.recv_data(Duration::from_secs(2)).expect("ChannelData");
        assert_eq!((p, &d), (None, want));
    }
    assert_eq!(coalesced(), 10);

    // Runs of 128 Binding requests in all (more answers than one send batch): an
    // answer each, by transaction id.
    let reqs: Vec<Vec<u8>> = (0..128u8)
        .map(|i| Message::new(method::BINDING, Class::Request, [i + 1; 12]).encode(None, false))
        .collect();
    send_run(fd, turn, &reqs);
    let mut tids = Vec::new();
    while tids.len() < 128 {
        let b = c.recv(Duration::from_secs(2)).expect("a Binding answer");
        let m = turn::stun::parse(&b).unwrap();
        assert_eq!((m.method, m.class), (method::BINDING, Class::Success));
        tids.push(m.tid[0]);
    }
    tids.sort();
    assert_eq!(tids, (1..=128).collect::<Vec<u8>>());

    // Datagrams over the limit, in a run: each dropped and counted, none relayed.
    let malformed = || {
        metric(
            &server,
            "chatixia_turn_dropped_total",
            "reason=\"malformed\"",
        )
    };
    let before = malformed();
    let big: Vec<Vec<u8>> = (0..2)
        .map(|_| {
            let mut b = Vec::new();
            framing::write_channel_data(&mut b, 0x4001, &[7u8; 5000], false);
            b
        })
        .collect();
    send_run(fd, turn, &big);
    assert!(eventually(Duration::from_secs(2), || malformed() == before + 2));
    peer.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        peer.recv_from(&mut buf).is_err(),
        "nothing over the limit was relayed"
    );
    // And the allocation still relays.
    c.send_channel(0x4001, b"still here");
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let (n, _) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"still here");
}

#[test]
fn an_expired_credential_ends_its_allocation() {
    let (server, turn) = turn_rig::start(1, None, &[]);
    let (u, p) = credentials("peer-a", 100);
    let mut c = Client::udp(turn, &u, &p);
    c.relayed();
    assert_eq!(metric(&server, "chatixia_turn_allocations", ""), 1);
    // 101 s later (the server's clock) the credential has expired: gone within a second.
    server.advance(101.0);
    assert!(eventually(Duration::from_secs(3), || metric(
        &server,
        "chatixia_turn_allocations",
        ""
    ) == 0));
}

/// A device paired and approved gets TURN credentials from /api/config (its peer id in
/// the user name) and allocates, on both shards; revoking its pairing ends every one of
/// its allocations within a second, and its credentials no longer allocate.
#[test]
fn revocation_ends_the_peers_allocations_on_every_shard() {
    let (server, turn) = turn_rig::start(2, Some(KEYS_JSON.to_owned()), &[]);
    // Anonymous /api/config: no embedded entry.
    let cfg = server.get("/api/config").json();
    assert!(
        !cfg.to_string().contains("turn:127.0.0.1"),
        "no TURN credentials without a credential: {cfg}"
    );
    // An API key gets one for its peer.
    let r = server.req(
        "GET",
        "/api/config",
        &[("X-API-Key", "ak_test_agent")],
        None,
    );
    let entry = turn_entry(&r.json());
    assert!(entry["username"].as_str().unwrap().ends_with(":agent-x"));
    assert_eq!(
        entry["urls"],
        serde_json::json!([
            format!("turn:{turn}?transport=udp"),
            format!("turn:{turn}?transport=tcp")
        ])
    );
    // A paired device.
    let id = pending_entry(&server, "device-1");
    let r = server.admin_req("POST", &format!("/api/pairing/{id}/approve"));
    assert_eq!(r.status, 200, "{}", r.text());
    let (peer, token) = (
        r.json()["peer_id"].as_str().unwrap().to_owned(),
        r.json()["device_token"].as_str().unwrap().to_owned(),
    );
    let r = server.req("POST", "/api/token", &[("X-Device-Token", &token)], None);
    assert_eq!(r.status, 200);
    let jwt = r.json()["token"].as_str().unwrap().to_owned();
    let r = server.req(
        "GET",
        "/api/config",
        &[("Authorization", &format!("Bearer {jwt}"))],
        None,
    );
    let entry = turn_entry(&r.json());
    let (user, pass) = (
        entry["username"].as_str().unwrap().to_owned(),
        entry["credential"].as_str().unwrap().to_owned(),
    );
    assert!(user.ends_with(&format!(":{peer}")), "{user}");
    // Allocations from many source ports land on both shards.
    let mut clients: Vec<Client> = (0..8).map(|_| Client::udp(turn, &user, &pass)).collect();
    for c in &mut clients {
        c.relayed();
    }
    let per_shard = |s: &str| {
        metric(
            &server,
            "chatixia_turn_allocations",
            &format!("shard=\"{s}\""),
        )
    };
    assert_eq!(per_shard("0") + per_shard("1"), 8);
    assert!(
        per_shard("0") > 0 && per_shard("1") > 0,
        "both shards hold some"
    );
    // Another peer's allocation stays.
    let (u, p) = credentials("bystander", 3600);
    let mut other = Client::udp(turn, &u, &p);
    other.relayed();
    let r = server.admin_req("POST", &format!("/api/pairing/{id}/revoke"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        eventually(Duration::from_secs(1), || metric(
            &server,
            "chatixia_turn_allocations",
            ""
        ) == 1),
        "the revoked peer's allocations end within a second"
    );
    // Its allocations are gone (and its credentials refused: 401).
    assert_eq!(clients[0].refresh(600).code, Some(401));
    assert!(other.refresh(600).ok());
    assert_eq!(
        metric(&server, "chatixia_turn_allocations_revoked_total", ""),
        8
    );
    // Its credentials (issued before the revocation) no longer allocate, on any shard.
    for _ in 0..4 {
        assert_eq!(Client::udp(turn, &user, &pass).allocate().code, Some(401));
    }
}

fn turn_entry(cfg: &Value) -> Value {
    cfg["iceServers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["urls"][0]
                .as_str()
                .is_some_and(|u| u.starts_with("turn:127.0.0.1"))
        })
        .unwrap_or_else(|| panic!("no embedded TURN entry in {cfg}"))
        .clone()
}

/// Revocations are durable: after a restart every shard still refuses the revoked
/// peer's older TURN credentials.
#[test]
fn revocations_survive_a_restart() {
    let data = common::scratch_data_dir();
    let data = data.to_str().unwrap().to_owned();
    let (mut server, turn) = turn_rig::start(2, Some(KEYS_JSON.to_owned()), &["--data-dir", &data]);
    let id = pending_entry(&server, "device-2");
    let r = server.admin_req("POST", &format!("/api/pairing/{id}/approve"));
    let token = r.json()["device_token"].as_str().unwrap().to_owned();
    let r = server.req("POST", "/api/token", &[("X-Device-Token", &token)], None);
    let jwt = r.json()["token"].as_str().unwrap().to_owned();
    let r = server.req(
        "GET",
        "/api/config",
        &[("Authorization", &format!("Bearer {jwt}"))],
        None,
    );
    let entry = turn_entry(&r.json());
    let (user, pass) = (
        entry["username"].as_str().unwrap().to_owned(),
        entry["credential"].as_str().unwrap().to_owned(),
    );
    Client::udp(turn, &user, &pass).relayed();
    let r = server.admin_req("POST", &format!("/api/pairing/{id}/revoke"));
    assert_eq!(r.status, 200, "{}", r.text());
    server.restart();
    for _ in 0..4 {
        assert_eq!(Client::udp(turn, &user, &pass).allocate().code, Some(401));
    }
    // Other credentials still allocate.
    let (u, p) = credentials("bystander", 3600);
    Client::udp(turn, &u, &p).relayed();
}
