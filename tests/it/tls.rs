//! TLS on the listeners (issue 23), black-box over loopback with a throwaway PKI: HTTPS
//! and WSS with rustls, curl and Python clients, both io drivers, RSA and ECDSA keys,
//! TLS 1.3 and 1.2; a TLS listener beside the plain one; bad input (plain HTTP on the
//! TLS port, a silent or half-finished handshake, garbage records); start-up refusals
//! naming the file; certificate reload on SIGHUP and on change, without dropping a
//! connection or a request.
use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tls::{self, client_config, KeyKind, Pki, TlsConn};
use common::{json, Opts, Value};
use tungstenite::Message;

fn opts(cores: usize, driver: &str) -> Opts {
    let mut o = Opts::cores(cores);
    o.args = vec!["--io-driver".into(), driver.into()];
    // The reload lines are at info level.
    o.env
        .push(("RUST_LOG".into(), "warn,chatixia_core::tls=info".into()));
    o
}

fn sample(text: &str, name_and_labels: &str) -> u64 {
    text.lines()
        .filter_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|r| r.strip_prefix(' '))
        })
        .map(|v| v.parse::<u64>().unwrap())
        .sum()
}

/// The TLS series summed over shards.
fn tls_metric(srv: &tls::TlsServer, cfg: &Arc<rustls::ClientConfig>, series: &str) -> u64 {
    let r = tls::get(srv.tls_addr, cfg, "/metrics");
    assert_eq!(r.status, 200);
    let text = r.text();
    (0..srv.server.cores)
        .map(|s| {
            let labels = series.replace("SHARD", &s.to_string());
            sample(&text, &labels)
        })
        .sum()
}

fn curl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl (Debian package curl) must be installed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A JWT from `/api/token` over TLS.
fn token(addr: std::net::SocketAddr, cfg: &Arc<rustls::ClientConfig>, key: &str) -> String {
    let mut c = TlsConn::connect(addr, cfg).unwrap();
    let r = c
        .try_request("POST", "/api/token", &[("X-API-Key", key)], None)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["token"].as_str().unwrap().to_string()
}

type Wss = tungstenite::WebSocket<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

fn wss(addr: std::net::SocketAddr, cfg: &Arc<rustls::ClientConfig>, token: &str) -> Wss {
    let c = TlsConn::connect(addr, cfg).unwrap();
    let url = format!("wss://localhost:{}/ws?token={token}", addr.port());
    tungstenite::client(url.as_str(), c.tls).unwrap().0
}

