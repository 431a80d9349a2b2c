//! Issue 10: the operator routes need an admin JWT (401 without one, 403 with an agent's,
//! 200 with an admin's); lists never carry device tokens; `--insecure-open-admin` opens
//! them again.

use crate::common;
use common::*;

fn token_for_key(s: &Server, key: &str) -> String {
    let r = s.req("POST", "/api/token", &[("X-API-Key", key)], None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["token"].as_str().unwrap().to_owned()
}

const ADMIN_ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/pairing/pending"),
    ("GET", "/api/pairing/all"),
    ("POST", "/api/pairing/{id}/approve"),
    ("POST", "/api/pairing/{id}/reject"),
    ("POST", "/api/pairing/{id}/revoke"),
    ("DELETE", "/api/registry/agents/a1"),
];

#[test]
fn admin_routes_need_an_admin_token() {
    // Two forged tokens per route from one address are more than the failure budget
    // (issue 20; tested in auth_failures.rs): raise it for this test.
    for cores in [1, 2] {
        let mut o = Opts::cores(cores);
        o.args = vec!["--auth-failures-per-ip-max".into(), "100".into()];
        let s = &Server::with(o);
        let id = pending_entry(s, "bot");
        let agent = token_for_key(s, "ak_test_agent");
        let admin = token_for_key(s, "ak_test_admin");
        let forged = {
            // An admin token with its signature altered.
            let mut t = admin.clone().into_bytes();
            let last = t.len() - 2;
            t[last] = if t[last] == b'A' { b'B' } else { b'A' };
            String::from_utf8(t).unwrap()
        };
        for (method, path) in ADMIN_ROUTES {
            let path = path.replace("{id}", &id);
            // No header, not Bearer, malformed, forged: 401 with a JSON error.
            let r = s.req(method, &path, &[], None);
            assert!(r.error(401).contains("admin token required"), "{path}");
            let r = s.req(
                method,
                &path,
                &[("Authorization", &format!("Basic {admin}"))],
                None,
            );
            r.error(401);
            let r = s.req(
                method,
                &path,
                &[("Authorization", "Bearer not.a.jwt")],
                None,
            );
            assert!(r.error(401).starts_with("invalid token"), "{path}");
            let r = s.req(
                method,
                &path,
                &[("Authorization", &format!("Bearer {forged}"))],
                None,
            );
            assert!(r.error(401).starts_with("invalid token"), "{path}");
            // A valid agent token: 403.
            let r = s.req(
                method,
                &path,
                &[("Authorization", &format!("Bearer {agent}"))],
                None,
            );
            assert_eq!(
                r.error(403),
                "admin role required (token role: agent)",
                "{path}"
            );
        }
        // Nothing was changed by the refused calls.
        let auth = format!("Bearer {admin}");
        let h = [("Authorization", auth.as_str())];
        let pending = s.req("GET", "/api/pairing/pending", &h, None);
        assert_eq!(pending.status, 200);
        assert_eq!(pending.json().as_array().unwrap().len(), 1);
        // With the admin token: 200.
        let r = s.req("POST", &format!("/api/pairing/{id}/approve"), &h, None);
        assert_eq!(r.status, 200, "{}", r.text());
        let dt = r.json()["device_token"].as_str().unwrap().to_owned();
        assert!(dt.starts_with("dt_"));
        // Lists never carry the device token.
        for path in ["/api/pairing/all", "/api/pairing/pending"] {
            let r = s.req("GET", path, &h, None);
            assert_eq!(r.status, 200);
            assert!(!r.text().contains(&dt), "{path}: {}", r.text());
            assert!(!r.text().contains("device_token"), "{path}");
        }
        let all = s.req("GET", "/api/pairing/all", &h, None).json();
        assert_eq!(all[0]["status"], "approved");
        // A device token's JWT (role agent) is not an admin either.
        let t = s.req("POST", "/api/token", &[("X-Device-Token", &dt)], None);
        let device_jwt = t.json()["token"].as_str().unwrap().to_owned();
        let r = s.req(
            "GET",
            "/api/pairing/all",
            &[("Authorization", &format!("Bearer {device_jwt}"))],
            None,
        );
        r.error(403);
        let r = s.req("DELETE", "/api/registry/agents/a1", &h, None);
        assert_eq!(r.status, 200);
        let r = s.req("POST", &format!("/api/pairing/{id}/revoke"), &h, None);
        assert_eq!(r.text(), r#"{"status":"ok"}"#);
        // Agent routes need no admin token.
        let r = s.post_json(
            "/api/registry/agents",
            &json!({"agent_id": "a1", "hostname": "h"}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(s.get("/api/registry/agents/a1").json()["agent_id"], "a1");
    }
}

#[test]
fn expired_admin_token_is_refused() {
    let s = Server::start(1);
    let admin = token_for_key(&s, "ak_test_admin");
    s.advance(400.0);
    let r = s.req(
        "GET",
        "/api/pairing/all",
        &[("Authorization", &format!("Bearer {admin}"))],
        None,
    );
    assert_eq!(r.error(401), "invalid token: expired signature");
}

#[test]
fn insecure_open_admin_opens_the_operator_routes() {
    let mut o = Opts::cores(2);
    o.args.push("--insecure-open-admin".into());
    let s = Server::with(o);
    let id = pending_entry(&s, "bot");
    let all = s.get("/api/pairing/all");
    assert_eq!(all.status, 200);
    let r = s.req("POST", &format!("/api/pairing/{id}/approve"), &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["device_token"]
        .as_str()
        .unwrap()
        .starts_with("dt_"));
    assert!(!s.get("/api/pairing/all").text().contains("dt_"));
    assert_eq!(
        s.req("DELETE", "/api/registry/agents/none", &[], None)
            .status,
        200
    );
}

/// The device's own path to its token: `pair` returns a claim secret; `GET
/// /api/pairing/{id}/status` with it shows the entry and, once approved, the device token
/// until the token is first used; a wrong secret gets 401 and no token.
#[test]
fn claim_path_with_the_right_and_a_wrong_secret() {
    both(|s| {
        let code = s.req(
            "POST",
            "/api/pairing/generate-code",
            &[("X-API-Key", "ak_test_agent")],
            None,
        );
        let code = code.json()["code"].as_str().unwrap().to_owned();
        let r = s.post_json(
            "/api/pairing/pair",
            &json!({"code": code, "agent_name": "dev"}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let id = v["id"].as_str().unwrap().to_owned();
        let peer = v["peer_id"].as_str().unwrap().to_owned();
        let secret = v["claim_secret"].as_str().unwrap().to_owned();
        assert!(secret.len() >= 32, "{secret}");
        let status = |secret: &str| {
            s.req(
                "GET",
                &format!("/api/pairing/{id}/status"),
                &[("Authorization", &format!("Bearer {secret}"))],
                None,
            )
        };
        let v = status(&secret).json();
        assert_eq!(
            v,
            json!({"id": id, "peer_id": peer, "status": "pending_approval"})
        );
        let last = if secret.ends_with('0') { "1" } else { "0" };
        let other = format!("{}{last}", &secret[..secret.len() - 1]);
        for wrong in [other.as_str(), "x", &secret[..10]] {
            let r = status(wrong);
            r.error(401);
            assert!(!r.text().contains("device_token"));
        }
        let r = s.req("GET", &format!("/api/pairing/{id}/status"), &[], None);
        r.error(401);
        // Another entry's id with this secret: 401 as well.
        let r = s.req(
            "GET",
            "/api/pairing/ffffffff/status",
            &[("Authorization", &format!("Bearer {secret}"))],
            None,
        );
        r.error(401);

        let dt = s.admin_req("POST", &format!("/api/pairing/{id}/approve"));
        let dt = dt.json()["device_token"].as_str().unwrap().to_owned();
        let wrong = status(&other);
        wrong.error(401);
        assert!(!wrong.text().contains(&dt));
        // Served repeatedly until first used...
        for _ in 0..2 {
            let v = status(&secret).json();
            assert_eq!(v["status"], "approved");
            assert_eq!(v["device_token"], dt.as_str());
        }
        let t = s.req("POST", "/api/token", &[("X-Device-Token", &dt)], None);
        assert_eq!(t.status, 200);
        // ...then no longer.
        let v = status(&secret).json();
        assert_eq!(v["status"], "approved");
        assert!(v.get("device_token").is_none(), "{v}");
        // The token still works; after revocation the status says so, still no token.
        let t = s.req("POST", "/api/token", &[("X-Device-Token", &dt)], None);
        assert_eq!(t.status, 200);
        let r = s.admin_req("POST", &format!("/api/pairing/{id}/revoke"));
        assert_eq!(r.status, 200);
        let v = status(&secret).json();
        assert_eq!(v["status"], "revoked");
        assert!(v.get("device_token").is_none());
    });
}

/// Approved but never used, then revoked: the claim path stops serving the token.
#[test]
fn revocation_ends_the_claim_path() {
    let s = Server::start(2);
    let code = s.req(
        "POST",
        "/api/pairing/generate-code",
        &[("X-API-Key", "ak_test_agent")],
        None,
    );
    let code = code.json()["code"].as_str().unwrap().to_owned();
    let v = s
        .post_json(
            "/api/pairing/pair",
            &json!({"code": code, "agent_name": "dev"}),
        )
        .json();
    let id = v["id"].as_str().unwrap().to_owned();
    let auth = format!("Bearer {}", v["claim_secret"].as_str().unwrap());
    let path = format!("/api/pairing/{id}/status");
    assert_eq!(
        s.admin_req("POST", &format!("/api/pairing/{id}/approve"))
            .status,
        200
    );
    let v = s
        .req("GET", &path, &[("Authorization", &auth)], None)
        .json();
    assert!(v["device_token"].as_str().unwrap().starts_with("dt_"));
    assert_eq!(
        s.admin_req("POST", &format!("/api/pairing/{id}/revoke"))
            .status,
        200
    );
    let v = s
        .req("GET", &path, &[("Authorization", &auth)], None)
        .json();
    assert_eq!(v["status"], "revoked");
    assert!(v.get("device_token").is_none(), "{v}");
}
