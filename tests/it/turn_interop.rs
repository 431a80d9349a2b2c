//! Other TURN clients through the embedded TURN server (issue 24), on 127.0.0.1:
//! * two `chatixia-sidecar`s, relay only, over UDP and then over TCP, open their
//!   DataChannel and carry IPC messages both ways. The server keeps its default peer
//!   policy (no `--turn-allow-peer`): two relayed clients of one server reach each
//!   other through its relay ports, loopback or not;
//! * coturn's `turnutils_uclient` against `turnutils_peer` (Debian package `coturn`,
//!   installed by scripts/test.sh): no loss, with channels and with Send indications,
//!   over UDP, TCP and TLS (OpenSSL's client against our rustls server);
//! * aiortc (PyPI, in the venv of scripts/setup-python.sh) with a relay-only policy,
//!   over UDP, TCP and `turns:` (Python's ssl, the test CA through `SSL_CERT_FILE`).
//!
//! (The sidecars over `turns:` are in tests/turn_tls.rs.)

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::python::{bounded, repo_root, venv_bin, AGENT_ENV_REMOVE};
use common::sidecar::{keys_json, mesh_message, Sidecar};
use common::tls::{KeyKind, Pki};
use common::turn_rig::{self, credentials, metric, SECRET};
use serde_json::{json, Value};

fn require(bin: &str) {
    assert!(
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        "{bin} is not installed (scripts/test.sh installs it: apt-get install -y coturn)"
    );
}

fn sidecars_through_the_embedded_server(transport: &str) {
    let (server, turn) = turn_rig::start(1, Some(keys_json(&["a", "b"])), &["--no-allow"]);
    let env = vec![
        (
            "TURN_URL".to_string(),
            format!("turn:{turn}?transport={transport}"),
        ),
        ("TURN_SECRET".into(), SECRET.into()),
        ("ICE_TRANSPORT_POLICY".into(), "relay".into()),
    ];
    let mut a = Sidecar::start_with(&server, "a", &env);
    a.wait_log("relay candidate", 1, Duration::from_secs(10));
    a.wait_registered();
    let mut b = Sidecar::start_with(&server, "b", &env);
    b.wait_log("relay candidate", 1, Duration::from_secs(10));
    a.expect_connected("peer-b");
    b.expect_connected("peer-a");
    a.send_json(json!({"type":"send","payload":{"target_peer":"peer-b","message":mesh_message("task_request","r1","over the embedded relay")}}));
    let m = b.expect("message from a", Duration::from_secs(5), |v| {
        v["type"] == "message"
    });
    assert_eq!(m["payload"]["from_peer"], "peer-a");
    assert_eq!(
        m["payload"]["message"]["payload"]["text"],
        "over the embedded relay"
    );
    b.send_json(json!({"type":"send","payload":{"target_peer":"peer-a","message":mesh_message("task_response","r1","and back")}}));
    let m = a.expect("message from b", Duration::from_secs(5), |v| {
        v["type"] == "message"
    });
    assert_eq!(m["payload"]["message"]["payload"]["text"], "and back");
    for i in 0..50 {
        b.send_json(json!({"type":"send","payload":{"target_peer":"peer-a","message":mesh_message("task_stream_chunk",&i.to_string(),"x")}}));
    }
    for i in 0..50 {
        let m = a.expect("chunk", Duration::from_secs(10), |v| {
            v["type"] == "message" && v["payload"]["message"]["type"] == "task_stream_chunk"
        });
        assert_eq!(m["payload"]["message"]["request_id"], i.to_string());
    }
    // Only relayed candidates were offered, and the server relayed the channel.
    for l in a.log().lines().chain(b.log().lines()) {
        if l.contains("offering") || l.contains("answering") {
            let types = l.split("candidates=").nth(1).unwrap_or("").trim();
            assert!(types.is_empty() || types == "relay", "{l}");
        }
    }
    assert_eq!(metric(&server, "chatixia_turn_allocations", ""), 2);
    // (DTLS, SCTP and its acknowledgements: the 52 messages travel in fewer packets.)
    assert!(metric(&server, "chatixia_turn_relayed_packets_total", "to_peer") > 10);
    assert!(metric(&server, "chatixia_turn_relayed_packets_total", "to_client") > 10);
    if transport == "tcp" {
        assert_eq!(metric(&server, "chatixia_turn_tcp_connections", ""), 2);
        assert_eq!(metric(&server, "chatixia_turn_tls_connections", ""), 0);
    }
}

