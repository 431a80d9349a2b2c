//! Connections of the load generator on the current shard: TCP connect with an
//! optional source address, TLS over it for `https://` targets ([`Stream`]), a
//! keep-alive HTTP/1.1 connection, and a WebSocket client connection. Failures are
//! classified by kind so reports can say which limit hit.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

use wire::http::client::{write_request, Response, ResponseParser};
use wire::ws::client::{encode_close_masked, encode_pong_masked, encode_text_masked};
use wire::ws::client::{ClientDecoder, ClientEvent};

/// Linux errno values the reports name (std has no stable `ErrorKind` for them).
const EINPROGRESS: i32 = 115;
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;
const EADDRNOTAVAIL: i32 = 99;
const EADDRINUSE: i32 = 98;

/// Bytes read per `read` call. Idle connections keep one such buffer in flight, so it
/// stays small; a larger message simply takes several reads.
pub const READ_CHUNK_BYTES: usize = 4096;
/// Largest WebSocket frame the client accepts: a peer list of 100,000 ids is ~2 MiB.
pub const WS_FRAME_BYTES_MAX: usize = 8 * 1024 * 1024;
/// How long one connect, upgrade or request may take before it counts as a timeout.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the load goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The `Host` header.
    pub host: String,
    /// For `https://`: the TLS client and the name the certificate must carry.
    pub tls: Option<TlsTarget>,
}

/// TLS to a target.
#[derive(Debug, Clone)]
pub struct TlsTarget {
    pub config: Arc<rustls::ClientConfig>,
    pub name: rustls::pki_types::ServerName<'static>,
}

/// The load generator's TLS client: trusts the PEM certificates of `ca_file` (the
/// server's CA); TLS 1.3 and 1.2 with the suites of rustls's aws-lc-rs provider, but
/// only the X25519 key exchange, so that two servers compared see the same work
/// (nginx with OpenSSL 3.0 has no post-quantum group; rustls would prefer one).
pub fn tls_client(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| format!("--ca-file {}: {e}", ca_file.display()))?
    {
        let c = c.map_err(|e| format!("--ca-file {}: {e}", ca_file.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("--ca-file {}: {e}", ca_file.display()))?;
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    // One full handshake per connection, as the servers compared do.
    c.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(c))
}

impl Target {
    /// Parses `http://host:port` or `https://host:port` (a trailing `/` is allowed;
    /// nothing else after it). `https` needs `ca_file`, the CA to trust.
    pub fn parse(url: &str, ca_file: Option<&Path>) -> Result<Target, String> {
        let expected = || format!("--url {url:?}: expected http://host:port or https://host:port");
        let (rest, default_port, tls) = if let Some(r) = url.strip_prefix("http://") {
            (r, 80, false)
        } else if let Some(r) = url.strip_prefix("https://") {
            (r, 443, true)
        } else {
            return Err(expected());
        };
        let hostport = rest.trim_end_matches('/');
        if hostport.is_empty() || hostport.contains('/') {
            return Err(expected());
        }
        let (with_port, hostname) = match hostport.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (hostport.to_owned(), h),
            _ => (format!("{hostport}:{default_port}"), hostport),
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("--url {url:?}: cannot resolve: {e}"))?
            .next()
            .ok_or_else(|| format!("--url {url:?}: no address"))?;
        let tls = if tls {
            let ca = ca_file.ok_or_else(|| format!("--url {url:?}: https needs --ca-file"))?;
            let name = rustls::pki_types::ServerName::try_from(
                hostname.trim_matches(['[', ']']).to_owned(),
            )
            .map_err(|e| format!("--url {url:?}: {e}"))?;
            Some(TlsTarget {
                config: tls_client(ca)?,
                name,
            })
        } else {
            None
        };
        Ok(Target {
            addr,
            host: hostport.to_owned(),
            tls,
        })
    }
}

/// Source addresses to spread connections over: one IP has at most ~28,000 ephemeral
/// ports towards one server address, so a loopback target gets many 127.x.y.z sources.
#[derive(Debug, Clone)]
pub struct Sources(Vec<IpAddr>);

