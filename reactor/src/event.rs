//! Shard-local synchronisation: a one-shot event many tasks can await, and `yield_now`.
//! Single-threaded by design (`Rc`/`Cell`); nothing here crosses shards.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use slab::Slab;

/// A one-shot, shard-local event (e.g. "shutdown has begun"). Waiters register in a
/// slab and deregister when dropped, so a waiter costs one slot while it waits and
/// nothing after: awaiting it from a million connections does not leak.
#[derive(Clone, Default)]
pub struct LocalEvent {
    inner: Rc<EventInner>,
}

#[derive(Default)]
struct EventInner {
    set: Cell<bool>,
    waiters: RefCell<Slab<Waker>>,
}

impl LocalEvent {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the event and wakes every waiter. Idempotent.
    pub fn set(&self) {
        if self.inner.set.replace(true) {
            return;
        }
        let wakers: Vec<Waker> = self.inner.waiters.borrow_mut().drain().collect();
        for w in wakers {
            w.wake();
        }
    }

    pub fn is_set(&self) -> bool {
        self.inner.set.get()
    }

    /// A future that completes once the event is set.
    pub fn wait(&self) -> Wait {
        Wait {
            inner: self.inner.clone(),
            key: None,
        }
    }
}

/// Future returned by [`LocalEvent::wait`].
pub struct Wait {
    inner: Rc<EventInner>,
    key: Option<usize>,
}

impl Future for Wait {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.set.get() {
            self.key = None;
            return Poll::Ready(());
        }
        let inner = self.inner.clone();
        let mut waiters = inner.waiters.borrow_mut();
        match self.key {
            Some(k) if waiters.contains(k) => {
                if !waiters[k].will_wake(cx.waker()) {
                    waiters[k] = cx.waker().clone();
                }
            }
            _ => self.key = Some(waiters.insert(cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            let mut waiters = self.inner.waiters.borrow_mut();
            if waiters.contains(k) {
                waiters.remove(k);
            }
        }
    }
}

/// Yields once to the other tasks of this shard.
///
/// monoio puts a task that wakes itself while it runs at the *front* of the run queue
/// (it treats that as a yield of the I/O loop, not of the task), so a plain
/// "wake self, return Pending" would run the same task again and starve the others.
/// Instead the yielding task parks its waker in a shard-local list and wakes the
/// shard's yield pump task, which goes to the back of the queue; when the pump runs,
/// every task queued before it has run, and it wakes the yielders, which go to the back
/// in turn. Off a reactor shard (no pump) it falls back to waking itself.
#[derive(Default)]
pub(crate) struct YieldNow {
    yielded: bool,
}

thread_local! {
    static YIELDERS: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
    static PUMP: RefCell<Option<Waker>> = const { RefCell::new(None) };
    static PUMP_RUNNING: Cell<bool> = const { Cell::new(false) };
}

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        if !PUMP_RUNNING.with(Cell::get) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        YIELDERS.with(|y| y.borrow_mut().push(cx.waker().clone()));
        PUMP.with(|p| {
            if let Some(w) = p.borrow().as_ref() {
                w.wake_by_ref();
            }
        });
        Poll::Pending
    }
}

/// The shard's yield pump (see [`YieldNow`]). Runs for the life of the shard.
/// Yields once to the shard's scheduler, letting other ready tasks run.
pub async fn yield_now() {
    YieldNow::default().await
}

pub(crate) async fn yield_pump() {
    PUMP_RUNNING.with(|r| r.set(true));
    let mut batch: Vec<Waker> = Vec::new();
    std::future::poll_fn(|cx| {
        PUMP.with(|p| {
            let mut p = p.borrow_mut();
            if !p.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *p = Some(cx.waker().clone());
            }
        });
        YIELDERS.with(|y| std::mem::swap(&mut *y.borrow_mut(), &mut batch));
        for w in batch.drain(..) {
            w.wake();
        }
        Poll::<()>::Pending
    })
    .await
}
