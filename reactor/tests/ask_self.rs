//! Asks a shard makes of itself: applied at once when nothing waits before them,
//! queued behind what does, and never applied inside the handler.
mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::mpsc;

#[derive(Debug)]
enum Msg {
    Bump,
    Get,
    Count(u64),
    /// Asks this shard to `Bump` from inside the handler.
    Nest,
}

fn run(driver: reactor::driver::DriverChoice) {
    let (tx, rx) = mpsc::channel::<Result<(), String>>();
    let running = common::start::<Msg, _, _>(1, driver, 8, move |shard, ()| {
        let tx = tx.clone();
        async move {
            let me = shard.id();
            let count = Rc::new(Cell::new(0u64));
            let nested = Rc::new(RefCell::new(Vec::new()));
            {
                let (count, nested, inner) = (count.clone(), nested.clone(), shard.clone());
                shard.set_handler(move |_from, m| match m {
                    Msg::Bump => {
                        count.set(count.get() + 1);
                        Some(Msg::Count(count.get()))
                    }
                    Msg::Get => Some(Msg::Count(count.get())),
                    Msg::Nest => {
                        let before = count.get();
                        nested.borrow_mut().push(inner.ask(me, Msg::Bump));
                        // Not applied inside this handler.
                        Some(Msg::Count(count.get() - before))
                    }
                    other => panic!("unexpected {other:?}"),
                });
            }
            let check = async {
                // Nothing queued: applied when asked, before the future is polled.
                let a = shard.ask(me, Msg::Bump);
                if count.get() != 1 {
                    return Err(format!("not applied at once: {}", count.get()));
                }
                match a.await {
                    Ok(Msg::Count(1)) => {}
                    r => return Err(format!("direct: {r:?}")),
                }
                // A tell waits in the local queue: the ask goes behind it.
                if shard.try_tell(me, Msg::Bump).is_err() {
                    return Err("tell refused".into());
                }
                let a = shard.ask(me, Msg::Get);
                if count.get() != 1 {
                    return Err("the ask overtook the queued tell".into());
                }
                match a.await {
                    Ok(Msg::Count(2)) => {}
                    r => return Err(format!("behind the tell: {r:?}")),
                }
                // An ask made by the handler is queued, and answered after it.
                match shard.ask(me, Msg::Nest).await {
                    Ok(Msg::Count(0)) => {}
                    r => return Err(format!("nested ask applied inside: {r:?}")),
                }
                let inner = nested.borrow_mut().pop().ok_or("no nested ask")?;
                match inner.await {
                    Ok(Msg::Count(3)) => {}
                    r => return Err(format!("nested: {r:?}")),
                }
                // And direct again once the queue is empty.
                let a = shard.ask(me, Msg::Bump);
                if count.get() != 4 {
                    return Err("not direct after the queue emptied".into());
                }
                drop(a);
                Ok(())
            };
            tx.send(check.await).unwrap();
            shard.shutdown_event().wait().await;
        }
    });
    rx.recv_timeout(common::WAIT)
        .expect("shard finished")
        .expect("checks");
    assert_eq!(running.shutdown(common::WAIT), reactor::Stopped::Clean);
}

#[test]
fn asks_to_self_on_each_driver() {
    for d in common::DRIVERS {
        run(d);
    }
}