impl Sources {
    /// `count` loopback sources (127.1.0.1, 127.1.0.2, …) when the target is loopback
    /// IPv4; otherwise none (the kernel picks the source).
    pub fn for_target(target: &Target, count: usize) -> Sources {
        match target.addr.ip() {
            IpAddr::V4(ip) if ip.is_loopback() && count > 0 => Sources(
                (0..count.min(250 * 250))
                    .map(|k| {
                        IpAddr::V4(Ipv4Addr::new(127, 1, (k / 250) as u8, (k % 250 + 1) as u8))
                    })
                    .collect(),
            ),
            _ => Sources(Vec::new()),
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The source for connection number `k`.
    pub fn pick(&self, k: usize) -> Option<IpAddr> {
        (!self.0.is_empty()).then(|| self.0[k % self.0.len()])
    }
}

/// A failure, by kind (the key of "errors by kind" in reports) with a detail line.
#[derive(Debug, Clone)]
pub struct Fail {
    pub kind: String,
    pub detail: String,
}

impl Fail {
    pub fn new(kind: impl Into<String>, detail: impl Into<String>) -> Fail {
        Fail {
            kind: kind.into(),
            detail: detail.into(),
        }
    }

    pub fn io(what: &str, e: &io::Error) -> Fail {
        let kind = match e.raw_os_error() {
            Some(EMFILE) => "EMFILE".to_owned(),
            Some(ENFILE) => "ENFILE".to_owned(),
            Some(EADDRNOTAVAIL) => "EADDRNOTAVAIL".to_owned(),
            Some(EADDRINUSE) => "EADDRINUSE".to_owned(),
            _ => match e.kind() {
                io::ErrorKind::ConnectionRefused => "ECONNREFUSED".to_owned(),
                io::ErrorKind::ConnectionReset => "ECONNRESET".to_owned(),
                io::ErrorKind::BrokenPipe => "EPIPE".to_owned(),
                io::ErrorKind::TimedOut => "timeout".to_owned(),
                io::ErrorKind::UnexpectedEof => "closed by server".to_owned(),
                k => format!("{k:?}"),
            },
        };
        Fail::new(kind, format!("{what}: {e}"))
    }

    /// What the limit behind this failure is, in plain words, when it is one.
    pub fn limit_hint(&self) -> Option<&'static str> {
        Some(match self.kind.as_str() {
            "EMFILE" => "this process's open-file limit (RLIMIT_NOFILE)",
            "ENFILE" => "the system-wide open-file limit (fs.file-max)",
            "EADDRNOTAVAIL" | "EADDRINUSE" => {
                "no free ephemeral source port (use more source addresses or widen net.ipv4.ip_local_port_range)"
            }
            "http 503" => "the server refused more connections (503)",
            "ECONNREFUSED" => "the server refused the TCP connection (not listening, or its accept backlog overflowed)",
            "timeout" => "operations timed out (the server or the network is saturated)",
            _ => return None,
        })
    }
}

fn timed_out(what: &str) -> Fail {
    Fail::new(
        "timeout",
        format!("{what}: no answer within {IO_TIMEOUT:?}"),
    )
}

async fn with_timeout<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, Fail>>,
) -> Result<T, Fail> {
    match monoio::time::timeout(IO_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(timed_out(what)),
    }
}

/// Opens a TCP connection to `addr`, bound first to `source` when given.
pub async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, Fail> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| Fail::io("socket", &e))?;
    let setup = |s: &Socket| -> io::Result<()> {
        s.set_nonblocking(true)?;
        s.set_nodelay(true)?;
        // Lets bind() reuse a source port still in TIME_WAIT from an earlier run.
        s.set_reuse_address(true)?;
        if let Some(ip) = source {
            s.bind(&SocketAddr::new(ip, 0).into())?;
        }
        Ok(())
    };
    setup(&sock).map_err(|e| Fail::io("bind", &e))?;
    let in_progress = match sock.connect(&addr.into()) {
        Ok(()) => false,
        Err(e) if e.raw_os_error() == Some(EINPROGRESS) => true,
        Err(e) => return Err(Fail::io("connect", &e)),
    };
    // On loopback the handshake usually completes inside connect(); otherwise wait for
    // writability and read the result through a second handle.
    let probe = if in_progress {
        Some(sock.try_clone().map_err(|e| Fail::io("dup", &e))?)
    } else {
        None
    };
    let std: std::net::TcpStream = sock.into();
    let stream = TcpStream::from_std(std).map_err(|e| Fail::io("register", &e))?;
    if let Some(probe) = probe {
        with_timeout("connect", async {
            stream
                .writable(false)
                .await
                .map_err(|e| Fail::io("connect", &e))
        })
        .await?;
        if let Some(e) = probe.take_error().map_err(|e| Fail::io("connect", &e))? {
            return Err(Fail::io("connect", &e));
        }
    }
    Ok(stream)
}

