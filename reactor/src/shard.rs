//! The shard handle: identity, messaging to other shards, and the shard's mailbox loop.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use slab::Slab;

use crate::control::{Control, STATE_DRAINING, STATE_EXIT};
use crate::doorbell::DoorbellWaiter;
use crate::driver::IoDriver;
use crate::event::LocalEvent;
use crate::mailbox::{Envelope, InLane, MailboxStats, OutLane, ReplyEnvelope, RESERVED_MAX};
use crate::route::ShardId;

/// Messages taken from one inbound ring per turn of the mailbox loop before it moves on
/// to the next ring: keeps one chatty peer shard from starving the others and bounds
/// the time the loop holds the shard before yielding to connection tasks.
const DRAIN_BATCH_MAX: usize = 256;

type Handler<M> = Rc<dyn Fn(ShardId, M) -> Option<M>>;

/// Why an ask got no answer.
pub enum AskError<M> {
    /// The lane to the target shard is full (or too many asks are in flight on it):
    /// the message is handed back so the caller can refuse or retry.
    Full(M),
    /// The target's handler returned no reply.
    NoReply,
}

impl<M> fmt::Debug for AskError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AskError::Full(_) => f.write_str("AskError::Full"),
            AskError::NoReply => f.write_str("AskError::NoReply"),
        }
    }
}

impl<M> fmt::Display for AskError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AskError::Full(_) => f.write_str("shard mailbox full"),
            AskError::NoReply => f.write_str("shard gave no reply"),
        }
    }
}

enum PendingState<M> {
    Waiting(Option<Waker>),
    Done(Option<M>),
    /// The asker dropped its future; the reply is discarded when it comes.
    Abandoned,
}

/// A handle to the current shard. Cheap to clone; never leaves its thread.
pub struct Shard<M> {
    inner: Rc<Inner<M>>,
}

