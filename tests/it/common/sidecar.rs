//! `chatixia-sidecar` processes for tests, against the real server ([`Server`]).
//!
//! A sidecar named `n` authenticates with API key `ak_n` and is peer `peer-n`
//! ([`keys_json`] writes the keys file for a set of names). Every sidecar gets an env
//! with no STUN server (tests must never reach a public one), logs to a file in its
//! scratch directory, and is driven over its IPC socket.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Opts, Server, TempDir};

/// The sidecar's log filter in tests: `info` shows `peer_list`, offers and peer events
/// (what the tests wait on); str0m's own chatter stays out.
const LOG_FILTER: &str = "info,str0m=warn,is=warn,dimpl=warn";

/// Peer id of the sidecar named `name`.
pub fn peer_id(name: &str) -> String {
    format!("peer-{name}")
}

/// An `API_KEYS_FILE` with key `ak_<name>` → peer `peer-<name>` (role agent) for each
/// name.
pub fn keys_json(names: &[&str]) -> String {
    let keys: serde_json::Map<String, Value> = names
        .iter()
        .map(|n| {
            (
                format!("ak_{n}"),
                json!({"peer_id": peer_id(n), "role": "agent"}),
            )
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

/// A server whose keys file knows the sidecars `names`.
pub fn server_for(cores: usize, names: &[&str]) -> Server {
    let mut o = Opts::cores(cores);
    o.keys = Some(keys_json(names));
    Server::with(o)
}

/// A running sidecar with its IPC connection; killed on drop.
pub struct Sidecar {
    pub child: Child,
    pub peer_id: String,
    pub socket: PathBuf,
    log_path: PathBuf,
    writer: UnixStream,
    pub events: Receiver<Value>,
    /// Events read but not yet matched by [`Sidecar::expect`].
    backlog: Vec<Value>,
    _dir: TempDir,
}

/// The env of a test sidecar: `server`'s endpoints, its key, its socket, no STUN.
pub fn sidecar_env(server: &Server, name: &str, socket: &Path) -> Vec<(String, String)> {
    vec![
        ("SIGNALING_URL".into(), format!("ws://{}/ws", server.addr)),
        (
            "TOKEN_URL".into(),
            format!("http://{}/api/token", server.addr),
        ),
        ("API_KEY".into(), format!("ak_{name}")),
        ("IPC_SOCKET".into(), socket.display().to_string()),
        ("STUN_URLS".into(), "none".into()),
        (
            "RUST_LOG".into(),
            std::env::var("SIDECAR_TEST_LOG").unwrap_or_else(|_| LOG_FILTER.into()),
        ),
        ("NO_COLOR".into(), "1".into()),
    ]
}

/// The `chatixia-sidecar` binary of this build. It is another package of the workspace,
/// so Cargo gives these tests no `CARGO_BIN_EXE_` for it: it is built here (once per test
/// process, a no-op when up to date, so a stale binary is never tested) next to the
/// test executable's profile directory.
pub fn sidecar_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("current_exe");
            // target/<profile>/deps/<test> -> target/<profile>
            let profile_dir = exe.parent().and_then(|d| d.parent()).expect("profile dir");
            let release = profile_dir.file_name().is_some_and(|n| n == "release");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args([
                "build",
                "--quiet",
                "-p",
                "chatixia-sidecar",
                "--bin",
                "chatixia-sidecar",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
            if release {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build -p chatixia-sidecar");
            assert!(status.success(), "cargo build -p chatixia-sidecar failed");
            let bin = profile_dir.join("chatixia-sidecar");
            assert!(bin.exists(), "{} was not built", bin.display());
            bin
        })
        .clone()
}

impl Sidecar {
    pub fn start(server: &Server, name: &str) -> Sidecar {
        Sidecar::start_with(server, name, &[])
    }

    /// As [`Sidecar::start`], with `extra` env vars on top of [`sidecar_env`].
    pub fn start_with(server: &Server, name: &str, extra: &[(String, String)]) -> Sidecar {
        let dir = TempDir::new();
        let socket = dir.0.join("sidecar.sock");
        let log_path = dir.0.join("sidecar.log");
        let mut cmd = Command::new(sidecar_binary());
        cmd.env_clear()
            .envs(sidecar_env(server, name, &socket))
            .envs(extra.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).expect("sidecar log"));
        let child = cmd.spawn().expect("spawn chatixia-sidecar");
        // As the agent does: wait up to 5 s for the socket file, then connect once.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "IPC socket did not appear");
            std::thread::sleep(Duration::from_millis(20));
        }
        let stream = UnixStream::connect(&socket).expect("connect IPC");
        let reader = stream.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(reader);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let v: Value =
                            serde_json::from_str(line.trim()).expect("sidecar sent invalid JSON");
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Sidecar {
            child,
            peer_id: peer_id(name),
            socket,
            log_path,
            writer: stream,
            events: rx,
            backlog: Vec::new(),
            _dir: dir,
        }
    }

    /// What the sidecar has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// How many times the log has `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Waits until the log has `needle` at least `n` times.
    pub fn wait_log(&self, needle: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.log_count(needle) < n {
            assert!(
                Instant::now() < deadline,
                "{}: {needle:?} not logged {n} times within {timeout:?}; log:\n{}",
                self.peer_id,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the server's `peer_list` (the sidecar is registered: later sidecars
    /// see it in theirs).
    pub fn wait_registered(&self) {
        self.wait_log("peer_list", 1, Duration::from_secs(10));
    }

    /// A second handle on the IPC connection, for writing from another thread.
    pub fn writer_clone(&self) -> UnixStream {
        self.writer.try_clone().unwrap()
    }

    pub fn send_line(&mut self, line: &str) {
        self.writer.write_all(line.as_bytes()).unwrap();
        self.writer.write_all(b"\n").unwrap();
    }

    pub fn send_json(&mut self, v: Value) {
        self.send_line(&v.to_string());
    }

    /// Waits for an event matching `pred` (earlier non-matching events are kept).
    pub fn expect(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) if pred(&v) => return v,
                Ok(v) => self.backlog.push(v),
                Err(_) => panic!(
                    "{}: timed out waiting for {what}; other events: {:?}\nlog:\n{}",
                    self.peer_id,
                    self.backlog,
                    self.log()
                ),
            }
        }
    }

    /// Asserts that no event matching `pred` arrives within `d`.
    pub fn expect_none(&mut self, what: &str, d: Duration, pred: impl Fn(&Value) -> bool) {
        if let Some(v) = self.backlog.iter().find(|v| pred(v)) {
            panic!("{}: unexpected {what}: {v}", self.peer_id);
        }
        let deadline = Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) if pred(&v) => panic!("{}: unexpected {what}: {v}", self.peer_id),
                Ok(v) => self.backlog.push(v),
                Err(_) => return,
            }
        }
    }

    pub fn expect_connected(&mut self, peer: &str) {
        let p = peer.to_string();
        self.expect(
            &format!("peer_connected {peer}"),
            Duration::from_secs(20),
            move |v| v["type"] == "peer_connected" && v["payload"]["peer_id"] == p.as_str(),
        );
    }

    pub fn expect_disconnected(&mut self, peer: &str, timeout: Duration) {
        let p = peer.to_string();
        self.expect(&format!("peer_disconnected {peer}"), timeout, move |v| {
            v["type"] == "peer_disconnected" && v["payload"]["peer_id"] == p.as_str()
        });
    }

    pub fn list_peers(&mut self) -> Vec<String> {
        self.send_json(json!({"type":"list_peers","payload":{}}));
        let v = self.expect("peer_list", Duration::from_secs(5), |v| {
            v["type"] == "peer_list"
        });
        let mut peers: Vec<String> = v["payload"]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect();
        peers.sort();
        peers
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two sidecars connected to each other (`a` registered first, `b` offers it).
pub fn pair(server: &Server, a: &str, b: &str) -> (Sidecar, Sidecar) {
    let mut sa = Sidecar::start(server, a);
    sa.wait_registered();
    let mut sb = Sidecar::start(server, b);
    sa.expect_connected(&sb.peer_id.clone());
    sb.expect_connected(&sa.peer_id.clone());
    (sa, sb)
}

/// A MeshMessage (PROTOCOL.md §8) with `{"text"}` as payload.
pub fn mesh_message(kind: &str, request_id: &str, text: &str) -> Value {
    json!({"type": kind, "request_id": request_id, "source_agent": "test", "target_agent": "", "payload": {"text": text}})
}
