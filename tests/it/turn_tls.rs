//! TURN over TLS on the embedded TURN server (issue 24 with issue 23's TLS), on
//! 127.0.0.1 with a throwaway CA made by the test:
//! * two `chatixia-sidecar`s, relay only, with a `turns:` TURN_URL (the CA through
//!   `SSL_CERT_FILE`), open their DataChannel and carry IPC messages both ways; one
//!   that does not trust the CA gets no relay;
//! * a TURN client over TLS on `--turn-tls-listen`: challenged (401 with a nonce),
//!   refused with a wrong password (401 with a fresh nonce), then allocates and relays
//!   both ways; a plain TCP TURN client, plain HTTP and an HTTP-only ALPN on that port
//!   are closed;
//! * ALPN `stun.turn` (RFC 7443) on the HTTPS listener reaches TURN, HTTP still works;
//! * `/api/config` advertises `turns:` at the name the caller used;
//! * a reloaded certificate reaches the TURN TLS listener, open TURN connections keep
//!   theirs;
//! * `--turn-tls-listen` without a certificate stops the start.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::sidecar::{keys_json, mesh_message, Sidecar};
use common::tls::{self, CertFiles, KeyKind, Pki, TlsConn};
use common::turn_rig::{self, credentials, eventually, metric, Client, SECRET};
use common::{Server, KEYS_JSON};
use serde_json::json;
use turn::stun::{attr, method, Class, Message};

/// A server with TURN over UDP/TCP (`turn`), TURN over TLS (`turns`) and HTTPS beside
/// the plain listener (`https`), all with `files`' certificate.
struct Rig {
    server: Server,
    turn: SocketAddr,
    turns: SocketAddr,
    https: SocketAddr,
    _dir: common::TempDir,
}

fn start(cores: usize, keys: Option<String>, files: &CertFiles, extra: &[&str]) -> Rig {
    let dir = common::TempDir::new();
    let port_file = dir.0.join("tls-addr");
    let turns = SocketAddr::from(([127, 0, 0, 1], turn_rig::free_port()));
    let mut args: Vec<String> = tls::tls_args(files);
    args.extend([
        "--tls-listen".into(),
        "127.0.0.1:0".into(),
        "--tls-port-file".into(),
        port_file.display().to_string(),
        "--turn-tls-listen".into(),
        turns.to_string(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (server, turn) = turn_rig::start(cores, keys, &args);
    let https = tls::read_port_file(&port_file);
    Rig {
        server,
        turn,
        turns,
        https,
        _dir: dir,
    }
}

fn peer_socket() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

/// Relays both ways through `c`: Send/Data indications, then a channel.
fn relay_both_ways(c: &mut Client) {
    let relayed = c.relayed();
    let (peer, peer_addr) = peer_socket();
    assert!(c.permission(&[peer_addr]).ok());
    c.send_to_peer(peer_addr, b"hello peer");
    let mut buf = [0u8; 2048];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"hello peer"[..], relayed));
    peer.send_to(b"hello client", relayed).unwrap();
    let (p, d) = c
        .recv_data(Duration::from_secs(2))
        .expect("a Data indication");
    assert_eq!((p, d.as_slice()), (Some(peer_addr), &b"hello client"[..]));
    assert!(c.channel_bind(0x4001, peer_addr).ok());
    c.send_channel(0x4001, b"over the channel");
    let (n, _) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"over the channel");
    peer.send_to(b"and back", relayed).unwrap();
    let (p, d) = c.recv_data(Duration::from_secs(2)).expect("ChannelData");
    assert_eq!((p, d.as_slice()), (None, &b"and back"[..]));
}

