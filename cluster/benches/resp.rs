//! Encoding a command: the direct encoder (`resp::encode_command`) against
//! `redis-protocol`'s (`encode_borrowed` of an array frame, sized by `encode_len`), on
//! the command a cross-node relay writes (`EVALSHA` of the relay script with a signaling
//! frame) and a short one. docs/BENCHMARKS.md, "Kept: commands encoded directly" (cluster).
//!
//! cargo bench -p chatixia-cluster --bench resp

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::BorrowedFrame;

fn codec(out: &mut Vec<u8>, args: &[&[u8]]) {
    let items: Vec<BorrowedFrame<'_>> = args.iter().map(|a| BorrowedFrame::BulkString(a)).collect();
    let frame = BorrowedFrame::Array(&items);
    let at = out.len();
    out.resize(at + frame.encode_len(false), 0);
    let n = encode_borrowed(&mut out[at..], &frame, false).unwrap();
    out.truncate(at + n);
}

fn bench(c: &mut Criterion) {
    let sha = [b'f'; 40];
    let frame = br#"{"type":"ice_candidate","peer_id":"peer-a","target_id":"peer-b","payload":{"candidate":"candidate:1 1 UDP 2122252543 192.168.1.20 50123 typ host","sdpMid":"0","sdpMLineIndex":0}}"#;
    let relay: Vec<&[u8]> = vec![
        b"EVALSHA",
        &sha,
        b"2",
        b"{chx}peers",
        b"{chx}nodes",
        b"peer-b",
        frame,
    ];
    let short: Vec<&[u8]> = vec![b"HGET", b"{chx}peers", b"peer-b"];
    for (name, args) in [("relay", &relay), ("short", &short)] {
        let mut g = c.benchmark_group(format!("resp_encode_{name}"));
        let mut out = Vec::with_capacity(4096);
        g.bench_function("direct", |b| {
            b.iter(|| {
                out.clear();
                chatixia_cluster::resp::encode_command(&mut out, black_box(args));
                black_box(out.len())
            })
        });
        g.bench_function("redis_protocol", |b| {
            b.iter(|| {
                out.clear();
                codec(&mut out, black_box(args));
                black_box(out.len())
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
