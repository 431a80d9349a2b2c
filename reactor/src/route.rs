//! Key → shard routing: a stable hash, the same on every shard and every run, no table.

/// Index of a shard, `0..count`.
pub type ShardId = usize;

/// 64-bit FNV-1a over the key, finished with the murmur3 `fmix64` avalanche so that
/// the high bits (used by [`shard_of_hash`]) depend on every input byte.
///
/// Stable by construction: it is defined here, not by a std `Hasher` whose output may
/// change between Rust releases.
#[inline]
pub fn stable_hash(key: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    // fmix64
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Maps a hash onto `0..shards` with Lemire's multiply-shift (no division).
#[inline]
pub fn shard_of_hash(hash: u64, shards: usize) -> ShardId {
    debug_assert!(shards > 0);
    ((u128::from(hash) * shards as u128) >> 64) as ShardId
}

/// The shard that owns `key` among `shards` shards.
#[inline]
pub fn shard_of(key: impl AsRef<[u8]>, shards: usize) -> ShardId {
    shard_of_hash(stable_hash(key.as_ref()), shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED_EMPTY: u64 = 0xefd0_1f60_ba99_2926;
    const PINNED_AGENT_001: u64 = 0x269b_d66e_4c89_9767;
    const PINNED_AGENT_001_OF_7: usize = 1;

    #[test]
    fn stable_known_values() {
        // Pinned values: a change here re-homes every key, so it must be deliberate.
        assert_eq!(stable_hash(b""), PINNED_EMPTY);
        assert_eq!(stable_hash(b"agent-001"), PINNED_AGENT_001);
        assert_eq!(shard_of("agent-001", 7), PINNED_AGENT_001_OF_7);
        let a = stable_hash(b"agent-001");
        assert_eq!(a, stable_hash(b"agent-001"));
        assert_ne!(a, stable_hash(b"agent-002"));
    }

    #[test]
    fn in_range_and_spread() {
        for n in 1..=16usize {
            let mut counts = vec![0usize; n];
            for i in 0..16_000 {
                let s = shard_of(format!("peer-{i}"), n);
                assert!(s < n);
                counts[s] += 1;
            }
            let expect = 16_000 / n;
            for c in counts {
                assert!(
                    c > expect * 8 / 10 && c < expect * 12 / 10,
                    "n={n} uneven: {c} vs {expect}"
                );
            }
        }
    }

    #[test]
    fn one_shard_takes_all() {
        assert_eq!(shard_of("anything", 1), 0);
    }
}
