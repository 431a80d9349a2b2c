//! The dashboard's admin routes over real sockets: the page and its files (types,
//! cache, CSP), admin authentication (401/403), agents and tasks paged across shards
//! with filters, the JSON summary, the invite code, and the event stream pushing a
//! change after an agent registers.

use crate::common;

use std::io::{Read, Write};
use std::time::Duration;

use common::ws::jwt_from_key;
use common::{find, Server};
use serde_json::{json, Value};

const SHARDS: usize = 3;

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn get_admin(srv: &Server, token: &str, path: &str) -> common::Resp {
    let auth = bearer(token);
    srv.req("GET", path, &[("Authorization", auth.as_str())], None)
}

#[test]
fn page_and_files() {
    let srv = Server::start(1);
    let r = srv.get("/");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    let csp = r.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert!(r.text().contains("/dashboard/app.js?v="));
    for (file, ctype) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("views.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let r = srv.get(&format!("/dashboard/{file}"));
        assert_eq!(r.status, 200, "{file}");
        assert_eq!(r.header("content-type"), Some(ctype), "{file}");
        assert!(r.header("cache-control").unwrap().contains("max-age"));
    }
    assert_eq!(srv.get("/dashboard/secret.txt").status, 404);
    assert_eq!(srv.get("/dashboard/..%2FCargo.toml").status, 404);
}

#[test]
fn admin_routes_need_an_admin_token() {
    let srv = Server::start(1);
    let agent = jwt_from_key(&srv, "ak_test_agent");
    for path in [
        "/api/dashboard/agents",
        "/api/dashboard/tasks",
        "/api/dashboard/summary",
    ] {
        let r = srv.get(path);
        assert_eq!(r.status, 401, "{path}");
        assert!(r.error(401).contains("admin token required"), "{path}");
        let r = get_admin(&srv, &agent, path);
        assert_eq!(r.status, 403, "{path}");
        assert!(r.error(403).contains("admin role required"));
        let r = get_admin(&srv, "not.a.jwt", path);
        assert_eq!(r.status, 401, "{path}");
    }
    let r = srv.req("POST", "/api/dashboard/invite", &[], None);
    assert_eq!(r.status, 401);
    // The event stream takes the token as a query parameter.
    let r = srv.get(&format!("/api/dashboard/events?token={agent}"));
    assert_eq!(r.status, 403);
    let r = srv.get("/api/dashboard/events");
    assert_eq!(r.status, 401);
    // An admin key's token has the admin role.
    let r = srv.req(
        "POST",
        "/api/token",
        &[("X-API-Key", "ak_test_admin")],
        None,
    );
    assert_eq!(r.json()["role"], "admin");
}

