//! The link against a real redis-server: commands, scripts, publishes between nodes,
//! members and leases, and the faults (Redis killed, restarted, stopped; a connection
//! cut; a subscription blackholed).

mod common;

use std::time::{Duration, Instant};

use chatixia_cluster::{CmdError, Inbound, Refused, Script, Value, ROUND_TRIP_BUCKETS_US};
use common::*;

const UP_WITHIN: Duration = Duration::from_secs(10);

fn live_of(e: &Inbound) -> Option<(&[String], &[String])> {
    match e {
        Inbound::Members { live, gone } => Some((live, gone)),
        _ => None,
    }
}

#[test]
fn commands_from_two_shards_are_pipelined_and_answered_in_order() {
    if !redis_or_skip("commands_from_two_shards_are_pipelined_and_answered_in_order") {
        return;
    }
    let redis = Redis::start();
    let (node, shards) = start_node(config(&redis.url(), "a"), vec![], 2, route2);
    for s in &shards {
        assert!(matches!(
            s.wait_for(UP_WITHIN, is_up),
            Inbound::Up { generation: 1 }
        ));
        let m = s.wait_for(UP_WITHIN, |e| live_of(e).is_some());
        assert_eq!(live_of(&m).unwrap().0, ["a".to_string()]);
    }
    const N: usize = 1000;
    let jobs: Vec<_> = shards
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.spawn(move |link| async move {
                assert!(link.is_up());
                let key = format!("list{i}");
                // All submitted before any is awaited: one pipeline.
                let replies: Vec<_> = (0..N)
                    .map(|j| {
                        link.command(vec![b("RPUSH"), b(&key), j.to_string().into_bytes()])
                            .unwrap()
                    })
                    .collect();
                assert_eq!(link.inflight(), N);
                let mut out = Vec::new();
                for r in replies {
                    out.push(r.await.unwrap());
                }
                let all = link
                    .command(vec![b("LRANGE"), b(&key), b("0"), b("-1")])
                    .unwrap()
                    .await
                    .unwrap();
                let bad = link.command(vec![b("NOSUCHCOMMAND")]).unwrap().await;
                (out, all, bad, link.inflight())
            })
        })
        .collect();
    for job in jobs {
        let (out, all, bad, inflight) = job.recv_timeout(Duration::from_secs(20)).unwrap();
        let want: Vec<_> = (1..=N as i64).map(Value::Int).collect();
        assert_eq!(out, want);
        let want: Vec<_> = (0..N)
            .map(|j| Value::Bulk(j.to_string().into_bytes()))
            .collect();
        assert_eq!(all, Value::Array(want));
        assert!(matches!(bad, Ok(Value::Error(e)) if e.contains("unknown command")));
        assert_eq!(inflight, 0);
    }
    let st = node.stats();
    assert!(st.up);
    assert_eq!(st.commands, 2 * (N as u64 + 2));
    assert_eq!(st.round_trips, st.commands);
    assert_eq!(st.round_trip_buckets.len(), ROUND_TRIP_BUCKETS_US.len() + 1);
    assert_eq!(st.round_trip_buckets.iter().sum::<u64>(), st.round_trips);
    assert!(st.lease_renewals >= 1);
    let h = node.health();
    assert!(h.up && h.reason.is_none() && h.generation == 1 && h.since_ns > 0);
    node.stop(Duration::from_secs(2));
    // Stopped: refused, and the lease handed back.
    let r = shards[0].run(|link| async move { link.command(vec![b("PING")]).err() });
    assert_eq!(r, Some(Refused::Closed));
    assert_eq!(
        redis.cli(&["ZCARD", &format!("t{}:nodes", std::process::id())]),
        "0"
    );
}

const ECHO: Script = Script {
    name: "echo",
    source: "return {KEYS[1], ARGV[1]}",
};

