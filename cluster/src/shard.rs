//! A shard's side of the link: submit commands without blocking, await their replies as
//! futures woken on the shard's own thread, take what was published to this node.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use slab::Slab;

use crate::channel::{Completion, InboundItem, Request, Shared, What};
use crate::{CmdError, Inbound, LinkParts, Refused, Value};

enum Waiter {
    Waiting(Option<Waker>),
    Done(Result<Value, CmdError>),
    /// The [`Reply`] was dropped (or never wanted: a `_nowait` command); the slot stays
    /// taken until the completion arrives, so `inflight_max` bounds what the link thread
    /// holds for this shard.
    Abandoned,
}

struct Inner {
    shard: usize,
    tx: SyncSender<Request>,
    waker: Arc<mio::Waker>,
    completions: rtrb::Consumer<Completion>,
    inbound: rtrb::Consumer<InboundItem>,
    /// Bytes of the messages in `inbound` (the link adds, this side takes off).
    inbound_bytes: Arc<std::sync::atomic::AtomicUsize>,
    waiters: Slab<Waiter>,
    inflight_max: usize,
    shared: Arc<Shared>,
    scripts: Arc<[&'static str]>,
    up: bool,
    generation: u64,
    down_reason: String,
    live: Vec<String>,
}

/// One shard's side of the link (`!Send`: build it on the shard's thread with
/// [`ShardLink::new`] and call [`on_doorbell`](Self::on_doorbell) whenever the shard's
/// doorbell rings).
#[derive(Clone)]
pub struct ShardLink {
    inner: Rc<RefCell<Inner>>,
    /// This node's id and the prefix, outside the cell so they can be lent out.
    names: Rc<(String, String)>,
}

impl std::fmt::Debug for ShardLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShardLink({})", self.inner.borrow().shard)
    }
}

