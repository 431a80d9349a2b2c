//! Bounded lock-free SPSC lanes between shards.
//!
//! For every ordered pair (src → dst) there is one lane of two `rtrb` rings:
//! * `fwd` carries tells and asks from src to dst;
//! * `back` carries replies from dst to src.
//!
//! `back` never overflows: src admits at most `capacity` asks in flight per lane (an ask
//! is in flight until its reply is consumed), so dst always has room for the reply.
//!
//! `fwd` holds `capacity + RESERVED_MAX` messages: [`RESERVED_MAX`] of them back
//! reservations (`Shard::reserve`), a send that is guaranteed room later. A plain send is
//! refused while it would leave fewer free slots than there are reservations, so a
//! reserved send always finds one.

/// Reservations one shard may hold on one lane (and on its own local queue) at once:
/// one per follow-up a workflow may still have to send there (put back a change the
/// store did not take, mark one saved). 256 covers that many concurrent workflows
/// aimed at one shard; past it `reserve` says no and the workflow is refused (503)
/// before it changes anything.
pub const RESERVED_MAX: usize = 256;

use std::cell::Cell;

/// A message on the forward ring.
pub(crate) enum Envelope<M> {
    Tell(M),
    Ask(u32, M),
}

/// A message on the backward ring.
pub(crate) enum ReplyEnvelope<M> {
    Reply(u32, M),
    NoReply(u32),
}

/// Sender side of a lane, held by src.
pub(crate) struct OutLane<M> {
    pub(crate) fwd: rtrb::Producer<Envelope<M>>,
    pub(crate) back: rtrb::Consumer<ReplyEnvelope<M>>,
    /// Asks sent on this lane whose replies have not been consumed yet.
    pub(crate) asks_in_flight: Cell<usize>,
    /// Reservations held on this lane (at most [`RESERVED_MAX`]); `fwd` always has at
    /// least this many free slots.
    pub(crate) reserved: Cell<usize>,
}

/// Receiver side of a lane, held by dst.
pub(crate) struct InLane<M> {
    pub(crate) fwd: rtrb::Consumer<Envelope<M>>,
    pub(crate) back: rtrb::Producer<ReplyEnvelope<M>>,
}

/// Builds the lanes of `n` shards: `out[src][dst]` and `inb[dst][src]` (None on the
/// diagonal: a shard's messages to itself go through its local queue).
#[allow(clippy::type_complexity)]
pub(crate) fn lanes<M>(
    n: usize,
    capacity: usize,
) -> (Vec<Vec<Option<OutLane<M>>>>, Vec<Vec<Option<InLane<M>>>>) {
    let mut out: Vec<Vec<Option<OutLane<M>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut inb: Vec<Vec<Option<InLane<M>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for src in 0..n {
        for dst in 0..n {
            if src == dst {
                continue;
            }
            let (fwd_p, fwd_c) = rtrb::RingBuffer::new(capacity + RESERVED_MAX);
            let (back_p, back_c) = rtrb::RingBuffer::new(capacity);
            out[src][dst] = Some(OutLane {
                fwd: fwd_p,
                back: back_c,
                asks_in_flight: Cell::new(0),
                reserved: Cell::new(0),
            });
            inb[dst][src] = Some(InLane {
                fwd: fwd_c,
                back: back_p,
            });
        }
    }
    (out, inb)
}

/// Per-shard mailbox counters (shard-local; gathered by scatter-gather for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MailboxStats {
    /// Messages (tells, asks, replies) this shard put on another shard's lane.
    pub sent: u64,
    /// Messages this shard took off its inbound lanes.
    pub received: u64,
    /// Sends refused because the lane was full (the caller got its message back).
    pub refused_full: u64,
    /// Wakeups other shards wrote to this shard's doorbell (syscalls paid).
    pub wakeups: u64,
}
