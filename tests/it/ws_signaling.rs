//! The signaling WebSocket (PROTOCOL.md §7) with a real WebSocket client: upgrade
//! errors, tokens from query, header and subprotocol, register and peer lists, relays
//! between peers on different shards, what is ignored, and the reference's flaws
//! closed (unauthorized senders, replaced connections).
use crate::common;

use std::time::Duration;

use common::ws::{self, connect, connect_with, join, jwt_for, recv, recv_close, send};
use common::{Opts, Server};
use serde_json::json;
use tungstenite::Message;

/// Two peer ids that live on different shards of a 2-shard server.
fn split_pair() -> (String, String) {
    let a = "peer-a".to_string();
    let b = (0..)
        .map(|i| format!("peer-b{i}"))
        .find(|b| reactor::shard_of(b, 2) != reactor::shard_of(&a, 2))
        .unwrap();
    (a, b)
}

fn keys_for(peers: &[(&str, Option<&str>)]) -> String {
    let mut keys = serde_json::Map::new();
    keys.insert(
        "ak_admin".into(),
        json!({"peer_id": "admin-1", "role": "admin"}),
    );
    for (p, mesh) in peers {
        let mut e = json!({"peer_id": p, "role": "agent"});
        if let Some(m) = mesh {
            e["mesh"] = json!(m);
        }
        keys.insert(format!("ak_{p}"), e);
    }
    json!({ "keys": keys }).to_string()
}

fn server(cores: usize, driver: &str, peers: &[(&str, Option<&str>)], extra: &[&str]) -> Server {
    let mut o = Opts::cores(cores);
    o.keys = Some(keys_for(peers));
    o.args = ["--io-driver", driver]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    Server::with(o)
}

#[test]
fn upgrade_errors_and_token_sources() {
    let srv = server(2, "uring", &[("peer-a", None)], &[]);
    // Missing token: 400. Invalid or expired: 401.
    assert_eq!(
        connect_with(&srv, &format!("ws://{}/ws", srv.addr), &[]).err(),
        Some(400)
    );
    assert_eq!(connect(&srv, "not.a.jwt").err(), Some(401));
    assert_eq!(
        connect(&srv, &jwt_for("peer-a", -120)).err(),
        Some(401),
        "expired beyond the 60 s leeway"
    );
    let forged = {
        let claims = json!({"sub": "peer-a", "role": "agent", "iat": 0, "exp": 4_000_000_000u64});
        jsonwebtoken::encode(
            &Default::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"other"),
        )
        .unwrap()
    };
    assert_eq!(connect(&srv, &forged).err(), Some(401));
    // The body of a refusal is a JSON reason.
    let r = srv.req("GET", "/ws?token=x.y.z", &[], None);
    assert_eq!(r.status, 400, "plain GET without upgrade headers");
    // A token from the server's /api/token, in the query, a Bearer header, a subprotocol.
    let t = ws::jwt_from_key(&srv, "ak_peer-a");
    let url = format!("ws://{}/ws", srv.addr);
    for hdr in [
        ("Authorization", format!("Bearer {t}")),
        ("Sec-WebSocket-Protocol", format!("bearer.{t}")),
    ] {
        let mut c = connect_with(&srv, &url, &[(hdr.0, &hdr.1)])
            .unwrap_or_else(|s| panic!("{}: {s}", hdr.0));
        send(&mut c, &json!({"type": "register", "peer_id": "peer-a"}));
        assert_eq!(recv(&mut c)["type"], "peer_list");
    }
}

