//! The embedded TURN server under test: a chatixia-core with `--turn-listen` on a free
//! loopback port, and a small blocking TURN client (UDP, TCP, or TLS over TCP) built on
//! the `turn` crate's codec, for asserting every answer.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use turn::auth::{long_term_key, rest_credentials};
use turn::framing::{self, StreamFramer};
use turn::stun::{self, attr, method, Builder, Class, Message};

use super::{Opts, Server};

/// The shared secret of the tests' TURN servers.
pub const SECRET: &str = "turn-test-secret";
pub const REALM: &str = "chatixia";

/// A port free for both UDP and TCP on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

static RELAY_BASE: AtomicU16 = AtomicU16::new(0);

/// A relay port range of 200 ports, different for each server of this test process
/// (ports another program holds are skipped by the server).
pub fn relay_range() -> String {
    let salt = (std::process::id() % 97) as u16;
    let n = RELAY_BASE.fetch_add(1, Ordering::Relaxed);
    let lo = 30_000 + ((salt * 211 + n * 409) % 25_000);
    format!("{lo}-{}", lo + 199)
}

/// A server with the embedded TURN server on 127.0.0.1 (loopback peers allowed unless
/// `extra` says otherwise). Returns it with its TURN address.
pub fn start(cores: usize, keys: Option<String>, extra: &[&str]) -> (Server, SocketAddr) {
    let port = free_port();
    let turn = SocketAddr::from(([127, 0, 0, 1], port));
    let mut o = Opts::cores(cores);
    o.keys = keys.or(o.keys);
    o.env.push(("TURN_SECRET".into(), SECRET.into()));
    o.args = vec![
        "--turn-listen".into(),
        turn.to_string(),
        "--turn-relay-ports".into(),
        relay_range(),
    ];
    if !extra
        .iter()
        .any(|a| a.starts_with("--turn-allow-peer") || *a == "--no-allow")
    {
        o.args.push("--turn-allow-peer".into());
        o.args.push("127.0.0.0/8".into());
    }
    o.args.extend(
        extra
            .iter()
            .filter(|a| **a != "--no-allow")
            .map(|a| a.to_string()),
    );
    (Server::with(o), turn)
}

/// Credentials for `peer`, valid `ttl` seconds from now (negative: expired).
pub fn credentials(peer: &str, ttl: i64) -> (String, String) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    rest_credentials(SECRET.as_bytes(), (now + ttl) as u64, peer)
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream, StreamFramer),
    Tls(Box<TlsStream>, StreamFramer),
}

/// A TLS client configuration for TURN over TLS: `roots`, ALPN `stun.turn` (RFC 7443).
pub fn tls_config(roots: rustls::RootCertStore) -> std::sync::Arc<rustls::ClientConfig> {
    let base =
        super::tls::client_config(roots, &[&rustls::version::TLS13, &rustls::version::TLS12]);
    let mut c = (*base).clone();
    c.alpn_protocols = vec![b"stun.turn".to_vec()];
    std::sync::Arc::new(c)
}

/// A blocking TURN client with long-term credentials.
pub struct Client {
    conn: Conn,
    pub username: String,
    pub password: String,
    pub nonce: Option<Vec<u8>>,
    seq: u32,
    /// Messages that arrived while waiting for a response (Data indications,
    /// ChannelData).
    pub stash: Vec<Vec<u8>>,
}

/// A response: class, error code, and the message bytes.
#[derive(Debug)]
pub struct Answer {
    pub class: Class,
    pub code: Option<u16>,
    pub bytes: Vec<u8>,
}

impl Answer {
    pub fn msg(&self) -> stun::Msg<'_> {
        stun::parse(&self.bytes).unwrap()
    }
    pub fn ok(&self) -> bool {
        self.class == Class::Success
    }
}

impl Client {
    pub fn udp(server: SocketAddr, username: &str, password: &str) -> Client {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.connect(server).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        Client::with(Conn::Udp(s), username, password)
    }

    pub fn tcp(server: SocketAddr, username: &str, password: &str) -> Client {
        let s = TcpStream::connect(server).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        Client::with(Conn::Tcp(s, StreamFramer::new()), username, password)
    }

    /// TURN over TLS to `server`, checked against `cfg`'s roots for the name `sni`;
    /// panics when the handshake fails.
    pub fn tls(
        server: SocketAddr,
        cfg: &std::sync::Arc<rustls::ClientConfig>,
        sni: &str,
        username: &str,
        password: &str,
    ) -> Client {
        let s = Self::try_tls(server, cfg, sni).unwrap_or_else(|e| panic!("TLS to {server}: {e}"));
        Client::with(
            Conn::Tls(Box::new(s), StreamFramer::new()),
            username,
            password,
        )
    }

