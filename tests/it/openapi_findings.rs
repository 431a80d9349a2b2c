//! Server bugs found while writing docs/openapi.json and running schemathesis against it
//! (tests/it/openapi_schemathesis.rs, issue 20), each checked here over a real socket.
//!
//! 1. An agent whose id is empty, at the end of a page, got the cursor `""`
//!    (`x-next-cursor: ` on `GET /api/registry/agents`, `"next_cursor":""` on the
//!    dashboard). A client sends an empty cursor back as "no cursor": paging started over
//!    at the first page (and the dashboard disabled its Next button on an empty cursor).
//! 2. (Found in the same code while fixing 1.) The dashboard's cursor by another key than
//!    the id is the JSON `[value, agent_id]`, but at most 512 bytes were accepted: a page
//!    ending at an agent with a long host name and id (each within the 256-byte field
//!    limit) made the next page a 400.
//! 3. `POST /api/pairing/pair` read a JSON array body as its object (below).
use crate::common;

use common::{json, Server};

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn register(srv: &Server, id: &str, host: &str) {
    let r = srv.post_json(
        "/api/registry/agents",
        &json!({"agent_id": id, "hostname": host}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn list_paging_goes_past_an_empty_agent_id() {
    let srv = Server::start(2);
    for id in ["", "a", "b"] {
        register(&srv, id, "h");
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/registry/agents?limit=1&cursor={}", url_encode(c)),
            None => "/api/registry/agents?limit=1".to_owned(),
        };
        let r = srv.get(&path);
        assert_eq!(r.status, 200, "{}", r.text());
        for a in r.json().as_array().unwrap() {
            seen.push(a["agent_id"].as_str().unwrap().to_owned());
        }
        assert!(seen.len() <= 3, "paging started over: {seen:?}");
        match r.header("x-next-cursor") {
            Some(c) => {
                assert!(!c.is_empty(), "an empty cursor means the first page");
                cursor = Some(c.to_owned());
            }
            None => break,
        }
    }
    assert_eq!(seen, ["", "a", "b"]);
}

#[test]
fn dashboard_paging_goes_past_empty_ids_and_long_fields() {
    let srv = Server::start(2);
    // 256 bytes each (the default field limit), 512 each as JSON strings.
    let long_host = "\"".repeat(256);
    let long_id = "\\".repeat(256);
    register(&srv, "", "b");
    register(&srv, "a", &long_host);
    register(&srv, &long_id, &long_host);
    register(&srv, "z", "c");
    let auth = format!("Bearer {}", srv.admin_token());
    for sort in ["id", "host"] {
        let mut seen = Vec::new();
        let mut cursor = String::new();
        loop {
            let r = srv.req(
                "GET",
                &format!(
                    "/api/dashboard/agents?limit=1&sort={sort}&cursor={}",
                    url_encode(&cursor)
                ),
                &[("Authorization", &auth)],
                None,
            );
            assert_eq!(r.status, 200, "sort={sort} cursor={cursor:?}: {}", r.text());
            let page = r.json();
            for a in page["items"].as_array().unwrap() {
                seen.push(a["agent_id"].as_str().unwrap().to_owned());
            }
            assert!(
                seen.len() <= 4,
                "sort={sort}: paging started over: {seen:?}"
            );
            match page["next_cursor"].as_str() {
                Some(c) => {
                    assert!(!c.is_empty(), "an empty cursor means the first page");
                    cursor = c.to_owned();
                }
                None => break,
            }
        }
        seen.sort();
        let mut want = vec![String::new(), "a".into(), long_id.clone(), "z".into()];
        want.sort();
        assert_eq!(seen, want, "sort={sort}: every agent once");
    }
}

/// 3. (Found while describing the route.) `POST /api/pairing/pair` read a JSON array as
///    its object, field by field: `["<code>","<name>"]` redeemed the code. Every other
///    JSON route refuses a body that is not an object with 422 (PROTOCOL.md §1.5).
#[test]
fn pair_refuses_an_array_body() {
    let srv = Server::start(1);
    let r = srv.req(
        "POST",
        "/api/pairing/generate-code",
        &[("X-API-Key", "ak_test_agent")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let code = r.json()["code"].as_str().unwrap().to_owned();
    let r = srv.post_json("/api/pairing/pair", &json!([code, "array"]));
    assert!(
        r.error(422).contains("expected a JSON object"),
        "{}",
        r.text()
    );
    // The code was not consumed: the object form still redeems it.
    let r = srv.post_json(
        "/api/pairing/pair",
        &json!({"code": code, "agent_name": "object"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}
