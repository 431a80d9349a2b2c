//! Mailbox round trip (ask → reply) and one-way throughput (tells) between two pinned
//! shards, on both io drivers. Each measurement runs inside the shards and is timed
//! there; start-up is outside the timed region.
//!
//! Run: `cargo bench --bench mailbox`

use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use reactor::driver::DriverChoice;
use reactor::Reactor;

#[derive(Debug)]
enum Msg {
    Ping(u64),
    Pong(u64),
    Count,
}

/// Runs `iters` iterations of `kind` on shard 0 against shard 1; returns the time.
fn run(driver: DriverChoice, spin: Duration, kind: &'static str, iters: u64) -> Duration {
    let (tx, rx) = mpsc::channel::<Duration>();
    let reactor = Reactor::builder()
        .cores(2)
        .driver(driver)
        .mailbox_spin(spin)
        .build()
        .expect("reactor");
    let running = reactor
        .start(vec![(), ()], move |shard, ()| {
            let tx = tx.clone();
            async move {
                let received = std::rc::Rc::new(std::cell::Cell::new(0u64));
                let r = received.clone();
                shard.set_handler(move |_, m| match m {
                    Msg::Ping(x) => Some(Msg::Pong(x)),
                    Msg::Count => {
                        r.set(r.get() + 1);
                        None
                    }
                    Msg::Pong(_) => None,
                });
                if shard.id() == 0 {
                    let t = Instant::now();
                    match kind {
                        "round_trip" => {
                            for i in 0..iters {
                                match shard.ask(1, Msg::Ping(i)).await {
                                    Ok(Msg::Pong(x)) => assert_eq!(x, i),
                                    other => panic!("{other:?}"),
                                }
                            }
                        }
                        _ => {
                            let mut sent = 0;
                            while sent < iters {
                                match shard.try_tell(1, Msg::Count) {
                                    Ok(()) => sent += 1,
                                    Err(_) => reactor::yield_now().await,
                                }
                            }
                            // The last tell is handled when this ask's reply arrives
                            // (one lane, FIFO): the measurement covers delivery.
                            let _ = shard.ask(1, Msg::Ping(0)).await;
                        }
                    }
                    tx.send(t.elapsed()).unwrap();
                }
                shard.shutdown_event().wait().await;
            }
        })
        .expect("start");
    let d = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("bench run");
    running.shutdown(Duration::from_secs(5));
    d
}

fn bench(c: &mut Criterion) {
    // Each driver, with the default spin-before-sleep window and with none (sleep at
    // once), side by side in one run.
    for (driver, name) in [
        (DriverChoice::Uring, "io_uring"),
        (DriverChoice::Epoll, "epoll"),
    ] {
        for (spin, spin_name) in [
            (reactor::MAILBOX_SPIN_DEFAULT, "spin50us"),
            (Duration::ZERO, "nospin"),
        ] {
            let mut g = c.benchmark_group(format!("mailbox/{name}/{spin_name}"));
            g.throughput(Throughput::Elements(1));
            g.sample_size(20).measurement_time(Duration::from_secs(3));
            g.bench_function("round_trip", |b| {
                b.iter_custom(|iters| run(driver, spin, "round_trip", iters))
            });
            g.bench_function("tell_throughput", |b| {
                b.iter_custom(|iters| run(driver, spin, "tell", iters))
            });
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
