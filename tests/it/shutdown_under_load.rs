//! SIGTERM under keep-alive POST load (issue 13): every request the server received
//! is answered (the last ones with `connection: close`); none is met by a reset or a
//! cut response. A request that crosses the close of a connection idle through the
//! shutdown grace meets an orderly EOF before any response byte (never read by the
//! server, so a client may resend it). A half-sent request does not hold the exit for
//! the whole `--shutdown-timeout`.
use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Opts, Server};

/// How one loader's run ended.
#[derive(Debug)]
enum End {
    /// The server answered with `connection: close`.
    Closed,
    /// The server was gone before a request could be written (not sent: not lost).
    NotSent,
    /// A request was written and met an orderly EOF before any byte of a response:
    /// the server had closed the idle connection (its shutdown grace over) without
    /// reading a request; an HTTP client may send it again on a new connection.
    Unread,
    /// A request was written and met a reset, or EOF inside a response: lost.
    Lost(String),
}

/// Reads one response; `Ok(close)` with whether it said `connection: close`.
fn read_one(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<bool, String> {
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(end) = common::find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                buf.drain(..end + 4 + len);
                return Ok(head.contains("\r\nconnection: close"));
            }
        }
        match s.read(&mut tmp) {
            Ok(0) => return Err(format!("EOF after {} bytes", buf.len())),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) => return Err(format!("{e} after {} bytes", buf.len())),
        }
    }
}

fn loader(srv_addr: std::net::SocketAddr, sent: Arc<AtomicUsize>, go: Arc<AtomicBool>) -> End {
    let mut s = TcpStream::connect(srv_addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.set_nodelay(true).unwrap();
    let body = br#"{"type":"x"}"#;
    let req = format!(
        "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        String::from_utf8_lossy(body)
    );
    let mut buf = Vec::new();
    loop {
        if s.write_all(req.as_bytes()).is_err() {
            return End::NotSent;
        }
        sent.fetch_add(1, Ordering::Relaxed);
        match read_one(&mut s, &mut buf) {
            Ok(true) => return End::Closed,
            // Answered: the connection is established with the server (not waiting in
            // its accept queue, which a closing listener resets).
            Ok(false) => go.store(true, Ordering::Relaxed),
            Err(e) if e == "EOF after 0 bytes" => return End::Unread,
            Err(e) => return End::Lost(e),
        }
    }
}

#[test]
fn sigterm_under_keepalive_post_load_loses_no_request() {
    for driver in common::DRIVERS {
        let mut o = Opts::cores(2);
        o.args = ["--io-driver", driver, "--shutdown-timeout", "10"]
            .map(String::from)
            .to_vec();
        let mut srv = Server::with(o);
        let sent = Arc::new(AtomicUsize::new(0));
        let loaders: Vec<_> = (0..8)
            .map(|_| {
                let (addr, sent) = (srv.addr, sent.clone());
                let go = Arc::new(AtomicBool::new(false));
                let g = go.clone();
                let h = std::thread::spawn(move || loader(addr, sent, g));
                (h, go)
            })
            .collect();
        // Every loader's connection served at least once, and some requests sent.
        while !loaders.iter().all(|(_, go)| go.load(Ordering::Relaxed))
            || sent.load(Ordering::Relaxed) < 200
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (status, _) = srv.terminate(Duration::from_secs(15));
        assert_eq!(status.code(), Some(0), "{driver}: {status}");
        let ends: Vec<End> = loaders
            .into_iter()
            .map(|(h, _)| h.join().unwrap())
            .collect();
        let lost: Vec<&String> = ends
            .iter()
            .filter_map(|e| match e {
                End::Lost(why) => Some(why),
                _ => None,
            })
            .collect();
        assert!(
            lost.is_empty(),
            "{driver}: {} requests sent, lost: {lost:?}",
            sent.load(Ordering::Relaxed)
        );
        assert!(
            ends.iter().any(|e| matches!(e, End::Closed)),
            "{driver}: {ends:?}"
        );
    }
}

#[test]
fn a_half_sent_request_is_closed_after_a_grace_not_the_whole_shutdown_timeout() {
    let mut o = Opts::cores(1);
    o.args = ["--shutdown-timeout", "60"].map(String::from).to_vec();
    let mut srv = Server::with(o);
    let mut stuck = srv.stream();
    stuck
        .write_all(b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
        .unwrap();
    // The server has the partial request once a full request on another connection
    // is answered (same shard, in order of arrival is not guaranteed; a round trip is).
    assert_eq!(srv.get("/healthz").status, 200);
    // Bounded far below the 60 s shutdown timeout.
    let (status, _) = srv.terminate(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(common::closed_by_peer(&mut stuck));
}
