//! A shard's own connections to Redis (`chatixia_cluster::pipe`) against a real
//! redis-server: what the publisher sends (no replies) reaches the subscription of the
//! shard's channel; a killed subscription is opened again, and a silent one (blackholed)
//! is found by the probes and opened again.

mod common;

use std::cell::RefCell;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chatixia_cluster::pipe::{self, Pipe, PipeStats};
use common::*;

const UP_WITHIN: Duration = Duration::from_secs(10);
const PROBE: Duration = Duration::from_millis(200);
const CHANNEL: &[u8] = b"tpipe:s:0:a";

/// `SPUBLISH KEYS[1] ARGV[1]`: what the pipe runs in these tests.
const PUB: &str = "return redis.call('SPUBLISH', KEYS[1], ARGV[1])";

thread_local! {
    static PIPE: RefCell<Option<Pipe>> = const { RefCell::new(None) };
}

fn pipe_here() -> Pipe {
    PIPE.with(|p| p.borrow().clone().expect("no pipe on this shard"))
}

/// Starts the shard's pipe: its deliveries (key, body) come on the returned channel.
fn start_pipe(shard: &Shard) -> mpsc::Receiver<(Vec<u8>, Vec<u8>)> {
    start_pipe_probing(shard, PROBE)
}

/// [`start_pipe`] with probes every `probe`.
fn start_pipe_probing(shard: &Shard, probe: Duration) -> mpsc::Receiver<(Vec<u8>, Vec<u8>)> {
    let (tx, rx) = mpsc::channel();
    shard.run(move |link| async move {
        let p = Pipe::new(CHANNEL.to_vec(), PUB);
        PIPE.with(|c| *c.borrow_mut() = Some(p.clone()));
        monoio::spawn(pipe::run_publisher(link.clone(), p.clone(), probe));
        monoio::spawn(pipe::run_subscriber(link, p, probe, move |k, b| {
            let _ = tx.send((k.to_vec(), b.to_vec()));
        }));
    });
    rx
}

/// Waits (on the shard) until the pipe is up and subscribed; its stats then.
fn wait_pipe(shard: &Shard) -> PipeStats {
    shard.run(|_| async move {
        let p = pipe_here();
        let deadline = Instant::now() + UP_WITHIN;
        while !(p.is_up() && p.is_subscribed()) {
            assert!(Instant::now() < deadline, "the pipe never came up");
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        p.stats()
    })
}

/// Sends `n` messages keyed `tag-i` through the pipe; how many it took.
fn send(shard: &Shard, tag: &'static str, n: usize) -> usize {
    shard.run(move |_| async move {
        let p = pipe_here();
        (0..n)
            .filter(|i| {
                let framed = chatixia_cluster::frame(format!("{tag}-{i}").as_bytes(), b"body");
                p.eval(&[CHANNEL], &[&framed.unwrap()])
            })
            .count()
    })
}

fn receive(rx: &mpsc::Receiver<(Vec<u8>, Vec<u8>)>, tag: &str, n: usize) {
    for i in 0..n {
        let (k, b) = rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("{tag}-{i} never delivered"));
        assert_eq!(
            (String::from_utf8(k).unwrap(), b),
            (format!("{tag}-{i}"), b"body".to_vec())
        );
    }
}

#[test]
fn what_the_publisher_sends_reaches_the_shards_subscription_in_order_without_replies() {
    if !redis_or_skip("what_the_publisher_sends_reaches_the_shards_subscription") {
        return;
    }
    let redis = Redis::start();
    let proxy = Proxy::start(redis.port);
    let (_node, shards) = up_node(&proxy.url(), "a");
    let rx = start_pipe(&shards[0]);
    let before = wait_pipe(&shards[0]);
    assert_eq!(before.connects, 2);
    assert_eq!(send(&shards[0], "m", 500), 500);
    receive(&rx, "m", 500);
    let s = wait_pipe(&shards[0]);
    assert_eq!(s.commands, 500);
    assert_eq!(s.deliveries, 500);
    assert!(s.writes < 500, "{s:?}: one write per turn, not per command");
    // A message of 4 MiB arrives over many reads, whole.
    let big: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    let b2 = big.clone();
    assert!(shards[0].run(move |_| async move {
        let framed = chatixia_cluster::frame(b"big", &b2).unwrap();
        pipe_here().eval(&[CHANNEL], &[&framed])
    }));
    let (k, b) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the large message");
    assert_eq!(k, b"big");
    assert!(b == big, "the large message arrived changed");
    // Replies are off: Redis sent the publisher the setup's answers (+OK, +OK, the
    // script's SHA: 5 + 5 + 47 bytes) and nothing for 500 scripts (`:1\r\n` each, 2,000 bytes).
    assert_eq!(proxy.bytes_sent_to(b"chx-a-p0"), 57);
}