fn ws_recv(ws: &mut Wss) -> Value {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn https_on_both_drivers_with_ecdsa_and_rsa_tls13_and_tls12() {
    for driver in common::DRIVERS {
        for kind in [KeyKind::Ecdsa, KeyKind::Rsa] {
            let pki = Pki::new();
            let files = pki.issue("server", kind);
            // TLS only: --listen is the TLS listener.
            let srv = tls::start(opts(2, driver), &files, false);
            for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
                let cfg = client_config(pki.roots(), &[v]);
                let mut c = TlsConn::connect(srv.tls_addr, &cfg)
                    .unwrap_or_else(|e| panic!("{driver} {kind:?} {v:?}: {e}"));
                assert_eq!(c.tls.conn.protocol_version(), Some(v.version));
                assert_eq!(c.tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
                assert_eq!(c.chain_len(), 2, "the full chain is sent");
                assert_eq!(c.leaf(), files.leaf);
                // Keep-alive: several requests on one connection, a large response
                // (many records) among them.
                for _ in 0..3 {
                    let r = c.get("/healthz");
                    assert_eq!(r.status, 200);
                    assert_eq!(r.json()["status"], "ok");
                }
                let r = c.get("/api/openapi.json");
                assert_eq!(r.status, 200);
                assert!(r.body.len() > 16 * 1024, "{} bytes", r.body.len());
                // A request body over several records.
                let big = json!({"agent_id": "a1", "skill": "x", "payload": "y".repeat(40_000)});
                let body = serde_json::to_vec(&big).unwrap();
                let r = c
                    .try_request(
                        "POST",
                        "/api/hub/tasks",
                        &[("Content-Type", "application/json")],
                        Some(&body),
                    )
                    .unwrap();
                assert!(r.status < 500, "{} {}", r.status, r.text());
            }
            // curl (OpenSSL) trusting the test CA, TLS 1.3 and 1.2; with and without SNI.
            let port = srv.tls_addr.port();
            let resolve = format!("localhost:{port}:127.0.0.1");
            let ca = pki.ca_pem.display().to_string();
            let url = format!("https://localhost:{port}/healthz");
            for extra in [&[][..], &["--tlsv1.2", "--tls-max", "1.2"][..]] {
                let mut args = vec!["--cacert", &ca, "--resolve", &resolve, &url];
                args.extend_from_slice(extra);
                let (ok, out, err) = curl(&args);
                assert!(ok, "curl {extra:?}: {err}");
                assert_eq!(out, r#"{"status":"ok"}"#);
            }
            let ip_url = format!("https://127.0.0.1:{port}/healthz");
            let (ok, out, err) = curl(&["--cacert", &ca, &ip_url]);
            assert!(ok && out.contains("ok"), "by IP (no SNI): {err}");
            // An unknown name is accepted by the server (SNI is not checked); the client
            // then refuses the certificate, as it should.
            let other = format!("other.example:{port}:127.0.0.1");
            let other_url = format!("https://other.example:{port}/healthz");
            let (ok, _, err) = curl(&["--cacert", &ca, "--resolve", &other, &other_url]);
            assert!(!ok && err.contains("certificate"), "{err}");
            let (ok, out, _) = curl(&["-k", "--resolve", &other, &other_url]);
            assert!(ok && out.contains("ok"));
            // Untrusted without the CA.
            let (ok, _, _) = curl(&["--resolve", &resolve, &url]);
            assert!(!ok, "the test CA is not trusted by default");
        }
    }
}

#[test]
fn signaling_over_wss_across_shards() {
    for driver in common::DRIVERS {
        let pki = Pki::new();
        let files = pki.issue("server", KeyKind::Ecdsa);
        let mut o = opts(2, driver);
        o.keys = Some(
            r#"{"keys": {"ak_a": {"peer_id": "alice", "role": "agent"},
                         "ak_b": {"peer_id": "bob", "role": "agent"}}}"#
                .into(),
        );
        let srv = tls::start(o, &files, false);
        let cfg = pki.client();
        let mut a = wss(srv.tls_addr, &cfg, &token(srv.tls_addr, &cfg, "ak_a"));
        let mut b = wss(srv.tls_addr, &cfg, &token(srv.tls_addr, &cfg, "ak_b"));
        a.send(Message::text(
            json!({"type": "register", "peer_id": "alice"}).to_string(),
        ))
        .unwrap();
        assert_eq!(ws_recv(&mut a)["type"], "peer_list");
        b.send(Message::text(
            json!({"type": "register", "peer_id": "bob"}).to_string(),
        ))
        .unwrap();
        let list = ws_recv(&mut b);
        assert_eq!(list["payload"]["peers"], json!(["alice"]), "{list}");
        // A large offer (several TLS records) relayed from alice to bob, and back.
        let sdp = "v=0 ".repeat(5000);
        a.send(Message::text(
            json!({"type": "offer", "peer_id": "alice", "target_id": "bob", "payload": {"sdp": sdp}})
                .to_string(),
        ))
        .unwrap();
        let got = ws_recv(&mut b);
        assert_eq!(got["type"], "offer");
        assert_eq!(got["peer_id"], "alice");
        assert_eq!(got["payload"]["sdp"], sdp.as_str());
        b.send(Message::text(
            json!({"type": "answer", "peer_id": "bob", "target_id": "alice", "payload": {"sdp": "ok"}})
                .to_string(),
        ))
        .unwrap();
        assert_eq!(ws_recv(&mut a)["type"], "answer");
        // Ping and close.
        a.send(Message::Ping(b"p".to_vec().into())).unwrap();
        loop {
            match a.read().unwrap() {
                Message::Pong(p) => {
                    assert_eq!(&p[..], b"p");
                    break;
                }
                Message::Ping(_) => continue,
                m => panic!("{m:?}"),
            }
        }
        a.close(None).unwrap();
        loop {
            match a.read() {
                Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => break,
                Ok(_) => continue,
                Err(e) => panic!("{e}"),
            }
        }
    }
}

