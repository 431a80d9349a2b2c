use super::*;

pub(super) fn parser() -> Parser {
    Parser::new(Limits::default())
}

/// Feed everything at once and collect events until `None`.
pub(super) fn events(p: &mut Parser, bytes: &[u8]) -> Vec<Event> {
    p.feed(bytes);
    drain(p)
}

fn drain(p: &mut Parser) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(ev) = p.poll() {
        out.push(ev);
    }
    out
}

/// Feed byte by byte, polling after each byte.
fn events_bytewise(p: &mut Parser, bytes: &[u8]) -> Vec<Event> {
    let mut out = Vec::new();
    for b in bytes {
        p.feed(std::slice::from_ref(b));
        out.extend(drain(p));
    }
    out
}

pub(super) fn one_request(bytes: &[u8]) -> Request {
    let mut p = parser();
    let evs = events(&mut p, bytes);
    match evs.as_slice() {
        [Event::Request(r)] => r.clone(),
        other => panic!("expected one request, got {other:?}"),
    }
}

pub(super) fn one_error(bytes: &[u8]) -> HttpError {
    one_error_with(parser(), bytes)
}

fn one_error_with(mut p: Parser, bytes: &[u8]) -> HttpError {
    let evs = events(&mut p, bytes);
    match evs.as_slice() {
        [Event::Error(e)] => {
            assert!(p.poll().is_none());
            e.clone()
        }
        other => panic!("expected one error, got {other:?}"),
    }
}

#[test]
fn simple_get() {
    let r = one_request(b"GET /v1/agents?limit=5&x HTTP/1.1\r\nHost: a\r\nX-Thing: Va lue\r\n\r\n");
    assert_eq!(r.method, Method::Get);
    assert_eq!(r.method_raw, "GET");
    assert_eq!(r.path, "/v1/agents");
    assert_eq!(r.query.as_deref(), Some("limit=5&x"));
    assert_eq!(r.version_minor, 1);
    assert_eq!(r.header("host"), Some("a"));
    assert_eq!(r.header("x-thing"), Some("Va lue"));
    assert_eq!(r.headers.get(1).unwrap().0, "x-thing");
    assert!(r.body.is_empty());
    assert!(r.keep_alive);
}

