//! Per-shard timers for periodic jobs, a task's one timer for many waits ([`within`]),
//! and a small `select` of two futures.

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

/// [`within`]'s deadline passed before its future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

/// Runs `fut` until it completes or `timer` reaches `limit` ([`TimedOut`]). `timer` is
/// the task's own, kept pinned across all its waits (a connection's reads and writes),
/// instead of a fresh timer per wait (`monoio::time::timeout`): that one enters the
/// timer wheel when first polled and leaves it when dropped, twice per keep-alive
/// request. Moving a timer to a later deadline only records the new one (the wheel
/// files the entry again when its old deadline comes, without waking the task), so a
/// task whose deadlines move forward pays the wheel about once per timeout span, not
/// once per wait. An earlier `limit` than the timer's moves it back (the wheel again).
pub async fn within<F: Future>(
    mut timer: Pin<&mut monoio::time::Sleep>,
    limit: monoio::time::Instant,
    fut: F,
) -> Result<F::Output, TimedOut> {
    if timer.deadline() != limit {
        timer.as_mut().reset(limit);
    }
    let fut = std::pin::pin!(fut);
    match select2_pinned(fut, timer).await {
        Either::Left(v) => Ok(v),
        Either::Right(()) => Err(TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monoio::time::Instant;

    fn run<F: Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn one_timer_serves_many_waits_forward_and_back() {
        run(async {
            let start = Instant::now();
            let mut timer =
                std::pin::pin!(monoio::time::sleep_until(start + Duration::from_secs(60)));
            // A wait that completes first is not timed out, and leaves the timer usable.
            let r = within(timer.as_mut(), start + Duration::from_secs(60), async { 7 }).await;
            assert_eq!(r, Ok(7));
            // An earlier limit moves the timer back: the wait ends at it, not at 60 s.
            let r = within(
                timer.as_mut(),
                Instant::now() + Duration::from_millis(20),
                std::future::pending::<()>(),
            )
            .await;
            assert_eq!(r, Err(TimedOut));
            let took = start.elapsed();
            assert!(
                took >= Duration::from_millis(20) && took < Duration::from_secs(5),
                "{took:?}"
            );
            // After it fired, a later limit arms it again: a future that finishes before
            // it wins, and one that does not is timed out at the new limit.
            let r = within(
                timer.as_mut(),
                Instant::now() + Duration::from_millis(200),
                monoio::time::sleep(Duration::from_millis(10)),
            )
            .await;
            assert_eq!(r, Ok(()));
            let before = Instant::now();
            let r = within(
                timer.as_mut(),
                before + Duration::from_millis(30),
                std::future::pending::<()>(),
            )
            .await;
            assert_eq!(r, Err(TimedOut));
            assert!(before.elapsed() >= Duration::from_millis(30));
            // A limit already past times out at once (a future that is not ready loses).
            let r = within(timer.as_mut(), Instant::now(), std::future::pending::<()>()).await;
            assert_eq!(r, Err(TimedOut));
        });
    }
}