#[test]
fn python_ssl_and_websockets_clients() {
    let bin = common::python::venv_bin();
    let pki = Pki::new();
    let files = pki.issue("server", KeyKind::Ecdsa);
    let srv = tls::start(opts(2, "auto"), &files, false);
    let script = r#"
import asyncio, json, ssl, sys, urllib.request
import websockets
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
base = f"https://localhost:{port}"
with urllib.request.urlopen(base + "/healthz", context=ctx) as r:
    assert r.status == 200 and json.load(r) == {"status": "ok"}
def token(key):
    req = urllib.request.Request(base + "/api/token", method="POST", headers={"x-api-key": key})
    with urllib.request.urlopen(req, context=ctx) as r:
        return json.load(r)["token"]
async def main():
    async with websockets.connect(f"wss://localhost:{port}/ws?token={token('ak_test_admin')}", ssl=ctx) as a, \
               websockets.connect(f"wss://localhost:{port}/ws?token={token('ak_test_agent')}", ssl=ctx) as b:
        await a.send(json.dumps({"type": "register", "peer_id": "admin-1"}))
        assert json.loads(await a.recv())["type"] == "peer_list"
        await b.send(json.dumps({"type": "register", "peer_id": "agent-x"}))
        assert json.loads(await b.recv())["payload"]["peers"] == ["admin-1"]
        await b.send(json.dumps({"type": "offer", "peer_id": "agent-x", "target_id": "admin-1", "payload": {"sdp": "x" * 30000}}))
        m = json.loads(await a.recv())
        assert m["type"] == "offer" and m["peer_id"] == "agent-x" and len(m["payload"]["sdp"]) == 30000
    print("python ok")
asyncio.run(main())
"#;
    let out = Command::new(bin.join("python"))
        .arg("-c")
        .arg(script)
        .arg(srv.tls_addr.port().to_string())
        .arg(&pki.ca_pem)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        srv.server.log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python ok"));
}

