//! The I/O around [`Engine`]: everything runs as tasks on one reactor shard, sharing the
//! engine through `Rc<RefCell<_>>` (never borrowed across an `.await`).
//!
//! Tasks: per UDP socket a reader and a writer; the timer (str0m's `Output::Timeout`,
//! STUN and TURN retransmits and refreshes, redial); the signaling session loop (token → WebSocket → register,
//! reconnect with backoff) with its writer; the IPC accept loop with a reader and a
//! writer per agent connection; STUN and TURN server resolution.

use std::cell::{Cell, RefCell};
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
use super::engine::{Engine, Kicks};
use super::http_client::{token_request, ResponseReader};
use super::ipc::{self, Framed, LineFramer};
use super::kick::Kick;
use super::resolve::resolve;
use super::signaling::Backoff;
use super::turn::parse_turn_url;
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

type Shared = Rc<RefCell<Engine>>;

/// What the main thread prepares (binding sockets and the IPC socket file is start-up
/// work done before the shard runs, so no file system call happens on the shard).
pub struct Prepared {
    pub config: SidecarConfig,
    pub udp: Vec<std::net::UdpSocket>,
    pub ipc: std::os::unix::net::UnixListener,
    /// Set when the agent hangs up: the process exits, as the reference does.
    pub done: Arc<AtomicBool>,
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
    for s in p.udp {
        match UdpSocket::from_std(s) {
            Ok(s) => socks.push(Rc::new(s)),
            Err(e) => tracing::error!(error = %e, "cannot register UDP socket"),
        }
    }
    let locals: Vec<SocketAddr> = socks.iter().filter_map(|s| s.local_addr().ok()).collect();
    tracing::info!(?locals, "host candidates");
    let kicks = Kicks {
        udp: socks.iter().map(|_| Kick::default()).collect(),
        ..Kicks::default()
    };
    let engine: Shared = Rc::new(RefCell::new(Engine::new(
        now,
        locals,
        p.config.relay_only,
        kicks.clone(),
    )));
    for (i, s) in socks.iter().enumerate() {
        monoio::spawn(udp_reader(engine.clone(), i, s.clone()));
        monoio::spawn(udp_writer(
            engine.clone(),
            i,
            s.clone(),
            kicks.udp[i].clone(),
        ));
    }
    monoio::spawn(timer(engine.clone(), kicks.timer.clone()));
    if p.config.stun_servers.is_empty() {
        tracing::info!("no STUN server configured: no srflx candidates");
    } else {
        tracing::info!(servers = ?p.config.stun_servers, "STUN servers");
        monoio::spawn(stun_setup(engine.clone(), p.config.stun_servers.clone()));
    }
    match &p.config.turn {
        Some(turn) => {
            monoio::spawn(turn_setup(engine.clone(), turn.clone()));
        }
        None if p.config.relay_only => {
            tracing::warn!("ICE_TRANSPORT_POLICY=relay without TURN_URL: no candidates at all");
        }
        None => {}
    }
    monoio::spawn(signaling_loop(engine.clone(), p.config.clone()));
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
            serve_agent(engine.clone(), stream, kicks).await;
            tracing::info!("agent disconnected; exiting");
        }
        Err(e) => tracing::error!(error = %e, "IPC accept failed"),
    }
    p.done.store(true, Ordering::Release);
}

