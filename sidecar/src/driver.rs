//! The I/O around [`Engine`]: everything runs as tasks on one reactor shard, sharing the
//! engine and the writers' queues through `Rc<RefCell<_>>` (never borrowed across an
//! `.await`). The driver owns the clock, the sockets, the wakeups ([`Kick`]s) and the
//! bounded queue in front of each writer: after every input it drains the engine's
//! output door ([`pump`]) into those queues and kicks their writers.
//!
//! Tasks: per UDP socket a reader and a writer; the timer (the engine's
//! `poll_timeout`); the signaling session loop (token → WebSocket → register, reconnect
//! with backoff) with its writer; the IPC accept loop with a reader and a writer per
//! agent connection; STUN and TURN server resolution (with retries scheduled here); for
//! TURN over TCP or TLS, the connection to the server with its reader and writer.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::udp::UdpSocket;
use monoio::net::{TcpStream, UnixListener, UnixStream};
use reactor::timer::{select2, Either};

use super::config::{SidecarConfig, TurnConfig};
use super::engine::{
    Engine, Input, Output, CLOSE_REPLACED, IPC_BATCH_LINES_MAX, TRIM_CHECK_INTERVAL,
};
use super::http_client::{token_request, ResponseReader};
use super::ipc::LineFramer;
use super::kick::Kick;
use super::resolve::{Lookup, ResolveError};
use super::signaling::Backoff;
use super::tls::TlsClient;
use super::turn::{parse_turn_url, TurnTransport};
use super::udp_out;
use super::ws::{WsClient, WsEvent};

/// Receive buffer per UDP socket: one datagram (str0m keeps datagrams under ~1200
/// bytes; 2 KiB leaves room for any sane MTU). A longer datagram is truncated by the
/// kernel and then fails to parse: dropped.
pub const UDP_RECV_BYTES: usize = 2048;
/// Read buffer for the IPC and signaling streams (reused; one per connection).
pub const STREAM_READ_BYTES: usize = 64 * 1024;
/// TCP keepalive for the signaling connection, so a server that vanished without a FIN
/// is noticed (in about time + interval × retries = 25 s) and we reconnect.
const SIGNAL_KEEPALIVE: (Duration, Duration, u32) =
    (Duration::from_secs(10), Duration::from_secs(5), 3);
/// Safety-net re-check of the backpressure condition while the IPC reader is paused
/// (the engine normally kicks it as soon as the peers drain).
const IPC_RECHECK: Duration = Duration::from_millis(100);
/// How long a TCP connect to the token or signaling server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Datagrams waiting for each UDP socket's writer. A full queue drops the datagram:
/// UDP is lossy anyway and ICE, DTLS and SCTP retransmit.
pub const UDP_OUT_DATAGRAMS_MAX: usize = 4096;

/// Kernel receive buffer asked for each UDP socket (SO_RCVBUF; the kernel caps it at
/// net.core.rmem_max). The default (~208 KiB) overflows while the shard is busy
/// draining a burst of IPC lines: a full buffer drops datagrams (SACKs and DATA), which
/// SCTP then recovers by retransmission at a large cost in throughput. 4 MiB holds a
/// full SCTP receive window (1 MiB) several times over. Failure to set it is logged and
/// the socket is used with the default.
pub const UDP_SOCKET_RCVBUF_BYTES: usize = 4 << 20;

/// Signaling messages waiting for the WebSocket writer. Offers, answers and a handful of
/// candidates per peer; when full (a stalled server) further messages are dropped, and
/// the peer connection attempt times out and is retried.
pub const SIGNAL_OUT_MESSAGES_MAX: usize = 1024;

