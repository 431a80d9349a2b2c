//! §2 auth (`POST /api/token`, API keys file) and §6 ICE config.

use crate::common;
use common::*;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Claims {
    sub: String,
    role: String,
    exp: u64,
    iat: u64,
}

fn check_token(r: &Resp, secret: &str, peer: &str, role: &str) {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["peer_id"].as_str(), v["role"].as_str()),
        (Some(peer), Some(role))
    );
    let token = v["token"].as_str().unwrap();
    // Our token validates with an independent HS256 implementation…
    let mut val = Validation::new(Algorithm::HS256);
    val.set_required_spec_claims(&["exp"]);
    let data = decode::<Claims>(token, &DecodingKey::from_secret(secret.as_bytes()), &val).unwrap();
    assert_eq!(data.claims.sub, peer);
    assert_eq!(data.claims.role, role);
    assert_eq!(data.claims.exp - data.claims.iat, 300);
    // …and the independent implementation produces exactly our bytes for the same claims
    // (so its tokens are ours: interchangeable with the reference build).
    let theirs = encode(
        &Header::new(Algorithm::HS256),
        &data.claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    assert_eq!(theirs, token);
    // A wrong secret does not validate.
    assert!(decode::<Claims>(token, &DecodingKey::from_secret(b"other"), &val).is_err());
}

#[test]
fn api_keys_and_jwt() {
    both(|s| {
        let r = s.req(
            "POST",
            "/api/token",
            &[("X-API-Key", "ak_test_admin")],
            None,
        );
        check_token(&r, "dev-secret-change-me", "admin-1", "admin");
        // The body is ignored.
        let r = s.req(
            "POST",
            "/api/token",
            &[
                ("X-API-Key", "ak_test_agent"),
                ("Content-Type", "text/plain"),
            ],
            Some(b"junk"),
        );
        check_token(&r, "dev-secret-change-me", "agent-x", "agent");
        // The file replaces the dev key.
        let r = s.req("POST", "/api/token", &[("X-API-Key", "ak_dev_001")], None);
        assert_eq!((r.status, r.body.len()), (401, 0));
        let r = s.req("POST", "/api/token", &[], None);
        assert_eq!((r.status, r.body.len()), (401, 0));
        let r = s.req(
            "POST",
            "/api/token",
            &[("X-Device-Token", "dt_00000000000000000000000000000000")],
            None,
        );
        assert_eq!((r.status, r.body.len()), (401, 0));
        s.req("GET", "/api/token", &[], None).error(405);
    });
}

#[test]
fn signaling_secret_and_dev_key_fallbacks() {
    // Missing file → dev key; custom secret.
    let mut o = Opts::cores(2);
    o.keys = None;
    o.env.push(("SIGNALING_SECRET".into(), "s3cret".into()));
    let s = Server::with(o);
    let r = s.req("POST", "/api/token", &[("X-API-Key", "ak_dev_001")], None);
    check_token(&r, "s3cret", "agent-001", "agent");
    drop(s);
    // Malformed file → warning and dev key, as the reference.
    let mut o = Opts::cores(1);
    o.keys = Some("{not json".into());
    let s = Server::with(o);
    let r = s.req("POST", "/api/token", &[("X-API-Key", "ak_dev_001")], None);
    check_token(&r, "dev-secret-change-me", "agent-001", "agent");
}

#[test]
fn ice_config() {
    // `--stun-url none` and no TURN: an empty list.
    let s = Server::start(1);
    assert_eq!(s.get("/api/config").text(), r#"{"iceServers":[]}"#);
    drop(s);
    let mut o = Opts::cores(2);
    o.args = vec![
        "--stun-url".into(),
        "stun:a:1".into(),
        "--stun-url".into(),
        "stun:b:2".into(),
    ];
    o.env
        .push(("TURN_URL".into(), "turn:t.example:3478".into()));
    o.env.push(("TURN_SECRET".into(), "ts".into()));
    let s = Server::with(o);
    let v = s.get("/api/config").json();
    let servers = v["iceServers"].as_array().unwrap();
    assert_eq!(servers[0], json!({"urls": ["stun:a:1", "stun:b:2"]}));
    assert_eq!(servers[1]["urls"], json!(["turn:t.example:3478"]));
    let user = servers[1]["username"].as_str().unwrap();
    let (exp, mesh) = user.split_once(':').unwrap();
    assert_eq!(mesh, "mesh");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp: u64 = exp.parse().unwrap();
    assert!(exp >= now + 86_400 - 5 && exp <= now + 86_400 + 5);
    assert_eq!(servers[1]["credential"].as_str().unwrap().len(), 28); // base64 of 20 bytes
}