#[test]
fn register_relay_across_shards_both_drivers() {
    let (a, b) = split_pair();
    for driver in common::DRIVERS {
        let srv = server(2, driver, &[(&a, None), (&b, None), ("peer-c", None)], &[]);
        let (mut wa, list_a) = join(&srv, &a, &jwt_for(&a, 300));
        assert!(list_a.is_empty(), "{list_a:?}");
        let (mut wb, list_b) = join(&srv, &b, &jwt_for(&b, 300));
        assert_eq!(list_b, vec![a.clone()]);
        // Re-register answers again, now with b; nothing was pushed to a before.
        send(&mut wa, &json!({"type": "register", "peer_id": a}));
        assert_eq!(recv(&mut wa)["payload"]["peers"], json!([b]));
        // offer / answer / ice_candidate relayed with the sender's id and the payload.
        let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n".repeat(50);
        send(
            &mut wa,
            &json!({"type": "offer", "peer_id": a, "target_id": b, "payload": {"sdp": sdp}}),
        );
        let m = recv(&mut wb);
        assert_eq!(
            m,
            json!({"type": "offer", "peer_id": a, "target_id": b, "payload": {"sdp": sdp}})
        );
        send(
            &mut wb,
            &json!({"type": "answer", "peer_id": b, "target_id": a, "payload": {"sdp": "v=0"}}),
        );
        assert_eq!(recv(&mut wa)["type"], "answer");
        let cand = json!({"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
        send(
            &mut wb,
            &json!({"type": "ice_candidate", "peer_id": b, "target_id": a, "payload": cand}),
        );
        let m = recv(&mut wa);
        assert_eq!(
            (m["type"].clone(), m["payload"].clone()),
            (json!("ice_candidate"), cand)
        );
        // Dropped: unknown target, no target, spoofed sender, unknown type, garbage,
        // binary; heartbeat answers nothing. The connection stays open throughout.
        send(
            &mut wa,
            &json!({"type": "offer", "peer_id": a, "target_id": "ghost", "payload": {}}),
        );
        send(
            &mut wa,
            &json!({"type": "offer", "peer_id": a, "payload": {}}),
        );
        send(
            &mut wa,
            &json!({"type": "offer", "peer_id": "peer-c", "target_id": b, "payload": {}}),
        );
        send(&mut wa, &json!({"type": "dance", "peer_id": a}));
        send(&mut wa, &json!({"type": "heartbeat", "peer_id": a}));
        wa.send(Message::text("{not json")).unwrap();
        wa.send(Message::binary(vec![1u8, 2, 3])).unwrap();
        ws::expect_silence(&mut wb, Duration::from_millis(300));
        ws::expect_silence(&mut wa, Duration::from_millis(100));
        // Ping is answered with pong.
        wa.send(Message::Ping(b"hi".to_vec().into())).unwrap();
        match wa.read().unwrap() {
            Message::Pong(p) => assert_eq!(&p[..], b"hi"),
            m => panic!("expected pong, got {m:?}"),
        }
        // Still relaying after all that.
        send(
            &mut wa,
            &json!({"type": "offer", "peer_id": a, "target_id": b, "payload": {"sdp": "again"}}),
        );
        assert_eq!(recv(&mut wb)["payload"]["sdp"], "again");
    }
}

#[test]
fn unauthorized_peers_see_nothing_and_cannot_signal() {
    let srv = server(2, "uring", &[("peer-a", None)], &[]);
    let (mut wa, _) = join(&srv, "peer-a", &jwt_for("peer-a", 300));
    // A valid JWT for a peer with no API key and no approved pairing.
    let (mut wx, list_x) = join(&srv, "stranger", &jwt_for("stranger", 300));
    assert!(list_x.is_empty(), "an unauthorized peer gets an empty list");
    send(&mut wa, &json!({"type": "register", "peer_id": "peer-a"}));
    assert_eq!(
        recv(&mut wa)["payload"]["peers"],
        json!([]),
        "and is not listed to others"
    );
    send(
        &mut wx,
        &json!({"type": "offer", "peer_id": "stranger", "target_id": "peer-a", "payload": {"sdp": "x"}}),
    );
    let e = recv(&mut wx);
    assert_eq!(e["type"], "error");
    assert_eq!(e["peer_id"], "registry");
    assert!(
        e["payload"]["reason"]
            .as_str()
            .unwrap()
            .contains("not authorized"),
        "{e}"
    );
    ws::expect_silence(&mut wa, Duration::from_millis(300));
}

#[test]
fn second_connection_replaces_the_first() {
    let srv = server(2, "uring", &[("peer-a", None), ("peer-b", None)], &[]);
    let (mut first, _) = join(&srv, "peer-a", &jwt_for("peer-a", 300));
    let (mut second, _) = join(&srv, "peer-a", &jwt_for("peer-a", 300));
    let (code, reason) = recv_close(&mut first);
    assert_eq!(code, 4000);
    assert!(reason.contains("replaced"), "{reason}");
    // The newer connection is the one that is reachable.
    let (mut wb, peers) = join(&srv, "peer-b", &jwt_for("peer-b", 300));
    assert_eq!(peers, vec!["peer-a".to_string()]);
    send(
        &mut wb,
        &json!({"type": "offer", "peer_id": "peer-b", "target_id": "peer-a", "payload": {}}),
    );
    assert_eq!(recv(&mut second)["type"], "offer");
}

#[test]
fn client_close_is_echoed_and_bad_codes_refused() {
    use tungstenite::protocol::frame::coding::CloseCode;
    use tungstenite::protocol::CloseFrame;
    let srv = server(1, "uring", &[("peer-a", None)], &[]);
    let mut c = connect(&srv, &jwt_for("peer-a", 300)).unwrap();
    c.close(Some(CloseFrame {
        code: CloseCode::from(4321),
        reason: "bye".into(),
    }))
    .unwrap();
    let (code, _) = recv_close(&mut c);
    assert_eq!(code, 4321, "the server echoes the client's code");
    // A code no endpoint may send (1005) is refused with 1002, sent as a raw frame.
    let mut c = connect(&srv, &jwt_for("peer-a", 300)).unwrap();
    let mask = [1u8, 2, 3, 4];
    let payload = [0x03u8, 0xED]; // 1005
    let mut frame = vec![0x88, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    std::io::Write::write_all(c.get_mut(), &frame).unwrap();
    let (code, reason) = recv_close(&mut c);
    assert_eq!((code, reason.as_str()), (1002, "invalid close code"));
}

/// One TCP segment holding `register`s interleaved with relays (to
/// the sender itself, to a peer on the other shard): every reply and relay comes out in
/// the order the frames went in, although each `register` takes the async path.
#[test]
fn register_and_relays_in_one_segment_keep_their_order() {
    let (a, b) = split_pair();
    for driver in common::DRIVERS {
        let srv = server(2, driver, &[(&a, None), (&b, None)], &[]);
        let (mut wb, _) = join(&srv, &b, &jwt_for(&b, 300));
        let mut wa = connect(&srv, &jwt_for(&a, 300)).unwrap();
        for round in 0..20 {
            let relay = |kind: &str, to: &str, seq: u32| {
                Message::text(
                    json!({"type": kind, "peer_id": a, "target_id": to, "payload": {"seq": seq, "round": round}})
                        .to_string(),
                )
            };
            let reg = Message::text(json!({"type": "register", "peer_id": a}).to_string());
            // Buffered, then flushed in one write.
            wa.write(reg.clone()).unwrap();
            wa.write(relay("offer", &a, 1)).unwrap();
            wa.write(relay("offer", &b, 2)).unwrap();
            wa.write(reg).unwrap();
            wa.write(relay("ice_candidate", &a, 3)).unwrap();
            wa.write(relay("answer", &b, 4)).unwrap();
            wa.write(relay("offer", &a, 5)).unwrap();
            wa.flush().unwrap();
            let got: Vec<String> = (0..5)
                .map(|_| {
                    let m = recv(&mut wa);
                    match m["type"].as_str().unwrap() {
                        "peer_list" => {
                            assert_eq!(m["payload"]["peers"], json!([b]), "{driver}");
                            "list".to_string()
                        }
                        t => {
                            assert_eq!(m["payload"]["round"], round, "{driver}: {m}");
                            format!("{t}{}", m["payload"]["seq"])
                        }
                    }
                })
                .collect();
            assert_eq!(
                got,
                ["list", "offer1", "list", "ice_candidate3", "offer5"],
                "{driver} round {round}"
            );
            let at_b: Vec<String> = (0..2)
                .map(|_| {
                    let m = recv(&mut wb);
                    assert_eq!(m["payload"]["round"], round, "{driver}: {m}");
                    format!("{}{}", m["type"].as_str().unwrap(), m["payload"]["seq"])
                })
                .collect();
            assert_eq!(at_b, ["offer2", "answer4"], "{driver} round {round}");
        }
    }
}

/// Many senders on one shard flood a peer on the other shard in
/// batches (a full cross-shard mailbox takes the async retry path): per sender, what
/// arrives arrives in order, and every relay either arrives or is answered with an
/// error frame, before the sender's next `register` reply.
#[test]
fn cross_shard_flood_loses_and_reorders_nothing() {
    let target = "flood-target".to_string();
    let t_shard = reactor::shard_of(&target, 2);
    let senders: Vec<String> = (0..)
        .map(|i| format!("flood-sender-{i}"))
        .filter(|p| reactor::shard_of(p, 2) != t_shard)
        .take(6)
        .collect();
    let mut peers: Vec<(&str, Option<&str>)> = vec![(&target, None)];
    peers.extend(senders.iter().map(|s| (s.as_str(), None)));
    let srv = server(
        2,
        "uring",
        &peers,
        &[
            "--ws-outbound-frames-max",
            "1000000",
            "--ws-outbound-bytes-max",
            "1000000000",
        ],
    );
    let (mut wt, _) = join(&srv, &target, &jwt_for(&target, 300));
    const N: u32 = 20_000;
    const BATCH: u32 = 200;
    // All join before any floods (an upgrade asks another shard, whose full mailbox
    // would refuse it with 503).
    let joined: Vec<_> = senders
        .iter()
        .map(|s| (s.clone(), join(&srv, s, &jwt_for(s, 300)).0))
        .collect();
    let handles: Vec<_> = joined
        .into_iter()
        .map(|(s, mut ws)| {
            let target = target.clone();
            std::thread::spawn(move || {
                let mut seq = 0;
                while seq < N {
                    for _ in 0..BATCH {
                        let m = json!({"type": "ice_candidate", "peer_id": s, "target_id": target, "payload": seq});
                        ws.write(Message::text(m.to_string())).unwrap();
                        seq += 1;
                    }
                    ws.flush().unwrap();
                }
                send(&mut ws, &json!({"type": "register", "peer_id": s}));
                let mut errors = 0u32;
                loop {
                    let m = recv(&mut ws);
                    match m["type"].as_str().unwrap() {
                        "peer_list" => break,
                        "error" => {
                            assert_eq!(m["payload"]["reason"], "relay dropped: server overloaded");
                            errors += 1;
                        }
                        other => panic!("{other}: {m}"),
                    }
                }
                (s, errors, ws)
            })
        })
        .collect();
    // The target reads as they send (so its queue never fills), until it has what was
    // not refused: the senders' error count is known once they are done.
    let expected = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let want = expected.clone();
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    let mut received = 0u64;
    let reader = std::thread::spawn(move || {
        use std::sync::atomic::Ordering;
        wt.get_mut()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut quiet = 0;
        while received < want.load(Ordering::SeqCst) {
            let m = match wt.read() {
                Ok(Message::Text(t)) => {
                    serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap()
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    // Nothing for 60 s after the senders were done: the rest is lost.
                    if want.load(Ordering::SeqCst) != u64::MAX {
                        quiet += 1;
                        if quiet > 300 {
                            break;
                        }
                    }
                    continue;
                }
                Err(e) => panic!("target: {e}"),
            };
            quiet = 0;
            let from = m["peer_id"].as_str().unwrap().to_string();
            let seq = m["payload"].as_i64().unwrap();
            let prev = last.insert(from.clone(), seq).unwrap_or(-1);
            assert!(seq > prev, "{from}: {seq} after {prev}");
            received += 1;
        }
        received
    });
    let mut errors = 0u64;
    let mut keep = Vec::new();
    for h in handles {
        let (_, e, ws) = h.join().unwrap();
        errors += e as u64;
        keep.push(ws);
    }
    expected.store(N as u64 * 6 - errors, std::sync::atomic::Ordering::SeqCst);
    let received = reader.join().unwrap();
    let m = srv.get("/metrics").text();
    let refused: Vec<&str> = m
        .lines()
        .filter(|l| {
            l.starts_with("chatixia_mailbox_refused_total")
                || l.starts_with("chatixia_ws_refused_total")
        })
        .collect();
    println!("received {received}, errored {errors}, {refused:?}");
    assert_eq!(received + errors, N as u64 * 6, "{refused:?}");
}

/// A peer that reconnects (its new connection replaces the old one,
/// which is closed with 4000) and registers at once never finds itself in its peer
/// list — also while the old connection is still writing its close frame (its slot
/// is still listed in the mesh then, with its close reason kept).
#[test]
fn a_reconnecting_peer_is_never_listed_to_itself() {
    use std::io::{Read, Write};
    let (a, b) = split_pair();
    for driver in common::DRIVERS {
        let srv = server(2, driver, &[(&a, None), (&b, None)], &[]);
        let (_wa, _) = join(&srv, &a, &jwt_for(&a, 300));
        let mut old = join(&srv, &b, &jwt_for(&b, 300)).0;
        let mut seen_self = 0;
        for round in 0..200 {
            // The upgrade request and the register frame in one segment.
            let mut req = format!(
                "GET /ws?token={} HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
                jwt_for(&b, 300)
            )
            .into_bytes();
            wire::ws::client::encode_text_masked(
                json!({"type": "register", "peer_id": b})
                    .to_string()
                    .as_bytes(),
                [9, 8, 7, 6],
                &mut req,
            );
            let mut s = srv.stream();
            s.write_all(&req).unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut byte).unwrap();
                head.push(byte[0]);
            }
            assert!(
                head.starts_with(b"HTTP/1.1 101"),
                "{}",
                String::from_utf8_lossy(&head)
            );
            let mut ws = tungstenite::WebSocket::from_raw_socket(
                s,
                tungstenite::protocol::Role::Client,
                None,
            );
            let list = recv(&mut ws);
            assert_eq!(list["type"], "peer_list", "{list}");
            if list["payload"]["peers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p == b.as_str())
            {
                seen_self += 1;
                println!("{driver} round {round}: {list}");
            }
            // The old connection was replaced.
            let (code, _) = ws::recv_close(&mut old);
            assert_eq!(code, 4000, "{driver}");
            old = ws;
        }
        assert_eq!(
            seen_self, 0,
            "{driver}: listed to itself {seen_self} times in 200"
        );
    }
}

/// A server for the two tests below: peer-a and peer-b by API key, queues large enough
/// that only the client's reading limits what is queued.
fn queue_server(driver: &str) -> Server {
    let mut o = Opts::cores(1);
    o.keys = Some(
        json!({"keys": {
            "ak_a": {"peer_id": "peer-a", "role": "agent"},
            "ak_b": {"peer_id": "peer-b", "role": "agent"}
        }})
        .to_string(),
    );
    o.args = [
        "--io-driver",
        driver,
        "--ws-outbound-bytes-max",
        "100000000",
        "--ws-outbound-frames-max",
        "100000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Server::with(o)
}

/// A client that half-closes (FIN after its last message) while output is queued for
/// it still gets all of it, then a close frame, on both drivers (the end of its stream
/// is seen after a write on io_uring, when the queue is empty on epoll).
#[test]
fn a_half_closed_client_gets_what_is_queued() {
    for driver in common::DRIVERS {
        let srv = queue_server(driver);
        let mut slow = ws::slow_client(&srv, &jwt_for("peer-b", 3000));
        send(&mut slow, &json!({"type": "register", "peer_id": "peer-b"}));
        let (mut fast, _) = join(&srv, "peer-a", &jwt_for("peer-a", 3000));
        let payload = json!({"sdp": "z".repeat(8000)});
        for _ in 0..1500 {
            let m = json!({"type": "offer", "peer_id": "peer-a", "target_id": "peer-b", "payload": payload});
            fast.send(Message::text(m.to_string())).unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
        slow.get_ref().shutdown(std::net::Shutdown::Write).unwrap();
        let mut texts = 0;
        let end = loop {
            match slow.read() {
                Ok(Message::Text(_)) => texts += 1,
                Ok(Message::Close(f)) => break format!("close {:?}", f.map(|f| u16::from(f.code))),
                Ok(_) => continue,
                Err(e) => break format!("error {e}"),
            }
        };
        // The peer list answering `register`, then every offer, then a normal close.
        assert_eq!(
            (texts, end.as_str()),
            (1 + 1500, "close Some(1000)"),
            "{driver}"
        );
    }
}

/// A relay target whose queue never empties (it reads slowly) still has its own
/// messages read between writes: its answer reaches the sender long before its backlog
/// is drained. (io_uring with the multishot receive; the epoll driver's one-shot reads
/// take input when the queue empties.)
#[test]
fn a_busy_relay_target_is_still_read() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    if reactor::sys::kernel_version().is_some_and(|v| v < (6, 0)) {
        common::skip("no multishot receive before Linux 6.0");
        return;
    }
    let srv = queue_server("uring");
    if !srv.get("/metrics").text().contains("driver=\"io_uring\"") {
        common::skip("io_uring is refused here");
        return;
    }
    let mut slow = ws::slow_client(&srv, &jwt_for("peer-b", 3000));
    send(&mut slow, &json!({"type": "register", "peer_id": "peer-b"}));
    let (mut fast, _) = join(&srv, "peer-a", &jwt_for("peer-a", 3000));
    let payload = json!({"sdp": "z".repeat(8000)});
    for _ in 0..1500 {
        let m = json!({"type": "offer", "peer_id": "peer-a", "target_id": "peer-b", "payload": payload});
        fast.send(Message::text(m.to_string())).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    send(
        &mut slow,
        &json!({"type": "answer", "peer_id": "peer-b", "target_id": "peer-a", "payload": {}}),
    );
    let read = std::sync::Arc::new(AtomicUsize::new(0));
    let r = read.clone();
    let reader = std::thread::spawn(move || {
        while r.load(Ordering::SeqCst) < 1501 {
            match slow.read() {
                Ok(Message::Text(_)) => {
                    r.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_micros(500));
                }
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    });
    loop {
        let m = recv(&mut fast);
        if m["type"] == "answer" {
            break;
        }
    }
    let at = read.load(Ordering::SeqCst);
    reader.join().unwrap();
    // Read between writes: after about one write batch (~32 of these frames); read only
    // once the queue is empty: after ~1,500.
    assert!(
        at < 750,
        "the answer waited for the backlog: it came after {at} of 1501"
    );
}