/// Bytes of events queued for the agent (the IPC writer drains it). Bounded because an
/// agent that stops reading must not grow our memory; when full, incoming DataChannel
/// messages are dropped (counted and logged). Peer lifecycle and replies to commands
/// are always queued: they are small and bounded by the number of peers and commands.
pub const IPC_OUT_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Bytes queued for the TURN TCP connection. What does not fit is dropped (a Send
/// indication is a datagram: lost as on UDP; a request fails after its timeout and is
/// retried): a stalled server cannot grow our memory.
pub const TURN_STREAM_OUT_BYTES_MAX: usize = 1024 * 1024;

/// The driver's wakeups.
#[derive(Clone, Default)]
pub struct Kicks {
    pub udp: Vec<Kick>,
    pub signal_out: Kick,
    pub ipc_out: Kick,
    pub ipc_resume: Kick,
    pub timer: Kick,
    /// Bytes for the TURN TCP connection.
    pub turn_out: Kick,
    /// The engine asks for a new TURN TCP connection.
    pub turn_reconnect: Kick,
}

/// Counters of what the driver's queues dropped.
#[derive(Debug, Default, Clone)]
pub struct Dropped {
    pub udp: u64,
    pub ipc: u64,
    pub signal: u64,
    pub turn_stream: u64,
}

/// The engine and the queues in front of the writers.
pub struct State {
    pub engine: Engine,
    pub udp_out: Vec<VecDeque<(Vec<u8>, SocketAddr)>>,
    pub signal_out: VecDeque<String>,
    pub ipc_out: VecDeque<Vec<u8>>,
    ipc_out_bytes: usize,
    /// Messages for the TURN TCP connection, and their bytes.
    turn_out: VecDeque<Vec<u8>>,
    turn_out_bytes: usize,
    /// Which TURN TCP connection is current (a writer of an older one stops).
    turn_conn: u64,
    /// When the timer task will next wake (so we know when to kick it earlier).
    timer_deadline: Instant,
    /// The current signaling session got as far as `peer_list`.
    registered: bool,
    pub kicks: Kicks,
    pub dropped: Dropped,
}

impl State {
    /// Feeds one input and moves the engine's outputs to the writers' queues.
    fn input(&mut self, input: Input<'_>) {
        if let Err(e) = self.engine.handle_input(Instant::now(), input) {
            tracing::warn!(error = %e, "input refused");
        }
        self.pump();
    }

    /// Drains the engine's output door.
    fn pump(&mut self) {
        loop {
            match self.engine.poll_output() {
                Output::Transmit { sock, dest, data } => {
                    if self.udp_out[sock].len() >= UDP_OUT_DATAGRAMS_MAX {
                        self.dropped.udp += 1;
                        continue;
                    }
                    self.udp_out[sock].push_back((data, dest));
                    self.kicks.udp[sock].kick();
                }
                Output::Signal(text) => {
                    if self.signal_out.len() >= SIGNAL_OUT_MESSAGES_MAX {
                        self.dropped.signal += 1;
                        tracing::warn!("signaling queue full: message dropped");
                        continue;
                    }
                    self.signal_out.push_back(text);
                    self.kicks.signal_out.kick();
                }
                Output::Agent { line, droppable } => {
                    if droppable && self.ipc_out_bytes + line.len() > IPC_OUT_BYTES_MAX {
                        self.dropped.ipc += 1;
                        tracing::warn!(
                            dropped = self.dropped.ipc,
                            "agent is not reading: DataChannel message dropped"
                        );
                        continue;
                    }
                    self.ipc_out_bytes += line.len();
                    self.ipc_out.push_back(line);
                    self.kicks.ipc_out.kick();
                }
                Output::IpcResume => self.kicks.ipc_resume.kick(),
                Output::TurnStream(msg) => {
                    if self.turn_out_bytes + msg.len() > TURN_STREAM_OUT_BYTES_MAX {
                        self.dropped.turn_stream += 1;
                        continue;
                    }
                    self.turn_out_bytes += msg.len();
                    self.turn_out.push_back(msg);
                    self.kicks.turn_out.kick();
                }
                Output::TurnReconnect => self.kicks.turn_reconnect.kick(),
                Output::Registered => self.registered = true,
                Output::Timeout(t) => {
                    if t < self.timer_deadline {
                        self.kicks.timer.kick();
                    }
                    return;
                }
            }
        }
    }

    /// The IPC writer took a line.
    fn pop_ipc_out(&mut self) -> Option<Vec<u8>> {
        let l = self.ipc_out.pop_front()?;
        self.ipc_out_bytes -= l.len();
        Some(l)
    }
}

type Shared = Rc<RefCell<State>>;

/// A seed from the OS for the engine's and the WebSocket's generators. Without one
/// (no entropy source at all) the clock and pid stand in: these values only need to
/// be unpredictable to an off-path attacker, not secret.
fn os_seed() -> u64 {
    let mut b = [0u8; 8];
    match getrandom::getrandom(&mut b) {
        Ok(()) => u64::from_ne_bytes(b),
        Err(e) => {
            tracing::warn!(error = %e, "no OS randomness; seeding from the clock");
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ (std::process::id() as u64) << 32
        }
    }
}

/// What the main thread prepares (binding sockets and the IPC socket file is start-up
/// work done before the shard runs, so no file system call happens on the shard).
pub struct Prepared {
    pub config: SidecarConfig,
    pub udp: Vec<std::net::UdpSocket>,
    pub ipc: std::os::unix::net::UnixListener,
    /// Set when the agent hangs up: the process exits, as the reference does.
    pub done: Arc<AtomicBool>,
    /// Set by the shard when a burst of DataChannel traffic has drained
    /// ([`Engine::drained_after_burst`]): the control thread then hands the freed heap
    /// back to the kernel (`reactor::sys::malloc_trim`, which takes the allocator's
    /// locks and so does not run on the shard) and clears it.
    pub trim: Arc<AtomicBool>,
}

/// Binds one UDP socket per local interface address (loopback included, so two
/// sidecars on one host connect; IPv6 link-local skipped: it needs a scope id).
pub fn bind_udp() -> std::io::Result<Vec<std::net::UdpSocket>> {
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for iface in if_addrs::get_if_addrs()? {
        let ip = iface.ip();
        let skip = match ip {
            std::net::IpAddr::V4(v) => v.is_unspecified() || v.is_link_local(),
            std::net::IpAddr::V6(v) => v.is_unspecified() || (v.segments()[0] & 0xffc0) == 0xfe80,
        };
        if skip || seen.contains(&ip) {
            continue;
        }
        seen.push(ip);
        match std::net::UdpSocket::bind(SocketAddr::new(ip, 0)) {
            Ok(s) => {
                s.set_nonblocking(true)?;
                if let Err(e) =
                    socket2::SockRef::from(&s).set_recv_buffer_size(UDP_SOCKET_RCVBUF_BYTES)
                {
                    tracing::warn!(%ip, error = %e, "cannot set the UDP receive buffer size");
                }
                out.push(s);
            }
            Err(e) => tracing::warn!(%ip, error = %e, "cannot bind UDP on interface"),
        }
    }
    if out.is_empty() {
        return Err(std::io::Error::other("no usable local address"));
    }
    Ok(out)
}

/// Creates the IPC socket at `path` with mode 0600 and no window in which it exists
/// with wider permissions: bind under a temporary name, chmod, then rename into place
/// (the agent waits for the final name). Start-up only, on the main thread: this is
/// the one place the sidecar uses `std::fs`.
pub fn bind_ipc(path: &str) -> std::io::Result<std::os::unix::net::UnixListener> {
    let _ = std::fs::remove_file(path);
    let tmp = format!("{path}.{}.tmp", std::process::id());
    let _ = std::fs::remove_file(&tmp);
    let l = std::os::unix::net::UnixListener::bind(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The shard's application.
pub async fn run(p: Prepared) {
    let now = Instant::now();
    let mut socks = Vec::new();
    // Per socket, a second handle on it for non-blocking sends from the shard
    // (udp_out.rs); without one, every datagram takes the io_uring send.
    let mut sync_socks = Vec::new();
    for s in p.udp {
        let sync = match s.try_clone() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "cannot clone a UDP socket: sends go one by one");
                None
            }
        };
        match UdpSocket::from_std(s) {
            Ok(s) => {
                socks.push(Rc::new(s));
                sync_socks.push(sync);
            }
            Err(e) => tracing::error!(error = %e, "cannot register UDP socket"),
        }
    }
    let locals: Vec<SocketAddr> = socks.iter().filter_map(|s| s.local_addr().ok()).collect();
    tracing::info!(?locals, "host candidates");
    let kicks = Kicks {
        udp: socks.iter().map(|_| Kick::default()).collect(),
        ..Kicks::default()
    };
    let state: Shared = Rc::new(RefCell::new(State {
        engine: Engine::new(now, locals.clone(), p.config.relay_only, os_seed()),
        udp_out: locals.iter().map(|_| VecDeque::new()).collect(),
        signal_out: VecDeque::new(),
        ipc_out: VecDeque::new(),
        ipc_out_bytes: 0,
        turn_out: VecDeque::new(),
        turn_out_bytes: 0,
        turn_conn: 0,
        timer_deadline: now,
        registered: false,
        kicks: kicks.clone(),
        dropped: Dropped::default(),
    }));
    if p.config.udp_gso {
        tracing::info!("UDP GSO on (SIDECAR_UDP_GSO)");
    }
    for ((i, s), sync) in socks.iter().enumerate().zip(sync_socks) {
        monoio::spawn(udp_reader(state.clone(), i, s.clone()));
        monoio::spawn(udp_writer(
            state.clone(),
            i,
            s.clone(),
            sync,
            p.config.udp_gso,
            kicks.udp[i].clone(),
        ));
    }
    monoio::spawn(timer(state.clone(), kicks.timer.clone(), p.trim.clone()));
    if p.config.stun_servers.is_empty() {
        tracing::info!("no STUN server configured: no srflx candidates");
    } else {
        tracing::info!(servers = ?p.config.stun_servers, "STUN servers");
        monoio::spawn(stun_setup(state.clone(), p.config.stun_servers.clone()));
    }
    match &p.config.turn {
        Some(turn) => {
            monoio::spawn(turn_setup(
                state.clone(),
                turn.clone(),
                p.config.turn_tls.clone(),
            ));
        }
        None if p.config.relay_only => {
            tracing::warn!("ICE_TRANSPORT_POLICY=relay without TURN_URL: no candidates at all");
        }
        None => {}
    }
    monoio::spawn(signaling_loop(state.clone(), p.config.clone()));
    let listener = match UnixListener::from_std(p.ipc) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the IPC socket");
            p.done.store(true, Ordering::Release);
            return;
        }
    };
    tracing::info!(path = %p.config.ipc_socket, "IPC listening");
    // One agent per sidecar: serve the first connection; when it hangs up, exit.
    match listener.accept().await {
        Ok((stream, _)) => {
            tracing::info!("agent connected");
            serve_agent(state.clone(), stream, kicks).await;
            tracing::info!("agent disconnected; exiting");
        }
        Err(e) => tracing::error!(error = %e, "IPC accept failed"),
    }
    p.done.store(true, Ordering::Release);
}

