//! Signaling limits, each answered clearly: message size (1009), a peer that does not
//! read (1008, bounded memory), idle timeout with server pings (driven by the test
//! clock), connections per client IP and per shard (503 with a JSON reason).
use crate::common;

use std::time::Duration;

use common::ws::{self, connect, join, jwt_for, recv, recv_close, send};
use common::{Opts, Server};
use serde_json::json;
use tungstenite::Message;

/// The bytes queued for sending on the server's side of the connection between
/// `server` and `client` (`tx_queue` in /proc/net/tcp), if it is listed.
fn send_queue(server: std::net::SocketAddr, client: std::net::SocketAddr) -> Option<u64> {
    let hex = |a: std::net::SocketAddr| match a {
        std::net::SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        std::net::SocketAddr::V6(_) => String::new(),
    };
    let (local, remote) = (hex(server), hex(client));
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) == Some(&local.as_str()) && f.get(2) == Some(&remote.as_str()) {
            let (tx, _) = f.get(4)?.split_once(':')?;
            u64::from_str_radix(tx, 16).ok()
        } else {
            None
        }
    })
}

/// Waits (up to 20 s) until the server's send queue to `client` holds bytes and has not
/// changed over five polls 50 ms apart: the server's write to it is stuck.
fn wait_for_stalled_write(server: std::net::SocketAddr, client: std::net::SocketAddr) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(20);
    let mut last = None;
    let mut same = 0;
    while std::time::Instant::now() < end {
        let q = send_queue(server, client);
        if q.is_some_and(|n| n > 0) && q == last {
            same += 1;
            if same >= 5 {
                return true;
            }
        } else {
            same = 0;
        }
        last = q;
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn server(cores: usize, extra: &[&str]) -> Server {
    let mut o = Opts::cores(cores);
    o.keys = Some(
        json!({"keys": {
            "ak_a": {"peer_id": "peer-a", "role": "agent"},
            "ak_b": {"peer_id": "peer-b", "role": "agent"},
            "ak_c": {"peer_id": "peer-c", "role": "agent"}
        }})
        .to_string(),
    );
    o.args = extra.iter().map(|s| s.to_string()).collect();
    Server::with(o)
}

#[test]
fn oversize_message_closes_1009() {
    let srv = server(2, &["--ws-message-max", "4096"]);
    let (mut wa, _) = join(&srv, "peer-a", &jwt_for("peer-a", 300));
    let big = json!({"type": "offer", "peer_id": "peer-a", "target_id": "peer-b", "payload": {"sdp": "x".repeat(5000)}});
    send(&mut wa, &big);
    let (code, reason) = recv_close(&mut wa);
    assert_eq!(code, 1009);
    assert!(reason.contains("too big"), "{reason}");
    // Under the limit is fine.
    let (mut wb, _) = join(&srv, "peer-b", &jwt_for("peer-b", 300));
    send(
        &mut wb,
        &json!({"type": "register", "peer_id": "peer-b", "payload": {"pad": "y".repeat(3000)}}),
    );
    assert_eq!(recv(&mut wb)["type"], "peer_list");
}

#[test]
fn a_peer_that_does_not_read_is_closed_1008() {
    let srv = server(2, &["--ws-outbound-bytes-max", "65536"]);
    // The slow peer: a small receive buffer, and it never reads.
    let mut slow = ws::slow_client(&srv, &jwt_for("peer-b", 300));
    send(&mut slow, &json!({"type": "register", "peer_id": "peer-b"}));
    let (mut fast, _) = join(&srv, "peer-a", &jwt_for("peer-a", 300));
    // Flood the slow peer with relays: far more than kernel buffers and the queue hold.
    let payload = json!({"sdp": "z".repeat(8000)});
    for _ in 0..4000 {
        let m = json!({"type": "offer", "peer_id": "peer-a", "target_id": "peer-b", "payload": payload});
        if fast.send(Message::text(m.to_string())).is_err() {
            break;
        }
    }
    // The slow peer finds, after what was already in flight, a close 1008 with a reason.
    let (code, reason, texts) = ws::recv_close_after_texts(&mut slow);
    assert!(
        texts < 4000,
        "closed before everything was delivered ({texts} texts)"
    );
    assert_eq!(code, 1008);
    assert!(reason.contains("outbound queue full"), "{reason}");
    // The sender is unaffected.
    send(&mut fast, &json!({"type": "register", "peer_id": "peer-a"}));
    loop {
        let m = recv(&mut fast);
        if m["type"] == "peer_list" {
            break;
        }
    }
    let m = srv.get("/metrics").text();
    assert!(
        m.lines()
            .any(|l| l.starts_with("chatixia_ws_closed_slow_total") && !l.ends_with(" 0")),
        "{m}"
    );
}

#[test]
fn idle_connections_are_pinged_then_closed() {
    let srv = server(1, &["--ws-idle-timeout", "30"]);
    let mut wa = connect(&srv, &jwt_for("peer-a", 3000)).unwrap();
    // Half the idle timeout: a server ping.
    srv.advance(16.0);
    match wa.read().unwrap() {
        Message::Ping(_) => {}
        m => panic!("expected a server ping, got {m:?}"),
    }
    // tungstenite answers the ping (queued pong, flushed now): the peer is alive.
    wa.flush().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    srv.advance(16.0);
    ws::expect_silence(&mut wa, Duration::from_millis(200));
    // Silent for the whole timeout: closed with 1001.
    srv.advance(31.0);
    let (code, reason) = recv_close(&mut wa);
    assert_eq!((code, reason.as_str()), (1001, "idle timeout"));
}

#[test]
fn per_ip_and_per_shard_limits_answer_503() {
    let srv = server(2, &["--max-connections-per-ip", "2"]);
    let _a = connect(&srv, &jwt_for("peer-a", 300)).unwrap();
    let _b = connect(&srv, &jwt_for("peer-b", 300)).unwrap();
    assert_eq!(connect(&srv, &jwt_for("peer-c", 300)).err(), Some(503));
    let r = srv.req(
        "GET",
        &format!("/ws?token={}", jwt_for("peer-c", 300)),
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        None,
    );
    assert_eq!(r.status, 503);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("from this address"));
    drop(_a);
    // A closed connection gives its slot back.
    let mut ok = false;
    for _ in 0..100 {
        if connect(&srv, &jwt_for("peer-c", 300)).is_ok() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ok, "the per-IP count is released on close");

    let srv = server(1, &["--max-connections-per-shard", "1"]);
    let _a = connect(&srv, &jwt_for("peer-a", 300)).unwrap();
    assert_eq!(connect(&srv, &jwt_for("peer-b", 300)).err(), Some(503));
}

