//! The sidecar's core, sans-IO: one `Rtc` per remote peer in a slab (demultiplexed with
//! [`Rtc::accepts`]), the signaling and IPC glue, STUN probes, and every outbound queue.
//! The driver feeds it datagrams, signaling texts, IPC lines and timeouts, and drains
//! its queues; [`Kick`]s tell the driver's tasks when a queue has something for them.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use slab::Slab;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

use super::config::TurnConfig;
use super::ipc::{self, Command, MeshMessage};
use super::kick::Kick;
use super::signaling::SignalMessage;
use super::stun;
use super::turn::{TurnClient, TurnEvent};

/// The DataChannel label the mesh uses.
pub const CHANNEL_LABEL: &str = "mesh";

/// str0m's send buffer per peer (SCTP data not yet acknowledged). Larger than
/// [`DC_BUFFERED_HIGH_BYTES`] plus one IPC line, so a line that passed the
/// backpressure check always fits eventually (str0m refuses a write that does not fit
/// whole, and we keep it in the peer's outbox until it does).
pub const SCTP_BUFFERED_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Backpressure to the agent: while any connected peer has more than this many bytes
/// buffered (str0m's buffered amount plus our outbox), the driver stops reading the IPC
/// socket; the agent's writes then block in its socket buffer. 1 MiB keeps a loopback
/// or LAN path busy (bandwidth × RTT) without letting one slow peer hold much memory.
pub const DC_BUFFERED_HIGH_BYTES: usize = 1024 * 1024;

/// str0m tells us (`ChannelBufferedAmountLow`) when a channel drains below this; we
/// then flush the outbox and resume reading the agent.
pub const DC_BUFFERED_LOW_BYTES: usize = 256 * 1024;

/// Bytes of events queued for the agent (the IPC writer drains it). Bounded because an
/// agent that stops reading must not grow our memory; when full, incoming DataChannel
/// messages are dropped (counted and logged). Peer lifecycle and replies to commands
/// are always queued: they are small and bounded by the number of peers and commands.
pub const IPC_OUT_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Datagrams waiting for each UDP socket's writer. A full queue drops the datagram:
/// UDP is lossy anyway and ICE, DTLS and SCTP retransmit.
pub const UDP_OUT_DATAGRAMS_MAX: usize = 4096;

/// Signaling messages waiting for the WebSocket writer. Offers, answers and a handful of
/// candidates per peer; when full (a stalled server) further messages are dropped, and
/// the peer connection attempt times out and is retried.
pub const SIGNAL_OUT_MESSAGES_MAX: usize = 1024;

/// Remote candidates that arrive before the offer that creates their peer, kept for at
/// most this many peers and this many candidates each; extras are dropped (the SDP
/// carries candidates too).
pub const EARLY_CANDIDATE_PEERS_MAX: usize = 256;
pub const EARLY_CANDIDATES_PER_PEER_MAX: usize = 32;

/// A peer whose DataChannel has not opened after this long is dropped, so a later
/// `peer_list` or `connect` can try again.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// After a connected peer drops on its own, re-register (which makes the server send a
/// fresh `peer_list`, which re-offers) after this delay, as the reference does.
pub const REDIAL_DELAY: Duration = Duration::from_secs(3);

/// ICE consent checking: a nominated pair is re-checked every `ICE_MAX_RTO` and given up
/// after `ICE_RETRANSMITS_MAX` unanswered checks, which puts the "peer gone" verdict
/// about 4.5 s after the remote stops answering (str0m's defaults take ~25 s).
pub const ICE_MAX_RTO: Duration = Duration::from_millis(1000);
pub const ICE_RETRANSMITS_MAX: usize = 5;

/// A connected peer from which no datagram at all arrived for this long is declared
/// gone. str0m checks the nominated pair every [`ICE_MAX_RTO`] and any ICE stack answers
/// those checks, so a live peer is never silent for more than about a second; str0m's
/// own verdict takes at least 15 s (it trusts a pair for 15 s after the remote's last
/// binding request), too slow for "disconnection noticed within a few seconds".
pub const PEER_SILENCE_TIMEOUT: Duration = Duration::from_secs(4);

/// STUN binding retransmissions before a STUN server is given up (never blocking).
pub const STUN_TRIES_MAX: u32 = 3;
const STUN_RTO: Duration = Duration::from_millis(500);