/// Writes all of `buf`.
pub async fn write_all(stream: &mut TcpStream, buf: Vec<u8>) -> Result<Vec<u8>, Fail> {
    let (r, buf) = stream.write_all(buf).await;
    r.map_err(|e| Fail::io("write", &e))?;
    Ok(buf)
}

/// Writes all of `buf` on the writing half of a split connection.
pub async fn write_all_half(
    w: &mut monoio::net::tcp::TcpOwnedWriteHalf,
    buf: Vec<u8>,
) -> Result<Vec<u8>, Fail> {
    let (r, buf) = w.write_all(buf).await;
    r.map_err(|e| Fail::io("write", &e))?;
    Ok(buf)
}

/// Reads once into `buf` (cleared first); 0 bytes is an error (closed by the server).
pub async fn read_some(stream: &mut TcpStream, mut buf: Vec<u8>) -> Result<Vec<u8>, Fail> {
    buf.clear();
    let (r, buf) = stream.read(buf).await;
    match r {
        Ok(0) => Err(Fail::new(
            "closed by server",
            "the server closed the connection",
        )),
        Ok(_) => Ok(buf),
        Err(e) => Err(Fail::io("read", &e)),
    }
}

/// Plaintext read out of a TLS client per call (the caller's buffer grows to hold it).
const TLS_PLAIN_CHUNK_BYTES: usize = 16 * 1024;

/// A connection's byte stream: TCP, or TLS over it (a rustls client, boxed: an idle
/// plain connection pays one pointer).
pub struct Stream {
    tcp: TcpStream,
    tls: Option<Box<rustls::ClientConnection>>,
}

impl Stream {
    /// Connects (from `source`) and, for an `https://` target, completes the TLS
    /// handshake (within [`IO_TIMEOUT`]).
    pub async fn open(target: &Target, source: Option<IpAddr>) -> Result<Stream, Fail> {
        let tcp = connect(target.addr, source).await?;
        let Some(t) = &target.tls else {
            return Ok(Stream { tcp, tls: None });
        };
        let conn = rustls::ClientConnection::new(t.config.clone(), t.name.clone())
            .map_err(|e| Fail::new("tls", e.to_string()))?;
        let mut s = Stream {
            tcp,
            tls: Some(Box::new(conn)),
        };
        with_timeout("tls handshake", s.handshake()).await?;
        Ok(s)
    }

    async fn handshake(&mut self) -> Result<(), Fail> {
        let mut buf = Vec::with_capacity(READ_CHUNK_BYTES);
        let mut early = Vec::new();
        loop {
            self.flush_tls().await?;
            let conn = self.tls.as_mut().expect("a TLS stream");
            if !conn.is_handshaking() {
                return Ok(());
            }
            buf = read_some(&mut self.tcp, buf).await?;
            tls_feed(conn, &buf, &mut early)?;
        }
    }