#[test]
fn methods() {
    for (raw, m) in [
        ("GET", Method::Get),
        ("HEAD", Method::Head),
        ("POST", Method::Post),
        ("PUT", Method::Put),
        ("DELETE", Method::Delete),
        ("PATCH", Method::Patch),
        ("OPTIONS", Method::Options),
        ("BREW", Method::Other),
        ("get", Method::Other),
    ] {
        let r = one_request(format!("{raw} / HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
        assert_eq!(r.method, m);
        assert_eq!(r.method_raw, raw);
    }
}

#[test]
fn targets() {
    let r = one_request(b"GET http://example.com:80/a/b?c=d HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(r.path, "/a/b");
    assert_eq!(r.query.as_deref(), Some("c=d"));
    let r = one_request(b"GET http://example.com HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(r.path, "/");
    assert_eq!(r.query, None);
    let r = one_request(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(r.path, "*");
    let r = one_request(b"GET /x? HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(r.path, "/x");
    assert_eq!(r.query.as_deref(), Some(""));
}

#[test]
fn pipelined_requests_in_one_feed() {
    let mut p = parser();
    let evs = events(
        &mut p,
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n\
          POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
          POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /d HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n\
          GET /e HT",
    );
    let reqs: Vec<&Request> = evs
        .iter()
        .map(|e| match e {
            Event::Request(r) => r,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(reqs.len(), 4);
    assert_eq!(reqs[0].path, "/a");
    assert_eq!(reqs[1].path, "/b");
    assert_eq!(reqs[1].body, b"hello");
    assert_eq!(reqs[2].path, "/c");
    assert_eq!(reqs[2].body, b"abc");
    assert_eq!(reqs[3].path, "/d");
    assert!(!reqs[3].keep_alive);
    assert!(!p.is_idle());
    assert_eq!(p.buffered_len(), 9);
    let evs = events(&mut p, b"TP/1.1\r\nHost: h\r\n\r\n");
    assert!(matches!(&evs[..], [Event::Request(r)] if r.path == "/e"));
    assert!(p.is_idle());
    assert_eq!(p.buffered_len(), 0);
}

#[test]
fn byte_by_byte_content_length() {
    let mut p = parser();
    let body = vec![b'x'; 1000];
    let mut msg =
        b"POST /m HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            .to_vec();
    msg.extend_from_slice(&body);
    msg.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n");
    let evs = events_bytewise(&mut p, &msg);
    assert_eq!(evs.len(), 2, "{evs:?}");
    match &evs[0] {
        Event::Request(r) => {
            assert_eq!(r.body, body);
            assert!(r.content_type_is_json());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&evs[1], Event::Request(r) if r.path == "/next"));
    assert!(p.is_idle());
}

#[test]
fn byte_by_byte_chunked() {
    let mut p = parser();
    let msg = b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n\
                5;name=val;other=\"q\"\r\nhello\r\n\
                1A  \r\nabcdefghijklmnopqrstuvwxyz\r\n\
                000 ; ext\r\nX-Trailer: yes\r\nOther: 1\r\n\r\n\
                GET /after HTTP/1.1\r\nHost: h\r\n\r\n";
    let evs = events_bytewise(&mut p, msg);
    assert_eq!(evs.len(), 2, "{evs:?}");
    match &evs[0] {
        Event::Request(r) => {
            assert_eq!(r.body, b"helloabcdefghijklmnopqrstuvwxyz");
            assert_eq!(r.header("x-trailer"), None);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&evs[1], Event::Request(r) if r.path == "/after"));
    // Same thing in one go.
    let mut p = parser();
    assert_eq!(events(&mut p, msg), evs);
}

#[test]
fn every_split_point_gives_the_same_events() {
    let msg: &[u8] =
        b"POST /c?a=1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n\
                4\r\nwiki\r\n5;e\r\npedia\r\n0\r\nT: v\r\n\r\n\
                PUT /p HTTP/1.0\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabc";
    let mut whole = parser();
    let expected: Vec<Event> = events(&mut whole, msg)
        .into_iter()
        .filter(|e| *e != Event::SendContinue)
        .collect();
    assert_eq!(expected.len(), 2);
    for split in 0..=msg.len() {
        let mut p = parser();
        let mut evs = events(&mut p, &msg[..split]);
        evs.extend(events(&mut p, &msg[split..]));
        evs.retain(|e| *e != Event::SendContinue);
        assert_eq!(evs, expected, "split at {split}");
    }
}

#[test]
fn large_body_byte_by_byte_is_linear() {
    // 2 MiB fed one byte at a time; quadratic behaviour would take minutes.
    let limits = Limits::default();
    let mut p = Parser::new(limits);
    let n = limits.body_size_max;
    p.feed(format!("POST / HTTP/1.1\r\nHost: h\r\ncontent-length: {n}\r\n\r\n").as_bytes());
    assert!(p.poll().is_none());
    for _ in 0..n - 1 {
        p.feed(b"z");
        assert!(p.poll().is_none());
    }
    p.feed(b"z");
    match p.poll() {
        Some(Event::Request(r)) => assert_eq!(r.body.len(), n),
        other => panic!("{other:?}"),
    }
}

#[test]
fn header_section_byte_by_byte() {
    let mut msg = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
    for i in 0..60 {
        msg.extend_from_slice(format!("x-h{i}: {}\r\n", "v".repeat(200)).as_bytes());
    }
    msg.extend_from_slice(b"\r\n");
    assert!(msg.len() < 16 * 1024);
    let mut p = parser();
    let evs = events_bytewise(&mut p, &msg);
    assert!(matches!(&evs[..], [Event::Request(r)] if r.headers.len() == 61));
}

#[test]
fn oversize_header_section_is_431() {
    let mut msg = b"GET / HTTP/1.1\r\nHost: h\r\nx-big: ".to_vec();
    msg.extend(std::iter::repeat_n(b'a', 17 * 1024));
    // Without the terminator: refused as soon as the limit is passed.
    let e = one_error(&msg);
    assert_eq!(e.status, 431);
    // With the terminator in the same feed.
    msg.extend_from_slice(b"\r\n\r\n");
    assert_eq!(one_error(&msg).status, 431);
    // Byte by byte.
    let mut p = parser();
    let evs = events_bytewise(&mut p, &msg);
    assert!(matches!(&evs[..], [Event::Error(e)] if e.status == 431));
}

#[test]
fn extreme_limits_do_not_panic() {
    let msg: &[u8] =
        b"POST / HTTP/1.1\r\nHost: h\r\nA: b\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    for limits in [
        Limits {
            header_size_max: 0,
            headers_count_max: 0,
            body_size_max: 0,
        },
        Limits {
            header_size_max: usize::MAX,
            headers_count_max: usize::MAX,
            body_size_max: usize::MAX,
        },
    ] {
        let mut p = Parser::new(limits);
        assert!(p.poll().is_none());
        let _ = events(&mut p, msg);
        let mut p = Parser::new(limits);
        let _ = events_bytewise(&mut p, msg);
    }
    let mut p = Parser::new(Limits {
        body_size_max: usize::MAX,
        ..Limits::default()
    });
    let evs = events(&mut p, msg);
    assert!(matches!(&evs[..], [Event::Request(r)] if r.body == b"abc"));
    let evs = events(
        &mut p,
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n",
    );
    assert!(matches!(&evs[..], [Event::Error(e)] if e.status == 413));
}

#[test]
fn header_section_exactly_at_limit() {
    let limits = Limits {
        header_size_max: 64,
        ..Limits::default()
    };
    let head = |len: usize| {
        let base = b"GET / HTTP/1.1\r\nHost: h\r\nx: \r\n\r\n".len();
        format!(
            "GET / HTTP/1.1\r\nHost: h\r\nx: {}\r\n\r\n",
            "a".repeat(len - base)
        )
    };
    let mut p = Parser::new(limits);
    assert!(matches!(
        &events(&mut p, head(64).as_bytes())[..],
        [Event::Request(_)]
    ));
    let mut p = Parser::new(limits);
    assert!(matches!(
        &events_bytewise(&mut p, head(64).as_bytes())[..],
        [Event::Request(_)]
    ));
    assert_eq!(
        one_error_with(Parser::new(limits), head(65).as_bytes()).status,
        431
    );
}

#[test]
fn too_many_headers_is_431() {
    let mut msg = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
    for i in 1..64 {
        msg.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
    }
    let mut ok = msg.clone();
    ok.extend_from_slice(b"\r\n");
    assert_eq!(one_request(&ok).headers.len(), 64);
    msg.extend_from_slice(b"h64: v\r\n\r\n");
    let e = one_error(&msg);
    assert_eq!(e.status, 431);
    assert!(e.reason.contains("too many header fields"), "{}", e.reason);
    // Far too many.
    let mut msg = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
    for _ in 0..500 {
        msg.extend_from_slice(b"a: b\r\n");
    }
    assert_eq!(one_error(&msg).status, 431);
    let mut p = parser();
    let evs = events_bytewise(&mut p, &msg);
    assert!(matches!(&evs[..], [Event::Error(e)] if e.status == 431));
}

#[test]
fn body_exactly_at_limit_ok() {
    let n = Limits::default().body_size_max;
    let mut msg = format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {n}\r\n\r\n").into_bytes();
    msg.extend(std::iter::repeat_n(b'q', n));
    assert_eq!(one_request(&msg).body.len(), n);
    // Chunked, in two chunks adding up to exactly the limit.
    let mut msg = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    msg.extend_from_slice(format!("{:x}\r\n", n - 10).as_bytes());
    msg.extend(std::iter::repeat_n(b'q', n - 10));
    msg.extend_from_slice(b"\r\na\r\n0123456789\r\n0\r\n\r\n");
    assert_eq!(one_request(&msg).body.len(), n);
}

#[test]
fn body_one_over_limit_by_content_length_is_413() {
    let n = Limits::default().body_size_max + 1;
    let msg = format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {n}\r\n\r\n");
    let e = one_error(msg.as_bytes());
    assert_eq!(e.status, 413);
    assert!(e.reason.contains("2097153"), "{}", e.reason);
    // Absurd lengths too (overflowing u64).
    let e = one_error(
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
    );
    assert_eq!(e.status, 413);
}

#[test]
fn body_one_over_limit_by_chunked_is_413() {
    let n = Limits::default().body_size_max;
    // One chunk declaring limit + 1: refused on the size line, before any data.
    let msg = format!(
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        n + 1
    );
    assert_eq!(one_error(msg.as_bytes()).status, 413);
    // Running total: limit bytes, then one more chunk of 1 byte.
    let mut msg = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    msg.extend_from_slice(format!("{n:x}\r\n").as_bytes());
    msg.extend(std::iter::repeat_n(b'q', n));
    msg.extend_from_slice(b"\r\n1\r\n");
    let e = one_error(&msg);
    assert_eq!(e.status, 413);
    assert!(e.reason.contains("chunked"), "{}", e.reason);
    // Huge hex sizes do not overflow.
    let e = one_error(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffffffff\r\n",
    );
    assert_eq!(e.status, 413);
}

#[test]
fn expect_continue_sequence() {
    let mut p = parser();
    let evs = events(
        &mut p,
        b"POST /x HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 4\r\n\r\n",
    );
    assert_eq!(evs, vec![Event::SendContinue]);
    assert!(!p.is_idle());
    assert!(events(&mut p, b"ab").is_empty());
    let evs = events(&mut p, b"cd");
    assert!(matches!(&evs[..], [Event::Request(r)] if r.body == b"abcd"));

    // Chunked with Expect.
    let mut p = parser();
    let evs = events(
        &mut p,
        b"POST /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(evs, vec![Event::SendContinue]);
    let evs = events(&mut p, b"2\r\nok\r\n0\r\n\r\n");
    assert!(matches!(&evs[..], [Event::Request(r)] if r.body == b"ok"));
}

#[test]
fn expect_continue_not_sent_when_body_already_arrived() {
    let mut p = parser();
    let evs = events(
        &mut p,
        b"POST /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\na",
    );
    assert!(evs.is_empty(), "{evs:?}");
    let evs = events(&mut p, b"bcd");
    assert!(matches!(&evs[..], [Event::Request(r)] if r.body == b"abcd"));
    // Whole body in the same feed.
    let mut p = parser();
    let evs = events(
        &mut p,
        b"POST /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nabcd",
    );
    assert!(matches!(&evs[..], [Event::Request(_)]));
}

#[test]
fn expect_continue_without_body_or_on_http10() {
    let mut p = parser();
    let evs = events(
        &mut p,
        b"POST /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
    );
    assert!(matches!(&evs[..], [Event::Request(_)]));
    let mut p = parser();
    let evs = events(
        &mut p,
        b"POST /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
    );
    assert!(evs.is_empty(), "{evs:?}");
}

#[test]
fn expect_continue_too_large_is_413_without_continue() {
    let n = Limits::default().body_size_max + 1;
    let msg = format!(
        "POST /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: {n}\r\n\r\n"
    );
    let mut p = parser();
    let evs = events(&mut p, msg.as_bytes());
    assert!(
        matches!(&evs[..], [Event::Error(e)] if e.status == 413),
        "{evs:?}"
    );
}

#[test]
fn bad_request_lines_are_400() {
    for msg in [
        &b"GET\r\n\r\n"[..],
        b"GET / HTTP/1.1 extra\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET / FOO/1.1\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"G@T / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"GET / HTTP/1.1\r\nHost: h\r\nbad header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n: empty\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nname : v\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nx: a\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nx: a\rb\r\n\r\n",
    ] {
        let e = one_error(msg);
        assert_eq!(e.status, 400, "{:?}", String::from_utf8_lossy(msg));
        assert!(e.reason.starts_with("malformed"), "{}", e.reason);
    }
}

#[test]
fn garbage_is_rejected_on_first_bytes() {
    let mut p = parser();
    let evs = events(&mut p, b"\x16\x03\x01");
    assert!(matches!(&evs[..], [Event::Error(e)] if e.status == 400));
}

#[test]
fn smuggling_defences_are_400() {
    let e = one_error(
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(e.status, 400);
    assert!(e.reason.contains("smuggling"), "{}", e.reason);
    assert!(e.reason.contains("Content-Length and Transfer-Encoding"));
    for te in [
        "gzip",
        "gzip, chunked",
        "chunked, chunked",
        "identity",
        "chunked;q=1",
        "",
    ] {
        let msg = format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {te}\r\n\r\n");
        let e = one_error(msg.as_bytes());
        assert_eq!(e.status, 400, "{te}");
        assert!(e.reason.contains("smuggling"), "{}", e.reason);
    }
    // Two TE fields are a list too.
    let e = one_error(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(e.status, 400);
    // TE in HTTP/1.0.
    let e = one_error(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(e.status, 400);
}

#[test]
fn content_length_validation() {
    for cl in ["abc", "-1", "+5", "5 5", "0x10", "", "1.0"] {
        let msg = format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {cl}\r\n\r\n");
        let e = one_error(msg.as_bytes());
        assert_eq!(e.status, 400, "{cl:?}");
        assert!(e.reason.contains("Content-Length"), "{}", e.reason);
    }
    let e =
        one_error(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n");
    assert_eq!(e.status, 400);
    assert!(e.reason.contains("conflicting"));
    let e = one_error(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 4\r\n\r\nabcd");
    assert_eq!(e.status, 400);
    // Identical duplicates are fine (RFC 9112 §6.3).
    let r = one_request(
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3, 3\r\n\r\nabc",
    );
    assert_eq!(r.body, b"abc");
    let r = one_request(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0003\r\n\r\nabc");
    assert_eq!(r.body, b"abc");
}

#[test]
fn bad_chunk_framing_is_400() {
    for body in [
        &b"x\r\n"[..],
        b"\r\n",
        b";ext\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloX\r\n",
        b"5\r\nhello\rX",
        b"5\r\nhello\n0\r\n\r\n",
        b"5 x\r\n",
        b"5;e\x01\r\n",
        b"0\r\n\r\r",
        b"0\r\nT: v\n\r\n",
        b"0\r\nT: v\rx",
        b"0\r\n folded\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"-5\r\n",
    ] {
        let mut msg = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        msg.extend_from_slice(body);
        let e = one_error(&msg);
        assert_eq!(e.status, 400, "{:?}", String::from_utf8_lossy(body));
        assert!(e.reason.starts_with("bad chunked encoding"), "{}", e.reason);
    }
    // Over-long chunk extension.
    let mut msg = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
    msg.extend(std::iter::repeat_n(b'e', CHUNK_LINE_MAX));
    assert_eq!(one_error(&msg).status, 400);
    // Over-long trailer section.
    let mut msg =
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nt: ".to_vec();
    msg.extend(std::iter::repeat_n(b'e', 17 * 1024));
    assert_eq!(one_error(&msg).status, 431);
}

#[test]
fn keep_alive_rules() {
    let ka = |msg: &[u8]| one_request(msg).keep_alive;
    assert!(ka(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
    assert!(!ka(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    ));
    assert!(!ka(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, CLOSE\r\n\r\n"
    ));
    assert!(ka(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n"
    ));
    assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
    assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    assert!(!ka(
        b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
    ));
    assert!(!ka(b"GET / HTTP/1.0\r\nConnection: closed\r\n\r\n"));
    assert_eq!(one_request(b"GET / HTTP/1.0\r\n\r\n").version_minor, 0);
}

#[test]
fn query_param_decoding() {
    let r = one_request(
        b"GET /s?q=hello+world&name=J%C3%BCrgen&empty=&flag&bad=%zz%4&pct=100%25&a%20b=1&q=second HTTP/1.1\r\nHost: h\r\n\r\n",
    );
    assert_eq!(r.query_param("q").as_deref(), Some("hello world"));
    assert_eq!(r.query_param("name").as_deref(), Some("Jürgen"));
    assert_eq!(r.query_param("empty").as_deref(), Some(""));
    assert_eq!(r.query_param("flag").as_deref(), Some(""));
    assert_eq!(r.query_param("bad").as_deref(), Some("%zz%4"));
    assert_eq!(r.query_param("pct").as_deref(), Some("100%"));
    assert_eq!(r.query_param("a b").as_deref(), Some("1"));
    assert_eq!(r.query_param("missing"), None);
    let r = one_request(b"GET /s?x=%FF%FE HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(r.query_param("x").as_deref(), Some("\u{FFFD}\u{FFFD}"));
    let r = one_request(b"GET /s HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(r.query_param("x"), None);
}

#[test]
fn content_type_json() {
    let ct = |v: &str| {
        one_request(format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Type: {v}\r\n\r\n").as_bytes())
            .content_type_is_json()
    };
    assert!(ct("application/json"));
    assert!(ct("Application/JSON; charset=utf-8"));
    assert!(ct("application/json ;charset=utf-8"));
    assert!(!ct("application/jsonx"));
    assert!(!ct("text/plain"));
    assert!(!ct("application/ld+json"));
    assert!(!one_request(b"POST / HTTP/1.1\r\nHost: h\r\n\r\n").content_type_is_json());
}

#[test]
fn upgrade_and_take_remaining() {
    let mut p = parser();
    p.feed(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\
          \x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
    );
    match p.poll() {
        Some(Event::Request(r)) => assert!(r.is_upgrade_websocket()),
        other => panic!("{other:?}"),
    }
    assert_eq!(p.buffered_len(), 11);
    let rest = p.take_remaining();
    assert_eq!(rest, b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
    assert_eq!(p.buffered_len(), 0);
    assert!(p.take_remaining().is_empty());

    assert!(
        !one_request(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n")
            .is_upgrade_websocket()
    );
    assert!(!one_request(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
    )
    .is_upgrade_websocket());
    assert!(one_request(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    .is_upgrade_websocket());
}

#[test]
fn idle_and_leading_empty_lines() {
    let mut p = parser();
    assert!(p.is_idle());
    assert!(events(&mut p, b"\r\n\r\n").is_empty());
    assert!(p.is_idle());
    assert!(events(&mut p, b"G").is_empty());
    assert!(!p.is_idle());
    let evs = events(&mut p, b"ET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(matches!(&evs[..], [Event::Request(_)]));
    assert!(p.is_idle());
    // Stray CRLF after a request.
    let evs = events(&mut p, b"\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n\r\n");
    assert!(matches!(&evs[..], [Event::Request(r)] if r.path == "/2"));
    assert!(p.is_idle());
}

#[test]
fn dead_after_error() {
    let mut p = parser();
    let evs = events(
        &mut p,
        b"BAD REQUEST LINE\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
    );
    assert_eq!(evs.len(), 1);
    assert!(matches!(&evs[0], Event::Error(e) if e.status == 400));
    assert!(events(&mut p, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").is_empty());
    assert!(p.poll().is_none());
    assert_eq!(p.buffered_len(), 0);
}

#[test]
fn header_values_lossy_and_names_lowercased() {
    let r = one_request(
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Bin: a\xffb\r\nAUTHORIZATION: Bearer T\r\n\r\n",
    );
    assert_eq!(r.header("x-bin"), Some("a\u{FFFD}b"));
    assert_eq!(r.headers.get(2), Some(("authorization", "Bearer T")));
    assert_eq!(r.header("Authorization"), Some("Bearer T"));
}

#[test]
fn compaction_with_many_pipelined_requests() {
    let mut p = parser();
    let one = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789";
    let mut all = Vec::new();
    for _ in 0..2000 {
        all.extend_from_slice(one);
    }
    // Feed in odd-sized pieces, polling in between.
    let mut count = 0;
    for piece in all.chunks(777) {
        for ev in events(&mut p, piece) {
            match ev {
                Event::Request(r) => {
                    assert_eq!(r.body, b"0123456789");
                    count += 1;
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(count, 2000);
    assert!(p.is_idle());
}

#[test]
fn release_idle_frees_the_buffer_between_requests_only() {
    let mut p = parser();
    // Between requests: nothing buffered, nothing kept.
    let ev = events(&mut p, b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n");
    assert!(matches!(&ev[..], [Event::Request(r)] if r.path == "/a"));
    assert!(p.buf.capacity() > 0);
    p.release_idle();
    assert_eq!((p.buf.capacity(), p.buffered_len()), (0, 0));
    // Half a head: kept, and the request completes after more bytes.
    let ev = events(&mut p, b"GET /b HTTP/1.1\r\nho");
    assert!(ev.is_empty());
    p.release_idle();
    assert_eq!(p.buffered_len(), 19);
    let ev = events(&mut p, b"st: x\r\n\r\n");
    assert!(matches!(&ev[..], [Event::Request(r)] if r.path == "/b"));
    // In a body: kept, whatever is buffered.
    let ev = events(
        &mut p,
        b"POST /c HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\r\nab",
    );
    assert!(ev.is_empty(), "{ev:?}");
    p.release_idle();
    let ev = events(&mut p, b"cd");
    assert!(matches!(&ev[..], [Event::Request(r)] if r.body == b"abcd"));
    p.release_idle();
    assert_eq!(p.buf.capacity(), 0);
}

#[test]
fn feed_vec_takes_the_buffer_when_empty_and_appends_otherwise() {
    let mut p = parser();
    let v = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HT".to_vec();
    let ptr = v.as_ptr();
    p.feed_vec(v);
    assert_eq!(p.buf.as_ptr(), ptr, "taken without a copy");
    let ev = drain(&mut p);
    assert!(matches!(&ev[..], [Event::Request(r)] if r.path == "/a"));
    // Half a request buffered: the next bytes are appended.
    p.feed_vec(b"TP/1.1\r\nhost: x\r\n\r\n".to_vec());
    let ev = drain(&mut p);
    assert!(matches!(&ev[..], [Event::Request(r)] if r.path == "/b"));
    // After an error, ignored as `feed` is.
    let mut p = parser();
    p.feed(b"\x00\x00\x00 garbage\r\n\r\n");
    assert!(matches!(drain(&mut p)[..], [Event::Error(_)]));
    p.feed_vec(b"GET / HTTP/1.1\r\n\r\n".to_vec());
    assert!(drain(&mut p).is_empty());
}