/// After a TURN allocation failed (or was lost), a new one is tried this much later.
pub const TURN_RETRY_DELAY: Duration = Duration::from_secs(10);

/// A timer this far out is as good as none; the timer task re-checks at least this often.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// The `typ` of each candidate line, e.g. `host,host,relay` (for the log).
fn candidate_types(cands: &[String]) -> String {
    let types: Vec<&str> = cands
        .iter()
        .filter_map(|c| c.split_whitespace().skip_while(|w| *w != "typ").nth(1))
        .collect();
    types.join(",")
}

/// The driver's wakeups.
#[derive(Clone, Default)]
pub struct Kicks {
    pub udp: Vec<Kick>,
    pub signal_out: Kick,
    pub ipc_out: Kick,
    pub ipc_resume: Kick,
    pub timer: Kick,
}

struct Peer {
    id: String,
    rtc: Rtc,
    /// Our offer, until its answer arrives.
    pending: Option<SdpPendingOffer>,
    channel: Option<ChannelId>,
    /// `peer_connected` was sent (and `peer_disconnected` is owed).
    announced: bool,
    mid: String,
    /// Messages accepted from the agent that str0m's buffer did not take yet.
    outbox: VecDeque<Vec<u8>>,
    outbox_bytes: usize,
    next_timeout: Instant,
    created: Instant,
    /// When the last datagram from this peer arrived.
    last_rx: Instant,
}

struct StunProbe {
    sock: usize,
    server: SocketAddr,
    tid: [u8; 12],
    tries: u32,
    next: Instant,
}

/// The TURN client and where its traffic goes: UDP socket `sock` to `client.server()`.
struct Turn {
    client: TurnClient,
    sock: usize,
    config: TurnConfig,
    /// When to replace a failed client with a fresh allocation.
    retry_at: Option<Instant>,
}

/// Counters for the log and tests.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub udp_dropped: u64,
    pub ipc_dropped: u64,
    pub signal_dropped: u64,
}

pub struct Engine {
    me: Option<String>,
    relay_only: bool,
    /// Local address of each UDP socket, by socket index.
    locals: Vec<SocketAddr>,
    /// (mapped, base) server-reflexive addresses found so far.
    srflx: Vec<(SocketAddr, SocketAddr)>,
    peers: Slab<Peer>,
    by_id: HashMap<String, usize>,
    early: HashMap<String, Vec<Candidate>>,
    stun: Vec<StunProbe>,
    turn: Option<Turn>,
    signaling_up: bool,
    redial_at: Option<Instant>,
    /// The IPC reader is paused on backpressure: `drive` re-checks the limit and kicks
    /// it as soon as every peer is back under [`DC_BUFFERED_HIGH_BYTES`].
    pub ipc_waiting: bool,
    /// When the timer task will next wake (so we know when to kick it earlier).
    pub timer_deadline: Instant,
    pub udp_out: Vec<VecDeque<(Vec<u8>, SocketAddr)>>,
    pub signal_out: VecDeque<String>,
    pub ipc_out: VecDeque<Vec<u8>>,
    ipc_out_bytes: usize,
    pub kicks: Kicks,
    pub stats: Stats,
}

impl Engine {
    pub fn new(now: Instant, locals: Vec<SocketAddr>, relay_only: bool, kicks: Kicks) -> Engine {
        Engine {
            me: None,
            relay_only,
            udp_out: locals.iter().map(|_| VecDeque::new()).collect(),
            locals,
            srflx: Vec::new(),
            peers: Slab::new(),
            by_id: HashMap::new(),
            early: HashMap::new(),
            stun: Vec::new(),
            turn: None,
            signaling_up: false,
            redial_at: None,
            ipc_waiting: false,
            timer_deadline: now,
            signal_out: VecDeque::new(),
            ipc_out: VecDeque::new(),
            ipc_out_bytes: 0,
            kicks,
            stats: Stats::default(),
        }
    }

    pub fn me(&self) -> Option<&str> {
        self.me.as_deref()
    }

    /// Peers whose DataChannel is open, sorted.
    pub fn connected_peers(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.announced)
            .map(|(_, p)| p.id.clone())
            .collect();
        v.sort();
        v
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    // ---- queues -------------------------------------------------------------------

