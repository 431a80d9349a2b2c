//! Datagrams in and out, and the candidates beyond host ones: STUN binding probes for
//! server-reflexive addresses and the TURN client for the relay candidate.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_core::RngCore;
use str0m::net::{Protocol, Receive};
use str0m::Candidate;

use super::super::config::TurnConfig;
use super::super::stun;
use super::super::turn::{TurnClient, TurnEvent};
use super::{CloseReason, Engine, EngineError, Output};
use wire::ws::signaling::SignalMessage;

/// STUN binding retransmissions before a STUN server is given up (never blocking).
pub const STUN_TRIES_MAX: u32 = 3;
const STUN_RTO: Duration = Duration::from_millis(500);

/// After a TURN allocation failed (or was lost), a new one is tried this much later.
pub const TURN_RETRY_DELAY: Duration = Duration::from_secs(10);

pub(super) struct StunProbe {
    sock: usize,
    server: SocketAddr,
    tid: [u8; 12],
    tries: u32,
    pub next: Instant,
}

/// The TURN client and where its traffic goes.
pub(super) struct Turn {
    pub client: TurnClient,
    path: TurnPath,
    config: TurnConfig,
    /// When to replace a failed client with a fresh allocation.
    pub retry_at: Option<Instant>,
    /// The credentials carry our peer id, not known yet: the client is not started
    /// until the token exchange names us.
    waiting_identity: bool,
}

/// How the TURN client's messages travel.
enum TurnPath {
    /// As datagrams on UDP socket `sock` to `client.server()`.
    Udp(usize),
    /// Framed on the driver's TCP connection from `local` (`Output::TurnStream`).
    Tcp {
        local: SocketAddr,
        framer: turn::framing::StreamFramer,
        /// The connection closed: a new one was asked for.
        closed: bool,
    },
}

impl Engine {
    /// Routes a datagram from local address `source` (a socket, a srflx address of a
    /// socket, or the TURN relay) to `dest`.
    pub(super) fn queue_udp(
        &mut self,
        now: Instant,
        source: SocketAddr,
        dest: SocketAddr,
        data: Vec<u8>,
    ) {
        if let Some(t) = self.turn.as_mut() {
            if t.client.relayed() == Some(source) {
                // From our relay candidate: a Send indication to the TURN server (after
                // the CreatePermission it may have queued for a new peer).
                let ind = t.client.send_indication(now, dest, &data);
                self.flush_turn();
                if let Some(ind) = ind {
                    self.emit_turn(ind);
                }
                return;
            }
        }
        let idx = self.locals.iter().position(|a| *a == source).or_else(|| {
            let base = self.srflx.iter().find(|(m, _)| *m == source)?.1;
            self.locals.iter().position(|a| *a == base)
        });
        let Some(i) = idx else {
            tracing::debug!(%source, "no socket for transmit source");
            return;
        };
        self.emit_udp(i, dest, data);
    }

    fn emit_udp(&mut self, sock: usize, dest: SocketAddr, data: Vec<u8>) {
        self.emit(Output::Transmit { sock, dest, data });
    }

    /// A message for the TURN server, on its path.
    fn emit_turn(&mut self, msg: Vec<u8>) {
        let Some(t) = &self.turn else { return };
        match t.path {
            TurnPath::Udp(sock) => {
                let server = t.client.server();
                self.emit_udp(sock, server, msg);
            }
            TurnPath::Tcp { .. } => self.emit(Output::TurnStream(msg)),
        }
    }

    /// A datagram arrived on UDP socket `sock` from `source`.
    pub(super) fn handle_udp(
        &mut self,
        now: Instant,
        sock: usize,
        source: SocketAddr,
        data: &[u8],
    ) {
        if let Some(t) = self.turn.as_mut() {
            if matches!(t.path, TurnPath::Udp(s) if s == sock) && source == t.client.server() {
                self.turn_message(now, data);
                return;
            }
        }
        if !data.is_empty() && data[0] < 2 {
            if let Some(i) = self
                .stun
                .iter()
                .position(|p| p.sock == sock && p.server == source)
            {
                if let Some(mapped) = stun::parse_binding_response(data, &self.stun[i].tid) {
                    let base = self.locals[sock];
                    self.stun.remove(i);
                    self.add_srflx(now, mapped, base);
                    return;
                }
            }
        }
        let destination = self.locals[sock];
        self.handle_packet(now, source, destination, data);
    }