impl<M> Clone for Shard<M> {
    fn clone(&self) -> Self {
        Shard {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<M> {
    id: ShardId,
    count: usize,
    driver: IoDriver,
    capacity: usize,
    /// See `ReactorBuilder::mailbox_spin`.
    spin: std::time::Duration,
    control: Arc<Control>,
    out: Vec<Option<RefCell<OutLane<M>>>>,
    inb: Vec<Option<RefCell<InLane<M>>>>,
    /// Messages to self, bounded by the same capacity as a lane (plus its reservations).
    local: RefCell<VecDeque<Envelope<M>>>,
    /// Reservations held on the local queue (see `mailbox::RESERVED_MAX`).
    local_reserved: Cell<usize>,
    handler: RefCell<Option<Handler<M>>>,
    /// The handler is running (a message being applied): an ask to this shard made
    /// meanwhile is queued, never applied inside it.
    in_handler: Cell<bool>,
    pending: RefCell<Slab<PendingState<M>>>,
    mailbox_waker: RefCell<Option<Waker>>,
    sent: Cell<u64>,
    received: Cell<u64>,
    refused: Cell<u64>,
    shutdown: LocalEvent,
    exit: LocalEvent,
}

impl<M: Send + 'static> Shard<M> {
    #[allow(clippy::too_many_arguments)]
    /// A [`Bell`](crate::Bell) for a task of this shard to await, rung from any thread.
    /// Call it on this shard's thread.
    pub fn bell(&self) -> std::io::Result<(crate::Bell, crate::BellWaiter)> {
        crate::Bell::new(self.inner.driver)
    }

    pub(crate) fn new(
        id: ShardId,
        count: usize,
        driver: IoDriver,
        (capacity, spin): (usize, std::time::Duration),
        control: Arc<Control>,
        out: Vec<Option<OutLane<M>>>,
        inb: Vec<Option<InLane<M>>>,
    ) -> Self {
        Shard {
            inner: Rc::new(Inner {
                id,
                count,
                driver,
                capacity,
                spin,
                control,
                out: out.into_iter().map(|l| l.map(RefCell::new)).collect(),
                inb: inb.into_iter().map(|l| l.map(RefCell::new)).collect(),
                local: RefCell::new(VecDeque::new()),
                local_reserved: Cell::new(0),
                handler: RefCell::new(None),
                in_handler: Cell::new(false),
                pending: RefCell::new(Slab::new()),
                mailbox_waker: RefCell::new(None),
                sent: Cell::new(0),
                received: Cell::new(0),
                refused: Cell::new(0),
                shutdown: LocalEvent::new(),
                exit: LocalEvent::new(),
            }),
        }
    }

    /// This shard's index.
    pub fn id(&self) -> ShardId {
        self.inner.id
    }

    /// Number of shards.
    pub fn count(&self) -> usize {
        self.inner.count
    }

    /// The event-loop driver this shard runs.
    pub fn driver(&self) -> IoDriver {
        self.inner.driver
    }

    /// The owner of `key`.
    pub fn shard_of(&self, key: impl AsRef<[u8]>) -> ShardId {
        crate::route::shard_of(key, self.inner.count)
    }

    /// Installs the handler of messages to this shard: it gets the sender's id and the
    /// message and returns the reply of an ask (a tell's return value is dropped).
    /// Messages wait in their bounded rings until a handler is installed.
    pub fn set_handler(&self, handler: impl Fn(ShardId, M) -> Option<M> + 'static) {
        *self.inner.handler.borrow_mut() = Some(Rc::new(handler));
        self.wake_mailbox();
    }

    /// Fires once the process starts its graceful shutdown.
    pub fn shutdown_event(&self) -> &LocalEvent {
        &self.inner.shutdown
    }

    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_set()
    }

    /// Mailbox counters of this shard.
    pub fn stats(&self) -> MailboxStats {
        MailboxStats {
            sent: self.inner.sent.get(),
            received: self.inner.received.get(),
            refused_full: self.inner.refused.get(),
            wakeups: self.inner.control.doorbells[self.inner.id]
                .rings
                .load(Ordering::Relaxed),
        }
    }

    /// Sends `msg` to shard `to` without waiting. A full lane hands the message back.
    pub fn try_tell(&self, to: ShardId, msg: M) -> Result<(), M> {
        match self.push(to, Envelope::Tell(msg)) {
            Ok(()) => Ok(()),
            Err(Envelope::Tell(m)) | Err(Envelope::Ask(_, m)) => Err(m),
        }
    }

    /// Asks shard `to` and returns a future of its reply, or the message back when the
    /// lane is full (or too many asks are in flight on it). The message is sent now;
    /// an ask of this shard itself may be applied now, inside this call (see
    /// [`ask`](Self::ask)).
    pub fn try_ask(&self, to: ShardId, msg: M) -> Result<Ask<M>, M> {
        let mut a = self.ask(to, msg);
        if matches!(a.state, AskState::Failed(Some(AskError::Full(_)))) {
            // Nothing is pending for a failed ask: its drop has nothing to undo.
            if let AskState::Failed(Some(AskError::Full(m))) =
                std::mem::replace(&mut a.state, AskState::Finished)
            {
                return Err(m);
            }
        }
        Ok(a)
    }

    /// Asks shard `to` and returns a future of its reply. The message is sent now,
    /// before the future is first polled; a full lane resolves it to `AskError::Full`.
    ///
    /// An ask of this shard itself is **applied inside this call** when nothing waits
    /// before it (`direct_handler`): the handler runs before `ask` returns. So the
    /// caller must not hold, across the call, a borrow of anything the handler borrows
    /// (the shard's state): that would panic, and only when the mailbox happens to be
    /// empty. (A borrow held across an `.await` is already a lint; one held across
    /// this plain call is not.)
    pub fn ask(&self, to: ShardId, msg: M) -> Ask<M> {
        let inner = &self.inner;
        if to == inner.id {
            if let Some(handler) = self.direct_handler() {
                // Applied now, as the mailbox would apply it if it ran now: nothing is
                // queued before it (see `direct_handler`). Saves the ask's trip
                // through the local queue: a slot, two wakeups and a second poll of
                // the asker (about 3% of a heartbeat's CPU on one shard).
                let entered = Entered::new(&inner.in_handler);
                let reply = handler(inner.id, msg);
                drop(entered);
                return Ask {
                    shard: self.clone(),
                    state: AskState::Ready(reply),
                };
            }
        } else {
            let lane = inner.out[to]
                .as_ref()
                .expect("lane to another shard")
                .borrow();
            if lane.asks_in_flight.get() >= inner.capacity {
                drop(lane);
                inner.refused.set(inner.refused.get() + 1);
                return Ask {
                    shard: self.clone(),
                    state: AskState::Failed(Some(AskError::Full(msg))),
                };
            }
        }
        let id = inner
            .pending
            .borrow_mut()
            .insert(PendingState::Waiting(None));
        match self.push(to, Envelope::Ask(id as u32, msg)) {
            Ok(()) => {
                if to != inner.id {
                    let lane = inner.out[to].as_ref().expect("lane").borrow();
                    lane.asks_in_flight.set(lane.asks_in_flight.get() + 1);
                }
                Ask {
                    shard: self.clone(),
                    state: AskState::Waiting(id),
                }
            }
            Err(Envelope::Ask(_, m)) | Err(Envelope::Tell(m)) => {
                inner.pending.borrow_mut().remove(id);
                Ask {
                    shard: self.clone(),
                    state: AskState::Failed(Some(AskError::Full(m))),
                }
            }
        }
    }

    /// The handler, when an ask to this shard may be applied at once instead of
    /// queued: one is installed, none is running (no re-entry), the shard is not
    /// exiting, and no message waits in the local queue or an inbound ring. Then the
    /// mailbox, draining now, would apply the ask before anything else; anything a
    /// task could know was sent to this shard before its ask (a tell pushed before the
    /// reply it has read, say) is still in a ring, and the ask is queued behind it.
    fn direct_handler(&self) -> Option<Handler<M>> {
        let inner = &self.inner;
        if inner.in_handler.get() || inner.exit.is_set() || !inner.local.borrow().is_empty() {
            return None;
        }
        if inner
            .inb
            .iter()
            .flatten()
            .any(|l| !l.borrow().fwd.is_empty())
        {
            return None;
        }
        inner.handler.borrow().clone()
    }

    /// Asks every shard (this one included) with the message `make(shard)` and
    /// gathers the replies in shard order.
    pub async fn ask_all(&self, make: impl Fn(ShardId) -> M) -> Vec<Result<M, AskError<M>>> {
        let asks: Vec<Ask<M>> = (0..self.inner.count)
            .map(|s| self.ask(s, make(s)))
            .collect();
        let mut out = Vec::with_capacity(asks.len());
        for a in asks {
            out.push(a.await);
        }
        out
    }

    /// Reserves room for one tell to shard `to` later: the tell is then never refused
    /// for a full lane ([`Reservation::tell`]). `None` when the lane already holds
    /// [`RESERVED_MAX`](crate::RESERVED_MAX) reservations or has no free slot
    /// left to back one: the caller refuses its work before starting it. Dropping an
    /// unused reservation gives the room back.
    pub fn reserve(&self, to: ShardId) -> Option<Reservation<M>> {
        let inner = &self.inner;
        if to == inner.id {
            let r = inner.local_reserved.get();
            let room = inner.capacity + RESERVED_MAX;
            if r >= RESERVED_MAX || inner.local.borrow().len() + r >= room {
                return None;
            }
            inner.local_reserved.set(r + 1);
        } else {
            let lane = inner.out[to].as_ref()?.borrow();
            let r = lane.reserved.get();
            if r >= RESERVED_MAX || lane.fwd.slots() <= r {
                return None;
            }
            lane.reserved.set(r + 1);
        }
        Some(Reservation {
            shard: self.clone(),
            to,
            held: true,
        })
    }

    fn release(&self, to: ShardId) {
        let inner = &self.inner;
        let cell = if to == inner.id {
            &inner.local_reserved
        } else {
            match inner.out[to].as_ref() {
                Some(lane) => {
                    let lane = lane.borrow();
                    lane.reserved.set(lane.reserved.get().saturating_sub(1));
                    return;
                }
                None => return,
            }
        };
        cell.set(cell.get().saturating_sub(1));
    }

    fn push(&self, to: ShardId, env: Envelope<M>) -> Result<(), Envelope<M>> {
        self.push_as(to, env, false)
    }

    fn push_as(&self, to: ShardId, env: Envelope<M>, reserved: bool) -> Result<(), Envelope<M>> {
        let inner = &self.inner;
        if to == inner.id {
            let mut local = inner.local.borrow_mut();
            let room = inner.capacity + RESERVED_MAX;
            let refused = if reserved {
                local.len() >= room
            } else {
                local.len() >= inner.capacity || local.len() + inner.local_reserved.get() >= room
            };
            if refused {
                inner.refused.set(inner.refused.get() + 1);
                return Err(env);
            }
            local.push_back(env);
            drop(local);
            self.wake_mailbox();
            return Ok(());
        }
        let lane = inner.out[to]
            .as_ref()
            .expect("shard id out of range")
            .borrow_mut();
        // rtrb's `push` needs `&mut Producer`; the RefCell gives it to this thread only.
        let mut lane = lane;
        // A plain send uses at most `capacity` slots and leaves a free slot for every
        // reservation (the consumer only ever frees more); a reserved send may use the
        // rest.
        let slots = lane.fwd.slots();
        let refused = if reserved {
            slots == 0
        } else {
            slots <= RESERVED_MAX || slots <= lane.reserved.get()
        };
        if refused {
            drop(lane);
            inner.refused.set(inner.refused.get() + 1);
            return Err(env);
        }
        match lane.fwd.push(env) {
            Ok(()) => {
                drop(lane);
                inner.sent.set(inner.sent.get() + 1);
                inner.control.doorbells[to].ring();
                Ok(())
            }
            Err(rtrb::PushError::Full(env)) => {
                inner.refused.set(inner.refused.get() + 1);
                Err(env)
            }
        }
    }

    fn wake_mailbox(&self) {
        if let Some(w) = self.inner.mailbox_waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }

    fn complete(&self, id: u32, reply: Option<M>) {
        let mut pending = self.inner.pending.borrow_mut();
        let id = id as usize;
        match pending.get_mut(id) {
            Some(PendingState::Abandoned) => {
                pending.remove(id);
            }
            Some(slot @ PendingState::Waiting(_)) => {
                if let PendingState::Waiting(Some(w)) =
                    std::mem::replace(slot, PendingState::Done(reply))
                {
                    w.wake();
                }
            }
            _ => tracing::error!(id, "reply for an unknown ask"),
        }
    }

    /// Whether a message from shard `from` waits unread in this shard's inbound ring
    /// from it (its replies to this shard's asks not counted: they travel on another
    /// ring). Messages from one shard are read in the order sent.
    pub fn has_mail_from(&self, from: ShardId) -> bool {
        match self.inner.inb.get(from) {
            Some(Some(lane)) => !lane.borrow().fwd.is_empty(),
            // This shard's own queue.
            Some(None) => !self.inner.local.borrow().is_empty(),
            None => true,
        }
    }

    /// True if a state change awaits observation, or (once a handler is installed) any
    /// inbound ring or the local queue holds a message.
    fn has_mail(&self) -> bool {
        let inner = &self.inner;
        if !self.observed_state_current() {
            return true;
        }
        if inner.handler.borrow().is_none() {
            return false;
        }
        !inner.local.borrow().is_empty()
            || inner
                .inb
                .iter()
                .flatten()
                .any(|l| !l.borrow().fwd.is_empty())
            || inner
                .out
                .iter()
                .flatten()
                .any(|l| !l.borrow().back.is_empty())
    }

    fn observed_state_current(&self) -> bool {
        let state = self.inner.control.state.load(Ordering::Acquire);
        (state < STATE_DRAINING || self.inner.shutdown.is_set())
            && (state < STATE_EXIT || self.inner.exit.is_set())
    }

    /// One pass over every inbound ring and the local queue; returns how many messages
    /// it handled from other shards and from this one.
    fn drain(&self) -> Drained {
        let inner = &self.inner;
        let state = inner.control.state.load(Ordering::Acquire);
        if state >= STATE_DRAINING {
            inner.shutdown.set();
        }
        if state >= STATE_EXIT {
            inner.exit.set();
        }
        let handler = match inner.handler.borrow().clone() {
            Some(h) => h,
            None => return Drained::default(),
        };
        // Asks made while a message is applied are queued (`direct_handler`).
        let _entered = Entered::new(&inner.in_handler);
        let mut handled = 0;
        // Replies first: they complete work already started.
        for lane in inner.out.iter() {
            let Some(lane) = lane else { continue };
            for _ in 0..DRAIN_BATCH_MAX {
                let popped = lane.borrow_mut().back.pop();
                let Ok(env) = popped else { break };
                {
                    let l = lane.borrow();
                    l.asks_in_flight
                        .set(l.asks_in_flight.get().saturating_sub(1));
                }
                inner.received.set(inner.received.get() + 1);
                handled += 1;
                match env {
                    ReplyEnvelope::Reply(id, m) => self.complete(id, Some(m)),
                    ReplyEnvelope::NoReply(id) => self.complete(id, None),
                }
            }
        }
        for (src, lane) in inner.inb.iter().enumerate() {
            let Some(lane) = lane else { continue };
            for _ in 0..DRAIN_BATCH_MAX {
                let popped = lane.borrow_mut().fwd.pop();
                let Ok(env) = popped else { break };
                inner.received.set(inner.received.get() + 1);
                handled += 1;
                match env {
                    Envelope::Tell(m) => {
                        let _ = handler(src, m);
                    }
                    Envelope::Ask(id, m) => {
                        let reply = match handler(src, m) {
                            Some(r) => ReplyEnvelope::Reply(id, r),
                            None => ReplyEnvelope::NoReply(id),
                        };
                        // Cannot be full: the asker admits at most `capacity` asks in
                        // flight on this lane, and each holds at most one reply slot.
                        if lane.borrow_mut().back.push(reply).is_err() {
                            tracing::error!(src, "reply ring full; reply dropped (bug)");
                        } else {
                            inner.sent.set(inner.sent.get() + 1);
                            inner.control.doorbells[src].ring();
                        }
                    }
                }
            }
        }
        let mut local = 0;
        for _ in 0..DRAIN_BATCH_MAX {
            let env = inner.local.borrow_mut().pop_front();
            let Some(env) = env else { break };
            local += 1;
            match env {
                Envelope::Tell(m) => {
                    let _ = handler(inner.id, m);
                }
                Envelope::Ask(id, m) => {
                    let r = handler(inner.id, m);
                    self.complete(id, r);
                }
            }
        }
        Drained {
            remote: handled,
            local,
        }
    }

    /// The mailbox loop: drains inbound rings, yields while there is traffic, and
    /// sleeps on the doorbell when there is none.
    pub(crate) async fn mailbox_loop(self, waiter: DoorbellWaiter) {
        let bell = &self.inner.control.doorbells[self.inner.id];
        let mut sleeper = Sleeper {
            bell: None,
            waiter: Some(waiter),
        };
        let mut last_mail = std::time::Instant::now();
        loop {
            let drained = self.drain();
            if self.inner.exit.is_set() {
                // Every shard has finished its connections; the root future returns and
                // the runtime is torn down.
                return;
            }
            // Only mail from other shards starts the spin: it is what a sleeping
            // mailbox would pay a doorbell (a syscall on both sides) for. Local mail
            // wakes this task directly, so spinning after it would only cost polls
            // (and, on one shard, a third of the heartbeat throughput: BENCHMARKS).
            if drained.remote > 0 {
                last_mail = std::time::Instant::now();
            }
            if drained.remote + drained.local > 0 || last_mail.elapsed() < self.inner.spin {
                // Traffic, or traffic from another shard a moment ago: let connection
                // tasks run, then look again without paying for a wakeup (neither ours
                // nor the sender's).
                crate::event::yield_now().await;
                continue;
            }
            bell.prepare_sleep();
            if self.has_mail() {
                bell.awake();
                continue;
            }
            sleeper.sleep(&self).await;
            bell.awake();
        }
    }
}

/// What one [`Shard::drain`] pass handled.
#[derive(Default, Clone, Copy)]
struct Drained {
    /// Messages and replies from other shards' lanes.
    remote: usize,
    /// Messages from this shard's own queue.
    local: usize,
}

/// Holds the doorbell read in flight across wakeups caused by local messages, so that
/// a local wake does not cancel and resubmit the ring's read.
struct Sleeper {
    bell: Option<Pin<Box<dyn Future<Output = DoorbellWaiter>>>>,
    waiter: Option<DoorbellWaiter>,
}

impl Sleeper {
    async fn sleep<M: Send + 'static>(&mut self, shard: &Shard<M>) {
        if self.bell.is_none() {
            let mut w = self.waiter.take().expect("doorbell waiter");
            self.bell = Some(Box::pin(async move {
                if let Err(e) = w.wait().await {
                    tracing::error!(error = %e, "doorbell read failed");
                }
                w
            }));
        }
        let done = SleepFuture {
            sleeper: self,
            shard,
        }
        .await;
        if let Some(w) = done {
            self.waiter = Some(w);
            self.bell = None;
        }
    }
}

