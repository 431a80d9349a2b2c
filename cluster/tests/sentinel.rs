//! The link through Redis Sentinel (`redis+sentinel://`): a primary, a replica and a
//! Sentinel, real processes on loopback. The link finds the primary through the
//! Sentinels, follows a failover when the primary is killed, refuses a replica named as
//! the primary, and `eval_durable` waits for a replica (`WAIT`).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatixia_cluster::{CmdError, Inbound, Script, Value};
use common::*;

const UP_WITHIN: Duration = Duration::from_secs(10);
/// From the kill of the primary to the link up on the promoted replica: Sentinel's
/// down-after (1 s) + its failover (about 1–2 s here, with up to 1 s of random delay
/// before it starts) + the reconnect; measured about 2–3 s (see the test's output).
const FAILOVER_WITHIN: Duration = Duration::from_secs(15);

const SET: Script = Script {
    name: "set",
    source: "redis.call('SET', KEYS[1], ARGV[1]) return 'done'",
};

const BAD: Script = Script {
    name: "bad",
    source: "return redis.error_reply('ERR no')",
};

/// A port nothing listens on (bound, then let go).
fn dead_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sentinel_url(sentinels: &[u16]) -> String {
    let list: Vec<String> = sentinels.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    format!("redis+sentinel://{}/{MASTER}", list.join(","))
}

fn port_of(shard: &Shard) -> String {
    shard.run(|link| async move {
        match link
            .command(vec![b("CONFIG"), b("GET"), b("port")])
            .unwrap()
            .await
        {
            Ok(Value::Array(a)) if a.len() == 2 => {
                String::from_utf8_lossy(a[1].as_bytes().unwrap()).into_owned()
            }
            other => panic!("CONFIG GET port answered {other:?}"),
        }
    })
}

fn durable_set(shard: &Shard, key: &str, value: &str) -> Result<Value, CmdError> {
    let (k, v) = (b(key), b(value));
    shard.run(move |link| async move { link.eval_durable("set", vec![k], vec![v]).unwrap().await })
}

fn publish_reaches(from: &Shard, to: &Shard, body: &str) {
    let body = b(body);
    let sent = body.clone();
    from.run(move |link| async move { link.publish("b", b"\x00key", &sent).unwrap() });
    match to.wait_for(UP_WITHIN, |e| matches!(e, Inbound::Message { .. })) {
        Inbound::Message {
            route_key,
            body: got,
        } => {
            assert_eq!(route_key, b"\x00key");
            assert_eq!(got, body);
        }
        _ => unreachable!(),
    }
}

#[test]
fn a_node_follows_a_failover_when_the_primary_is_killed() {
    if !sentinel_or_skip("a_node_follows_a_failover_when_the_primary_is_killed") {
        return;
    }
    let mut primary = Redis::start();
    let replica = Redis::replica_of(primary.port);
    let sentinel = Sentinel::start(primary.port);
    // The first Sentinel listed is not there: the link asks the next.
    let url = sentinel_url(&[dead_port(), sentinel.port]);
    let (node_a, a) = start_node(config(&url, "a"), vec![SET], 1, |_| 0);
    let (_node_b, bs) = start_node(config(&url, "b"), vec![SET], 1, |_| 0);
    a[0].wait_for(UP_WITHIN, is_up);
    bs[0].wait_for(UP_WITHIN, is_up);
    assert_eq!(port_of(&a[0]), primary.port.to_string());
    publish_reaches(&a[0], &bs[0], "before");
    // Acknowledged by the replica before it resolves: survives the primary's loss. The
    // replica must be attached first; on a loaded machine it may still miss `WAIT`'s
    // 500 ms (NOREPLICAS, the write stays on the primary): written again until it is
    // acknowledged.
    sentinel.wait_for_replica(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut retried = 0u64;
    loop {
        let r = durable_set(&a[0], "kept", "yes");
        if matches!(&r, Ok(Value::Error(e)) if e.starts_with("NOREPLICAS"))
            && Instant::now() < deadline
        {
            retried += 1;
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        assert_eq!(r, Ok(Value::Bulk(b("done"))));
        break;
    }

    let killed = Instant::now();
    primary.kill();
    for s in [&a[0], &bs[0]] {
        s.wait_for(Duration::from_secs(5), is_down);
    }
    let mut took = Vec::new();
    for s in [&a[0], &bs[0]] {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            s.wait_for(FAILOVER_WITHIN, is_up)
        })) {
            Ok(_) => took.push(killed.elapsed()),
            Err(_) => panic!(
                "no Up within {FAILOVER_WITHIN:?} of the kill; health {:?}; sentinel log:\n{}",
                node_a.health(),
                sentinel.log()
            ),
        }
    }
    eprintln!("failover followed: link up on the promoted replica {took:?} after the kill");
    assert_eq!(sentinel.primary_port(), Some(replica.port));
    assert_eq!(port_of(&a[0]), replica.port.to_string());
    assert_eq!(port_of(&bs[0]), replica.port.to_string());
    let (role, kept) = a[0].run(|link| async move {
        let role = link.command(vec![b("ROLE")]).unwrap().await.unwrap();
        let kept = link
            .command(vec![b("GET"), b("kept")])
            .unwrap()
            .await
            .unwrap();
        (role, kept)
    });
    assert!(
        matches!(&role, Value::Array(r) if r[0] == Value::Bulk(b("master"))),
        "{role:?}"
    );
    assert_eq!(kept, Value::Bulk(b("yes")));
    publish_reaches(&a[0], &bs[0], "after");
    // The new primary has no replica: a durable write says so.
    match durable_set(&a[0], "k2", "v") {
        Ok(Value::Error(e)) => assert!(e.starts_with("NOREPLICAS 0 of the 1"), "{e}"),
        other => panic!("a durable write without a replica: {other:?}"),
    }
    let st = node_a.stats();
    assert!(st.reconnects >= 1 && st.up, "{st:?}");
    // This one, and the first write's tries the replica was too late for.
    assert_eq!(st.unreplicated, 1 + retried);
}

