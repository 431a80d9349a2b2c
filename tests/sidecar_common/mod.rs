//! Test harness for `chatixia-sidecar`.
//!
//! [`Relay`] is a STAND-IN for chatixia-core's signaling endpoints (`POST /api/token`
//! and `GET /ws`, PROTOCOL.md §7) until chatixia-core's `/ws` lands: a std TCP server
//! that hands out JWT-looking tokens, upgrades to WebSocket (tungstenite, server side),
//! answers `register` with a `peer_list` and relays `offer`/`answer`/`ice_candidate`
//! by `target_id`. It is deliberately minimal and not a model of the real server.
//!
//! [`Sidecar`] spawns the real binary with an env that configures no STUN server (tests
//! must never reach a public one) and talks to it over its IPC socket.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

type Peers = Arc<Mutex<HashMap<String, Sender<String>>>>;

/// The stand-in signaling server.
pub struct Relay {
    pub addr: SocketAddr,
    peers: Peers,
    /// Every frame the relay received, as JSON.
    pub seen: Arc<Mutex<Vec<Value>>>,
    /// Set to close every WebSocket (tests of reconnection).
    drop_all: Arc<Mutex<u64>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    pub fn start() -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peers: Peers = Arc::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let drop_all = Arc::new(Mutex::new(0u64));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s, d, st) = (peers.clone(), seen.clone(), drop_all.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (p, s, d) = (p.clone(), s.clone(), d.clone());
                std::thread::spawn(move || {
                    let _ = handle_conn(conn, p, s, d);
                });
            }
        });
        Relay {
            addr,
            peers,
            seen,
            drop_all,
            stop,
        }
    }

    /// Closes every WebSocket connection now.
    pub fn drop_connections(&self) {
        *self.drop_all.lock().unwrap() += 1;
    }

    pub fn connected(&self) -> Vec<String> {
        let mut v: Vec<String> = self.peers.lock().unwrap().keys().cloned().collect();
        v.sort();
        v
    }

    pub fn count(&self, kind: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["type"] == kind)
            .count()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn read_head(conn: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut b)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn handle_conn(
    mut conn: TcpStream,
    peers: Peers,
    seen: Arc<Mutex<Vec<Value>>>,
    drop_all: Arc<Mutex<u64>>,
) -> std::io::Result<()> {
    let head = read_head(&mut conn)?;
    let first = head.lines().next().unwrap_or("").to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    if first.starts_with("POST /api/token") {
        let key = header("x-api-key").unwrap_or_default();
        let peer_id = format!("peer-{key}");
        let body = json!({"token": format!("eyJhbGciOiJIUzI1NiJ9.{peer_id}.c2ln"), "peer_id": peer_id, "role": "agent"}).to_string();
        write!(conn, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())?;
        return Ok(());
    }
    if !first.starts_with("GET /ws?token=") {
        conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")?;
        return Ok(());
    }
    let token = first["GET /ws?token=".len()..]
        .split(' ')
        .next()
        .unwrap_or("");
    let me = token.split('.').nth(1).unwrap_or("").to_string();
    let key = header("sec-websocket-key").unwrap_or_default();
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    write!(conn, "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n")?;
    conn.set_read_timeout(Some(Duration::from_millis(10)))?;
    let mut ws = WebSocket::from_raw_socket(conn, Role::Server, None);
    let (tx, rx) = mpsc::channel::<String>();
    peers.lock().unwrap().insert(me.clone(), tx);
    let generation = *drop_all.lock().unwrap();
    let result = (|| -> Result<(), tungstenite::Error> {
        loop {
            if *drop_all.lock().unwrap() != generation {
                return Ok(());
            }
            while let Ok(out) = rx.try_recv() {
                ws.send(Message::text(out))?;
            }
            match ws.read() {
                Ok(Message::Text(t)) => {
                    let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                        continue;
                    };
                    seen.lock().unwrap().push(v.clone());
                    if v["peer_id"] != me.as_str() {
                        continue;
                    }
                    match v["type"].as_str().unwrap_or("") {
                        "register" => {
                            let others: Vec<String> = peers
                                .lock()
                                .unwrap()
                                .keys()
                                .filter(|k| **k != me)
                                .cloned()
                                .collect();
                            let reply = json!({"type":"peer_list","peer_id":"registry","payload":{"peers":others}});
                            ws.send(Message::text(reply.to_string()))?;
                        }
                        "offer" | "answer" | "ice_candidate" => {
                            let target = v["target_id"].as_str().unwrap_or("").to_string();
                            if let Some(t) = peers.lock().unwrap().get(&target) {
                                let _ = t.send(v.to_string());
                            }
                        }
                        _ => {}
                    }
                }
                Ok(Message::Close(_)) => return Ok(()),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    })();
    let mut p = peers.lock().unwrap();
    // Only remove our own entry (a reconnect may have replaced it).
    if p.get(&me).is_some_and(|_| true) {
        p.remove(&me);
    }
    drop(p);
    let _ = ws.close(None);
    let _ = ws.flush();
    let _ = result;
    Ok(())
}

/// A running sidecar with its IPC connection; killed on drop.
pub struct Sidecar {
    pub child: Child,
    pub peer_id: String,
    pub socket: PathBuf,
    writer: UnixStream,
    pub events: Receiver<Value>,
    /// Events read but not yet matched by [`Sidecar::expect`].
    backlog: Vec<Value>,
    _dir: TempDir,
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "sidecar-test-{tag}-{}-{}",
            std::process::id(),
            rand_u64()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).unwrap();
    u64::from_le_bytes(b)
}

/// The env every test sidecar gets: the relay, no STUN server (never a public one).
pub fn sidecar_env(relay: &Relay, key: &str, socket: &std::path::Path) -> Vec<(String, String)> {
    vec![
        ("SIGNALING_URL".into(), format!("ws://{}/ws", relay.addr)),
        (
            "TOKEN_URL".into(),
            format!("http://{}/api/token", relay.addr),
        ),
        ("API_KEY".into(), key.into()),
        ("IPC_SOCKET".into(), socket.display().to_string()),
        ("STUN_URLS".into(), "none".into()),
        (
            "RUST_LOG".into(),
            std::env::var("SIDECAR_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        ),
    ]
}

impl Sidecar {
    pub fn start(relay: &Relay, key: &str) -> Sidecar {
        Self::start_with(relay, key, &[])
    }

    pub fn start_with(relay: &Relay, key: &str, extra: &[(&str, &str)]) -> Sidecar {
        let dir = TempDir::new(key);
        let socket = dir.0.join("sidecar.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatixia-sidecar"));
        cmd.env_clear()
            .envs(sidecar_env(relay, key, &socket))
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
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
            peer_id: format!("peer-{key}"),
            socket,
            writer: stream,
            events: rx,
            backlog: Vec::new(),
            _dir: dir,
        }
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
                    "{}: timed out waiting for {what}; other events: {:?}",
                    self.peer_id, self.backlog
                ),
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

pub fn mesh_message(kind: &str, request_id: &str, text: &str) -> Value {
    json!({"type": kind, "request_id": request_id, "source_agent": "test", "target_agent": "", "payload": {"text": text}})
}
