//! N shards in one thread on simulated time: the same workflows the server runs, driven
//! deterministically by a seeded scheduler, with full mailboxes, failing commits and
//! chosen interleavings (issue 21; as quinn-proto's `Pair` tests and the sidecar's
//! engine tests do).
//!
//! A [`Sim`] holds one [`Node`] per shard (the state a shard owns and how it applies a
//! message: the server's dispatch) and hands out a [`SimShard`] per shard, which
//! implements [`Shard`]. Workflows are spawned as futures ([`Sim::spawn`]) and
//! [`Sim::run`] steps the world: it polls a runnable workflow, or delivers one queued
//! message (lanes stay FIFO; which lane goes next is the seed's choice), or moves the
//! clock to the next timer. Each ask is a point where another workflow may run, so a seed
//! is an interleaving.
//!
//! Faults: [`Sim::set_full`] makes a shard's mailbox refuse asks, tells and
//! reservations; [`Sim::fail_commits`] makes the next commits fail as a full disk does.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use super::ask::FollowUp;
use super::outcome::Error;
use super::{Durability, LayerStats, Saved, Shard, ShardId};
use crate::time::UnixTime;
use chatixia_store::Mutation;

/// The state one simulated shard owns, and how it applies a message to it.
pub trait Node<M> {
    /// Applies `msg` from shard `from` at `now`; the reply of an ask (`None` for a tell).
    fn handle(&self, from: ShardId, msg: M, now: UnixTime) -> Option<M>;
}

/// A small, fast, seeded generator (xorshift64*): the scheduler's choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// A message in flight: from, to, the message, and the reply slot of an ask.
struct Envelope<M> {
    from: ShardId,
    msg: M,
    reply: Option<Rc<ReplySlot<M>>>,
}

struct ReplySlot<M> {
    reply: RefCell<Option<Option<M>>>,
    waker: RefCell<Option<Waker>>,
}

struct Timer {
    at: UnixTime,
    fired: Rc<Cell<bool>>,
    waker: RefCell<Option<Waker>>,
}

struct TaskFlag(AtomicBool);

impl Wake for TaskFlag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

type Task = Pin<Box<dyn Future<Output = ()>>>;

struct World<M, N> {
    nodes: Vec<N>,
    stats: Vec<LayerStats>,
    /// Lanes: `lanes[from][to]`, FIFO.
    lanes: RefCell<Vec<Vec<VecDeque<Envelope<M>>>>>,
    /// Shards whose mailbox refuses everything.
    full: RefCell<Vec<bool>>,
    /// Reservations held on each shard's mailbox (any sender).
    reserved: RefCell<Vec<usize>>,
    now: Cell<u64>,
    timers: RefCell<Vec<Rc<Timer>>>,
    /// Commits left to fail (`fail_commits`).
    commits_to_fail: Cell<usize>,
    /// Every commit that succeeded, in order: what a restart would load.
    durable: RefCell<Vec<Mutation>>,
    tasks: RefCell<Vec<Spawned>>,
    rng: RefCell<Rng>,
    /// A message is being applied (`Node::handle` runs): asks made meanwhile are queued.
    handling: Cell<bool>,
    /// Asks a shard makes of itself are applied at once when nothing waits for it, as
    /// the reactor does (`reactor::Shard::ask`); off: every ask is queued, a point
    /// where another workflow may run ([`Sim::set_direct_self_asks`]).
    direct_self_asks: Cell<bool>,
}

/// A task spawned on the simulator and the flag that wakes it (`None`: finished).
type Spawned = Option<(Task, Arc<TaskFlag>)>;

/// The simulated world; see the [module docs](self).
pub struct Sim<M, N> {
    world: Rc<World<M, N>>,
}

/// Reservations one simulated mailbox grants (as `reactor::RESERVED_MAX`).
pub const SIM_RESERVED_MAX: usize = reactor::RESERVED_MAX;

