//! The IPC socket: mode 0600; a malformed line is answered with an error and the
//! socket stays open; `send` to an unknown peer is reported; `connect` offers now
//! (seen by a plain WebSocket client registered through chatixia-core).

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::sidecar::{mesh_message, pair, server_for, Sidecar};
use common::ws::{self, join, jwt_from_key};
use serde_json::json;

#[test]
fn socket_mode_and_malformed_lines() {
    let server = server_for(1, &["solo"]);
    let mut a = Sidecar::start(&server, "solo");
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
    let server = server_for(2, &["x", "y", "ghost"]);
    let (mut a, mut b) = pair(&server, "x", "y");
    // A plain WebSocket peer: registered, but it offers nothing on its own.
    let token = jwt_from_key(&server, "ak_ghost");
    let (mut ghost, peers) = join(&server, "peer-ghost", &token);
    assert_eq!(peers.len(), 2, "{peers:?}");

    // `connect` to an already connected peer is a no-op (a new offer would replace the
    // connection on y's side: y would report peer_disconnected); `connect` to a peer
    // the sidecar never heard of offers now.
    a.send_json(json!({"type":"connect","payload":{"target_peer_id":"peer-y"}}));
    a.send_json(json!({"type":"connect","payload":{"target_peer_id":"peer-ghost"}}));
    let offer = ws::recv(&mut ghost);
    assert_eq!(offer["type"], "offer", "{offer}");
    assert_eq!(offer["peer_id"], "peer-x");
    assert_eq!(offer["target_id"], "peer-ghost");
    assert!(offer["payload"]["sdp"].as_str().unwrap().starts_with("v=0"));
    // Trickled candidates follow, in the spec's payload shape.
    let cand = ws::recv(&mut ghost);
    assert_eq!(cand["type"], "ice_candidate", "{cand}");
    assert!(cand["payload"]["candidate"]
        .as_str()
        .unwrap()
        .starts_with("candidate:"));
    assert!(cand["payload"]["sdpMid"].is_string());
    assert!(cand["payload"]["sdpMLineIndex"].is_number());
    b.expect_none("peer_disconnected", Duration::from_millis(500), |v| {
        v["type"] == "peer_disconnected"
    });
    assert_eq!(a.list_peers(), vec!["peer-y"]);
    assert_eq!(b.list_peers(), vec!["peer-x"]);
}

/// Issue 20, finding 1: IPC lines nest at most `JSON_DEPTH_MAX` levels. At the bound a
/// `send` reaches the peer's agent (its `message` event is as deep); one level deeper,
/// or a line of a million `[`, is answered with an `error` event naming the depth and
/// the limit, nothing is sent, and the socket keeps serving. Before the bound the fast
/// path forwarded any depth verbatim to the peer's agent.
#[test]
fn deep_lines_are_refused_and_the_bound_goes_through() {
    use wire::json::JSON_DEPTH_MAX;
    let nested = |n: usize| "[".repeat(n) + &"]".repeat(n);
    let server = server_for(1, &["dx", "dy"]);
    let (mut a, mut b) = pair(&server, "dx", "dy");
    // line > payload > message > payload: the message's payload may nest 61 levels.
    let send = |id: &str, x: &str| {
        format!(
            r#"{{"type":"send","payload":{{"target_peer":"peer-dy","message":{{"type":"t","request_id":"{id}","payload":{x}}}}}}}"#
        )
    };
    let at = nested(JSON_DEPTH_MAX - 3);
    a.send_line(&send("at", &at));
    let m = b.expect("the message at the bound", Duration::from_secs(10), |v| {
        v["type"] == "message" && v["payload"]["message"]["request_id"] == "at"
    });
    assert_eq!(
        m["payload"]["message"]["payload"],
        serde_json::from_str::<serde_json::Value>(&at).unwrap()
    );
    let limit = JSON_DEPTH_MAX;
    for (line, depth) in [
        (send("over", &nested(limit - 2)), limit + 1),
        (send("over", &nested(100_000)), 100_003),
        ("[".repeat(1_000_000), 1_000_000),
    ] {
        a.send_line(&line);
        let e = a.expect("error", Duration::from_secs(10), |v| v["type"] == "error");
        assert_eq!(
            e["payload"]["reason"],
            format!("JSON nesting is {depth} levels deep; the limit is {limit}")
        );
    }
    a.send_line(&send("after", "1"));
    b.expect("the next message", Duration::from_secs(10), |v| {
        v["type"] == "message" && v["payload"]["message"]["request_id"] == "after"
    });
    b.expect_none("a deep message", Duration::from_millis(200), |v| {
        v["payload"]["message"]["request_id"] == "over"
    });
    assert_eq!(a.list_peers(), vec!["peer-dy"]);
}
