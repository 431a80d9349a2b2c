//! Graceful shutdown: applications that finish on the shutdown event stop cleanly and
//! quickly; one that ignores it is cut off at the timeout.
mod common;

use std::time::{Duration, Instant};

#[test]
fn clean_when_apps_drain() {
    for d in common::DRIVERS {
        let running = common::start::<(), _, _>(2, d, 8, |shard, ()| async move {
            shard.shutdown_event().wait().await;
            // Finish some work after the signal, like a response in flight.
            monoio::time::sleep(Duration::from_millis(20)).await;
        });
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        assert_eq!(
            running.shutdown(Duration::from_secs(5)),
            reactor::Stopped::Clean
        );
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}

#[test]
fn timeout_bounds_a_stuck_app() {
    for d in common::DRIVERS {
        let running = common::start::<(), _, _>(2, d, 8, |_shard, ()| async move {
            // Ignores shutdown.
            loop {
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let t = Instant::now();
        assert_eq!(
            running.shutdown(Duration::from_millis(300)),
            reactor::Stopped::TimedOut
        );
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }
}

#[test]
fn timers_run_until_stopped() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    for d in common::DRIVERS {
        let ticks = Arc::new(AtomicU32::new(0));
        let t2 = ticks.clone();
        let running = common::start::<(), _, _>(1, d, 8, move |shard, ()| {
            let t2 = t2.clone();
            async move {
                reactor::timer::every(
                    Duration::from_millis(10),
                    shard.shutdown_event().clone(),
                    move || {
                        t2.fetch_add(1, Ordering::Relaxed);
                    },
                );
                shard.shutdown_event().wait().await;
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            running.shutdown(Duration::from_secs(5)),
            reactor::Stopped::Clean
        );
        let n = ticks.load(Ordering::Relaxed);
        assert!(n >= 3, "timer ran {n} times in 200 ms");
    }
}