impl ShardLink {
    pub fn new(parts: LinkParts) -> ShardLink {
        let p = parts.0;
        let names = Rc::new((p.node_id.clone(), p.prefix.clone()));
        ShardLink {
            names,
            inner: Rc::new(RefCell::new(Inner {
                shard: p.shard,
                tx: p.tx,
                waker: p.waker,
                completions: p.completions,
                inbound: p.inbound,
                inbound_bytes: p.inbound_bytes,
                waiters: Slab::with_capacity(p.inflight_max.min(1024)),
                inflight_max: p.inflight_max,
                shared: p.shared,
                scripts: p.scripts,
                up: false,
                generation: 0,
                down_reason: "not connected yet".into(),
                live: Vec::new(),
            })),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.names.0
    }

    /// The namespace of every key and channel (`chx:`).
    pub fn prefix(&self) -> &str {
        &self.names.1
    }

    /// Whether the link is up, as of the last Up/Down this shard took in
    /// [`on_doorbell`](Self::on_doorbell).
    pub fn is_up(&self) -> bool {
        self.inner.borrow().up
    }

    /// The generation of the last Up this shard took.
    pub fn generation(&self) -> u64 {
        self.inner.borrow().generation
    }

    /// The link's generation while it is up, read from what the link thread shares now
    /// (not this shard's last Up): `None` while it is down.
    pub fn current_generation(&self) -> Option<u64> {
        let inner = self.inner.borrow();
        inner
            .shared
            .up
            .load(Ordering::Acquire)
            .then(|| inner.shared.generation.load(Ordering::Acquire))
    }

    /// The link thread has stopped for good.
    pub fn is_closed(&self) -> bool {
        self.inner.borrow().shared.exited.load(Ordering::Acquire)
    }

    /// This shard's index in the node.
    pub fn shard(&self) -> usize {
        self.inner.borrow().shard
    }

    /// Where the link is connected now (`None` while it is down, or in the instant the
    /// link thread writes it: asked again later).
    pub fn direct(&self) -> Option<crate::Direct> {
        let inner = self.inner.borrow();
        if !inner.shared.up.load(Ordering::Acquire) {
            return None;
        }
        let d = inner.shared.direct.try_lock().ok()?;
        d.clone()
    }

    /// The live nodes as of the last [`Inbound::Members`] this shard took.
    pub fn live_nodes(&self) -> Vec<String> {
        self.inner.borrow().live.clone()
    }

    /// Submits a command (its arguments as bytes) without blocking; the [`Reply`]
    /// resolves with Redis's reply (an error reply is `Ok(Value::Error)`). Refused at once,
    /// nothing sent, while the link is down, with `inflight_max` commands of this shard in
    /// flight, or once the link thread has stopped.
    pub fn command(&self, args: Vec<Vec<u8>>) -> Result<Reply, Refused> {
        self.submit(What::Command(args), false)
            .map(|key| self.reply(key))
    }

    /// [`command`](Self::command) whose reply nobody awaits: the link thread drops it (an
    /// error reply is counted, `nowait_errors`, and logged at debug).
    pub fn command_nowait(&self, args: Vec<Vec<u8>>) -> Result<(), Refused> {
        self.submit(What::Command(args), true).map(drop)
    }

    /// `EVALSHA` of the script named `script` (given at [`Node::start`](crate::Node::start))
    /// with `keys` and `args`. A `NOSCRIPT` reply (Redis lost its script cache) is retried
    /// once with `EVAL` by the link thread. A name not given at start resolves at once to
    /// `Value::Error("NOSCRIPT …")`, nothing sent.
    pub fn eval(
        &self,
        script: &str,
        keys: Vec<Vec<u8>>,
        args: Vec<Vec<u8>>,
    ) -> Result<Reply, Refused> {
        self.eval_inner(script, keys, args, false)
    }

    fn eval_inner(
        &self,
        script: &str,
        keys: Vec<Vec<u8>>,
        args: Vec<Vec<u8>>,
        durable: bool,
    ) -> Result<Reply, Refused> {
        let Some(index) = self.script(script) else {
            return self.resolved(Value::Error(format!(
                "NOSCRIPT no script named {script:?} was given to this node"
            )));
        };
        self.submit(
            What::Eval {
                script: index,
                keys,
                args,
                durable,
            },
            false,
        )
        .map(|key| self.reply(key))
    }

    /// [`eval`](Self::eval) of a write that must survive the loss of the primary: the
    /// link thread follows it on the same connection with `WAIT replicas_min
    /// wait_timeout` (one `WAIT` covers every durable eval written since the previous
    /// one) and resolves it with the script's reply only once `WAIT` reports at least
    /// `replicas_min` replicas; fewer resolve it with `Value::Error("NOREPLICAS k of the
    /// n replicas required acknowledged the write …")` (the script did run on the
    /// primary). A script error reply resolves at once. With `replicas_min` 0 (plain
    /// `redis://` by default) it is [`eval`](Self::eval). A connection lost before the
    /// `WAIT` answered resolves with [`CmdError::Lost`].
    pub fn eval_durable(
        &self,
        script: &str,
        keys: Vec<Vec<u8>>,
        args: Vec<Vec<u8>>,
    ) -> Result<Reply, Refused> {
        self.eval_inner(script, keys, args, true)
    }

    /// [`eval`](Self::eval) whose reply nobody awaits (see
    /// [`command_nowait`](Self::command_nowait)). A script name not given at start is
    /// logged and counted as a `nowait_errors`, nothing sent.
    pub fn eval_nowait(
        &self,
        script: &str,
        keys: Vec<Vec<u8>>,
        args: Vec<Vec<u8>>,
    ) -> Result<(), Refused> {
        let Some(index) = self.script(script) else {
            tracing::warn!(script, "eval_nowait of a script not given to this node");
            self.inner
                .borrow()
                .shared
                .stats
                .nowait_errors
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        self.submit(
            What::Eval {
                script: index,
                keys,
                args,
                durable: false,
            },
            true,
        )
        .map(drop)
    }

    /// [`eval_nowait`](Self::eval_nowait) of a script that publishes to another node's
    /// channel (a relay looked up and published in one script): counted in
    /// [`Stats::publishes`](crate::Stats) like [`publish`](Self::publish).
    pub fn eval_nowait_publishing(
        &self,
        script: &str,
        keys: Vec<Vec<u8>>,
        args: Vec<Vec<u8>>,
    ) -> Result<(), Refused> {
        self.eval_nowait(script, keys, args)?;
        self.inner
            .borrow()
            .shared
            .stats
            .publishes
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// `SPUBLISH` to node `node`'s channel (`{prefix}n:{node}`) a message for `route_key`
    /// (the key that picks the shard there) with `body`; no reply awaited. On the wire:
    /// `[u16 big-endian key length][key][body]` ([`crate::frame`]). A route key longer
    /// than [`crate::ROUTE_KEY_BYTES_MAX`] cannot be framed: refused as
    /// [`Refused::Busy`] and logged.
    pub fn publish(&self, node: &str, route_key: &[u8], body: &[u8]) -> Result<(), Refused> {
        let Some(message) = crate::frame(route_key, body) else {
            tracing::warn!(
                len = route_key.len(),
                max = crate::ROUTE_KEY_BYTES_MAX,
                "publish: a route key too long to frame"
            );
            self.inner
                .borrow()
                .shared
                .stats
                .refused
                .fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Busy);
        };
        let channel = channel_of(self.prefix(), node);
        self.submit(What::Publish { channel, message }, true)
            .map(drop)
    }

    /// Takes the completions the link thread published (waking their [`Reply`]s) and the
    /// inbound events for this shard, calling `f` for each [`Inbound`] in order (this
    /// link's `is_up`, `generation` and `live_nodes` are updated before `f` sees the
    /// event). Once the link thread has stopped, fails every command still waiting with
    /// [`CmdError::Closed`]. Returns how many items were taken.
    pub fn on_doorbell(&self, mut f: impl FnMut(Inbound)) -> usize {
        let mut wake = Vec::new();
        let mut n = 0;
        {
            let mut inner = self.inner.borrow_mut();
            // Read `exited` before draining: completions published before it was set are
            // in the ring by then.
            let exited = inner.shared.exited.load(Ordering::SeqCst);
            let inner = &mut *inner;
            while let Ok((key, result)) = inner.completions.pop() {
                n += 1;
                complete(&mut inner.waiters, key, result, &mut wake);
            }
            if exited {
                let waiting: Vec<usize> = inner
                    .waiters
                    .iter()
                    .filter(|(_, w)| matches!(w, Waiter::Waiting(_) | Waiter::Abandoned))
                    .map(|(k, _)| k)
                    .collect();
                for key in waiting {
                    n += 1;
                    complete(&mut inner.waiters, key, Err(CmdError::Closed), &mut wake);
                }
            }
        }
        for w in wake {
            w.wake();
        }
        loop {
            // One at a time, the borrow released before `f` runs: `f` may submit.
            let event = {
                let mut inner = self.inner.borrow_mut();
                let Ok(event) = inner.inbound.pop() else {
                    break;
                };
                match &event {
                    Inbound::Up { generation } => {
                        inner.up = true;
                        inner.generation = *generation;
                    }
                    Inbound::Down { reason } => {
                        inner.up = false;
                        inner.down_reason.clone_from(reason);
                    }
                    Inbound::Members { live, .. } => inner.live.clone_from(live),
                    Inbound::Message { route_key, body } => {
                        inner
                            .inbound_bytes
                            .fetch_sub(route_key.len() + body.len(), Ordering::AcqRel);
                    }
                }
                event
            };
            n += 1;
            f(event);
        }
        n
    }

    /// Commands submitted and not yet completed (or completed and not yet awaited).
    pub fn inflight(&self) -> usize {
        self.inner.borrow().waiters.len()
    }

    fn script(&self, name: &str) -> Option<usize> {
        self.inner.borrow().scripts.iter().position(|s| *s == name)
    }

    fn reply(&self, key: usize) -> Reply {
        Reply {
            link: self.inner.clone(),
            key,
            finished: false,
        }
    }

    fn resolved(&self, value: Value) -> Result<Reply, Refused> {
        let key = self
            .inner
            .borrow_mut()
            .waiters
            .insert(Waiter::Done(Ok(value)));
        Ok(self.reply(key))
    }

    fn submit(&self, what: What, discard: bool) -> Result<usize, Refused> {
        let mut inner = self.inner.borrow_mut();
        let refused = match () {
            _ if inner.shared.exited.load(Ordering::Acquire) => Some(Refused::Closed),
            _ if !inner.shared.up.load(Ordering::Acquire) => {
                let reason = match inner.shared.reason.try_lock() {
                    Ok(r) if !r.is_empty() => r.clone(),
                    _ => inner.down_reason.clone(),
                };
                Some(Refused::Down(reason))
            }
            _ if inner.waiters.len() >= inner.inflight_max => Some(Refused::Busy),
            _ => None,
        };
        if let Some(r) = refused {
            inner.shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(r);
        }
        let key = inner.waiters.insert(if discard {
            Waiter::Abandoned
        } else {
            Waiter::Waiting(None)
        });
        let req = Request {
            shard: inner.shard,
            key,
            what,
            discard,
            at: Instant::now(),
        };
        match inner.tx.try_send(req) {
            Ok(()) => {
                // Wake the link thread unless a wake is already on its way (it clears the
                // flag before it drains the queue).
                if !inner.shared.wake_pending.swap(true, Ordering::SeqCst) {
                    let _ = inner.waker.wake();
                }
                Ok(key)
            }
            Err(e) => {
                inner.waiters.remove(key);
                inner.shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => Refused::Busy,
                    TrySendError::Disconnected(_) => Refused::Closed,
                })
            }
        }
    }
}

