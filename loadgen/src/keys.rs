//! `bench keys`: writes an api_keys.json for N peers, and reads one back.

use std::path::Path;

use serde_json::{json, Map, Value};

/// One peer of a keys file.
#[derive(Debug, Clone)]
pub struct Peer {
    pub key: String,
    pub peer_id: String,
    pub mesh: Option<String>,
}

/// The peer id of peer number `i`.
pub fn peer_id(i: usize) -> String {
    format!("bench-{i:07}")
}

/// An api_keys.json value for `count` peers spread round-robin over `meshes` meshes
/// (`mesh-0` …; with one mesh the field is left out: the default mesh, which the
/// reference build also understands since it ignores unknown fields).
pub fn generate(count: usize, meshes: usize) -> Result<Value, String> {
    if count == 0 {
        return Err("--count must be at least 1".into());
    }
    if count > wire::keys_file::KEYS_MAX {
        return Err(format!(
            "--count {count}: chatixia-core loads at most {} keys per file",
            wire::keys_file::KEYS_MAX
        ));
    }
    let meshes = meshes.max(1);
    let mut salt = [0u8; 6];
    getrandom::getrandom(&mut salt).map_err(|e| format!("random: {e}"))?;
    let salt: String = salt.iter().map(|b| format!("{b:02x}")).collect();
    let mut keys = Map::with_capacity(count);
    for i in 0..count {
        let mut e = json!({"peer_id": peer_id(i), "role": "agent"});
        if meshes > 1 {
            e["mesh"] = json!(format!("mesh-{}", i % meshes));
        }
        keys.insert(format!("ak_bench_{salt}_{i:07}"), e);
    }
    Ok(json!({ "keys": keys }))
}

/// Reads a keys file; peers sorted by peer id (one key per peer: the first in key
/// order wins, as the server decides a peer's mesh).
pub fn load(path: &Path) -> Result<Vec<Peer>, String> {
    // Control thread, before any shard starts.
    let bytes = std::fs::read(path).map_err(|e| format!("--keys {}: {e}", path.display()))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("--keys {}: not JSON: {e}", path.display()))?;
    let obj = v["keys"].as_object().ok_or_else(|| {
        format!(
            "--keys {}: expected {{\"keys\": {{\"<key>\": {{\"peer_id\": …}}}}}}",
            path.display()
        )
    })?;
    let mut peers: Vec<Peer> = Vec::with_capacity(obj.len());
    let mut sorted: Vec<_> = obj.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut seen = std::collections::HashSet::new();
    for (key, e) in sorted {
        let Some(pid) = e["peer_id"].as_str() else {
            continue;
        };
        if seen.insert(pid.to_owned()) {
            peers.push(Peer {
                key: key.clone(),
                peer_id: pid.to_owned(),
                mesh: e["mesh"].as_str().map(str::to_owned),
            });
        }
    }
    peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
    if peers.is_empty() {
        return Err(format!("--keys {}: no peers in the file", path.display()));
    }
    Ok(peers)
}

/// `bench keys`: writes the file (or stdout) and returns the report.
pub fn run(count: usize, meshes: usize, out: Option<&Path>) -> Result<Value, String> {
    let v = generate(count, meshes)?;
    let text = serde_json::to_string(&v).map_err(|e| e.to_string())?;
    match out {
        Some(p) => {
            // `bench keys` runs no reactor at all: plain blocking file I/O.
            let tmp = p.with_extension("tmp");
            std::fs::write(&tmp, &text)
                .and_then(|()| std::fs::rename(&tmp, p))
                .map_err(|e| format!("--out {}: {e}", p.display()))?;
        }
        None => println!("{text}"),
    }
    Ok(json!({
        "scenario": "keys",
        "peers": count,
        "meshes": meshes.max(1),
        "file": out.map(|p| p.display().to_string()),
        "bytes": text.len(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_load_in_the_server_and_back() {
        let v = generate(10, 3).unwrap();
        let bytes = serde_json::to_vec(&v).unwrap();
        let dir = std::env::temp_dir().join(format!("bench-keys-{}", std::process::id()));
        std::fs::write(&dir, &bytes).unwrap();
        let peers = load(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(peers.len(), 10);
        assert_eq!(peers[4].peer_id, "bench-0000004");
        assert_eq!(peers[4].mesh.as_deref(), Some("mesh-1"));
        assert!(generate(0, 1).is_err());
        assert!(generate(wire::keys_file::KEYS_MAX + 1, 1).is_err());
    }
}