    /// Writes what the TLS client has for the server.
    async fn flush_tls(&mut self) -> Result<(), Fail> {
        let Some(conn) = self.tls.as_mut() else {
            return Ok(());
        };
        if !conn.wants_write() {
            return Ok(());
        }
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out)
                .map_err(|e| Fail::new("tls", e.to_string()))?;
        }
        write_all(&mut self.tcp, out).await.map(drop)
    }

    /// Writes all of `buf` (TLS: encrypted).
    pub async fn write_all(&mut self, buf: Vec<u8>) -> Result<Vec<u8>, Fail> {
        let Some(conn) = self.tls.as_mut() else {
            return write_all(&mut self.tcp, buf).await;
        };
        std::io::Write::write_all(&mut conn.writer(), &buf)
            .map_err(|e| Fail::new("tls", e.to_string()))?;
        self.flush_tls().await?;
        Ok(buf)
    }

    /// Reads into `buf` (cleared first) at least one byte (TLS: of plaintext); the end
    /// of the stream is an error (closed by the server).
    pub async fn read_some(&mut self, mut buf: Vec<u8>) -> Result<Vec<u8>, Fail> {
        if self.tls.is_none() {
            return read_some(&mut self.tcp, buf).await;
        }
        let mut plain = Vec::new();
        loop {
            buf = read_some(&mut self.tcp, buf).await?;
            let conn = self.tls.as_mut().expect("a TLS stream");
            let closed = tls_feed(conn, &buf, &mut plain)?;
            // A key update or an alert owed to the server.
            self.flush_tls().await?;
            if !plain.is_empty() {
                buf.clear();
                buf.extend_from_slice(&plain);
                return Ok(buf);
            }
            if closed {
                return Err(Fail::new(
                    "closed by server",
                    "the server closed the TLS connection",
                ));
            }
        }
    }

    /// The TCP stream of a plain connection (`None` for TLS).
    pub fn into_plain(self) -> Option<TcpStream> {
        self.tls.is_none().then_some(self.tcp)
    }
}

/// Takes TLS bytes from the server; appends the plaintext to `plain`. `Ok(true)`: the
/// server sent `close_notify`.
fn tls_feed(
    conn: &mut rustls::ClientConnection,
    mut bytes: &[u8],
    plain: &mut Vec<u8>,
) -> Result<bool, Fail> {
    let tls = |e: &dyn std::fmt::Display| Fail::new("tls", e.to_string());
    let mut closed = false;
    while !bytes.is_empty() {
        conn.read_tls(&mut bytes).map_err(|e| tls(&e))?;
        let state = conn.process_new_packets().map_err(|e| tls(&e))?;
        closed |= state.peer_has_closed();
        // Drained after every batch: rustls bounds the plaintext it holds unread.
        let mut chunk = [0u8; TLS_PLAIN_CHUNK_BYTES];
        loop {
            match std::io::Read::read(&mut conn.reader(), &mut chunk) {
                Ok(0) => break,
                Ok(n) => plain.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(tls(&e)),
            }
        }
    }
    Ok(closed)
}

/// One keep-alive HTTP/1.1 connection.
pub struct HttpConn {
    stream: Stream,
    parser: ResponseParser,
    host: String,
    rbuf: Option<Vec<u8>>,
    wbuf: Option<Vec<u8>>,
}

impl HttpConn {
    pub async fn open(target: &Target, source: Option<IpAddr>) -> Result<HttpConn, Fail> {
        Ok(HttpConn {
            stream: Stream::open(target, source).await?,
            parser: ResponseParser::new(),
            host: target.host.clone(),
            rbuf: Some(Vec::with_capacity(READ_CHUNK_BYTES)),
            wbuf: Some(Vec::new()),
        })
    }

    /// Sends one request and reads its response (bounded by [`IO_TIMEOUT`]).
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response, Fail> {
        let mut w = self.wbuf.take().unwrap_or_default();
        w.clear();
        write_request(method, path, &self.host, headers, body, &mut w);
        with_timeout("request", async {
            self.wbuf = Some(self.stream.write_all(w).await?);
            loop {
                if let Some(r) = self.parser.poll().map_err(|e| Fail::new("protocol", e))? {
                    return Ok(r);
                }
                let buf = self.rbuf.take().unwrap_or_default();
                let buf = self.stream.read_some(buf).await?;
                self.parser.feed(&buf);
                self.rbuf = Some(buf);
            }
        })
        .await
    }
}

