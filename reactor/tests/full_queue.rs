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