async fn udp_reader(state: Shared, sock: usize, udp: Rc<UdpSocket>) {
    let mut buf = Vec::with_capacity(UDP_RECV_BYTES);
    loop {
        let (res, b) = udp.recv_from(buf).await;
        buf = b;
        match res {
            Ok((n, source)) => state.borrow_mut().input(Input::Datagram {
                sock,
                source,
                data: &buf[..n],
            }),
            Err(e) => {
                tracing::debug!(error = %e, "udp recv error");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        buf.clear();
    }
}

/// Sends socket `i`'s queued datagrams without blocking from the shard (udp_out.rs),
/// with `gso` runs to one destination as one GSO send; only when the socket buffer is
/// full does a datagram go through io_uring, which waits for room.
async fn udp_writer(
    state: Shared,
    i: usize,
    sock: Rc<UdpSocket>,
    sync: Option<std::net::UdpSocket>,
    gso: bool,
    kick: Kick,
) {
    let mut gso = gso && sync.is_some();
    let mut run = Vec::with_capacity(udp_out::GSO_SEGMENTS_MAX);
    loop {
        kick.wait().await;
        loop {
            run.clear();
            udp_out::take_run(&mut state.borrow_mut().udp_out[i], &mut run, gso);
            let Some(&(_, dest)) = run.first() else { break };
            if let Some(s) = &sync {
                match udp_out::send_run(s, &run) {
                    Ok(()) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if run.len() > 1 && udp_out::gso_unsupported(&e) => {
                        tracing::warn!(error = %e, "UDP GSO refused: sending datagrams one by one");
                        gso = false;
                    }
                    Err(e) => {
                        // Unreachable pairs (loopback → LAN and the like) are normal
                        // during ICE; a single send would fail the same way.
                        tracing::trace!(%dest, error = %e, "udp send failed");
                        continue;
                    }
                }
            }
            for (data, dest) in run.drain(..) {
                let (res, _) = sock.send_to(data, dest).await;
                if let Err(e) = res {
                    tracing::trace!(%dest, error = %e, "udp send failed");
                }
            }
        }
    }
}

/// Capacity a driver queue keeps once it is empty after a drain (they grow to their
/// `..._MAX` limits in a burst).
const QUEUE_KEEP_CAPACITY: usize = 64;

async fn timer(state: Shared, kick: Kick, trim: Arc<AtomicBool>) {
    let mut last_drain_check = Instant::now();
    loop {
        let now = Instant::now();
        let deadline = {
            let mut s = state.borrow_mut();
            let d = s.engine.poll_timeout();
            s.timer_deadline = d;
            d
        };
        let wait = deadline.saturating_duration_since(now);
        if !wait.is_zero() {
            let _ = select2(monoio::time::sleep(wait), kick.wait()).await;
        }
        let mut s = state.borrow_mut();
        s.input(Input::Timeout);
        // At most every TRIM_CHECK_INTERVAL: has a burst drained (and stayed so for
        // TRIM_QUIET)? Then shrink our queues and have the control thread trim the heap
        // (RSS back near idle).
        let now = Instant::now();
        if now.duration_since(last_drain_check) >= TRIM_CHECK_INTERVAL {
            last_drain_check = now;
            // (The datagrams this very timeout produced are still queued: a queue is
            // shrunk only if empty.)
            if s.ipc_out.is_empty() && s.engine.drained_after_burst(now) {
                s.ipc_out.shrink_to(QUEUE_KEEP_CAPACITY);
                for q in s.udp_out.iter_mut().filter(|q| q.is_empty()) {
                    q.shrink_to(QUEUE_KEEP_CAPACITY);
                }
                trim.store(true, Ordering::Release);
            }
        }
    }
}

/// How often the driver asks a [`Lookup`] for its answer.
const RESOLVE_POLL: Duration = Duration::from_millis(10);

/// Resolves `host:port` off the shard, polling on the driver's timer.
async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
    let mut lookup = Lookup::start(host, port, Instant::now());
    loop {
        if let Some(r) = lookup.poll(Instant::now()) {
            return r;
        }
        monoio::time::sleep(RESOLVE_POLL).await;
    }
}

async fn stun_setup(state: Shared, servers: Vec<(String, u16)>) {
    let mut addrs = Vec::new();
    for (host, port) in servers {
        match resolve(&host, port).await {
            Ok(a) => addrs.extend(a),
            Err(e) => tracing::warn!(error = %e, "STUN server not resolved; continuing without it"),
        }
    }
    if !addrs.is_empty() {
        state.borrow_mut().input(Input::StunServers(&addrs));
    }
}

/// Resolves the TURN server and starts the allocation (the engine retries failures):
/// over UDP from one of our sockets, or over a TCP or TLS connection this driver
/// keeps. `tls`: the client configuration for a `turns:` URL.
async fn turn_setup(state: Shared, turn: TurnConfig, tls: Option<Arc<rustls::ClientConfig>>) {
    let (host, port, transport) = match parse_turn_url(&turn.url) {
        Ok(hp) => hp,
        Err(e) => {
            tracing::warn!(error = %e, "TURN_URL not usable: no relay candidates");
            return;
        }
    };
    let server = match resolve(&host, port).await {
        Ok(addrs) if !addrs.is_empty() => *addrs.iter().find(|a| a.is_ipv4()).unwrap_or(&addrs[0]),
        Ok(_) => {
            tracing::warn!(%host, "TURN server has no address: no relay candidates");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "TURN server not resolved: no relay candidates");
            return;
        }
    };
    match transport {
        TurnTransport::Udp => state.borrow_mut().input(Input::TurnServer {
            server,
            config: turn,
        }),
        TurnTransport::Tcp => turn_tcp(state, server, turn, None).await,
        TurnTransport::Tls => match tls {
            Some(cfg) => turn_tcp(state, server, turn, Some((cfg, host))).await,
            None => tracing::warn!("TURN over TLS without a TLS client: no relay candidates"),
        },
    }
}