#[test]
fn a_tls_listener_beside_the_plain_one() {
    let pki = Pki::new();
    let files = pki.issue("server", KeyKind::Ecdsa);
    let srv = tls::start(opts(2, "auto"), &files, true);
    assert_ne!(srv.tls_addr, srv.server.addr);
    // The port file keeps its format: the plain address.
    assert_eq!(srv.server.get("/healthz").status, 200);
    let r = tls::get(srv.tls_addr, &pki.client(), "/healthz");
    assert_eq!(r.status, 200);
    // Each port speaks its own protocol.
    assert!(TlsConn::connect(srv.server.addr, &pki.client()).is_err());
    let mut s = TcpStream::connect(srv.tls_addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let text = String::from_utf8_lossy(&tls::read_raw_until_close(&mut s)).into_owned();
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    // Handshakes are counted per shard.
    let cfg = pki.client();
    let n = tls_metric(&srv, &cfg, "chatixia_tls_handshakes_total{shard=\"SHARD\"}");
    assert!(n >= 2, "{n}");
    assert_eq!(
        tls_metric(
            &srv,
            &cfg,
            "chatixia_tls_certificate_generation{shard=\"SHARD\"}"
        ),
        2,
        "every shard serves the certificate loaded at start (generation 1)"
    );
}

#[test]
fn plain_http_on_the_tls_port_gets_a_readable_400_and_a_close() {
    for driver in common::DRIVERS {
        let pki = Pki::new();
        let files = pki.issue("server", KeyKind::Ecdsa);
        let srv = tls::start(opts(1, driver), &files, false);
        // A TLS connection held open across the refusal is not disturbed.
        let cfg = pki.client();
        let mut keep = TlsConn::connect(srv.tls_addr, &cfg).unwrap();
        assert_eq!(keep.get("/healthz").status, 200);
        let mut s = TcpStream::connect(srv.tls_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /api/registry/agents HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let raw = tls::read_raw_until_close(&mut s);
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
        assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        let v: Value = serde_json::from_str(body).unwrap();
        let e = v["error"].as_str().unwrap();
        assert!(e.contains("https://") && e.contains("TLS"), "{e}");
        // curl's view: the same readable answer.
        let url = format!("http://127.0.0.1:{}/healthz", srv.tls_addr.port());
        let (_, out, _) = curl(&[&url]);
        assert!(out.contains("use https://"), "{out}");
        assert_eq!(keep.get("/healthz").status, 200);
        assert_eq!(
            tls_metric(
                &srv,
                &cfg,
                "chatixia_tls_handshakes_failed_total{shard=\"SHARD\",reason=\"plaintext_http\"}"
            ),
            2
        );
    }
}

#[test]
fn a_handshake_that_does_not_finish_within_the_header_deadline_is_closed() {
    for driver in common::DRIVERS {
        let pki = Pki::new();
        let files = pki.issue("server", KeyKind::Ecdsa);
        let mut o = opts(1, driver);
        o.args.extend(["--http-header-timeout".into(), "1".into()]);
        let srv = tls::start(o, &files, false);
        let cfg = pki.client();
        // Silent after connecting; and half a ClientHello. Timed from before the
        // connects: the server's deadline runs from its accept, which is after.
        let t = Instant::now();
        let mut silent = TcpStream::connect(srv.tls_addr).unwrap();
        let mut half = TcpStream::connect(srv.tls_addr).unwrap();
        let mut hello = Vec::new();
        {
            let mut c = rustls::ClientConnection::new(
                cfg.clone(),
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            )
            .unwrap();
            c.write_tls(&mut hello).unwrap();
        }
        half.write_all(&hello[..hello.len() / 2]).unwrap();
        for s in [&mut silent, &mut half] {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let got = tls::read_raw_until_close(s);
            assert!(got.is_empty(), "closed without an answer: {got:?}");
        }
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(8),
            "closed after {took:?}"
        );
        // Others are served meanwhile and after.
        assert_eq!(tls::get(srv.tls_addr, &cfg, "/healthz").status, 200);
        assert_eq!(
            tls_metric(
                &srv,
                &cfg,
                "chatixia_tls_handshakes_failed_total{shard=\"SHARD\",reason=\"timeout\"}"
            ),
            2
        );
    }
}

/// A TLS record of `kind` carrying `body`.
fn record(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut r = vec![kind, 3, 3];
    r.extend_from_slice(&(body.len() as u16).to_be_bytes());
    r.extend_from_slice(body);
    r
}

#[test]
fn garbage_records_end_the_connection_with_an_alert() {
    for driver in common::DRIVERS {
        let pki = Pki::new();
        let files = pki.issue("server", KeyKind::Ecdsa);
        let srv = tls::start(opts(1, driver), &files, false);
        let cfg = pki.client();
        let mut keep = TlsConn::connect(srv.tls_addr, &cfg).unwrap();
        // Before the handshake: a handshake record of junk, an unknown record type, an
        // SSLv2-style hello, random bytes.
        for junk in [
            record(0x16, b"\x01\x00\x00\x05hello"),
            record(0x19, b"what"),
            vec![0x80, 0x2e, 0x01, 0x00, 0x02],
            (0..300u32).map(|i| (i * 131 % 251) as u8 | 0x80).collect(),
        ] {
            let mut s = TcpStream::connect(srv.tls_addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(&junk).unwrap();
            let got = tls::read_raw_until_close(&mut s);
            assert_eq!(
                got.first(),
                Some(&0x15),
                "an alert record for {junk:?}: {got:?}"
            );
            assert_eq!(got.get(5), Some(&2), "fatal");
        }
        // After the handshake: a record that fails to decrypt.
        let mut c = TlsConn::connect(srv.tls_addr, &cfg).unwrap();
        assert_eq!(c.get("/healthz").status, 200);
        c.tls.sock.write_all(&record(0x17, &[0x5a; 64])).unwrap();
        let (_, end) = c.read_to_end();
        let e = end.expect_err("the server's alert ends the connection");
        assert!(e.to_string().contains("BadRecordMac"), "{e}");
        // And between requests on a keep-alive connection of the multishot path.
        let mut c = TlsConn::connect(srv.tls_addr, &cfg).unwrap();
        for _ in 0..3 {
            assert_eq!(c.get("/healthz").status, 200);
        }
        c.tls.sock.write_all(&record(0x17, &[1; 40])).unwrap();
        assert!(c.read_to_end().1.is_err());
        // The connection held open is fine.
        assert_eq!(keep.get("/healthz").status, 200);
        assert!(
            tls_metric(
                &srv,
                &cfg,
                "chatixia_tls_handshakes_failed_total{shard=\"SHARD\",reason=\"protocol\"}"
            ) >= 4
        );
    }
}

/// Runs the server binary with `args` and returns its exit code and stderr.
fn start_fails(args: &[&str]) -> (i32, String) {
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
        .arg("--data-dir")
        .arg(dir.0.join("data"))
        .args(args)
        .env("API_KEYS_FILE", dir.0.join("missing.json"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_certificate_or_key_stops_the_start_naming_the_file() {
    let pki = Pki::new();
    let a = pki.issue("a", KeyKind::Ecdsa);
    let b = pki.issue("b", KeyKind::Rsa);
    let s = |p: &std::path::Path| p.display().to_string();
    let missing = pki.dir.0.join("missing.pem");
    let garbage = pki.dir.0.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        // Unreadable files.
        (
            vec![s(&missing), s(&a.key)],
            vec!["--tls-cert".into(), s(&missing)],
        ),
        (
            vec![s(&a.cert), s(&missing)],
            vec!["--tls-key".into(), s(&missing)],
        ),
        // Files without what they should hold.
        (
            vec![s(&garbage), s(&a.key)],
            vec!["--tls-cert".into(), s(&garbage), "no certificate".into()],
        ),
        (
            vec![s(&a.cert), s(&garbage)],
            vec!["--tls-key".into(), s(&garbage), "no private key".into()],
        ),
        // A key and a certificate that do not belong together (both ways round).
        (
            vec![s(&a.cert), s(&b.key)],
            vec![s(&a.cert), s(&b.key), "does not match".into()],
        ),
        (
            vec![s(&b.cert), s(&a.key)],
            vec![s(&b.cert), s(&a.key), "does not match".into()],
        ),
    ];
    for (files, want) in cases {
        let (code, err) = start_fails(&["--tls-cert", &files[0], "--tls-key", &files[1]]);
        assert_eq!(code, 1, "{files:?}: {err}");
        for w in &want {
            assert!(err.contains(w.as_str()), "{files:?}: want {w:?} in {err}");
        }
    }
    // --tls-listen needs a certificate.
    let (code, err) = start_fails(&["--tls-listen", "127.0.0.1:0"]);
    assert_ne!(code, 0);
    assert!(err.contains("--tls-cert"), "{err}");
}

/// Replaces a server's certificate files with `with`'s (rename, as deploy tools do).
fn install(files: &tls::CertFiles, with: &tls::CertFiles) {
    for (dst, src) in [(&files.cert, &with.cert), (&files.key, &with.key)] {
        let tmp = dst.with_extension("new");
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, dst).unwrap();
    }
}

fn hangup(srv: &common::Server) {
    let ok = Command::new("kill")
        .args(["-HUP", &srv.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Waits until a new connection is served `leaf`.
fn wait_for_leaf(addr: std::net::SocketAddr, cfg: &Arc<rustls::ClientConfig>, leaf: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Several connections: SO_REUSEPORT spreads them over the shards.
        let all = (0..8).all(|_| TlsConn::connect(addr, cfg).unwrap().leaf() == leaf);
        if all {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn certificates_reload_on_sighup_and_on_change_keeping_connections() {
    let pki = Pki::new();
    let first = pki.issue("first", KeyKind::Ecdsa);
    let second = pki.issue("second", KeyKind::Rsa);
    let third = pki.issue("third", KeyKind::Ecdsa);
    let live = pki.issue("live", KeyKind::Ecdsa);
    install(&live, &first);
    let mut o = opts(2, "auto");
    // SIGHUP only at first: the file-change check is off.
    o.args.extend(["--tls-reload-interval".into(), "0".into()]);
    let srv = tls::start(o, &live, false);
    let cfg = pki.client();
    let mut old = TlsConn::connect(srv.tls_addr, &cfg).unwrap();
    assert_eq!(old.leaf(), first.leaf);
    assert_eq!(old.get("/healthz").status, 200);

    // SIGHUP: new connections get the new certificate; the open one keeps working.
    install(&live, &second);
    hangup(&srv.server);
    wait_for_leaf(srv.tls_addr, &cfg, &second.leaf);
    assert_eq!(old.get("/healthz").status, 200);
    assert_eq!(old.leaf(), first.leaf);

    // A key that does not match: refused with a log line; the second keeps serving.
    std::fs::copy(&third.cert, &live.cert).unwrap();
    hangup(&srv.server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !srv.server.log().contains("reload refused") {
        assert!(
            Instant::now() < deadline,
            "no log line: {}",
            srv.server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = srv.server.log();
    assert!(log.contains("does not match"), "{log}");
    for _ in 0..8 {
        assert_eq!(
            TlsConn::connect(srv.tls_addr, &cfg).unwrap().leaf(),
            second.leaf
        );
    }
    // An unreadable file: the same.
    std::fs::remove_file(&live.key).unwrap();
    hangup(&srv.server);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(tls::get(srv.tls_addr, &cfg, "/healthz").status, 200);
    assert_eq!(
        TlsConn::connect(srv.tls_addr, &cfg).unwrap().leaf(),
        second.leaf
    );
    assert!(srv.server.log().contains("--tls-key"));
    assert_eq!(old.get("/healthz").status, 200);
}

#[test]
fn changed_files_are_reloaded_without_a_signal() {
    let pki = Pki::new();
    let first = pki.issue("first", KeyKind::Ecdsa);
    let second = pki.issue("second", KeyKind::Ecdsa);
    let live = pki.issue("live", KeyKind::Ecdsa);
    install(&live, &first);
    let mut o = opts(2, "auto");
    o.args
        .extend(["--tls-reload-interval".into(), "0.2".into()]);
    let srv = tls::start(o, &live, true);
    let cfg = pki.client();
    assert_eq!(
        TlsConn::connect(srv.tls_addr, &cfg).unwrap().leaf(),
        first.leaf
    );
    install(&live, &second);
    wait_for_leaf(srv.tls_addr, &cfg, &second.leaf);
    assert!(srv
        .server
        .log()
        .contains("the certificate or key file changed"));
    // The shards that accepted since use generation 2 (a poll between the two renames
    // may have refused the new certificate with the old key first: still 2).
    let text = tls::get(srv.tls_addr, &cfg, "/metrics").text();
    let gens: Vec<u64> = (0..2)
        .map(|s| {
            sample(
                &text,
                &format!("chatixia_tls_certificate_generation{{shard=\"{s}\"}}"),
            )
        })
        .collect();
    assert!(
        gens.iter().all(|g| (1..=2).contains(g)) && gens.contains(&2),
        "{gens:?}"
    );
}

#[test]
fn a_reload_under_load_loses_no_request() {
    let pki = Pki::new();
    let certs: Vec<_> = (0..4)
        .map(|i| pki.issue(&format!("c{i}"), KeyKind::Ecdsa))
        .collect();
    let live = pki.issue("live", KeyKind::Ecdsa);
    install(&live, &certs[0]);
    let mut o = opts(2, "auto");
    o.args.extend(["--tls-reload-interval".into(), "0".into()]);
    let srv = tls::start(o, &live, false);
    let cfg = pki.client();
    let addr = srv.tls_addr;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..6 {
        let (cfg, stop, done) = (cfg.clone(), stop.clone(), done.clone());
        workers.push(std::thread::spawn(move || {
            // Half keep one connection, half connect for every request.
            let mut conn: Option<TlsConn> = None;
            while !stop.load(Ordering::Relaxed) {
                let r = if w % 2 == 0 {
                    let c = conn.get_or_insert_with(|| TlsConn::connect(addr, &cfg).unwrap());
                    c.try_request("GET", "/healthz", &[], None)
                } else {
                    TlsConn::connect(addr, &cfg)
                        .and_then(|mut c| c.try_request("GET", "/healthz", &[], None))
                };
                let r = r.unwrap_or_else(|e| panic!("worker {w}: request failed: {e}"));
                assert_eq!(r.status, 200);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for c in certs.iter().cycle().skip(1).take(6) {
        std::thread::sleep(Duration::from_millis(300));
        install(&live, c);
        hangup(&srv.server);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("no request failed");
    }
    let n = done.load(Ordering::Relaxed);
    assert!(n > 50, "{n} requests");
    // The last of c1, c2, c3, c0, c1, c2.
    wait_for_leaf(addr, &cfg, &certs[2].leaf);
    let log = srv.server.log();
    assert_eq!(log.matches("TLS certificate reloaded").count(), 6, "{log}");
}

#[test]
fn connections_of_a_tls_server_survive_many_keep_alive_requests_and_a_graceful_shutdown() {
    let pki = Pki::new();
    let files = pki.issue("server", KeyKind::Ecdsa);
    let mut srv = tls::start(opts(2, "auto"), &files, false);
    let cfg = pki.client();
    let mut c = TlsConn::connect(srv.tls_addr, &cfg).unwrap();
    for _ in 0..200 {
        assert_eq!(c.get("/healthz").status, 200);
    }
    // SIGTERM: the idle keep-alive connection gets close_notify and a FIN.
    let t = std::thread::spawn(move || {
        let (st, _) = srv.server.terminate(Duration::from_secs(10));
        st
    });
    let (rest, end) = c.read_to_end();
    assert!(rest.is_empty());
    assert!(end.is_ok(), "a clean TLS close: {end:?}");
    assert!(t.join().unwrap().success());
    let mut buf = [0u8; 1];
    assert_eq!(c.tls.sock.read(&mut buf).unwrap_or(0), 0);
}
