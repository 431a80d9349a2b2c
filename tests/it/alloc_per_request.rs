//! Heap allocations per request on the sans-IO request path (parse → route → handler
//! body → encode), counted by the test binary's global allocator (`main.rs`), which counts
//! per thread, so the tests running beside these in the binary do not add to the counts.
//! The budgets are ceilings, not targets: a change that adds an allocation to the hot
//! path fails here and must either be taken back or raise the budget knowingly.
//! (Speed itself is proven in benchmarks, docs/BENCHMARKS.md, not here.)

use chatixia_core::http::{Event, Limits, Parser, Response};
use chatixia_core::registry::Heartbeat;
use chatixia_core::server::router::{self, Route};
use reactor::alloc_count::allocations as allocs;

/// What `wrk` sends for `GET /healthz`.
const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";

fn heartbeat_request(i: usize) -> Vec<u8> {
    let body = format!(
        r#"{{"agent_id":"bench-{}","hostname":"h","skill_names":["s{}"]}}"#,
        i % 100,
        i % 10
    );
    format!(
        "POST /api/hub/heartbeat HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: {}\r\n\
         content-type: application/json\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Runs `n` requests through one connection's parser as the connection loop on io_uring
/// does between idle waits (`server::conn::serve`): each request's bytes arrive in a
/// buffer of their own (the multishot receive's inbox, counted), which the parser takes
/// (`feed_vec`); the answer goes into a fresh output buffer; once answered, the parser
/// lets its buffer go (`release_idle`). Returns the allocations per request, after a
/// warm-up.
fn per_request(
    reqs: &[Vec<u8>],
    mut handle: impl FnMut(&chatixia_core::http::Request, &mut Vec<u8>),
) -> f64 {
    let mut parser = Parser::new(Limits::default());
    let mut run = |bytes: &[u8], out: &mut Vec<u8>| {
        *out = Vec::new();
        parser.feed_vec(bytes.to_vec());
        let mut n = 0;
        while let Some(ev) = parser.poll() {
            match ev {
                Event::Request(req) => {
                    handle(&req, out);
                    n += 1;
                }
                other => panic!("unexpected parser event {other:?}"),
            }
        }
        assert_eq!(n, 1, "one request per feed");
        parser.release_idle();
    };
    let mut out = Vec::new();
    for r in reqs.iter().take(8) {
        run(r, &mut out);
    }
    let before = allocs();
    for r in reqs {
        run(r, &mut out);
    }
    (allocs() - before) as f64 / reqs.len() as f64
}

#[test]
fn healthz_allocations_per_request() {
    let reqs: Vec<Vec<u8>> = (0..1000).map(|_| HEALTHZ.to_vec()).collect();
    let n = per_request(&reqs, |req, out| {
        let m = router::match_path(&req.path).expect("routed");
        assert_eq!(m.route, Route::Healthz);
        router::healthz().encode(req.keep_alive, false, out);
    });
    println!("GET /healthz: {n} allocations per request");
    assert!(
        n <= HEALTHZ_BUDGET + SLACK,
        "{n} allocations per GET /healthz (budget {HEALTHZ_BUDGET})"
    );
}

#[test]
fn heartbeat_allocations_per_request() {
    let reqs: Vec<Vec<u8>> = (0..1000).map(heartbeat_request).collect();
    let n = per_request(&reqs, |req, out| {
        let m = router::match_path(&req.path).expect("routed");
        assert_eq!(m.route, Route::Heartbeat);
        assert!(req.content_type_is_json());
        let hb: Heartbeat = wire::json::parse_body(&req.body).expect("valid heartbeat");
        assert!(hb.agent_id.starts_with("bench-"));
        // The handler's answer with no pending task.
        let body = chatixia_core::hub::heartbeat_body::<chatixia_core::hub::Task>(&[]);
        Response::json_bytes(200, body).encode(req.keep_alive, false, out);
    });
    println!("POST /api/hub/heartbeat: {n} allocations per request");
    assert!(
        n <= HEARTBEAT_BUDGET + SLACK,
        "{n} allocations per heartbeat (budget {HEARTBEAT_BUDGET})"
    );
}

/// Ceilings, from the counts printed by these tests (`cargo test -p chatixia-core --features
/// test-switches --test it alloc_per_request:: -- --nocapture`). Two of each are the
/// loop's buffers (the receive's inbox, the answer's), taken per request so that an
/// idle keep-alive connection holds none (docs/BENCHMARKS.md, "Idle keep-alive HTTP
/// connections"); they are small, served by glibc's thread cache.
const HEALTHZ_BUDGET: f64 = 4.0;
/// An occasional amortised growth (a buffer doubling once in 1000 requests) is not a
/// per-request allocation.
const SLACK: f64 = 0.05;
const HEARTBEAT_BUDGET: f64 = 10.0;

/// A relayed signaling message on the sans-IO path the session runs: one read's bytes
/// (a masked client frame) decoded, interpreted and re-framed for the target.
#[test]
fn relay_allocations_per_message() {
    use chatixia_core::ws::codec::{Decoder, WsEvent};
    use chatixia_core::ws::signaling::{self, Action};
    let frames: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            let text = format!(
                r#"{{"type":"ice_candidate","peer_id":"agent-a","target_id":"agent-{}","payload":{{"candidate":"candidate:1 1 udp 2122260223 127.0.0.1 {} typ host","sdpMid":"0","sdpMLineIndex":0}}}}"#,
                i % 100,
                40000 + i
            );
            let mut f = Vec::new();
            wire::ws::client::encode_text_masked(text.as_bytes(), [1, 2, 3, 4], &mut f);
            f
        })
        .collect();
    let mut decoder = Decoder::new(64 * 1024);
    let mut relayed = 0usize;
    let mut run = |bytes: &[u8], relayed: &mut usize| {
        let mut events = Vec::new();
        decoder
            .decode(bytes, |ev| events.push(ev))
            .expect("valid frame");
        for ev in events {
            let WsEvent::Text(text) = ev else {
                panic!("not text")
            };
            let Action::Relay {
                kind,
                target,
                payload,
            } = signaling::interpret_str(&text, "agent-a")
            else {
                panic!("not a relay")
            };
            let frame =
                signaling::relay_text_frame(kind, "agent-a", &target, payload).into_boxed_slice();
            assert!(frame.len() > payload.len());
            *relayed += 1;
        }
    };
    for f in frames.iter().take(8) {
        run(f, &mut relayed);
    }
    let before = allocs();
    for f in &frames {
        run(f, &mut relayed);
    }
    let n = (allocs() - before) as f64 / frames.len() as f64;
    assert_eq!(relayed, 1008);
    println!("relayed signaling message: {n} allocations");
    assert!(
        n <= RELAY_BUDGET + SLACK,
        "{n} allocations per relayed message (budget {RELAY_BUDGET})"
    );
}

/// The events list, the unmasked message, the outgoing frame.
const RELAY_BUDGET: f64 = 3.0;
