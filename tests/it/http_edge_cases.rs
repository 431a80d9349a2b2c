//! HTTP/1.1 edge cases over real sockets, on both io drivers and with 1 and 2 shards.
use crate::common;

use std::io::Write;
use std::time::Duration;

use common::{closed_by_peer, read_response, Server};

fn each_server(f: impl Fn(&Server)) {
    for driver in common::DRIVERS {
        for cores in [1, 2] {
            let server = Server::start_driver(cores, driver, &[]);
            f(&server);
        }
    }
}

#[test]
fn pipelined_requests_answer_in_order() {
    each_server(|srv| {
        let mut s = srv.stream();
        let mut batch = String::new();
        for i in 0..20 {
            let path = if i % 2 == 0 { "/healthz" } else { "/nope" };
            batch.push_str(&format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n"));
        }
        s.write_all(batch.as_bytes()).unwrap();
        let mut buf = Vec::new();
        for i in 0..20 {
            let r = read_response(&mut s, &mut buf);
            if i % 2 == 0 {
                assert_eq!(
                    (r.status, r.text()),
                    (200, r#"{"status":"ok"}"#.to_string())
                );
            } else {
                assert_eq!(r.status, 404);
                assert_eq!(r.json()["error"], "no route for /nope");
            }
        }
    });
}

#[test]
fn byte_by_byte_request_with_body() {
    each_server(|srv| {
        let mut s = srv.stream();
        // A POST to a GET-only route, with a body, sent one byte at a time: the whole
        // request must be parsed (405 proves the route was matched after the body).
        let req = "POST /healthz HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"a\":12345}GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n";
        for b in req.as_bytes() {
            s.write_all(&[*b]).unwrap();
        }
        let mut buf = Vec::new();
        let r = read_response(&mut s, &mut buf);
        assert_eq!(r.status, 405);
        assert_eq!(r.header("allow"), Some("GET,HEAD,OPTIONS"));
        let r = read_response(&mut s, &mut buf);
        assert_eq!(r.status, 200);
    });
}

#[test]
fn oversize_headers_get_431_and_close() {
    each_server(|srv| {
        let mut s = srv.stream();
        let big = "x".repeat(20 * 1024);
        s.write_all(format!("GET /healthz HTTP/1.1\r\nhost: t\r\nx-big: {big}\r\n\r\n").as_bytes())
            .unwrap();
        let r = read_response(&mut s, &mut Vec::new());
        assert_eq!(r.status, 431);
        assert!(r.json()["error"].as_str().unwrap().len() > 5);
        assert_eq!(r.header("connection"), Some("close"));
        assert!(closed_by_peer(&mut s));
        // Too many headers.
        let mut s = srv.stream();
        let mut req = String::from("GET /healthz HTTP/1.1\r\nhost: t\r\n");
        for i in 0..100 {
            req.push_str(&format!("x-h{i}: v\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        assert_eq!(read_response(&mut s, &mut Vec::new()).status, 431);
    });
}

#[test]
fn body_limit_by_length_and_chunked() {
    each_server(|srv| {
        // Exactly 2 MiB is accepted (the route then says 405: it takes no POST).
        let mut s = srv.stream();
        let limit = 2 * 1024 * 1024;
        s.write_all(
            format!("POST /healthz HTTP/1.1\r\nhost: t\r\ncontent-length: {limit}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        s.write_all(&vec![b'a'; limit]).unwrap();
        assert_eq!(read_response(&mut s, &mut Vec::new()).status, 405);
        // One byte more by Content-Length: 413 at once.
        let mut s = srv.stream();
        s.write_all(
            format!(
                "POST /healthz HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n",
                limit + 1
            )
            .as_bytes(),
        )
        .unwrap();
        let r = read_response(&mut s, &mut Vec::new());
        assert_eq!(r.status, 413);
        assert!(r.json()["error"].is_string());
        // One byte more, chunked.
        let mut s = srv.stream();
        s.write_all(b"POST /healthz HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n")
            .unwrap();
        let chunk = vec![b'b'; 1024 * 1024];
        for _ in 0..2 {
            s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .unwrap();
            s.write_all(&chunk).unwrap();
            s.write_all(b"\r\n").unwrap();
        }
        let _ = s.write_all(b"1\r\nc\r\n0\r\n\r\n");
        assert_eq!(read_response(&mut s, &mut Vec::new()).status, 413);
        // A small chunked body is de-chunked and the connection stays usable.
        let mut s = srv.stream();
        s.write_all(b"POST /healthz HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nhost: t\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        assert_eq!(read_response(&mut s, &mut buf).status, 405);
        assert_eq!(read_response(&mut s, &mut buf).status, 200);
    });
}

#[test]
fn bad_request_line_is_400() {
    each_server(|srv| {
        for raw in [
            "GARBAGE\r\n\r\n",
            "GET /healthz HTTP/9.9\r\n\r\n",
            "GET  HTTP/1.1\r\n\r\n",
        ] {
            let mut s = srv.stream();
            s.write_all(raw.as_bytes()).unwrap();
            let r = read_response(&mut s, &mut Vec::new());
            assert_eq!(r.status, 400, "{raw:?}");
            assert!(r.json()["error"].is_string());
            assert!(closed_by_peer(&mut s));
        }
        // Request smuggling shape: both Content-Length and Transfer-Encoding.
        let mut s = srv.stream();
        s.write_all(b"POST /healthz HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut s, &mut Vec::new()).status, 400);
        // The server is unharmed for others.
        assert_eq!(srv.get("/healthz").status, 200);
    });
}

#[test]
fn expect_100_continue() {
    each_server(|srv| {
        let mut s = srv.stream();
        s.write_all(b"POST /healthz HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        // The interim response comes before we send the body.
        while common::find(&buf, b"\r\n\r\n").is_none() {
            let mut tmp = [0u8; 256];
            let n = std::io::Read::read(&mut s, &mut tmp).unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&tmp[..n]);
        }
        assert!(
            buf.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"),
            "{:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.drain(..25);
        s.write_all(b"hello").unwrap();
        assert_eq!(read_response(&mut s, &mut buf).status, 405);
        // Too large: 413 without 100 Continue.
        let mut s = srv.stream();
        s.write_all(b"POST /healthz HTTP/1.1\r\nhost: t\r\ncontent-length: 9999999\r\nexpect: 100-continue\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut s, &mut Vec::new()).status, 413);
    });
}

#[test]
fn cors_options_and_404_405() {
    each_server(|srv| {
        let r = srv.get("/healthz");
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        assert_eq!(r.header("access-control-expose-headers"), Some("*"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        let r = common::request(srv, "OPTIONS /metrics HTTP/1.1\r\nhost: t\r\norigin: http://x\r\naccess-control-request-method: GET\r\n\r\n");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("access-control-allow-methods"), Some("*"));
        assert_eq!(r.header("access-control-allow-headers"), Some("*"));
        assert_eq!(r.header("allow"), Some("GET,HEAD,OPTIONS"));
        let r = srv.get("/does/not/exist");
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["error"], "no route for /does/not/exist");
        let r = common::request(srv, "DELETE /healthz HTTP/1.1\r\nhost: t\r\n\r\n");
        assert_eq!(r.status, 405);
        // HEAD: headers only, real length.
        let mut s = srv.stream();
        s.write_all(
            b"HEAD /healthz HTTP/1.1\r\nhost: t\r\n\r\nGET /healthz HTTP/1.1\r\nhost: t\r\n\r\n",
        )
        .unwrap();
        let mut buf = Vec::new();
        let head = read_head_only(&mut s, &mut buf);
        assert!(head.contains("content-length: 15"), "{head}");
        assert_eq!(read_response(&mut s, &mut buf).text(), r#"{"status":"ok"}"#);
    });
}

fn read_head_only(s: &mut std::net::TcpStream, buf: &mut Vec<u8>) -> String {
    loop {
        if let Some(end) = common::find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return head;
        }
        let mut tmp = [0u8; 1024];
        let n = std::io::Read::read(s, &mut tmp).unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&tmp[..n]);
    }
}

#[test]
fn idle_keepalive_connection_times_out() {
    let srv = Server::start_driver(1, "uring", &["--http-idle-timeout", "0.3"]);
    let mut s = srv.stream();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s, &mut Vec::new()).status, 200);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(
        closed_by_peer(&mut s),
        "idle connection closed by the server"
    );
}
