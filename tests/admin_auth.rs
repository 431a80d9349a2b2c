//! Issue 10: the operator routes need an admin JWT (401 without one, 403 with an agent's,
//! 200 with an admin's); lists never carry device tokens; `--insecure-open-admin` opens
//! them again.

mod common;
use common::*;

/// Generates a code with the admin key and pairs; returns the entry id.
fn pending_entry(s: &Server, name: &str) -> String {
    let r = s.req(
        "POST",
        "/api/pairing/generate-code",
        &[("X-API-Key", "ak_test_agent")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let code = r.json()["code"].as_str().unwrap().to_owned();
    let r = s.post_json(
        "/api/pairing/pair",
        &json!({"code": code, "agent_name": name}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

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
    both(|s| {
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
    });
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
