//! `bench ws-relay` against a server started here: every frame sent in the measured
//! window is relayed and received, with ordered, positive latencies.
use crate::common;

use common::bench::{check_latency, Bench};

#[test]
fn pairs_exchange_offers_and_answers() {
    // Two meshes: pairs are formed within a mesh, where the server relays.
    let b = Bench::start(2, 40, 2, &[]);
    let r = b.run(
        "ws-relay",
        &[
            "--peers",
            "20",
            "--rate",
            "1000",
            "--duration",
            "1.5",
            "--warmup",
            "0.3",
        ],
    );
    assert_eq!(r["scenario"], "ws-relay");
    let sent = r["messages"]["sent"].as_u64().unwrap();
    let received = r["messages"]["received"].as_u64().unwrap();
    // 1000 msg/s for 1.5 s.
    assert!((1300..=1600).contains(&sent), "{r}");
    assert_eq!(sent, received, "{r}");
    assert_eq!(r["messages"]["lost"], 0);
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    check_latency(&r["latency_us"]);
    assert_eq!(r["latency_us"]["count"], received);
    assert!(r["relayed_per_s"].as_f64().unwrap() > 800.0, "{r}");
}

#[test]
fn too_few_peers_per_mesh_is_a_clear_error() {
    let b = Bench::start(1, 6, 4, &[]);
    let (code, _, stderr) = common::bench::run(&[
        "bench",
        "ws-relay",
        "--url",
        &b.url(),
        "--keys",
        b.keys_path.to_str().unwrap(),
        "--peers",
        "6",
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("paired within a mesh"), "{stderr}");
}
