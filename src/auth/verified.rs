//! Tokens this shard has verified lately, so that a client presenting the same bearer
//! token request after request (an agent's keep-alive connection: its heartbeats, its
//! task calls) pays for base64, HMAC-SHA256 and two JSON parses once, not per request.
//! Envoy's `jwt_authn` filter keeps such a cache for the same reason.
//!
//! Nothing about what is accepted changes: an entry is made only for a token that
//! passed every check of [`jwt::verify_leeway`] that does not depend on the time (its
//! structure, header, algorithm, signature and claims: [`jwt::Signed`]), keyed by the
//! whole token (compared byte for byte) and by the secret that verified it; a hit
//! runs the checks that depend on the time ([`jwt::Signed::check`]) again, at the
//! request's time. A token that fails is never kept, so a forged one is verified (and
//! counted against the failure budget) every time. A token is pure data signed by the
//! secret: there is nothing else for an entry to go stale against, and a change of the
//! secret empties the cache.
//!
//! Bounded: [`VERIFIED_TOKENS_SLOTS`] slots, each for one token of at most
//! [`VERIFIED_TOKEN_BYTES_MAX`] bytes; a slot's new token replaces the old one, and a
//! longer token is verified every time. One per shard (`Owns<RefCell<VerifiedTokens>>`):
//! no sharing between shards.

use super::jwt::{self, Claims, JwtError, Signed};
use subtle::ConstantTimeEq;

/// How many tokens a shard keeps: a slot per client of a shard that heartbeats every few
/// seconds on a keep-alive connection, for a few hundred such clients per shard. An
/// entry is the token and its claims (`sub` and `role` are parts of the token): at most
/// `VERIFIED_TOKENS_SLOTS × (2 × VERIFIED_TOKEN_BYTES_MAX + ~150)` bytes (~550 KiB; a
/// token of ours is ~200 bytes, so ~100 KiB in practice). When two tokens share a slot
/// the newer one is kept: the other is verified in full next time (no more than
/// without the cache).
pub const VERIFIED_TOKENS_SLOTS: usize = 256;

/// The longest token kept (ours are ~200 bytes; a peer id is at most 128): a longer one
/// is verified on every request rather than hold a large slot.
pub const VERIFIED_TOKEN_BYTES_MAX: usize = 1024;

struct Entry {
    token: Box<str>,
    signed: Signed,
}

/// A shard's verified tokens (see the module's comment).
pub struct VerifiedTokens {
    /// The secret the entries were verified with.
    secret: Vec<u8>,
    /// Direct-mapped by [`slot_of`]; empty until the first entry.
    slots: Vec<Option<Box<Entry>>>,
    hits: u64,
    misses: u64,
}

impl Default for VerifiedTokens {
    fn default() -> Self {
        Self::new()
    }
}

impl VerifiedTokens {
    pub fn new() -> Self {
        VerifiedTokens {
            secret: Vec::new(),
            slots: Vec::new(),
            hits: 0,
            misses: 0,
        }
    }

    /// [`jwt::verify_leeway`] of `token` with `secret` at `now_secs`, from the cache when
    /// it holds the token (verified with this secret).
    pub fn verify(
        &mut self,
        secret: &[u8],
        token: &str,
        now_secs: u64,
        leeway_secs: u64,
    ) -> Result<Claims, JwtError> {
        if self.secret != secret {
            self.slots.clear();
            self.secret = secret.to_vec();
        }
        let cacheable = token.len() <= VERIFIED_TOKEN_BYTES_MAX;
        let slot = slot_of(token);
        if cacheable {
            if let Some(e) = self.slots.get(slot).and_then(Option::as_ref) {
                if same_token(&e.token, token) {
                    self.hits += 1;
                    e.signed.check(now_secs, leeway_secs)?;
                    return Ok(e.signed.claims.clone());
                }
            }
        }
        self.misses += 1;
        let signed = jwt::verify_signed(secret, token)?;
        signed.check(now_secs, leeway_secs)?;
        let claims = signed.claims.clone();
        if cacheable && signed.may_pass() {
            if self.slots.is_empty() {
                self.slots.resize_with(VERIFIED_TOKENS_SLOTS, || None);
            }
            self.slots[slot] = Some(Box::new(Entry {
                token: token.into(),
                signed,
            }));
        }
        Ok(claims)
    }

