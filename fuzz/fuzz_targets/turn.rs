//! The TURN client fed arbitrary datagrams from its server. The input's bytes 8..20
//! are replaced by the transaction id of the client's pending request, so responses
//! reach the allocation, refresh and permission logic.
#![no_main]

use std::time::{Duration, Instant};

use chatixia_sidecar::turn::TurnClient;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let server = "127.0.0.1:3478".parse().unwrap();
    let peer = "127.0.0.1:40000".parse().unwrap();
    let mut c = TurnClient::new(server, "user", "pass", 1);
    let now = Instant::now();
    c.start(now);
    for (i, pkt) in data.split(|&b| b == 0xff).take(8).enumerate() {
        let mut pkt = pkt.to_vec();
        if let Some(req) = c.poll_transmit() {
            if let (Some(tid), Some(dst)) = (req.get(8..20), pkt.get_mut(8..20)) {
                dst.copy_from_slice(tid);
            }
        }
        let t = now + Duration::from_millis(100 * i as u64);
        let _ = c.handle_datagram(t, &pkt);
        while c.poll_event().is_some() {}
        if c.relayed().is_some() {
            c.add_permission(t, peer);
            let _ = c.send_indication(t, peer, b"x");
        }
        c.handle_timeout(t);
    }
});