impl<M: 'static, N: Node<M> + 'static> Sim<M, N> {
    /// A world of these shards, its clock at `start`, its scheduler seeded with `seed`.
    pub fn new(nodes: Vec<N>, start: UnixTime, seed: u64) -> Self {
        let n = nodes.len();
        Sim {
            world: Rc::new(World {
                stats: (0..n).map(|_| LayerStats::default()).collect(),
                lanes: RefCell::new(
                    (0..n)
                        .map(|_| (0..n).map(|_| VecDeque::new()).collect())
                        .collect(),
                ),
                full: RefCell::new(vec![false; n]),
                reserved: RefCell::new(vec![0; n]),
                nodes,
                now: Cell::new(start.0),
                timers: RefCell::new(Vec::new()),
                commits_to_fail: Cell::new(0),
                durable: RefCell::new(Vec::new()),
                tasks: RefCell::new(Vec::new()),
                rng: RefCell::new(Rng::new(seed)),
                handling: Cell::new(false),
                direct_self_asks: Cell::new(true),
            }),
        }
    }

    /// Whether an ask a shard makes of itself is applied at once when nothing waits
    /// for that shard (the default, as the reactor does), or queued like any other.
    pub fn set_direct_self_asks(&self, on: bool) {
        self.world.direct_self_asks.set(on);
    }

    /// The handle of shard `id`.
    pub fn shard(&self, id: ShardId) -> SimShard<M, N> {
        SimShard {
            world: self.world.clone(),
            id,
        }
    }

    /// Shard `id`'s state.
    pub fn node(&self, id: ShardId) -> &N {
        &self.world.nodes[id]
    }

    /// The number of shards.
    pub fn count(&self) -> usize {
        self.world.nodes.len()
    }

    /// The clock.
    pub fn now(&self) -> UnixTime {
        UnixTime(self.world.now.get())
    }

    /// Moves the clock forward by `d` (timers due by then fire on the next step).
    pub fn advance(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.world
            .now
            .set(self.world.now.get().saturating_add(nanos));
    }

    /// Whether shard `id`'s mailbox refuses every ask, tell and reservation.
    pub fn set_full(&self, id: ShardId, full: bool) {
        self.world.full.borrow_mut()[id] = full;
    }

    /// Makes the next `n` commits fail as a full disk does (nothing of them durable).
    pub fn fail_commits(&self, n: usize) {
        self.world.commits_to_fail.set(n);
    }

    /// Everything committed so far, in order.
    pub fn durable(&self) -> Vec<Mutation> {
        self.world.durable.borrow().clone()
    }

    /// The shard layer's counters of shard `id`.
    pub fn stats(&self, id: ShardId) -> &LayerStats {
        &self.world.stats[id]
    }

    /// Starts `f` (a workflow); [`run`](Self::run) drives it. Its result goes where `f`
    /// puts it (an `Rc<RefCell<…>>` the test holds).
    pub fn spawn(&self, f: impl Future<Output = ()> + 'static) {
        let flag = Arc::new(TaskFlag(AtomicBool::new(true)));
        self.world
            .tasks
            .borrow_mut()
            .push(Some((Box::pin(f), flag)));
    }

