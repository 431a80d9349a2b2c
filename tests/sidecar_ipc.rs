//! The IPC socket: mode 0600; a malformed line is answered with an error and the
//! socket stays open; `send` to an unknown peer is reported; `connect` offers now.

mod sidecar_common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::json;
use sidecar_common::{mesh_message, Relay, Sidecar};

#[test]
fn socket_mode_and_malformed_lines() {
    let relay = Relay::start();
    let mut a = Sidecar::start(&relay, "solo");
    let mode = std::fs::metadata(&a.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "IPC socket mode is {mode:o}");

    for bad in [
        "this is not json",
        r#"{"type":"zap","payload":{}}"#,
        r#"{"payload":{}}"#,
        r#"{"type":"send","payload":{"message":{"type":"ping"}}}"#,
        r#"{"type":"broadcast","payload":{"message":{"no_type":1}}}"#,
    ] {
        a.send_line(bad);
        let e = a.expect("error", Duration::from_secs(5), |v| v["type"] == "error");
        let reason = e["payload"]["reason"].as_str().unwrap();
        assert!(!reason.is_empty(), "empty reason for {bad}");
    }
    // Still open and serving.
    assert!(a.list_peers().is_empty());

    // A send to a peer that is not connected is reported, not silently dropped.
    a.send_json(json!({"type":"send","payload":{"target_peer":"peer-nobody","message":mesh_message("ping","1","x")}}));
    let e = a.expect("error", Duration::from_secs(5), |v| v["type"] == "error");
    assert!(e["payload"]["reason"]
        .as_str()
        .unwrap()
        .contains("not connected"));
}

#[test]
fn connect_command_offers_now() {
    let relay = Relay::start();
    let mut a = Sidecar::start(&relay, "x");
    let mut b = Sidecar::start(&relay, "y");
    // Both registered; whoever registered second offered already. Wait for that, then
    // check that `connect` to an already connected peer is a no-op and that `connect`
    // creates an offer to a not yet known peer id.
    a.expect_connected("peer-y");
    b.expect_connected("peer-x");
    let offers = relay.count("offer");
    a.send_json(json!({"type":"connect","payload":{"target_peer_id":"peer-y"}}));
    a.send_json(json!({"type":"connect","payload":{"target_peer_id":"peer-ghost"}}));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while relay.count("offer") < offers + 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "connect did not offer"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let seen = relay.seen.lock().unwrap();
    let new: Vec<_> = seen
        .iter()
        .filter(|v| v["type"] == "offer")
        .skip(offers)
        .map(|v| v["target_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(new, vec!["peer-ghost"]);
}