/// TURN over TCP: connects to the server, hands the engine the connection
/// (`Input::TurnStreamOpen`), feeds it what arrives and writes what it sends. When the
/// connection ends the engine is told (its allocation is gone); a new connection is
/// opened when the engine asks (`Output::TurnReconnect`, after its retry delay), or
/// after [`super::engine::TURN_RETRY_DELAY`] when connecting failed. With `tls`
/// (`turns:`: the client configuration and the server's name), TLS over the connection:
/// the handshake within [`CONNECT_TIMEOUT`], then the same messages sealed.
async fn turn_tcp(
    state: Shared,
    server: SocketAddr,
    config: TurnConfig,
    tls: Option<(Arc<rustls::ClientConfig>, String)>,
) {
    let (out_kick, reconnect) = {
        let s = state.borrow();
        (s.kicks.turn_out.clone(), s.kicks.turn_reconnect.clone())
    };
    loop {
        let stream = match select2(
            TcpStream::connect(server),
            monoio::time::sleep(CONNECT_TIMEOUT),
        )
        .await
        {
            Either::Left(Ok(s)) => s,
            Either::Left(Err(e)) => {
                tracing::warn!(%server, error = %e, "TURN: TCP connect failed");
                monoio::time::sleep(super::engine::TURN_RETRY_DELAY).await;
                continue;
            }
            Either::Right(()) => {
                tracing::warn!(%server, "TURN: TCP connect timed out");
                monoio::time::sleep(super::engine::TURN_RETRY_DELAY).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else {
            monoio::time::sleep(super::engine::TURN_RETRY_DELAY).await;
            continue;
        };
        let mut stream = stream;
        let session = match &tls {
            None => None,
            Some((cfg, host)) => match turn_tls_handshake(cfg, host, &mut stream).await {
                Ok(t) => Some(Rc::new(RefCell::new(t))),
                Err(e) => {
                    tracing::warn!(%server, error = %e, "TURN: TLS handshake failed");
                    monoio::time::sleep(super::engine::TURN_RETRY_DELAY).await;
                    continue;
                }
            },
        };
        let conn = {
            let mut s = state.borrow_mut();
            s.turn_conn += 1;
            s.turn_out.clear();
            s.turn_out_bytes = 0;
            s.input(Input::TurnStreamOpen {
                server,
                local,
                config: config.clone(),
            });
            s.turn_conn
        };
        let (mut rd, wr) = stream.into_split();
        monoio::spawn(turn_tcp_writer(
            state.clone(),
            wr,
            out_kick.clone(),
            conn,
            session.clone(),
        ));
        out_kick.kick();
        let mut buf = Vec::with_capacity(STREAM_READ_BYTES);
        let mut plain = Vec::new();
        loop {
            buf.clear();
            let (r, b) = rd.read(buf).await;
            buf = b;
            let n = match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut guard = session.as_ref().map(|t| t.borrow_mut());
            match open(guard.as_deref_mut(), &buf[..n], &mut plain) {
                Ok(bytes) => state.borrow_mut().input(Input::TurnStream(bytes)),
                Err(e) => {
                    tracing::warn!(%server, error = %e, "TURN: TLS failed");
                    break;
                }
            }
            if guard.is_some_and(|s| s.wants_write()) {
                // A key update (or an alert) to send: the writer takes it.
                out_kick.kick();
            }
        }
        tracing::warn!(%server, "TURN: the TCP connection closed");
        {
            let mut s = state.borrow_mut();
            s.turn_conn += 1; // its writer stops
            s.turn_out.clear();
            s.turn_out_bytes = 0;
            s.input(Input::TurnStreamClosed);
        }
        out_kick.kick();
        reconnect.wait().await;
    }
}

/// The TLS handshake of a `turns:` connection with `host` (its name checked against
/// the certificate, and sent as SNI), within [`CONNECT_TIMEOUT`].
async fn turn_tls_handshake(
    cfg: &Arc<rustls::ClientConfig>,
    host: &str,
    s: &mut TcpStream,
) -> Result<TlsClient, SessionError> {
    let mut tls = TlsClient::new(cfg, host).map_err(SessionError::Tls)?;
    let done = {
        let handshake = std::pin::pin!(tls_handshake(&mut tls, s));
        select2(handshake, monoio::time::sleep(CONNECT_TIMEOUT)).await
    };
    match done {
        Either::Left(r) => r?,
        Either::Right(()) => {
            return Err(SessionError::Tls(format!(
                "TLS: handshake with {host} not done within {CONNECT_TIMEOUT:?}"
            )))
        }
    }
    Ok(tls)
}

/// Writes the engine's messages for TURN TCP connection `conn` until it is replaced
/// (sealed with `tls` for `turns:`, after what TLS owes the server).
async fn turn_tcp_writer(
    state: Shared,
    mut wr: monoio::io::OwnedWriteHalf<TcpStream>,
    kick: Kick,
    conn: u64,
    tls: Option<Rc<RefCell<TlsClient>>>,
) {
    let mut batch = Vec::with_capacity(STREAM_READ_BYTES);
    loop {
        kick.wait().await;
        if let Some(t) = &tls {
            // What TLS owes the server (a key update) goes out even with no message.
            let owed = t.borrow_mut().take_tls();
            if !owed.is_empty() && wr.write_all(owed).await.0.is_err() {
                return;
            }
        }
        loop {
            batch.clear();
            {
                let mut s = state.borrow_mut();
                if s.turn_conn != conn {
                    return;
                }
                while batch.len() < STREAM_READ_BYTES {
                    let Some(m) = s.turn_out.pop_front() else {
                        break;
                    };
                    s.turn_out_bytes -= m.len();
                    batch.extend_from_slice(&m);
                }
            }
            if batch.is_empty() {
                break;
            }
            if let Some(t) = &tls {
                let sealed = match t.borrow_mut().seal(&batch) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "TURN: TLS send failed");
                        return;
                    }
                };
                if wr.write_all(sealed).await.0.is_err() {
                    return;
                }
                continue;
            }
            let (r, b) = wr.write_all(batch).await;
            batch = b;
            if r.is_err() {
                return;
            }
        }
    }
}

