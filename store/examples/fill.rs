//! Fills a data directory with approved pairing entries and their device-token grants,
//! for measuring the server's start-up (docs/BENCHMARKS.md, "Durable state").
//!
//! `cargo run --release -p chatixia-store --example fill -- DIR SERVER_SECRET ENTRIES`

use chatixia_store::{
    DeviceTokenRecord, HashKind, Mutation, PairingRecord, PairingStatus, Secrets, Store,
    StoreConfig,
};

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, secret, n] = args.as_slice() else {
        return Err("usage: fill DIR SERVER_SECRET ENTRIES".into());
    };
    let n: u32 = n.parse().map_err(|e| format!("ENTRIES: {e}"))?;
    let secrets = Secrets::derive(secret.as_bytes());
    let (store, _) =
        Store::open(dir.as_ref(), &secrets, StoreConfig::default()).map_err(|e| e.to_string())?;
    let h = store.handle();
    let now = 1_795_239_689_000_000_000u64;
    let mut batch = Vec::new();
    for i in 0..n {
        let id = i.wrapping_mul(2_654_435_761);
        let peer_id = format!("agent-{:06x}", i & 0xff_ffff);
        let token = format!("dt_{id:032x}");
        let hash = secrets.token_hash(HashKind::DeviceToken, &token);
        batch.push(Mutation::PutPairing(PairingRecord {
            id,
            agent_name: format!("bench-agent-{i}"),
            peer_id: peer_id.clone(),
            status: PairingStatus::Approved,
            created_at_ns: now,
            updated_at_ns: now,
            mesh: None,
            invited_by: "admin-1".into(),
            claim_hash: Some(secrets.token_hash(HashKind::ClaimSecret, &token)),
            token_hash: Some(hash),
            sealed_token: None,
        }));
        batch.push(Mutation::PutDeviceToken(DeviceTokenRecord {
            hash,
            peer_id,
            role: "agent".into(),
            mesh: None,
            entry_id: id,
        }));
        if batch.len() >= 2000 {
            h.write_blocking(std::mem::take(&mut batch))
                .map_err(|e| e.to_string())?;
        }
    }
    h.write_blocking(batch).map_err(|e| e.to_string())?;
    store.close();
    println!("wrote {n} approved entries and {n} device-token grants to {dir}");
    Ok(())
}
