//! A refused WebSocket upgrade (401/503 before the 101) is read by the client even when
//! it sent more after its request (frames pipelined behind the upgrade): the server
//! closes with a lingering close (shut its write side, drain the client's bytes for a
//! bounded time and size), so the kernel does not answer the unread bytes with a reset
//! that would destroy the refusal before the client reads it.
use crate::common;

use std::io::{Read, Write};
use std::thread;

use common::{find, Server};

/// Bytes the client sends after its upgrade request (masked binary frames of 60 KB):
/// more than the socket buffers hold, so the server closes with them unread.
const PIPELINED_BYTES: usize = 3 * 1024 * 1024;
const RUNS: usize = 10;

fn frames(total: usize) -> Vec<u8> {
    let payload = 60_000usize;
    let mut one = vec![
        0x82,
        0x80 | 126,
        (payload >> 8) as u8,
        payload as u8,
        0,
        0,
        0,
        0,
    ];
    one.resize(one.len() + payload, b'z');
    let mut out = Vec::with_capacity(total + one.len());
    while out.len() < total {
        out.extend_from_slice(&one);
    }
    out
}

/// Sends `request` and the pipelined frames from a thread; returns what was read.
fn refused(srv: &Server, request: &str) -> Result<Vec<u8>, std::io::Error> {
    let mut s = srv.stream();
    let mut w = s.try_clone().unwrap();
    let mut bytes = request.as_bytes().to_vec();
    bytes.extend(frames(PIPELINED_BYTES));
    let writer = thread::spawn(move || {
        let _ = w.write_all(&bytes);
    });
    let mut got = Vec::new();
    let res = s.read_to_end(&mut got);
    let _ = writer.join();
    res.map(|_| got)
}

const UPGRADE: &str = "host: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
                       sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

#[test]
fn bad_token_401_is_read_not_reset() {
    let srv = Server::start(1);
    let req = format!("GET /ws?token=a.b.c HTTP/1.1\r\n{UPGRADE}\r\n");
    for run in 0..RUNS {
        let got = refused(&srv, &req)
            .unwrap_or_else(|e| panic!("run {run}: the refusal was lost to {e}"));
        let text = String::from_utf8_lossy(&got[..find(&got, b"\r\n\r\n").unwrap_or(got.len())]);
        assert!(text.starts_with("HTTP/1.1 401 "), "run {run}: {text}");
        assert!(
            String::from_utf8_lossy(&got).contains("invalid or expired token"),
            "run {run}"
        );
    }
}

#[test]
fn per_ip_cap_503_is_read_not_reset() {
    // One signaling connection per IP: the second is refused with 503.
    let srv = Server::start_driver(1, "auto", &["--max-connections-per-ip", "1"]);
    let token = common::ws::jwt_for("agent-x", 300);
    let req = format!("GET /ws?token={token} HTTP/1.1\r\n{UPGRADE}\r\n");
    let mut first = srv.stream();
    first.write_all(req.as_bytes()).unwrap();
    let mut buf = [0u8; 256];
    let n = first.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 101 "));
    for run in 0..RUNS {
        let got = refused(&srv, &req)
            .unwrap_or_else(|e| panic!("run {run}: the refusal was lost to {e}"));
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 503 "), "run {run}: {text}");
    }
    drop(first);
}