    /// The TLS handshake alone: the stream, or why it failed.
    pub fn try_tls(
        server: SocketAddr,
        cfg: &std::sync::Arc<rustls::ClientConfig>,
        sni: &str,
    ) -> std::io::Result<TlsStream> {
        let tcp = TcpStream::connect(server)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let conn =
            rustls::ClientConnection::new(cfg.clone(), name).map_err(std::io::Error::other)?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        s.sock.set_read_timeout(Some(Duration::from_millis(300)))?;
        Ok(s)
    }

    /// The TLS connection of a TLS client (for its certificate, its ALPN).
    pub fn tls_conn(&self) -> Option<&rustls::ClientConnection> {
        match &self.conn {
            Conn::Tls(s, _) => Some(&s.conn),
            _ => None,
        }
    }

    fn with(conn: Conn, username: &str, password: &str) -> Client {
        Client {
            conn,
            username: username.into(),
            password: password.into(),
            nonce: None,
            seq: 0,
            stash: Vec::new(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        match &self.conn {
            Conn::Udp(s) => s.local_addr().unwrap(),
            Conn::Tcp(s, _) => s.local_addr().unwrap(),
            Conn::Tls(s, _) => s.sock.local_addr().unwrap(),
        }
    }

    /// The UDP socket of a UDP client (to send a GSO run on it, say).
    pub fn udp_socket(&self) -> Option<&UdpSocket> {
        match &self.conn {
            Conn::Udp(s) => Some(s),
            _ => None,
        }
    }

    pub fn key(&self) -> [u8; 16] {
        long_term_key(&self.username, REALM, &self.password)
    }

    pub fn send_raw(&mut self, b: &[u8]) {
        match &mut self.conn {
            Conn::Udp(s) => {
                s.send(b).unwrap();
            }
            Conn::Tcp(s, _) => s.write_all(b).unwrap(),
            Conn::Tls(s, _) => {
                s.write_all(b).unwrap();
                s.flush().unwrap();
            }
        }
    }

    /// The next message from the server, or `None` after `wait`.
    pub fn recv(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 70_000];
        loop {
            if let Conn::Tcp(_, f) | Conn::Tls(_, f) = &mut self.conn {
                if let Ok(Some(m)) = f.next() {
                    return Some(m.to_vec());
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            match &mut self.conn {
                Conn::Udp(s) => {
                    if let Ok(n) = s.recv(&mut buf) {
                        return Some(buf[..n].to_vec());
                    }
                }
                Conn::Tcp(s, f) => match s.read(&mut buf) {
                    Ok(0) => return None,
                    Ok(n) => f.push(&buf[..n]),
                    Err(_) => {}
                },
                Conn::Tls(s, f) => match s.read(&mut buf) {
                    Ok(0) => return None,
                    Ok(n) => f.push(&buf[..n]),
                    Err(e) if is_timeout(&e) => {}
                    Err(_) => return None,
                },
            }
        }
    }

    /// Whether the server closed a TCP (or TLS) connection (reads EOF within `wait`).
    pub fn closed(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            let r = match &mut self.conn {
                Conn::Udp(_) => return false,
                Conn::Tcp(s, _) => s.read(&mut buf),
                Conn::Tls(s, _) => s.read(&mut buf),
            };
            match r {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {}
                // A reset, or a TLS end without close_notify.
                Err(_) => return true,
            }
        }
        false
    }

    fn tid(&mut self) -> [u8; 12] {
        self.seq += 1;
        let mut t = [0x5a; 12];
        t[8..].copy_from_slice(&self.seq.to_be_bytes());
        t
    }

    /// A request with these attributes (credentials once a nonce is known); waits for
    /// its answer, sending it again over UDP (up to 5 times).
    pub fn request(&mut self, m: u16, attrs: Vec<(u16, Vec<u8>)>) -> Answer {
        let tid = self.tid();
        self.request_tid(m, attrs, tid)
    }

    pub fn request_tid(&mut self, m: u16, attrs: Vec<(u16, Vec<u8>)>, tid: [u8; 12]) -> Answer {
        let mut msg = Message::new(m, Class::Request, tid);
        msg.attributes = attrs;
        let bytes = match self.nonce.clone() {
            Some(nonce) => msg
                .with(attr::USERNAME, self.username.as_bytes())
                .with(attr::REALM, REALM.as_bytes())
                .with(attr::NONCE, nonce)
                .encode(Some(&self.key()), true),
            None => msg.encode(None, true),
        };
        for _ in 0..5 {
            self.send_raw(&bytes);
            let deadline = Instant::now() + Duration::from_secs(1);
            while let Some(b) = self.recv(deadline.saturating_duration_since(Instant::now())) {
                match stun::parse(&b) {
                    Ok(r) if r.tid == tid && matches!(r.class, Class::Success | Class::Error) => {
                        let code = r.error_code().map(|e| e.0);
                        if let Some(n) = r.get(attr::NONCE) {
                            self.nonce = Some(n.to_vec());
                        }
                        let class = r.class;
                        return Answer {
                            class,
                            code,
                            bytes: b,
                        };
                    }
                    _ => self.stash.push(b),
                }
            }
            if matches!(self.conn, Conn::Tcp(..) | Conn::Tls(..)) {
                break;
            }
        }
        panic!("no answer to method {m:#x}");
    }

    /// Allocate: the 401 challenge, then with credentials. The final answer.
    pub fn allocate(&mut self) -> Answer {
        let attrs = vec![(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])];
        if self.nonce.is_none() {
            let a = self.request(method::ALLOCATE, attrs.clone());
            assert_eq!(a.code, Some(401), "the first Allocate is challenged");
        }
        self.request(method::ALLOCATE, attrs)
    }

    /// Allocate, expecting success: the relayed address.
    pub fn relayed(&mut self) -> SocketAddr {
        let a = self.allocate();
        assert!(a.ok(), "Allocate refused: {:?}", a.msg().error_code());
        a.msg().xor_address(attr::XOR_RELAYED_ADDRESS).unwrap()
    }

    pub fn permission(&mut self, peers: &[SocketAddr]) -> Answer {
        let tid = self.tid();
        let attrs = peers
            .iter()
            .map(|p| (attr::XOR_PEER_ADDRESS, stun::xor_address(*p, &tid)))
            .collect();
        self.request_tid(method::CREATE_PERMISSION, attrs, tid)
    }

    pub fn channel_bind(&mut self, number: u16, peer: SocketAddr) -> Answer {
        let tid = self.tid();
        let mut n = number.to_be_bytes().to_vec();
        n.extend_from_slice(&[0, 0]);
        let attrs = vec![
            (attr::CHANNEL_NUMBER, n),
            (attr::XOR_PEER_ADDRESS, stun::xor_address(peer, &tid)),
        ];
        self.request_tid(method::CHANNEL_BIND, attrs, tid)
    }

    pub fn refresh(&mut self, lifetime: u32) -> Answer {
        self.request(
            method::REFRESH,
            vec![(attr::LIFETIME, lifetime.to_be_bytes().to_vec())],
        )
    }

    /// A Send indication to `peer`.
    pub fn send_to_peer(&mut self, peer: SocketAddr, data: &[u8]) {
        let mut b = Vec::new();
        let mut w = Builder::new(&mut b, method::SEND, Class::Indication, [3; 12]);
        w.xor_address(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::DATA, data);
        w.finish();
        self.send_raw(&b);
    }

    /// ChannelData on `number` (padded on TCP).
    pub fn send_channel(&mut self, number: u16, data: &[u8]) {
        let mut b = Vec::new();
        let stream = matches!(self.conn, Conn::Tcp(..) | Conn::Tls(..));
        framing::write_channel_data(&mut b, number, data, stream);
        self.send_raw(&b);
    }

    /// The next data from a peer (a Data indication or ChannelData): `(peer or None
    /// for ChannelData, payload)`.
    pub fn recv_data(&mut self, wait: Duration) -> Option<(Option<SocketAddr>, Vec<u8>)> {
        let deadline = Instant::now() + wait;
        loop {
            let b = if self.stash.is_empty() {
                self.recv(deadline.saturating_duration_since(Instant::now()))?
            } else {
                self.stash.remove(0)
            };
            if let Some((_, p)) = framing::parse_channel_data(&b) {
                return Some((None, p.to_vec()));
            }
            if let Ok(m) = stun::parse(&b) {
                if m.method == method::DATA && m.class == Class::Indication {
                    return Some((
                        m.xor_address(attr::XOR_PEER_ADDRESS),
                        m.get(attr::DATA)?.to_vec(),
                    ));
                }
            }
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// The sum over shards of a `/metrics` series (with `labels` inside its braces).
pub fn metric(server: &Server, name: &str, labels: &str) -> u64 {
    let text = server.get("/metrics").text();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

/// Waits until `f` holds (polling every 50 ms) or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
