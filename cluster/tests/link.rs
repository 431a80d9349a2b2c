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

/// A reply over `REPLY_BYTES_MAX` (a 70 MiB string, asked among other commands) is read
/// past and dropped: its command gets a `CHXDISCARDED` error reply, the commands around
/// it their replies, and the connection stays up (no reconnect).
#[test]
fn a_reply_over_the_bound_fails_its_command_not_the_connection() {
    if !redis_or_skip("a_reply_over_the_bound_fails_its_command_not_the_connection") {
        return;
    }
    let redis = Redis::start();
    let (node, shards) = start_node(config(&redis.url(), "a"), vec![], 1, route2);
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
