//! Black-box harness: start the real binary on 127.0.0.1, talk HTTP/1.1 to it over
//! std TcpStreams, kill it on drop.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use serde_json::{json, Value};
use wire::http::client::ResponseParser;

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

/// A fresh, empty data directory for a server a test starts by hand (chatixia-core keeps
/// durable state in `--data-dir`, default `./chatixia-data`: tests must not share one).
pub fn scratch_data_dir() -> PathBuf {
    TempDir::new().0.join("data")
}

impl TempDir {
    pub fn new() -> TempDir {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("chatixia-test-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const KEYS_JSON: &str = r#"{"keys": {
    "ak_test_admin": {"peer_id": "admin-1", "role": "admin"},
    "ak_test_agent": {"peer_id": "agent-x", "role": "agent"}
}}"#;

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub cores: usize,
    /// The server's stderr (a pipe nobody drains could fill up and block its logging).
    pub log_path: PathBuf,
    opts: Opts,
    _dir: TempDir,
}

/// Both io drivers: the suite runs its transport tests on each.
pub const DRIVERS: [&str; 2] = ["uring", "epoll"];

/// Options of one server.
#[derive(Clone)]
pub struct Opts {
    pub cores: usize,
    /// `--listen`; port 0 picks a free one (the bound address is in [`Server::addr`]).
    pub listen: SocketAddr,
    /// Contents of API_KEYS_FILE; `None`: point it at a missing file.
    pub keys: Option<String>,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
}

impl Opts {
    pub fn cores(cores: usize) -> Opts {
        Opts {
            cores,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            keys: Some(KEYS_JSON.to_owned()),
            env: Vec::new(),
            args: Vec::new(),
        }
    }
}

impl Server {
    pub fn start(cores: usize) -> Server {
        Server::with(Opts::cores(cores))
    }

    /// A server on `driver` (`uring`, `epoll`, `auto`) with extra arguments.
    pub fn start_driver(cores: usize, driver: &str, extra: &[&str]) -> Server {
        Server::start_env(cores, driver, extra, &[])
    }

    pub fn start_env(cores: usize, driver: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut o = Opts::cores(cores);
        o.args = ["--io-driver", driver]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect();
        o.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Server::with(o)
    }

    /// A raw socket to the server (10 s read timeout, no Nagle).
    pub fn stream(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (bounded) for the exit; returns the status and how long
    /// the exit took.
    pub fn terminate(&mut self, bound: Duration) -> (std::process::ExitStatus, Duration) {
        let t = Instant::now();
        // SIGTERM via kill(1) keeps `unsafe` out of the tests.
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st, t.elapsed());
            }
            assert!(
                t.elapsed() < bound,
                "server did not exit within {bound:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the server with SIGTERM (it closes WebSockets with 1001) and starts a new
    /// one with the same options on the same address.
    pub fn restart(&mut self) {
        let (st, _) = self.terminate(Duration::from_secs(10));
        assert!(st.success(), "server exited with {st}: {}", self.log());
        let mut opts = self.opts.clone();
        opts.listen = self.addr;
        *self = Server::with(opts);
    }

    pub fn with(opts: Opts) -> Server {
        if opts.args.iter().any(|a| a == "--ws-echo")
            || opts.env.iter().any(|(k, _)| k == "CHATIXIA_DENY_IO_URING")
        {
            needs_test_switches("--ws-echo or CHATIXIA_DENY_IO_URING");
        }
        let dir = TempDir::new();
        let port_file = dir.0.join("addr");
        let keys_file = dir.0.join("api_keys.json");
        if let Some(k) = &opts.keys {
            std::fs::write(&keys_file, k).unwrap();
        }
        let log_path = dir.0.join("server.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatixia-core"));
        cmd.arg("--listen")
            .arg(opts.listen.to_string())
            .arg("--cores")
            .arg(opts.cores.to_string())
            .arg("--port-file")
            .arg(&port_file)
            .args(["--stun-url", "none"])
            .args(if TEST_SWITCHES {
                &["--test-clock"][..]
            } else {
                &[]
            })
            .args(&opts.args)
            .env("API_KEYS_FILE", &keys_file)
            .env_remove("SIGNALING_SECRET")
            .env_remove("TURN_URL")
            .env_remove("TURN_SECRET")
            .env("RUST_LOG", "warn")
            .current_dir(&dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).expect("log file"));
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn chatixia-core");
        let mut server = Server {
            child,
            addr: "127.0.0.1:1".parse().unwrap(),
            cores: opts.cores,
            log_path,
            opts,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = std::fs::read_to_string(&port_file) {
                if let Ok(a) = s.trim().parse() {
                    server.addr = a;
                    break;
                }
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("server exited early: {status}: {}", server.log());
            }
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        // A TLS-only server (--tls-cert without --tls-listen) answers plain HTTP with a
        // 400: its tests reach it over TLS (`common::tls`), once its port file is written.
        let tls_only = server.opts.args.iter().any(|a| a == "--tls-cert")
            && !server.opts.args.iter().any(|a| a == "--tls-listen");
        if !tls_only {
            loop {
                if let Ok(mut c) = server.try_connect() {
                    if let Ok(r) = c.try_request("GET", "/healthz", &[], None) {
                        if r.status == 200 {
                            break;
                        }
                    }
                }
                assert!(Instant::now() < deadline, "server not ready");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        server
    }

    fn try_connect(&self) -> std::io::Result<Conn> {
        let s = TcpStream::connect(self.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            stream: s,
            parser: ResponseParser::new(),
        })
    }

    pub fn conn(&self) -> Conn {
        self.try_connect().expect("connect")
    }

    /// A keep-alive connection from source address `ip` (any of 127.0.0.0/8 on Linux).
    pub fn conn_from(&self, ip: std::net::Ipv4Addr) -> Conn {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&SocketAddr::from((ip, 0)).into())
            .expect("bind source");
        sock.connect(&self.addr.into()).expect("connect");
        let s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            stream: s,
            parser: ResponseParser::new(),
        }
    }

    /// One request on a fresh connection.
    pub fn req(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        self.conn().request(method, path, headers, body)
    }

    pub fn get(&self, path: &str) -> Resp {
        self.req("GET", path, &[], None)
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Resp {
        self.conn().post_json(path, body)
    }

    /// A fresh JWT from `POST /api/token` with API key `key`.
    pub fn token(&self, key: &str) -> String {
        let r = self.req("POST", "/api/token", &[("X-API-Key", key)], None);
        assert_eq!(r.status, 200, "token for {key}: {}", r.text());
        r.json()["token"].as_str().expect("token").to_owned()
    }

    /// `Bearer <token>`: an `Authorization` value with a fresh JWT for API key `key`.
    pub fn bearer(&self, key: &str) -> String {
        format!("Bearer {}", self.token(key))
    }

    /// A fresh admin JWT (API key `ak_test_admin` of [`KEYS_JSON`], role admin).
    pub fn admin_token(&self) -> String {
        self.token("ak_test_admin")
    }

    /// One request to an operator route with a fresh admin token (issue 10).
    pub fn admin_req(&self, method: &str, path: &str) -> Resp {
        let auth = format!("Bearer {}", self.admin_token());
        self.req(method, path, &[("Authorization", &auth)], None)
    }

    /// `GET` an operator route with a fresh admin token.
    pub fn admin_get(&self, path: &str) -> Resp {
        self.admin_req("GET", path)
    }

    /// Moves the server clock forward and runs every shard's periodic jobs.
    pub fn advance(&self, secs: f64) {
        needs_test_switches("POST /debug/clock (--test-clock)");
        let r = self.post_json("/debug/clock", &json!({ "advance_secs": secs }));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["status"], "ok");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One keep-alive connection.
pub struct Conn {
    stream: TcpStream,
    /// The shared HTTP/1.1 response reader (`wire::http::client`).
    parser: ResponseParser,
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    /// Asserts the status and a JSON `{"error": …}` body; returns the message.
    pub fn error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "body: {}", self.text());
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error string: {}", self.text()))
            .to_owned()
    }
}

impl Conn {
    /// The socket, for raw writes and reads between requests (when the connection's own
    /// reader holds nothing of a response).
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    pub fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> std::io::Result<Resp> {
        let mut out = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for (k, v) in headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            out.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if let Some(b) = body {
            bytes.extend_from_slice(b);
        }
        self.stream.write_all(&bytes)?;
        self.read_response(method == "HEAD")
    }

