//! Periodic jobs driven by /debug/clock: health 90 s / 270 s, TTL expiry, retention of
//! finished tasks; and /debug/clock is 404 without --test-clock.

use crate::common;
use common::*;

fn health(s: &Server, id: &str) -> String {
    s.get(&format!("/api/registry/agents/{id}")).json()["health"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn health_transitions() {
    both(|s| {
        for id in ["h1", "h2", "h3"] {
            s.post_json(
                "/api/hub/heartbeat",
                &json!({"agent_id": id, "hostname": "h", "skill_names": ["k"]}),
            );
        }
        s.advance(89.0);
        assert_eq!(health(s, "h1"), "active");
        s.advance(2.0);
        assert_eq!(health(s, "h1"), "stale");
        // Only active agents are routed to and meshed.
        s.post_json(
            "/api/hub/heartbeat",
            &json!({"agent_id": "h2", "hostname": "h", "skill_names": ["k"]}),
        );
        assert_eq!(health(s, "h2"), "active");
        assert_eq!(
            s.get("/api/registry/route?skill=k").json()["agent_id"],
            "h2"
        );
        s.advance(180.0);
        assert_eq!(health(s, "h1"), "offline");
        assert_eq!(health(s, "h2"), "stale");
        let r = s.get("/api/registry/route?skill=k").json();
        assert_eq!(r["error"], "no agent found with skill");
        let list = s.get("/api/registry/agents").json();
        assert_eq!(list.as_array().unwrap().len(), 3);
        assert_eq!(list[2]["health"], "offline");
    });
}

#[test]
fn ttl_expiry_and_retention() {
    for cores in [1, 2] {
        let mut o = Opts::cores(cores);
        o.args = vec!["--task-retention".into(), "100".into()];
        let s = Server::with(o);
        let short = s
            .post_json("/api/hub/tasks", &json!({"skill": "a", "ttl": 10}))
            .json()["task_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let long = s
            .post_json(
                "/api/hub/tasks",
                &json!({"target_agent_id": "z", "ttl": 1000}),
            )
            .json()["task_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let done = s.post_json("/api/hub/tasks", &json!({})).json()["task_id"]
            .as_str()
            .unwrap()
            .to_owned();
        s.post_json(
            &format!("/api/hub/tasks/{done}"),
            &json!({"state": "completed", "result": "r"}),
        );
        s.advance(9.0);
        assert_eq!(
            s.get(&format!("/api/hub/tasks/{short}")).json()["state"],
            "pending"
        );
        s.advance(2.0);
        let t = s.get(&format!("/api/hub/tasks/{short}")).json();
        assert_eq!(
            (t["state"].as_str(), t["error"].as_str()),
            (Some("failed"), Some("TTL expired"))
        );
        assert_eq!(
            s.get(&format!("/api/hub/tasks/{long}")).json()["state"],
            "pending"
        );
        // An expired task is not handed out.
        let r = s.post_json(
            "/api/hub/heartbeat",
            &json!({"agent_id": "q", "hostname": "h", "skill_names": ["a"]}),
        );
        assert_eq!(r.json()["pending_tasks"], json!([]));
        // Retention: finished tasks go 100 s after their last update.
        s.advance(88.0);
        assert_eq!(
            s.get(&format!("/api/hub/tasks/{done}")).json()["state"],
            "completed"
        );
        s.advance(2.0);
        assert_eq!(
            s.get(&format!("/api/hub/tasks/{done}")).text(),
            r#"{"error":"not found"}"#
        );
        assert_eq!(
            s.get(&format!("/api/hub/tasks/{short}")).json()["state"],
            "failed"
        );
        s.advance(100.0);
        assert_eq!(
            s.get(&format!("/api/hub/tasks/{short}")).text(),
            r#"{"error":"not found"}"#
        );
        let all = s.get("/api/hub/tasks/all").json();
        assert_eq!(all.as_array().unwrap().len(), 1);
        assert_eq!(all[0]["id"].as_str(), Some(long.as_str()));
    }
}

#[test]
fn debug_clock_needs_the_flag_and_a_valid_body() {
    let s = Server::start(1);
    s.post_json("/debug/clock", &json!({"advance_secs": -1}))
        .error(422);
    s.post_json("/debug/clock", &json!({})).error(422);
    let r = s.post_json("/debug/clock", &json!({"advance_secs": 0.5}));
    assert!(r.json()["now"].as_f64().unwrap() > 1.0e9);
    drop(s);
    // Without --test-clock the route does not exist. (Start by hand: the harness
    // always passes the flag, so build the command here.)
    let dir = TempDir::new();
    let port_file = dir.0.join("addr");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chatixia-core"))
        .env("CHATIXIA_DATA_DIR", common::scratch_data_dir())
        .args(["--listen", "127.0.0.1:0", "--cores", "1", "--port-file"])
        .arg(&port_file)
        .env("API_KEYS_FILE", dir.0.join("missing.json"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let addr = loop {
        if let Ok(a) = std::fs::read_to_string(&port_file) {
            if let Ok(a) = a.trim().parse::<std::net::SocketAddr>() {
                break a;
            }
        }
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(b"POST /debug/clock HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 19\r\n\r\n{\"advance_secs\":10}").unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
}
