//! The peer table: one `Rtc` per remote peer in a slab, found by peer id, by our ICE
//! ufrag (the first half of a STUN USERNAME) and by (remote, local) address pair, so a
//! datagram reaches its `Rtc` with two hash lookups instead of asking every `Rtc`
//! (`Rtc::accepts` over all peers is linear in the peers). Also: driving one `Rtc` to
//! quiescence and closing peers.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use slab::Slab;
use str0m::change::SdpPendingOffer;
use str0m::channel::ChannelId;
use str0m::{Event, IceConnectionState, Output as RtcOutput, Rtc};

use super::super::ipc;
use super::{Engine, Output, CHANNEL_LABEL, PEER_CONNECT_TIMEOUT, PEER_SILENCE_TIMEOUT};

/// str0m tells us (`ChannelBufferedAmountLow`) when a channel drains below this; the
/// engine then flushes the peer's outbox and resumes reading the agent (the high
/// watermarks are the agent side's: `agent::DC_BUFFERED_HIGH_BYTES`).
pub const DC_BUFFERED_LOW_BYTES: usize = 256 * 1024;

/// Address pairs remembered per peer for demultiplexing: one per candidate pair that
/// carried STUN (host, srflx and relay on each side: a handful). Past it, new pairs
/// are not learnt and their datagrams are dropped (ICE then settles on a known pair).
pub const PEER_ADDRS_MAX: usize = 64;

/// Why a peer connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    RtcClosed,
    RtcError,
    IceDisconnected,
    ChannelClosed,
    ConnectTimeout,
    Silent,
    SignalingLost,
    ReplacedByOffer,
    BadAnswer,
    AnswerRefused,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CloseReason::RtcClosed => "rtc closed",
            CloseReason::RtcError => "rtc error",
            CloseReason::IceDisconnected => "ice disconnected",
            CloseReason::ChannelClosed => "channel closed",
            CloseReason::ConnectTimeout => "connection attempt timed out",
            CloseReason::Silent => "peer silent",
            CloseReason::SignalingLost => "signaling connection lost",
            CloseReason::ReplacedByOffer => "replaced by a new offer",
            CloseReason::BadAnswer => "bad answer",
            CloseReason::AnswerRefused => "answer refused",
        })
    }
}

pub(super) struct Peer {
    pub id: String,
    pub rtc: Rtc,
    /// Our offer, until its answer arrives.
    pub pending: Option<SdpPendingOffer>,
    pub channel: Option<ChannelId>,
    /// `peer_connected` was sent (and `peer_disconnected` is owed).
    pub announced: bool,
    pub mid: String,
    /// Our ICE ufrag for this peer (key of `PeerTable::by_ufrag`).
    pub ufrag: String,
    /// Address pairs pointing at this peer in `PeerTable::by_addr`.
    pub addrs: Vec<(SocketAddr, SocketAddr)>,
    /// Messages accepted from the agent that str0m's buffer did not take yet.
    pub outbox: VecDeque<Vec<u8>>,
    pub outbox_bytes: usize,
    /// Sizes of the messages written into str0m and not yet acknowledged, oldest
    /// first (reconciled against str0m's buffered amount): the in-flight count that
    /// [`super::DC_BUFFERED_HIGH_MESSAGES`] caps. Bounded by what str0m's buffer holds
    /// (`SCTP_BUFFERED_BYTES_MAX`), and in practice by that cap plus one IPC batch.
    pub inflight: VecDeque<usize>,
    pub inflight_bytes: usize,
    /// Over a backpressure limit at the end of its last drive (counted in
    /// `Engine::peers_over`, so asking whether to pause the agent costs no scan).
    pub over: bool,
    pub next_timeout: Instant,
    pub created: Instant,
    /// When the last datagram from this peer arrived.
    pub last_rx: Instant,
}

