//! The relay ports of one shard, and the revoked peers it remembers.

use std::collections::HashMap;

/// A small, fast generator for port choice and Data indication transaction ids
/// (splitmix64; seeded from outside: the server is sans-IO). Not for secrets.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// The free relay ports of a shard's range, taken at random (RFC 8656 §7.2 asks for
/// unpredictable relay ports). Holds at most the range: 2 bytes a port.
pub(crate) struct PortPool {
    free: Vec<u16>,
}

/// Random picks looking for an even port (EVEN-PORT) before a scan.
const EVEN_TRIES: usize = 32;

impl PortPool {
    pub fn new(lo: u16, hi: u16) -> PortPool {
        PortPool {
            free: if lo <= hi {
                (lo..=hi).collect()
            } else {
                Vec::new()
            },
        }
    }

    pub fn len(&self) -> usize {
        self.free.len()
    }

    /// A free port (an even one when `even`), removed from the pool.
    pub fn take(&mut self, rng: &mut Rng, even: bool) -> Option<u16> {
        if self.free.is_empty() {
            return None;
        }
        let mut i = rng.below(self.free.len());
        if even && self.free[i] % 2 != 0 {
            let mut found = None;
            for _ in 0..EVEN_TRIES {
                let j = rng.below(self.free.len());
                if self.free[j] % 2 == 0 {
                    found = Some(j);
                    break;
                }
            }
            i = found.or_else(|| self.free.iter().position(|p| p % 2 == 0))?;
        }
        Some(self.free.swap_remove(i))
    }

    /// Gives a port back.
    pub fn put(&mut self, port: u16) {
        self.free.push(port);
    }
}

/// Peers whose pairing was revoked, with when (Unix seconds): a credential of such a
/// peer issued at or before that time is refused. An entry is kept for one credential
/// lifetime (after that every such credential has expired anyway). Bounded by
/// `max`: when full, the oldest entry is forgotten and its time becomes the `floor`,
/// below which *every* credential is refused: a full table refuses more, never less.
pub(crate) struct Revocations {
    at: HashMap<Box<str>, u64>,
    floor: u64,
    max: usize,
}

impl Revocations {
    pub fn new(max: usize) -> Revocations {
        Revocations {
            at: HashMap::new(),
            floor: 0,
            max: max.max(1),
        }
    }

    pub fn add(&mut self, peer: &str, at: u64) {
        if let Some(t) = self.at.get_mut(peer) {
            *t = (*t).max(at);
            return;
        }
        if self.at.len() >= self.max {
            if let Some((oldest, t)) = self
                .at
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(p, t)| (p.clone(), *t))
            {
                self.at.remove(&oldest);
                self.floor = self.floor.max(t);
            }
        }
        self.at.insert(peer.into(), at);
    }

    /// Whether a credential of `peer` issued at `issued` (Unix seconds) is revoked.
    pub fn refuses(&self, peer: &str, issued: u64) -> bool {
        issued <= self.floor || self.at.get(peer).is_some_and(|t| issued <= *t)
    }

    /// Forgets entries older than `ttl` at `now` (seconds).
    pub fn sweep(&mut self, now: u64, ttl: u64) {
        self.at.retain(|_, t| t.saturating_add(ttl) >= now);
        if self.floor.saturating_add(ttl) < now {
            self.floor = 0;
        }
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_random_bounded_and_returned() {
        let mut rng = Rng::new(1);
        let mut p = PortPool::new(50000, 50009);
        let mut got: Vec<u16> = (0..10).map(|_| p.take(&mut rng, false).unwrap()).collect();
        assert!(p.take(&mut rng, false).is_none());
        got.sort();
        assert_eq!(got, (50000..=50009).collect::<Vec<_>>());
        p.put(50003);
        assert_eq!(p.take(&mut rng, true), None, "no even port free");
        p.put(50004);
        assert_eq!(p.take(&mut rng, true), Some(50004));
        assert_eq!(p.take(&mut rng, false), Some(50003));
    }

    #[test]
    fn revocations_are_bounded_and_conservative() {
        let mut r = Revocations::new(2);
        r.add("a", 100);
        r.add("b", 200);
        assert!(r.refuses("a", 100) && !r.refuses("a", 101));
        r.add("c", 300); // forgets a: floor 100
        assert_eq!(r.len(), 2);
        assert!(r.refuses("a", 50) && r.refuses("zzz", 100));
        assert!(!r.refuses("a", 150));
        assert!(r.refuses("c", 250));
        r.sweep(100 + 86_400 + 1, 86_400);
        assert!(!r.refuses("zzz", 100), "floor expired");
        assert!(r.refuses("b", 200));
    }
}