    fn read_response(&mut self, head: bool) -> std::io::Result<Resp> {
        read_with(&mut self.stream, &mut self.parser, head)
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Writes raw bytes and reads one response.
    pub fn raw(&mut self, bytes: &[u8]) -> Resp {
        self.stream.write_all(bytes).expect("write");
        self.read_response(false).expect("response")
    }

    pub fn get(&mut self, path: &str) -> Resp {
        self.request("GET", path, &[], None)
    }

    pub fn post_json(&mut self, path: &str, body: &Value) -> Resp {
        let b = serde_json::to_vec(body).unwrap();
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(&b),
        )
    }
}

/// Runs `f` against a fresh server with 1 and with 2 shards.
pub fn both(f: impl Fn(&Server)) {
    for cores in [1, 2] {
        let s = Server::start(cores);
        f(&s);
    }
}

/// A loopback port that refuses connections for as long as the returned socket lives:
/// bound but not listening, so no other program can take the port meanwhile (a port
/// merely found free could be taken before it is used).
pub fn refusing_port() -> (socket2::Socket, u16) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    s.bind(&any.into()).unwrap();
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    (s, port)
}

/// Reads one response with the shared reader (`wire::http::client::ResponseParser`),
/// reading from `s` as needed; bytes past it stay in the parser.
pub fn read_with(
    s: &mut impl Read,
    parser: &mut ResponseParser,
    head: bool,
) -> std::io::Result<Resp> {
    loop {
        let polled = if head {
            parser.poll_head()
        } else {
            parser.poll()
        };
        match polled.map_err(std::io::Error::other)? {
            Some(r) => {
                return Ok(Resp {
                    status: r.status,
                    headers: r.headers,
                    body: r.body,
                })
            }
            None => {
                let mut tmp = [0u8; 8192];
                let n = s.read(&mut tmp)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                parser.feed(&tmp[..n]);
            }
        }
    }
}

