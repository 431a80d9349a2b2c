//! /healthz, /metrics with per-shard series gathered from every shard, and the
//! listener rules (a port in use fails clearly; PORT is honoured).
use crate::common;

use std::process::Command;

use common::Server;

fn sample(text: &str, name_and_labels: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|r| r.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no sample {name_and_labels} in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn metrics_cover_every_shard() {
    for driver in common::DRIVERS {
        let srv = Server::start_driver(2, driver, &[]);
        // Enough connections that SO_REUSEPORT lands some on each shard.
        for _ in 0..40 {
            assert_eq!(srv.get("/healthz").status, 200);
        }
        let r = srv.get("/metrics");
        assert_eq!(r.status, 200);
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        let text = r.text();
        let want_driver = if driver == "uring" {
            "io_uring"
        } else {
            "epoll"
        };
        let mut accepted = 0;
        let mut requests = 0;
        for shard in 0..2 {
            let l = format!("{{shard=\"{shard}\"}}");
            accepted += sample(&text, &format!("chatixia_connections_accepted_total{l}"));
            requests += sample(&text, &format!("chatixia_http_requests_total{l}"));
            sample(&text, &format!("chatixia_connections_open{l}"));
            sample(&text, &format!("chatixia_mailbox_sent_total{l}"));
            sample(&text, &format!("chatixia_mailbox_received_total{l}"));
            sample(&text, &format!("chatixia_mailbox_refused_total{l}"));
            // The shard layer's back-pressure counters (nothing waited on an idle server).
            for series in [
                "chatixia_shard_asks_waited_total",
                "chatixia_shard_asks_refused_total",
                "chatixia_shard_reservations_refused_total",
            ] {
                assert_eq!(sample(&text, &format!("{series}{l}")), 0, "{series}");
            }
            assert_eq!(
                sample(
                    &text,
                    &format!("chatixia_io_driver{{shard=\"{shard}\",driver=\"{want_driver}\"}}")
                ),
                1
            );
        }
        // 40 health checks + readiness probe(s) + this request, on fresh connections.
        assert!(accepted >= 41, "accepted {accepted}");
        assert!(requests >= 41, "requests {requests}");
        // The scrape itself asked the other shard: mail went both ways.
        let r2 = srv.get("/metrics").text();
        let sent: u64 = (0..2)
            .map(|s| {
                sample(
                    &r2,
                    &format!("chatixia_mailbox_sent_total{{shard=\"{s}\"}}"),
                )
            })
            .sum();
        assert!(sent >= 2, "scrapes cross shards: sent={sent}");
        assert_eq!(sample(&r2, "chatixia_shards"), 2);
    }
}

#[test]
fn second_server_on_same_port_fails_clearly() {
    let srv = Server::start_driver(2, "uring", &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_chatixia-core"))
        .env("CHATIXIA_DATA_DIR", common::scratch_data_dir())
        .args(["--cores", "1", "--listen", &srv.addr.to_string()])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("address already in use"), "{err}");
    // The first server still serves.
    assert_eq!(srv.get("/healthz").status, 200);
}

#[test]
fn port_env_is_honoured() {
    // PORT=0: the kernel picks the port, which the server reports in --port-file (a port
    // merely found free could be taken before the server binds it). Were PORT ignored,
    // the server would listen on the default 0.0.0.0:8080 instead.
    let dir = common::TempDir::new();
    let port_file = dir.0.join("port");
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatixia-core"))
        .env("CHATIXIA_DATA_DIR", common::scratch_data_dir())
        .args(["--cores", "1", "--port-file", port_file.to_str().unwrap()])
        .env("PORT", "0")
        .env("RUST_LOG", "off")
        .spawn()
        .unwrap();
    // Up to 30 s: on a loaded CI machine a start can take seconds; an exit ends the wait.
    let mut bound = None;
    let mut exited = None;
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(30) {
        if let Some(a) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.trim().parse::<std::net::SocketAddr>().ok())
        {
            bound = Some(a);
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let reachable =
        bound.is_some_and(|a| std::net::TcpStream::connect(("127.0.0.1", a.port())).is_ok());
    let _ = child.kill();
    let _ = child.wait();
    let bound = bound.unwrap_or_else(|| panic!("no --port-file (exited early: {exited:?})"));
    assert!(bound.ip().is_unspecified(), "{bound}");
    assert_ne!(bound.port(), 8080, "PORT=0 was ignored: {bound}");
    assert_ne!(bound.port(), 0, "{bound}");
    assert!(reachable, "server listens on {bound}");
}

#[test]
fn bad_flags_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_chatixia-core"))
        .env("CHATIXIA_DATA_DIR", common::scratch_data_dir())
        .args(["--io-driver", "kqueue"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown io driver"));
    let out = Command::new(env!("CARGO_BIN_EXE_chatixia-core"))
        .env("CHATIXIA_DATA_DIR", common::scratch_data_dir())
        .args(["--cores", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}
