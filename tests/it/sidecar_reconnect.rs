//! Signaling loss: chatixia-core stops (SIGTERM: it closes every WebSocket with 1001)
//! and a new one starts on the same address. Each sidecar closes its peers
//! (`peer_disconnected`), re-authenticates (`/api/token` again), reconnects with backoff
//! from 1 s, registers, and the two peers connect again.

use crate::common;

use std::time::{Duration, Instant};

use common::sidecar::{mesh_message, pair, server_for};
use serde_json::json;

#[test]
fn server_restart_closes_peers_then_sidecars_reconnect() {
    let mut server = server_for(1, &["r1", "r2"]);
    let (mut a, mut b) = pair(&server, "r1", "r2");
    assert_eq!(a.log_count("authenticated"), 1);

    let t0 = Instant::now();
    server.restart();
    a.expect_disconnected("peer-r2", Duration::from_secs(10));
    b.expect_disconnected("peer-r1", Duration::from_secs(10));
    assert!(
        a.log().contains("signaling connection closed"),
        "{}",
        a.log()
    );

    // Back: a fresh JWT from the new server, a new WebSocket, a new peer connection.
    a.expect_connected("peer-r2");
    b.expect_connected("peer-r1");
    let took = t0.elapsed();
    eprintln!("peers back {took:?} after the restart began");
    // The first retry comes after 1 s; the new server is up by then, so no second one.
    assert!(
        took >= Duration::from_millis(900),
        "reconnected without backoff: {took:?}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    for s in [&a, &b] {
        assert_eq!(s.log_count("authenticated"), 2, "{}", s.log());
        assert!(s.log().contains("delay=1s"), "{}", s.log());
    }
    assert_eq!(a.list_peers(), vec!["peer-r2"]);
    assert_eq!(b.list_peers(), vec!["peer-r1"]);

    // And the new DataChannel carries messages.
    a.send_json(json!({"type":"send","payload":{"target_peer":"peer-r2","message":mesh_message("ping","after","restart")}}));
    let m = b.expect("message after restart", Duration::from_secs(5), |v| {
        v["type"] == "message"
    });
    assert_eq!(m["payload"]["message"]["request_id"], "after");
}
