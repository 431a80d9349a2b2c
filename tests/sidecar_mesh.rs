//! Three chatixia-sidecar processes form a full mesh through the stand-in relay and
//! exchange messages over their IPC sockets: send both ways, broadcast, list_peers.

mod sidecar_common;

use std::time::Duration;

use serde_json::json;
use sidecar_common::{mesh_message, Relay, Sidecar};

#[test]
fn three_sidecars_mesh_send_broadcast_list() {
    let relay = Relay::start();
    let mut a = Sidecar::start(&relay, "a");
    // Let a register first so b's peer_list contains it (b offers a).
    wait_registered(&relay, 1);
    let mut b = Sidecar::start(&relay, "b");
    a.expect_connected("peer-b");
    b.expect_connected("peer-a");

    // a → b and b → a
    a.send_json(json!({"type":"send","payload":{"target_peer":"peer-b","message":mesh_message("task_request","r1","hello b")}}));
    let m = b.expect("message from a", Duration::from_secs(5), |v| {
        v["type"] == "message"
    });
    assert_eq!(m["payload"]["from_peer"], "peer-a");
    assert_eq!(m["payload"]["message"]["type"], "task_request");
    assert_eq!(m["payload"]["message"]["request_id"], "r1");
    assert_eq!(m["payload"]["message"]["payload"]["text"], "hello b");
    b.send_json(json!({"type":"send","payload":{"target_peer":"peer-a","message":mesh_message("task_response","r1","hi a")}}));
    let m = a.expect("message from b", Duration::from_secs(5), |v| {
        v["type"] == "message"
    });
    assert_eq!(m["payload"]["from_peer"], "peer-b");
    assert_eq!(m["payload"]["message"]["payload"]["text"], "hi a");

    // c joins: its peer_list holds a and b, it offers both.
    wait_registered(&relay, 2);
    let mut c = Sidecar::start(&relay, "c");
    c.expect_connected("peer-a");
    c.expect_connected("peer-b");
    a.expect_connected("peer-c");
    b.expect_connected("peer-c");
    assert_eq!(a.list_peers(), vec!["peer-b", "peer-c"]);
    assert_eq!(c.list_peers(), vec!["peer-a", "peer-b"]);

    // Broadcast from c reaches a and b exactly once.
    c.send_json(
        json!({"type":"broadcast","payload":{"message":mesh_message("agent_status","","all")}}),
    );
    for s in [&mut a, &mut b] {
        let m = s.expect("broadcast", Duration::from_secs(5), |v| {
            v["type"] == "message" && v["payload"]["message"]["type"] == "agent_status"
        });
        assert_eq!(m["payload"]["from_peer"], "peer-c");
    }

    // Many messages in order, a → c.
    for i in 0..200 {
        a.send_json(json!({"type":"send","payload":{"target_peer":"peer-c","message":mesh_message("task_stream_chunk",&i.to_string(),"x")}}));
    }
    for i in 0..200 {
        let m = c.expect("chunk", Duration::from_secs(10), |v| {
            v["type"] == "message" && v["payload"]["message"]["type"] == "task_stream_chunk"
        });
        assert_eq!(m["payload"]["message"]["request_id"], i.to_string());
    }
}

fn wait_registered(relay: &Relay, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while relay.count("register") < n {
        assert!(
            std::time::Instant::now() < deadline,
            "sidecars did not register"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