    /// Runs `f` to completion on its own (the rest of the world steps too) and returns
    /// its output.
    pub fn block_on<T: 'static>(&self, f: impl Future<Output = T> + 'static) -> T {
        let out = Rc::new(RefCell::new(None));
        let o = out.clone();
        self.spawn(async move {
            *o.borrow_mut() = Some(f.await);
        });
        self.run();
        let v = out.borrow_mut().take();
        v.expect("the workflow did not finish: it waits on something that never comes")
    }

    /// Steps the world until every spawned workflow has finished and no message is left.
    /// Steps: poll a runnable workflow, else deliver a queued message, else fire the next
    /// timer; each choice among several is the seed's.
    pub fn run(&self) {
        // A bound on steps: a workflow that never finishes is a bug the test should see,
        // not a hang. Generous: thousands of workflows of dozens of steps each.
        const STEPS_MAX: usize = 50_000_000;
        for _ in 0..STEPS_MAX {
            if self.poll_one() || self.deliver_one() || self.fire_timer() {
                continue;
            }
            return;
        }
        panic!("the simulation did not settle within {STEPS_MAX} steps");
    }

    fn poll_one(&self) -> bool {
        let runnable: Vec<usize> = self
            .world
            .tasks
            .borrow()
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                t.as_ref()
                    .filter(|(_, f)| f.0.load(Ordering::Acquire))
                    .map(|_| i)
            })
            .collect();
        if runnable.is_empty() {
            return false;
        }
        let i = runnable[self.world.rng.borrow_mut().below(runnable.len())];
        let Some((mut task, flag)) = self.world.tasks.borrow_mut()[i].take() else {
            return true;
        };
        flag.0.store(false, Ordering::Release);
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        if task.as_mut().poll(&mut cx).is_pending() {
            self.world.tasks.borrow_mut()[i] = Some((task, flag));
        }
        true
    }

    fn deliver_one(&self) -> bool {
        let n = self.count();
        let busy: Vec<(usize, usize)> = {
            let lanes = self.world.lanes.borrow();
            (0..n)
                .flat_map(|f| (0..n).map(move |t| (f, t)))
                .filter(|&(f, t)| !lanes[f][t].is_empty())
                .collect()
        };
        if busy.is_empty() {
            return false;
        }
        let (from, to) = busy[self.world.rng.borrow_mut().below(busy.len())];
        let Some(env) = self.world.lanes.borrow_mut()[from][to].pop_front() else {
            return true;
        };
        let now = self.now();
        self.world.handling.set(true);
        let reply = self.world.nodes[to].handle(env.from, env.msg, now);
        self.world.handling.set(false);
        if let Some(slot) = env.reply {
            *slot.reply.borrow_mut() = Some(reply);
            if let Some(w) = slot.waker.borrow_mut().take() {
                w.wake();
            }
        }
        true
    }

    fn fire_timer(&self) -> bool {
        let next = self.world.timers.borrow().iter().map(|t| t.at.0).min();
        let Some(at) = next else { return false };
        if at > self.world.now.get() {
            self.world.now.set(at);
        }
        let now = self.world.now.get();
        let (due, rest): (Vec<_>, Vec<_>) = self
            .world
            .timers
            .borrow_mut()
            .drain(..)
            .partition(|t| t.at.0 <= now);
        *self.world.timers.borrow_mut() = rest;
        for t in due {
            t.fired.set(true);
            if let Some(w) = t.waker.borrow_mut().take() {
                w.wake();
            }
        }
        true
    }
}

/// One simulated shard, as a service sees it.
pub struct SimShard<M, N> {
    world: Rc<World<M, N>>,
    id: ShardId,
}

impl<M, N> Clone for SimShard<M, N> {
    fn clone(&self) -> Self {
        SimShard {
            world: self.world.clone(),
            id: self.id,
        }
    }
}

/// The reply of a simulated ask.
pub struct SimReply<M> {
    slot: Rc<ReplySlot<M>>,
}

