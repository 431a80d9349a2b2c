#![allow(dead_code)]
use std::future::Future;
use std::time::Duration;

use reactor::driver::DriverChoice;
use reactor::{Reactor, Shard};

pub const DRIVERS: [DriverChoice; 2] = [DriverChoice::Uring, DriverChoice::Epoll];

/// Starts `n` shards on `driver` with lanes of `capacity` messages.
pub fn start<M, F, Fut>(n: usize, driver: DriverChoice, capacity: usize, app: F) -> reactor::Running
where
    M: Send + 'static,
    F: Fn(Shard<M>, ()) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    Reactor::builder()
        .cores(n)
        .driver(driver)
        .mailbox_capacity(capacity)
        .pin(false)
        .build()
        .expect("reactor")
        .start((0..n).map(|_| ()).collect(), app)
        .expect("start")
}

/// Bound on any wait in these tests: a lost wakeup shows up as this timeout, not a hang.
pub const WAIT: Duration = Duration::from_secs(20);
