//! Where io_uring is refused (here by a real seccomp filter, as in a locked-down
//! container), `--io-driver auto` falls back to epoll, logs it, and serves; `uring`
//! fails with a clear error.
use crate::common;

use std::process::{Command, Stdio};

use common::Server;

#[test]
fn auto_falls_back_to_epoll_when_io_uring_is_refused() {
    let mut srv = Server::start_env(2, "auto", &[], &[("CHATIXIA_DENY_IO_URING", "1")]);
    let m = srv.get("/metrics").text();
    assert!(
        m.contains("chatixia_io_driver{shard=\"0\",driver=\"epoll\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("chatixia_io_driver{shard=\"1\",driver=\"epoll\"} 1"),
        "{m}"
    );
    assert_eq!(srv.get("/healthz").status, 200);
    let (status, _) = srv.terminate(std::time::Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    let log = srv.log();
    assert!(
        log.contains("io_uring unavailable, falling back to the epoll driver"),
        "{log}"
    );
}

#[test]
fn auto_uses_io_uring_when_available() {
    let srv = Server::start_driver(1, "auto", &[]);
    let m = srv.get("/metrics").text();
    assert!(
        m.contains("chatixia_io_driver{shard=\"0\",driver=\"io_uring\"} 1"),
        "{m}"
    );
}

#[test]
fn forcing_uring_where_refused_is_a_clear_error() {
    common::needs_test_switches("CHATIXIA_DENY_IO_URING");
    let out = Command::new(env!("CARGO_BIN_EXE_chatixia-core"))
        .env("CHATIXIA_DATA_DIR", common::scratch_data_dir())
        .args([
            "--cores",
            "1",
            "--io-driver",
            "uring",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("CHATIXIA_DENY_IO_URING", "1")
        .env("RUST_LOG", "off")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("io_uring requested but unavailable"), "{err}");
}