impl Peer {
    /// A peer just created at `now`: no channel, nothing queued or in flight.
    pub fn new(
        id: String,
        rtc: Rtc,
        pending: Option<SdpPendingOffer>,
        mid: String,
        ufrag: String,
        now: Instant,
    ) -> Peer {
        Peer {
            id,
            rtc,
            pending,
            channel: None,
            announced: false,
            mid,
            ufrag,
            addrs: Vec::new(),
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            over: false,
            next_timeout: now,
            created: now,
            last_rx: now,
        }
    }
}

#[derive(Default)]
pub(super) struct PeerTable {
    pub slab: Slab<Peer>,
    pub by_id: HashMap<String, usize>,
    by_ufrag: HashMap<String, usize>,
    by_addr: HashMap<(SocketAddr, SocketAddr), usize>,
}

impl PeerTable {
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn get(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    pub fn connected(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .slab
            .iter()
            .filter(|(_, p)| p.announced)
            .map(|(_, p)| p.id.clone())
            .collect();
        v.sort();
        v
    }

    pub fn announced_keys(&self) -> Vec<usize> {
        self.slab
            .iter()
            .filter(|(_, p)| p.announced)
            .map(|(k, _)| k)
            .collect()
    }

    pub fn keys(&self) -> Vec<usize> {
        self.slab.iter().map(|(k, _)| k).collect()
    }

    pub fn insert(&mut self, p: Peer) -> usize {
        let (id, ufrag) = (p.id.clone(), p.ufrag.clone());
        let k = self.slab.insert(p);
        self.by_id.insert(id, k);
        if !ufrag.is_empty() {
            self.by_ufrag.insert(ufrag, k);
        }
        k
    }

    pub fn remove(&mut self, k: usize) -> Option<Peer> {
        let p = self.slab.try_remove(k)?;
        if self.by_id.get(&p.id) == Some(&k) {
            self.by_id.remove(&p.id);
        }
        if self.by_ufrag.get(&p.ufrag) == Some(&k) {
            self.by_ufrag.remove(&p.ufrag);
        }
        for a in &p.addrs {
            if self.by_addr.get(a) == Some(&k) {
                self.by_addr.remove(a);
            }
        }
        Some(p)
    }

    /// Remembers that (remote, local) belongs to peer `k`.
    pub fn learn(&mut self, k: usize, remote: SocketAddr, local: SocketAddr) {
        let key = (remote, local);
        if self.by_addr.get(&key) == Some(&k) {
            return;
        }
        let Some(p) = self.slab.get_mut(k) else {
            return;
        };
        if p.addrs.len() >= PEER_ADDRS_MAX {
            return;
        }
        p.addrs.push(key);
        self.by_addr.insert(key, k);
    }

    /// The peer a datagram from `remote` to our `local` belongs to: by the ufrag of a
    /// STUN request (learning the address pair), else by the address pair.
    pub fn demux(&mut self, remote: SocketAddr, local: SocketAddr, data: &[u8]) -> Option<usize> {
        if let Some(ufrag) = stun_local_ufrag(data) {
            let k = *self.by_ufrag.get(ufrag)?;
            self.learn(k, remote, local);
            return Some(k);
        }
        self.by_addr.get(&(remote, local)).copied()
    }

    /// Peers whose str0m timeout is due.
    pub fn due(&self, now: Instant) -> Vec<usize> {
        self.slab
            .iter()
            .filter(|(_, p)| p.next_timeout <= now)
            .map(|(k, _)| k)
            .collect()
    }

    /// Peers to give up: never connected in time, or silent.
    pub fn expired(&self, now: Instant) -> Vec<(usize, CloseReason)> {
        self.slab
            .iter()
            .filter_map(|(k, p)| {
                if !p.announced && now.duration_since(p.created) > PEER_CONNECT_TIMEOUT {
                    Some((k, CloseReason::ConnectTimeout))
                } else if p.announced && now.duration_since(p.last_rx) > PEER_SILENCE_TIMEOUT {
                    Some((k, CloseReason::Silent))
                } else {
                    None
                }
            })
            .collect()
    }

    /// The earliest deadline of any peer (str0m's, silence, connect), if any peer.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.slab
            .iter()
            .map(|(_, p)| {
                let own = if p.announced {
                    p.last_rx + PEER_SILENCE_TIMEOUT + std::time::Duration::from_millis(1)
                } else {
                    p.created + PEER_CONNECT_TIMEOUT
                };
                p.next_timeout.min(own)
            })
            .min()
    }
}