#[test]
fn eval_durable_waits_for_the_replica_and_says_when_it_did_not_acknowledge() {
    if !sentinel_or_skip("eval_durable_waits_for_the_replica") {
        return;
    }
    let primary = Redis::start();
    let mut replica = Redis::replica_of(primary.port);
    let sentinel = Sentinel::start(primary.port);
    let mut cfg = config(&sentinel_url(&[sentinel.port]), "a");
    assert_eq!(cfg.replicas_min, 1, "sentinel mode waits for one replica");
    // Longer than the command timeout (700 ms): what is written behind a WAIT gets
    // wait_timeout more for its reply, so the link is not declared dead meanwhile.
    cfg.wait_timeout = Duration::from_millis(1000);
    // A renewal written behind a WAIT lands up to wait_timeout late: the lease must
    // allow for it (Node::start refuses a wait_timeout of two thirds of it or more).
    cfg.lease = Duration::from_secs(5);
    let (node, s) = start_node(cfg, vec![SET, BAD], 1, |_| 0);
    s[0].wait_for(UP_WITHIN, is_up);
    // The replica attached before the first WAIT (a loaded machine may still be syncing).
    sentinel.wait_for_replica(Duration::from_secs(10));
    let waits = |r: &Redis| {
        let stats = r.cli(&["INFO", "commandstats"]);
        stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_wait:calls="))
            .and_then(|l| l.split(',').next())
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    // The link's own WAITs: one after connecting, one after each lease renewal (every
    // lease / 3, for /readyz); the durable write makes one more.
    let before = waits(&primary);
    assert!(before >= 1, "no WAIT after connecting");
    assert_eq!(durable_set(&s[0], "k", "v1"), Ok(Value::Bulk(b("done"))));
    // Acknowledged: the replica has it now.
    assert_eq!(replica.cli(&["GET", "k"]), "v1");
    let made = waits(&primary) - before;
    assert!(
        (1..=2).contains(&made),
        "{made} WAITs for one durable write"
    );

    // The replica stopped (still connected, acknowledging nothing): the first durable
    // write's WAIT runs its full second; the ten written meanwhile share the next one.
    let w0 = waits(&primary);
    replica.signal("-STOP");
    let results = s[0].run(|link| async move {
        let first = link
            .eval_durable("set", vec![b("k")], vec![b("v2")])
            .unwrap();
        monoio::time::sleep(Duration::from_millis(100)).await;
        let rest: Vec<_> = (0..10)
            .map(|i| {
                link.eval_durable("set", vec![b("k")], vec![i.to_string().into_bytes()])
                    .unwrap()
            })
            .collect();
        // Not durable: answered at once, though behind the WAIT on the connection.
        let plain = link.eval("set", vec![b("p")], vec![b("x")]).unwrap().await;
        let mut out = vec![first.await];
        for r in rest {
            out.push(r.await);
        }
        (plain, out)
    });
    let (plain, out) = results;
    assert_eq!(plain, Ok(Value::Bulk(b("done"))));
    assert_eq!(out.len(), 11);
    for r in &out {
        match r {
            Ok(Value::Error(e)) => assert!(
                e.starts_with("NOREPLICAS 0 of the 1 replicas required acknowledged the write"),
                "{e}"
            ),
            other => panic!("a durable write with the replica stopped: {other:?}"),
        }
    }
    // One WAIT for the first, one shared by the ten, and the lease renewals' (lease / 3,
    // 1.7 s here: at most two in these ~2 s); not one per write.
    let made = waits(&primary) - w0;
    assert!(
        (2..=4).contains(&made),
        "{made} WAITs: one for the first, one for the ten"
    );
    assert!(
        node.health().up,
        "a WAIT longer than command_timeout is not a dead link"
    );
    assert_eq!(node.stats().unreplicated, 11);

    // Back: acknowledged again.
    replica.signal("-CONT");
    assert_eq!(durable_set(&s[0], "k", "v3"), Ok(Value::Bulk(b("done"))));
    // Gone for good: WAIT times out with none.
    replica.kill();
    match durable_set(&s[0], "k", "v4") {
        Ok(Value::Error(e)) => assert!(e.starts_with("NOREPLICAS 0 of the 1"), "{e}"),
        other => panic!("a durable write with the replica killed: {other:?}"),
    }
    // A script that fails is answered with its error, not held for the WAIT.
    let bad =
        s[0].run(|link| async move { link.eval_durable("bad", vec![], vec![]).unwrap().await });
    assert_eq!(bad, Ok(Value::Error("ERR no".into())));
    assert_eq!(node.stats().unreplicated, 12);
}

/// A stand-in Sentinel answering every command with `[127.0.0.1, port]`, `port` set by
/// the test: it can name a replica as the primary.
struct FakeSentinel {
    port: u16,
    names: Arc<AtomicU16>,
}

impl FakeSentinel {
    fn start(names: u16) -> FakeSentinel {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let names = Arc::new(AtomicU16::new(names));
        let n = names.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                let n = n.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(k) = c.read(&mut buf) {
                        if k == 0 {
                            break;
                        }
                        // One reply per command (each starts with '*').
                        for _ in buf[..k].iter().filter(|&&x| x == b'*') {
                            let p = n.load(Ordering::SeqCst).to_string();
                            let reply = format!("*2\r\n$9\r\n127.0.0.1\r\n${}\r\n{p}\r\n", p.len());
                            if c.write_all(reply.as_bytes()).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        FakeSentinel { port, names }
    }
}

#[test]
fn a_replica_named_as_the_primary_is_refused_until_the_primary_is_named() {
    if !redis_or_skip("a_replica_named_as_the_primary_is_refused") {
        return;
    }
    let primary = Redis::start();
    let replica = Redis::replica_of(primary.port);
    let fake = FakeSentinel::start(replica.port);
    let (node, s) = start_node(config(&sentinel_url(&[fake.port]), "a"), vec![], 1, |_| 0);
    let down = s[0].wait_for(UP_WITHIN, is_down);
    let deadline = Instant::now() + UP_WITHIN;
    loop {
        let reason = node.health().reason.unwrap_or_default();
        if reason.contains("(ROLE), not the primary") {
            break;
        }
        assert!(Instant::now() < deadline, "{down:?}; {reason}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!node.health().up);
    // The Sentinels name the primary now: the next attempt (after backoff) is up.
    fake.names.store(primary.port, Ordering::SeqCst);
    s[0].wait_for(UP_WITHIN, is_up);
    assert_eq!(port_of(&s[0]), primary.port.to_string());
}

#[test]
fn sentinels_that_know_no_such_master_leave_the_link_down_saying_so() {
    if !sentinel_or_skip("sentinels_that_know_no_such_master") {
        return;
    }
    let primary = Redis::start();
    let sentinel = Sentinel::start(primary.port);
    let url = format!("redis+sentinel://127.0.0.1:{}/other", sentinel.port);
    let (node, s) = start_node(config(&url, "a"), vec![], 1, |_| 0);
    s[0].wait_for(UP_WITHIN, is_down);
    let reason = node.health().reason.unwrap_or_default();
    assert!(
        reason.contains("no Sentinel named the primary \"other\"")
            && reason.contains("monitors no master named \"other\""),
        "{reason}"
    );
}

struct NoBell;

impl chatixia_cluster::Doorbell for NoBell {
    fn ring(&self) {}
}

#[test]
fn a_wait_timeout_that_would_outlast_the_lease_is_refused_at_start() {
    let mut cfg = config("redis+sentinel://127.0.0.1:1/m", "a");
    cfg.lease = Duration::from_millis(900);
    cfg.wait_timeout = Duration::from_millis(600);
    let bells: Vec<Arc<dyn chatixia_cluster::Doorbell>> = vec![Arc::new(NoBell)];
    let route: chatixia_cluster::Route = Arc::new(|_: &[u8]| 0);
    let e = chatixia_cluster::Node::start(cfg.clone(), vec![], bells.clone(), route.clone())
        .expect_err("refused");
    assert!(
        e.to_string().contains("under two thirds of the lease"),
        "{e}"
    );
    cfg.wait_timeout = Duration::ZERO;
    assert!(
        chatixia_cluster::Node::start(cfg.clone(), vec![], bells.clone(), route.clone()).is_err()
    );
    // Without WAITs (replicas_min 0) the wait timeout is not used.
    cfg.replicas_min = 0;
    let (node, _parts) = chatixia_cluster::Node::start(cfg, vec![], bells, route).unwrap();
    node.stop(Duration::from_millis(100));
}