    /// How many verifications were answered from the cache (the token found; its time
    /// checks may still have refused it), and how many were verified in full.
    pub fn counts(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    /// How many tokens are kept (tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether `presented` is the cached token `kept`: its signature (after the last `.`)
/// compared in constant time, as the HMAC check it stands for compares it; the header
/// and claims before it are no secret (anyone holding the token reads them) and are
/// compared as bytes.
fn same_token(kept: &str, presented: &str) -> bool {
    let (Some((kept_msg, kept_sig)), Some((msg, sig))) =
        (kept.rsplit_once('.'), presented.rsplit_once('.'))
    else {
        return false;
    };
    kept_msg == msg
        && kept_sig.len() == sig.len()
        && bool::from(kept_sig.as_bytes().ct_eq(sig.as_bytes()))
}

/// A token's slot, from the last characters before its final one: the base64 of its
/// HMAC-SHA256 signature, which is uniformly spread for tokens signed with the secret
/// (the only ones kept). A token made to land on a slot only costs a full verification;
/// the whole token is compared before a slot answers.
fn slot_of(token: &str) -> usize {
    let b = token.as_bytes();
    let end = b.len().saturating_sub(1);
    let start = end.saturating_sub(8);
    let mut word = [0u8; 8];
    word[..end - start].copy_from_slice(&b[start..end]);
    let mixed = u64::from_le_bytes(word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> 56) as usize % VERIFIED_TOKENS_SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"dev-secret-change-me";
    const NOW: u64 = 1_795_239_689;

    fn claims(sub: &str, exp: u64, iat: u64) -> Claims {
        Claims {
            sub: sub.into(),
            role: "agent".into(),
            exp,
            iat,
        }
    }

    /// Every answer of the cache is the answer of `verify_leeway`, for tokens valid,
    /// expired, not yet valid, forged, naming an audience, of another secret, and asked
    /// again at later times; and a token seen before is answered from the cache.
    #[test]
    fn answers_what_verify_leeway_answers() {
        let mut tokens = vec![
            jwt::issue(SECRET, "alpha", "agent", NOW),
            jwt::issue(SECRET, "beta", "admin", NOW - 1000),
            jwt::encode(SECRET, &claims("later", NOW + 300, NOW + 200)),
            jwt::issue(b"another secret", "alpha", "agent", NOW),
            jwt::sign_payload(
                SECRET,
                format!(
                    r#"{{"sub":"a","role":"agent","exp":{},"iat":{NOW},"aud":"x"}}"#,
                    NOW + 300
                ),
            ),
            jwt::sign_payload(
                SECRET,
                format!(
                    r#"{{"sub":"n","role":"agent","exp":{},"iat":{NOW},"nbf":{}}}"#,
                    NOW + 300,
                    NOW + 100
                ),
            ),
        ];
        // Forged: the signature of one token on another's claims.
        let a = tokens[0].clone();
        let b = tokens[1].clone();
        let forged = format!(
            "{}.{}",
            a.rsplit_once('.').unwrap().0,
            b.rsplit_once('.').unwrap().1
        );
        tokens.push(forged);
        tokens.push("not.a.token".into());
        tokens.push(String::new());
        let mut cache = VerifiedTokens::new();
        for secret in [SECRET, b"another secret".as_slice()] {
            for round in 0..3 {
                for now in [NOW - 2000, NOW - 10, NOW, NOW + 250, NOW + 296, NOW + 310] {
                    for t in &tokens {
                        for leeway in [0, 5, 60] {
                            let want = jwt::verify_leeway(secret, t, now, leeway);
                            let got = cache.verify(secret, t, now, leeway);
                            assert_eq!(got, want, "round {round}, token {t}, now {now}");
                        }
                    }
                }
            }
        }
        let (hits, _) = cache.counts();
        assert!(hits > 0);
        // A valid token seen before is answered from the cache.
        assert!(cache.verify(SECRET, &tokens[0], NOW, 5).is_ok());
        assert_eq!(
            cache.verify(SECRET, &tokens[0], NOW + 1, 5).unwrap().sub,
            "alpha"
        );
        assert_eq!(cache.counts().0, hits + 1);
    }

    #[test]
    fn a_token_naming_an_audience_or_too_long_is_not_kept() {
        let mut cache = VerifiedTokens::new();
        let aud = jwt::sign_payload(
            SECRET,
            format!(
                r#"{{"sub":"a","role":"agent","exp":{},"iat":{NOW},"aud":"x"}}"#,
                NOW + 300
            ),
        );
        assert_eq!(
            cache.verify(SECRET, &aud, NOW, 5),
            Err(JwtError::InvalidAudience)
        );
        assert!(cache.is_empty());
        let long = jwt::issue(SECRET, &"p".repeat(VERIFIED_TOKEN_BYTES_MAX), "agent", NOW);
        assert!(cache.verify(SECRET, &long, NOW, 5).is_ok());
        assert!(cache.is_empty());
        assert!(cache.verify(SECRET, &long, NOW, 5).is_ok());
        assert_eq!(cache.counts(), (0, 3));
        let short = jwt::issue(SECRET, "p", "agent", NOW);
        assert!(cache.verify(SECRET, &short, NOW, 5).is_ok());
        assert_eq!(cache.len(), 1);
        // Another secret: emptied, and the token is refused as jwt refuses it.
        assert_eq!(
            cache.verify(b"rotated", &short, NOW, 5),
            Err(JwtError::InvalidSignature)
        );
        assert!(cache.is_empty());
    }

    #[test]
    fn same_token_is_byte_for_byte() {
        let t = jwt::issue(SECRET, "alpha", "agent", NOW);
        assert!(same_token(&t, &t.clone()));
        let (msg, sig) = t.rsplit_once('.').unwrap();
        for i in 0..t.len() {
            let mut other = t.clone().into_bytes();
            other[i] ^= 1;
            assert!(
                !same_token(&t, &String::from_utf8(other).unwrap()),
                "byte {i}"
            );
        }
        assert!(!same_token(&t, msg));
        assert!(!same_token(&t, &format!("{msg}.{sig}x")));
        assert!(!same_token(&t, &format!("{msg}x.{sig}")));
        assert!(
            !same_token("", ""),
            "no token is cached without a signature"
        );
    }

    #[test]
    fn the_cache_holds_at_most_its_slots() {
        let mut cache = VerifiedTokens::new();
        for i in 0..(4 * VERIFIED_TOKENS_SLOTS) {
            let t = jwt::issue(SECRET, &format!("peer-{i}"), "agent", NOW);
            assert_eq!(
                cache.verify(SECRET, &t, NOW, 5).unwrap().sub,
                format!("peer-{i}")
            );
        }
        assert!(cache.len() <= VERIFIED_TOKENS_SLOTS);
        // The signatures spread the tokens over most slots.
        assert!(
            cache.len() > VERIFIED_TOKENS_SLOTS * 3 / 4,
            "{}",
            cache.len()
        );
    }
}
