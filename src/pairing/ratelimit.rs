//! Sliding-window attempt limiter for `POST /api/pairing/pair`, keyed by client IP.
//!
//! Reference semantics: an attempt is allowed when fewer than 5 attempts by the same IP
//! are younger than 60 s (an attempt exactly 60 s old no longer counts); an allowed attempt
//! is recorded, a refused one is not. A full table forgets its least recently active IP.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use super::{RATE_LIMIT_MAX_ATTEMPTS, RATE_LIMIT_WINDOW_SECS};
use crate::time::UnixTime;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Per-IP attempt timestamps for the IPs one shard owns.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    /// IP → (times of its attempts inside the window, oldest first, at most
    /// `attempts_max`; its stamp in `recency`).
    buckets: HashMap<IpAddr, (Vec<UnixTime>, u64)>,
    /// Stamp of each IP's last attempt → IP: the least recently active IP first, which
    /// is the one evicted when the table is full.
    recency: BTreeMap<u64, IpAddr>,
    next_stamp: u64,
    attempts_max: usize,
    window_nanos: u64,
    ips_max: usize,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::new()
    }
}

impl RateLimiter {
    /// Default for `ips_max`.
    pub const DEFAULT_IPS_MAX: usize = 65_536;

    /// The reference's limits: 5 attempts per 60 s, and at most
    /// [`DEFAULT_IPS_MAX`](Self::DEFAULT_IPS_MAX) tracked IPs.
    pub fn new() -> RateLimiter {
        RateLimiter::with_limits(
            RATE_LIMIT_MAX_ATTEMPTS,
            RATE_LIMIT_WINDOW_SECS,
            Self::DEFAULT_IPS_MAX,
        )
    }

    /// `attempts_max` attempts per `window_secs` per IP, tracking at most `ips_max` IPs.
    ///
    /// `ips_max` bounds the table against clients that rotate addresses (an IPv6 /64 holds
    /// 2^64). When it is full and an untracked IP arrives, the least recently active IP
    /// is forgotten to make room (it was failing closed: after 65,536 addresses, every
    /// newcomer got 429, a lockout anyone could trigger). Forgetting lets a client with
    /// more addresses than the table reset one address's window, which it could as well
    /// get by using a fresh address: guessing across addresses is bounded by the code
    /// owner's [`GuessGuard`](super::guard::GuessGuard), not by this table.
    pub fn with_limits(attempts_max: usize, window_secs: u64, ips_max: usize) -> RateLimiter {
        RateLimiter {
            buckets: HashMap::new(),
            recency: BTreeMap::new(),
            next_stamp: 0,
            attempts_max,
            window_nanos: window_secs.saturating_mul(NANOS_PER_SEC),
            ips_max,
        }
    }

    fn stamp(&mut self, ip: IpAddr) -> u64 {
        let s = self.next_stamp;
        self.next_stamp += 1;
        self.recency.insert(s, ip);
        s
    }

    /// Whether `ip` may make an attempt at `now`; if so, the attempt is recorded.
    pub fn check_and_count(&mut self, ip: IpAddr, now: UnixTime) -> bool {
        let window = self.window_nanos;
        if let Some((attempts, old)) = self.buckets.get_mut(&ip) {
            let old = *old;
            attempts.retain(|&t| now.saturating_nanos_since(t) < window);
            let allowed = attempts.len() < self.attempts_max;
            if allowed {
                attempts.push(now);
            }
            // Any attempt, refused or not, makes the IP recent (a client hammering
            // while limited is not the one to forget).
            self.recency.remove(&old);
            let s = self.stamp(ip);
            if let Some(b) = self.buckets.get_mut(&ip) {
                b.1 = s;
            }
            return allowed;
        }
        if self.attempts_max == 0 || self.ips_max == 0 {
            return false;
        }
        while self.buckets.len() >= self.ips_max {
            let Some((_, lru)) = self.recency.pop_first() else {
                break;
            };
            self.buckets.remove(&lru);
        }
        let mut attempts = Vec::with_capacity(self.attempts_max.min(8));
        attempts.push(now);
        let s = self.stamp(ip);
        self.buckets.insert(ip, (attempts, s));
        true
    }

    /// Drop attempts older than the window and the buckets left empty; returns how many
    /// buckets were removed. Call periodically (the reference does every 60 s).
    pub fn sweep(&mut self, now: UnixTime) -> usize {
        let window = self.window_nanos;
        let before = self.buckets.len();
        let recency = &mut self.recency;
        self.buckets.retain(|_, (attempts, stamp)| {
            attempts.retain(|&t| now.saturating_nanos_since(t) < window);
            if attempts.is_empty() {
                recency.remove(stamp);
            }
            !attempts.is_empty()
        });
        before - self.buckets.len()
    }

