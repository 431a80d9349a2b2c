//! Hostile HTTP clients (issue 13) over real sockets: early errors are read, not reset
//! (lingering close); header and body deadlines close slowloris connections; the
//! per-IP cap on plain HTTP connections; Host/Expect/leading-CRLF/WebSocket-key rules;
//! JWTs not valid yet.
use crate::common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Opts, Server};

/// Reads until EOF (or a reset after the response), bounded by the socket's timeout.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("read after {} bytes ({:?}): {e}", out.len(), head(&out)),
        }
    }
}

fn head(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
}

/// What a urllib-like client does: send the whole request (no `Expect`), then read.
fn send_all_then_read(srv: &Server, head_bytes: &[u8], body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = srv.stream();
    s.set_write_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(head_bytes)?;
    s.write_all(body)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return Err(e),
        }
    }
}

#[test]
fn early_413_and_431_are_read_by_clients_that_send_everything_first() {
    let body = vec![b'x'; 3 * 1024 * 1024];
    for cores in [1, 2] {
        let srv = Server::start(cores);
        let post = format!(
            "POST /api/hub/tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        for i in 0..20 {
            let resp = send_all_then_read(&srv, post.as_bytes(), &body)
                .unwrap_or_else(|e| panic!("--cores {cores}, try {i}: {e}"));
            assert!(
                resp.starts_with(b"HTTP/1.1 413 "),
                "--cores {cores}, try {i}: {:?}",
                head(&resp)
            );
            assert!(
                common::find(&resp, b"{\"error\":").is_some(),
                "{}",
                head(&resp)
            );
        }
        // A 1 MB header section: 431, read as well.
        let big = format!(
            "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
            "b".repeat(1024 * 1024)
        );
        for i in 0..5 {
            let resp = send_all_then_read(&srv, big.as_bytes(), b"")
                .unwrap_or_else(|e| panic!("--cores {cores}, 431 try {i}: {e}"));
            assert!(resp.starts_with(b"HTTP/1.1 431 "), "{:?}", head(&resp));
        }
    }
}

/// Trickles `prefix` then one byte of `filler` every 50 ms, until the server answers
/// and closes (bounded by `bound`); returns what it answered.
fn trickle(srv: &Server, prefix: &[u8], filler: u8, bound: Duration) -> Vec<u8> {
    let mut s = srv.stream();
    s.write_all(prefix).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            start.elapsed() < bound,
            "still open after {bound:?} of trickling; got {:?}",
            head(&got)
        );
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) if !got.is_empty() => return got,
            Err(e) => panic!("reset without a response: {e}"),
        }
        if got.is_empty() && s.write_all(&[filler]).is_err() {
            // Closed while we wrote: the answer (if any) is what we read next.
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            return read_to_close(&mut s);
        }
    }
}

#[test]
fn slowloris_headers_and_slow_bodies_are_closed_by_their_deadlines() {
    let mut o = Opts::cores(1);
    o.args = [
        "--http-header-timeout",
        "1",
        "--http-body-rate-min",
        "1000",
        "--http-idle-timeout",
        "60",
    ]
    .map(String::from)
    .to_vec();
    let srv = Server::with(o);
    // Headers one byte at a time (each byte would reset an idle timer).
    let got = trickle(
        &srv,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ",
        b'a',
        Duration::from_secs(20),
    );
    assert!(got.starts_with(b"HTTP/1.1 408 "), "{:?}", head(&got));
    assert!(common::find(&got, b"header").is_some(), "{:?}", head(&got));
    // A body at ~20 bytes/s against a minimum of 1000.
    let got = trickle(
        &srv,
        b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n",
        b'x',
        Duration::from_secs(20),
    );
    assert!(got.starts_with(b"HTTP/1.1 408 "), "{:?}", head(&got));
    assert!(common::find(&got, b"body").is_some(), "{:?}", head(&got));
    // Prompt clients are unaffected.
    assert_eq!(srv.get("/healthz").status, 200);
}

#[test]
fn per_ip_cap_on_plain_http_connections_gives_503() {
    let mut o = Opts::cores(1);
    o.args = ["--max-http-connections-per-ip", "4"]
        .map(String::from)
        .to_vec();
    let srv = Server::with(o);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        let mut c = srv.conn();
        match c.try_request("GET", "/healthz", &[], None) {
            Ok(r) if r.status == 200 => held.push(c),
            Ok(r) => {
                assert_eq!(r.status, 503, "{}", r.text());
                assert!(
                    r.text().contains("too many HTTP connections"),
                    "{}",
                    r.text()
                );
                assert_eq!(r.header("connection"), Some("close"));
                refused += 1;
            }
            Err(e) => panic!("no 503 but {e}"),
        }
    }
    // The harness's own readiness connection may still count for a moment.
    assert!((3..=4).contains(&held.len()), "{} served", held.len());
    assert_eq!(refused, 10 - held.len());
    // Held connections keep working; closing them frees their places.
    for c in &mut held {
        assert_eq!(c.get("/healthz").status, 200);
    }
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = srv.conn();
        if c.try_request("GET", "/healthz", &[], None)
            .is_ok_and(|r| r.status == 200)
        {
            break;
        }
        assert!(Instant::now() < deadline, "places not freed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn raw(srv: &Server, bytes: &[u8]) -> Vec<u8> {
    let mut s = srv.stream();
    s.write_all(bytes).unwrap();
    read_to_close(&mut s)
}

#[test]
fn host_expect_leading_crlf_and_websocket_key_rules() {
    let srv = Server::start(1);
    for (req, status) in [
        (&b"GET /healthz HTTP/1.1\r\n\r\n"[..], "400"),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400"),
        (
            b"POST /healthz HTTP/1.1\r\nHost: a\r\nExpect: 999-bogus\r\nContent-Length: 2\r\n\r\n{}",
            "417",
        ),
        (b"GET /healthz HTTP/1.0\r\n\r\n", "200"),
        (
            b"GET /ws?token=a.b.c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAAA\r\n\r\n",
            "400",
        ),
    ] {
        let got = raw(&srv, req);
        assert!(
            got.starts_with(format!("HTTP/1.1 {status} ").as_bytes()),
            "{:?} → {:?}",
            head(req),
            head(&got)
        );
    }
    // Empty lines before a request line: a few are fine, a flood is 400.
    let mut ok = b"\r\n".repeat(8);
    ok.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert!(raw(&srv, &ok).starts_with(b"HTTP/1.1 200 "));
    let got = send_all_then_read(&srv, &b"\r\n".repeat(1024 * 1024), b"").unwrap();
    assert!(got.starts_with(b"HTTP/1.1 400 "), "{:?}", head(&got));
}

#[test]
fn jwt_not_valid_yet_is_refused() {
    let srv = Server::start(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |nbf: Option<u64>| {
        let mut claims =
            serde_json::json!({"sub": "peer-n", "role": "agent", "iat": now, "exp": now + 300});
        if let Some(nbf) = nbf {
            claims["nbf"] = nbf.into();
        }
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(common::ws::SECRET),
        )
        .unwrap()
    };
    assert_eq!(
        common::ws::connect(&srv, &token(Some(now + 3600))).err(),
        Some(401)
    );
    assert!(common::ws::connect(&srv, &token(Some(now))).is_ok());
    assert!(common::ws::connect(&srv, &token(None)).is_ok());
}