/// The channel a node listens on: `{prefix}n:{node}`.
pub(crate) fn channel_of(prefix: &str, node: &str) -> Vec<u8> {
    format!("{prefix}n:{node}").into_bytes()
}

fn complete(
    waiters: &mut Slab<Waiter>,
    key: usize,
    result: Result<Value, CmdError>,
    wake: &mut Vec<Waker>,
) {
    match waiters.get_mut(key) {
        Some(Waiter::Abandoned) => {
            waiters.remove(key);
        }
        Some(slot @ Waiter::Waiting(_)) => {
            if let Waiter::Waiting(Some(w)) = std::mem::replace(slot, Waiter::Done(result)) {
                wake.push(w);
            }
        }
        Some(Waiter::Done(_)) | None => {}
    }
}

/// Resolves with the reply to a submitted command: `Ok(value)` (an error reply is
/// `Value::Error`), or why there is none ([`CmdError::Lost`]: the command may or may not
/// have run). Dropping it does not cancel the command.
#[must_use = "a command's reply is known only once its Reply resolves"]
pub struct Reply {
    link: Rc<RefCell<Inner>>,
    key: usize,
    finished: bool,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reply({})", self.key)
    }
}

impl Future for Reply {
    type Output = Result<Value, CmdError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.finished {
            return Poll::Ready(Err(CmdError::Closed));
        }
        let key = self.key;
        let mut inner = self.link.borrow_mut();
        let ready = match inner.waiters.get_mut(key) {
            Some(Waiter::Waiting(w)) => {
                match w {
                    Some(old) if old.will_wake(cx.waker()) => {}
                    _ => *w = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            Some(Waiter::Done(_)) => match inner.waiters.remove(key) {
                Waiter::Done(r) => r,
                _ => Err(CmdError::Closed),
            },
            Some(Waiter::Abandoned) | None => Err(CmdError::Closed),
        };
        drop(inner);
        self.finished = true;
        Poll::Ready(ready)
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut inner = self.link.borrow_mut();
        match inner.waiters.get_mut(self.key) {
            Some(Waiter::Done(_)) => {
                inner.waiters.remove(self.key);
            }
            Some(w @ Waiter::Waiting(_)) => *w = Waiter::Abandoned,
            _ => {}
        }
    }
}
