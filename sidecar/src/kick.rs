//! A reusable, single-waiter, shard-local wakeup (the reactor's `LocalEvent` is
//! one-shot). A kick while nobody waits is remembered until the next wait.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

#[derive(Clone, Default)]
pub struct Kick {
    inner: Rc<Inner>,
}

#[derive(Default)]
struct Inner {
    pending: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Kick {
    pub fn kick(&self) {
        self.inner.pending.set(true);
        if let Some(w) = self.inner.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Completes at the next kick (or at once if one is pending), consuming it.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.inner.pending.replace(false) {
                return Poll::Ready(());
            }
            *self.inner.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}