/// The USERNAME of a STUN Binding request is `<receiver's ufrag>:<sender's ufrag>`:
/// its first half is our ufrag for the peer that sent it.
fn stun_local_ufrag(data: &[u8]) -> Option<&str> {
    use super::super::stun::{attr, method, Class};
    if data.len() < 20 || data[0] != 0 || data[1] != 1 {
        return None; // not a Binding request: skip the parse
    }
    let m = turn::stun::parse(data).ok()?;
    if (m.method, m.class) != (method::BINDING, Class::Request) {
        return None;
    }
    let s = std::str::from_utf8(m.get(attr::USERNAME)?).ok()?;
    s.split(':').next()
}

impl Engine {
    /// Feeds peer `k` its timeout and drives it.
    pub(super) fn peer_timeout(&mut self, k: usize, now: Instant) {
        let Some(p) = self.peers.slab.get_mut(k) else {
            return;
        };
        if let Err(e) = p.rtc.handle_input(str0m::Input::Timeout(now)) {
            tracing::warn!(peer = %p.id, error = %e, "rtc timeout failed");
            self.remove_peer(k, CloseReason::RtcError);
            return;
        }
        self.drive(k, now);
    }

    /// Polls peer `k` until it has nothing more to say right now.
    pub(super) fn drive(&mut self, k: usize, now: Instant) {
        let mut close: Option<CloseReason> = None;
        let mut resume = false;
        'drive: loop {
            let Some(p) = self.peers.slab.get_mut(k) else {
                return;
            };
            if !p.rtc.is_alive() {
                close = Some(CloseReason::RtcClosed);
                break;
            }
            let out = match p.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(peer = %p.id, error = %e, "rtc failed");
                    close = Some(CloseReason::RtcError);
                    break;
                }
            };
            match out {
                RtcOutput::Timeout(t) => {
                    p.next_timeout = t.max(now);
                    let own = if p.announced {
                        p.last_rx + PEER_SILENCE_TIMEOUT + std::time::Duration::from_millis(1)
                    } else {
                        p.created + PEER_CONNECT_TIMEOUT
                    };
                    let wake = p.next_timeout.min(own);
                    self.wake_at(wake);
                    // Messages waiting in the outbox go into str0m's freed buffer, and
                    // out in this same drive.
                    if self.flush_outbox(k) {
                        resume = true;
                        continue 'drive;
                    }
                    break;
                }
                RtcOutput::Transmit(t) => {
                    let (src, dst) = (t.source, t.destination);
                    let data: Vec<u8> = t.contents.into();
                    if data.first().is_some_and(|b| *b < 2) {
                        // STUN: its answer comes back from `dst` to `src`.
                        self.peers.learn(k, dst, src);
                    }
                    self.queue_udp(now, src, dst, data);
                }
                RtcOutput::Event(e) => match e {
                    Event::IceConnectionStateChange(s) => {
                        tracing::debug!(peer = %p.id, state = ?s, "ice");
                        if s == IceConnectionState::Disconnected {
                            close = Some(CloseReason::IceDisconnected);
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
                        self.count_traffic(d.data.len());
                        let text = String::from_utf8_lossy(&d.data);
                        match ipc::parse_channel_message(&text) {
                            Ok(m) => {
                                tracing::debug!(peer = %from, kind = %m.kind, request_id = %m.request_id, "DataChannel message in");
                                self.queue_agent(ipc::event_message_raw(&from, &m), true)
                            }
                            Err(e) => {
                                tracing::warn!(peer = %from, error = %e, "bad DataChannel message ignored")
                            }
                        }
                    }
                    Event::ChannelClose(cid) if Some(cid) == p.channel => {
                        close = Some(CloseReason::ChannelClosed);
                        break;
                    }
                    Event::ChannelBufferedAmountLow(_) => resume = true,
                    _ => {}
                },
            }
        }
        if let Some(reason) = close {
            self.remove_peer_involuntary(k, now, reason);
            self.emit(Output::IpcResume);
            return;
        }
        if resume {
            self.emit(Output::IpcResume);
        }
        // Only this peer's buffers changed: update its part of the backpressure count
        // (no scan over the other peers, which this drive did not touch).
        self.refresh_over(k);
        if self.ipc_waiting && self.peers_over == 0 {
            self.ipc_waiting = false;
            self.emit(Output::IpcResume);
        }
    }

    pub(super) fn remove_peer_involuntary(&mut self, k: usize, now: Instant, reason: CloseReason) {
        let announced = self.peers.slab.get(k).is_some_and(|p| p.announced);
        self.remove_peer(k, reason);
        if announced && self.signaling_up {
            self.redial_at = Some(now + super::REDIAL_DELAY);
            self.wake_at(now + super::REDIAL_DELAY);
        }
    }

    pub(super) fn remove_peer(&mut self, k: usize, reason: CloseReason) {
        let Some(mut p) = self.peers.remove(k) else {
            return;
        };
        if p.over {
            self.peers_over -= 1;
        }
        p.rtc.disconnect();
        tracing::info!(peer = %p.id, %reason, "peer closed");
        if p.announced {
            self.queue_agent(ipc::event_peer_disconnected(&p.id), false);
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::stun::{attr, method, Class, Message};

    #[test]
    fn ufrag_of_binding_requests_only() {
        let req = Message::new(method::BINDING, Class::Request, [7; 12])
            .with(attr::USERNAME, b"mine:theirs".to_vec())
            .encode(None, true);
        assert_eq!(stun_local_ufrag(&req), Some("mine"));
        let resp = Message::new(method::BINDING, Class::Success, [7; 12])
            .with(attr::USERNAME, b"mine:theirs".to_vec())
            .encode(None, true);
        assert_eq!(stun_local_ufrag(&resp), None);
        assert_eq!(
            stun_local_ufrag(b"\x16\xfe\xfd not stun at all......"),
            None
        );
    }

    fn peer(now: Instant, i: usize) -> Peer {
        Peer::new(
            format!("peer-{i}"),
            Rtc::new(now),
            None,
            "0".into(),
            format!("uf{i}"),
            now,
        )
    }

    #[test]
    fn fifty_peers_demultiplex_by_ufrag_then_address() {
        let now = Instant::now();
        let mut t = PeerTable::default();
        let keys: Vec<usize> = (0..50).map(|i| t.insert(peer(now, i))).collect();
        let local: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let remote = |i: usize| -> SocketAddr { format!("10.0.1.{i}:5000").parse().unwrap() };
        let check = |i: usize| {
            Message::new(method::BINDING, Class::Request, [i as u8; 12])
                .with(attr::USERNAME, format!("uf{i}:theirs").into_bytes())
                .encode(None, true)
        };
        let dtls = b"\x16\xfe\xfd dtls record";
        // Before any STUN, an address means nothing.
        assert_eq!(t.demux(remote(37), local, dtls), None);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(t.demux(remote(i), local, &check(i)), Some(*k));
        }
        // Learnt: the rest of that peer's traffic (DTLS, SCTP, STUN responses).
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(t.demux(remote(i), local, dtls), Some(*k));
        }
        // A check with an unknown ufrag, or traffic on an unknown pair: no peer.
        assert_eq!(t.demux(remote(1), local, &check(77)), None);
        assert_eq!(t.demux(remote(99), local, dtls), None);
        // Our own STUN out teaches the pair it answers on.
        t.learn(keys[3], remote(200), local);
        assert_eq!(t.demux(remote(200), local, dtls), Some(keys[3]));
        // A removed peer leaves nothing behind.
        t.remove(keys[37]);
        assert_eq!(t.demux(remote(37), local, dtls), None);
        assert_eq!(t.demux(remote(37), local, &check(37)), None);
        assert_eq!(t.get("peer-37"), None);
        assert_eq!(t.len(), 49);
    }
}
