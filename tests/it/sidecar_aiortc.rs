//! Interop with an independent WebRTC stack: chatixia-sidecar against a peer built on
//! `aiortc` (PyPI, in the venv of scripts/setup-python.sh; `tests/fixtures/aiortc_peer.py`),
//! signaling through chatixia-core, both directions of offer. Each side sends a `ping`
//! over the `mesh` DataChannel and the other answers it with a `pong`.
//!
//! No STUN or TURN anywhere: the sidecar gets `STUN_URLS=none`, aiortc
//! `RTCConfiguration(iceServers=[])` and only the loopback address. Without the venv the
//! test fails (setup-python.sh explains what is missing); it never passes silently.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::python::{bounded, repo_root, venv_bin, Proc, AGENT_ENV_REMOVE};
use common::sidecar::{mesh_message, server_for, Sidecar};
use common::Server;
use serde_json::{json, Value};

/// The aiortc peer process and the JSON events it prints.
struct Aiortc {
    proc: Proc,
    events: Receiver<Value>,
    seen: Vec<Value>,
}

impl Aiortc {
    fn start(server: &Server, api_key: &str, offer_to: Option<&str>) -> Aiortc {
        let bin = venv_bin();
        let mut cmd = bounded(&bin.join("python"));
        cmd.arg(repo_root().join("tests/fixtures/aiortc_peer.py"))
            .args(["--server", &format!("http://{}", server.addr)])
            .args(["--api-key", api_key, "--lifetime", "60"]);
        if let Some(p) = offer_to {
            cmd.args(["--offer-to", p]);
        }
        for k in AGENT_ENV_REMOVE {
            cmd.env_remove(k);
        }
        cmd.env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn aiortc_peer.py");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|_| json!({"event": "stdout", "line": line}));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Aiortc {
            proc: Proc {
                name: "aiortc peer",
                child,
                group: false,
                grace: Duration::from_secs(2),
            },
            events: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for an event matching `pred`; fails on the peer's `error` event.
    fn expect(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    assert_ne!(v["event"], "error", "aiortc peer failed: {v}");
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "aiortc peer: no {what} within {timeout:?} (exited: {:?}); events: {:#?}",
                    self.proc.exited(),
                    self.seen
                ),
            }
        }
    }

    fn expect_message(&mut self, kind: &str, request_id: &str) -> Value {
        let (k, r) = (kind.to_string(), request_id.to_string());
        self.expect(
            &format!("{kind} {request_id}"),
            Duration::from_secs(10),
            move |v| {
                v["event"] == "message"
                    && v["message"]["type"] == k.as_str()
                    && v["message"]["request_id"] == r.as_str()
            },
        )
    }
}

/// Once connected: ping from each side, pong from the other, over the DataChannel.
fn exchange(side: &mut Sidecar, py: &mut Aiortc) {
    side.expect_connected("peer-py");
    py.expect("channel_open", Duration::from_secs(10), |v| {
        v["event"] == "channel_open" && v["label"] == "mesh"
    });
    // aiortc → sidecar (its hello ping), and our pong back.
    let m = side.expect("aiortc's ping", Duration::from_secs(10), |v| {
        v["type"] == "message" && v["payload"]["message"]["request_id"] == "aiortc-hello"
    });
    assert_eq!(m["payload"]["from_peer"], "peer-py");
    assert_eq!(m["payload"]["message"]["type"], "ping");
    assert_eq!(
        m["payload"]["message"]["payload"]["text"],
        "hello from aiortc"
    );
    side.send_json(json!({"type":"send","payload":{"target_peer":"peer-py","message":mesh_message("pong","aiortc-hello","hi aiortc")}}));
    let got = py.expect_message("pong", "aiortc-hello");
    assert_eq!(got["message"]["payload"]["text"], "hi aiortc");
    // sidecar → aiortc, and aiortc's pong back.
    side.send_json(json!({"type":"send","payload":{"target_peer":"peer-py","message":mesh_message("ping","rs-1","hello aiortc")}}));
    py.expect_message("ping", "rs-1");
    let m = side.expect("aiortc's pong", Duration::from_secs(10), |v| {
        v["type"] == "message" && v["payload"]["message"]["type"] == "pong"
    });
    assert_eq!(m["payload"]["message"]["request_id"], "rs-1");
    assert_eq!(side.list_peers(), vec!["peer-py"]);
    // Loopback only: the sidecar had no STUN server, aiortc no other address.
    assert!(side.log().contains("no STUN server configured"));
}

#[test]
fn aiortc_offers_sidecar_answers() {
    let server = server_for(1, &["s", "py"]);
    let mut side = Sidecar::start(&server, "s");
    side.wait_registered();
    // aiortc's peer_list holds peer-s; it offers.
    let mut py = Aiortc::start(&server, "ak_py", Some("peer-s"));
    py.expect("answer", Duration::from_secs(20), |v| {
        v["event"] == "received" && v["kind"] == "answer"
    });
    assert!(side.log().contains("answering"), "{}", side.log());
    exchange(&mut side, &mut py);
}

#[test]
fn sidecar_offers_aiortc_answers() {
    let server = server_for(1, &["s", "py"]);
    let mut py = Aiortc::start(&server, "ak_py", None);
    py.expect("peer_list", Duration::from_secs(20), |v| {
        v["event"] == "peer_list"
    });
    // The sidecar's peer_list holds peer-py; it offers.
    let mut side = Sidecar::start(&server, "s");
    py.expect("offer", Duration::from_secs(20), |v| {
        v["event"] == "received" && v["kind"] == "offer" && v["frm"] == "peer-s"
    });
    assert!(side.log().contains("offering"), "{}", side.log());
    exchange(&mut side, &mut py);
}
