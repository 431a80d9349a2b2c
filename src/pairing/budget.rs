//! A daily budget of wrong pairing codes per client address (issue 20, finding 5).
//!
//! The per-IP rate limit (5 attempts per 60 s) still lets one address have 7,200 codes
//! looked up a day, and an IPv6 host holds a whole /64 of addresses. This table, on
//! `shard_of(client key)`, caps the codes that are looked up and turn out wrong at
//! `wrong_max` per 24 h per **client key**: an IPv4 address, or an IPv6 /64 (see
//! [`client_key`]). Honest users are not charged: a right code is refunded.
//!
//! Sans-IO: [`reserve`](AddressBudget::reserve) is called before a well-formed code is
//! looked up and counts it as wrong *in advance* (so concurrent guesses from many
//! addresses of one /64 cannot all slip past a nearly spent budget); a code that turns
//! out right is [`refund`](AddressBudget::refund)ed. A key's window starts at its first
//! counted guess and lasts 24 h; in any 24 h a key gets at most `2 × wrong_max` wrong
//! codes looked up (the end of one window and the start of the next), which is the
//! figure `docs/PROTOCOL.md` §5.3 uses.
//!
//! The table holds at most `--pair-budget-addresses-max` keys per shard (default
//! [`DEFAULT_KEYS_MAX`](AddressBudget::DEFAULT_KEYS_MAX)); a new
//! key in a full table makes it forget the least recently active one (never refuse a
//! newcomer: that was a lockout anyone could trigger, issue 13). Forgetting resets that
//! key's count, which only a client with more keys than the table could exploit; each
//! of its addresses is still held by the per-IP rate limit.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};

use crate::time::UnixTime;

/// The key a client's wrong guesses are counted under: an IPv4 address (also when it
/// arrives IPv4-mapped), or the /64 of an IPv6 address (one host usually holds a whole
/// /64). The same grouping as `limits::client_key`, without the string.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Length of a key's window.
pub const WINDOW_SECS: u64 = 24 * 3600;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// One key's window.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// Codes counted as wrong (reservations not refunded) since `start`.
    wrong: u32,
    /// When the window began (its first counted guess).
    start: UnixTime,
    /// The key's stamp in `recency`.
    stamp: u64,
}

/// Why a guess was not looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent {
    /// Seconds until the key's window ends.
    pub retry_after_secs: u64,
    /// The limit that was reached.
    pub wrong_max: u32,
}

/// Wrong-code budgets of the client keys one shard owns; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct AddressBudget {
    keys: HashMap<IpAddr, Window>,
    /// Stamp of each key's last reservation → key: the least recently active first.
    recency: BTreeMap<u64, IpAddr>,
    next_stamp: u64,
    wrong_max: u32,
    keys_max: usize,
}

impl AddressBudget {
    /// Default of `--pair-wrong-guesses-per-address-max`: a person who mistypes a code
    /// now and then never gets near it (right codes are refunded), and it keeps 1,000
    /// addresses at 200,000 looked-up guesses a day (§5.3's arithmetic).
    pub const DEFAULT_WRONG_MAX: u32 = 100;

    /// Default of `--pair-budget-addresses-max`, the keys tracked per shard. 65,536
    /// windows are about 6 MiB; more distinct addresses (or /64s) than that on one shard
    /// in a day make the table forget the least recently active key (its count starts
    /// over).
    pub const DEFAULT_KEYS_MAX: usize = 65_536;

    /// A table allowing `wrong_max` wrong codes per key per 24 h, holding at most
    /// [`DEFAULT_KEYS_MAX`](Self::DEFAULT_KEYS_MAX) keys.
    pub fn new(wrong_max: u32) -> AddressBudget {
        AddressBudget::with_keys_max(wrong_max, Self::DEFAULT_KEYS_MAX)
    }

    /// Like [`new`](Self::new) holding at most `keys_max` keys
    /// (`--pair-budget-addresses-max`, which the flags hold to at least 1; a table of
    /// none refuses every guess).
    pub fn with_keys_max(wrong_max: u32, keys_max: usize) -> AddressBudget {
        AddressBudget {
            keys: HashMap::new(),
            recency: BTreeMap::new(),
            next_stamp: 0,
            wrong_max,
            keys_max,
        }
    }