#[test]
fn a_killed_subscription_is_opened_again_and_a_silent_one_is_found_by_its_probes() {
    if !redis_or_skip("a_killed_subscription_is_opened_again_and_a_silent_one_is_found") {
        return;
    }
    let redis = Redis::start();
    let proxy = Proxy::start(redis.port);
    let (_node, shards) = up_node(&proxy.url(), "a");
    let rx = start_pipe(&shards[0]);
    wait_pipe(&shards[0]);
    assert_eq!(send(&shards[0], "first", 10), 10);
    receive(&rx, "first", 10);

    // Killed: Redis closes it; the subscriber opens it again.
    redis.cli(&["CLIENT", "KILL", "ID", &client_id(&redis, "chx-a-s0")]);
    let deadline = Instant::now() + UP_WITHIN;
    while wait_pipe(&shards[0]).connects < 3 {
        assert!(Instant::now() < deadline, "never subscribed again");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(send(&shards[0], "again", 10), 10);
    receive(&rx, "again", 10);

    // Silent: what Redis sends it is dropped (the link's own subscription is not
    // touched). The probes stop arriving; after 3 intervals the pipe gives both
    // connections up and opens them again.
    // (The killed one is still in the proxy's list: 2.)
    assert_eq!(proxy.blackhole_subscriptions_of(b"chx-a-s0"), 2);
    let deadline = Instant::now() + UP_WITHIN;
    loop {
        let s = wait_pipe(&shards[0]);
        if s.probes_missed == 1 && s.connects >= 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the silence was never noticed: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(send(&shards[0], "after", 10), 10);
    receive(&rx, "after", 10);
}

/// A node `id` of one shard on the Redis at `url`, its link up.
fn up_node(url: &str, id: &str) -> (chatixia_cluster::Node, Vec<Shard>) {
    let (node, shards) = start_node(config(url, id), vec![], 1, route2);
    shards[0].wait_for(UP_WITHIN, is_up);
    (node, shards)
}

/// The id of the client named `name` in Redis's `CLIENT LIST`.
fn client_id(redis: &Redis, name: &str) -> String {
    let list = redis.cli(&["CLIENT", "LIST"]);
    list.lines()
        .find(|l| l.contains(&format!("name={name} ")))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .unwrap_or_else(|| panic!("no {name} in {list}"))
        .to_string()
}

/// Redis closes the publisher's connection (CLIENT KILL, a restart, a proxy timing it
/// out): with replies off nothing is read from it, so the relays queued next were
/// accepted, written into the closed connection and lost (the write succeeds locally;
/// only the one after it fails). Every relay the pipe accepts must arrive.
#[test]
fn a_publisher_closed_by_redis_is_noticed_before_relays_are_written_into_it() {
    if !redis_or_skip("a_publisher_closed_by_redis_is_noticed") {
        return;
    }
    let redis = Redis::start();
    let (_node, shards) = up_node(&redis.url(), "a");
    // Probes far apart: no probe write finds the closed connection first.
    let rx = start_pipe_probing(&shards[0], Duration::from_secs(30));
    let before = wait_pipe(&shards[0]);
    assert_eq!(send(&shards[0], "first", 10), 10);
    receive(&rx, "first", 10);

    redis.cli(&["CLIENT", "KILL", "ID", &client_id(&redis, "chx-a-p0")]);
    // The close reaches the shard's socket: the publisher goes down (or is already
    // up again, on a new connection).
    let c0 = before.connects;
    shards[0].run(move |_| async move {
        let p = pipe_here();
        let deadline = Instant::now() + UP_WITHIN;
        while p.is_up() && p.stats().connects == c0 {
            assert!(
                Instant::now() < deadline,
                "the publisher never saw the close"
            );
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let accepted = send(&shards[0], "after-kill", 10);
    receive(&rx, "after-kill", accepted);
    // And the pipe comes back.
    let deadline = Instant::now() + UP_WITHIN;
    while wait_pipe(&shards[0]).connects <= before.connects {
        assert!(
            Instant::now() < deadline,
            "the publisher never connected again"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(send(&shards[0], "again", 10), 10);
    receive(&rx, "again", 10);
}

/// `--node-id` takes any id without spaces or control characters, "nœud-1" among them;
/// Redis refuses such a client name (`CLIENT SETNAME`: only `!` to `~`). The link only
/// logs that; the shard's connections must come up all the same (not retry forever,
/// every relay through the link).
#[test]
fn the_pipe_comes_up_for_a_node_id_that_redis_refuses_as_a_client_name() {
    if !redis_or_skip("the_pipe_comes_up_for_a_node_id_that_redis_refuses") {
        return;
    }
    let redis = Redis::start();
    let (_node, shards) = up_node(&redis.url(), "nœud-1");
    let rx = start_pipe(&shards[0]);
    wait_pipe(&shards[0]);
    assert_eq!(send(&shards[0], "m", 10), 10);
    receive(&rx, "m", 10);
}