/// Why a signaling session ended.
#[derive(Debug)]
enum SessionError {
    /// The TLS handshake or a record failed (rustls's reason), or timed out.
    Tls(String),
    Resolve(ResolveError),
    Connect(String),
    Io(std::io::Error),
    Token(super::http_client::TokenError),
    Ws(super::ws::WsError),
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::Tls(e) => f.write_str(e),
            SessionError::Resolve(e) => write!(f, "{e}"),
            SessionError::Connect(e) => f.write_str(e),
            SessionError::Io(e) => write!(f, "{e}"),
            SessionError::Token(e) => write!(f, "{e}"),
            SessionError::Ws(e) => write!(f, "{e}"),
        }
    }
}

async fn connect(host: &str, port: u16) -> Result<TcpStream, SessionError> {
    let addrs = resolve(host, port).await.map_err(SessionError::Resolve)?;
    let mut last = format!("{host}: no address");
    for a in addrs {
        match select2(TcpStream::connect(a), monoio::time::sleep(CONNECT_TIMEOUT)).await {
            Either::Left(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Either::Left(Err(e)) => last = format!("{a}: {e}"),
            Either::Right(()) => last = format!("{a}: connect timed out"),
        }
    }
    Err(SessionError::Connect(last))
}

/// With a `https`/`wss` URL: the TLS handshake on `s` (within [`CONNECT_TIMEOUT`]);
/// `None` for a plain URL.
async fn start_tls(
    cfg: &SidecarConfig,
    url: &super::url::Url,
    s: &mut TcpStream,
) -> Result<Option<TlsClient>, SessionError> {
    if !url.is_tls() {
        return Ok(None);
    }
    let config = cfg
        .tls
        .as_ref()
        .ok_or_else(|| SessionError::Tls("TLS: no client configuration".into()))?;
    let mut tls = TlsClient::new(config, &url.host).map_err(SessionError::Tls)?;
    let done = {
        let handshake = std::pin::pin!(tls_handshake(&mut tls, s));
        select2(handshake, monoio::time::sleep(CONNECT_TIMEOUT)).await
    };
    match done {
        Either::Left(r) => r?,
        Either::Right(()) => {
            return Err(SessionError::Tls(format!(
                "TLS: handshake with {} not done within {CONNECT_TIMEOUT:?}",
                url.host
            )))
        }
    }
    Ok(Some(tls))
}

async fn tls_handshake(tls: &mut TlsClient, s: &mut TcpStream) -> Result<(), SessionError> {
    let mut buf = Vec::with_capacity(STREAM_READ_BYTES);
    // An HTTP server sends no application data before the request: nothing is lost.
    let mut early = Vec::new();
    loop {
        let out = tls.take_tls();
        if !out.is_empty() {
            s.write_all(out).await.0.map_err(SessionError::Io)?;
        }
        if !tls.is_handshaking() {
            return Ok(());
        }
        buf.clear();
        let (r, b) = s.read(buf).await;
        buf = b;
        match r.map_err(SessionError::Io)? {
            0 => {
                return Err(SessionError::Tls(
                    "TLS: the server closed during the handshake".into(),
                ))
            }
            n => {
                tls.feed(&buf[..n], &mut early).map_err(SessionError::Tls)?;
            }
        }
    }
}

/// `bytes` from the socket as the application's: decrypted with `tls`, into `plain`.
fn open<'a>(
    tls: Option<&mut TlsClient>,
    bytes: &'a [u8],
    plain: &'a mut Vec<u8>,
) -> Result<&'a [u8], SessionError> {
    match tls {
        None => Ok(bytes),
        Some(t) => {
            plain.clear();
            t.feed(bytes, plain).map_err(SessionError::Tls)?;
            Ok(plain)
        }
    }
}

