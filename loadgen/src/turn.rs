//! `chatixia-core bench turn`: a TURN server's relaying rate and cost (issue 24), for
//! any server that takes TURN REST credentials (`use-auth-secret`): this one, coturn.
//!
//! N clients (one UDP socket each, from `--bind`, 127.0.0.1 by default) allocate over UDP (401, then with
//! credentials `<expiry>:bench-<i>`), and each binds a channel (or, with
//! `--send-indications`, creates a permission) to one peer socket of the load
//! generator. Then, closed loop: each client keeps `--window` ChannelData messages of
//! `--size` payload bytes in flight; the peer echoes every datagram that reaches it back
//! to the relayed address it came from; each echo that comes back to the client is
//! replaced by a new message. Every round trip is two relayed datagrams (client → peer,
//! peer → client). A client that hears nothing for [`LOSS_TIMEOUT`] counts its window
//! as lost and sends a new one.
//!
//! Reported: relayed datagrams per second, round trips lost, allocations per second
//! (the 401 and the Allocate of every client, pipelined), and with `--server-pid` the
//! server's CPU per relayed datagram and its RSS before and after the allocations (per
//! allocation). One thread, epoll and `recvmmsg`/`sendmmsg` (`reactor::udp`), so the
//! load generator is not the bottleneck: pin it to another CPU than the server.

use std::cell::Cell;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reactor::udp::{Poller, RecvBatch, SendBatch};
use serde_json::{json, Value};
use turn::auth::{long_term_key, rest_credentials};
use turn::framing;
use turn::stun::{self, attr, method, Builder, Class};

