//! `bench storm` against a server started here: connect/register/close churn.
use crate::common;

use common::bench::{check_latency, Bench};

#[test]
fn churn_without_errors() {
    let b = Bench::start(1, 64, 1, &[]);
    let r = b.run(
        "storm",
        &[
            "--duration",
            "1.5",
            "--warmup",
            "0.3",
            "--concurrency",
            "8",
            "--source-ips",
            "4",
        ],
    );
    assert_eq!(r["scenario"], "storm");
    let up = r["upgrades_accepted"].as_u64().unwrap();
    let cycles = r["cycles_completed"].as_u64().unwrap();
    assert!(cycles > 20, "{r}");
    // Every accepted upgrade of the window completed its cycle, except the ones still
    // in flight when the window closed (at most one per loop).
    assert!(up >= cycles && up <= cycles + 8, "{r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    check_latency(&r["upgrade_latency_us"]);
    check_latency(&r["cycle_latency_us"]);
    assert!(
        r["upgrade_latency_us"]["p50"].as_u64() <= r["cycle_latency_us"]["p50"].as_u64(),
        "{r}"
    );
    assert!(r["upgrades_per_s"].as_f64().unwrap() > 0.0);
    // The server is left with no signaling connection (closes are graceful).
    let open = || -> u64 {
        b.server
            .get("/metrics")
            .text()
            .lines()
            .filter(|l| l.starts_with("chatixia_ws_connections_open"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let t = std::time::Instant::now();
    while open() != 0 && t.elapsed() < std::time::Duration::from_secs(3) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(open(), 0);
}