#[test]
fn a_client_that_stops_reading_mid_write_is_dropped_after_the_idle_timeout() {
    // Queue limits far away, so only the bounded write can free the connection.
    let srv = server(
        2,
        &[
            // Long enough for the 1,500 sends below to finish on a loaded machine
            // while the slow peer's write is still stalled (so its slot is held).
            "--ws-idle-timeout",
            "6",
            "--ws-outbound-bytes-max",
            "100000000",
            "--ws-outbound-frames-max",
            "100000",
            "--max-connections-per-ip",
            "2",
        ],
    );
    let mut slow = ws::slow_client(&srv, &jwt_for("peer-b", 300));
    send(&mut slow, &json!({"type": "register", "peer_id": "peer-b"}));
    let (mut fast, _) = join(&srv, "peer-a", &jwt_for("peer-a", 300));
    let payload = json!({"sdp": "z".repeat(8000)});
    for _ in 0..1500 {
        let m = json!({"type": "offer", "peer_id": "peer-a", "target_id": "peer-b", "payload": payload});
        fast.send(Message::text(m.to_string())).unwrap();
    }
    // Both IP slots are taken (peer-a, peer-b): a third connection is refused ...
    assert_eq!(connect(&srv, &jwt_for("peer-c", 300)).err(), Some(503));
    // ... until the stalled write times out and the slow peer's slot is released.
    let t = std::time::Instant::now();
    let mut admitted = false;
    while t.elapsed() < Duration::from_secs(30) {
        if connect(&srv, &jwt_for("peer-c", 300)).is_ok() {
            admitted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Not dropped at once (the 503 above was answered while its write was stalled), but
    // within the idle timeout plus slack. No lower bound in time: under load the stall may
    // have begun long before this loop did.
    assert!(admitted, "the non-reading peer was never dropped");
    drop(slow);
}

#[test]
fn a_peer_list_larger_than_the_queue_limit_is_still_delivered() {
    let mut o = Opts::cores(2);
    let mut keys = serde_json::Map::new();
    for i in 0..120 {
        keys.insert(
            format!("ak_{i}"),
            json!({"peer_id": format!("peer-with-a-long-name-{i:04}"), "role": "agent"}),
        );
    }
    o.keys = Some(json!({ "keys": keys }).to_string());
    o.args = vec!["--ws-outbound-bytes-max".into(), "2048".into()];
    let srv = Server::with(o);
    let mut conns = Vec::new();
    for i in 0..120 {
        let p = format!("peer-with-a-long-name-{i:04}");
        conns.push(connect(&srv, &jwt_for(&p, 300)).unwrap());
    }
    let (_w, peers) = join(
        &srv,
        "peer-with-a-long-name-0000",
        &jwt_for("peer-with-a-long-name-0000", 300),
    );
    assert_eq!(
        peers.len(),
        119,
        "one frame of ~3.5 KB, above the 2 KiB queue limit"
    );
}

/// A peer found silent for the idle timeout while a write to it is in progress (its
/// heartbeat sits unread behind the write), but a write younger than the timeout, is
/// closed with 1001 "idle timeout" after what was queued for it, not cut mid-write; a
/// write in progress for the whole timeout is what gets abandoned
/// (`a_client_that_stops_reading_mid_write_is_dropped_after_the_idle_timeout`).
#[test]
fn an_idle_close_during_a_slow_write_still_sends_1001() {
    let srv = server(
        1,
        &[
            "--ws-idle-timeout",
            "30",
            "--ws-outbound-bytes-max",
            "100000000",
            "--ws-outbound-frames-max",
            "100000",
        ],
    );
    let mut slow = ws::slow_client(&srv, &jwt_for("peer-b", 3000));
    send(&mut slow, &json!({"type": "register", "peer_id": "peer-b"}));
    let (mut fast, _) = join(&srv, "peer-a", &jwt_for("peer-a", 3000));
    // 20 s of silence (a ping is queued to both at half the timeout) ...
    srv.advance(20.0);
    // ... then a burst the slow peer does not read: the write to it stalls, 20 s into
    // its silence.
    let payload = json!({"sdp": "z".repeat(8000)});
    for _ in 0..600 {
        let m = json!({"type": "offer", "peer_id": "peer-a", "target_id": "peer-b", "payload": payload});
        fast.send(Message::text(m.to_string())).unwrap();
    }
    // Alive: a heartbeat (unread by the server while it writes). Sent once the write
    // has stalled (the client reads nothing, its receive buffer is 4 KiB): sent at once,
    // it could arrive while the server was still between two batches of the burst, be
    // read there, and leave the peer not silent at all (a race of the test, not of the
    // server, seen once the connection task got smaller and faster, issue 26). A fixed
    // 200 ms was not always enough on a loaded machine (it failed once beside a release
    // build): wait until the server's send queue to this client holds bytes and stops
    // moving.
    let client = slow.get_ref().local_addr().unwrap();
    assert!(
        wait_for_stalled_write(srv.addr, client),
        "the server's write to the slow peer never stalled"
    );
    send(
        &mut slow,
        &json!({"type": "heartbeat", "peer_id": "peer-b"}),
    );
    std::thread::sleep(Duration::from_millis(200));
    // 31 s of silence as the server sees it, 11 s into the write.
    srv.advance(11.0);
    let mut texts = 0;
    let end = loop {
        match slow.read() {
            Ok(Message::Close(f)) => {
                break format!(
                    "close {:?}",
                    f.map(|f| (u16::from(f.code), f.reason.to_string()))
                )
            }
            Ok(Message::Text(_)) => texts += 1,
            Ok(_) => continue,
            Err(e) => break format!("error {e}"),
        }
    };
    assert_eq!(
        end, r#"close Some((1001, "idle timeout"))"#,
        "after {texts} texts"
    );
    // The peer list answering `register`, then every offer: nothing queued before the
    // close is lost.
    assert_eq!(
        texts,
        1 + 600,
        "everything queued before the close is delivered"
    );
}