    /// Number of tracked IPs.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no IP is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// The configured IP limit.
    pub fn ips_max(&self) -> usize {
        self.ips_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const T0: UnixTime = UnixTime(1_795_239_689_000_000_000);
    const SEC: u64 = NANOS_PER_SEC;

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    fn at(nanos_after: u64) -> UnixTime {
        UnixTime(T0.0 + nanos_after)
    }

    #[test]
    fn five_per_window_then_refused() {
        let mut rl = RateLimiter::new();
        for i in 0..5 {
            assert!(rl.check_and_count(ip(1), at(i * SEC)), "attempt {i}");
        }
        assert!(!rl.check_and_count(ip(1), at(5 * SEC)));
        // Other IPs are independent.
        assert!(rl.check_and_count(ip(2), at(5 * SEC)));
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert!(rl.check_and_count(v6, at(5 * SEC)));
    }

    #[test]
    fn window_slides_and_refusals_do_not_count() {
        let mut rl = RateLimiter::new();
        for i in 0..5 {
            assert!(rl.check_and_count(ip(1), at(i * SEC)));
        }
        // Hammering while limited does not extend the block.
        for i in 0..50 {
            assert!(!rl.check_and_count(ip(1), at(10 * SEC + i * SEC)));
        }
        // The first attempt (t=0) is 59.999999999 s old: still counts.
        assert!(!rl.check_and_count(ip(1), at(60 * SEC - 1)));
        // At exactly 60 s it expires: one slot frees up.
        assert!(rl.check_and_count(ip(1), at(60 * SEC)));
        assert!(!rl.check_and_count(ip(1), at(60 * SEC)));
        // t=1 s expires at 61 s.
        assert!(rl.check_and_count(ip(1), at(61 * SEC)));
        // Much later, the whole window is free again.
        for _ in 0..5 {
            assert!(rl.check_and_count(ip(1), at(500 * SEC)));
        }
        assert!(!rl.check_and_count(ip(1), at(500 * SEC)));
    }

    #[test]
    fn clock_stepping_back_is_harmless() {
        let mut rl = RateLimiter::new();
        for _ in 0..5 {
            assert!(rl.check_and_count(ip(1), at(100 * SEC)));
        }
        // Earlier `now`: the stored attempts count as fresh, no panic.
        assert!(!rl.check_and_count(ip(1), at(0)));
        assert!(!rl.check_and_count(ip(1), UnixTime::EPOCH));
        assert_eq!(rl.sweep(UnixTime::EPOCH), 0);
    }

    #[test]
    fn sweep_removes_empty_buckets() {
        let mut rl = RateLimiter::new();
        rl.check_and_count(ip(1), at(0));
        rl.check_and_count(ip(2), at(30 * SEC));
        rl.check_and_count(ip(2), at(40 * SEC));
        assert_eq!(rl.len(), 2);
        assert_eq!(rl.sweep(at(59 * SEC)), 0);
        assert_eq!(rl.sweep(at(60 * SEC)), 1);
        assert_eq!(rl.len(), 1);
        // ip(2) keeps its t=40 attempt after t=30 expires.
        assert_eq!(rl.sweep(at(90 * SEC)), 0);
        assert_eq!(rl.sweep(at(100 * SEC)), 1);
        assert!(rl.is_empty());
    }

    #[test]
    fn a_full_table_forgets_the_least_recent_ip() {
        let mut rl = RateLimiter::with_limits(5, 60, 2);
        assert_eq!(rl.ips_max(), 2);
        assert!(rl.check_and_count(ip(1), at(0)));
        assert!(rl.check_and_count(ip(2), at(0)));
        assert!(rl.check_and_count(ip(1), at(SEC)));
        // Table full of live buckets: a newcomer is admitted, ip(2) (least recent) goes.
        assert!(rl.check_and_count(ip(3), at(2 * SEC)));
        assert_eq!(rl.len(), 2);
        // ip(1) kept its count: 3 more, then refused.
        for _ in 0..3 {
            assert!(rl.check_and_count(ip(1), at(3 * SEC)));
        }
        assert!(!rl.check_and_count(ip(1), at(3 * SEC)));
        // 66,000 newcomers through a 65,536 table: each is admitted.
        let mut big = RateLimiter::new();
        for n in 0..66_000u32 {
            assert!(big.check_and_count(IpAddr::V4(Ipv4Addr::from(n)), at(0)));
        }
        assert_eq!(big.len(), RateLimiter::DEFAULT_IPS_MAX);
        assert_eq!(big.recency.len(), big.len());
        assert_eq!(big.sweep(at(60 * SEC)), RateLimiter::DEFAULT_IPS_MAX);
        assert!(big.recency.is_empty());
    }

    #[test]
    fn degenerate_limits() {
        let mut zero = RateLimiter::with_limits(0, 60, 10);
        assert!(!zero.check_and_count(ip(1), at(0)));
        assert!(zero.is_empty());
        let mut no_ips = RateLimiter::with_limits(5, 60, 0);
        assert!(!no_ips.check_and_count(ip(1), at(0)));
        let mut no_window = RateLimiter::with_limits(1, 0, 10);
        assert!(no_window.check_and_count(ip(1), at(0)));
        assert!(no_window.check_and_count(ip(1), at(0)));
        let mut huge = RateLimiter::with_limits(1, u64::MAX, 10);
        assert!(huge.check_and_count(ip(1), UnixTime(u64::MAX)));
        assert!(!huge.check_and_count(ip(1), UnixTime(u64::MAX)));
    }
}
