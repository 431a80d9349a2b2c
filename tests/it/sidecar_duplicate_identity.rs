//! Two sidecars with one identity (two agents scaffolded with the same API key): each
//! new connection replaces the other (close 4000). Each sidecar tells its agent with an
//! `error` event naming the duplicate identity, logs an error, and backs off (1 s, 2 s,
//! 4 s, …) instead of taking the identity back at once: over a bounded window the
//! number of signaling connections stays small. (Before: the backoff was reset by every
//! `peer_list`, so both reconnected every second, forever, silently.)

use crate::common;

use std::time::Duration;

use common::sidecar::{server_for, Sidecar};

/// How long the flapping is watched.
const WINDOW: Duration = Duration::from_secs(20);

#[test]
fn duplicate_identity_is_reported_and_backs_off() {
    let server = server_for(1, &["dup"]);
    let mut a = Sidecar::start(&server, "dup");
    a.wait_registered();
    let mut b = Sidecar::start(&server, "dup");
    for s in [&mut a, &mut b] {
        let e = s.expect("duplicate-identity error", Duration::from_secs(10), |v| {
            v["type"] == "error"
                && v["payload"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("duplicate identity") && r.contains("peer-dup"))
        });
        assert_eq!(e["type"], "error");
    }
    assert!(a.log().contains("ERROR"), "{}", a.log());
    let before = a.log_count("signaling connected") + b.log_count("signaling connected");
    std::thread::sleep(WINDOW);
    let during = a.log_count("signaling connected") + b.log_count("signaling connected") - before;
    // With the backoff doubling on every replacement, the two sidecars take turns
    // after waits of 1, 1, 2, 2, 4, 4, 8 s: about 6 connections in the window. One
    // second between replacements (the old behaviour) would be about 20.
    assert!(
        during <= 10,
        "{during} signaling connections in {WINDOW:?}: reconnecting in a tight loop\nA:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    // They did keep trying (the backoff never gives up).
    assert!(during >= 1, "no reconnection at all in {WINDOW:?}");
}
