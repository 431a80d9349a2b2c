//! Defence against guessing **six-digit** invite codes from many addresses (issue 13,
//! finding 4; since issue 20 it applies to six-digit codes only).
//!
//! Six-digit codes (`--pair-code-format digits6`, for the PyPI `chatixia pair` 0.4.3)
//! leave 10^6 possibilities, so no per-address budget can keep 1,000 addresses from
//! finding one (see `docs/PROTOCOL.md` §5.3). A wrong guess names no valid code, so it
//! cannot be charged to "the code it tried"; instead the shard that owns the guessed
//! code (`shard_of(code)`) keeps, sans-IO:
//!
//! * a **global attempt rate**: at most `wrong_per_window_max` wrong six-digit guesses
//!   per 60 s window on this shard, from all addresses together. Once spent, every
//!   six-digit redemption here (right or wrong) is refused with 429 until the window
//!   moves: the guesser cannot tell a right guess from a refused one. 30 a minute per
//!   shard gives a guesser at most 150 tries over a code's 300 s life, i.e. a chance of
//!   150 × live codes / 10^6 (1.5 × 10^-4 for one live code).
//! * a **per-code budget by bucket**: the six-digit space is cut into buckets of
//!   [`BUCKET_WIDTH`] codes (the first three digits). Each wrong guess counts against
//!   its bucket; when a bucket reaches `bucket_wrong_max` wrong guesses within a code's
//!   lifetime, the live six-digit codes in it are burnt (the invite must be generated
//!   again). A guesser gets at most that many tries near any one code: a chance of at
//!   most `bucket_wrong_max / BUCKET_WIDTH` per code even with an unlimited global rate.
//!
//! The trade-off is availability under attack: a flood of wrong guesses makes honest
//! six-digit `pair` calls on that shard answer 429 for up to a minute, and may burn a
//! live code. Long codes (the default) are never checked, refused or burnt here: their
//! space (2^60) and the per-address budgets suffice.

use std::collections::{HashMap, VecDeque};

use super::{Code, CodeStore, CODE_TTL_SECS};
use crate::time::UnixTime;

/// Codes per bucket of the per-code budget (the first three of six digits).
pub const BUCKET_WIDTH: u32 = 1000;

/// Length of the global rate window.
pub const WINDOW_SECS: u64 = 60;

/// Limits of a [`GuessGuard`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardLimits {
    /// Wrong guesses per shard per 60 s (`--pair-wrong-guesses-per-shard-max`).
    pub wrong_per_window_max: usize,
    /// Wrong guesses in one bucket before its live codes are burnt
    /// (`--pair-bucket-wrong-guesses-max`).
    pub bucket_wrong_max: u32,
    /// Live invite codes one API key may hold per shard (`--pair-codes-per-key-max`;
    /// kept here with the other pairing limits).
    pub codes_per_key_max: usize,
    /// Wrong codes one address (IPv6: one /64) may try per 24 h
    /// (`--pair-wrong-guesses-per-address-max`; see [`AddressBudget`](super::budget::AddressBudget)).
    pub wrong_per_address_max: u32,
    /// Client keys that table holds per shard (`--pair-budget-addresses-max`).
    pub budget_addresses_max: usize,
    /// The format of new invite codes (`--pair-code-format`).
    pub code_format: super::CodeFormat,
}

impl Default for GuardLimits {
    fn default() -> Self {
        GuardLimits {
            wrong_per_window_max: 30,
            bucket_wrong_max: 3,
            codes_per_key_max: CodeStore::DEFAULT_ISSUER_CODES_MAX,
            wrong_per_address_max: super::budget::AddressBudget::DEFAULT_WRONG_MAX,
            budget_addresses_max: super::budget::AddressBudget::DEFAULT_KEYS_MAX,
            code_format: super::CodeFormat::Long,
        }
    }
}

/// The guessing model of `docs/PROTOCOL.md` §5.3: so many source addresses.
pub const MODEL_ADDRESSES: u64 = 1_000;

impl GuardLimits {
    /// Codes one address can have looked up in any 24 h: the per-IP rate limit allows
    /// 5 per 60 s (7,200 a day), the daily budget at most `2 × wrong_per_address_max`
    /// (one window's end and the next one's start); the smaller applies.
    pub fn guesses_per_address_day(&self) -> u64 {
        let rate = super::RATE_LIMIT_MAX_ATTEMPTS as u64 * (24 * 3600)
            / super::RATE_LIMIT_WINDOW_SECS.max(1);
        rate.min(2 * u64::from(self.wrong_per_address_max))
    }