#[test]
fn two_sidecars_relay_only_over_udp() {
    sidecars_through_the_embedded_server("udp");
}

#[test]
fn two_sidecars_relay_only_over_tcp() {
    sidecars_through_the_embedded_server("tcp");
}

/// `turnutils_peer` on a free port, killed on drop.
struct Peer(std::process::Child, u16);

impl Peer {
    fn start() -> Peer {
        require("turnutils_peer");
        let port = turn_rig::free_port();
        let child = Command::new("turnutils_peer")
            .args(["-p", &port.to_string(), "-L", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn turnutils_peer");
        std::thread::sleep(Duration::from_millis(200));
        Peer(child, port)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `turnutils_uclient` with `flags`; returns (messages sent, received, lost).
fn uclient(turn: std::net::SocketAddr, peer: u16, flags: &[&str]) -> (u64, u64, u64, String) {
    require("turnutils_uclient");
    let mut cmd = Command::new("timeout");
    cmd.args(["30", "turnutils_uclient"])
        .args(flags)
        // -c: no RTCP allocations; -n 50 messages of -l 120 bytes, -m 2 clients.
        .args(["-c", "-n", "50", "-l", "120", "-m", "2", "-z", "5"])
        .args([
            "-p",
            &turn.port().to_string(),
            "-e",
            "127.0.0.1",
            "-r",
            &peer.to_string(),
        ])
        .args(["-W", SECRET, "-u", "uclient", "127.0.0.1"]);
    let out = cmd.output().expect("run turnutils_uclient");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let num = |key: &str| -> u64 {
        text.lines()
            .rev()
            .find_map(|l| {
                let rest = &l[l.find(key)? + key.len()..];
                rest.trim_start_matches([' ', '=', '~'])
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(u64::MAX)
    };
    (
        num("tot_send_msgs"),
        num("tot_recv_msgs"),
        num("Total lost packets"),
        text,
    )
}

#[test]
fn coturn_uclient_relays_without_loss_with_and_without_channels() {
    let (server, turn) = turn_rig::start(1, None, &[]);
    let peer = Peer::start();
    for flags in [&[][..], &["-s"], &["-t"], &["-t", "-s"]] {
        let (sent, received, lost, text) = uclient(turn, peer.1, flags);
        assert!(
            sent > 0 && sent != u64::MAX,
            "{flags:?}: no messages sent:\n{text}"
        );
        assert_eq!(
            sent, received,
            "{flags:?}: every message came back:\n{text}"
        );
        assert_eq!(lost, 0, "{flags:?}:\n{text}");
    }
    assert!(metric(&server, "chatixia_turn_allocations_created_total", "") >= 8);
    assert!(metric(&server, "chatixia_turn_relayed_packets_total", "to_peer") >= 400);
}

/// A server with TURN over TLS on a free port, with a certificate from a throwaway CA.
fn start_with_tls(pki: &Pki, extra: &[&str]) -> (common::Server, std::net::SocketAddr) {
    let files = pki.issue("turns", KeyKind::Ecdsa);
    let turns = std::net::SocketAddr::from(([127, 0, 0, 1], turn_rig::free_port()));
    let mut args = common::tls::tls_args(&files);
    args.extend([
        "--tls-listen".into(),
        "127.0.0.1:0".into(),
        "--turn-tls-listen".into(),
        turns.to_string(),
    ]);
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (server, _) = turn_rig::start(1, None, &args);
    (server, turns)
}

#[test]
fn coturn_uclient_relays_over_tls_without_loss() {
    let pki = Pki::new();
    let (server, turns) = start_with_tls(&pki, &[]);
    let peer = Peer::start();
    // -S: TLS (turnutils_uclient does not check the certificate).
    for flags in [&["-t", "-S"][..], &["-t", "-S", "-s"]] {
        let mut run = uclient(turns, peer.1, flags);
        for _ in 0..2 {
            if run.0 == run.1 || run.0 == u64::MAX {
                break;
            }
            // uclient stops counting a fixed time after its last send: on a test machine
            // whose two cores are saturated, the last echoes can come after that (seen in
            // full-suite runs: 99, 98 and 96 of 100 in runs one after the other; the same
            // test passes alone, and under two busy loops). Up to two more runs, the last
            // of which must lose nothing.
            eprintln!("{flags:?}: {} of {} came back; once more", run.1, run.0);
            run = uclient(turns, peer.1, flags);
        }
        let (sent, received, lost, text) = run;
        assert!(
            sent > 0 && sent != u64::MAX,
            "{flags:?}: no messages sent:\n{text}"
        );
        assert_eq!(
            sent, received,
            "{flags:?}: every message came back:\n{text}"
        );
        assert_eq!(lost, 0, "{flags:?}:\n{text}");
    }
    assert!(metric(&server, "chatixia_turn_allocations_created_total", "") >= 4);
    assert!(metric(&server, "chatixia_tls_handshakes_total", "") >= 4);
}

#[test]
fn aiortc_relay_only_over_tls() {
    let pki = Pki::new();
    let (server, turns) = start_with_tls(&pki, &["--no-allow"]);
    let (user, pass) = credentials("aiortc", 3600);
    let url = format!("turns:localhost:{}?transport=tcp", turns.port());
    let v = aiortc(&url, &user, &pass, &[("SSL_CERT_FILE", &pki.ca_pem)]);
    assert_eq!(v["ok"], true, "{v}");
    let types = v["candidates"].as_array().unwrap();
    assert!(
        !types.is_empty() && types.iter().all(|t| t == "relay"),
        "{v}"
    );
    assert_eq!(
        metric(&server, "chatixia_turn_allocations_created_total", ""),
        2
    );
    assert!(metric(&server, "chatixia_tls_handshakes_total", "") >= 2);
}

/// Runs tests/fixtures/aiortc_turn.py through `url`; its JSON result.
fn aiortc(url: &str, user: &str, pass: &str, env: &[(&str, &std::path::Path)]) -> Value {
    let mut cmd = bounded(&venv_bin().join("python"));
    cmd.arg(repo_root().join("tests/fixtures/aiortc_turn.py"))
        .args(["--url", url])
        .args(["--username", user, "--credential", pass]);
    for k in AGENT_ENV_REMOVE {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let out = cmd
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run aiortc_turn.py (the venv of scripts/setup-python.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap_or_else(|_| {
        panic!(
            "{url}: no result:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn aiortc_relay_only_through_the_embedded_server() {
    let (server, turn) = turn_rig::start(1, None, &["--no-allow"]);
    let (user, pass) = credentials("aiortc", 3600);
    for transport in ["udp", "tcp"] {
        let mut cmd = bounded(&venv_bin().join("python"));
        cmd.arg(repo_root().join("tests/fixtures/aiortc_turn.py"))
            .args(["--url", &format!("turn:{turn}?transport={transport}")])
            .args(["--username", &user, "--credential", &pass]);
        for k in AGENT_ENV_REMOVE {
            cmd.env_remove(k);
        }
        let out = cmd
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .output()
            .expect("run aiortc_turn.py (the venv of scripts/setup-python.sh)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: Value =
            serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap_or_else(|_| {
                panic!(
                    "{transport}: no result:\n{stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        assert_eq!(v["ok"], true, "{transport}: {v}");
        let types = v["candidates"].as_array().unwrap();
        assert!(
            !types.is_empty() && types.iter().all(|t| t == "relay"),
            "{transport}: {v}"
        );
    }
    assert!(metric(&server, "chatixia_turn_allocations_created_total", "") >= 4);
}
