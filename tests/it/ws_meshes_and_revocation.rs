//! Optional meshes (peers see and reach only their own mesh; a pairing entry inherits
//! its inviter's mesh) and revocation (closes the live connection at once; older JWTs
//! no longer open /ws).
use crate::common;

use std::time::Duration;

use common::ws::{self, connect, join, jwt_for, recv, recv_close, send};
use common::{Opts, Server};
use serde_json::json;

fn server() -> Server {
    let mut o = Opts::cores(2);
    o.keys = Some(
        json!({"keys": {
            "ak_test_admin": {"peer_id": "ops-admin", "role": "admin"},
            "ak_admin": {"peer_id": "admin-1", "role": "admin"},
            "ak_red_admin": {"peer_id": "red-admin", "role": "admin", "mesh": "red"},
            "ak_d1": {"peer_id": "d-1", "role": "agent"},
            "ak_d2": {"peer_id": "d-2", "role": "agent"},
            "ak_r1": {"peer_id": "r-1", "role": "agent", "mesh": "red"},
            "ak_r2": {"peer_id": "r-2", "role": "agent", "mesh": "red"},
            "ak_b1": {"peer_id": "b-1", "role": "agent", "mesh": "blue"}
        }})
        .to_string(),
    );
    Server::with(o)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn meshes_partition_lists_and_relays() {
    let srv = server();
    let mut conns = Vec::new();
    for p in ["d-1", "d-2", "r-1", "r-2", "b-1"] {
        conns.push((p, join(&srv, p, &jwt_for(p, 300)).0));
    }
    let mut lists = Vec::new();
    for (p, c) in conns.iter_mut() {
        send(c, &json!({"type": "register", "peer_id": p}));
        let l = recv(c)["payload"]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        lists.push((p.to_string(), sorted(l)));
    }
    assert_eq!(
        lists,
        vec![
            ("d-1".into(), vec!["d-2".to_string()]),
            ("d-2".into(), vec!["d-1".to_string()]),
            ("r-1".into(), vec!["r-2".to_string()]),
            ("r-2".into(), vec!["r-1".to_string()]),
            ("b-1".into(), vec![]),
        ]
    );
    // r-1 cannot reach d-1 (another mesh), but reaches r-2.
    let (_, r1) = &mut conns[2];
    send(
        r1,
        &json!({"type": "offer", "peer_id": "r-1", "target_id": "d-1", "payload": {}}),
    );
    send(
        r1,
        &json!({"type": "offer", "peer_id": "r-1", "target_id": "r-2", "payload": {"n": 1}}),
    );
    let (_, r2) = &mut conns[3];
    assert_eq!(recv(r2)["payload"], json!({"n": 1}));
    let (_, d1) = &mut conns[0];
    ws::expect_silence(d1, Duration::from_millis(300));
}

/// Generates an invite with `admin_key`, pairs, approves; returns (entry id, peer id,
/// device token).
fn pair(srv: &Server, admin_key: &str, name: &str) -> (String, String, String) {
    let r = srv.req(
        "POST",
        "/api/pairing/generate-code",
        &[("X-API-Key", admin_key)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let code = r.json()["code"].as_str().unwrap().to_string();
    let r = srv.post_json(
        "/api/pairing/pair",
        &json!({"code": code, "agent_name": name}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let peer = r.json()["peer_id"].as_str().unwrap().to_string();
    let r = srv.admin_req("POST", &format!("/api/pairing/{id}/approve"));
    assert_eq!(r.status, 200, "{}", r.text());
    (
        id,
        peer,
        r.json()["device_token"].as_str().unwrap().to_string(),
    )
}

fn jwt_from_device(srv: &Server, token: &str) -> Result<String, u16> {
    let r = srv.req("POST", "/api/token", &[("X-Device-Token", token)], None);
    if r.status != 200 {
        return Err(r.status);
    }
    Ok(r.json()["token"].as_str().unwrap().to_string())
}

#[test]
fn paired_peers_inherit_the_mesh_and_revocation_closes_them() {
    let srv = server();
    let (_, d1_list) = join(&srv, "d-1", &jwt_for("d-1", 300));
    assert!(d1_list.is_empty());
    let (mut r1, _) = join(&srv, "r-1", &jwt_for("r-1", 300));
    // Invited by a red admin: the paired peer is in mesh red.
    let (id, peer, device) = pair(&srv, "ak_red_admin", "laptop");
    let jwt = jwt_from_device(&srv, &device).unwrap();
    let (mut wp, list) = join(&srv, &peer, &jwt);
    assert_eq!(list, vec!["r-1".to_string()], "sees its mesh only");
    send(
        &mut wp,
        &json!({"type": "offer", "peer_id": peer, "target_id": "r-1", "payload": {"x": 1}}),
    );
    assert_eq!(
        recv(&mut r1)["payload"],
        json!({"x": 1}),
        "an approved peer may signal"
    );
    // Revoke: the live connection closes at once with a 4000-range code and a reason.
    let r = srv.admin_req("POST", &format!("/api/pairing/{id}/revoke"));
    assert_eq!(r.status, 200, "{}", r.text());
    let (code, reason) = recv_close(&mut wp);
    assert_eq!(code, 4001);
    assert!(reason.contains("revoked"), "{reason}");
    // Its older JWT no longer opens /ws, and its device token no longer gets one.
    assert_eq!(connect(&srv, &jwt).err(), Some(401));
    assert_eq!(jwt_from_device(&srv, &device).err(), Some(401));
    // It has left r-1's list.
    send(&mut r1, &json!({"type": "register", "peer_id": "r-1"}));
    assert_eq!(recv(&mut r1)["payload"]["peers"], json!([]));
}

#[test]
fn approval_while_connected_authorizes_the_live_connection() {
    let srv = server();
    let (mut d1, _) = join(&srv, "d-1", &jwt_for("d-1", 300));
    // Pair (pending) and connect as that peer with a JWT minted for it (same secret).
    let r = srv.req(
        "POST",
        "/api/pairing/generate-code",
        &[("X-API-Key", "ak_admin")],
        None,
    );
    let code = r.json()["code"].as_str().unwrap().to_string();
    let r = srv.post_json(
        "/api/pairing/pair",
        &json!({"code": code, "agent_name": "late"}),
    );
    let id = r.json()["id"].as_str().unwrap().to_string();
    let peer = r.json()["peer_id"].as_str().unwrap().to_string();
    let (mut wp, list) = join(&srv, &peer, &jwt_for(&peer, 300));
    assert!(list.is_empty(), "pending: sees nobody");
    send(
        &mut wp,
        &json!({"type": "offer", "peer_id": peer, "target_id": "d-1", "payload": {}}),
    );
    assert_eq!(recv(&mut wp)["type"], "error", "pending: may not signal");
    // Approve: the same connection now sees its mesh and may signal.
    let r = srv.admin_req("POST", &format!("/api/pairing/{id}/approve"));
    assert_eq!(r.status, 200, "{}", r.text());
    send(&mut wp, &json!({"type": "register", "peer_id": peer}));
    assert_eq!(recv(&mut wp)["payload"]["peers"], json!(["d-1"]));
    send(
        &mut wp,
        &json!({"type": "offer", "peer_id": peer, "target_id": "d-1", "payload": {"ok": true}}),
    );
    assert_eq!(recv(&mut d1)["payload"], json!({"ok": true}));
}