    /// The §5.3 bound on the chance that [`MODEL_ADDRESSES`] addresses guessing at full
    /// speed hit any live **long** code in a day, with `shards` shards each holding at
    /// most [`CodeStore::DEFAULT_CODES_MAX`] live codes.
    pub fn long_code_daily_odds(&self, shards: usize) -> f64 {
        super::daily_guess_odds(
            MODEL_ADDRESSES,
            self.guesses_per_address_day(),
            CodeStore::DEFAULT_CODES_MAX as u64 * shards as u64,
            Code::LONG_SPACE,
        )
    }
}

/// One shard's guessing guard; see the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct GuessGuard {
    limits: GuardLimits,
    /// Times of the wrong guesses in the current window, oldest first; at most
    /// `wrong_per_window_max` (older ones are dropped as the window moves).
    wrong: VecDeque<UnixTime>,
    /// Bucket → (wrong guesses, time of the first): at most 1000 entries (10^6 / width);
    /// a count older than a code's lifetime starts over.
    buckets: HashMap<u32, (u32, UnixTime)>,
}

/// Why a redemption was refused before the code was looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Throttled {
    /// Seconds until the window has room again.
    pub retry_after_secs: u64,
}

impl GuessGuard {
    pub fn new(limits: GuardLimits) -> GuessGuard {
        GuessGuard {
            limits,
            ..GuessGuard::default()
        }
    }

    fn trim(&mut self, now: UnixTime) {
        let window = WINDOW_SECS * 1_000_000_000;
        while self
            .wrong
            .front()
            .is_some_and(|&t| now.saturating_nanos_since(t) >= window)
        {
            self.wrong.pop_front();
        }
    }

    /// Whether a redemption may be tried now.
    pub fn check(&mut self, now: UnixTime) -> Result<(), Throttled> {
        self.trim(now);
        if self.wrong.len() < self.limits.wrong_per_window_max {
            return Ok(());
        }
        let oldest = self.wrong.front().copied().unwrap_or(now);
        let waited = now.saturating_nanos_since(oldest) / 1_000_000_000;
        Err(Throttled {
            retry_after_secs: WINDOW_SECS.saturating_sub(waited).max(1),
        })
    }

    /// Records a wrong guess of six-digit `code`; burns the live six-digit codes of its
    /// bucket when the bucket's budget is spent. Returns how many codes were burnt. A
    /// long code is not counted (0).
    pub fn wrong_guess(&mut self, code: Code, codes: &mut CodeStore, now: UnixTime) -> usize {
        let Some(n) = code.digits6() else {
            return 0;
        };
        self.trim(now);
        if self.wrong.len() < self.limits.wrong_per_window_max {
            self.wrong.push_back(now);
        }
        let bucket = n / BUCKET_WIDTH;
        let life = CODE_TTL_SECS * 1_000_000_000;
        let e = self.buckets.entry(bucket).or_insert((0, now));
        if now.saturating_nanos_since(e.1) >= life {
            *e = (0, now);
        }
        e.0 += 1;
        if e.0 < self.limits.bucket_wrong_max {
            return 0;
        }
        self.buckets.remove(&bucket);
        codes.remove_if(|c| c.digits6().is_some_and(|v| v / BUCKET_WIDTH == bucket))
    }

