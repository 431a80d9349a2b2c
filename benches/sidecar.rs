//! Sidecar benchmarks (numbers go to docs/BENCHMARKS.md), a `harness = false` bench
//! of the root package because it runs the real server and sidecar binaries:
//! `cargo bench --bench sidecar [-- throughput|round_trip|memory]`
//!
//! Two sidecars on loopback, signaling through chatixia-core. Throughput: the test writes
//! `send` lines into A's IPC socket as fast as A takes them (A's backpressure throttles
//! the writer) and counts `message` lines out of B's. Round trip: A → B → A ping/pong,
//! each leg crossing both IPC sockets and the DataChannel. Memory: B's RSS before and
//! after opening peers.

#[path = "../tests/it/common/mod.rs"]
mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::sidecar::{pair, server_for, Sidecar};
use serde_json::json;

fn throughput(size: usize, count: usize) {
    let server = server_for(1, &["ta", "tb"]);
    let (a, mut b) = pair(&server, "ta", "tb");
    let filler = "x".repeat(size);
    let target = b.peer_id.clone();
    let mut w = a.writer_clone();
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || {
        let mut batch = Vec::new();
        for i in 0..count {
            let line = json!({"type":"send","payload":{"target_peer":target,"message":{"type":"task_stream_chunk","request_id":i.to_string(),"source_agent":"a","target_agent":"b","payload":{"d":filler}}}});
            batch.extend_from_slice(line.to_string().as_bytes());
            batch.push(b'\n');
            if batch.len() > 64 * 1024 {
                w.write_all(&batch).unwrap();
                batch.clear();
            }
        }
        w.write_all(&batch).unwrap();
    });
    for i in 0..count {
        let m = b.expect("chunk", Duration::from_secs(60), |v| v["type"] == "message");
        assert_eq!(
            m["payload"]["message"]["request_id"],
            i.to_string(),
            "order"
        );
    }
    let dt = t0.elapsed();
    writer.join().unwrap();
    let mb = (size * count) as f64 / 1e6;
    println!(
        "throughput payload={size}B n={count}: {:.1} MB/s, {:.0} msg/s ({dt:?})",
        mb / dt.as_secs_f64(),
        count as f64 / dt.as_secs_f64()
    );
}

fn bench_throughput() {
    throughput(64, 20_000);
    throughput(1024, 20_000);
    throughput(16 * 1024, 4_000);
}

fn bench_round_trip() {
    let server = server_for(1, &["ra", "rb"]);
    let (mut a, mut b) = pair(&server, "ra", "rb");
    let (pa, pb) = (a.peer_id.clone(), b.peer_id.clone());
    let mut samples = Vec::new();
    for i in 0..2000 {
        let t0 = Instant::now();
        a.send_json(json!({"type":"send","payload":{"target_peer":pb,"message":{"type":"ping","request_id":i.to_string()}}}));
        b.expect("ping", Duration::from_secs(5), |v| v["type"] == "message");
        b.send_json(json!({"type":"send","payload":{"target_peer":pa,"message":{"type":"pong","request_id":i.to_string()}}}));
        a.expect("pong", Duration::from_secs(5), |v| v["type"] == "message");
        samples.push(t0.elapsed());
    }
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "round trip (IPC→DC→IPC→test→IPC→DC→IPC), n=2000: p50 {:?}, p99 {:?}, max {:?}",
        pct(0.5),
        pct(0.99),
        samples[samples.len() - 1]
    );
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn bench_memory_per_peer() {
    const N: usize = 8;
    let names: Vec<String> = std::iter::once("hub".to_string())
        .chain((0..N).map(|i| format!("m{i}")))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let server = server_for(1, &names);
    let mut hub = Sidecar::start(&server, "hub");
    hub.wait_registered();
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(hub.child.id());
    let mut others = Vec::new();
    for name in &names[1..] {
        let s = Sidecar::start(&server, name);
        hub.expect_connected(&s.peer_id.clone());
        others.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kib(hub.child.id());
    println!(
        "memory: hub RSS {before} KiB idle, {after} KiB with {N} peers: {:.0} KiB per open peer",
        (after.saturating_sub(before)) as f64 / N as f64
    );
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument selects benchmarks by name.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let run = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    let benches: [(&str, fn()); 3] = [
        ("throughput", bench_throughput),
        ("round_trip", bench_round_trip),
        ("memory", bench_memory_per_peer),
    ];
    for (name, f) in benches {
        if run(name) {
            println!("== {name}");
            f();
        }
    }
}
