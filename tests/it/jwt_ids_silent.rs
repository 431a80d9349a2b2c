//! Issue 20, finding 6: a JWT past `exp` by more than the (few seconds of) leeway and a
//! JWT issued in the future are refused; ids with control characters are 422; a
//! connection that sends nothing is closed at the header deadline, not the keep-alive
//! idle timeout.

use crate::common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{json, Opts, Server};

fn server(cores: usize, extra: &[&str]) -> Server {
    let mut o = Opts::cores(cores);
    o.args = extra.iter().map(|s| s.to_string()).collect();
    Server::with(o)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An admin JWT signed with the server's (development) secret by an independent
/// implementation, with the given `iat` and `exp`.
fn admin_jwt(iat: u64, exp: u64) -> String {
    let claims = json!({"sub": "admin-1", "role": "admin", "iat": iat, "exp": exp});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(common::ws::SECRET),
    )
    .unwrap()
}

fn pairing_all(s: &Server, token: &str) -> common::Resp {
    s.req(
        "GET",
        "/api/pairing/all",
        &[("Authorization", &format!("Bearer {token}"))],
        None,
    )
}

#[test]
fn a_token_past_exp_by_more_than_the_leeway_is_refused() {
    let s = server(2, &[]);
    let token = s.admin_token();
    assert_eq!(pairing_all(&s, &token).status, 200);
    // Issued tokens live 300 s; 59 s past that is well beyond the 5 s default leeway
    // (the reference's 60 s let it through).
    s.advance(359.0);
    let r = pairing_all(&s, &token);
    assert_eq!(r.error(401), "invalid token: expired signature");
    // /ws too.
    let peer_token = common::ws::jwt_from_key(&s, "ak_test_agent");
    s.advance(310.0);
    assert_eq!(common::ws::connect(&s, &peer_token).err(), Some(401));
}

#[test]
fn the_leeway_is_a_flag() {
    let s = server(1, &["--jwt-leeway-secs", "60"]);
    let token = s.admin_token();
    s.advance(355.0);
    assert_eq!(pairing_all(&s, &token).status, 200);
    // Not beyond what a revocation is remembered for (300 s + 60 s).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatixia-core"))
        .args(["--jwt-leeway-secs", "61", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--jwt-leeway-secs must be at most 60"),
        "{err}"
    );
}

#[test]
fn a_token_issued_in_the_future_is_refused() {
    let s = server(2, &[]);
    let now = unix_now();
    let ahead = admin_jwt(now + 3600, now + 3900);
    let r = pairing_all(&s, &ahead);
    assert_eq!(r.error(401), "invalid token: issued in the future");
    assert_eq!(
        common::ws::connect(&s, &{
            let claims =
                json!({"sub": "agent-x", "role": "agent", "iat": now + 3600, "exp": now + 3900});
            jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(common::ws::SECRET),
            )
            .unwrap()
        })
        .err(),
        Some(401)
    );
    // A token from another implementation issued now (and a second ahead, within the
    // leeway) is accepted: interoperability with the reference's tokens.
    assert_eq!(pairing_all(&s, &admin_jwt(now, now + 300)).status, 200);
    assert_eq!(pairing_all(&s, &admin_jwt(now + 1, now + 300)).status, 200);
}

#[test]
fn ids_with_control_characters_are_422() {
    let s = server(2, &[]);
    for bad in [
        "agent\u{0}x",
        "agent\nx",
        "agent\u{7f}",
        "\u{1b}[31mred",
        "a\rb",
    ] {
        let r = s.post_json(
            "/api/registry/agents",
            &json!({"agent_id": bad, "hostname": "h"}),
        );
        let msg = r.error(422);
        assert!(msg.contains("`agent_id`"), "{msg}");
        let r = s.post_json("/api/hub/heartbeat", &json!({"agent_id": bad}));
        assert!(r.error(422).contains("`agent_id`"));
    }
    let cases = [
        (
            "/api/registry/agents",
            json!({"agent_id": "a", "hostname": "h", "sidecar_peer_id": "p\u{0}"}),
            "sidecar_peer_id",
        ),
        (
            "/api/registry/agents",
            json!({"agent_id": "a", "hostname": "h", "capabilities": {"skills": ["ok", "s\n"]}}),
            "capabilities.skills",
        ),
        (
            "/api/hub/heartbeat",
            json!({"agent_id": "a", "skill_names": ["x\u{7f}"]}),
            "skill_names",
        ),
        ("/api/hub/tasks", json!({"skill": "sk\u{0}ill"}), "skill"),
        (
            "/api/hub/tasks",
            json!({"target_agent_id": "t\n"}),
            "target_agent_id",
        ),
        (
            "/api/hub/tasks",
            json!({"skill": "s", "source_agent_id": "\u{85}src"}),
            "source_agent_id",
        ),
    ];
    for (path, body, field) in cases {
        let msg = s.post_json(path, &body).error(422);
        assert!(msg.contains(&format!("`{field}`")), "{path} {field}: {msg}");
    }
    // Nothing of them was stored.
    let all = s.get("/api/registry/agents").json();
    assert_eq!(all.as_array().map(Vec::len), Some(0), "{all}");
    // Pairing's agent name too.
    let code = s
        .req(
            "POST",
            "/api/pairing/generate-code",
            &[("X-API-Key", "ak_test_agent")],
            None,
        )
        .json()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = s.post_json(
        "/api/pairing/pair",
        &json!({"code": code, "agent_name": "bot\u{0}1"}),
    );
    assert!(r.error(422).contains("`agent_name`"));
    // Printable ids in any script are fine.
    let r = s.post_json(
        "/api/registry/agents",
        &json!({"agent_id": "agent é 漢字-1", "hostname": "h"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_connection_that_sends_nothing_is_closed_at_the_header_deadline() {
    // Header deadline 1 s, idle timeout the default 75 s.
    for driver in common::DRIVERS {
        let s = server(1, &["--io-driver", driver, "--http-header-timeout", "1"]);
        let mut silent = s.stream();
        silent
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 256];
        // Closed without a response (there was no request to answer), long before the
        // 75 s idle timeout (the read would time out at 30 s and fail this).
        let n = silent
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("{driver}: not closed within 30 s: {e}"));
        assert_eq!(n, 0, "{driver}: {:?}", String::from_utf8_lossy(&buf[..n]));
        assert!(t.elapsed() < Duration::from_secs(30));
        // A connection that started a request and stalled still gets its 408.
        let mut partial = s.stream();
        std::io::Write::write_all(&mut partial, b"GET /healthz HTTP/1.1\r\nHo").unwrap();
        let mut got = Vec::new();
        let _ = partial.read_to_end(&mut got);
        assert!(
            got.starts_with(b"HTTP/1.1 408"),
            "{driver}: {:?}",
            String::from_utf8_lossy(&got)
        );
        // A keep-alive connection idle between requests is not cut at the header
        // deadline.
        let mut c = s.conn();
        assert_eq!(c.get("/healthz").status, 200);
        std::thread::sleep(Duration::from_millis(2500));
        assert_eq!(c.get("/healthz").status, 200);
    }
}
