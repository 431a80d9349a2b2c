//! Single-use invite codes with a 300 s lifetime, in two formats:
//!
//! * **long** (the default, issue 20): 12 symbols of Crockford's base32 (60 random bits),
//!   shown in groups of four, `K7QM-3XPA-9T2D`. Read back case-insensitively, with `-`
//!   and spaces ignored and Crockford's look-alikes (`I`, `L` → `1`, `O` → `0`) accepted.
//!   The space (2^60) is what keeps guessing from many addresses hopeless without a
//!   guard that could lock honest users out (see `docs/PROTOCOL.md` §5.3 and
//!   [`daily_guess_odds`]).
//! * **digits6** (the reference's, opt-in with `--pair-code-format digits6`): six
//!   digits, what the PyPI `chatixia pair` 0.4.3 accepts. Only 10^6 codes: guessing is
//!   held back by the [`GuessGuard`](super::guard::GuessGuard), at the cost of refusing
//!   honest redemptions of six-digit codes during a flood.
//!
//! `pair` accepts both formats whatever the flag says (the flag picks what new codes
//! look like), so codes stored by an older server still work after an upgrade.

use std::collections::HashMap;

use serde::{Serialize, Serializer};

use super::{Rng, CODE_TTL_SECS};
use crate::time::UnixTime;