impl<M> Future for SimReply<M> {
    type Output = Option<M>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<M>> {
        if let Some(r) = self.slot.reply.borrow_mut().take() {
            return Poll::Ready(r);
        }
        *self.slot.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A simulated sleep.
pub struct SimSleep {
    timer: Rc<Timer>,
}

impl Future for SimSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.timer.fired.get() {
            return Poll::Ready(());
        }
        *self.timer.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Room reserved in a simulated mailbox.
pub struct SimRoom<M, N> {
    shard: SimShard<M, N>,
    to: ShardId,
    held: bool,
}

impl<M, N> FollowUp<M> for SimRoom<M, N> {
    fn to(&self) -> ShardId {
        self.to
    }

    fn tell(mut self, msg: M) {
        self.held = false;
        let w = &self.shard.world;
        w.reserved.borrow_mut()[self.to] -= 1;
        w.lanes.borrow_mut()[self.shard.id][self.to].push_back(Envelope {
            from: self.shard.id,
            msg,
            reply: None,
        });
    }
}

impl<M, N> Drop for SimRoom<M, N> {
    fn drop(&mut self) {
        if self.held {
            self.shard.world.reserved.borrow_mut()[self.to] -= 1;
        }
    }
}

impl<M: 'static, N: Node<M> + 'static> Shard for SimShard<M, N> {
    type Msg = M;
    type Room = SimRoom<M, N>;

    fn id(&self) -> ShardId {
        self.id
    }

    fn count(&self) -> usize {
        self.world.nodes.len()
    }

    fn shard_of(&self, key: &[u8]) -> ShardId {
        reactor::shard_of(key, self.count())
    }

    fn now(&self) -> UnixTime {
        UnixTime(self.world.now.get())
    }

    fn try_ask(&self, to: ShardId, msg: M) -> Result<impl Future<Output = Option<M>>, M> {
        if self.world.full.borrow()[to] {
            return Err(msg);
        }
        let w = &self.world;
        let nothing_waits = || w.lanes.borrow().iter().all(|from| from[to].is_empty());
        if to == self.id && w.direct_self_asks.get() && !w.handling.get() && nothing_waits() {
            w.handling.set(true);
            let reply = w.nodes[to].handle(self.id, msg, self.now());
            w.handling.set(false);
            let slot = Rc::new(ReplySlot {
                reply: RefCell::new(Some(reply)),
                waker: RefCell::new(None),
            });
            return Ok(SimReply { slot });
        }
        let slot = Rc::new(ReplySlot {
            reply: RefCell::new(None),
            waker: RefCell::new(None),
        });
        self.world.lanes.borrow_mut()[self.id][to].push_back(Envelope {
            from: self.id,
            msg,
            reply: Some(slot.clone()),
        });
        Ok(SimReply { slot })
    }

    fn try_tell(&self, to: ShardId, msg: M) -> Result<(), M> {
        if self.world.full.borrow()[to] {
            return Err(msg);
        }
        self.world.lanes.borrow_mut()[self.id][to].push_back(Envelope {
            from: self.id,
            msg,
            reply: None,
        });
        Ok(())
    }

    fn try_reserve(&self, to: ShardId) -> Option<SimRoom<M, N>> {
        let mut reserved = self.world.reserved.borrow_mut();
        if self.world.full.borrow()[to] || reserved[to] >= SIM_RESERVED_MAX {
            return None;
        }
        reserved[to] += 1;
        Some(SimRoom {
            shard: self.clone(),
            to,
            held: true,
        })
    }

    fn sleep(&self, d: Duration) -> impl Future<Output = ()> {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let timer = Rc::new(Timer {
            at: UnixTime(self.world.now.get().saturating_add(nanos)),
            fired: Rc::new(Cell::new(false)),
            waker: RefCell::new(None),
        });
        self.world.timers.borrow_mut().push(timer.clone());
        SimSleep { timer }
    }

    fn stats(&self) -> &LayerStats {
        &self.world.stats[self.id]
    }

    fn commit(
        &self,
        mutations: Vec<Mutation>,
        how: Durability,
    ) -> impl Future<Output = Result<Saved, Error>> {
        let world = self.world.clone();
        let sleep = self.sleep(Duration::ZERO);
        async move {
            // A commit is a point where other workflows run (the storage thread's group
            // commit), then it is decided.
            sleep.await;
            if mutations.is_empty() {
                return Ok(Saved::Durable);
            }
            let left = world.commits_to_fail.get();
            if left > 0 {
                world.commits_to_fail.set(left - 1);
                let reason = "the state store cannot save changes: No space left on device";
                return match how {
                    Durability::Retained => Ok(Saved::Deferred(reason.into())),
                    Durability::Now(_) => Err(Error::unavailable(reason)),
                };
            }
            world.durable.borrow_mut().extend(mutations);
            Ok(Saved::Durable)
        }
    }

    fn commit_later(&self, mutations: Vec<Mutation>) {
        self.world.durable.borrow_mut().extend(mutations);
    }
}

impl<M, N: super::Owns<T>, T> super::Owns<T> for SimShard<M, N> {
    fn owned(&self) -> &T {
        self.world.nodes[self.id].owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::ask::{ask, reserve, settle, Request};

    /// A counter per shard; `Add(n)` adds and answers the new value, and logs a change.
    struct Counter(Cell<u64>, RefCell<crate::shard::ChangeLog>);

    enum Msg {
        Add(u64),
        Value(u64),
    }

    struct Add(u64);
    impl Request<Msg> for Add {
        type Reply = u64;
        fn into_msg(self) -> Msg {
            Msg::Add(self.0)
        }
        fn reply(m: Msg) -> Option<u64> {
            match m {
                Msg::Value(v) => Some(v),
                Msg::Add(_) => None,
            }
        }
    }

    impl Node<Msg> for Counter {
        fn handle(&self, _: ShardId, m: Msg, _: UnixTime) -> Option<Msg> {
            match m {
                Msg::Add(n) => {
                    self.0.set(self.0.get() + n);
                    self.1.borrow_mut().push(crate::shard::Topic::Task, "");
                    Some(Msg::Value(self.0.get()))
                }
                Msg::Value(_) => None,
            }
        }
    }

    fn world(n: usize, seed: u64) -> Sim<Msg, Counter> {
        Sim::new(
            (0..n)
                .map(|_| Counter(Cell::new(0), RefCell::new(Default::default())))
                .collect(),
            UnixTime::from_secs(1_000),
            seed,
        )
    }

    #[test]
    fn asks_are_answered_and_interleave_by_seed() {
        let mut orders = std::collections::BTreeSet::new();
        for seed in 0..20 {
            let sim = world(2, seed);
            let log = Rc::new(RefCell::new(Vec::new()));
            for w in 0..3u64 {
                let sh = sim.shard(0);
                let log = log.clone();
                sim.spawn(async move {
                    let v = ask(&sh, 1, Add(w + 1)).await.unwrap();
                    log.borrow_mut().push((w, v));
                });
            }
            sim.run();
            assert_eq!(sim.node(1).0.get(), 6);
            assert_eq!(sim.node(1).1.borrow().seq(), 3);
            let order: Vec<u64> = log.borrow().iter().map(|(w, _)| *w).collect();
            orders.insert(order);
        }
        assert!(orders.len() > 1, "seeds give different interleavings");
    }

    /// As the reactor: an ask a shard makes of itself is applied when made if nothing
    /// waits for that shard, else queued behind what does; with the switch off, always
    /// queued.
    #[test]
    fn asks_to_self_are_applied_at_once_when_nothing_waits() {
        for direct in [true, false] {
            let sim = world(1, 3);
            sim.set_direct_self_asks(direct);
            let sh = sim.shard(0);
            let applied_when_asked = sim.block_on(async move {
                let pending = sh.try_ask(0, Msg::Add(2)).ok().unwrap();
                let at_once = sh.world.nodes[0].0.get() == 2;
                assert!(matches!(pending.await, Some(Msg::Value(2))));
                // A tell waits: the next ask goes behind it.
                assert!(sh.try_tell(0, Msg::Add(1)).is_ok());
                let behind = sh.try_ask(0, Msg::Add(1)).ok().unwrap();
                assert_eq!(sh.world.nodes[0].0.get(), 2, "overtook the queued tell");
                assert!(matches!(behind.await, Some(Msg::Value(4))));
                at_once
            });
            assert_eq!(applied_when_asked, direct);
        }
    }

    #[test]
    fn a_full_mailbox_is_waited_on_then_refused() {
        let sim = world(2, 1);
        sim.set_full(1, true);
        let t0 = sim.now();
        let r = sim.block_on({
            let sh = sim.shard(0);
            async move { ask(&sh, 1, Add(1)).await }
        });
        let e = r.unwrap_err();
        assert_eq!(e.kind, crate::shard::Kind::Unavailable);
        let waited = sim.now().saturating_duration_since(t0);
        assert!(waited >= crate::shard::ASK_PATIENCE, "{waited:?}");
        assert_eq!(sim.stats(0).asks_refused.get(), 1);
        // Room frees up while an ask waits: it goes through.
        sim.set_full(1, true);
        let sh = sim.shard(0);
        let out = Rc::new(Cell::new(0));
        let o = out.clone();
        sim.spawn(async move { o.set(ask(&sh, 1, Add(5)).await.unwrap()) });
        sim.advance(Duration::from_millis(3));
        sim.set_full(1, false);
        sim.run();
        assert_eq!(out.get(), 5);
    }

    #[test]
    fn reserved_room_is_bounded_and_always_delivers() {
        let sim = world(2, 7);
        let sh = sim.shard(0);
        let mut rooms: Vec<_> = (0..SIM_RESERVED_MAX)
            .map(|_| reserve(&sh, 1).unwrap())
            .collect();
        assert!(reserve(&sh, 1).is_err());
        assert_eq!(sim.stats(0).reservations_refused.get(), 1);
        // A full mailbox still takes what was reserved.
        sim.set_full(1, true);
        settle(rooms.pop().unwrap(), Add(2));
        drop(rooms);
        sim.run();
        assert_eq!(sim.node(1).0.get(), 2);
        sim.set_full(1, false);
        assert!(reserve(&sh, 1).is_ok(), "dropped rooms come back");
    }
}
