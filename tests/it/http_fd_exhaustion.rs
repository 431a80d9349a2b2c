//! Out of file descriptors (issue 13): with the server's fd limit lowered under it,
//! idle keep-alive connections are shed so that new clients are still served, and the
//! failing accepts are logged once per interval, not once each.
use crate::common;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use common::{Opts, Server};

#[test]
fn out_of_fds_sheds_idle_keepalive_connections_and_logs_once_per_interval() {
    let mut o = Opts::cores(1);
    o.args = ["--http-idle-timeout", "120"].map(String::from).to_vec();
    let srv = Server::with(o);
    let pid = srv.child.id();
    let open_now = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    // Room for about 16 more connections.
    let limit = open_now + 16;
    let st = Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .expect("prlimit");
    assert!(st.success());

    // Four times as many keep-alive clients as there are fds left; each sends a
    // request and, once answered, stays connected (idle).
    let mut clients = Vec::new();
    for _ in 0..64 {
        let mut s = srv.stream();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        clients.push(s);
    }
    for (i, s) in clients.iter_mut().enumerate() {
        let r = common::read_response(s, &mut Vec::new());
        assert_eq!(r.status, 200, "client {i}");
    }
    // A newcomer is served as well.
    let mut s = srv.stream();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(common::read_response(&mut s, &mut Vec::new()).status, 200);

    let log = srv.log();
    let lines = log.lines().filter(|l| l.contains("accept failed")).count();
    assert!(lines >= 1, "no accept failure logged: {log}");
    // Once per 10 s interval (the test takes far less than a minute).
    assert!(lines <= 6, "{lines} accept-failure lines:\n{log}");
    assert!(log.contains("failures"), "{log}");
}