    fn queue_agent(&mut self, line: Vec<u8>, droppable: bool) {
        if droppable && self.ipc_out_bytes + line.len() > IPC_OUT_BYTES_MAX {
            self.stats.ipc_dropped += 1;
            tracing::warn!(
                dropped = self.stats.ipc_dropped,
                "agent is not reading: DataChannel message dropped"
            );
            return;
        }
        self.ipc_out_bytes += line.len();
        self.ipc_out.push_back(line);
        self.kicks.ipc_out.kick();
    }

    /// The IPC writer took a line.
    pub fn pop_ipc_out(&mut self) -> Option<Vec<u8>> {
        let l = self.ipc_out.pop_front()?;
        self.ipc_out_bytes -= l.len();
        Some(l)
    }

    fn queue_signal(&mut self, m: SignalMessage) {
        if !self.signaling_up {
            return;
        }
        if self.signal_out.len() >= SIGNAL_OUT_MESSAGES_MAX {
            self.stats.signal_dropped += 1;
            tracing::warn!(kind = %m.kind, "signaling queue full: message dropped");
            return;
        }
        self.signal_out.push_back(m.to_text());
        self.kicks.signal_out.kick();
    }

    fn queue_udp(&mut self, now: Instant, source: SocketAddr, dest: SocketAddr, data: Vec<u8>) {
        if let Some(t) = self.turn.as_mut() {
            if t.client.relayed() == Some(source) {
                // From our relay candidate: a Send indication to the TURN server (after
                // the CreatePermission it may have queued for a new peer).
                let ind = t.client.send_indication(now, dest, &data);
                self.flush_turn();
                if let Some(t) = &self.turn {
                    if let Some(ind) = ind {
                        let (sock, server) = (t.sock, t.client.server());
                        self.push_udp(sock, server, ind);
                    }
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
        self.push_udp(i, dest, data);
    }

    fn push_udp(&mut self, i: usize, dest: SocketAddr, data: Vec<u8>) {
        if self.udp_out[i].len() >= UDP_OUT_DATAGRAMS_MAX {
            self.stats.udp_dropped += 1;
            return;
        }
        self.udp_out[i].push_back((data, dest));
        self.kicks.udp[i].kick();
    }

    // ---- TURN -----------------------------------------------------------------------

    /// Starts allocating on the TURN server `server` (resolved by the driver), from the
    /// local socket that can reach it: loopback for a loopback server, else the first
    /// non-loopback socket of its address family.
    pub fn start_turn(&mut self, now: Instant, server: SocketAddr, config: TurnConfig) {
        let fam = |a: &SocketAddr| a.is_ipv4() == server.is_ipv4();
        let sock = self
            .locals
            .iter()
            .position(|a| fam(a) && a.ip().is_loopback() == server.ip().is_loopback())
            .or_else(|| self.locals.iter().position(fam));
        let Some(sock) = sock else {
            tracing::warn!(%server, "no local socket can reach the TURN server");
            return;
        };
        tracing::info!(%server, local = %self.locals[sock], "TURN: allocating");
        let (username, password) = config.credentials();
        let mut client = TurnClient::new(server, &username, &password);
        client.start(now);
        self.turn = Some(Turn {
            client,
            sock,
            config,
            retry_at: None,
        });
        self.after_turn(now);
    }

    /// The relay candidate, once allocated.
    fn relay_candidate(&self) -> Option<Candidate> {
        let t = self.turn.as_ref()?;
        let relayed = t.client.relayed()?;
        Candidate::relayed(relayed, self.locals[t.sock], "udp").ok()
    }

    /// Moves the TURN client's datagrams to its socket's queue.
    fn flush_turn(&mut self) {
        let Some(t) = self.turn.as_mut() else { return };
        let (sock, server) = (t.sock, t.client.server());
        let mut out = Vec::new();
        while let Some(b) = t.client.poll_transmit() {
            out.push(b);
        }
        for b in out {
            self.push_udp(sock, server, b);
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
                    self.kicks.timer.kick();
                }
            }
        }
        self.flush_turn();
    }

    /// Asks the TURN server to let `peer` reach our relayed address.
    fn turn_permit(&mut self, now: Instant, peer: SocketAddr) {
        if let Some(t) = self.turn.as_mut() {
            t.client.add_permission(now, peer);
            self.flush_turn();
        }
    }

    /// Permissions for the candidates in a remote SDP.
    fn turn_permit_sdp(&mut self, now: Instant, sdp: &str) {
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

    // ---- signaling ------------------------------------------------------------------

    /// Authenticated as `peer_id`.
    pub fn set_identity(&mut self, peer_id: String) {
        self.me = Some(peer_id);
    }

    /// The WebSocket is open: register.
    pub fn signaling_opened(&mut self) {
        self.signaling_up = true;
        if let Some(me) = self.me.clone() {
            self.queue_signal(SignalMessage::register(&me));
        }
    }

    /// The WebSocket dropped: every peer connection is closed (PROTOCOL.md §8).
    pub fn signaling_closed(&mut self) {
        self.signaling_up = false;
        self.signal_out.clear();
        self.early.clear();
        self.redial_at = None;
        let all: Vec<usize> = self.peers.iter().map(|(k, _)| k).collect();
        for k in all {
            self.remove_peer(k, "signaling connection lost");
        }
    }

    /// A text frame from the signaling server. Returns true on `peer_list` (the
    /// connection is fully up: the driver resets its backoff).
    pub fn handle_signal(&mut self, now: Instant, text: &str) -> bool {
        let Ok(m) = serde_json::from_str::<SignalMessage>(text) else {
            tracing::debug!("unparsable signaling frame ignored");
            return false;
        };
        let Some(me) = self.me.clone() else {
            return false;
        };
        match m.kind.as_str() {
            "peer_list" => {
                let peers: Vec<String> = m
                    .payload
                    .get("peers")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                tracing::info!(?peers, "peer_list");
                for p in peers {
                    if p != me && !self.by_id.contains_key(&p) {
                        self.start_offer(now, &p);
                    }
                }
                return true;
            }
            "offer" => {
                if let Some(sdp) = m.payload.get("sdp").and_then(Value::as_str) {
                    self.on_offer(now, &m.peer_id, sdp);
                }
            }
            "answer" => {
                if let Some(sdp) = m.payload.get("sdp").and_then(Value::as_str) {
                    self.on_answer(now, &m.peer_id, sdp);
                }
            }
            "ice_candidate" => {
                if let Some(c) = m.payload.get("candidate").and_then(Value::as_str) {
                    self.on_remote_candidate(now, &m.peer_id, c);
                }
            }
            other => tracing::debug!(kind = other, "signaling message ignored"),
        }
        false
    }

    /// A fresh `Rtc` with our candidates, and those candidates as `candidate:` strings.
    fn new_rtc(&self, now: Instant) -> (Rtc, Vec<String>) {
        let mut cfg = Rtc::builder().set_sctp_max_buffered_amount(SCTP_BUFFERED_BYTES_MAX);
        cfg.set_max_stun_rto(ICE_MAX_RTO);
        cfg.set_max_stun_retransmits(ICE_RETRANSMITS_MAX);
        let mut rtc = cfg.build(now);
        let mut strings = Vec::new();
        if !self.relay_only {
            let host = self.locals.iter().map(|a| Candidate::host(*a, "udp"));
            let srflx = self
                .srflx
                .iter()
                .map(|(m, b)| Candidate::server_reflexive(*m, *b, "udp"));
            for c in host.chain(srflx).flatten() {
                if let Some(c) = rtc.add_local_candidate(c) {
                    strings.push(c.to_sdp_string());
                }
            }
        }
        if let Some(c) = self.relay_candidate() {
            if let Some(c) = rtc.add_local_candidate(c) {
                strings.push(c.to_sdp_string());
            }
        }
        (rtc, strings)
    }

    fn insert_peer(
        &mut self,
        now: Instant,
        id: &str,
        rtc: Rtc,
        pending: Option<SdpPendingOffer>,
        sdp: &str,
    ) -> usize {
        let mid = sdp
            .lines()
            .find_map(|l| l.trim().strip_prefix("a=mid:"))
            .unwrap_or("0")
            .to_string();
        let k = self.peers.insert(Peer {
            id: id.to_string(),
            rtc,
            pending,
            channel: None,
            announced: false,
            mid,
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            next_timeout: now,
            created: now,
            last_rx: now,
        });
        self.by_id.insert(id.to_string(), k);
        k
    }

    /// Trickles our local candidates to the peer (they are in the SDP too; trickling
    /// them as well matches the reference and stacks that expect candidates separately).
    fn trickle_local(&mut self, k: usize, cands: Vec<String>) {
        let Some(me) = self.me.clone() else { return };
        let p = &self.peers[k];
        let (id, mid) = (p.id.clone(), p.mid.clone());
        for c in cands {
            self.queue_signal(SignalMessage::candidate(&me, &id, c, &mid));
        }
    }

    fn start_offer(&mut self, now: Instant, remote: &str) {
        let Some(me) = self.me.clone() else { return };
        let (mut rtc, cands) = self.new_rtc(now);
        let mut api = rtc.sdp_api();
        api.add_channel(CHANNEL_LABEL.to_string());
        let Some((offer, pending)) = api.apply() else {
            tracing::error!("str0m produced no offer");
            return;
        };
        let sdp = offer.to_sdp_string();
        let k = self.insert_peer(now, remote, rtc, Some(pending), &sdp);
        tracing::info!(peer = remote, candidates = %candidate_types(&cands), "offering");
        self.queue_signal(SignalMessage::sdp("offer", &me, remote, sdp));
        self.trickle_local(k, cands);
        self.apply_early(k);
        self.drive(k, now);
    }

    fn on_offer(&mut self, now: Instant, from: &str, sdp: &str) {
        let Some(me) = self.me.clone() else { return };
        if from == me || from.is_empty() {
            return;
        }
        if let Some(&k) = self.by_id.get(from) {
            let glare = self.peers[k].pending.is_some();
            if glare && me.as_str() < from {
                tracing::info!(peer = from, "offer glare: keeping ours");
                return;
            }
            self.remove_peer(k, "replaced by a new offer");
        }
        self.turn_permit_sdp(now, sdp);
        let offer = match SdpOffer::from_sdp_string(sdp) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(peer = from, error = %e, "bad offer");
                return;
            }
        };
        let (mut rtc, cands) = self.new_rtc(now);
        let answer = match rtc.sdp_api().accept_offer(offer) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(peer = from, error = %e, "cannot accept offer");
                return;
            }
        };
        let sdp = answer.to_sdp_string();
        let k = self.insert_peer(now, from, rtc, None, &sdp);
        tracing::info!(peer = from, candidates = %candidate_types(&cands), "answering");
        self.queue_signal(SignalMessage::sdp("answer", &me, from, sdp));
        self.trickle_local(k, cands);
        self.apply_early(k);
        self.drive(k, now);
    }

    fn on_answer(&mut self, now: Instant, from: &str, sdp: &str) {
        let Some(&k) = self.by_id.get(from) else {
            return;
        };
        let Some(pending) = self.peers[k].pending.take() else {
            return;
        };
        self.turn_permit_sdp(now, sdp);
        let answer = match SdpAnswer::from_sdp_string(sdp) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(peer = from, error = %e, "bad answer");
                self.remove_peer(k, "bad answer");
                return;
            }
        };
        if let Err(e) = self.peers[k].rtc.sdp_api().accept_answer(pending, answer) {
            tracing::warn!(peer = from, error = %e, "cannot accept answer");
            self.remove_peer(k, "answer refused");
            return;
        }
        self.drive(k, now);
    }

    fn on_remote_candidate(&mut self, now: Instant, from: &str, cand: &str) {
        let s = cand.trim();
        let s = s.strip_prefix("a=").unwrap_or(s);
        if s.is_empty() {
            return; // end-of-candidates
        }
        let c = match Candidate::from_sdp_string(s) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(peer = from, error = %e, "remote candidate ignored");
                return;
            }
        };
        self.turn_permit(now, c.addr());
        match self.by_id.get(from) {
            Some(&k) => {
                self.peers[k].rtc.add_remote_candidate(c);
                self.drive(k, now);
            }
            None => {
                if !self.early.contains_key(from) && self.early.len() >= EARLY_CANDIDATE_PEERS_MAX {
                    return;
                }
                let v = self.early.entry(from.to_string()).or_default();
                if v.len() < EARLY_CANDIDATES_PER_PEER_MAX {
                    v.push(c);
                }
            }
        }
    }

    fn apply_early(&mut self, k: usize) {
        if let Some(cands) = self.early.remove(&self.peers[k].id) {
            for c in cands {
                self.peers[k].rtc.add_remote_candidate(c);
            }
        }
    }

    // ---- network --------------------------------------------------------------------

    /// A datagram arrived on UDP socket `sock` from `source`.
    pub fn handle_udp(&mut self, now: Instant, sock: usize, source: SocketAddr, data: &[u8]) {
        if let Some(t) = self.turn.as_mut() {
            if sock == t.sock && source == t.client.server() {
                let relayed = t.client.relayed();
                let from_peer = t.client.handle_datagram(now, data);
                self.after_turn(now);
                // A Data indication: the peer's datagram, as received on our relayed
                // address.
                if let (Some((peer, payload)), Some(relayed)) = (from_peer, relayed) {
                    self.handle_packet(now, peer, relayed, &payload);
                }
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
    /// or the relayed address for what came through TURN).
    fn handle_packet(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) {
        let Ok(contents) = data.try_into() else {
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents,
            },
        );
        let Some(k) = self
            .peers
            .iter()
            .find(|(_, p)| p.rtc.accepts(&input))
            .map(|(k, _)| k)
        else {
            tracing::trace!(%source, "datagram for no peer");
            return;
        };
        self.peers[k].last_rx = now;
        if let Err(e) = self.peers[k].rtc.handle_input(input) {
            tracing::warn!(peer = %self.peers[k].id, error = %e, "rtc input failed");
            self.remove_peer(k, "rtc error");
            return;
        }
        self.drive(k, now);
    }

    /// Starts STUN binding probes from every non-loopback socket to `servers`.
    pub fn start_stun(&mut self, now: Instant, servers: &[SocketAddr]) {
        for (sock, local) in self.locals.clone().into_iter().enumerate() {
            if local.ip().is_loopback() {
                continue;
            }
            for s in servers {
                if s.is_ipv4() != local.is_ipv4() {
                    continue;
                }
                let mut tid = [0u8; 12];
                let _ = getrandom::getrandom(&mut tid);
                self.stun.push(StunProbe {
                    sock,
                    server: *s,
                    tid,
                    tries: 0,
                    next: now,
                });
            }
        }
        self.kicks.timer.kick();
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
        let keys: Vec<usize> = self.peers.iter().map(|(k, _)| k).collect();
        for k in keys {
            let Some(c) = make(self) else {
                return;
            };
            let added = self.peers[k]
                .rtc
                .add_local_candidate(c)
                .map(|c| c.to_sdp_string());
            if let (Some(s), Some(me)) = (added, self.me.clone()) {
                let (id, mid) = (self.peers[k].id.clone(), self.peers[k].mid.clone());
                self.queue_signal(SignalMessage::candidate(&me, &id, s, &mid));
            }
            self.drive(k, now);
        }
    }

    /// Time passed: drive the peers, probes and redial that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<usize> = self
            .peers
            .iter()
            .filter(|(_, p)| p.next_timeout <= now)
            .map(|(k, _)| k)
            .collect();
        for k in due {
            if !self.peers.contains(k) {
                continue;
            }
            if let Err(e) = self.peers[k].rtc.handle_input(Input::Timeout(now)) {
                tracing::warn!(peer = %self.peers[k].id, error = %e, "rtc timeout failed");
                self.remove_peer(k, "rtc error");
                continue;
            }
            self.drive(k, now);
        }
        let stale: Vec<usize> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.announced && now.duration_since(p.created) > PEER_CONNECT_TIMEOUT)
            .map(|(k, _)| k)
            .collect();
        for k in stale {
            self.remove_peer(k, "connection attempt timed out");
        }
        let silent: Vec<usize> = self
            .peers
            .iter()
            .filter(|(_, p)| p.announced && now.duration_since(p.last_rx) > PEER_SILENCE_TIMEOUT)
            .map(|(k, _)| k)
            .collect();
        for k in silent {
            self.remove_peer_involuntary(k, now, "peer silent");
        }
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
            let local = self.locals[p.sock];
            self.queue_udp(now, local, p.server, stun::binding_request(p.tid));
            true
        });
        self.stun = probes;
        if let Some(t) = self.turn.as_mut() {
            if t.retry_at.is_some_and(|r| r <= now) {
                t.retry_at = None;
                tracing::info!(server = %t.client.server(), "TURN: allocating again");
                let (username, password) = t.config.credentials();
                t.client = TurnClient::new(t.client.server(), &username, &password);
                t.client.start(now);
            } else {
                t.client.handle_timeout(now);
            }
            self.after_turn(now);
        }
        if self.redial_at.is_some_and(|t| t <= now) {
            self.redial_at = None;
            if let Some(me) = self.me.clone() {
                tracing::info!("re-registering to re-dial lost peers");
                self.queue_signal(SignalMessage::register(&me));
            }
        }
    }

    /// When [`Engine::handle_timeout`] next has work.
    pub fn next_timeout(&self, now: Instant) -> Instant {
        let mut t = now + IDLE_TICK;
        for (_, p) in &self.peers {
            t = t.min(p.next_timeout);
            if p.announced {
                t = t.min(p.last_rx + PEER_SILENCE_TIMEOUT + Duration::from_millis(1));
            } else {
                t = t.min(p.created + PEER_CONNECT_TIMEOUT);
            }
        }
        for p in &self.stun {
            t = t.min(p.next);
        }
        if let Some(r) = self.redial_at {
            t = t.min(r);
        }
        if let Some(turn) = &self.turn {
            let next = [turn.client.poll_timeout(), turn.retry_at];
            for n in next.into_iter().flatten() {
                t = t.min(n);
            }
        }
        t
    }

    /// Polls peer `k` until it has nothing more to say right now.
    fn drive(&mut self, k: usize, now: Instant) {
        let mut close: Option<&'static str> = None;
        let mut resume = false;
        loop {
            let Some(p) = self.peers.get_mut(k) else {
                return;
            };
            if !p.rtc.is_alive() {
                close = Some("rtc closed");
                break;
            }
            let out = match p.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(peer = %p.id, error = %e, "rtc failed");
                    close = Some("rtc error");
                    break;
                }
            };
            match out {
                Output::Timeout(t) => {
                    p.next_timeout = t.max(now);
                    break;
                }
                Output::Transmit(t) => {
                    let (src, dst) = (t.source, t.destination);
                    self.queue_udp(now, src, dst, t.contents.into());
                }
                Output::Event(e) => match e {
                    Event::IceConnectionStateChange(s) => {
                        tracing::debug!(peer = %p.id, state = ?s, "ice");
                        if s == IceConnectionState::Disconnected {
                            close = Some("ice disconnected");
                            break;
                        }
                    }
                    Event::ChannelOpen(cid, label) => {
                        if label != CHANNEL_LABEL || p.channel.is_some() {
                            continue;
                        }
                        p.channel = Some(cid);
                        p.last_rx = now;
                        if let Some(mut ch) = p.rtc.channel(cid) {
                            ch.set_buffered_amount_low_threshold(DC_BUFFERED_LOW_BYTES);
                        }
                        if !p.announced {
                            p.announced = true;
                            let id = p.id.clone();
                            tracing::info!(peer = %id, "peer connected");
                            self.queue_agent(ipc::event_peer_connected(&id), false);
                        }
                    }
                    Event::ChannelData(d) => {
                        if Some(d.id) != p.channel {
                            continue;
                        }
                        let from = p.id.clone();
                        let text = String::from_utf8_lossy(&d.data);
                        match serde_json::from_str::<MeshMessage>(&text) {
                            Ok(m) => {
                                tracing::debug!(peer = %from, kind = %m.kind, request_id = %m.request_id, "DataChannel message in");
                                self.queue_agent(ipc::event_message(&from, &m), true)
                            }
                            Err(e) => {
                                tracing::warn!(peer = %from, error = %e, "bad DataChannel message ignored")
                            }
                        }
                    }
                    Event::ChannelClose(cid) if Some(cid) == p.channel => {
                        close = Some("channel closed");
                        break;
                    }
                    Event::ChannelBufferedAmountLow(_) => resume = true,
                    _ => {}
                },
            }
        }
        if let Some(reason) = close {
            self.remove_peer_involuntary(k, now, reason);
            self.kicks.ipc_resume.kick();
            return;
        }
        if self.flush_outbox(k) || resume {
            self.kicks.ipc_resume.kick();
        }
        if self.ipc_waiting && !self.ipc_paused() {
            self.ipc_waiting = false;
            self.kicks.ipc_resume.kick();
        }
        if self.peers[k].next_timeout < self.timer_deadline {
            self.kicks.timer.kick();
        }
    }

    /// Moves queued messages into str0m's buffer; true if any moved.
    fn flush_outbox(&mut self, k: usize) -> bool {
        let p = &mut self.peers[k];
        let Some(cid) = p.channel else { return false };
        let Some(mut ch) = p.rtc.channel(cid) else {
            return false;
        };
        let mut moved = false;
        while let Some(front) = p.outbox.front() {
            match ch.write(false, front) {
                Ok(true) => {
                    p.outbox_bytes -= front.len();
                    p.outbox.pop_front();
                    moved = true;
                }
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(peer = %p.id, error = %e, "DataChannel write failed; message dropped");
                    p.outbox_bytes -= front.len();
                    p.outbox.pop_front();
                }
            }
        }
        moved
    }

    fn remove_peer_involuntary(&mut self, k: usize, now: Instant, reason: &str) {
        let announced = self.peers.get(k).is_some_and(|p| p.announced);
        self.remove_peer(k, reason);
        if announced && self.signaling_up {
            self.redial_at = Some(now + REDIAL_DELAY);
        }
    }

    fn remove_peer(&mut self, k: usize, reason: &str) {
        if !self.peers.contains(k) {
            return;
        }
        let mut p = self.peers.remove(k);
        p.rtc.disconnect();
        if self.by_id.get(&p.id) == Some(&k) {
            self.by_id.remove(&p.id);
        }
        tracing::info!(peer = %p.id, reason, "peer closed");
        if p.announced {
            self.queue_agent(ipc::event_peer_disconnected(&p.id), false);
        }
    }

    // ---- agent ----------------------------------------------------------------------

    /// Whether the driver should stop reading the IPC socket (backpressure).
    pub fn ipc_paused(&mut self) -> bool {
        self.peers.iter_mut().any(|(_, p)| {
            let buffered = match p.channel.and_then(|c| p.rtc.channel(c)) {
                Some(mut ch) => ch.buffered_amount(),
                None => 0,
            };
            buffered + p.outbox_bytes > DC_BUFFERED_HIGH_BYTES
        })
    }

    /// The agent sent a line over [`ipc::IPC_LINE_BYTES_MAX`] (it was discarded).
    pub fn handle_ipc_too_long(&mut self, reason: &str) {
        self.queue_agent(ipc::event_error(reason), false);
    }

    /// One line from the agent.
    pub fn handle_ipc_line(&mut self, now: Instant, line: &[u8]) {
        let cmd = match ipc::parse_command(line) {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(reason) => {
                tracing::warn!(%reason, "malformed IPC line");
                self.queue_agent(ipc::event_error(&reason), false);
                return;
            }
        };
        match cmd {
            Command::Send { target, message } => {
                let Some(&k) = self
                    .by_id
                    .get(&target)
                    .filter(|&&k| self.peers[k].announced)
                else {
                    self.queue_agent(
                        ipc::event_error(&format!("peer {target:?} is not connected")),
                        false,
                    );
                    return;
                };
                tracing::debug!(peer = %target, kind = %message.kind, request_id = %message.request_id, "DataChannel message out");
                let bytes = serde_json::to_vec(&message).expect("mesh messages serialize");
                self.enqueue(k, bytes, now);
            }
            Command::Broadcast { message } => {
                let bytes = serde_json::to_vec(&message).expect("mesh messages serialize");
                let ks: Vec<usize> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| p.announced)
                    .map(|(k, _)| k)
                    .collect();
                for k in ks {
                    self.enqueue(k, bytes.clone(), now);
                }
            }
            Command::ListPeers => {
                let peers = self.connected_peers();
                self.queue_agent(ipc::event_peer_list(&peers), false);
            }
            Command::Connect { target } => {
                if !self.signaling_up || self.me.is_none() {
                    self.queue_agent(ipc::event_error("signaling is not connected"), false);
                } else if Some(target.as_str()) != self.me.as_deref()
                    && !self.by_id.contains_key(&target)
                {
                    self.start_offer(now, &target);
                }
            }
        }
    }

    fn enqueue(&mut self, k: usize, bytes: Vec<u8>, now: Instant) {
        let p = &mut self.peers[k];
        p.outbox_bytes += bytes.len();
        p.outbox.push_back(bytes);
        self.flush_outbox(k);
        self.drive(k, now);
    }
}
