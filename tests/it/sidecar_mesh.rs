//! Three chatixia-sidecar processes form a full mesh through chatixia-core (its real
//! `/api/token` and `/ws`, two shards, so signaling relays cross shards) and exchange
//! messages over their IPC sockets: send both ways, broadcast, list_peers, ordering.

use crate::common;

use std::time::Duration;

use common::sidecar::{mesh_message, pair, server_for, Sidecar};
use serde_json::json;

#[test]
fn three_sidecars_mesh_send_broadcast_list() {
    let server = server_for(2, &["a", "b", "c"]);
    let (mut a, mut b) = pair(&server, "a", "b");

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

    // c joins: the server's peer_list holds a and b, c offers both.
    let mut c = Sidecar::start(&server, "c");
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
        s.expect_none("a second broadcast", Duration::from_millis(300), |v| {
            v["type"] == "message" && v["payload"]["message"]["type"] == "agent_status"
        });
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