#[test]
fn two_sidecars_relay_only_over_tls() {
    let pki = Pki::new();
    let files = pki.issue("turns", KeyKind::Ecdsa);
    // The default peer policy (no --turn-allow-peer), as for UDP and TCP.
    let rig = start(
        1,
        Some(keys_json(&["a", "b", "c"])),
        &files,
        &["--no-allow"],
    );
    // Roots that exist but do not include the test CA.
    let other = Pki::new();
    let env = |trusted: bool| {
        let mut env = vec![
            (
                "TURN_URL".to_string(),
                format!("turns:localhost:{}?transport=tcp", rig.turns.port()),
            ),
            ("TURN_SECRET".into(), SECRET.into()),
            ("ICE_TRANSPORT_POLICY".into(), "relay".into()),
        ];
        let ca = if trusted { &pki.ca_pem } else { &other.ca_pem };
        env.push(("SSL_CERT_FILE".into(), ca.display().to_string()));
        env
    };
    let mut a = Sidecar::start_with(&rig.server, "a", &env(true));
    a.wait_log("relay candidate relayed=", 1, Duration::from_secs(10));
    a.wait_registered();
    let mut b = Sidecar::start_with(&rig.server, "b", &env(true));
    b.wait_log("relay candidate relayed=", 1, Duration::from_secs(10));
    a.expect_connected("peer-b");
    b.expect_connected("peer-a");
    a.send_json(json!({"type":"send","payload":{"target_peer":"peer-b","message":mesh_message("task_request","r1","over TURN over TLS")}}));
    let m = b.expect("message from a", Duration::from_secs(5), |v| {
        v["type"] == "message"
    });
    assert_eq!(m["payload"]["from_peer"], "peer-a");
    assert_eq!(
        m["payload"]["message"]["payload"]["text"],
        "over TURN over TLS"
    );
    b.send_json(json!({"type":"send","payload":{"target_peer":"peer-a","message":mesh_message("task_response","r1","and back")}}));
    let m = a.expect("message from b", Duration::from_secs(5), |v| {
        v["type"] == "message"
    });
    assert_eq!(m["payload"]["message"]["payload"]["text"], "and back");
    for i in 0..50 {
        b.send_json(json!({"type":"send","payload":{"target_peer":"peer-a","message":mesh_message("task_stream_chunk",&i.to_string(),"x")}}));
    }
    for i in 0..50 {
        let m = a.expect("chunk", Duration::from_secs(10), |v| {
            v["type"] == "message" && v["payload"]["message"]["type"] == "task_stream_chunk"
        });
        assert_eq!(m["payload"]["message"]["request_id"], i.to_string());
    }
    for l in a.log().lines().chain(b.log().lines()) {
        if l.contains("offering") || l.contains("answering") {
            let types = l.split("candidates=").nth(1).unwrap_or("").trim();
            assert!(types.is_empty() || types == "relay", "{l}");
        }
    }
    // Both allocations live on TLS connections (the sidecars' registry URLs are plain:
    // every TLS handshake is a TURN one).
    assert_eq!(metric(&rig.server, "chatixia_turn_allocations", ""), 2);
    assert_eq!(metric(&rig.server, "chatixia_turn_tcp_connections", ""), 2);
    assert_eq!(metric(&rig.server, "chatixia_turn_tls_connections", ""), 2);
    assert!(metric(&rig.server, "chatixia_tls_handshakes_total", "") >= 2);
    assert!(
        metric(
            &rig.server,
            "chatixia_turn_relayed_packets_total",
            "to_peer"
        ) > 10
    );
    assert!(
        metric(
            &rig.server,
            "chatixia_turn_relayed_packets_total",
            "to_client"
        ) > 10
    );

    // A sidecar that does not trust the server's CA gets no relay.
    let c = Sidecar::start_with(&rig.server, "c", &env(false));
    c.wait_log("TURN: TLS handshake failed", 1, Duration::from_secs(10));
    // (The other CA has the same name as the server's: its signature does not verify.)
    assert!(c.log().contains("invalid peer certificate"), "{}", c.log());
    assert_eq!(c.log_count("relay candidate relayed="), 0, "{}", c.log());
}

