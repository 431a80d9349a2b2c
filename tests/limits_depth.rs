//! Issue 20, finding 1: JSON nesting has a bound everywhere a client's JSON is read.
//! A task `payload` of 8,000 nested arrays (a 16 KB request) overflowed the shard's stack
//! and aborted the process; now every JSON body nesting deeper than
//! `wire::json::JSON_DEPTH_MAX` is 422 with a JSON reason, and the server keeps serving.

mod common;
use common::*;

use wire::json::JSON_DEPTH_MAX;

/// `n` nested arrays around `inner`: `[[…inner…]]`.
fn nested(n: usize, inner: &str) -> String {
    let mut s = String::with_capacity(2 * n + inner.len());
    s.extend(std::iter::repeat_n('[', n));
    s.push_str(inner);
    s.extend(std::iter::repeat_n(']', n));
    s
}

fn post_raw(s: &Server, path: &str, body: &str) -> Resp {
    s.req(
        "POST",
        path,
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
    )
}

/// The 422 of a body `depth` levels deep names that depth and the limit.
fn assert_too_deep(r: &Resp, depth: usize) {
    let msg = r.error(422);
    assert!(
        msg.contains(&format!("nesting is {depth} levels deep"))
            && msg.contains(&format!("the limit is {JSON_DEPTH_MAX}")),
        "{msg}"
    );
}

#[test]
fn a_deep_task_payload_is_422_and_the_server_keeps_serving() {
    let mut s = Server::with(Opts::cores(2));
    // Another client, connected before the attack, keeps its keep-alive connection.
    let mut other = s.conn();
    assert_eq!(other.get("/healthz").status, 200);
    // The issue's request: about 16 KB, 8,000 nested arrays in `payload`.
    let body = format!(r#"{{"skill":"s","payload":{}}}"#, nested(8000, "1"));
    assert!(body.len() < 17_000);
    let r = post_raw(&s, "/api/hub/tasks", &body);
    assert_too_deep(&r, 8001);
    assert!(s.child.try_wait().unwrap().is_none(), "{}", s.log());
    assert_eq!(s.get("/healthz").status, 200);
    assert_eq!(other.get("/api/hub/tasks/all").json(), json!([]));
    let ok = other.post_json("/api/hub/tasks", &json!({"skill": "s", "payload": [1]}));
    assert_eq!(ok.status, 200, "{}", ok.text());
}
