//! Single-use 6-digit invite codes with a 300 s lifetime.

use std::collections::HashMap;

use serde::{Serialize, Serializer};

use super::{Rng, CODE_TTL_SECS};
use crate::time::UnixTime;

/// A six-digit invite code, `000000`..=`999999`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(u32);

impl Code {
    /// Number of distinct codes.
    pub const SPACE: u32 = 1_000_000;

    /// Parse exactly six ASCII digits (the reference's check: byte length 6, all
    /// `is_ascii_digit`). Anything else is `None`.
    pub fn parse(s: &str) -> Option<Code> {
        let b = s.as_bytes();
        if b.len() != 6 || !b.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(Code(
            b.iter()
                .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0')),
        ))
    }

    /// The code `n % 1_000_000`.
    pub fn from_u32(n: u32) -> Code {
        Code(n % Self::SPACE)
    }

    /// A uniformly random code (rejection sampling over 32-bit draws; after 16 rejected
    /// draws, which a working generator essentially never produces, the last draw is
    /// reduced modulo 10^6 so the loop is bounded).
    pub fn random(rng: &mut impl Rng) -> Code {
        // Largest multiple of 10^6 that fits in a u32.
        const LIMIT: u32 = u32::MAX / Code::SPACE * Code::SPACE;
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

    /// The numeric value.
    pub fn value(self) -> u32 {
        self.0
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:06}", self.0)
    }
}

/// Serialized as its six-digit string.
impl Serialize for Code {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
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
    /// `pair` hits some live code with probability (live codes in all shards) / 10^6. When
    /// the store is full, expired codes are swept and, if it is still full, new codes are
    /// refused with [`CodeInsertError::Full`] until some expire or are used.
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

    /// Draw a random code and [`insert`](Self::insert) it, redrawing up to
    /// [`GENERATE_TRIES_MAX`](Self::GENERATE_TRIES_MAX) times while the draw is in use.
    ///
    /// Only meaningful for a store that owns every code (one shard, or tests): in a
    /// sharded server draw with [`Code::random`], route to the owning shard, and
    /// `insert` there.
    pub fn generate(
        &mut self,
        rng: &mut impl Rng,
        issuer: Issuer,
        now: UnixTime,
    ) -> Result<Code, CodeInsertError> {
        for _ in 0..Self::GENERATE_TRIES_MAX {
            let code = Code::random(rng);
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

    /// Removes every code `burn` selects (the guessing guard's burnt bucket); returns
    /// how many were removed.
    pub fn remove_if(&mut self, burn: impl Fn(Code) -> bool) -> usize {
        let before = self.codes.len();
        self.codes.retain(|&c, _| !burn(c));
        before - self.codes.len()
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
    fn parse_and_format() {
        assert_eq!(Code::parse("000000").map(Code::value), Some(0));
        assert_eq!(Code::parse("999999").map(Code::value), Some(999_999));
        assert_eq!(Code::parse("012345").unwrap().to_string(), "012345");
        for bad in [
            "",
            "12345",
            "1234567",
            "-12345",
            "+12345",
            "12 456",
            "１２３４５６",
            "12345a",
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
    fn random_codes_are_in_range_and_vary() {
        let mut r = rng(7);
        let codes: Vec<Code> = (0..1000).map(|_| Code::random(&mut r)).collect();
        assert!(codes.iter().all(|c| c.value() < Code::SPACE));
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert!(distinct.len() > 990);
        // A generator stuck in the rejection zone still terminates.
        let mut stuck = |b: &mut [u8]| b.fill(0xff);
        assert!(Code::random(&mut stuck).value() < Code::SPACE);
    }

    #[test]
    fn single_use() {
        let mut s = CodeStore::new();
        let code = s.generate(&mut rng(1), issuer(Some("blue")), T0).unwrap();
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
        assert_eq!(s.generate(&mut r, issuer(None), T0), Ok(Code::from_u32(1)));
        assert_eq!(s.generate(&mut r, issuer(None), T0), Ok(Code::from_u32(2)));
        // A generator that always repeats a live code gives up.
        let mut same = |b: &mut [u8]| b.copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            s.generate(&mut same, issuer(None), T0),
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
            z.generate(&mut rng(3), issuer(None), T0),
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