#[test]
fn agents_and_tasks_page_across_shards() {
    let srv = Server::start(SHARDS);
    let admin = jwt_from_key(&srv, "ak_test_admin");
    for i in 0..25 {
        let skills = if i % 5 == 0 {
            vec!["ocr"]
        } else {
            vec!["chat"]
        };
        let r = srv.post_json(
            "/api/registry/agents",
            &json!({"agent_id": format!("a-{i:02}"), "hostname": format!("host-{}", i % 4),
                    "capabilities": {"skills": skills}}),
        );
        assert_eq!(r.status, 200);
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = get_admin(
            &srv,
            &admin,
            &format!("/api/dashboard/agents?limit=7&cursor={cursor}"),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        assert_eq!(page["total"], 25);
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 7);
        seen.extend(
            items
                .iter()
                .map(|a| a["agent_id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    let want: Vec<String> = (0..25).map(|i| format!("a-{i:02}")).collect();
    assert_eq!(
        seen, want,
        "every agent once, in id order, from {SHARDS} shards"
    );

    // Sorted by host, descending, paged with the opaque cursor.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let enc: String = url_encode(&cursor);
        let r = get_admin(
            &srv,
            &admin,
            &format!("/api/dashboard/agents?limit=6&sort=host&order=desc&cursor={enc}"),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        for a in page["items"].as_array().unwrap() {
            seen.push((
                a["hostname"].as_str().unwrap().to_string(),
                a["agent_id"].as_str().unwrap().to_string(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    let mut want = seen.clone();
    want.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen.len(), 25);
    assert_eq!(seen, want, "host descending, then id descending");
    for bad in ["sort=colour", "order=up", "sort=host&cursor=xyz"] {
        let r = get_admin(&srv, &admin, &format!("/api/dashboard/agents?{bad}"));
        assert_eq!(r.status, 400, "{bad}");
    }

    let page = get_admin(&srv, &admin, "/api/dashboard/agents?q=OCR").json();
    assert_eq!(page["total"], 5);
    let page = get_admin(&srv, &admin, "/api/dashboard/agents?health=offline").json();
    assert_eq!(page["total"], 0);
    for bad in ["limit=0", "limit=100000", "health=dead"] {
        let r = get_admin(&srv, &admin, &format!("/api/dashboard/agents?{bad}"));
        assert_eq!(r.status, 400, "{bad}");
    }

    for i in 0..6 {
        let r = srv.post_json(
            "/api/hub/tasks",
            &json!({"skill": "ocr", "source_agent_id": format!("a-0{}", i % 2)}),
        );
        assert_eq!(r.status, 200);
    }
    let r = srv.post_json(
        "/api/hub/heartbeat",
        &json!({"agent_id": "a-00", "hostname": "host-0", "skill_names": ["ocr"]}),
    );
    assert_eq!(r.status, 200);
    let page = get_admin(&srv, &admin, "/api/dashboard/tasks?limit=4").json();
    assert_eq!(page["total"], 6);
    assert_eq!(page["items"].as_array().unwrap().len(), 4);
    let next = page["next_cursor"].as_str().unwrap();
    let rest = get_admin(
        &srv,
        &admin,
        &format!("/api/dashboard/tasks?limit=4&cursor={next}"),
    )
    .json();
    assert_eq!(rest["items"].as_array().unwrap().len(), 2);
    assert_eq!(rest["next_cursor"], Value::Null);
    let assigned = get_admin(&srv, &admin, "/api/dashboard/tasks?state=assigned").json();
    assert!(assigned["total"].as_u64().unwrap() >= 1);
    let by_agent = get_admin(&srv, &admin, "/api/dashboard/tasks?agent=a-01").json();
    assert_eq!(by_agent["total"], 3);
    assert_eq!(
        get_admin(&srv, &admin, "/api/dashboard/tasks?cursor=zz").status,
        400
    );

    let s = get_admin(&srv, &admin, "/api/dashboard/summary").json();
    assert_eq!(s["agents"]["active"], 25);
    assert_eq!(s["shards"].as_array().unwrap().len(), SHARDS);
    let tasks: u64 = s["tasks"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(tasks, 6);

    let auth = bearer(&admin);
    let r = srv.req(
        "POST",
        "/api/dashboard/invite",
        &[("Authorization", auth.as_str())],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let code = r.json()["code"].as_str().unwrap().to_string();
    // A long code by default (issue 20): `XXXX-XXXX-XXXX`.
    assert_eq!(code.len(), 14, "{code}");
    assert_eq!(code.matches('-').count(), 2, "{code}");
    let r = srv.post_json(
        "/api/pairing/pair",
        &json!({"code": code, "agent_name": "cam"}),
    );
    assert_eq!(r.status, 200, "the dashboard's code pairs: {}", r.text());
    let s = get_admin(&srv, &admin, "/api/dashboard/summary").json();
    assert_eq!(s["pairing_pending"], 1);
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Reads the stream until `needle` arrives; the read timeout bounds a hang.
fn read_until(s: &mut std::net::TcpStream, buf: &mut Vec<u8>, needle: &[u8]) {
    let mut chunk = [0u8; 4096];
    // Bounded: summaries arrive every second, so a missing event would otherwise never
    // time the read out.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while find(buf, needle).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no {:?} within 30 s: {}",
            String::from_utf8_lossy(needle),
            String::from_utf8_lossy(buf)
        );
        let n = s.read(&mut chunk).expect("stream open");
        assert!(n > 0, "stream closed: {}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn event_stream_pushes_changes() {
    let srv = Server::start(SHARDS);
    let admin = jwt_from_key(&srv, "ak_test_admin");
    let mut s = srv.stream();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET /api/dashboard/events?token={admin} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, b"event: summary\n");
    let head = String::from_utf8_lossy(&buf).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(
        head.contains("event: hello\ndata: {\"shards\":3}"),
        "{head}"
    );
    buf.clear();
    let r = srv.post_json(
        "/api/registry/agents",
        &json!({"agent_id": "live-agent", "hostname": "h"}),
    );
    assert_eq!(r.status, 200);
    read_until(&mut s, &mut buf, b"\"id\":\"live-agent\"");
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.contains("event: changes\ndata: {\"events\":[{\"seq\":"),
        "{text}"
    );
    assert!(text.contains("\"kind\":\"agent\""), "{text}");
    // A task change is pushed too.
    buf.clear();
    let r = srv.post_json("/api/hub/tasks", &json!({"skill": "x"}));
    assert_eq!(r.status, 200);
    read_until(&mut s, &mut buf, b"\"kind\":\"task\"");
    // A graceful shutdown ends the stream (the server does not wait for the client).
    let mut srv = srv;
    let (status, _) = srv.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}: {}", srv.log());
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
}
