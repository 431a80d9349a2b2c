//! A full lane hands the message back, counts the refusal, and delivers what it holds
//! once the receiver installs its handler.
mod common;

use std::sync::mpsc;

fn run(driver: reactor::driver::DriverChoice) {
    let (tx, rx) = mpsc::channel::<String>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = std::sync::Arc::new(std::sync::Mutex::new(Some(go_rx)));
    let running = common::start::<u32, _, _>(2, driver, 4, move |shard, ()| {
        let tx = tx.clone();
        let go_rx = go_rx.clone();
        async move {
            if shard.id() == 0 {
                // Shard 0 installs no handler yet: its ring from shard 1 fills up.
                let go = go_rx.lock().unwrap().take().unwrap();
                while go.try_recv().is_err() {
                    monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                let tx2 = tx.clone();
                shard.set_handler(move |from, m| {
                    tx2.send(format!("got {m} from {from}")).unwrap();
                    None
                });
            } else {
                let mut results = Vec::new();
                for i in 0..6u32 {
                    results.push(match shard.try_tell(0, i) {
                        Ok(()) => "ok".to_string(),
                        Err(back) => format!("full:{back}"),
                    });
                }
                let stats = shard.stats();
                tx.send(format!(
                    "{} sent={} refused={}",
                    results.join(","),
                    stats.sent,
                    stats.refused_full
                ))
                .unwrap();
            }
            shard.shutdown_event().wait().await;
        }
    });
    let report = rx.recv_timeout(common::WAIT).unwrap();
    assert_eq!(
        report, "ok,ok,ok,ok,full:4,full:5 sent=4 refused=2",
        "{driver:?}"
    );
    go_tx.send(()).unwrap();
    let mut got: Vec<String> = (0..4)
        .map(|_| rx.recv_timeout(common::WAIT).unwrap())
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            "got 0 from 1",
            "got 1 from 1",
            "got 2 from 1",
            "got 3 from 1"
        ]
    );
    assert!(
        rx.recv_timeout(std::time::Duration::from_millis(200))
            .is_err(),
        "refused messages must not arrive"
    );
    assert_eq!(running.shutdown(common::WAIT), reactor::Stopped::Clean);
}

#[test]
fn full_lane_hands_message_back() {
    for d in common::DRIVERS {
        run(d);
    }
}

/// A reservation is room held for one tell: with the lane full of plain tells a reserved
/// tell still goes through; reservations stop at `RESERVED_MAX` (and a dropped one gives
/// its room back); the local queue behaves the same. Everything sent arrives, in order.
fn reservations(driver: reactor::driver::DriverChoice) {
    let (tx, rx) = mpsc::channel::<String>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = std::sync::Arc::new(std::sync::Mutex::new(Some(go_rx)));
    let running = common::start::<u32, _, _>(2, driver, 4, move |shard, ()| {
        let tx = tx.clone();
        let go_rx = go_rx.clone();
        async move {
            if shard.id() == 0 {
                let go = go_rx.lock().unwrap().take().unwrap();
                while go.try_recv().is_err() {
                    monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                let tx2 = tx.clone();
                shard.set_handler(move |from, m| {
                    tx2.send(format!("{from}:{m}")).unwrap();
                    None
                });
            } else {
                let mut r = Vec::new();
                // Hold one reservation, then fill the lane with plain tells.
                let held = shard.reserve(0).expect("a reservation on an empty lane");
                let mut plain = 0;
                while shard.try_tell(0, plain).is_ok() {
                    plain += 1;
                }
                r.push(format!("plain={plain}"));
                // The lane is full for plain tells, not for the reservation.
                held.tell(100);
                // More reservations up to RESERVED_MAX; one more is refused.
                let mut more = Vec::new();
                while let Some(x) = shard.reserve(0) {
                    more.push(x);
                }
                r.push(format!("reservations={}", more.len() + 1));
                // Dropped: the room comes back, and a new reservation is granted.
                more.pop();
                let again = shard.reserve(0).expect("room given back by a drop");
                again.tell(101);
                for (i, x) in more.into_iter().enumerate().take(3) {
                    x.tell(200 + i as u32);
                }
                // The local queue: reserve, fill with plain tells, the reserved one goes.
                let local = shard.reserve(1).expect("local reservation");
                let mut n = 0;
                while shard.try_tell(1, 1000 + n).is_ok() {
                    n += 1;
                }
                local.tell(2000);
                r.push(format!("local_plain={n}"));
                tx.send(r.join(" ")).unwrap();
                let tx3 = tx.clone();
                shard.set_handler(move |from, m| {
                    if m >= 2000 {
                        tx3.send(format!("local {from}:{m}")).unwrap();
                    }
                    None
                });
            }
            shard.shutdown_event().wait().await;
        }
    });
    let report = rx.recv_timeout(common::WAIT).unwrap();
    assert_eq!(
        report,
        format!(
            "plain=4 reservations={} local_plain=4",
            reactor::RESERVED_MAX
        ),
        "{driver:?}"
    );
    go_tx.send(()).unwrap();
    let mut got: Vec<String> = Vec::new();
    while let Ok(m) = rx.recv_timeout(std::time::Duration::from_millis(500)) {
        got.push(m);
    }
    let from1: Vec<&str> = got
        .iter()
        .filter(|m| m.starts_with("1:"))
        .map(|s| s.as_str())
        .collect();
    assert_eq!(
        from1,
        ["1:0", "1:1", "1:2", "1:3", "1:100", "1:101", "1:200", "1:201", "1:202"],
        "{driver:?}"
    );
    assert!(got.contains(&"local 1:2000".to_string()), "{got:?}");
    assert_eq!(running.shutdown(common::WAIT), reactor::Stopped::Clean);
}

#[test]
fn reserved_tells_find_room_in_a_full_lane() {
    for d in common::DRIVERS {
        reservations(d);
    }
}