async fn signaling_loop(state: Shared, cfg: SidecarConfig) {
    let mut backoff = Backoff::default();
    let mut seed = os_seed();
    loop {
        state.borrow_mut().registered = false;
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let code = match session(&state, &cfg, seed).await {
            Ok(code) => {
                tracing::warn!(?code, "signaling connection closed");
                code
            }
            Err(e) => {
                tracing::warn!(error = %e, "signaling connection failed");
                None
            }
        };
        {
            let mut s = state.borrow_mut();
            s.signal_out.clear();
            s.input(Input::SignalingClosed { code });
            // A session that got as far as `peer_list` resets the backoff, unless it was
            // replaced by another sidecar with our identity: then we keep backing off, so
            // two agents sharing one identity do not take it from each other at once.
            if s.registered && code != Some(CLOSE_REPLACED) {
                backoff.reset();
            }
        }
        let d = backoff.next_delay();
        tracing::info!(delay = ?d, "reconnecting to signaling");
        monoio::time::sleep(d).await;
    }
}

/// One signaling session: token exchange, WebSocket, register, then frames until the
/// connection drops. Returns the server's close code, if it sent one.
async fn session(
    state: &Shared,
    cfg: &SidecarConfig,
    seed: u64,
) -> Result<Option<u16>, SessionError> {
    // 1. API key → JWT.
    let mut s = connect(&cfg.token_url.host, cfg.token_url.port).await?;
    let mut tls = start_tls(cfg, &cfg.token_url, &mut s).await?;
    let mut request = token_request(&cfg.token_url, &cfg.api_key);
    if let Some(t) = tls.as_mut() {
        request = t.seal(&request).map_err(SessionError::Tls)?;
    }
    let (r, _) = s.write_all(request).await;
    r.map_err(SessionError::Io)?;
    let mut reader = ResponseReader::default();
    let mut buf = Vec::with_capacity(STREAM_READ_BYTES);
    let mut plain = Vec::new();
    let token = loop {
        let (r, b) = s.read(buf).await;
        buf = b;
        let n = r.map_err(SessionError::Io)?;
        if n == 0 {
            return Err(SessionError::Token(reader.finish()));
        }
        let bytes = open(tls.as_mut(), &buf[..n], &mut plain)?;
        if let Some(t) = reader.feed(bytes).map_err(SessionError::Token)? {
            break t;
        }
        buf.clear();
    };
    drop(s);
    tracing::info!(peer_id = %token.peer_id, "authenticated");
    state
        .borrow_mut()
        .input(Input::Identity(token.peer_id.clone()));

    // 2. WebSocket.
    let mut stream = connect(&cfg.signaling_url.host, cfg.signaling_url.port).await?;
    let tls = start_tls(cfg, &cfg.signaling_url, &mut stream)
        .await?
        .map(|t| Rc::new(RefCell::new(t)));
    let _ = stream.set_tcp_keepalive(
        Some(SIGNAL_KEEPALIVE.0),
        Some(SIGNAL_KEEPALIVE.1),
        Some(SIGNAL_KEEPALIVE.2),
    );
    let (mut rd, wr) = stream.into_split();
    let ws = Rc::new(RefCell::new(WsClient::new(
        &cfg.signaling_url,
        &token.token,
        seed,
    )));
    let closed = Rc::new(Cell::new(false));
    let wkick = state.borrow().kicks.signal_out.clone();
    let writer = monoio::spawn(signal_writer(
        state.clone(),
        ws.clone(),
        tls.clone(),
        wr,
        wkick.clone(),
        closed.clone(),
    ));
    wkick.kick(); // sends the upgrade request
    let mut plain = Vec::new();
    let result = loop {
        buf.clear();
        let (r, b) = rd.read(buf).await;
        buf = b;
        let n = match r {
            Ok(0) => break Ok(None),
            Ok(n) => n,
            Err(e) => break Err(SessionError::Io(e)),
        };
        let mut tls = tls.as_ref().map(|t| t.borrow_mut());
        let bytes = match open(tls.as_deref_mut(), &buf[..n], &mut plain) {
            Ok(b) => b,
            Err(e) => break Err(e),
        };
        let events = match ws.borrow_mut().feed(bytes) {
            Ok(ev) => ev,
            Err(e) => break Err(SessionError::Ws(e)),
        };
        drop(tls);
        wkick.kick(); // pongs, close replies
        let mut end = None;
        for ev in events {
            match ev {
                WsEvent::Open => {
                    tracing::info!("signaling connected");
                    state.borrow_mut().input(Input::SignalingOpen);
                }
                WsEvent::Text(t) => state.borrow_mut().input(Input::SignalingText(&t)),
                WsEvent::Closed(code) => end = Some(code),
            }
        }
        if let Some(code) = end {
            break Ok(Some(code));
        }
    };
    closed.set(true);
    wkick.kick();
    writer.await;
    result
}