/// Reads one content-length-framed response from a raw stream, keeping leftover bytes
/// in `buf` (for pipelining tests).
pub fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Resp {
    let mut parser = ResponseParser::new();
    parser.feed(buf);
    let resp = read_with(s, &mut parser, false).unwrap_or_else(|e| {
        panic!(
            "no response ({e}); have {:?}",
            String::from_utf8_lossy(&parser.take_rest())
        )
    });
    *buf = parser.take_rest();
    resp
}

pub fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Writes a raw request on a fresh connection and reads one response.
pub fn request(server: &Server, raw: &str) -> Resp {
    let mut s = server.stream();
    s.write_all(raw.as_bytes()).unwrap();
    read_response(&mut s, &mut Vec::new())
}

/// True once the peer has closed the connection (EOF or reset).
pub fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

pub mod bench;
pub mod proxy;
pub mod python;
pub mod redis;
pub mod sidecar;
pub mod tls;
pub mod turn_rig;

/// The ids of the tasks a heartbeat's answer hands out (`pending_tasks`).
pub fn claimed_ids(r: &Resp) -> Vec<String> {
    let v = r.json();
    assert_eq!(v["status"], "ok");
    v["pending_tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}
pub mod ws;

/// A pending pairing entry, made as a device would (invite code from an API key).
pub fn pending_entry(s: &Server, name: &str) -> String {
    let r = s.req(
        "POST",
        "/api/pairing/generate-code",
        &[("X-API-Key", "ak_test_agent")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let code = r.json()["code"].as_str().unwrap().to_owned();
    let r = s.post_json(
        "/api/pairing/pair",
        &serde_json::json!({"code": code, "agent_name": name}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

/// Whether the server under test was built with the `test-switches` feature
/// (`--test-clock`, `--ws-echo`, `CHATIXIA_DENY_IO_URING`); a default build lacks them.
pub const TEST_SWITCHES: bool = cfg!(feature = "test-switches");

/// A test whose prerequisite is missing here (`why`): under `CI=true` that fails the run
/// (a skip must never count as a pass there); elsewhere it prints `SKIPPED` and the
/// caller returns.
pub fn skip(why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "a prerequisite is missing under CI=true: {why}"
    );
    eprintln!("SKIPPED: {why}");
}

/// Fails the test (never skips it) when the server lacks the test switches it needs.
pub fn needs_test_switches(what: &str) {
    if !TEST_SWITCHES {
        panic!(
            "this test needs {what}, which exists only in a build with the `test-switches` \
             feature: run scripts/test.sh, or cargo test --features test-switches"
        );
    }
}