    fn window_nanos() -> u64 {
        WINDOW_SECS * NANOS_PER_SEC
    }

    /// Counts one guess of `ip`'s key as wrong before it is looked up, or refuses it if
    /// the key has spent its budget (refusals are not counted).
    pub fn reserve(&mut self, ip: IpAddr, now: UnixTime) -> Result<(), Spent> {
        let key = client_key(ip);
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        if let Some(w) = self.keys.get_mut(&key) {
            self.recency.remove(&w.stamp);
            w.stamp = stamp;
            self.recency.insert(stamp, key);
            if now.saturating_nanos_since(w.start) >= Self::window_nanos() {
                w.wrong = 0;
                w.start = now;
            }
            if w.wrong >= self.wrong_max {
                let waited = now.saturating_nanos_since(w.start) / NANOS_PER_SEC;
                return Err(Spent {
                    retry_after_secs: WINDOW_SECS.saturating_sub(waited).max(1),
                    wrong_max: self.wrong_max,
                });
            }
            w.wrong += 1;
            return Ok(());
        }
        if self.wrong_max == 0 || self.keys_max == 0 {
            return Err(Spent {
                retry_after_secs: WINDOW_SECS,
                wrong_max: self.wrong_max,
            });
        }
        while self.keys.len() >= self.keys_max {
            let Some((_, lru)) = self.recency.pop_first() else {
                break;
            };
            self.keys.remove(&lru);
        }
        self.recency.insert(stamp, key);
        self.keys.insert(
            key,
            Window {
                wrong: 1,
                start: now,
                stamp,
            },
        );
        Ok(())
    }

    /// Gives back a reservation whose code was right.
    pub fn refund(&mut self, ip: IpAddr) {
        if let Some(w) = self.keys.get_mut(&client_key(ip)) {
            w.wrong = w.wrong.saturating_sub(1);
        }
    }

    /// Forgets keys whose window has ended; returns how many. Called with the pairing
    /// sweep (every 60 s).
    pub fn sweep(&mut self, now: UnixTime) -> usize {
        let before = self.keys.len();
        let recency = &mut self.recency;
        self.keys.retain(|_, w| {
            let live = now.saturating_nanos_since(w.start) < Self::window_nanos();
            if !live {
                recency.remove(&w.stamp);
            }
            live
        });
        before - self.keys.len()
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The configured budget.
    pub fn wrong_max(&self) -> u32 {
        self.wrong_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const T0: UnixTime = UnixTime(1_795_239_689_000_000_000);

    fn at(secs: u64) -> UnixTime {
        T0.saturating_add_secs(secs)
    }

    fn v4(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, n))
    }

    #[test]
    fn a_key_gets_its_budget_per_window_then_waits() {
        let mut b = AddressBudget::new(3);
        for i in 0..3 {
            assert_eq!(b.reserve(v4(1), at(i)), Ok(()), "guess {i}");
        }
        assert_eq!(
            b.reserve(v4(1), at(3600)),
            Err(Spent {
                retry_after_secs: WINDOW_SECS - 3600,
                wrong_max: 3
            })
        );
        // Refusals are not counted and do not move the window.
        for _ in 0..100 {
            assert!(b.reserve(v4(1), at(7200)).is_err());
        }
        // Another key is independent.
        assert_eq!(b.reserve(v4(2), at(7200)), Ok(()));
        // The window ends 24 h after its first counted guess.
        assert!(b.reserve(v4(1), at(WINDOW_SECS - 1)).is_err());
        assert_eq!(b.reserve(v4(1), at(WINDOW_SECS)), Ok(()));
    }