    /// Drops bucket counts older than a code's lifetime (with the pairing sweep).
    pub fn sweep(&mut self, now: UnixTime) {
        self.trim(now);
        let life = CODE_TTL_SECS * 1_000_000_000;
        self.buckets
            .retain(|_, (_, first)| now.saturating_nanos_since(*first) < life);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pairing::Issuer;

    const T0: UnixTime = UnixTime(1_795_239_689_000_000_000);

    fn at(secs: u64) -> UnixTime {
        T0.saturating_add_secs(secs)
    }

    /// §5.3's arithmetic, computed: with the defaults, 1,000 addresses at full speed
    /// have under one chance in a million a day of hitting any live long code, for any
    /// shard count up to 4,096 (the bound grows with the live codes: 1,000 per shard).
    /// Six digits cannot get there with any per-address budget an honest user survives.
    #[test]
    fn the_daily_odds_of_a_thousand_addresses() {
        let d = GuardLimits::default();
        assert_eq!(d.guesses_per_address_day(), 200);
        let one = d.long_code_daily_odds(1);
        assert!((1.73e-10..1.74e-10).contains(&one), "{one:e}");
        for shards in [1, 2, 16, 64, 256, 1024, 4096] {
            let p = d.long_code_daily_odds(shards);
            assert!(p < 1e-6, "{shards} shards: {p:e}");
        }
        assert!(d.long_code_daily_odds(6000) > 1e-6, "the bound is honest");
        // With the per-IP rate limit alone (7,200 a day) it would hold to 160 shards.
        let rate_only = GuardLimits {
            wrong_per_address_max: u32::MAX,
            ..d
        };
        assert_eq!(rate_only.guesses_per_address_day(), 7_200);
        assert!(rate_only.long_code_daily_odds(160) < 1e-6);
        assert!(rate_only.long_code_daily_odds(161) > 1e-6);
        // Six digits: even one guess per address per day at one live code is 10^-3.
        let six = crate::pairing::daily_guess_odds(MODEL_ADDRESSES, 1, 1, 1_000_000);
        assert!(six >= 1e-3, "{six:e}");
    }

    #[test]
    fn global_rate_then_window_moves() {
        let mut g = GuessGuard::new(GuardLimits {
            wrong_per_window_max: 3,
            bucket_wrong_max: 100,
            ..GuardLimits::default()
        });
        let mut codes = CodeStore::new();
        for i in 0..3 {
            assert!(g.check(at(i)).is_ok());
            g.wrong_guess(Code::from_u32(i as u32 * 1000), &mut codes, at(i));
        }
        assert_eq!(
            g.check(at(10)),
            Err(Throttled {
                retry_after_secs: 50
            })
        );
        assert!(g.check(at(60)).is_ok(), "the first guess left the window");
    }

    #[test]
    fn a_bucket_burns_its_codes() {
        let mut g = GuessGuard::new(GuardLimits {
            wrong_per_window_max: 1000,
            bucket_wrong_max: 3,
            ..GuardLimits::default()
        });
        let mut codes = CodeStore::new();
        let issuer = Issuer {
            peer_id: "admin".into(),
            mesh: None,
        };
        codes
            .insert(Code::from_u32(123_456), issuer.clone(), at(0))
            .unwrap();
        codes
            .insert(Code::from_u32(124_000), issuer.clone(), at(0))
            .unwrap();
        assert_eq!(g.wrong_guess(Code::from_u32(123_000), &mut codes, at(1)), 0);
        assert_eq!(g.wrong_guess(Code::from_u32(123_999), &mut codes, at(2)), 0);
        // Other buckets do not count.
        assert_eq!(g.wrong_guess(Code::from_u32(999_999), &mut codes, at(2)), 0);
        assert_eq!(g.wrong_guess(Code::from_u32(123_001), &mut codes, at(3)), 1);
        assert!(
            codes.redeem(Code::from_u32(123_456), at(4)).is_none(),
            "burnt"
        );
        assert!(codes.redeem(Code::from_u32(124_000), at(4)).is_some());
        // Long codes are neither counted nor burnt, whatever their value.
        codes
            .insert(Code::long(123_456), issuer.clone(), at(0))
            .unwrap();
        for k in 0..10 {
            assert_eq!(g.wrong_guess(Code::long(123_000 + k), &mut codes, at(5)), 0);
        }
        for k in 0..3 {
            g.wrong_guess(Code::from_u32(123_100 + k), &mut codes, at(5));
        }
        assert!(codes.redeem(Code::long(123_456), at(6)).is_some(), "kept");
        // Counts older than a code's life start over.
        let mut codes = CodeStore::new();
        codes
            .insert(Code::from_u32(5_000), issuer, at(400))
            .unwrap();
        g.wrong_guess(Code::from_u32(5_001), &mut codes, at(0));
        g.wrong_guess(Code::from_u32(5_002), &mut codes, at(1));
        assert_eq!(g.wrong_guess(Code::from_u32(5_003), &mut codes, at(400)), 0);
    }
}