async fn udp_reader(engine: Shared, i: usize, sock: Rc<UdpSocket>) {
    let mut buf = Vec::with_capacity(UDP_RECV_BYTES);
    loop {
        let (res, b) = sock.recv_from(buf).await;
        buf = b;
        match res {
            Ok((n, src)) => {
                engine
                    .borrow_mut()
                    .handle_udp(Instant::now(), i, src, &buf[..n]);
            }
            Err(e) => {
                tracing::debug!(error = %e, "udp recv error");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        buf.clear();
    }
}

async fn udp_writer(engine: Shared, i: usize, sock: Rc<UdpSocket>, kick: Kick) {
    loop {
        kick.wait().await;
        loop {
            let next = engine.borrow_mut().udp_out[i].pop_front();
            let Some((data, dest)) = next else { break };
            let (res, _) = sock.send_to(data, dest).await;
            if let Err(e) = res {
                // Unreachable pairs (loopback → LAN and the like) are normal during ICE.
                tracing::trace!(%dest, error = %e, "udp send failed");
            }
        }
    }
}

async fn timer(engine: Shared, kick: Kick) {
    loop {
        let now = Instant::now();
        let deadline = {
            let mut e = engine.borrow_mut();
            let d = e.next_timeout(now);
            e.timer_deadline = d;
            d
        };
        let wait = deadline.saturating_duration_since(now);
        if !wait.is_zero() {
            let _ = select2(monoio::time::sleep(wait), kick.wait()).await;
        }
        engine.borrow_mut().handle_timeout(Instant::now());
    }
}

async fn stun_setup(engine: Shared, servers: Vec<(String, u16)>) {
    let mut addrs = Vec::new();
    for (host, port) in servers {
        match resolve(&host, port).await {
            Ok(a) => addrs.extend(a),
            Err(e) => tracing::warn!(error = %e, "STUN server not resolved; continuing without it"),
        }
    }
    if !addrs.is_empty() {
        engine.borrow_mut().start_stun(Instant::now(), &addrs);
    }
}

/// Resolves the TURN server and starts the allocation (the engine retries failures).
async fn turn_setup(engine: Shared, turn: TurnConfig) {
    let (host, port) = match parse_turn_url(&turn.url) {
        Ok(hp) => hp,
        Err(e) => {
            tracing::warn!(error = %e, "TURN_URL not usable: no relay candidates");
            return;
        }
    };
    match resolve(&host, port).await {
        Ok(addrs) if !addrs.is_empty() => {
            let server = addrs.iter().find(|a| a.is_ipv4()).unwrap_or(&addrs[0]);
            engine
                .borrow_mut()
                .start_turn(Instant::now(), *server, turn);
        }
        Ok(_) => tracing::warn!(%host, "TURN server has no address: no relay candidates"),
        Err(e) => tracing::warn!(error = %e, "TURN server not resolved: no relay candidates"),
    }
}

async fn connect(host: &str, port: u16) -> Result<TcpStream, String> {
    let addrs = resolve(host, port).await?;
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
    Err(last)
}

async fn signaling_loop(engine: Shared, cfg: SidecarConfig) {
    let mut backoff = Backoff::default();
    loop {
        match session(&engine, &cfg, &mut backoff).await {
            Ok(()) => tracing::warn!("signaling connection closed"),
            Err(e) => tracing::warn!(error = %e, "signaling connection failed"),
        }
        engine.borrow_mut().signaling_closed();
        let d = backoff.next_delay();
        tracing::info!(delay = ?d, "reconnecting to signaling");
        monoio::time::sleep(d).await;
    }
}

/// One signaling session: token exchange, WebSocket, register, then frames until the
/// connection drops.
async fn session(
    engine: &Shared,
    cfg: &SidecarConfig,
    backoff: &mut Backoff,
) -> Result<(), String> {
    if cfg.token_url.is_tls() || cfg.signaling_url.is_tls() {
        return Err("https/wss URLs are not supported by this build (use http/ws)".into());
    }
    // 1. API key → JWT.
    let mut s = connect(&cfg.token_url.host, cfg.token_url.port).await?;
    let (r, _) = s
        .write_all(token_request(&cfg.token_url, &cfg.api_key))
        .await;
    r.map_err(|e| e.to_string())?;
    let mut reader = ResponseReader::default();
    let mut buf = Vec::with_capacity(STREAM_READ_BYTES);
    let token = loop {
        let (r, b) = s.read(buf).await;
        buf = b;
        let n = r.map_err(|e| e.to_string())?;
        if n == 0 {
            break reader.finish()?;
        }
        if let Some(t) = reader.feed(&buf[..n])? {
            break t;
        }
        buf.clear();
    };
    drop(s);
    tracing::info!(peer_id = %token.peer_id, "authenticated");
    engine.borrow_mut().set_identity(token.peer_id.clone());

    // 2. WebSocket.
    let stream = connect(&cfg.signaling_url.host, cfg.signaling_url.port).await?;
    let _ = stream.set_tcp_keepalive(
        Some(SIGNAL_KEEPALIVE.0),
        Some(SIGNAL_KEEPALIVE.1),
        Some(SIGNAL_KEEPALIVE.2),
    );
    let (mut rd, wr) = stream.into_split();
    let ws = Rc::new(RefCell::new(WsClient::new(
        &cfg.signaling_url,
        &token.token,
    )));
    let closed = Rc::new(Cell::new(false));
    let wkick = engine.borrow().kicks.signal_out.clone();
    let writer = monoio::spawn(signal_writer(
        engine.clone(),
        ws.clone(),
        wr,
        wkick.clone(),
        closed.clone(),
    ));
    wkick.kick(); // sends the upgrade request
    let result = loop {
        buf.clear();
        let (r, b) = rd.read(buf).await;
        buf = b;
        let n = match r {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(e.to_string()),
        };
        let events = match ws.borrow_mut().feed(&buf[..n]) {
            Ok(ev) => ev,
            Err(e) => break Err(e),
        };
        wkick.kick(); // pongs, close replies
        let mut end = false;
        for ev in events {
            match ev {
                WsEvent::Open => {
                    tracing::info!("signaling connected");
                    engine.borrow_mut().signaling_opened();
                }
                WsEvent::Text(t) => {
                    if engine.borrow_mut().handle_signal(Instant::now(), &t) {
                        backoff.reset();
                    }
                }
                WsEvent::Closed => end = true,
            }
        }
        if end {
            break Ok(());
        }
    };
    closed.set(true);
    wkick.kick();
    writer.await;
    result
}

async fn signal_writer(
    engine: Shared,
    ws: Rc<RefCell<WsClient>>,
    mut wr: monoio::io::OwnedWriteHalf<TcpStream>,
    kick: Kick,
    closed: Rc<Cell<bool>>,
) {
    loop {
        kick.wait().await;
        if closed.get() {
            return;
        }
        let out = {
            let mut ws = ws.borrow_mut();
            if ws.is_open() {
                let msgs: Vec<String> = engine.borrow_mut().signal_out.drain(..).collect();
                for m in msgs {
                    if let Err(e) = ws.send_text(m) {
                        tracing::warn!(error = %e, "signaling send failed");
                    }
                }
            }
            ws.take_outbound()
        };
        if out.is_empty() {
            continue;
        }
        let (r, _) = wr.write_all(out).await;
        if r.is_err() {
            return;
        }
    }
}

async fn serve_agent(engine: Shared, stream: UnixStream, kicks: Kicks) {
    let (mut rd, wr) = stream.into_split();
    let closed = Rc::new(Cell::new(false));
    let writer = monoio::spawn(ipc_writer(
        engine.clone(),
        wr,
        kicks.ipc_out.clone(),
        closed.clone(),
    ));
    kicks.ipc_out.kick(); // events queued before the agent connected
    let mut framer = LineFramer::default();
    let mut buf = Vec::with_capacity(STREAM_READ_BYTES);
    let mut lines = Vec::new();
    loop {
        // Backpressure: while a DataChannel is over its buffered limit, stop reading the
        // agent; its writes then block in the socket buffer.
        loop {
            {
                let mut e = engine.borrow_mut();
                let paused = e.ipc_paused();
                e.ipc_waiting = paused;
                if !paused {
                    break;
                }
            }
            // The engine kicks us when the peers drain; the timeout is a safety net.
            let _ = select2(kicks.ipc_resume.wait(), monoio::time::sleep(IPC_RECHECK)).await;
        }
        buf.clear();
        let (r, b) = rd.read(buf).await;
        buf = b;
        match r {
            Ok(0) | Err(_) => break,
            Ok(n) => framer.push(&buf[..n], &mut lines),
        }
        let mut e = engine.borrow_mut();
        for item in lines.drain(..) {
            match item {
                Framed::Line(l) => e.handle_ipc_line(Instant::now(), &l),
                Framed::TooLong => {
                    let reason = format!("line longer than {} bytes", ipc::IPC_LINE_BYTES_MAX);
                    e.handle_ipc_too_long(&reason);
                }
            }
        }
    }
    closed.set(true);
    kicks.ipc_out.kick();
    writer.await;
}

async fn ipc_writer(
    engine: Shared,
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
                let mut e = engine.borrow_mut();
                while batch.len() < STREAM_READ_BYTES {
                    match e.pop_ipc_out() {
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