    #[test]
    fn right_codes_are_refunded() {
        let mut b = AddressBudget::new(2);
        // An operator pairing 50 devices from one address: every code right.
        for i in 0..50 {
            assert_eq!(b.reserve(v4(1), at(i)), Ok(()));
            b.refund(v4(1));
        }
        // Two typos are still allowed, the third is not.
        assert_eq!(b.reserve(v4(1), at(60)), Ok(()));
        assert_eq!(b.reserve(v4(1), at(61)), Ok(()));
        assert!(b.reserve(v4(1), at(62)).is_err());
        // A refund of an unknown key is harmless.
        b.refund(v4(9));
    }

    /// The bound §5.3 uses: whatever the timing, a key gets at most 2 × wrong_max codes
    /// looked up in any 24 h (simulated: one guess per second for three days, counting
    /// the largest number accepted in a sliding 24 h).
    #[test]
    fn at_most_twice_the_budget_in_any_day() {
        let mut b = AddressBudget::new(100);
        let mut accepted: Vec<u64> = Vec::new();
        for t in 0..3 * WINDOW_SECS {
            if b.reserve(v4(1), at(t)).is_ok() {
                accepted.push(t);
            }
        }
        let mut worst = 0;
        for (i, &t) in accepted.iter().enumerate() {
            let in_day = accepted[i..]
                .iter()
                .take_while(|&&u| u < t + WINDOW_SECS)
                .count();
            worst = worst.max(in_day);
        }
        assert!(worst <= 200, "{worst}");
        assert_eq!(accepted.len(), 300, "100 per window, three windows");
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_v4_as_v4() {
        let mut b = AddressBudget::new(2);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff:eeee:dddd:cccc".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(b.reserve(a, at(0)), Ok(()));
        assert_eq!(b.reserve(same_64, at(0)), Ok(()));
        assert!(b.reserve(same_64, at(0)).is_err(), "one budget per /64");
        assert_eq!(b.reserve(other_64, at(0)), Ok(()));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), v4(7));
        assert_eq!(client_key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_least_recent_key() {
        let mut b = AddressBudget::with_keys_max(1, 2);
        assert_eq!(b.reserve(v4(1), at(0)), Ok(()));
        assert_eq!(b.reserve(v4(2), at(1)), Ok(()));
        assert!(
            b.reserve(v4(1), at(2)).is_err(),
            "v4(1) is now the most recent"
        );
        // A newcomer in a full table is admitted; v4(2), least recent, is forgotten.
        assert_eq!(b.reserve(v4(3), at(3)), Ok(()));
        assert_eq!(b.len(), 2);
        assert!(b.reserve(v4(1), at(4)).is_err(), "v4(1) kept its count");
        assert_eq!(b.reserve(v4(2), at(5)), Ok(()), "v4(2) starts over");
        // 70,000 distinct addresses through the default table: all admitted, bounded.
        let mut big = AddressBudget::new(AddressBudget::DEFAULT_WRONG_MAX);
        for n in 0..70_000u32 {
            assert_eq!(big.reserve(IpAddr::V4(Ipv4Addr::from(n)), at(0)), Ok(()));
        }
        assert_eq!(big.len(), AddressBudget::DEFAULT_KEYS_MAX);
        assert_eq!(big.recency.len(), big.len());
        // The sweep forgets ended windows, keeping the recency index in step.
        assert_eq!(big.sweep(at(WINDOW_SECS - 1)), 0);
        assert_eq!(big.sweep(at(WINDOW_SECS)), AddressBudget::DEFAULT_KEYS_MAX);
        assert!(big.is_empty() && big.recency.is_empty());
    }

    #[test]
    fn degenerate_limits_refuse_without_panicking() {
        let mut zero = AddressBudget::new(0);
        assert!(zero.reserve(v4(1), at(0)).is_err());
        assert!(zero.is_empty());
        let mut no_keys = AddressBudget::with_keys_max(5, 0);
        assert!(no_keys.reserve(v4(1), at(0)).is_err());
        // A clock that steps back: the window is kept, no panic.
        let mut b = AddressBudget::new(1);
        assert_eq!(b.reserve(v4(1), at(100)), Ok(()));
        assert!(b.reserve(v4(1), UnixTime::EPOCH).is_err());
        assert_eq!(b.sweep(UnixTime::EPOCH), 0);
    }
}