#[test]
fn turn_over_tls_challenges_refuses_a_bad_credential_and_relays() {
    let pki = Pki::new();
    let files = pki.issue("turns", KeyKind::Ecdsa);
    let rig = start(2, None, &files, &[]);
    let cfg = turn_rig::tls_config(pki.roots());
    let (user, pass) = credentials("peer-tls", 3600);

    // The wrong password: 401 with a nonce, then 401 again with a fresh one.
    let mut c = Client::tls(rig.turns, &cfg, "localhost", &user, "not the password");
    let conn = c.tls_conn().unwrap();
    assert_eq!(conn.alpn_protocol(), Some(&b"stun.turn"[..]));
    assert_eq!(conn.peer_certificates().unwrap()[0].as_ref(), files.leaf);
    let attrs = vec![(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])];
    let first = c.request(method::ALLOCATE, attrs.clone());
    assert_eq!(first.code, Some(401));
    let msg = first.msg();
    assert!(msg.get(attr::NONCE).is_some_and(|n| !n.is_empty()));
    assert_eq!(msg.get(attr::REALM), Some(turn_rig::REALM.as_bytes()));
    let bad = c.request(method::ALLOCATE, attrs);
    assert_eq!(bad.code, Some(401), "a wrong password is refused");
    assert!(bad.msg().get(attr::NONCE).is_some_and(|n| !n.is_empty()));
    assert_eq!(metric(&rig.server, "chatixia_turn_allocations", ""), 0);

    // The right one allocates and relays both ways over TLS.
    let mut c = Client::tls(rig.turns, &cfg, "localhost", &user, &pass);
    relay_both_ways(&mut c);
    assert_eq!(metric(&rig.server, "chatixia_turn_allocations", ""), 1);
    assert_eq!(metric(&rig.server, "chatixia_turn_tcp_connections", ""), 2);
    // The connection is the allocation: closing it ends it.
    drop(c);
    assert!(eventually(Duration::from_secs(3), || {
        metric(&rig.server, "chatixia_turn_allocations", "") == 0
    }));
}

/// Asserts that the server closes `s` within 5 s having sent nothing but TLS (an
/// alert); returns what it sent.
fn closed_with_no_answer(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("not closed: {e} (received {got:?})"),
        }
    }
    assert!(
        got.is_empty() || got[0] == 0x15,
        "only a TLS alert may come back: {got:?}"
    );
    got
}

#[test]
fn non_tls_clients_on_the_turn_tls_port_are_closed() {
    let pki = Pki::new();
    let files = pki.issue("turns", KeyKind::Ecdsa);
    // A short handshake deadline, for the client that says nothing.
    let rig = start(1, None, &files, &["--http-header-timeout", "2"]);

    // A plain TURN-over-TCP client: its Allocate gets no answer, the connection ends.
    let mut s = TcpStream::connect(rig.turns).unwrap();
    let mut allocate = Message::new(method::ALLOCATE, Class::Request, [9; 12]);
    allocate.attributes = vec![(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])];
    s.write_all(&allocate.encode(None, true)).unwrap();
    closed_with_no_answer(&mut s);

    // Plain HTTP: no HTTP answer (this is not the HTTPS port), closed.
    let mut s = TcpStream::connect(rig.turns).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    closed_with_no_answer(&mut s);

    // A TLS client that offers only ALPN http/1.1: refused (no_application_protocol).
    let http_only = pki.client();
    let e = Client::try_tls(rig.turns, &http_only, "localhost").unwrap_err();
    assert!(e.to_string().contains("NoApplicationProtocol"), "{e}");
    // A client that connects and says nothing is closed by the handshake deadline.
    let mut idle = TcpStream::connect(rig.turns).unwrap();
    let got = closed_with_no_answer(&mut idle);
    assert!(got.is_empty(), "{got:?}");

    assert_eq!(metric(&rig.server, "chatixia_turn_allocations", ""), 0);
    assert!(
        metric(
            &rig.server,
            "chatixia_tls_handshakes_failed_total",
            "reason=\"protocol\""
        ) >= 3
    );
    assert_eq!(
        metric(
            &rig.server,
            "chatixia_tls_handshakes_failed_total",
            "reason=\"plaintext_http\""
        ),
        0
    );
    assert!(
        metric(
            &rig.server,
            "chatixia_tls_handshakes_failed_total",
            "reason=\"timeout\""
        ) >= 1
    );
    // The listener still serves TURN over TLS.
    let (user, pass) = credentials("peer-after", 3600);
    let mut c = Client::tls(
        rig.turns,
        &turn_rig::tls_config(pki.roots()),
        "localhost",
        &user,
        &pass,
    );
    c.relayed();
}

