//! Peer loss: when the other sidecar is killed outright (no SCTP shutdown, no goodbye),
//! `peer_disconnected` reaches the agent within a few seconds.

use crate::common;

use std::time::{Duration, Instant};

use common::sidecar::{pair, server_for};

#[test]
fn killed_peer_is_reported_within_seconds() {
    let server = server_for(1, &["k1", "k2"]);
    let (mut a, mut b) = pair(&server, "k1", "k2");
    let t0 = Instant::now();
    b.kill(); // SIGKILL
    a.expect_disconnected("peer-k2", Duration::from_secs(10));
    let took = t0.elapsed();
    eprintln!("peer loss noticed after {took:?}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(a.list_peers().is_empty());
}