/// Crockford's base32 alphabet: digits and upper-case letters without I, L, O, U.
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Which format new invite codes get (`--pair-code-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CodeFormat {
    /// 12 Crockford base32 symbols, `K7QM-3XPA-9T2D` (60 bits).
    #[default]
    Long,
    /// Six digits, `042917`, for the PyPI `chatixia pair` 0.4.3 (its only format).
    Digits6,
}

impl std::str::FromStr for CodeFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "long" => Ok(CodeFormat::Long),
            "digits6" => Ok(CodeFormat::Digits6),
            _ => Err(format!(
                "unknown pairing code format {s:?}: expected long or digits6"
            )),
        }
    }
}

impl std::fmt::Display for CodeFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CodeFormat::Long => "long",
            CodeFormat::Digits6 => "digits6",
        })
    }
}

/// An invite code: six digits or twelve base32 symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Code {
    /// `000000`..=`999999`.
    Digits6(u32),
    /// A 60-bit value, shown as 12 base32 symbols, the most significant first.
    Long(u64),
}

impl Code {
    /// Number of distinct six-digit codes.
    pub const DIGITS6_SPACE: u32 = 1_000_000;
    /// Symbols of a long code.
    pub const LONG_SYMBOLS: usize = 12;
    /// Bits of a long code (5 per symbol).
    pub const LONG_BITS: u32 = 60;
    /// Number of distinct long codes, 2^60 ≈ 1.15 × 10^18.
    pub const LONG_SPACE: u64 = 1 << Self::LONG_BITS;
    /// Marks a long code in [`store_key`](Self::store_key) (six-digit codes are stored
    /// as their value, as they always were).
    const LONG_TAG: u64 = 1 << 63;

    /// Parses what a user typed: exactly six ASCII digits, or twelve Crockford base32
    /// symbols (case-insensitive; `I`/`L` read as `1`, `O` as `0`; `U` refused). `-`
    /// and ASCII spaces are ignored anywhere in either form. Anything else is `None`.
    /// Linear in the input and allocation-free; stops at the 13th symbol.
    pub fn parse(s: &str) -> Option<Code> {
        let mut digits_only = true;
        let mut symbols = 0usize;
        let mut value = 0u64;
        for &b in s.as_bytes() {
            if b == b'-' || b == b' ' {
                continue;
            }
            let v = crockford_value(b)?;
            digits_only &= b.is_ascii_digit();
            symbols += 1;
            if symbols > Self::LONG_SYMBOLS {
                return None;
            }
            value = value << 5 | u64::from(v);
        }
        match symbols {
            6 if digits_only => {
                // Re-read the same symbols as decimal digits.
                let n = s
                    .bytes()
                    .filter(u8::is_ascii_digit)
                    .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
                Some(Code::Digits6(n))
            }
            Self::LONG_SYMBOLS => Some(Code::Long(value)),
            _ => None,
        }
    }

    /// The six-digit code `n % 1_000_000`.
    pub fn from_u32(n: u32) -> Code {
        Code::Digits6(n % Self::DIGITS6_SPACE)
    }

    /// The long code `n % 2^60`.
    pub fn long(n: u64) -> Code {
        Code::Long(n % Self::LONG_SPACE)
    }

    /// A uniformly random code of `format`.
    pub fn random(rng: &mut impl Rng, format: CodeFormat) -> Code {
        match format {
            CodeFormat::Long => {
                // 2^60 divides 2^64: masking 64 random bits is exactly uniform.
                let mut buf = [0u8; 8];
                rng.fill_bytes(&mut buf);
                Code::Long(u64::from_le_bytes(buf) & (Self::LONG_SPACE - 1))
            }
            CodeFormat::Digits6 => Code::random_digits6(rng),
        }
    }

    /// A uniformly random six-digit code (rejection sampling over 32-bit draws; after 16
    /// rejected draws, which a working generator essentially never produces, the last
    /// draw is reduced modulo 10^6 so the loop is bounded).
    fn random_digits6(rng: &mut impl Rng) -> Code {
        // Largest multiple of 10^6 that fits in a u32.
        const LIMIT: u32 = u32::MAX / Code::DIGITS6_SPACE * Code::DIGITS6_SPACE;
        let mut draw = 0u32;
        for _ in 0..16 {
            let mut buf = [0u8; 4];
            rng.fill_bytes(&mut buf);
            draw = u32::from_le_bytes(buf);
            if draw < LIMIT {
                break;
            }
        }
        Code::from_u32(draw)
    }

    /// The format of this code.
    pub fn format(self) -> CodeFormat {
        match self {
            Code::Digits6(_) => CodeFormat::Digits6,
            Code::Long(_) => CodeFormat::Long,
        }
    }

    /// The six-digit value, `None` for a long code.
    pub fn digits6(self) -> Option<u32> {
        match self {
            Code::Digits6(n) => Some(n),
            Code::Long(_) => None,
        }
    }

    /// The code's key in the durable store: a six-digit code is its value (as stored
    /// before long codes existed), a long code its value with the top bit set.
    pub fn store_key(self) -> u64 {
        match self {
            Code::Digits6(n) => u64::from(n),
            Code::Long(v) => Self::LONG_TAG | v,
        }
    }

    /// The inverse of [`store_key`](Self::store_key); `None` for a key no code has.
    pub fn from_store_key(k: u64) -> Option<Code> {
        if k & Self::LONG_TAG != 0 {
            let v = k & !Self::LONG_TAG;
            (v < Self::LONG_SPACE).then_some(Code::Long(v))
        } else {
            u32::try_from(k)
                .ok()
                .filter(|&n| n < Self::DIGITS6_SPACE)
                .map(Code::Digits6)
        }
    }
}

/// The value of one Crockford base32 symbol (either case, with its look-alikes).
fn crockford_value(b: u8) -> Option<u8> {
    let b = b.to_ascii_uppercase();
    let b = match b {
        b'I' | b'L' => b'1',
        b'O' => b'0',
        _ => b,
    };
    CROCKFORD
        .iter()
        .position(|&c| c == b)
        .and_then(|p| u8::try_from(p).ok())
}

/// `042917`, or `K7QM-3XPA-9T2D` (upper case, groups of four).
impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Code::Digits6(n) => write!(f, "{n:06}"),
            Code::Long(v) => {
                let mut out = [0u8; Code::LONG_SYMBOLS + 2];
                let mut at = 0;
                for i in 0..Code::LONG_SYMBOLS {
                    if i > 0 && i % 4 == 0 {
                        out[at] = b'-';
                        at += 1;
                    }
                    let shift = 5 * (Code::LONG_SYMBOLS - 1 - i);
                    out[at] = CROCKFORD[((v >> shift) & 31) as usize];
                    at += 1;
                }
                // Only ASCII from the alphabet and '-' was written.
                f.write_str(std::str::from_utf8(&out).map_err(|_| std::fmt::Error)?)
            }
        }
    }
}

/// Serialized as its display string.
impl Serialize for Code {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An upper bound on the chance that a guesser hits any live code in a day: each
/// evaluated guess names one code, and hits with probability at most (live codes) /
/// (code space) whatever the guesser learnt from earlier misses (codes are drawn
/// uniformly and independently), so by the union bound the chance over `guesses`
/// evaluated guesses is at most `guesses × live_codes / space`.
///
/// `addresses` guessers, each evaluated at most `guesses_per_address` times a day;
/// `live_codes` = live codes per shard × shards.
pub fn daily_guess_odds(
    addresses: u64,
    guesses_per_address: u64,
    live_codes: u64,
    space: u64,
) -> f64 {
    addresses as f64 * guesses_per_address as f64 * live_codes as f64 / space as f64
}

/// Who generated an invite code: the pairing entry inherits `mesh`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    /// Peer id of the API key that asked for the code.
    pub peer_id: String,
    /// That key's mesh (`None` = default mesh).
    pub mesh: Option<String>,
}

#[derive(Debug, Clone)]
struct Invite {
    issuer: Issuer,
    expires_at: UnixTime,
}

/// Why a code could not be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeInsertError {
    /// The code is live (unused, unexpired) for another invite: draw another.
    InUse,
    /// The store holds `codes_max` live codes (suggested answer: 503).
    Full,
    /// The issuing API key holds its share of live codes here (suggested answer: 429).
    IssuerQuota {
        /// The limit that was reached.
        codes_max: usize,
    },
}

/// Invite codes owned by one shard.
#[derive(Debug, Clone)]
pub struct CodeStore {
    codes: HashMap<Code, Invite>,
    codes_max: usize,
    /// Live codes one issuer (API key's peer id) may hold here, so one key cannot take
    /// every slot from the others (`--pair-codes-per-key-max`).
    issuer_codes_max: usize,
}

impl Default for CodeStore {
    fn default() -> Self {
        CodeStore::new()
    }
}

impl CodeStore {
    /// Default for `codes_max`.
    pub const DEFAULT_CODES_MAX: usize = 1_000;

    /// How many times [`generate`](Self::generate) redraws a code that is in use.
    pub const GENERATE_TRIES_MAX: usize = 8;

    /// An empty store holding at most [`DEFAULT_CODES_MAX`](Self::DEFAULT_CODES_MAX) codes.
    pub fn new() -> CodeStore {
        CodeStore::with_limit(Self::DEFAULT_CODES_MAX)
    }

    /// An empty store holding at most `codes_max` live codes.
    ///
    /// `codes_max` bounds memory and, more importantly, guessing: each blind attempt at
    /// `pair` hits some live code with probability at most (live codes in all shards) /
    /// (code space: 2^60 long, 10^6 six-digit). When the store is full, expired codes are
    /// swept and, if it is still full, new codes are refused with
    /// [`CodeInsertError::Full`] until some expire or are used.
    pub fn with_limit(codes_max: usize) -> CodeStore {
        CodeStore {
            codes: HashMap::new(),
            codes_max,
            issuer_codes_max: Self::DEFAULT_ISSUER_CODES_MAX,
        }
    }

    /// Default of the per-issuer quota.
    pub const DEFAULT_ISSUER_CODES_MAX: usize = 100;

    /// Sets the per-issuer quota of live codes.
    pub fn set_issuer_codes_max(&mut self, n: usize) {
        self.issuer_codes_max = n;
    }

    /// Store `code` for `issuer`, valid until `now + 300 s`; returns the expiry.
    ///
    /// An expired code is replaced; a live one is refused with
    /// [`CodeInsertError::InUse`] (the reference silently overwrote it, invalidating the
    /// other invite).
    pub fn insert(
        &mut self,
        code: Code,
        issuer: Issuer,
        now: UnixTime,
    ) -> Result<UnixTime, CodeInsertError> {
        match self.codes.get(&code) {
            Some(old) if now < old.expires_at => return Err(CodeInsertError::InUse),
            _ if self
                .codes
                .values()
                .filter(|i| now < i.expires_at && i.issuer.peer_id == issuer.peer_id)
                .count()
                >= self.issuer_codes_max =>
            {
                return Err(CodeInsertError::IssuerQuota {
                    codes_max: self.issuer_codes_max,
                })
            }
            Some(_) => {}
            None => {
                if self.codes.len() >= self.codes_max {
                    self.sweep(now);
                    if self.codes.len() >= self.codes_max {
                        return Err(CodeInsertError::Full);
                    }
                }
            }
        }
        let expires_at = now.saturating_add_secs(CODE_TTL_SECS);
        self.codes.insert(code, Invite { issuer, expires_at });
        Ok(expires_at)
    }

    /// Draw a random code of `format` and [`insert`](Self::insert) it, redrawing up to
    /// [`GENERATE_TRIES_MAX`](Self::GENERATE_TRIES_MAX) times while the draw is in use.
    ///
    /// Only meaningful for a store that owns every code (one shard, or tests): in a
    /// sharded server draw with [`Code::random`], route to the owning shard, and
    /// `insert` there.
    pub fn generate(
        &mut self,
        rng: &mut impl Rng,
        format: CodeFormat,
        issuer: Issuer,
        now: UnixTime,
    ) -> Result<Code, CodeInsertError> {
        for _ in 0..Self::GENERATE_TRIES_MAX {
            let code = Code::random(rng, format);
            match self.insert(code, issuer.clone(), now) {
                Ok(_) => return Ok(code),
                Err(CodeInsertError::InUse) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(CodeInsertError::InUse)
    }

    /// Use `code`: `Some(issuer)` once if it is live; `None` if unknown, used, or expired
    /// (valid while `now < created + 300 s`, as the reference's `elapsed < 300 s`). The code
    /// is removed either way.
    pub fn redeem(&mut self, code: Code, now: UnixTime) -> Option<Issuer> {
        let invite = self.codes.remove(&code)?;
        (now < invite.expires_at).then_some(invite.issuer)
    }

    /// Puts a code back with its expiry: a code loaded from the store at start-up, or a
    /// redeemed one whose redemption the store did not acknowledge. The limit does not
    /// apply (the code existed before).
    pub fn restore(&mut self, code: Code, issuer: Issuer, expires_at: UnixTime) {
        self.codes.insert(code, Invite { issuer, expires_at });
    }

    /// Removes a code whose creation the store did not acknowledge.
    pub fn remove(&mut self, code: Code) {
        self.codes.remove(&code);
    }

    /// Like [`redeem`](Self::redeem), also returning the code's expiry (to restore it if
    /// the redemption is not acknowledged).
    pub fn redeem_with_expiry(&mut self, code: Code, now: UnixTime) -> Option<(Issuer, UnixTime)> {
        let invite = self.codes.remove(&code)?;
        (now < invite.expires_at).then_some((invite.issuer, invite.expires_at))
    }

    /// Removes expired codes and returns them (to delete them from the store too).
    pub fn sweep_expired(&mut self, now: UnixTime) -> Vec<Code> {
        let gone: Vec<Code> = self
            .codes
            .iter()
            .filter(|(_, inv)| now >= inv.expires_at)
            .map(|(c, _)| *c)
            .collect();
        for c in &gone {
            self.codes.remove(c);
        }
        gone
    }

    /// Remove expired codes; returns how many were removed. Call periodically (the
    /// reference sweeps every 60 s).
    pub fn sweep(&mut self, now: UnixTime) -> usize {
        let before = self.codes.len();
        self.codes.retain(|_, inv| now < inv.expires_at);
        before - self.codes.len()
    }

    /// Removes every code `burn` selects (the six-digit guessing guard's burnt
    /// bucket); returns how many were removed.
    pub fn remove_if(&mut self, burn: impl Fn(Code) -> bool) -> usize {
        let before = self.codes.len();
        self.codes.retain(|&c, _| !burn(c));
        before - self.codes.len()
    }

    /// The live codes and their expiry (a node noting its codes in a cluster again).
    pub fn live(&self, now: UnixTime) -> Vec<(Code, UnixTime)> {
        self.codes
            .iter()
            .filter(|(_, inv)| now < inv.expires_at)
            .map(|(c, inv)| (*c, inv.expires_at))
            .collect()
    }

    /// Codes held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// Whether no code is held.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// The configured limit.
    pub fn codes_max(&self) -> usize {
        self.codes_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: UnixTime = UnixTime(1_795_239_689_000_000_000);
    const SEC: u64 = 1_000_000_000;

    fn issuer(mesh: Option<&str>) -> Issuer {
        Issuer {
            peer_id: "agent-001".into(),
            mesh: mesh.map(str::to_owned),
        }
    }

    /// Deterministic xorshift generator.
    fn rng(seed: u64) -> impl FnMut(&mut [u8]) {
        let mut s = seed | 1;
        move |buf: &mut [u8]| {
            for b in buf {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                *b = s as u8;
            }
        }
    }

    #[test]
    fn parse_and_format_six_digits() {
        assert_eq!(Code::parse("000000"), Some(Code::Digits6(0)));
        assert_eq!(Code::parse("999999"), Some(Code::Digits6(999_999)));
        assert_eq!(Code::parse("012345").unwrap().to_string(), "012345");
        // Separators are ignored in either format.
        assert_eq!(Code::parse("012-345"), Some(Code::Digits6(12_345)));
        assert_eq!(Code::parse(" 012 345 "), Some(Code::Digits6(12_345)));
        for bad in [
            "",
            "-",
            "12345",
            "1234567",
            "+12345",
            "12\t456",
            "１２３４５６",
            "12345a",
            "O12345",
            "12345678901",
            "1234567890123",
        ] {
            assert_eq!(Code::parse(bad), None, "{bad}");
        }
        assert_eq!(Code::from_u32(1_000_007).to_string(), "000007");
        assert_eq!(
            serde_json::to_string(&Code::from_u32(42)).unwrap(),
            r#""000042""#
        );
    }

    #[test]
    fn parse_and_format_long_codes() {
        let c = Code::parse("K7QM-3XPA-9T2D").unwrap();
        assert_eq!(c.format(), CodeFormat::Long);
        assert_eq!(c.to_string(), "K7QM-3XPA-9T2D");
        assert_eq!(serde_json::to_string(&c).unwrap(), r#""K7QM-3XPA-9T2D""#);
        // Case, separators and Crockford's look-alikes do not matter.
        for same in [
            "k7qm3xpa9t2d",
            "K7QM 3XPA 9T2D",
            " k7qm-3xpa-9t2d ",
            "K-7-Q-M-3-X-P-A-9-T-2-D",
        ] {
            assert_eq!(Code::parse(same), Some(c), "{same}");
        }
        assert_eq!(Code::parse("ILO0-0000-0000"), Code::parse("1100-0000-0000"));
        assert_eq!(Code::parse("0000-0000-0000"), Some(Code::Long(0)));
        assert_eq!(
            Code::parse("ZZZZ-ZZZZ-ZZZZ"),
            Some(Code::Long(Code::LONG_SPACE - 1))
        );
        // The symbols are the value's 5-bit groups, most significant first.
        assert_eq!(Code::long(1).to_string(), "0000-0000-0001");
        assert_eq!(Code::long(32).to_string(), "0000-0000-0010");
        assert_eq!(Code::long(Code::LONG_SPACE + 5), Code::Long(5));
        for bad in [
            "K7QM-3XPA-9T2",
            "K7QM-3XPA-9T2DA",
            "K7QM-3XPA-9T2U",
            "K7QM_3XPA_9T2D",
            "K7QM-3XPA-9T2D\n",
            "K7QM-3XPA-9T2Ð",
        ] {
            assert_eq!(Code::parse(bad), None, "{bad}");
        }
        // Every value round-trips through its display form.
        let mut r = rng(11);
        for _ in 0..1000 {
            let c = Code::random(&mut r, CodeFormat::Long);
            assert_eq!(Code::parse(&c.to_string()), Some(c));
            assert_eq!(Code::parse(&c.to_string().to_lowercase()), Some(c));
            let d = Code::random(&mut r, CodeFormat::Digits6);
            assert_eq!(Code::parse(&d.to_string()), Some(d));
        }
    }

    #[test]
    fn store_keys_round_trip_and_six_digit_keys_are_unchanged() {
        assert_eq!(Code::from_u32(123_456).store_key(), 123_456);
        assert_eq!(Code::from_store_key(123_456), Some(Code::Digits6(123_456)));
        assert_eq!(Code::from_store_key(1_000_000), None);
        assert_eq!(Code::from_store_key(u64::MAX), None);
        let mut r = rng(5);
        for _ in 0..1000 {
            let c = Code::random(&mut r, CodeFormat::Long);
            assert!(c.store_key() >= 1 << 63);
            assert_eq!(Code::from_store_key(c.store_key()), Some(c));
        }
        assert_eq!(
            Code::from_store_key(Code::long(0).store_key()),
            Some(Code::Long(0))
        );
    }

    #[test]
    fn format_flag_values() {
        assert_eq!("long".parse(), Ok(CodeFormat::Long));
        assert_eq!("digits6".parse(), Ok(CodeFormat::Digits6));
        assert!("digits".parse::<CodeFormat>().is_err());
        assert_eq!(CodeFormat::default(), CodeFormat::Long);
        assert_eq!(CodeFormat::Digits6.to_string(), "digits6");
    }

    #[test]
    fn random_codes_are_in_range_and_vary() {
        let mut r = rng(7);
        let codes: Vec<Code> = (0..1000)
            .map(|_| Code::random(&mut r, CodeFormat::Digits6))
            .collect();
        assert!(codes
            .iter()
            .all(|c| c.digits6().is_some_and(|n| n < Code::DIGITS6_SPACE)));
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert!(distinct.len() > 990);
        // A generator stuck in the rejection zone still terminates.
        let mut stuck = |b: &mut [u8]| b.fill(0xff);
        assert!(Code::random(&mut stuck, CodeFormat::Digits6)
            .digits6()
            .is_some_and(|n| n < Code::DIGITS6_SPACE));
        // All-ones draws give the largest long code: the mask keeps 60 bits.
        assert_eq!(
            Code::random(&mut stuck, CodeFormat::Long),
            Code::Long(Code::LONG_SPACE - 1)
        );
    }

    /// The largest chi-squared statistic over the 12 symbol positions of `DRAWS` long
    /// codes drawn from `r` (31 degrees of freedom each).
    fn worst_symbol_chi2(r: &mut impl Rng) -> f64 {
        const DRAWS: usize = 32_000;
        let mut counts = [[0u32; 32]; Code::LONG_SYMBOLS];
        for _ in 0..DRAWS {
            let Code::Long(v) = Code::random(r, CodeFormat::Long) else {
                panic!("not a long code")
            };
            assert!(v < Code::LONG_SPACE);
            for (i, c) in counts.iter_mut().enumerate() {
                c[((v >> (5 * i)) & 31) as usize] += 1;
            }
        }
        let expected = DRAWS as f64 / 32.0;
        counts
            .iter()
            .map(|c| {
                c.iter()
                    .map(|&n| (f64::from(n) - expected).powi(2) / expected)
                    .sum::<f64>()
            })
            .fold(0.0, f64::max)
    }

    /// Each of the 12 symbols of a long code is uniform over the 32 symbols: chi-squared
    /// over 32,000 draws stays under 70 (the 99.99th percentile for 31 degrees of
    /// freedom is about 66), while a biased source (one random bit stuck) is far above.
    #[test]
    fn long_codes_draw_every_symbol_uniformly() {
        let fair = worst_symbol_chi2(&mut rng(0x5eed));
        assert!(fair < 70.0, "chi2 {fair:.1}");
        let mut inner = rng(3);
        let mut stuck_bit = move |b: &mut [u8]| {
            inner(b);
            b[3] |= 0x10;
        };
        let biased = worst_symbol_chi2(&mut stuck_bit);
        assert!(biased > 1000.0, "chi2 {biased:.1}");
    }

    #[test]
    fn single_use() {
        let mut s = CodeStore::new();
        let code = s
            .generate(&mut rng(1), CodeFormat::Long, issuer(Some("blue")), T0)
            .unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s.redeem(code, T0), Some(issuer(Some("blue"))));
        assert_eq!(s.redeem(code, T0), None);
        assert!(s.is_empty());
        assert_eq!(s.redeem(Code::from_u32(999_999), T0), None);
    }

    #[test]
    fn expiry_boundary() {
        let mut s = CodeStore::new();
        let c = Code::from_u32(123_456);
        assert_eq!(
            s.insert(c, issuer(None), T0),
            Ok(T0.saturating_add_secs(300))
        );
        // 299.999999999 s later: still valid.
        assert_eq!(
            s.redeem(c, UnixTime(T0.0 + 300 * SEC - 1)),
            Some(issuer(None))
        );
        s.insert(c, issuer(None), T0).unwrap();
        // Exactly 300 s: expired, and removed.
        assert_eq!(s.redeem(c, UnixTime(T0.0 + 300 * SEC)), None);
        assert!(s.is_empty());
    }

    #[test]
    fn live_collision_refused_expired_replaced() {
        let mut s = CodeStore::new();
        let c = Code::from_u32(5);
        s.insert(c, issuer(Some("a")), T0).unwrap();
        assert_eq!(
            s.insert(c, issuer(Some("b")), T0.saturating_add_secs(299)),
            Err(CodeInsertError::InUse)
        );
        let later = T0.saturating_add_secs(300);
        assert!(s.insert(c, issuer(Some("b")), later).is_ok());
        assert_eq!(s.redeem(c, later), Some(issuer(Some("b"))));
    }

    #[test]
    fn generate_redraws_on_collision() {
        let mut s = CodeStore::new();
        // A generator that yields 1, 1, 2, ...
        let mut draws = [1u32, 1, 2].into_iter().chain(3..);
        let mut r = move |b: &mut [u8]| b.copy_from_slice(&draws.next().unwrap_or(0).to_le_bytes());
        assert_eq!(
            s.generate(&mut r, CodeFormat::Digits6, issuer(None), T0),
            Ok(Code::from_u32(1))
        );
        assert_eq!(
            s.generate(&mut r, CodeFormat::Digits6, issuer(None), T0),
            Ok(Code::from_u32(2))
        );
        // A generator that always repeats a live code gives up.
        let mut same = |b: &mut [u8]| b.copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            s.generate(&mut same, CodeFormat::Digits6, issuer(None), T0),
            Err(CodeInsertError::InUse)
        );
    }

    #[test]
    fn sweep_removes_only_expired() {
        let mut s = CodeStore::new();
        s.insert(Code::from_u32(1), issuer(None), T0).unwrap();
        s.insert(Code::from_u32(2), issuer(None), T0.saturating_add_secs(100))
            .unwrap();
        assert_eq!(s.sweep(T0.saturating_add_secs(299)), 0);
        assert_eq!(s.sweep(T0.saturating_add_secs(300)), 1);
        assert_eq!(s.len(), 1);
        assert_eq!(s.sweep(T0.saturating_add_secs(400)), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn limit() {
        let mut s = CodeStore::with_limit(2);
        assert_eq!(s.codes_max(), 2);
        s.insert(Code::from_u32(1), issuer(None), T0).unwrap();
        s.insert(Code::from_u32(2), issuer(None), T0.saturating_add_secs(10))
            .unwrap();
        assert_eq!(
            s.insert(Code::from_u32(3), issuer(None), T0),
            Err(CodeInsertError::Full)
        );
        // Replacing an existing (expired) key is not blocked by the limit.
        let t = T0.saturating_add_secs(305);
        assert!(s.insert(Code::from_u32(1), issuer(None), t).is_ok());
        // Full again, but code 2 has expired by now: it is swept to make room.
        let t = T0.saturating_add_secs(311);
        assert!(s.insert(Code::from_u32(3), issuer(None), t).is_ok());
        assert_eq!(s.len(), 2);
        assert_eq!(s.redeem(Code::from_u32(2), t), None);
        // A zero limit refuses everything without panicking.
        let mut z = CodeStore::with_limit(0);
        assert_eq!(
            z.generate(&mut rng(3), CodeFormat::Long, issuer(None), T0),
            Err(CodeInsertError::Full)
        );
    }

    #[test]
    fn one_issuer_holds_at_most_its_quota() {
        let mut s = CodeStore::new();
        s.set_issuer_codes_max(2);
        let a = Issuer {
            peer_id: "a".into(),
            mesh: None,
        };
        let b = Issuer {
            peer_id: "b".into(),
            mesh: None,
        };
        s.insert(Code::from_u32(1), a.clone(), T0).unwrap();
        s.insert(Code::from_u32(2), a.clone(), T0).unwrap();
        assert_eq!(
            s.insert(Code::from_u32(3), a.clone(), T0),
            Err(CodeInsertError::IssuerQuota { codes_max: 2 })
        );
        s.insert(Code::from_u32(3), b, T0).unwrap();
        // Used or expired codes do not count.
        s.redeem(Code::from_u32(1), T0);
        s.insert(Code::from_u32(4), a, T0).unwrap();
    }
}
