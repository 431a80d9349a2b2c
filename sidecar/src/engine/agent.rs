//! The agent's side: IPC commands (applied a batch at a time, then str0m driven once
//! per touched peer), the per-peer DataChannel outboxes, and the backpressure that
//! pauses reading the agent while a channel has too much in flight.

use std::time::{Duration, Instant};

use super::super::ipc::{self, Command, Framed};
use super::{Engine, Output};

/// str0m's send buffer per peer (SCTP data not yet acknowledged). Larger than
/// [`DC_BUFFERED_HIGH_BYTES`] plus one IPC line, so a line that passed the
/// backpressure check always fits eventually (str0m refuses a write that does not fit
/// whole, and we keep it in the peer's outbox until it does).
pub const SCTP_BUFFERED_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Backpressure to the agent: while any connected peer has more than this many bytes
/// buffered (str0m's buffered amount plus our outbox), the driver stops reading the IPC
/// socket; the agent's writes then block in its socket buffer. str0m counts a message
/// as buffered until the peer acknowledges it, so this includes what is in flight; the
/// peer's SCTP receive window is 1 MiB (str0m's receive budget). 2 MiB keeps a full
/// window in flight plus up to one window queued behind it, so each SACK finds data to
/// send without waiting for the agent (at 1 MiB, 16 KiB messages ran at half the
/// speed), while one slow peer holds at most a few MiB.
pub const DC_BUFFERED_HIGH_BYTES: usize = 2 * 1024 * 1024;

/// Backpressure in messages: while any connected peer has more than this many messages
/// in flight (written to str0m and not acknowledged, plus our outbox), the driver stops
/// reading the agent. Before sctp-proto's two per-poll walks over everything in flight
/// were guarded (vendor/sctp-proto/README.md) this cap kept SCTP's work from going
/// quadratic; now it bounds memory and CPU per message: measured between two network
/// namespaces (docs/BENCHMARKS.md, "Sidecar data plane"), 4,096 gave no more msg/s
/// for 64 B messages than 256 but ~45% more sender CPU per message (8.3 vs 5.6 µs) and
/// 4 MiB more RSS after the run. 256 messages in flight still carry 256,000 msg/s at a
/// 1 ms round trip.
pub const DC_BUFFERED_HIGH_MESSAGES: usize = 256;

/// IPC lines applied per [`super::Input::Ipc`] before the touched peers are driven
/// (the driver splits a larger read). One drive per batch instead of one per line: a
/// drive polls SCTP, whose cost grows with what is in flight.
pub const IPC_BATCH_LINES_MAX: usize = 256;

/// DataChannel traffic (message bytes out and in) after which the first quiet moment
/// (every peer drained for [`TRIM_QUIET`]) is reported by
/// [`Engine::drained_after_burst`], so the driver gives freed memory back. Below it a
/// drain is not worth a heap trim.
pub const TRIM_AFTER_BYTES: usize = 1 << 20;

/// How long every peer must have stayed drained (nothing queued, nothing
/// unacknowledged, no new traffic) before a drain is reported: back-to-back bursts do
/// not trim the heap between them only to fault the same pages in again.
pub const TRIM_QUIET: Duration = Duration::from_millis(300);

/// While a drain may be due (at least [`TRIM_AFTER_BYTES`] of traffic since the last),
/// the engine's timer wakes at least this often to check.
pub const TRIM_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// A drained peer's outbox and in-flight list keep at most this many entries of
/// capacity (a burst grows them to [`DC_BUFFERED_HIGH_MESSAGES`] and more).
pub const PEER_QUEUE_KEEP_CAPACITY: usize = 16;

impl Engine {
    /// After at least [`TRIM_AFTER_BYTES`] of DataChannel traffic, whether every peer
    /// has been drained, with no new traffic, for [`TRIM_QUIET`]: then each peer's
    /// queues are shrunk to [`PEER_QUEUE_KEEP_CAPACITY`], the traffic count restarts,
    /// and the answer is true (the driver then trims the heap). Cheap until that much
    /// traffic passed; then a scan that stops at the first peer still busy.
    pub fn drained_after_burst(&mut self, now: Instant) -> bool {
        if self.traffic_bytes < TRIM_AFTER_BYTES || self.peers_over > 0 {
            self.drained_since = None;
            return false;
        }
        let busy = |p: &mut super::peers::Peer| {
            let buffered = match p.channel.and_then(|c| p.rtc.channel(c)) {
                Some(mut ch) => ch.buffered_amount(),
                None => 0,
            };
            buffered > 0 || !p.outbox.is_empty()
        };
        if self.peers.slab.iter_mut().any(|(_, p)| busy(p)) {
            self.drained_since = None;
            return false;
        }
        match self.drained_since {
            Some((since, traffic))
                if traffic == self.traffic_bytes && now.duration_since(since) >= TRIM_QUIET => {}
            Some((_, traffic)) if traffic == self.traffic_bytes => return false,
            _ => {
                self.drained_since = Some((now, self.traffic_bytes));
                return false;
            }
        }
        for (_, p) in self.peers.slab.iter_mut() {
            p.inflight.clear();
            p.inflight_bytes = 0;
            p.outbox.shrink_to(PEER_QUEUE_KEEP_CAPACITY);
            p.inflight.shrink_to(PEER_QUEUE_KEEP_CAPACITY);
        }
        self.traffic_bytes = 0;
        self.drained_since = None;
        true
    }

