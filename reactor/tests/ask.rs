//! Request/reply and scatter-gather across shards, asks to self, handlers that give no
//! reply, and asks abandoned before their reply arrives.
mod common;

use std::sync::mpsc;

#[derive(Debug)]
enum Msg {
    Square(u64),
    Squared(u64),
    WhoAreYou,
    IAm(usize),
    Silent,
}

fn run(n: usize, driver: reactor::driver::DriverChoice) {
    let (tx, rx) = mpsc::channel::<Result<(), String>>();
    let running = common::start::<Msg, _, _>(n, driver, 8, move |shard, ()| {
        let tx = tx.clone();
        async move {
            let me = shard.id();
            shard.set_handler(move |_from, m| match m {
                Msg::Square(x) => Some(Msg::Squared(x * x)),
                Msg::WhoAreYou => Some(Msg::IAm(me)),
                Msg::Silent => None,
                other => panic!("unexpected {other:?}"),
            });
            let check = async {
                // Request/reply with every shard, many times (more than the lane capacity,
                // sequentially, so in-flight accounting must return to zero).
                for round in 0..100u64 {
                    for to in 0..shard.count() {
                        match shard.ask(to, Msg::Square(round + to as u64)).await {
                            Ok(Msg::Squared(v)) if v == (round + to as u64).pow(2) => {}
                            other => return Err(format!("ask {to}: {other:?}")),
                        }
                    }
                }
                // Scatter-gather, in shard order.
                let all = shard.ask_all(|_| Msg::WhoAreYou).await;
                let ids: Vec<usize> = all
                    .into_iter()
                    .map(|r| match r {
                        Ok(Msg::IAm(i)) => i,
                        other => panic!("gather: {other:?}"),
                    })
                    .collect();
                if ids != (0..shard.count()).collect::<Vec<_>>() {
                    return Err(format!("gather order {ids:?}"));
                }
                // No reply.
                let other = (me + 1) % shard.count();
                match shard.ask(other, Msg::Silent).await {
                    Err(reactor::AskError::NoReply) => {}
                    r => return Err(format!("silent: {r:?}")),
                }
                // Abandoned asks: drop the futures, then make sure the lane still works.
                for _ in 0..20 {
                    drop(shard.ask(other, Msg::Square(3)));
                }
                for _ in 0..5 {
                    monoio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                match shard.ask(other, Msg::Square(4)).await {
                    Ok(Msg::Squared(16)) => {}
                    r => return Err(format!("after abandon: {r:?}")),
                }
                // More asks in flight than the lane holds: the excess is refused, not lost.
                let asks: Vec<_> = (0..20).map(|i| shard.ask(other, Msg::Square(i))).collect();
                let (mut ok, mut full) = (0, 0);
                for a in asks {
                    match a.await {
                        Ok(_) => ok += 1,
                        Err(reactor::AskError::Full(_)) => full += 1,
                        Err(e) => return Err(format!("burst: {e:?}")),
                    }
                }
                if other != me && (ok != 8 || full != 12) {
                    return Err(format!("burst ok={ok} full={full}"));
                }
                Ok(())
            };
            tx.send(check.await).unwrap();
            shard.shutdown_event().wait().await;
        }
    });
    for _ in 0..n {
        rx.recv_timeout(common::WAIT)
            .expect("shard finished")
            .expect("checks");
    }
    assert_eq!(running.shutdown(common::WAIT), reactor::Stopped::Clean);
}

#[test]
fn ask_and_gather_two_shards() {
    for d in common::DRIVERS {
        run(2, d);
    }
}

#[test]
fn ask_and_gather_three_shards() {
    for d in common::DRIVERS {
        run(3, d);
    }
}