#[test]
fn scripts_run_by_sha_and_again_after_the_cache_is_flushed() {
    if !redis_or_skip("scripts_run_by_sha_and_again_after_the_cache_is_flushed") {
        return;
    }
    let redis = Redis::start();
    let (_node, shards) = start_node(config(&redis.url(), "a"), vec![ECHO], 1, route2);
    shards[0].wait_for(UP_WITHIN, is_up);
    let call = || {
        shards[0].run(|link| async move {
            link.eval("echo", vec![b("k")], vec![b("v")])
                .unwrap()
                .await
                .unwrap()
        })
    };
    let want = Value::Array(vec![Value::Bulk(b("k")), Value::Bulk(b("v"))]);
    assert_eq!(call(), want);
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]), "OK");
    // EVALSHA answers NOSCRIPT; the link retries with EVAL.
    assert_eq!(call(), want);
    assert_eq!(call(), want);
    let (unknown, nowait) = shards[0].run(|link| async move {
        let u = link.eval("nope", vec![], vec![]).unwrap().await.unwrap();
        let n = link.eval_nowait("echo", vec![b("k2")], vec![b("v")]);
        (u, n)
    });
    assert!(matches!(unknown, Value::Error(e) if e.starts_with("NOSCRIPT")));
    assert_eq!(nowait, Ok(()));
}

