//! Review of issue 20, finding 7: the pairing budget's table size is a flag
//! (`--pair-budget-addresses-max`): a shard tracks at most that many addresses (a new
//! one makes it forget the least recently active, never a refusal); 0 is refused at
//! start.

use crate::common;
use common::*;

#[test]
fn the_pairing_budget_table_holds_at_most_the_flags_addresses() {
    let mut o = Opts::cores(1);
    o.args = vec!["--pair-budget-addresses-max".into(), "3".into()];
    let s = Server::with(o);
    for b in 1..=8u8 {
        let r = s
            .conn_from(std::net::Ipv4Addr::new(127, 0, 7, b))
            .post_json(
                "/api/pairing/pair",
                &json!({"code": "ZZZZ-ZZZZ-ZZZZ", "agent_name": "g"}),
            );
        // A wrong code from a fresh address: looked up (never refused by the table).
        assert_eq!(r.status, 401, "{b}: {}", r.text());
    }
    let text = s.get("/metrics").text();
    let keys: u64 = text
        .lines()
        .find(|l| l.starts_with("chatixia_pair_budget_keys{"))
        .and_then(|l| l.rsplit_once(' '))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap();
    assert_eq!(keys, 3, "{text}");

    let tmp = TempDir::new();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatixia-core"))
        .args([
            "--pair-budget-addresses-max",
            "0",
            "--listen",
            "127.0.0.1:0",
        ])
        .current_dir(&tmp.0)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--pair-budget-addresses-max must be at least 1"),
        "{err}"
    );
}
