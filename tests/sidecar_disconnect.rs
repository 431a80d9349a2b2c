//! Peer loss: `peer_disconnected` when the other sidecar is killed (bounded wait), and
//! a dropped signaling WebSocket closes every peer, then reconnects and re-meshes.

mod sidecar_common;

use std::time::{Duration, Instant};

use sidecar_common::{Relay, Sidecar};

fn wait_registered(relay: &Relay, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.count("register") < n {
        assert!(Instant::now() < deadline, "sidecars did not register");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn killed_peer_is_reported_within_seconds() {
    let relay = Relay::start();
    let mut a = Sidecar::start(&relay, "k1");
    wait_registered(&relay, 1);
    let mut b = Sidecar::start(&relay, "k2");
    a.expect_connected("peer-k2");
    b.expect_connected("peer-k1");
    let t0 = Instant::now();
    b.kill(); // SIGKILL: no SCTP shutdown, no goodbye
    a.expect("peer_disconnected", Duration::from_secs(10), |v| {
        v["type"] == "peer_disconnected" && v["payload"]["peer_id"] == "peer-k2"
    });
    let took = t0.elapsed();
    eprintln!("peer loss noticed after {took:?}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(a.list_peers().is_empty());
}

#[test]
fn dropped_signaling_closes_peers_and_reconnects() {
    let relay = Relay::start();
    let mut a = Sidecar::start(&relay, "r1");
    wait_registered(&relay, 1);
    let mut b = Sidecar::start(&relay, "r2");
    a.expect_connected("peer-r2");
    b.expect_connected("peer-r1");
    relay.drop_connections();
    a.expect("peer_disconnected", Duration::from_secs(10), |v| {
        v["type"] == "peer_disconnected"
    });
    b.expect("peer_disconnected", Duration::from_secs(10), |v| {
        v["type"] == "peer_disconnected"
    });
    // Both reconnect after ~1 s backoff; the second to register offers again.
    a.expect_connected("peer-r2");
    b.expect_connected("peer-r1");
    assert_eq!(a.list_peers(), vec!["peer-r2"]);
}