    /// `n` bytes of DataChannel messages passed (out or in). Once a drain may be due,
    /// the timer is asked to check (see [`Engine::next_deadline`]).
    pub(super) fn count_traffic(&mut self, n: usize) {
        self.traffic_bytes = self.traffic_bytes.saturating_add(n);
        if self.traffic_bytes >= TRIM_AFTER_BYTES {
            self.wake_at(self.last_now + TRIM_CHECK_INTERVAL);
        }
    }

    pub(super) fn queue_agent(&mut self, line: Vec<u8>, droppable: bool) {
        self.emit(Output::Agent { line, droppable });
    }

    /// Whether the driver should stop reading the IPC socket (backpressure). Asking
    /// also arms [`Output::IpcResume`] for when it ends. O(1): each drive of a peer
    /// records whether that peer is over a limit ([`Engine::refresh_over`]), and a
    /// peer's buffers change only in its drives (the driver asks once per IPC read, and
    /// a waiting engine checks after every drive, i.e. per datagram: a scan over all
    /// peers there cost 1.3% of a 50-peer sender).
    pub fn ipc_paused(&mut self) -> bool {
        let paused = self.peers_over > 0;
        debug_assert_eq!(
            paused,
            self.peers.keys().into_iter().any(|k| self.peer_over(k)),
            "backpressure count out of step with the peers"
        );
        self.ipc_waiting = paused;
        paused
    }

    /// Re-evaluates peer `k`'s backpressure flag after its buffers changed.
    pub(super) fn refresh_over(&mut self, k: usize) {
        if !self.peers.slab.contains(k) {
            return;
        }
        let over = self.peer_over(k);
        let p = &mut self.peers.slab[k];
        if over != p.over {
            p.over = over;
            if over {
                self.peers_over += 1;
            } else {
                self.peers_over -= 1;
            }
        }
    }

    /// Peer `k` is over a backpressure limit (bytes or messages).
    fn peer_over(&mut self, k: usize) -> bool {
        let p = &mut self.peers.slab[k];
        let buffered = match p.channel.and_then(|c| p.rtc.channel(c)) {
            Some(mut ch) => ch.buffered_amount(),
            None => 0,
        };
        // Messages leave str0m's buffer in the order they went in (one ordered
        // channel): drop the sizes of those no longer buffered.
        while let Some(&front) = p.inflight.front() {
            if p.inflight_bytes - front >= buffered {
                p.inflight_bytes -= front;
                p.inflight.pop_front();
            } else {
                break;
            }
        }
        buffered + p.outbox_bytes > DC_BUFFERED_HIGH_BYTES
            || p.inflight.len() + p.outbox.len() > DC_BUFFERED_HIGH_MESSAGES
    }

    /// A batch of lines from the agent: every command is applied, then each peer that
    /// got messages is driven once.
    pub(super) fn handle_ipc(&mut self, now: Instant, lines: &[Framed]) {
        let mut touched: Vec<usize> = Vec::new();
        for item in lines {
            match item {
                Framed::Line(l) => self.handle_ipc_line(now, l, &mut touched),
                Framed::TooLong => {
                    let reason = format!("line longer than {} bytes", ipc::IPC_LINE_BYTES_MAX);
                    self.queue_agent(ipc::event_error(&reason), false);
                }
            }
        }
        for k in touched {
            if self.peers.slab.contains(k) {
                self.flush_outbox(k);
                self.drive(k, now);
            }
        }
    }

    fn handle_ipc_line(&mut self, now: Instant, line: &[u8], touched: &mut Vec<usize>) {
        let cmd = match ipc::parse_command(line) {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(e) => {
                let reason = e.to_string();
                tracing::warn!(%reason, "malformed IPC line");
                self.queue_agent(ipc::event_error(&reason), false);
                return;
            }
        };
        match cmd {
            Command::Send { target, message } => {
                let Some(k) = self
                    .peers
                    .get(&target)
                    .filter(|&k| self.peers.slab[k].announced)
                else {
                    self.queue_agent(
                        ipc::event_error(&format!("peer {target:?} is not connected")),
                        false,
                    );
                    return;
                };
                if tracing::enabled!(tracing::Level::DEBUG) {
                    // Decoded again only for the log line (the tests follow a request
                    // by its kind and id); never on the hot path.
                    if let Ok(m) = serde_json::from_slice::<ipc::MeshMessageRaw<'_>>(&message) {
                        tracing::debug!(peer = %target, kind = %m.kind, request_id = %m.request_id, "DataChannel message out");
                    }
                }
                self.enqueue(k, message, touched);
            }
            Command::Broadcast { message } => {
                for k in self.peers.announced_keys() {
                    self.enqueue(k, message.clone(), touched);
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
                    && self.peers.get(&target).is_none()
                {
                    self.start_offer(now, &target);
                }
            }
        }
    }

    fn enqueue(&mut self, k: usize, bytes: Vec<u8>, touched: &mut Vec<usize>) {
        self.count_traffic(bytes.len());
        let p = &mut self.peers.slab[k];
        p.outbox_bytes += bytes.len();
        p.outbox.push_back(bytes);
        if !touched.contains(&k) {
            touched.push(k);
        }
    }

    /// Moves queued messages into str0m's buffer; true if any moved.
    pub(super) fn flush_outbox(&mut self, k: usize) -> bool {
        let p = &mut self.peers.slab[k];
        if p.outbox.is_empty() {
            return false;
        }
        let Some(cid) = p.channel else { return false };
        let Some(mut ch) = p.rtc.channel(cid) else {
            return false;
        };
        let mut moved = false;
        while let Some(front) = p.outbox.front() {
            match ch.write(false, front) {
                Ok(true) => {
                    let n = front.len();
                    p.outbox_bytes -= n;
                    p.outbox.pop_front();
                    p.inflight.push_back(n);
                    p.inflight_bytes += n;
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
}