/// A small xorshift generator for frame masks and choices (masks need not be secret
/// for a load generator; they must only vary).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        let mut b = [0u8; 8];
        let _ = getrandom::getrandom(&mut b);
        Rng(u64::from_le_bytes(b) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_le_bytes()
    }
}

/// A WebSocket client connection to `/ws`.
pub struct WsConn {
    pub stream: Stream,
    pub decoder: ClientDecoder,
    /// Frames decoded but not yet returned by [`WsConn::next_event`]. Bounded by what
    /// one read of [`READ_CHUNK_BYTES`] can hold (it is drained before the next read).
    pending: std::collections::VecDeque<ClientEvent>,
    rbuf: Option<Vec<u8>>,
    pub rng: Rng,
}

impl WsConn {
    /// Connects and upgrades `/ws?token=…`. A refusal is `http <status>` with the body.
    pub async fn open(
        target: &Target,
        source: Option<IpAddr>,
        token: &str,
    ) -> Result<WsConn, Fail> {
        let mut stream = Stream::open(target, source).await?;
        with_timeout("upgrade", async move {
            let key = tungstenite::handshake::client::generate_key();
            let mut req = Vec::with_capacity(512);
            write_request(
                "GET",
                &format!("/ws?token={token}"),
                &target.host,
                &[
                    ("Upgrade", "websocket"),
                    ("Connection", "Upgrade"),
                    ("Sec-WebSocket-Key", &key),
                    ("Sec-WebSocket-Version", "13"),
                ],
                None,
                &mut req,
            );
            stream.write_all(req).await?;
            let mut parser = ResponseParser::new();
            let mut buf = Vec::with_capacity(READ_CHUNK_BYTES);
            let resp = loop {
                if let Some(r) = parser.poll().map_err(|e| Fail::new("protocol", e))? {
                    break r;
                }
                buf = stream.read_some(buf).await?;
                parser.feed(&buf);
            };
            if resp.status != 101 {
                return Err(Fail::new(
                    format!("http {}", resp.status),
                    format!(
                        "upgrade refused with {}: {}",
                        resp.status,
                        String::from_utf8_lossy(&resp.body)
                    ),
                ));
            }
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            if resp.header("sec-websocket-accept") != Some(accept.as_str()) {
                return Err(Fail::new("protocol", "wrong Sec-WebSocket-Accept"));
            }
            let mut conn = WsConn {
                stream,
                decoder: ClientDecoder::new(WS_FRAME_BYTES_MAX),
                pending: Default::default(),
                rbuf: Some(buf),
                rng: Rng::seeded(),
            };
            let rest = parser.take_rest();
            if !rest.is_empty() {
                conn.decode(&rest)?;
            }
            Ok(conn)
        })
        .await
    }

    fn decode(&mut self, bytes: &[u8]) -> Result<(), Fail> {
        let pending = &mut self.pending;
        self.decoder
            .decode(bytes, |e| pending.push_back(e))
            .map_err(|e| Fail::new("protocol", e))
    }

    /// Sends one text frame.
    pub async fn send_text(&mut self, text: &[u8]) -> Result<(), Fail> {
        let mut out = Vec::with_capacity(text.len() + 14);
        encode_text_masked(text, self.rng.mask(), &mut out);
        self.stream.write_all(out).await.map(drop)
    }

    /// The next frame from the server; pings are answered here and not returned.
    /// No timeout: callers bound it.
    pub async fn next_event(&mut self) -> Result<ClientEvent, Fail> {
        loop {
            while let Some(e) = self.pending.pop_front() {
                match e {
                    ClientEvent::Ping(p) => {
                        let mut out = Vec::with_capacity(p.len() + 8);
                        encode_pong_masked(&p, self.rng.mask(), &mut out);
                        self.stream.write_all(out).await?;
                    }
                    ClientEvent::Close(code) => {
                        return Err(Fail::new(
                            format!("closed {code}"),
                            format!("the server closed the WebSocket with {code}"),
                        ))
                    }
                    e => return Ok(e),
                }
            }
            let buf = self.rbuf.take().unwrap_or_default();
            let buf = self.stream.read_some(buf).await?;
            let r = self.decode(&buf);
            // A large message may have grown the buffer; idle connections keep a small one.
            self.rbuf = Some(if buf.capacity() > READ_CHUNK_BYTES * 4 {
                Vec::with_capacity(READ_CHUNK_BYTES)
            } else {
                buf
            });
            r?;
        }
    }

