//! A shard's side of the storage path: submit writes without blocking, await their commit
//! as a future that is woken on the shard's own thread.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use slab::Slab;

use crate::channel::{Completion, Reply, Request, Shared, WriteClass};
use crate::error::{StoreError, SubmitError};
use crate::records::Mutation;

enum Waiter {
    Waiting(Option<Waker>),
    Done(Result<(), StoreError>),
    /// The [`Ack`] was dropped before its commit finished; the slot stays taken until the
    /// completion arrives so its key is not reused while the write is in flight.
    Abandoned,
}

struct Inner {
    id: usize,
    tx: SyncSender<Request>,
    completions: rtrb::Consumer<Completion>,
    waiters: Slab<Waiter>,
    inflight_max: usize,
    shared: Arc<Shared>,
}

/// One shard's connection to the storage thread. `!Send`: create it on the shard's thread
/// with [`StoreHandle::link`](crate::StoreHandle::link) and call
/// [`on_doorbell`](Self::on_doorbell) whenever its doorbell rings.
#[derive(Clone)]
pub struct ShardLink {
    inner: Rc<RefCell<Inner>>,
}

impl std::fmt::Debug for ShardLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShardLink({})", self.inner.borrow().id)
    }
}

impl ShardLink {
    pub(crate) fn new(
        id: usize,
        tx: SyncSender<Request>,
        completions: rtrb::Consumer<Completion>,
        inflight_max: usize,
        shared: Arc<Shared>,
    ) -> ShardLink {
        ShardLink {
            inner: Rc::new(RefCell::new(Inner {
                id,
                tx,
                completions,
                waiters: Slab::with_capacity(inflight_max),
                inflight_max,
                shared,
            })),
        }
    }

    /// Queues `mutations` as one atomic write, without blocking. The returned [`Ack`]
    /// resolves once the write is durable (answer 2xx then) or its commit failed.
    /// An error means nothing was queued: answer 503.
    pub fn submit(&self, mutations: Vec<Mutation>) -> Result<Ack, SubmitError> {
        self.submit_with(mutations, WriteClass::Bounded, false)
    }

    /// [`submit`](Self::submit) held to the size bound of `class`: a write that grows
    /// the records past it resolves to [`StoreError::Full`], nothing of it applied.
    pub fn submit_as(
        &self,
        mutations: Vec<Mutation>,
        class: WriteClass,
    ) -> Result<Ack, SubmitError> {
        self.submit_with(mutations, class, false)
    }

    /// [`submit`](Self::submit) for a write that must not be lost to a disk outage (a
    /// revocation, which takes effect in memory at once): while the store is unavailable
    /// it is kept by the storage thread (up to `retained_writes_max`) and written first
    /// once the store recovers; its [`Ack`] then resolves with
    /// [`StoreError::Deferred`] at once.
    /// A retained write is never refused by the size bound ([`WriteClass::Progress`]):
    /// it is a revocation already in effect.
    pub fn submit_retained(&self, mutations: Vec<Mutation>) -> Result<Ack, SubmitError> {
        self.submit_with(mutations, WriteClass::Progress, true)
    }

    fn submit_with(
        &self,
        mutations: Vec<Mutation>,
        class: WriteClass,
        retain: bool,
    ) -> Result<Ack, SubmitError> {
        let mut inner = self.inner.borrow_mut();
        if inner.waiters.len() >= inner.inflight_max {
            return Err(SubmitError::InFlightFull);
        }
        let key = inner.waiters.insert(Waiter::Waiting(None));
        let req = Request::Write {
            mutations,
            reply: Reply::Link {
                link: inner.id,
                key,
            },
            retain,
            class,
        };
        match inner.tx.try_send(req) {
            Ok(()) => Ok(Ack {
                link: self.inner.clone(),
                key,
                finished: false,
            }),
            Err(e) => {
                inner.waiters.remove(key);
                let e = SubmitError::from(e);
                if e == SubmitError::QueueFull {
                    inner
                        .shared
                        .stats
                        .queue_full
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(e)
            }
        }
    }

    /// Takes the completions the storage thread published and wakes their [`Ack`]s; once
    /// the storage thread has stopped, fails every write still waiting with
    /// [`StoreError::Closed`]. Returns how many writes completed.
    pub fn on_doorbell(&self) -> usize {
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
                    complete(&mut inner.waiters, key, Err(StoreError::Closed), &mut wake);
                }
            }
        }
        for w in wake {
            w.wake();
        }
        n
    }

    /// Writes submitted and not yet completed (or completed and not yet awaited).
    pub fn inflight(&self) -> usize {
        self.inner.borrow().waiters.len()
    }
}

fn complete(
    waiters: &mut Slab<Waiter>,
    key: usize,
    result: Result<(), StoreError>,
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

/// Resolves when a submitted write is durable (`Ok`) or its commit failed (`Err`, answer
/// 500/503: the write is not acknowledged and may or may not be on disk as a whole).
/// Dropping it does not cancel the write.
#[must_use = "a write is acknowledged only once its Ack resolves"]
pub struct Ack {
    link: Rc<RefCell<Inner>>,
    key: usize,
    finished: bool,
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ack({})", self.key)
    }
}

impl Future for Ack {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.finished {
            return Poll::Ready(Err(StoreError::Closed));
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
                _ => Err(StoreError::Closed),
            },
            Some(Waiter::Abandoned) | None => Err(StoreError::Closed),
        };
        drop(inner);
        self.finished = true;
        Poll::Ready(ready)
    }
}

impl Drop for Ack {
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
