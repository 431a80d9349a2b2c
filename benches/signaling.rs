//! Relaying a signaling frame: splicing the raw payload (what the server does) versus
//! decoding it into a JSON tree and re-encoding it (what the reference does), for a
//! small ICE candidate and a typical ~3 KiB SDP offer.
//!
//! Run: `cargo bench --bench signaling`

use chatixia_core::ws::signaling::{interpret, relay_frame, relay_frame_reencoded, Action};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let sdp = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
               m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
               a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef0123456789\r\n\
               a=fingerprint:sha-256 AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89\r\n\
               a=setup:actpass\r\na=mid:0\r\na=sctp-port:5000\r\n"
        .repeat(6);
    let offer = serde_json::json!({"type": "offer", "peer_id": "agent-a", "target_id": "agent-b", "payload": {"sdp": sdp, "type": "offer"}});
    let cand = serde_json::json!({"type": "ice_candidate", "peer_id": "agent-a", "target_id": "agent-b",
        "payload": {"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}});
    vec![
        ("ice_candidate", serde_json::to_vec(&cand).unwrap()),
        ("offer_3k", serde_json::to_vec(&offer).unwrap()),
    ]
}

fn bench(c: &mut Criterion) {
    for (name, frame) in frames() {
        let mut g = c.benchmark_group(format!("relay/{name}"));
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_function("splice_raw_payload", |b| {
            b.iter(|| match interpret(black_box(&frame), "agent-a") {
                Action::Relay {
                    kind,
                    target,
                    payload,
                } => relay_frame(kind, "agent-a", &target, payload),
                _ => unreachable!(),
            })
        });
        g.bench_function("decode_and_reencode", |b| {
            b.iter(|| relay_frame_reencoded(black_box(&frame)).unwrap())
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