    /// A datagram for the peers, from `source` to our `destination` (a host address,
    /// or the relayed address for what came through TURN), demultiplexed by the peer
    /// table's maps.
    fn handle_packet(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) {
        let Some(k) = self.peers.demux(source, destination, data) else {
            self.stats.unmatched_datagrams += 1;
            tracing::trace!(%source, "datagram for no peer");
            return;
        };
        let Ok(contents) = data.try_into() else {
            return;
        };
        let input = str0m::Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents,
            },
        );
        let p = &mut self.peers.slab[k];
        p.last_rx = now;
        if let Err(e) = p.rtc.handle_input(input) {
            tracing::warn!(peer = %p.id, error = %e, "rtc input failed");
            self.remove_peer(k, CloseReason::RtcError);
            return;
        }
        self.drive(k, now);
    }

    // ---- STUN -----------------------------------------------------------------------

    /// Starts STUN binding probes from every non-loopback socket to `servers`.
    pub(super) fn start_stun(&mut self, now: Instant, servers: &[SocketAddr]) {
        for (sock, local) in self.locals.clone().into_iter().enumerate() {
            if local.ip().is_loopback() {
                continue;
            }
            for s in servers {
                if s.is_ipv4() != local.is_ipv4() {
                    continue;
                }
                let mut tid = [0u8; 12];
                self.rng.fill_bytes(&mut tid);
                self.stun.push(StunProbe {
                    sock,
                    server: *s,
                    tid,
                    tries: 0,
                    next: now,
                });
            }
        }
        self.stun_timeout(now);
    }

    pub(super) fn stun_timeout(&mut self, now: Instant) {
        let mut probes = std::mem::take(&mut self.stun);
        probes.retain_mut(|p| {
            if p.next > now {
                return true;
            }
            if p.tries >= STUN_TRIES_MAX {
                tracing::info!(server = %p.server, "STUN server did not answer; no srflx candidate from it");
                return false;
            }
            p.tries += 1;
            p.next = now + STUN_RTO * (1 << (p.tries - 1));
            self.emit_udp(p.sock, p.server, stun::binding_request(p.tid));
            true
        });
        for p in &probes {
            self.wake_at(p.next);
        }
        self.stun = probes;
    }

    fn add_srflx(&mut self, now: Instant, mapped: SocketAddr, base: SocketAddr) {
        if mapped == base || self.srflx.iter().any(|(m, b)| *m == mapped && *b == base) {
            return;
        }
        tracing::info!(%mapped, %base, "server-reflexive address");
        self.srflx.push((mapped, base));
        if self.relay_only {
            return;
        }
        self.add_candidate_to_all(now, |_| {
            Candidate::server_reflexive(mapped, base, "udp").ok()
        });
    }

    /// Adds a newly learnt local candidate (`make` builds one per peer; `None` stops) to
    /// every existing peer and trickles it to the remote.
    fn add_candidate_to_all(&mut self, now: Instant, make: impl Fn(&Self) -> Option<Candidate>) {
        for k in self.peers.keys() {
            let Some(c) = make(self) else {
                return;
            };
            let added = self.peers.slab[k]
                .rtc
                .add_local_candidate(c)
                .map(|c| c.to_sdp_string());
            if let (Some(s), Some(me)) = (added, self.me.clone()) {
                let p = &self.peers.slab[k];
                let (id, mid) = (p.id.clone(), p.mid.clone());
                self.queue_signal(SignalMessage::candidate(&me, &id, s, &mid));
            }
            self.drive(k, now);
        }
    }

    // ---- TURN -----------------------------------------------------------------------

    /// Starts allocating on the TURN server `server` (resolved by the driver), from the
    /// local socket that can reach it: loopback for a loopback server, else the first
    /// non-loopback socket of its address family.
    pub(super) fn start_turn(
        &mut self,
        now: Instant,
        server: SocketAddr,
        config: TurnConfig,
    ) -> Result<(), EngineError> {
        let fam = |a: &SocketAddr| a.is_ipv4() == server.is_ipv4();
        let sock = self
            .locals
            .iter()
            .position(|a| fam(a) && a.ip().is_loopback() == server.ip().is_loopback())
            .or_else(|| self.locals.iter().position(fam))
            .ok_or(EngineError::NoSocketForTurn(server))?;
        tracing::info!(%server, local = %self.locals[sock], "TURN: allocating (UDP)");
        self.install_turn(now, server, TurnPath::Udp(sock), config);
        Ok(())
    }

    /// Starts allocating over a TCP connection the driver opened to `server` from
    /// `local` (a new connection replaces an earlier allocation).
    pub(super) fn start_turn_stream(
        &mut self,
        now: Instant,
        server: SocketAddr,
        local: SocketAddr,
        config: TurnConfig,
    ) {
        tracing::info!(%server, %local, "TURN: allocating (TCP)");
        let path = TurnPath::Tcp {
            local,
            framer: turn::framing::StreamFramer::new(),
            closed: false,
        };
        self.install_turn(now, server, path, config);
    }

    fn install_turn(
        &mut self,
        now: Instant,
        server: SocketAddr,
        path: TurnPath,
        config: TurnConfig,
    ) {
        let waiting_identity = config.needs_identity() && self.me.is_none();
        let reliable = matches!(path, TurnPath::Tcp { .. });
        let client = if waiting_identity {
            tracing::info!("TURN: waiting for our peer id (the credentials carry it)");
            TurnClient::new(server, "", "", 0)
        } else {
            self.new_turn_client(now, server, &config, reliable)
        };
        self.turn = Some(Turn {
            client,
            path,
            config,
            retry_at: None,
            waiting_identity,
        });
        self.after_turn(now);
    }

    fn new_turn_client(
        &mut self,
        now: Instant,
        server: SocketAddr,
        config: &TurnConfig,
        reliable: bool,
    ) -> TurnClient {
        let (username, password) = config.credentials(self.me.as_deref());
        let mut client = TurnClient::new(server, &username, &password, self.rng.next_u64());
        if reliable {
            client = client.reliable();
        }
        client.start(now);
        client
    }

    /// The token exchange named us: a TURN client waiting for it starts.
    pub(super) fn turn_identity(&mut self, now: Instant) {
        let Some(t) = self.turn.as_mut() else { return };
        if !t.waiting_identity {
            return;
        }
        t.waiting_identity = false;
        let (server, config) = (t.client.server(), t.config.clone());
        let reliable = matches!(t.path, TurnPath::Tcp { .. });
        let client = self.new_turn_client(now, server, &config, reliable);
        if let Some(t) = self.turn.as_mut() {
            t.client = client;
        }
        self.after_turn(now);
    }

    /// A message from the TURN server (a datagram, or one framed off the stream).
    fn turn_message(&mut self, now: Instant, data: &[u8]) {
        let Some(t) = self.turn.as_mut() else { return };
        let relayed = t.client.relayed();
        let from_peer = t.client.handle_datagram(now, data);
        self.after_turn(now);
        // A Data indication: the peer's datagram, as received on our relayed address.
        if let (Some((peer, payload)), Some(relayed)) = (from_peer, relayed) {
            self.handle_packet(now, peer, relayed, &payload);
        }
    }

    /// Bytes from the TURN TCP connection.
    pub(super) fn turn_stream(&mut self, now: Instant, data: &[u8]) {
        let mut msgs = Vec::new();
        {
            let Some(Turn {
                path: TurnPath::Tcp { framer, .. },
                ..
            }) = self.turn.as_mut()
            else {
                return;
            };
            framer.push(data);
            loop {
                match framer.next() {
                    Ok(Some(m)) => msgs.push(m.to_vec()),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "TURN: the TCP connection carries garbage");
                        break;
                    }
                }
            }
        }
        for m in msgs {
            self.turn_message(now, &m);
        }
    }

    /// The TURN TCP connection closed: the allocation is gone (retried later on a new
    /// connection).
    pub(super) fn turn_stream_closed(&mut self, now: Instant) {
        if let Some(t) = self.turn.as_mut() {
            if let TurnPath::Tcp { closed, .. } = &mut t.path {
                *closed = true;
                t.client
                    .lost("the TCP connection to the TURN server closed");
            }
        }
        self.after_turn(now);
    }

    /// The relay candidate, once allocated.
    pub(super) fn relay_candidate(&self) -> Option<Candidate> {
        let t = self.turn.as_ref()?;
        let relayed = t.client.relayed()?;
        let local = match &t.path {
            TurnPath::Udp(sock) => self.locals[*sock],
            TurnPath::Tcp { local, .. } => *local,
        };
        // The relayed address is UDP whatever carries our messages to the server.
        Candidate::relayed(relayed, local, "udp").ok()
    }

    /// Moves the TURN client's messages to the output.
    fn flush_turn(&mut self) {
        let Some(t) = self.turn.as_mut() else { return };
        let mut out = Vec::new();
        while let Some(b) = t.client.poll_transmit() {
            out.push(b);
        }
        let next = [t.client.poll_timeout(), t.retry_at];
        for b in out {
            self.emit_turn(b);
        }
        for n in next.into_iter().flatten() {
            self.wake_at(n);
        }
    }

    /// Flushes the TURN client and acts on its events.
    fn after_turn(&mut self, now: Instant) {
        self.flush_turn();
        loop {
            let Some(t) = self.turn.as_mut() else { return };
            let Some(ev) = t.client.poll_event() else {
                break;
            };
            match ev {
                TurnEvent::Allocated { relayed, mapped } => {
                    tracing::info!(%relayed, ?mapped, "relay candidate");
                    self.add_candidate_to_all(now, |e| e.relay_candidate());
                }
                TurnEvent::Failed(reason) => {
                    tracing::warn!(%reason, retry_in = ?TURN_RETRY_DELAY, "TURN: no relay candidate");
                    t.retry_at = Some(now + TURN_RETRY_DELAY);
                    self.wake_at(now + TURN_RETRY_DELAY);
                }
            }
        }
        self.flush_turn();
    }

    pub(super) fn turn_timeout(&mut self, now: Instant) {
        let Some(t) = self.turn.as_mut() else { return };
        if t.retry_at.is_some_and(|r| r <= now) {
            t.retry_at = None;
            let (server, config) = (t.client.server(), t.config.clone());
            match &t.path {
                TurnPath::Tcp { closed: true, .. } => {
                    // A new allocation needs a new connection: the driver opens it
                    // and says so with Input::TurnStreamOpen.
                    tracing::info!(%server, "TURN: reconnecting (TCP)");
                    self.emit(Output::TurnReconnect);
                    return;
                }
                path => {
                    let reliable = matches!(path, TurnPath::Tcp { .. });
                    tracing::info!(%server, "TURN: allocating again");
                    let client = self.new_turn_client(now, server, &config, reliable);
                    if let Some(t) = self.turn.as_mut() {
                        t.client = client;
                    }
                }
            }
        } else {
            t.client.handle_timeout(now);
        }
        self.after_turn(now);
    }

    /// Asks the TURN server to let `peer` reach our relayed address.
    pub(super) fn turn_permit(&mut self, now: Instant, peer: SocketAddr) {
        if let Some(t) = self.turn.as_mut() {
            t.client.add_permission(now, peer);
            self.flush_turn();
        }
    }

    /// Permissions for the candidates in a remote SDP.
    pub(super) fn turn_permit_sdp(&mut self, now: Instant, sdp: &str) {
        if self.turn.is_none() {
            return;
        }
        for l in sdp.lines() {
            let Some(c) = l.trim().strip_prefix("a=") else {
                continue;
            };
            if let Ok(c) = Candidate::from_sdp_string(c) {
                self.turn_permit(now, c.addr());
            }
        }
    }
}