    /// Registers `peer_id` and waits for the peer list; returns how many peers it named.
    /// Messages are read as JSON in any layout ([`wire::ws::signaling::client::count_peer_list`]).
    pub async fn register(&mut self, peer_id: &str) -> Result<usize, Fail> {
        let msg = wire::ws::signaling::SignalMessage::register(peer_id).to_text();
        self.send_text(msg.as_bytes()).await?;
        with_timeout("register", async {
            loop {
                if let ClientEvent::Text(t) = self.next_event().await? {
                    if let Some(n) = wire::ws::signaling::client::count_peer_list(&t) {
                        return Ok(n);
                    }
                }
            }
        })
        .await
    }

    /// Sends `register` and reads only the first `bytes` bytes the server sends back (the
    /// start of its `peer_list` frame), as a client that never reads the rest (issue 26's
    /// idle client). The connection is then only fit for holding: what is left of the
    /// frame is never decoded.
    pub async fn register_partial(&mut self, peer_id: &str, bytes: usize) -> Result<(), Fail> {
        if self.stream.tls.is_some() {
            return Err(Fail::new(
                "usage",
                "reading part of the peer list needs a plain ws:// target",
            ));
        }
        let msg = wire::ws::signaling::SignalMessage::register(peer_id).to_text();
        self.send_text(msg.as_bytes()).await?;
        with_timeout("register", async {
            let mut got = 0usize;
            while got < bytes {
                // A read into exactly the room still wanted: the rest stays in the socket.
                let buf = read_some(&mut self.stream.tcp, Vec::with_capacity(bytes - got)).await?;
                got += buf.len();
            }
            Ok(())
        })
        .await
    }

    /// The socket and what was read but not yet returned, to split the connection
    /// into a reading and a writing task (plain connections only: `None` for TLS).
    #[allow(clippy::type_complexity)]
    pub fn into_parts(
        self,
    ) -> Option<(
        TcpStream,
        ClientDecoder,
        std::collections::VecDeque<ClientEvent>,
        Rng,
    )> {
        let tcp = self.stream.into_plain()?;
        Some((tcp, self.decoder, self.pending, self.rng))
    }

    /// Closes as a well-behaved client does: sends a close frame (1000) and waits
    /// (bounded) for the server's close, so the server closes the TCP connection first
    /// and the TIME_WAIT state stays on its side, not on the client's source ports.
    pub async fn close_gracefully(mut self) -> Result<(), Fail> {
        let mut out = Vec::with_capacity(8);
        encode_close_masked(1000, self.rng.mask(), &mut out);
        self.stream.write_all(out).await?;
        with_timeout("close", async {
            loop {
                match self.next_event().await {
                    Ok(_) => continue,
                    Err(f) if f.kind.starts_with("closed") => return Ok(()),
                    Err(f) => return Err(f),
                }
            }
        })
        .await
    }

    /// Sends a close frame (1000) and drops the connection without waiting.
    pub async fn close(mut self) {
        let mut out = Vec::with_capacity(8);
        encode_close_masked(1000, self.rng.mask(), &mut out);
        let _ = monoio::time::timeout(Duration::from_secs(1), self.stream.write_all(out)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("http://127.0.0.1:8080/", None).unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:8080");
        assert!(t.tls.is_none());
        assert!(
            Target::parse("https://127.0.0.1:1", None)
                .unwrap_err()
                .contains("--ca-file"),
            "https needs a CA"
        );
        assert!(Target::parse("ftp://x:1", None).is_err());
        assert!(Target::parse("http://127.0.0.1:1/api", None).is_err());
        let s = Sources::for_target(&t, 300);
        assert_eq!(s.len(), 300);
        assert_eq!(s.pick(0), Some("127.1.0.1".parse().unwrap()));
        assert_eq!(s.pick(251), Some("127.1.1.2".parse().unwrap()));
    }
}