#[test]
fn tls_connections_count_against_the_tcp_connection_limit() {
    let pki = Pki::new();
    let files = pki.issue("turns", KeyKind::Ecdsa);
    let rig = start(1, None, &files, &["--turn-tcp-connections-max", "2"]);
    let cfg = turn_rig::tls_config(pki.roots());
    let (user, pass) = credentials("peer-limit", 3600);
    // One TLS client with an allocation, one connection still in its handshake.
    let mut first = Client::tls(rig.turns, &cfg, "localhost", &user, &pass);
    first.relayed();
    let _handshaking = TcpStream::connect(rig.turns).unwrap();
    assert!(eventually(Duration::from_secs(3), || metric(
        &rig.server,
        "chatixia_turn_tcp_connections",
        ""
    ) == 2));
    // A third is closed at once, over TLS or over TCP (one limit for both).
    assert!(Client::try_tls(rig.turns, &cfg, "localhost").is_err());
    let mut c = Client::tcp(rig.turn, &user, &pass);
    assert!(c.closed(Duration::from_secs(3)));
    assert!(
        metric(&rig.server, "chatixia_turn_tcp_refused_total", "") == 2,
        "refusals are counted"
    );
    // The first is unaffected.
    assert!(first.refresh(600).ok());
}

/// A TCP connection to `to` from the loopback address `from` (127.x.y.z).
fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local = SocketAddr::from((from, 0));
    s.bind(&local.into()).unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

#[test]
fn one_address_cannot_take_every_tcp_slot() {
    let pki = Pki::new();
    let files = pki.issue("turns", KeyKind::Ecdsa);
    let rig = start(1, None, &files, &["--turn-tcp-connections-per-ip-max", "2"]);
    // An address that only opens connections (handshakes it never finishes).
    let _held: Vec<TcpStream> = (0..2)
        .map(|_| connect_from([127, 0, 0, 9], rig.turns))
        .collect();
    assert!(eventually(Duration::from_secs(3), || metric(
        &rig.server,
        "chatixia_turn_tcp_connections",
        ""
    ) == 2));
    // Its third is closed at once, and counted.
    let mut third = connect_from([127, 0, 0, 9], rig.turns);
    let mut b = [0u8; 1];
    assert!(
        matches!(third.read(&mut b), Ok(0) | Err(_)),
        "a third connection of one address is closed"
    );
    assert_eq!(
        metric(&rig.server, "chatixia_turn_tcp_refused_total", ""),
        1
    );
    // Another address gets its allocation over TLS as usual.
    let cfg = turn_rig::tls_config(pki.roots());
    let (user, pass) = credentials("peer-other", 3600);
    let mut c = Client::tls(rig.turns, &cfg, "localhost", &user, &pass);
    c.relayed();
}

