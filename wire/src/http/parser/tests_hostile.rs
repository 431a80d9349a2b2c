//! The request rules against hostile or sloppy clients: Host (RFC 9112 §3.2),
//! expectations (RFC 9110 §10.1.1), bounded empty lines before a request line, and the
//! body state the connection loop's deadlines rely on.

use super::tests::{events, one_error, one_request, parser};
use super::*;

#[test]
fn host_header_is_required_once_in_http11() {
    let e = one_error(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(e.status, 400, "{e}");
    assert!(e.reason.contains("Host"), "{e}");
    let e = one_error(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n");
    assert_eq!(e.status, 400, "{e}");
    let e = one_error(b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n");
    assert_eq!(e.status, 400, "{e}");
    // HTTP/1.0 may omit it.
    let r = one_request(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(r.version_minor, 0);
}

#[test]
fn unknown_expectation_is_417() {
    let e =
        one_error(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 999-bogus\r\nContent-Length: 1\r\n\r\nx");
    assert_eq!(e.status, 417, "{e}");
    let r = one_request(
        b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\nx",
    );
    assert_eq!(r.body, b"x");
}

#[test]
fn leading_empty_lines_are_bounded() {
    let mut ok = [b'\r', b'\n'].repeat(LEADING_EMPTY_LINES_SIZE_MAX / 2);
    ok.extend_from_slice(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(one_request(&ok).path, "/");
    // One byte over, whether it comes at once or in pieces.
    let too_many = vec![b'\n'; LEADING_EMPTY_LINES_SIZE_MAX + 1];
    assert_eq!(one_error(&too_many).status, 400);
    let mut p = parser();
    let mut evs = Vec::new();
    for _ in 0..=LEADING_EMPTY_LINES_SIZE_MAX {
        evs.extend(events(&mut p, b"\n"));
    }
    assert!(
        matches!(&evs[..], [Event::Error(e)] if e.status == 400),
        "{evs:?}"
    );
    // The count starts again after each request.
    let mut p = parser();
    let mut input = Vec::new();
    for _ in 0..3 {
        input.extend(vec![b'\n'; LEADING_EMPTY_LINES_SIZE_MAX]);
        input.extend_from_slice(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    }
    let evs = events(&mut p, &input);
    assert_eq!(evs.len(), 3, "{evs:?}");
    assert!(evs.iter().all(|e| matches!(e, Event::Request(_))));
}

#[test]
fn reading_body_state() {
    let mut p = parser();
    assert!(!p.is_reading_body());
    assert!(events(&mut p, b"POST / HTTP/1.1\r\nHost: h\r\n").is_empty());
    assert!(!p.is_reading_body());
    assert!(events(&mut p, b"Content-Length: 3\r\n\r\nab").is_empty());
    assert!(p.is_reading_body());
    assert_eq!(events(&mut p, b"c").len(), 1);
    assert!(!p.is_reading_body());
    assert!(p.is_idle());
}
