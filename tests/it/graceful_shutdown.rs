//! SIGTERM: stop accepting, finish the request in flight, close idle keep-alive
//! connections, exit 0 within the bound — on both io drivers.
use crate::common;

use std::io::Write;
use std::time::Duration;

use common::{closed_by_peer, read_response, Server};

#[test]
fn sigterm_finishes_in_flight_request_and_exits_zero() {
    for driver in common::DRIVERS {
        let mut srv = Server::start_driver(2, driver, &["--shutdown-timeout", "5"]);
        // An idle keep-alive connection.
        let mut idle = srv.stream();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut idle, &mut Vec::new()).status, 200);
        // A request in flight: headers and half the body sent.
        let mut busy = srv.stream();
        busy.write_all(b"POST /healthz HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\nhello")
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));

        let addr = srv.addr;
        // The rest of the body goes once the shutdown has begun (the idle connection
        // is closed then), and 300 ms later, so that the exit visibly waits for it.
        let finisher = std::thread::spawn(move || {
            let idle_closed = closed_by_peer(&mut idle);
            std::thread::sleep(Duration::from_millis(300));
            busy.write_all(b"world").unwrap();
            let r = read_response(&mut busy, &mut Vec::new());
            (
                idle_closed,
                r.status,
                r.header("connection").map(str::to_string),
                closed_by_peer(&mut busy),
            )
        });
        let (status, took) = srv.terminate(Duration::from_secs(5));
        let (idle_closed, code, conn_header, closed) = finisher.join().unwrap();
        assert!(idle_closed, "{driver}: idle keep-alive connection closed");
        assert_eq!(code, 405, "{driver}: the in-flight request was answered");
        assert_eq!(conn_header.as_deref(), Some("close"), "{driver}");
        assert!(closed, "{driver}");
        assert_eq!(status.code(), Some(0), "{driver}: exit status {status}");
        assert!(
            took >= Duration::from_millis(250),
            "{driver}: waited for the request in flight ({took:?})"
        );
        // Nothing listens any more.
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "{driver}: listener closed"
        );
    }
}

#[test]
fn shutdown_timeout_bounds_a_stuck_client() {
    for driver in common::DRIVERS {
        let mut srv = Server::start_driver(1, driver, &["--shutdown-timeout", "0.5"]);
        // A request that never completes.
        let mut stuck = srv.stream();
        stuck
            .write_all(b"POST /healthz HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\nabc")
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let (status, took) = srv.terminate(Duration::from_secs(5));
        assert_eq!(status.code(), Some(0), "{driver}");
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(3),
            "{driver}: {took:?}"
        );
    }
}

#[test]
fn sigterm_closes_websockets_with_1001() {
    for driver in common::DRIVERS {
        let mut o = common::Opts::cores(2);
        o.keys = Some(
            r#"{"keys":{"ak_a":{"peer_id":"peer-a","role":"agent"},"ak_b":{"peer_id":"peer-b","role":"agent"}}}"#.into(),
        );
        o.args = vec!["--io-driver".into(), driver.into()];
        let mut srv = Server::with(o);
        let (mut a, _) = common::ws::join(&srv, "peer-a", &common::ws::jwt_for("peer-a", 300));
        let (mut b, _) = common::ws::join(&srv, "peer-b", &common::ws::jwt_for("peer-b", 300));
        let (status, _) = srv.terminate(Duration::from_secs(5));
        assert_eq!(status.code(), Some(0), "{driver}");
        for ws in [&mut a, &mut b] {
            let (code, reason) = common::ws::recv_close(ws);
            assert_eq!(
                (code, reason.as_str()),
                (1001, "server shutting down"),
                "{driver}"
            );
        }
    }
}

/// A signaling peer that stopped reading while the server writes to it does not hold a
/// graceful shutdown past the idle timeout: its stalled write is abandoned by the idle
/// sweep (which runs until the shard has drained), and the drain ends cleanly
/// ("shutdown complete") well inside `--shutdown-timeout`.
#[test]
fn a_stalled_websocket_write_does_not_hold_the_shutdown() {
    let mut o = common::Opts::cores(2);
    o.keys = Some(
        r#"{"keys":{"ak_a":{"peer_id":"peer-a","role":"agent"},"ak_b":{"peer_id":"peer-b","role":"agent"}}}"#.into(),
    );
    o.args = [
        "--ws-idle-timeout",
        "8",
        "--shutdown-timeout",
        "60",
        "--ws-outbound-bytes-max",
        "100000000",
        "--ws-outbound-frames-max",
        "100000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    o.env = vec![("RUST_LOG".into(), "info".into())];
    let mut srv = Server::with(o);
    // The slow peer: a small receive buffer, and it never reads.
    let mut slow = common::ws::slow_client(&srv, &common::ws::jwt_for("peer-b", 300));
    common::ws::send(
        &mut slow,
        &serde_json::json!({"type": "register", "peer_id": "peer-b"}),
    );
    let (mut fast, _) = common::ws::join(&srv, "peer-a", &common::ws::jwt_for("peer-a", 300));
    let payload = serde_json::json!({"sdp": "z".repeat(8000)});
    for _ in 0..1500 {
        let m = serde_json::json!({"type": "offer", "peer_id": "peer-a", "target_id": "peer-b", "payload": payload});
        fast.send(tungstenite::Message::text(m.to_string()))
            .unwrap();
    }
    // peer-b's write is stalled (12 MB for a reader that reads nothing). Shut down now.
    let (status, _) = srv.terminate(Duration::from_secs(90));
    assert_eq!(status.code(), Some(0));
    let log = srv.log();
    assert!(
        log.contains("shutdown complete") && !log.contains("shutdown timeout reached"),
        "the drain waited for the stalled write until --shutdown-timeout:\n{log}"
    );
    drop(slow);
}