async fn signal_writer(
    state: Shared,
    ws: Rc<RefCell<WsClient>>,
    tls: Option<Rc<RefCell<TlsClient>>>,
    mut wr: monoio::io::OwnedWriteHalf<TcpStream>,
    kick: Kick,
    closed: Rc<Cell<bool>>,
) {
    loop {
        kick.wait().await;
        let out = {
            let mut ws = ws.borrow_mut();
            if ws.is_open() && !closed.get() {
                let msgs: Vec<String> = state.borrow_mut().signal_out.drain(..).collect();
                for m in msgs {
                    if let Err(e) = ws.send_text(&m) {
                        tracing::warn!(error = %e, "signaling send failed");
                    }
                }
            }
            let out = ws.take_outbound();
            match &tls {
                // Sealed, after what TLS owes the server (an alert, a key update).
                Some(t) => match t.borrow_mut().seal(&out) {
                    Ok(sealed) => sealed,
                    Err(e) => {
                        tracing::warn!(error = %e, "signaling send failed");
                        return;
                    }
                },
                None => out,
            }
        };
        if !out.is_empty() {
            let (r, _) = wr.write_all(out).await;
            if r.is_err() {
                return;
            }
        }
        if closed.get() {
            return;
        }
    }
}

async fn serve_agent(state: Shared, stream: UnixStream, kicks: Kicks) {
    let (mut rd, wr) = stream.into_split();
    let closed = Rc::new(Cell::new(false));
    let writer = monoio::spawn(ipc_writer(
        state.clone(),
        wr,
        kicks.ipc_out.clone(),
        closed.clone(),
    ));
    kicks.ipc_out.kick(); // events queued before the agent connected
    let mut framer = LineFramer::default();
    let mut buf = Vec::with_capacity(STREAM_READ_BYTES);
    let mut lines = Vec::new();
    loop {
        // Backpressure: while a DataChannel is over its limits, stop reading the agent;
        // its writes then block in the socket buffer.
        while state.borrow_mut().engine.ipc_paused() {
            // The engine says when the peers drain; the timeout is a safety net.
            let _ = select2(kicks.ipc_resume.wait(), monoio::time::sleep(IPC_RECHECK)).await;
        }
        buf.clear();
        let (r, b) = rd.read(buf).await;
        buf = b;
        match r {
            Ok(0) | Err(_) => break,
            Ok(n) => framer.push(&buf[..n], &mut lines),
        }
        // Every line of this read, a bounded batch at a time, each batch followed by one
        // drive of the peers it touched.
        {
            let mut s = state.borrow_mut();
            for batch in lines.chunks(IPC_BATCH_LINES_MAX) {
                s.input(Input::Ipc(batch));
            }
        }
        lines.clear();
    }
    closed.set(true);
    kicks.ipc_out.kick();
    writer.await;
}

async fn ipc_writer(
    state: Shared,
    mut wr: monoio::io::OwnedWriteHalf<UnixStream>,
    kick: Kick,
    closed: Rc<Cell<bool>>,
) {
    let mut batch = Vec::with_capacity(STREAM_READ_BYTES);
    loop {
        kick.wait().await;
        if closed.get() {
            return;
        }
        loop {
            batch.clear();
            {
                let mut s = state.borrow_mut();
                while batch.len() < STREAM_READ_BYTES {
                    match s.pop_ipc_out() {
                        Some(l) => batch.extend_from_slice(&l),
                        None => break,
                    }
                }
            }
            if batch.is_empty() {
                break;
            }
            let (r, b) = wr.write_all(batch).await;
            batch = b;
            if r.is_err() {
                return;
            }
        }
    }
}
