//! Per-shard timers for periodic jobs, and a small `select` of two futures.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::event::LocalEvent;

/// Runs `job` every `period` on the current shard until `stop` is set. Missed ticks
/// (a busy shard) are skipped, not bunched: periodic jobs are sweeps, and running one
/// twice in a row gains nothing.
pub fn every(period: Duration, stop: LocalEvent, mut job: impl FnMut() + 'static) {
    monoio::spawn(async move {
        let mut interval = monoio::time::interval_at(monoio::time::Instant::now() + period, period);
        interval.set_missed_tick_behavior(monoio::time::MissedTickBehavior::Skip);
        loop {
            match select2(interval.tick(), stop.wait()).await {
                Either::Left(_) => job(),
                Either::Right(()) => return,
            }
        }
    });
}

/// The output of [`select2`].
pub enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Like [`select2`] but over futures the caller has pinned (e.g. with `std::pin::pin!`
/// in its own frame): nothing is allocated, which matters on paths that wait once per
/// idle connection. A plain function returning the selecting future itself (an
/// `async fn` would hold both pins twice): 16 bytes in the caller's frame.
pub fn select2_pinned<'a, A: Future, B: Future>(
    a: Pin<&'a mut A>,
    b: Pin<&'a mut B>,
) -> impl Future<Output = Either<A::Output, B::Output>> + 'a {
    Select2Pinned { a, b }
}

struct Select2Pinned<'a, A, B> {
    a: Pin<&'a mut A>,
    b: Pin<&'a mut B>,
}

impl<A: Future, B: Future> Future for Select2Pinned<'_, A, B> {
    type Output = Either<A::Output, B::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(v) = self.a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(v));
        }
        if let Poll::Ready(v) = self.b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(v));
        }
        Poll::Pending
    }
}

/// Completes with whichever of `a` and `b` completes first (`a` is polled first); the
/// other is dropped.
pub async fn select2<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let a = std::pin::pin!(a);
    let b = std::pin::pin!(b);
    select2_pinned(a, b).await
}
