//! Every shard floods every other shard through small rings; receivers check per-sender
//! order and that nothing is lost. A lost wakeup would leave a receiver asleep with mail
//! in its ring, and the test would time out.
mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc;

use reactor::timer::{select2, Either};

const PER_PAIR: u64 = 500;

fn run(n: usize, driver: reactor::driver::DriverChoice) {
    let (tx, rx) = mpsc::channel::<(usize, Vec<u64>)>();
    let running = common::start::<(usize, u64), _, _>(n, driver, 64, move |shard, ()| {
        let tx = tx.clone();
        async move {
            let me = shard.id();
            let next = Rc::new(RefCell::new(vec![0u64; shard.count()]));
            let seen = next.clone();
            shard.set_handler(move |from, (src, seq)| {
                assert_eq!(from, src, "sender id");
                let mut next = seen.borrow_mut();
                assert_eq!(seq, next[src], "order from shard {src}");
                next[src] += 1;
                None
            });
            // Send to every other shard, interleaved, retrying on a full ring.
            let mut sent = vec![0u64; shard.count()];
            let mut full = 0u64;
            loop {
                let mut progress = false;
                for to in (0..shard.count()).filter(|&t| t != me) {
                    if sent[to] < PER_PAIR {
                        match shard.try_tell(to, (me, sent[to])) {
                            Ok(()) => {
                                sent[to] += 1;
                                progress = true;
                            }
                            Err(m) => {
                                assert_eq!(m, (me, sent[to]), "full ring hands the message back");
                                full += 1;
                            }
                        }
                    }
                }
                if sent
                    .iter()
                    .enumerate()
                    .all(|(i, &s)| i == me || s == PER_PAIR)
                {
                    break;
                }
                if !progress {
                    reactor::yield_now().await;
                }
            }
            let _ = full;
            // Wait until everything addressed to us has arrived, then report.
            loop {
                let done = next
                    .borrow()
                    .iter()
                    .enumerate()
                    .all(|(i, &c)| i == me || c == PER_PAIR);
                if done {
                    break;
                }
                match select2(
                    monoio::time::sleep(std::time::Duration::from_millis(1)),
                    shard.shutdown_event().wait(),
                )
                .await
                {
                    Either::Left(_) => {}
                    Either::Right(_) => break,
                }
            }
            tx.send((me, next.borrow().clone())).unwrap();
            shard.shutdown_event().wait().await;
        }
    });
    let mut reports = Vec::new();
    for _ in 0..n {
        reports.push(
            rx.recv_timeout(common::WAIT)
                .expect("a shard did not receive all its mail (lost wakeup?)"),
        );
    }
    for (me, counts) in reports {
        for (src, c) in counts.iter().enumerate() {
            if src != me {
                assert_eq!(*c, PER_PAIR, "shard {me} from {src}");
            }
        }
    }
    assert_eq!(running.shutdown(common::WAIT), reactor::Stopped::Clean);
}

#[test]
fn two_shards_both_drivers() {
    for d in common::DRIVERS {
        run(2, d);
    }
}

#[test]
fn four_shards_both_drivers() {
    for d in common::DRIVERS {
        run(4, d);
    }
}