struct SleepFuture<'a, M> {
    sleeper: &'a mut Sleeper,
    shard: &'a Shard<M>,
}

impl<M: Send + 'static> Future for SleepFuture<'_, M> {
    type Output = Option<DoorbellWaiter>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        *this.shard.inner.mailbox_waker.borrow_mut() = Some(cx.waker().clone());
        if let Some(bell) = this.sleeper.bell.as_mut() {
            if let Poll::Ready(w) = bell.as_mut().poll(cx) {
                *this.shard.inner.mailbox_waker.borrow_mut() = None;
                return Poll::Ready(Some(w));
            }
        }
        if this.shard.has_mail() {
            *this.shard.inner.mailbox_waker.borrow_mut() = None;
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

/// Marks the shard's handler as running while it lives (`Inner::in_handler`), also
/// when the handler panics.
struct Entered<'a>(&'a Cell<bool>);

impl<'a> Entered<'a> {
    fn new(flag: &'a Cell<bool>) -> Self {
        flag.set(true);
        Entered(flag)
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

enum AskState<M> {
    /// Applied when asked ([`Shard::direct_handler`]): the handler's reply.
    Ready(Option<M>),
    Waiting(usize),
    Failed(Option<AskError<M>>),
    Finished,
}

/// Future of an ask's reply (see [`Shard::ask`]).
pub struct Ask<M> {
    shard: Shard<M>,
    state: AskState<M>,
}

impl<M> Unpin for Ask<M> {}

impl<M> Future for Ask<M> {
    type Output = Result<M, AskError<M>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            AskState::Failed(e) => {
                let e = e.take().expect("polled after completion");
                self.state = AskState::Finished;
                Poll::Ready(Err(e))
            }
            AskState::Ready(r) => {
                let r = r.take();
                self.state = AskState::Finished;
                Poll::Ready(r.ok_or(AskError::NoReply))
            }
            AskState::Finished => panic!("Ask polled after completion"),
            AskState::Waiting(id) => {
                let id = *id;
                let mut pending = self.shard.inner.pending.borrow_mut();
                match pending.get_mut(id) {
                    Some(PendingState::Done(_)) => {
                        let PendingState::Done(r) = pending.remove(id) else {
                            unreachable!()
                        };
                        drop(pending);
                        self.state = AskState::Finished;
                        Poll::Ready(r.ok_or(AskError::NoReply))
                    }
                    Some(PendingState::Waiting(w)) => {
                        *w = Some(cx.waker().clone());
                        Poll::Pending
                    }
                    _ => {
                        drop(pending);
                        self.state = AskState::Finished;
                        Poll::Ready(Err(AskError::NoReply))
                    }
                }
            }
        }
    }
}

impl<M> Drop for Ask<M> {
    fn drop(&mut self) {
        if let AskState::Waiting(id) = self.state {
            let mut pending = self.shard.inner.pending.borrow_mut();
            match pending.get(id) {
                Some(PendingState::Done(_)) => {
                    pending.remove(id);
                }
                Some(PendingState::Waiting(_)) => pending[id] = PendingState::Abandoned,
                _ => {}
            }
        }
    }
}

/// Room for one tell to a shard, taken by [`Shard::reserve`]: [`tell`](Self::tell)
/// always succeeds. Dropped unused, it gives the room back.
pub struct Reservation<M: Send + 'static> {
    shard: Shard<M>,
    to: ShardId,
    held: bool,
}

impl<M: Send + 'static> Reservation<M> {
    /// The shard this reservation sends to.
    pub fn to(&self) -> ShardId {
        self.to
    }

    /// Sends `msg` as a tell into the reserved room.
    pub fn tell(mut self, msg: M) {
        self.held = false;
        self.shard.release(self.to);
        // The room released above is free: a lane keeps a free slot per reservation
        // and the consumer only frees more, so this push cannot be refused.
        if self
            .shard
            .push_as(self.to, Envelope::Tell(msg), true)
            .is_err()
        {
            tracing::error!(to = self.to, "a reserved tell found no room (a bug)");
        }
    }
}

impl<M: Send + 'static> Drop for Reservation<M> {
    fn drop(&mut self) {
        if self.held {
            self.shard.release(self.to);
        }
    }
}

impl<M> Shard<M> {
    pub(crate) fn exit_event(&self) -> &LocalEvent {
        &self.inner.exit
    }
}
