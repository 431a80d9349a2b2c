//! Two chatixia-sidecar processes connect through a real TURN server, relay only:
//! coturn (Debian's `turnserver`, installed by scripts/test.sh) listens on 127.0.0.1
//! with `use-auth-secret`, each sidecar derives its credentials from `TURN_SECRET`
//! (the TURN REST scheme of PROTOCOL.md §6, with its peer id as the user), allocates, offers only its relay
//! candidate, and the DataChannel runs over Send/Data indications. Nothing leaves
//! loopback.

use crate::common;

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::sidecar::{mesh_message, server_for, Sidecar};
use common::TempDir;
use serde_json::json;

const SECRET: &str = "turn-test-secret";

/// A coturn on 127.0.0.1 with a temp config; killed on drop.
struct Coturn {
    child: Child,
    port: u16,
    dir: TempDir,
}

/// A UDP port that was free a moment ago.
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Coturn {
    fn start() -> Coturn {
        let bin = "turnserver";
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {bin}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "coturn's turnserver is not installed (scripts/test.sh installs it: apt-get install -y coturn)"
        );
        let dir = TempDir::new();
        let port = free_udp_port();
        // Relay ports: a small range next to a free port (coturn skips busy ones).
        let relay = free_udp_port().clamp(20_000, 60_000);
        let d = dir.0.display();
        let conf = format!(
            "listening-ip=127.0.0.1\nrelay-ip=127.0.0.1\nlistening-port={port}\n\
             use-auth-secret\nstatic-auth-secret={SECRET}\nrealm=chatixia\n\
             no-tls\nno-dtls\nno-tcp\nno-tcp-relay\nallow-loopback-peers\nno-cli\nfingerprint\n\
             no-multicast-peers\nmin-port={relay}\nmax-port={}\n\
             log-file={d}/turn.log\nsimple-log\nverbose\nuserdb={d}/turndb\n\
             pidfile={d}/turn.pid\nno-software-attribute\n",
            relay + 32
        );
        let path = dir.0.join("turnserver.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn turnserver");
        let c = Coturn { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        // Listening once its UDP port is taken.
        while UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "turnserver did not start:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("turn.log")).unwrap_or_default()
    }

    /// The sidecar env for this server, relay only.
    fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "TURN_URL".into(),
                format!("turn:127.0.0.1:{}?transport=udp", self.port),
            ),
            ("TURN_SECRET".into(), SECRET.into()),
            ("ICE_TRANSPORT_POLICY".into(), "relay".into()),
        ]
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_sidecars_relay_only_through_coturn() {
    let turn = Coturn::start();
    let server = server_for(1, &["a", "b"]);
    let env = turn.env();
    let mut a = Sidecar::start_with(&server, "a", &env);
    a.wait_log("relay candidate", 1, Duration::from_secs(10));
    a.wait_registered();
    let mut b = Sidecar::start_with(&server, "b", &env);
    b.wait_log("relay candidate", 1, Duration::from_secs(10));
    a.expect_connected("peer-b");
    b.expect_connected("peer-a");

    // Both ways over the relayed DataChannel.
    a.send_json(json!({"type":"send","payload":{"target_peer":"peer-b","message":mesh_message("task_request","r1","over the relay")}}));
    let m = b.expect("message from a", Duration::from_secs(5), |v| {
        v["type"] == "message"
    });
    assert_eq!(m["payload"]["from_peer"], "peer-a");
    assert_eq!(m["payload"]["message"]["payload"]["text"], "over the relay");
    b.send_json(json!({"type":"send","payload":{"target_peer":"peer-a","message":mesh_message("task_response","r1","and back")}}));
    let m = a.expect("message from b", Duration::from_secs(5), |v| {
        v["type"] == "message"
    });
    assert_eq!(m["payload"]["from_peer"], "peer-b");
    assert_eq!(m["payload"]["message"]["payload"]["text"], "and back");
    // A burst, in order, b → a.
    for i in 0..50 {
        b.send_json(json!({"type":"send","payload":{"target_peer":"peer-a","message":mesh_message("task_stream_chunk",&i.to_string(),"x")}}));
    }
    for i in 0..50 {
        let m = a.expect("chunk", Duration::from_secs(10), |v| {
            v["type"] == "message" && v["payload"]["message"]["type"] == "task_stream_chunk"
        });
        assert_eq!(m["payload"]["message"]["request_id"], i.to_string());
    }

    // Only relay candidates were offered and answered (no host, no srflx; an offer
    // made before the allocation finished has none, and trickles the relay one)...
    let (la, lb) = (a.log(), b.log());
    let offers: Vec<&str> = la
        .lines()
        .chain(lb.lines())
        .filter(|l| l.contains("offering") || l.contains("answering"))
        .collect();
    assert!(!offers.is_empty(), "no offer logged:\n{la}\n{lb}");
    for l in &offers {
        let types = l.split("candidates=").nth(1).unwrap_or("").trim();
        assert!(types.is_empty() || types == "relay", "{l}");
        assert!(!l.contains("host") && !l.contains("srflx"), "{l}");
    }
    // ...and coturn saw both allocations, with our REST-scheme user names.
    let log = turn.log();
    let allocations = log
        .lines()
        .filter(|l| l.contains("ALLOCATE processed, success"))
        .count();
    assert!(allocations >= 2, "coturn log:\n{log}");
    // The user names carry each sidecar's peer id (`<expiry>:<peer>`, PROTOCOL.md §6).
    assert!(
        log.contains(":peer-a") && log.contains(":peer-b"),
        "coturn log:\n{log}"
    );
    assert!(
        log.contains("CREATE_PERMISSION processed, success"),
        "coturn log:\n{log}"
    );
}