#[test]
fn a_publish_reaches_the_routed_shard_of_another_node_and_members_follow_stop() {
    if !redis_or_skip("a_publish_reaches_the_routed_shard_of_another_node") {
        return;
    }
    let redis = Redis::start();
    let (node_a, a) = start_node(config(&redis.url(), "a"), vec![], 2, route2);
    let (node_b, bs) = start_node(config(&redis.url(), "b"), vec![], 2, route2);
    for s in a.iter().chain(&bs) {
        s.wait_for(UP_WITHIN, is_up);
    }
    // Both see both (a's first report may predate b).
    for s in &a {
        s.wait_for(UP_WITHIN, |e| {
            live_of(e).is_some_and(|(l, _)| l == ["a", "b"])
        });
    }
    for (key, to) in [(b"\x01one".as_slice(), 1usize), (b"\x02two", 0)] {
        let key2 = key.to_vec();
        let r = a[0].run(move |link| async move { link.publish("b", &key2, b"hello body") });
        assert_eq!(r, Ok(()));
        let got = bs[to].wait_for(Duration::from_secs(5), |e| {
            matches!(e, Inbound::Message { .. })
        });
        match got {
            Inbound::Message { route_key, body } => {
                assert_eq!(route_key, key);
                assert_eq!(body, b"hello body");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(bs[0]
        .drain()
        .iter()
        .chain(bs[1].drain().iter())
        .all(|e| !matches!(e, Inbound::Message { .. })));
    assert_eq!(node_a.stats().publishes, 2);
    assert_eq!(node_b.stats().deliveries, 2);
    // b hands its lease back: a sees it leave the live nodes, not as gone.
    node_b.stop(Duration::from_secs(2));
    let m = a[1].wait_for(Duration::from_secs(3), |e| {
        live_of(e).is_some_and(|(l, _)| l == ["a"])
    });
    assert_eq!(live_of(&m).unwrap().1, [] as [String; 0]);
    assert_eq!(a[1].run(|link| async move { link.live_nodes() }), ["a"]);
}

#[test]
fn a_full_inbound_ring_drops_messages_and_counts_them() {
    if !redis_or_skip("a_full_inbound_ring_drops_messages_and_counts_them") {
        return;
    }
    let redis = Redis::start();
    let mut cfg = config(&redis.url(), "b");
    cfg.inbound_max = 4;
    let (node_b, bs) = start_node(cfg, vec![], 1, |_| 0);
    let (_node_a, a) = start_node(config(&redis.url(), "a"), vec![], 1, |_| 0);
    bs[0].wait_for(UP_WITHIN, is_up);
    a[0].wait_for(UP_WITHIN, is_up);
    // b learns of a (a's hello makes it renew at once): that Members event must be
    // taken before the pause, or it holds one of the ring's slots.
    bs[0].wait_for(UP_WITHIN, |e| live_of(e).is_some_and(|(l, _)| l.len() == 2));
    bs[0].pause();
    bs[0].drain();
    a[0].run(|link| async move {
        for i in 0..20u8 {
            link.publish("b", &[i], b"x").unwrap();
        }
        // A command after them: once answered, Redis has delivered them all.
        link.command(vec![b("PING")]).unwrap().await.unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while node_b.stats().deliveries + node_b.stats().inbound_dropped < 20 {
        assert!(Instant::now() < deadline, "{:?}", node_b.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    let st = node_b.stats();
    assert_eq!((st.deliveries, st.inbound_dropped), (4, 16), "{st:?}");
    bs[0].resume();
    let got: Vec<_> = bs[0]
        .drain()
        .into_iter()
        .filter_map(|e| match e {
            Inbound::Message { route_key, .. } => Some(route_key[0]),
            _ => None,
        })
        .collect();
    assert_eq!(got, [0, 1, 2, 3]);
}

#[test]
fn inbound_bytes_are_bounded_and_freed_as_the_shard_takes_them() {
    if !redis_or_skip("inbound_bytes_are_bounded_and_freed_as_the_shard_takes_them") {
        return;
    }
    let redis = Redis::start();
    let mut cfg = config(&redis.url(), "b");
    // Room for three 1 KiB messages (key + body), whatever the ring's count.
    cfg.inbound_bytes_max = 3 * 1025 + 100;
    let (node_b, bs) = start_node(cfg, vec![], 1, |_| 0);
    let (_node_a, a) = start_node(config(&redis.url(), "a"), vec![], 1, |_| 0);
    bs[0].wait_for(UP_WITHIN, is_up);
    a[0].wait_for(UP_WITHIN, is_up);
    bs[0].wait_for(UP_WITHIN, |e| live_of(e).is_some_and(|(l, _)| l.len() == 2));
    bs[0].pause();
    bs[0].drain();
    let send = |from: u8| {
        a[0].run(move |link| async move {
            for i in from..from + 10 {
                link.publish("b", &[i], &[0u8; 1024]).unwrap();
            }
            link.command(vec![b("PING")]).unwrap().await.unwrap();
        });
    };
    send(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while node_b.stats().deliveries + node_b.stats().inbound_dropped < 10 {
        assert!(Instant::now() < deadline, "{:?}", node_b.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    let st = node_b.stats();
    assert_eq!((st.deliveries, st.inbound_dropped), (3, 7), "{st:?}");
    // Taken by the shard, the bytes are free again.
    bs[0].resume();
    assert_eq!(
        bs[0]
            .drain()
            .iter()
            .filter(|e| matches!(e, Inbound::Message { .. }))
            .count(),
        3
    );
    bs[0].pause();
    send(100);
    let deadline = Instant::now() + Duration::from_secs(5);
    while node_b.stats().deliveries + node_b.stats().inbound_dropped < 20 {
        assert!(Instant::now() < deadline, "{:?}", node_b.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    let st = node_b.stats();
    assert_eq!((st.deliveries, st.inbound_dropped), (6, 14), "{st:?}");
    bs[0].resume();
}

#[test]
fn a_node_cut_off_from_redis_is_down_and_then_listed_as_gone() {
    if !redis_or_skip("a_node_cut_off_from_redis_is_down_and_then_listed_as_gone") {
        return;
    }
    let redis = Redis::start();
    let proxy = Proxy::start(redis.port);
    let (_node_a, a) = start_node(config(&redis.url(), "a"), vec![], 1, route2);
    let (node_b, bs) = start_node(config(&proxy.url(), "b"), vec![], 2, route2);
    a[0].wait_for(UP_WITHIN, is_up);
    for s in &bs {
        s.wait_for(UP_WITHIN, is_up);
    }
    a[0].wait_for(UP_WITHIN, |e| {
        live_of(e).is_some_and(|(l, _)| l == ["a", "b"])
    });
    proxy.cut();
    for s in &bs {
        let e = s.wait_for(Duration::from_secs(3), is_down);
        eprintln!("b: {e:?}");
        assert!(!s.run(|link| async move { link.is_up() }));
    }
    assert!(!node_b.health().up);
    // b's lease (0.9 s) runs out; a's renewals (every 0.3 s) list it as gone until the
    // server removes it.
    let m = a[0].wait_for(Duration::from_secs(3), |e| {
        live_of(e).is_some_and(|(l, g)| l == ["a"] && g == ["b"])
    });
    eprintln!("a: {m:?}");
    let key = format!("t{}:nodes", std::process::id());
    assert_eq!(redis.cli(&["ZREM", &key, "b"]), "1");
    a[0].wait_for(Duration::from_secs(3), |e| {
        live_of(e).is_some_and(|(l, g)| l == ["a"] && g.is_empty())
    });
    // b keeps trying (and failing) to reconnect.
    std::thread::sleep(Duration::from_millis(500));
    assert!(node_b.stats().reconnects >= 1);
}

#[test]
fn redis_killed_is_down_everywhere_and_a_restart_brings_a_new_generation() {
    if !redis_or_skip("redis_killed_is_down_everywhere") {
        return;
    }
    let mut redis = Redis::start();
    let (node, shards) = start_node(config(&redis.url(), "a"), vec![ECHO], 2, route2);
    for s in &shards {
        s.wait_for(UP_WITHIN, is_up);
    }
    redis.kill();
    for s in &shards {
        s.wait_for(Duration::from_secs(3), is_down);
        let r = s.run(|link| async move { link.command(vec![b("PING")]).err() });
        assert!(matches!(r, Some(Refused::Down(_))), "{r:?}");
    }
    let h = node.health();
    assert!(!h.up && h.reason.is_some(), "{h:?}");
    assert!(node.stats().refused >= 2);
    redis.restart();
    for s in &shards {
        let e = s.wait_for(Duration::from_secs(5), is_up);
        assert!(matches!(e, Inbound::Up { generation: 2 }), "{e:?}");
        let v = s.run(|link| async move {
            assert_eq!(link.generation(), 2);
            link.eval("echo", vec![b("k")], vec![b("v")])
                .unwrap()
                .await
                .unwrap()
        });
        assert_eq!(
            v,
            Value::Array(vec![Value::Bulk(b("k")), Value::Bulk(b("v"))])
        );
    }
    assert!(node.stats().reconnects >= 1);
    assert_eq!(node.health().generation, 2);
}

#[test]
fn a_command_to_a_stopped_redis_fails_as_lost_after_the_command_timeout() {
    if !redis_or_skip("a_command_to_a_stopped_redis_fails_as_lost") {
        return;
    }
    let redis = Redis::start();
    let mut cfg = config(&redis.url(), "a");
    cfg.probe_interval = Duration::from_secs(5);
    let timeout = cfg.command_timeout;
    let (node, shards) = start_node(cfg, vec![], 1, route2);
    shards[0].wait_for(UP_WITHIN, is_up);
    redis.signal("-STOP");
    let t0 = Instant::now();
    let r = shards[0].run(|link| async move { link.command(vec![b("PING")]).unwrap().await });
    let took = t0.elapsed();
    redis.signal("-CONT");
    assert!(
        matches!(&r, Err(CmdError::Lost(e)) if e.contains("command_timeout")),
        "{r:?}"
    );
    assert!(took >= timeout / 2, "{took:?}");
    shards[0].wait_for(Duration::from_secs(1), is_down);
    let e = shards[0].wait_for(Duration::from_secs(5), is_up);
    assert!(matches!(e, Inbound::Up { generation: 2 }), "{e:?}");
    assert!(node.stats().lost >= 1);
}

#[test]
fn a_blackholed_subscription_is_found_by_the_probe_and_reconnected() {
    if !redis_or_skip("a_blackholed_subscription_is_found_by_the_probe") {
        return;
    }
    let redis = Redis::start();
    let proxy = Proxy::start(redis.port);
    let (node, shards) = start_node(config(&proxy.url(), "a"), vec![], 1, route2);
    shards[0].wait_for(UP_WITHIN, is_up);
    // A few probes go through.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(node.stats().probes_missed, 0);
    assert_eq!(proxy.blackhole_subscriptions(), 1);
    let e = shards[0].wait_for(Duration::from_secs(3), is_down);
    assert!(
        matches!(&e, Inbound::Down { reason } if reason.contains("probe")),
        "{e:?}"
    );
    assert_eq!(node.stats().probes_missed, 1);
    let e = shards[0].wait_for(Duration::from_secs(3), is_up);
    assert!(matches!(e, Inbound::Up { generation: 2 }), "{e:?}");
    // The new subscription delivers.
    shards[0].run(|link| async move { link.publish("a", b"\x00k", b"self").unwrap() });
    shards[0].wait_for(
        Duration::from_secs(3),
        |e| matches!(e, Inbound::Message { body, .. } if body == b"self"),
    );
}

/// Counts its runs: a connect script that shows whether it ran.
const COUNT: Script = Script {
    name: "count",
    source: "return redis.call('INCR', KEYS[1])",
};

fn counting(mut c: chatixia_cluster::ClusterConfig) -> chatixia_cluster::ClusterConfig {
    let key = format!("{}connects:{}", c.prefix, c.node_id);
    c.on_connect.push(("count", vec![b(&key)], vec![]));
    c
}

/// Sets node `node`'s lease in Redis as another incarnation (`holder`) would, running
/// `ms` more on Redis's clock.
fn lease_held_by(redis: &Redis, node: &str, holder: &str, ms: u64) {
    let prefix = format!("t{}:", std::process::id());
    let r = redis.cli(&[
        "EVAL",
        "local t = redis.call('TIME') \
         local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
         redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1]) \
         redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) return 1",
        "2",
        &format!("{prefix}nodes"),
        &format!("{prefix}holders"),
        node,
        holder,
        &ms.to_string(),
    ]);
    assert_eq!(r, "1");
}

#[test]
fn a_second_process_with_a_live_node_id_is_refused_for_good_and_touches_nothing() {
    if !redis_or_skip("a_second_process_with_a_live_node_id_is_refused") {
        return;
    }
    let redis = Redis::start();
    let prefix = format!("t{}:", std::process::id());
    let (node, a) = start_node(counting(config(&redis.url(), "a")), vec![COUNT], 1, route2);
    a[0].wait_for(UP_WITHIN, is_up);
    let holder = redis.cli(&["HGET", &format!("{prefix}holders"), "a"]);
    assert_eq!(holder.len(), 32, "a 128-bit token in hex: {holder:?}");
    // A second process with the same id: refused while the first renews its lease, and
    // it stops for good once it saw a renewal (within a lease: 0.9 s here).
    let (twin, t) = start_node(counting(config(&redis.url(), "a")), vec![COUNT], 1, route2);
    let deadline = Instant::now() + Duration::from_secs(5);
    let fatal = loop {
        if let Some(f) = twin.fatal() {
            break f;
        }
        assert!(Instant::now() < deadline, "{:?}", twin.health());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        fatal.contains("--node-id \"a\"") && fatal.contains("held by another live node"),
        "{fatal}"
    );
    let h = twin.health();
    assert!(!h.up && h.generation == 0, "{h:?}");
    assert!(h.reason.unwrap().contains("held by another live node"));
    let e = t[0].wait_for(Duration::from_secs(1), is_down);
    assert!(
        matches!(&e, Inbound::Down { reason } if reason.contains("another process holds --node-id \"a\"")),
        "{e:?}"
    );
    // Its connect script never ran; the first keeps its lease and stays up.
    assert_eq!(redis.cli(&["GET", &format!("{prefix}connects:a")]), "1");
    assert_eq!(
        redis.cli(&["HGET", &format!("{prefix}holders"), "a"]),
        holder
    );
    twin.stop(Duration::from_secs(1));
    drop(twin);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(node.health().up);
    assert_eq!(node.health().generation, 1);
    assert_ne!(redis.cli(&["ZSCORE", &format!("{prefix}nodes"), "a"]), "");
}

#[test]
fn a_lease_left_by_a_dead_process_is_taken_once_it_runs_out() {
    if !redis_or_skip("a_lease_left_by_a_dead_process_is_taken_once_it_runs_out") {
        return;
    }
    let redis = Redis::start();
    // A process killed with -9 left a lease of 1.5 s; its successor with the same id
    // waits it out (not refused for good: nobody renews it) and takes it.
    lease_held_by(&redis, "a", "dead-incarnation", 1500);
    let (node, a) = start_node(config(&redis.url(), "a"), vec![], 1, route2);
    let e = a[0].wait_for(UP_WITHIN, is_down);
    assert!(
        matches!(&e, Inbound::Down { reason } if reason.contains("another process holds")),
        "{e:?}"
    );
    a[0].wait_for(Duration::from_secs(5), is_up);
    assert!(node.fatal().is_none());
    assert!(node.health().up);
}

#[test]
fn a_node_whose_id_was_taken_while_it_was_cut_off_stays_down_until_that_lease_runs_out() {
    if !redis_or_skip("a_node_whose_id_was_taken_while_it_was_cut_off") {
        return;
    }
    let redis = Redis::start();
    let prefix = format!("t{}:", std::process::id());
    let (node, a) = start_node(counting(config(&redis.url(), "a")), vec![COUNT], 1, route2);
    a[0].wait_for(UP_WITHIN, is_up);
    // Another incarnation holds the id now (this one was paused past its lease, say).
    lease_held_by(&redis, "a", "other", 1500);
    let e = a[0].wait_for(Duration::from_secs(2), is_down);
    assert!(
        matches!(&e, Inbound::Down { reason } if reason.contains("another process holds --node-id \"a\"")),
        "{e:?}"
    );
    // Down, never fatal (it was up: kept retrying), its connect script held back while
    // the other's lease runs; then it takes the id back and is up again.
    assert!(node.fatal().is_none());
    assert_eq!(redis.cli(&["GET", &format!("{prefix}connects:a")]), "1");
    let e = a[0].wait_for(Duration::from_secs(5), is_up);
    assert!(matches!(e, Inbound::Up { generation: 2 }), "{e:?}");
    assert_eq!(redis.cli(&["GET", &format!("{prefix}connects:a")]), "2");
    assert!(node.fatal().is_none());
}

/// A reply over `REPLY_BYTES_MAX` (a 70 MiB string, asked among other commands) is read
/// past and dropped: its command gets a `CHXDISCARDED` error reply, the commands around
/// it their replies, and the connection stays up (no reconnect).
#[test]
fn a_reply_over_the_bound_fails_its_command_not_the_connection() {
    if !redis_or_skip("a_reply_over_the_bound_fails_its_command_not_the_connection") {
        return;
    }
    let redis = Redis::start();
    // 70 MiB over loopback on a loaded machine: the bound is under test, not the
    // timeouts (the test config's 700 ms would reset the link mid-reply).
    let mut cfg = config(&redis.url(), "a");
    cfg.command_timeout = Duration::from_secs(5);
    cfg.probe_interval = Duration::from_secs(2);
    cfg.lease = Duration::from_secs(10);
    let (node, shards) = start_node(cfg, vec![], 1, route2);
    let s = &shards[0];
    s.wait_for(UP_WITHIN, is_up);
    let big = 70 << 20;
    assert!(big > chatixia_cluster::REPLY_BYTES_MAX);
    let job = s.spawn(move |link| async move {
        // A string of `big` zero bytes, made at once.
        let set = link
            .command(vec![
                b("SETRANGE"),
                b("big"),
                (big - 1).to_string().into_bytes(),
                b("x"),
            ])
            .unwrap()
            .await;
        // Pipelined: before, the oversized one, after.
        let before = link.command(vec![b("SET"), b("k"), b("v")]).unwrap();
        let get = link.command(vec![b("GET"), b("big")]).unwrap();
        let after = link.command(vec![b("GET"), b("k")]).unwrap();
        let (before, get, after) = (before.await, get.await, after.await);
        let len = link.command(vec![b("STRLEN"), b("big")]).unwrap().await;
        (set, before, get, after, len)
    });
    let (set, before, get, after, len) = job.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(set, Ok(Value::Int(big as i64)));
    assert_eq!(before, Ok(Value::Simple("OK".into())));
    assert!(
        matches!(&get, Ok(Value::Error(e)) if e.starts_with(chatixia_cluster::DISCARDED)),
        "{get:?}"
    );
    assert_eq!(after, Ok(Value::Bulk(b"v".to_vec())));
    assert_eq!(len, Ok(Value::Int(big as i64)));
    let st = node.stats();
    assert!(st.up);
    assert_eq!((st.reconnects, st.replies_discarded), (0, 1), "{st:?}");
}
