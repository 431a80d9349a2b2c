//! `bench turn` (issue 24's load generator) against the embedded TURN server started
//! here: every round trip of the closed loop comes back, none lost or malformed, the
//! server's CPU is sampled; with `--gso --gro` the clients' bursts reach the server as
//! coalesced runs (counted by the server) and are relayed datagram by datagram.
use crate::common;

use common::turn_rig::{self, metric, SECRET};
use serde_json::Value;

fn bench_turn(turn: std::net::SocketAddr, pid: u32, extra: &[&str]) -> Value {
    let pid = pid.to_string();
    let server = turn.to_string();
    let mut args = vec![
        "bench",
        "turn",
        "--server",
        &server,
        "--secret",
        SECRET,
        "--allocations",
        "10",
        "--window",
        "4",
        "--duration",
        "1",
        "--warmup",
        "0.3",
        "--server-pid",
        &pid,
        "--json",
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = common::bench::run(&args);
    assert_eq!(code, Some(0), "bench turn failed: {err}\n{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn closed_loop_relays_without_loss_with_and_without_coalesced_bursts() {
    let (server, turn) = turn_rig::start(1, None, &[]);
    let pid = server.child.id();
    let coalesced = || metric(&server, "chatixia_turn_coalesced_datagrams_total", "");
    for (extra, runs) in [(&[][..], false), (&["--gso", "--gro"][..], true)] {
        let before = coalesced();
        let r = bench_turn(turn, pid, extra);
        assert_eq!(r["allocations"], 10, "{r}");
        assert_eq!(r["client_gso"], runs, "{r}");
        let rt = r["round_trips_measured"].as_u64().unwrap();
        assert!(rt > 100, "round trips in 1 s: {r}");
        assert_eq!(r["lost_measured"], 0, "{r}");
        assert_eq!(r["malformed_echoes"], 0, "{r}");
        assert!(r["relayed_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(
            r["server_cpu"]["cpu_us_per_op"].as_f64().unwrap() > 0.0,
            "{r}"
        );
        let got = coalesced() - before;
        if runs {
            // Bursts of up to 4 ChannelData per client, and the peer's echoes, came whole.
            assert!(got > rt / 2, "coalesced {got} of {rt} round trips: {r}");
        } else {
            assert_eq!(got, 0, "nothing is coalesced without GSO senders: {r}");
        }
    }
}