/// A client that hears nothing back for this long counts its window as lost.
pub const LOSS_TIMEOUT: Duration = Duration::from_millis(200);
/// Allocation requests are retransmitted after this, up to [`TRIES_MAX`] times.
const RTO: Duration = Duration::from_millis(500);
const TRIES_MAX: u32 = 6;
/// Socket buffers asked for (the kernel caps them at net.core.[rw]mem_max).
const SOCKET_BUFFER_BYTES: usize = 8 << 20;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The TURN server (UDP).
    #[arg(long, default_value = "127.0.0.1:3478")]
    pub server: SocketAddr,
    /// The address the clients' and the peer's sockets bind (another host's, when the
    /// load generator runs in a network namespace); default: the loopback address of
    /// the server's family.
    #[arg(long)]
    pub bind: Option<std::net::IpAddr>,
    /// The TURN REST shared secret (the server's TURN_SECRET / static-auth-secret).
    #[arg(long)]
    pub secret: String,
    /// Allocations (clients).
    #[arg(long, default_value_t = 100)]
    pub allocations: usize,
    /// Payload bytes of each relayed datagram.
    #[arg(long, default_value_t = 120)]
    pub size: usize,
    /// Messages each client keeps in flight (closed loop, without --rate).
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Open loop: relayed datagrams per second in all (half client → peer, half the
    /// echoes back), sent by every client in bursts every --burst-ms. 0: closed loop.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Open loop: each client sends what is due every this many milliseconds, as one
    /// burst (media sends a frame's packets back to back).
    #[arg(long, default_value_t = 5)]
    pub burst_ms: u64,
    /// Measured seconds (0: allocate, measure memory, and stop).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds of traffic before the measured window.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Relay with Send/Data indications instead of channels.
    #[arg(long)]
    pub send_indications: bool,
    /// Send each client's burst (and the peer's echoes to one relayed address) as one
    /// UDP GSO send: on loopback a run stays one packet up to the receiving socket, so a
    /// server that asks for UDP_GRO receives it whole — what a NIC's GRO does with a
    /// flow's back-to-back packets. A server without GRO gets the datagrams one by one.
    #[arg(long)]
    pub gso: bool,
    /// Ask for UDP_GRO on the load generator's own sockets: a server's GSO runs reach
    /// them whole instead of being cut up on delivery (on loopback, delivery is charged
    /// to the sending server's CPU; across a network it is the receiver's).
    #[arg(long)]
    pub gro: bool,
    /// The server's pid: its CPU per relayed datagram and its RSS per allocation.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

struct Client {
    sock: UdpSocket,
    username: String,
    password: String,
    key: Option<[u8; 16]>,
    realm: Vec<u8>,
    nonce: Vec<u8>,
    relayed: Option<SocketAddr>,
    /// The pending request's transaction id, bytes, sends and next send.
    req: Option<([u8; 12], Vec<u8>, u32, Instant)>,
    step: Step,
    in_flight: usize,
    last_rx: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    Challenge,
    Allocate,
    Bind,
    Ready,
}

fn tid(i: usize, n: u32) -> [u8; 12] {
    let mut t = [0u8; 12];
    t[..8].copy_from_slice(&(i as u64).to_be_bytes());
    t[8..].copy_from_slice(&n.to_be_bytes());
    t
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Client {
    fn request(&mut self, i: usize, seq: u32, peer: SocketAddr, channels: bool, now: Instant) {
        let t = tid(i, seq);
        let mut b = Vec::with_capacity(128);
        let (m, with_auth) = match self.step {
            Step::Challenge => (method::ALLOCATE, false),
            Step::Allocate => (method::ALLOCATE, true),
            _ if channels => (method::CHANNEL_BIND, true),
            _ => (method::CREATE_PERMISSION, true),
        };
        let mut w = Builder::new(&mut b, m, Class::Request, t);
        match m {
            method::ALLOCATE => {
                w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            }
            method::CHANNEL_BIND => {
                w.attr(attr::CHANNEL_NUMBER, &[0x40, 0, 0, 0])
                    .xor_address(attr::XOR_PEER_ADDRESS, peer);
            }
            _ => {
                w.xor_address(attr::XOR_PEER_ADDRESS, peer);
            }
        }
        if with_auth {
            let key = *self.key.get_or_insert_with(|| {
                long_term_key(
                    &self.username,
                    std::str::from_utf8(&self.realm).unwrap_or(""),
                    &self.password,
                )
            });
            w.attr(attr::USERNAME, self.username.as_bytes())
                .attr(attr::REALM, &self.realm)
                .attr(attr::NONCE, &self.nonce)
                .integrity(&key);
        }
        w.fingerprint();
        w.finish();
        let _ = self.sock.send(&b);
        self.req = Some((t, b, 1, now + RTO));
    }

    /// A response to the pending request: moves to the next step.
    fn on_response(&mut self, pkt: &[u8]) -> Result<bool, String> {
        let m = stun::parse(pkt).map_err(|e| e.to_string())?;
        let Some((t, ..)) = &self.req else {
            return Ok(false);
        };
        if m.tid != *t {
            return Ok(false);
        }
        self.req = None;
        match (self.step, m.class) {
            (Step::Challenge, Class::Error) => {
                self.realm = m.get(attr::REALM).ok_or("401 without REALM")?.to_vec();
                self.nonce = m.get(attr::NONCE).ok_or("401 without NONCE")?.to_vec();
                self.step = Step::Allocate;
            }
            (Step::Allocate, Class::Success) => {
                self.relayed = m.xor_address(attr::XOR_RELAYED_ADDRESS);
                self.step = Step::Bind;
            }
            (Step::Bind, Class::Success) => self.step = Step::Ready,
            (s, _) => {
                let (code, why) = m.error_code().unwrap_or((0, ""));
                return Err(format!("{s:?}: {code} {why}"));
            }
        }
        Ok(true)
    }
}

/// Runs the scenario; the report and whether it succeeded.
/// Sends what `msgs` holds (a batch's worth) on `fd`: as GSO runs while `gso` holds,
/// and after the kernel refuses one, one by one from then on (that batch included).
fn send_batch<'a, I>(tx: &mut SendBatch, fd: RawFd, gso: &Cell<bool>, msgs: I) -> io::Result<usize>
where
    I: Iterator<Item = (&'a [u8], SocketAddr)> + Clone,
{
    if gso.get() {
        match tx.send_gso(fd, msgs.clone()) {
            Err(e) if reactor::udp::gso_refused(&e) => gso.set(false),
            r => return r,
        }
    }
    tx.send(fd, msgs)
}

pub fn run(a: Args) -> Result<(Value, bool), String> {
    if a.allocations == 0 || a.window == 0 || a.size == 0 || a.size > 1400 {
        return Err("--allocations and --window must be at least 1, --size 1 to 1400".into());
    }
    let channels = !a.send_indications;
    let bind = a.bind.unwrap_or(if a.server.is_ipv4() {
        std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST)
    } else {
        std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
    });
    let peer_sock =
        UdpSocket::bind((bind, 0)).map_err(|e| format!("peer socket on {bind}: {e}"))?;
    peer_sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    // Room for bursts: a full buffer would count as the server's loss.
    let _ = socket2::SockRef::from(&peer_sock).set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket2::SockRef::from(&peer_sock).set_send_buffer_size(SOCKET_BUFFER_BYTES);
    let peer = peer_sock.local_addr().map_err(|e| e.to_string())?;
    if a.gro {
        reactor::udp::enable_gro(peer_sock.as_raw_fd()).map_err(|e| format!("UDP_GRO: {e}"))?;
    }
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 86_400;
    let mut clients = Vec::with_capacity(a.allocations);
    let mut poller = Poller::new(256).map_err(|e| format!("epoll: {e}"))?;
    for i in 0..a.allocations {
        let sock = UdpSocket::bind((bind, 0)).map_err(|e| format!("client socket: {e}"))?;
        sock.connect(a.server)
            .map_err(|e| format!("connect {}: {e}", a.server))?;
        sock.set_nonblocking(true).map_err(|e| e.to_string())?;
        let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(SOCKET_BUFFER_BYTES / 4);
        if a.gro {
            reactor::udp::enable_gro(sock.as_raw_fd()).map_err(|e| format!("UDP_GRO: {e}"))?;
        }
        poller
            .add(sock.as_raw_fd(), i as u64)
            .map_err(|e| format!("epoll: {e}"))?;
        let (username, password) =
            rest_credentials(a.secret.as_bytes(), expiry, &format!("bench-{i}"));
        clients.push(Client {
            sock,
            username,
            password,
            key: None,
            realm: Vec::new(),
            nonce: Vec::new(),
            relayed: None,
            req: None,
            step: Step::Challenge,
            in_flight: 0,
            last_rx: Instant::now(),
        });
    }
    let peer_token = a.allocations as u64;
    poller
        .add(peer_sock.as_raw_fd(), peer_token)
        .map_err(|e| format!("epoll: {e}"))?;
    let rss_before = a.server_pid.and_then(rss_kib);

    // ---- allocations -----------------------------------------------------------------
    let mut rx = RecvBatch::new(
        64,
        if a.gro {
            reactor::udp::GRO_BYTES_MAX
        } else {
            2048
        },
    );
    let mut ready = Vec::new();
    let t0 = Instant::now();
    let mut seq = 0u32;
    for (i, c) in clients.iter_mut().enumerate() {
        seq += 1;
        c.request(i, seq, peer, channels, t0);
    }
    let mut allocated_at = None;
    let deadline = t0 + Duration::from_secs(30);
    loop {
        let now = Instant::now();
        if clients.iter().all(|c| c.step == Step::Ready) {
            break;
        }
        if now > deadline {
            let stuck = clients.iter().filter(|c| c.step != Step::Ready).count();
            return Err(format!(
                "{stuck} of {} clients did not finish allocating in 30 s",
                clients.len()
            ));
        }
        if allocated_at.is_none() && clients.iter().all(|c| c.step as u8 >= Step::Bind as u8) {
            allocated_at = Some(now);
        }
        poller.wait(10, &mut ready).map_err(|e| e.to_string())?;
        for &tok in &ready {
            if tok == peer_token {
                continue;
            }
            let i = tok as usize;
            let c = &mut clients[i];
            while let Ok(n) = rx.recv(c.sock.as_raw_fd()) {
                for k in 0..n {
                    let (d, _) = rx.get(k);
                    for r in rx.segments(k) {
                        if c.on_response(&d[r])? && c.step != Step::Ready {
                            seq += 1;
                            c.request(i, seq, peer, channels, now);
                        }
                    }
                }
            }
        }
        for c in clients.iter_mut() {
            if let Some((_, b, sends, next)) = &mut c.req {
                if *next <= now {
                    if *sends >= TRIES_MAX {
                        return Err(format!("no answer to {:?} after {TRIES_MAX} sends", c.step));
                    }
                    let _ = c.sock.send(b);
                    *sends += 1;
                    *next = now + RTO * (1 << (*sends - 1));
                }
            }
        }
    }
    let allocated_at = allocated_at.unwrap_or_else(Instant::now);
    let alloc_secs = (allocated_at - t0).as_secs_f64();
    // RSS settles once the server answered everything.
    std::thread::sleep(Duration::from_millis(200));
    let rss_after = a.server_pid.and_then(rss_kib);
    let mut report = json!({
        "scenario": "turn",
        "server": a.server.to_string(),
        "allocations": a.allocations,
        "size": a.size,
        "window": a.window,
        "relay": if channels { "channels" } else { "send-indications" },
        "client_gso": a.gso,
        "client_gro": a.gro,
        "allocations_per_s": (a.allocations as f64 / alloc_secs.max(1e-9)).round(),
    });
    if let (Some(b), Some(af)) = (rss_before, rss_after) {
        report["server_rss_kib_before"] = json!(b);
        report["server_rss_kib_after"] = json!(af);
        report["server_rss_bytes_per_allocation"] =
            json!(((af as f64 - b as f64) * 1024.0 / a.allocations as f64).round());
    }
    if a.duration <= 0.0 {
        return Ok((report, true));
    }

    // ---- traffic ---------------------------------------------------------------------
    // Each message's first 8 bytes carry its send time (ns since `start`): the echo
    // gives the round trip.
    let start = Instant::now();
    let build = |at: Instant| -> Vec<u8> {
        let mut payload = vec![0x5a; a.size];
        let ns = (at - start).as_nanos() as u64;
        let n = a.size.min(8);
        payload[..n].copy_from_slice(&ns.to_be_bytes()[..n]);
        let mut msg = Vec::with_capacity(a.size + 64);
        if channels {
            framing::write_channel_data(&mut msg, 0x4000, &payload, false);
        } else {
            let mut w = Builder::new(&mut msg, method::SEND, Class::Indication, [7; 12]);
            w.xor_address(attr::XOR_PEER_ADDRESS, peer)
                .attr(attr::DATA, &payload);
            w.finish();
        }
        msg
    };
    let mut tx = SendBatch::new();
    let mut msg = build(start);
    // GSO sends, until the kernel refuses one (then one by one, for the clients and the
    // peer alike).
    let gso = Cell::new(a.gso);
    let send_n = |c: &mut Client, tx: &mut SendBatch, msg: &[u8], n: usize| -> usize {
        let fd = c.sock.as_raw_fd();
        let mut sent = 0;
        while sent < n {
            match send_batch(tx, fd, &gso, std::iter::repeat_n((msg, a.server), n - sent)) {
                Ok(k) if k > 0 => sent += k,
                _ => break,
            }
        }
        c.in_flight += sent;
        sent
    };
    let open_loop = a.rate > 0;
    if !open_loop {
        for c in clients.iter_mut() {
            c.last_rx = start;
            send_n(c, &mut tx, &msg, a.window);
        }
    }
    let sampler = match a.server_pid {
        Some(pid) => Some(crate::server_cpu::Sampler::start(pid)?),
        None => None,
    };
    let measure_from = start + Duration::from_secs_f64(a.warmup);
    let measure_to = measure_from + Duration::from_secs_f64(a.duration);
    // Open loop: after the window, a short drain collects the last echoes.
    let drain_to = measure_to + Duration::from_millis(if open_loop { 300 } else { 0 });
    let (mut rt, mut lost, mut peer_rx, mut bad) = (0u64, 0u64, 0u64, 0u64);
    let (mut rt_in, mut lost_in, mut sent_in) = (0u64, 0u64, 0u64);
    let mut rtt = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)
        .map_err(|e| e.to_string())?;
    let mut echo: Vec<(usize, std::ops::Range<usize>, SocketAddr)> = Vec::with_capacity(64);
    let mut last_loss_check = start;
    let burst = Duration::from_millis(a.burst_ms.max(1));
    // Open loop: per client, messages per burst (fractions carried over).
    let per_burst = a.rate as f64 / 2.0 / a.allocations as f64 * burst.as_secs_f64();
    let mut owed = vec![0.0f64; clients.len()];
    let mut next_burst = start;
    loop {
        let now = Instant::now();
        if now >= drain_to {
            break;
        }
        let measuring = now >= measure_from && now < measure_to;
        if open_loop && now >= next_burst && now < measure_to {
            next_burst += burst;
            if next_burst < now {
                next_burst = now + burst; // fell behind: skip, do not bunch
            }
            msg = build(now);
            for (i, c) in clients.iter_mut().enumerate() {
                owed[i] += per_burst;
                let n = owed[i] as usize;
                owed[i] -= n as f64;
                let sent = send_n(c, &mut tx, &msg, n);
                if measuring {
                    sent_in += sent as u64;
                }
            }
        }
        let wait_ms = if open_loop {
            next_burst
                .saturating_duration_since(Instant::now())
                .as_millis() as i32
        } else {
            1
        };
        poller
            .wait(wait_ms, &mut ready)
            .map_err(|e| e.to_string())?;
        let now = Instant::now();
        let measuring = now >= measure_from && now < measure_to;
        for &tok in &ready {
            if tok == peer_token {
                // Echo every datagram back to the relayed address it came from.
                for _ in 0..8 {
                    let Ok(n) = rx.recv(peer_sock.as_raw_fd()) else {
                        break;
                    };
                    echo.clear();
                    for k in 0..n {
                        if let (_, Some(from)) = rx.get(k) {
                            echo.extend(rx.segments(k).map(|r| (k, r, from)));
                        }
                    }
                    peer_rx += echo.len() as u64;
                    let msgs: Vec<(&[u8], SocketAddr)> = echo
                        .iter()
                        .map(|(k, r, from)| (&rx.get(*k).0[r.clone()], *from))
                        .collect();
                    let mut off = 0;
                    while off < msgs.len() {
                        let rest = msgs[off..].iter().copied();
                        match send_batch(&mut tx, peer_sock.as_raw_fd(), &gso, rest) {
                            Ok(k) => off += k.max(1),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(_) => off += 1,
                        }
                    }
                    if n < rx.capacity() {
                        break;
                    }
                }
                continue;
            }
            let i = tok as usize;
            let fd = clients[i].sock.as_raw_fd();
            let mut got = 0usize;
            let now_ns = (now - start).as_nanos() as u64;
            while let Ok(n) = rx.recv(fd) {
                for (k, r) in (0..n).flat_map(|k| rx.segments(k).map(move |r| (k, r))) {
                    let d = &rx.get(k).0[r];
                    let payload = if channels {
                        framing::parse_channel_data(d).map(|(_, p)| p)
                    } else {
                        stun::parse(d).ok().and_then(|m| m.get(attr::DATA))
                    };
                    match payload {
                        Some(p) if p.len() == a.size => {
                            got += 1;
                            if measuring && p.len() >= 8 {
                                let t = u64::from_be_bytes(p[..8].try_into().unwrap_or([0; 8]));
                                let _ = rtt.record((now_ns.saturating_sub(t) / 1000).max(1));
                            }
                        }
                        _ => bad += 1,
                    }
                }
                if n < rx.capacity() {
                    break;
                }
            }
            let c = &mut clients[i];
            c.in_flight = c.in_flight.saturating_sub(got);
            rt += got as u64;
            if measuring {
                rt_in += got as u64;
            }
            if got > 0 {
                c.last_rx = now;
                if !open_loop && now < measure_to {
                    msg = build(now);
                    send_n(c, &mut tx, &msg, got);
                }
            }
        }
        if !open_loop && now - last_loss_check >= LOSS_TIMEOUT / 4 {
            last_loss_check = now;
            for c in clients.iter_mut() {
                if now - c.last_rx >= LOSS_TIMEOUT {
                    lost += c.in_flight as u64;
                    if measuring {
                        lost_in += c.in_flight as u64;
                    }
                    c.in_flight = 0;
                    c.last_rx = now;
                    msg = build(now);
                    send_n(c, &mut tx, &msg, a.window);
                }
            }
        }
    }
    if open_loop {
        // What was sent in the window and never came back (the drain waited 300 ms).
        lost_in = sent_in.saturating_sub(rt_in);
        lost = clients.iter().map(|c| c.in_flight as u64).sum();
        report["rate_offered"] = json!(a.rate);
        report["burst_ms"] = json!(a.burst_ms);
    }
    report["rtt_us"] = json!({
        "p50": rtt.value_at_quantile(0.5),
        "p99": rtt.value_at_quantile(0.99),
        "p999": rtt.value_at_quantile(0.999),
    });
    // Release the allocations (Refresh, lifetime 0; not waited for).
    for (i, c) in clients.iter_mut().enumerate() {
        c.step = Step::Bind;
        let t = tid(i, u32::MAX);
        let mut b = Vec::with_capacity(128);
        let key = c.key.unwrap_or_default();
        let mut w = Builder::new(&mut b, method::REFRESH, Class::Request, t);
        w.u32(attr::LIFETIME, 0)
            .attr(attr::USERNAME, c.username.as_bytes())
            .attr(attr::REALM, &c.realm)
            .attr(attr::NONCE, &c.nonce)
            .integrity(&key)
            .fingerprint();
        w.finish();
        let _ = c.sock.send(&b);
    }
    let secs = a.duration;
    let relayed = 2 * rt_in;
    report["relayed_per_s"] = json!((relayed as f64 / secs).round());
    if open_loop {
        report["sent_measured"] = json!(sent_in);
    }
    report["round_trips"] = json!(rt);
    report["round_trips_measured"] = json!(rt_in);
    report["lost_measured"] = json!(lost_in);
    report["lost_total"] = json!(lost);
    report["peer_received"] = json!(peer_rx);
    report["malformed_echoes"] = json!(bad);
    if let Some(s) = &sampler {
        report["server_cpu"] = s.report(measure_from, measure_to, relayed);
    }
    let ok = rt_in > 0 && bad == 0;
    Ok((report, ok))
}