#[test]
fn the_https_listener_hands_alpn_stun_turn_to_turn() {
    let pki = Pki::new();
    let files = pki.issue("turns", KeyKind::Ecdsa);
    let rig = start(2, None, &files, &[]);
    let (user, pass) = credentials("peer-alpn", 3600);
    let cfg = turn_rig::tls_config(pki.roots());
    let mut c = Client::tls(rig.https, &cfg, "localhost", &user, &pass);
    assert_eq!(
        c.tls_conn().unwrap().alpn_protocol(),
        Some(&b"stun.turn"[..])
    );
    relay_both_ways(&mut c);
    // Counted as a TURN connection over TLS.
    assert_eq!(metric(&rig.server, "chatixia_turn_tcp_connections", ""), 1);
    assert_eq!(metric(&rig.server, "chatixia_turn_tls_connections", ""), 1);
    // HTTP on the same port, as before.
    let mut h = TlsConn::connect(rig.https, &pki.client()).unwrap();
    assert_eq!(h.tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(h.get("/healthz").status, 200);
}

#[test]
fn api_config_advertises_turns_at_the_name_the_client_used() {
    let pki = Pki::new();
    let files = pki.issue("turns", KeyKind::Ecdsa);
    let rig = start(1, Some(KEYS_JSON.to_owned()), &files, &[]);
    let port = rig.turns.port();
    let urls = |cfg: &serde_json::Value| -> Vec<String> {
        cfg["iceServers"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["urls"].as_array().unwrap().clone())
            .map(|u| u.as_str().unwrap().to_owned())
            .collect()
    };
    // Over plain HTTP at 127.0.0.1.
    let r = rig.server.req(
        "GET",
        "/api/config",
        &[("X-API-Key", "ak_test_agent")],
        None,
    );
    assert_eq!(r.status, 200);
    let u = urls(&r.json());
    assert!(
        u.contains(&format!("turns:127.0.0.1:{port}?transport=tcp")),
        "{u:?}"
    );
    // Over HTTPS at localhost (the name in the certificate).
    let mut h = TlsConn::connect(rig.https, &pki.client()).unwrap();
    let r = h
        .try_request(
            "GET",
            "/api/config",
            &[("X-API-Key", "ak_test_agent")],
            None,
        )
        .unwrap();
    let cfg = r.json();
    let u = urls(&cfg);
    let turns = format!("turns:localhost:{port}?transport=tcp");
    assert!(u.contains(&turns), "{u:?}");
    // The advertised URL and credentials work.
    let entry = cfg["iceServers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["urls"].to_string().contains(&turns))
        .unwrap();
    let mut c = Client::tls(
        rig.turns,
        &turn_rig::tls_config(pki.roots()),
        "localhost",
        entry["username"].as_str().unwrap(),
        entry["credential"].as_str().unwrap(),
    );
    c.relayed();
}

/// Replaces a server's certificate files with `with`'s (rename, as deploy tools do).
fn install(files: &CertFiles, with: &CertFiles) {
    for (dst, src) in [(&files.cert, &with.cert), (&files.key, &with.key)] {
        let tmp = dst.with_extension("new");
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, dst).unwrap();
    }
}

#[test]
fn a_reloaded_certificate_reaches_turn_over_tls() {
    let pki = Pki::new();
    let first = pki.issue("first", KeyKind::Ecdsa);
    let second = pki.issue("second", KeyKind::Rsa);
    let live = pki.issue("live", KeyKind::Ecdsa);
    install(&live, &first);
    let rig = start(2, None, &live, &["--tls-reload-interval", "0"]);
    let cfg = turn_rig::tls_config(pki.roots());
    let leaf = |c: &Client| c.tls_conn().unwrap().peer_certificates().unwrap()[0].to_vec();
    let (user, pass) = credentials("peer-reload", 3600);
    let mut old = Client::tls(rig.turns, &cfg, "localhost", &user, &pass);
    assert_eq!(leaf(&old), first.leaf);
    old.relayed();

    install(&live, &second);
    let ok = Command::new("kill")
        .args(["-HUP", &rig.server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    // New TURN TLS connections (spread over both shards) get the new certificate.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = (0..8).all(|_| {
            let s = Client::try_tls(rig.turns, &cfg, "localhost").unwrap();
            s.conn.peer_certificates().unwrap()[0].as_ref() == second.leaf
        });
        if all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the TURN TLS listener does not serve the reloaded certificate"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The open connection keeps its allocation and its session.
    assert!(old.refresh(600).ok());
    assert_eq!(leaf(&old), first.leaf);
}

#[test]
fn turn_tls_listen_needs_a_certificate() {
    let dir = common::TempDir::new();
    let out = Command::new(env!("CARGO_BIN_EXE_chatixia-core"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--stun-url",
            "none",
        ])
        .args(["--turn-tls-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.0.join("data"))
        .env("TURN_SECRET", SECRET)
        .env("API_KEYS_FILE", dir.0.join("missing.json"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--turn-tls-listen needs --tls-cert and --tls-key"),
        "{err}"
    );
}
