//! Signaling: register, `peer_list` → offers, offers → answers (with glare: the
//! smaller peer id keeps its own offer), answers, trickled candidates (kept for a peer
//! that does not exist yet), and the end of the signaling session.

use std::time::Instant;

use serde_json::Value;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::{Candidate, Rtc};

use super::super::ipc;
use super::agent::SCTP_BUFFERED_BYTES_MAX;
use wire::ws::signaling::SignalMessage;

/// Largest DataChannel message we accept (advertised as `a=max-message-size`). str0m's
/// default is 256 KiB, below what one IPC line may carry
/// ([`super::super::ipc::IPC_LINE_BYTES_MAX`], 1 MiB): a peer sidecar like us could send
/// a message we then refuse. The line limit plus slack for the normalised envelope (the
/// defaulted fields of a MeshMessage). str0m's SCTP receive budget is max(this, 1 MiB),
/// so the receive window stays ~1 MiB.
const SCTP_MESSAGE_BYTES_MAX: u32 = super::super::ipc::IPC_LINE_BYTES_MAX as u32 + 4096;
use super::peers::Peer;
use super::{
    CloseReason, Engine, Output, CHANNEL_LABEL, CLOSE_REPLACED, ICE_MAX_RTO, ICE_RETRANSMITS_MAX,
};

/// Remote candidates that arrive before the offer that creates their peer, kept for at
/// most this many peers and this many candidates each; extras are dropped (the SDP
/// carries candidates too).
pub const EARLY_CANDIDATE_PEERS_MAX: usize = 256;
pub const EARLY_CANDIDATES_PER_PEER_MAX: usize = 32;

/// The `typ` of each candidate line, e.g. `host,host,relay` (for the log).
fn candidate_types(cands: &[String]) -> String {
    let types: Vec<&str> = cands
        .iter()
        .filter_map(|c| c.split_whitespace().skip_while(|w| *w != "typ").nth(1))
        .collect();
    types.join(",")
}

impl Engine {
    pub(super) fn queue_signal(&mut self, m: SignalMessage) {
        if !self.signaling_up {
            return;
        }
        self.emit(Output::Signal(m.to_text()));
    }

    /// The WebSocket is open: register.
    pub(super) fn signaling_opened(&mut self) {
        self.signaling_up = true;
        if let Some(me) = self.me.clone() {
            self.queue_signal(SignalMessage::register(&me));
        }
    }

    /// The WebSocket dropped: every peer connection is closed (PROTOCOL.md §8). Closed
    /// as "replaced" (4000), another sidecar authenticated with our identity: the agent
    /// is told (the driver backs off rather than take the identity back at once).
    pub(super) fn signaling_closed(&mut self, code: Option<u16>) {
        self.signaling_up = false;
        self.early.clear();
        self.redial_at = None;
        self.out.retain(|o| !matches!(o, Output::Signal(_)));
        for k in self.peers.keys() {
            self.remove_peer(k, CloseReason::SignalingLost);
        }
        if code == Some(CLOSE_REPLACED) {
            let me = self.me.clone().unwrap_or_default();
            let reason = format!(
                "duplicate identity: another sidecar connected as {me:?} and replaced this one (close {CLOSE_REPLACED}); each agent needs its own API key"
            );
            tracing::error!(peer_id = %me, "{reason}");
            self.queue_agent(ipc::event_error(&reason), false);
        }
    }

    /// A text frame from the signaling server.
    pub(super) fn handle_signal(&mut self, now: Instant, text: &str) {
        let Some(m) = SignalMessage::parse(text) else {
            tracing::debug!("unparsable or too deeply nested signaling frame ignored");
            return;
        };
        let Some(me) = self.me.clone() else {
            return;
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
                    if p != me && self.peers.get(&p).is_none() {
                        self.start_offer(now, &p);
                    }
                }
                self.emit(Output::Registered);
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
    }

    /// A fresh `Rtc` with our candidates, and those candidates as `candidate:` strings.
    fn new_rtc(&self, now: Instant) -> (Rtc, Vec<String>) {
        let mut cfg = Rtc::builder()
            .set_sctp_max_buffered_amount(SCTP_BUFFERED_BYTES_MAX)
            .set_sctp_max_message_size(SCTP_MESSAGE_BYTES_MAX);
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

    /// Adds a peer; `sdp` is our own offer or answer (its mid and ICE ufrag).
    fn insert_peer(
        &mut self,
        now: Instant,
        id: &str,
        rtc: Rtc,
        pending: Option<SdpPendingOffer>,
        sdp: &str,
    ) -> usize {
        let attr = |name: &str| {
            sdp.lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .map(str::to_string)
        };
        let mid = attr("a=mid:").unwrap_or_else(|| "0".to_string());
        let ufrag = attr("a=ice-ufrag:").unwrap_or_default();
        self.peers
            .insert(Peer::new(id.to_string(), rtc, pending, mid, ufrag, now))
    }

    /// Trickles our local candidates to the peer (they are in the SDP too; trickling
    /// them as well matches the reference and stacks that expect candidates separately).
    fn trickle_local(&mut self, k: usize, cands: Vec<String>) {
        let Some(me) = self.me.clone() else { return };
        let p = &self.peers.slab[k];
        let (id, mid) = (p.id.clone(), p.mid.clone());
        for c in cands {
            self.queue_signal(SignalMessage::candidate(&me, &id, c, &mid));
        }
    }

    pub(super) fn start_offer(&mut self, now: Instant, remote: &str) {
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
        if let Some(k) = self.peers.get(from) {
            let glare = self.peers.slab[k].pending.is_some();
            if glare && me.as_str() < from {
                tracing::info!(peer = from, "offer glare: keeping ours");
                return;
            }
            self.remove_peer(k, CloseReason::ReplacedByOffer);
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
        let Some(k) = self.peers.get(from) else {
            return;
        };
        let Some(pending) = self.peers.slab[k].pending.take() else {
            return;
        };
        self.turn_permit_sdp(now, sdp);
        let answer = match SdpAnswer::from_sdp_string(sdp) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(peer = from, error = %e, "bad answer");
                self.remove_peer(k, CloseReason::BadAnswer);
                return;
            }
        };
        if let Err(e) = self.peers.slab[k]
            .rtc
            .sdp_api()
            .accept_answer(pending, answer)
        {
            tracing::warn!(peer = from, error = %e, "cannot accept answer");
            self.remove_peer(k, CloseReason::AnswerRefused);
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
        match self.peers.get(from) {
            Some(k) => {
                self.peers.slab[k].rtc.add_remote_candidate(c);
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
        let id = self.peers.slab[k].id.clone();
        if let Some(cands) = self.early.remove(&id) {
            for c in cands {
                self.peers.slab[k].rtc.add_remote_candidate(c);
            }
        }
    }
}
