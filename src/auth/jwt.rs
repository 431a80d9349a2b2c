//! HS256 JSON Web Tokens, wire-compatible with the reference registry.
//!
//! The reference signs with `jsonwebtoken` 9 (`Header::default()`, a `Claims` struct of
//! `sub, role, exp, iat`) and validates with `Validation::default()`. This module produces
//! byte-identical tokens and accepts exactly what that validation accepts:
//!
//! * three dot-separated parts, each base64url without padding (strict: `=` padding and
//!   non-canonical trailing bits are rejected, as `base64` 0.22's `URL_SAFE_NO_PAD` does);
//! * a JSON header whose `alg` is `HS256` (other algorithms are refused; `typ` is optional
//!   and not checked; the other registered header fields, when present, must have their
//!   registered JSON types);
//! * an HMAC-SHA256 signature over `header.payload`, compared in constant time;
//! * claims `sub` (string), `role` (string), `exp` and `iat` (non-negative integers); other
//!   claims are ignored, except that a string or string-array `aud` is refused (no audience
//!   is configured, and `jsonwebtoken` then rejects any token naming one);
//! * `exp` with a **leeway** for clock skew (`--jwt-leeway-secs`, default
//!   [`LEEWAY_SECS_DEFAULT`] = 5 s): a token is refused once `exp < now - leeway`, so it
//!   stays valid through second `exp + leeway`. **Differs**: the reference's leeway is
//!   `jsonwebtoken`'s 60 s ([`REFERENCE_LEEWAY_SECS`]), which kept a token usable a
//!   minute past its expiry; our own tokens are checked on the clock that issued them,
//!   so only tokens from another host need any leeway.
//! * `nbf` (not before), when it is a number, with the same leeway: a token is refused
//!   while `nbf > now + leeway`. This is stricter than the reference (its
//!   `Validation::default()` ignores `nbf`): a token that says it is not valid yet is not
//!   accepted early.
//! * `iat` (issued at) more than the leeway in the future is refused
//!   ([`JwtError::IssuedInFuture`]; **differs**: the reference does not check `iat`): a
//!   token cannot have been issued later than now.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Lifetime of an issued token: `exp = iat + 300`.
pub const TOKEN_LIFETIME_SECS: u64 = 300;

/// Clock-skew leeway applied to `exp`, `nbf` and `iat` by default (`--jwt-leeway-secs`).
pub const LEEWAY_SECS_DEFAULT: u64 = 5;

/// The reference's leeway (`jsonwebtoken`'s `Validation::default()`), for comparison.
pub const REFERENCE_LEEWAY_SECS: u64 = 60;

/// Longest token [`verify`] will look at, in bytes.
///
/// Tokens arrive in URLs and headers from unauthenticated clients and verification decodes
/// them into buffers, so the size is capped up front. Tokens we issue are about 200 bytes
/// plus the peer id and role; anything longer than this is refused as
/// [`JwtError::Malformed`] without being decoded.
pub const TOKEN_BYTES_MAX: usize = 16 * 1024;

/// The header every issued token carries, exactly as `jsonwebtoken` serializes
/// `Header::default()`.
pub const HEADER_JSON: &str = r#"{"typ":"JWT","alg":"HS256"}"#;

/// The claims of a chatixia token; field order is the serialization order on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The peer id.
    pub sub: String,
    /// The role (`agent`, …).
    pub role: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issue time, seconds since the epoch.
    pub iat: u64,
}

/// Why a token was refused. Every variant maps to HTTP 401 at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url parts, bad base64, bad header JSON, or longer than
    /// [`TOKEN_BYTES_MAX`].
    Malformed,
    /// The header names an algorithm other than HS256.
    InvalidAlgorithm,
    /// The signature does not match.
    InvalidSignature,
    /// The signature matches but the claims are not the expected shape.
    InvalidClaims,
    /// `exp` is more than the leeway in the past.
    Expired,
    /// The token names an audience (none is configured).
    InvalidAudience,
    /// `nbf` is more than the leeway in the future.
    NotYetValid,
    /// `iat` is more than the leeway in the future.
    IssuedInFuture,
}

impl JwtError {
    /// Whether the token is not one signed with our key (malformed, another algorithm,
    /// a wrong signature): a guess, counted against the failure budget
    /// (`auth::failures`). A token of ours that has expired, or is refused for its
    /// claims, could not have been made without the key and is not counted.
    pub fn is_forgery(self) -> bool {
        matches!(
            self,
            JwtError::Malformed | JwtError::InvalidAlgorithm | JwtError::InvalidSignature
        )
    }
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JwtError::Malformed => "malformed token",
            JwtError::InvalidAlgorithm => "invalid algorithm",
            JwtError::InvalidSignature => "invalid signature",
            JwtError::InvalidClaims => "invalid claims",
            JwtError::Expired => "expired signature",
            JwtError::InvalidAudience => "invalid audience",
            JwtError::NotYetValid => "immature signature",
            JwtError::IssuedInFuture => "issued in the future",
        })
    }
}

impl std::error::Error for JwtError {}

/// Issue a token for `peer_id`/`role` at `now_secs`, valid for [`TOKEN_LIFETIME_SECS`].
pub fn issue(secret: &[u8], peer_id: &str, role: &str, now_secs: u64) -> String {
    encode(
        secret,
        &Claims {
            sub: peer_id.to_owned(),
            role: role.to_owned(),
            exp: now_secs.saturating_add(TOKEN_LIFETIME_SECS),
            iat: now_secs,
        },
    )
}

/// Sign arbitrary claims (the building block of [`issue`]).
pub fn encode(secret: &[u8], claims: &Claims) -> String {
    // Serializing two strings and two integers cannot fail.
    sign_payload(secret, serde_json::to_vec(claims).unwrap_or_default())
}

/// A token of our header over the claims `payload` (JSON, as it is: also claims that
/// [`Claims`] cannot carry, for tests).
pub(crate) fn sign_payload(secret: &[u8], payload: impl AsRef<[u8]>) -> String {
    let mut token = URL_SAFE_NO_PAD.encode(HEADER_JSON);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut token);
    let signature = sign(secret, token.as_bytes());
    token.push('.');
    token.push_str(&signature);
    token
}

/// [`verify_leeway`] with the default leeway, [`LEEWAY_SECS_DEFAULT`].
pub fn verify(secret: &[u8], token: &str, now_secs: u64) -> Result<Claims, JwtError> {
    verify_leeway(secret, token, now_secs, LEEWAY_SECS_DEFAULT)
}

/// Check `token`'s signature and claims at `now_secs`, with `leeway_secs` of clock skew
/// allowed on `exp`, `nbf` and `iat`, and return the claims.
///
/// The checks run in the reference's order (structure, header, algorithm, signature,
/// claims shape, expiry, audience), so the error kind is the one `jsonwebtoken` reports;
/// `nbf` and `iat`, which it does not check, come last.
pub fn verify_leeway(
    secret: &[u8],
    token: &str,
    now_secs: u64,
    leeway_secs: u64,
) -> Result<Claims, JwtError> {
    let signed = verify_signed(secret, token)?;
    signed.check(now_secs, leeway_secs)?;
    Ok(signed.claims)
}

/// A token whose structure, header, algorithm, signature and claims' shape passed: what
/// [`verify_leeway`] checks that does not depend on the time. [`Signed::check`] does the
/// rest at a given time; the two together are [`verify_leeway`], so a token checked
/// once may be checked again at another time from this (`auth::verified`).
#[derive(Debug, Clone)]
pub struct Signed {
    pub claims: Claims,
    /// `nbf`, as far as the check reads it (kept small: a cached `Signed` holds no JSON).
    nbf: NotBefore,
    /// The token names an audience: refused at every time, after an expiry.
    names_audience: bool,
}

impl Signed {
    /// The checks of [`verify_leeway`] that depend on `now_secs`, in its order:
    /// expiry, then the audience (whatever the time), `nbf`, `iat`.
    pub fn check(&self, now_secs: u64, leeway_secs: u64) -> Result<(), JwtError> {
        if self.claims.exp < now_secs.saturating_sub(leeway_secs) {
            return Err(JwtError::Expired);
        }
        if self.names_audience {
            return Err(JwtError::InvalidAudience);
        }
        if not_yet_valid(self.nbf, now_secs, leeway_secs) {
            return Err(JwtError::NotYetValid);
        }
        if self.claims.iat > now_secs.saturating_add(leeway_secs) {
            return Err(JwtError::IssuedInFuture);
        }
        Ok(())
    }

    /// Whether this can pass [`check`](Self::check) at some time (it names no
    /// audience).
    pub fn may_pass(&self) -> bool {
        !self.names_audience
    }
}

/// The checks of [`verify_leeway`] that do not depend on the time, in its order. Not a
/// verification on its own: the claims are valid only once [`Signed::check`] passes.
#[must_use = "a token is valid only once `Signed::check` passes"]
pub(crate) fn verify_signed(secret: &[u8], token: &str) -> Result<Signed, JwtError> {
    if token.len() > TOKEN_BYTES_MAX {
        return Err(JwtError::Malformed);
    }
    // `jsonwebtoken` splits from the right; a header containing '.' then fails base64.
    let (message, signature) = token.rsplit_once('.').ok_or(JwtError::Malformed)?;
    let (header_b64, payload_b64) = message.rsplit_once('.').ok_or(JwtError::Malformed)?;

    let header_json = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| JwtError::Malformed)?;
    // Nesting beyond the bound every JSON input has (`wire::json::JSON_DEPTH_MAX`) is
    // malformed before serde_json sees it (serde_json alone would stop at 128).
    wire::json::check_depth(&header_json, wire::json::JSON_DEPTH_MAX)
        .map_err(|_| JwtError::Malformed)?;
    let header: RawHeader =
        serde_json::from_slice(&header_json).map_err(|_| JwtError::Malformed)?;
    match header.alg.as_str() {
        "HS256" => {}
        alg if KNOWN_ALGORITHMS.contains(&alg) => return Err(JwtError::InvalidAlgorithm),
        // `jsonwebtoken` cannot even deserialize an unknown `alg`.
        _ => return Err(JwtError::Malformed),
    }

    if !signature_valid(secret, message.as_bytes(), signature) {
        return Err(JwtError::InvalidSignature);
    }

    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| JwtError::Malformed)?;
    wire::json::check_depth(&payload, wire::json::JSON_DEPTH_MAX)
        .map_err(|_| JwtError::InvalidClaims)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| JwtError::InvalidClaims)?;
    // The registered claims `jsonwebtoken` looks at separately: a duplicate of any of them
    // is a deserialization error there too.
    let spec: SpecClaims = serde_json::from_slice(&payload).map_err(|_| JwtError::InvalidClaims)?;
    Ok(Signed {
        claims,
        names_audience: spec.aud.as_ref().is_some_and(names_audience),
        nbf: spec.nbf.as_ref().map_or(NotBefore::Absent, NotBefore::of),
    })
}

/// Algorithm names `jsonwebtoken` 9 knows; any other `alg` fails header parsing there.
const KNOWN_ALGORITHMS: [&str; 12] = [
    "HS256", "HS384", "HS512", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384",
    "PS512", "EdDSA",
];

/// The header fields `jsonwebtoken` types; unknown fields are ignored, as there.
#[derive(Deserialize)]
#[allow(dead_code)] // fields exist only so their types and uniqueness are checked
struct RawHeader {
    alg: String,
    typ: Option<String>,
    cty: Option<String>,
    jku: Option<String>,
    jwk: Option<IgnoredAny>,
    kid: Option<String>,
    x5u: Option<String>,
    x5c: Option<Vec<String>>,
    x5t: Option<String>,
    #[serde(rename = "x5t#S256")]
    x5t_s256: Option<String>,
}

/// Registered claims besides `sub`/`exp` that `jsonwebtoken` parses while validating.
#[derive(Deserialize)]
#[allow(dead_code)] // fields exist only so their uniqueness is checked
struct SpecClaims {
    nbf: Option<serde_json::Value>,
    iss: Option<IgnoredAny>,
    aud: Option<serde_json::Value>,
}

/// A token's `nbf` as the check reads it: a non-negative integer, another number, or
/// none (absent or not a number: ignored, as the reference ignores every `nbf`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum NotBefore {
    Absent,
    Secs(u64),
    Number(f64),
}

impl NotBefore {
    fn of(nbf: &serde_json::Value) -> NotBefore {
        match (nbf.as_u64(), nbf.as_f64()) {
            (Some(n), _) => NotBefore::Secs(n),
            (None, Some(f)) => NotBefore::Number(f),
            (None, None) => NotBefore::Absent,
        }
    }
}

/// Whether a numeric `nbf` lies more than the leeway after `now_secs`.
fn not_yet_valid(nbf: NotBefore, now_secs: u64, leeway_secs: u64) -> bool {
    let limit = now_secs.saturating_add(leeway_secs);
    match nbf {
        NotBefore::Secs(n) => n > limit,
        NotBefore::Number(f) => f > limit as f64,
        NotBefore::Absent => false,
    }
}

/// `jsonwebtoken` treats `aud` as present when it is a string or an array of strings.
fn names_audience(aud: &serde_json::Value) -> bool {
    match aud {
        serde_json::Value::String(_) => true,
        serde_json::Value::Array(items) => items.iter().all(serde_json::Value::is_string),
        _ => false,
    }
}

/// Base64url (no padding) HMAC-SHA256 of `message`.
fn sign(secret: &[u8], message: &[u8]) -> String {
    // HMAC accepts keys of any length, so this never fails; an empty signature (which
    // never verifies) is the fallback rather than a panic.
    match HmacSha256::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(message);
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

/// Whether `signature` (base64url, no padding) is the HS256 MAC of `message`, compared
/// in constant time by `hmac` (`Mac::verify_slice`). Undecodable is invalid.
fn signature_valid(secret: &[u8], message: &[u8], signature: &str) -> bool {
    let Ok(sig) = URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return false;
    };
    mac.update(message);
    mac.verify_slice(&sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{
        decode, decode_header, encode as jwt_encode, get_current_timestamp, Algorithm, DecodingKey,
        EncodingKey, Header, Validation,
    };

    const SECRET: &[u8] = b"dev-secret-change-me";
    const NOW: u64 = 1_795_239_689;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    /// Hand-build a token from raw header/payload JSON, signed with `secret`.
    fn raw_token(secret: &[u8], header: &str, payload: &str) -> String {
        let message = format!("{}.{}", b64(header), b64(payload));
        let sig = sign(secret, message.as_bytes());
        format!("{message}.{sig}")
    }

    fn jwt_validate(token: &str, secret: &[u8]) -> jsonwebtoken::errors::Result<Claims> {
        decode::<Claims>(
            token,
            &DecodingKey::from_secret(secret),
            &Validation::default(),
        )
        .map(|d| d.claims)
    }

    #[test]
    fn header_is_exactly_the_reference_header() {
        let token = issue(SECRET, "agent-001", "agent", NOW);
        let header_b64 = token.split('.').next().unwrap_or_default();
        assert_eq!(header_b64, "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9");
        assert_eq!(
            URL_SAFE_NO_PAD.decode(header_b64).unwrap(),
            br#"{"typ":"JWT","alg":"HS256"}"#
        );
        let h = decode_header(&token).unwrap();
        assert_eq!(h.alg, Algorithm::HS256);
        assert_eq!(h.typ.as_deref(), Some("JWT"));
    }

    #[test]
    fn payload_field_order_and_values() {
        let token = issue(SECRET, "agent-001", "agent", NOW);
        let payload = token.split('.').nth(1).unwrap_or_default();
        assert_eq!(
            String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap(),
            format!(
                r#"{{"sub":"agent-001","role":"agent","exp":{},"iat":{NOW}}}"#,
                NOW + 300
            )
        );
    }

    #[test]
    fn byte_identical_to_jsonwebtoken() {
        let claims = Claims {
            sub: "peer \"quoted\" \u{e9}".into(),
            role: "admin".into(),
            exp: NOW + 300,
            iat: NOW,
        };
        let theirs = jwt_encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(encode(SECRET, &claims), theirs);
        assert_eq!(issue(SECRET, &claims.sub, "admin", NOW), theirs);
    }

    #[test]
    fn ours_validates_on_jsonwebtoken() {
        let now = get_current_timestamp();
        let token = issue(SECRET, "agent-7", "agent", now);
        let claims = jwt_validate(&token, SECRET).unwrap();
        assert_eq!(claims.sub, "agent-7");
        assert_eq!(claims.role, "agent");
        assert_eq!(claims.iat, now);
        assert_eq!(claims.exp, now + 300);
        // And not with another secret.
        assert!(jwt_validate(&token, b"other").is_err());
    }

    #[test]
    fn jsonwebtoken_validates_on_ours() {
        let claims = Claims {
            sub: "agent-abcdef".into(),
            role: "agent".into(),
            exp: NOW + 300,
            iat: NOW,
        };
        let theirs = jwt_encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(verify(SECRET, &theirs, NOW), Ok(claims.clone()));
        assert_eq!(
            verify(b"wrong", &theirs, NOW),
            Err(JwtError::InvalidSignature)
        );
        // Header without typ and extra claims are fine on both sides.
        let mut header = Header::new(Algorithm::HS256);
        header.typ = None;
        header.kid = Some("k1".into());
        #[derive(Serialize)]
        struct Extra<'a> {
            sub: &'a str,
            role: &'a str,
            exp: u64,
            iat: u64,
            iss: &'a str,
            extra: [u8; 2],
        }
        let extra = Extra {
            sub: "p",
            role: "r",
            exp: NOW,
            iat: NOW,
            iss: "someone",
            extra: [1, 2],
        };
        let t = jwt_encode(&header, &extra, &EncodingKey::from_secret(SECRET)).unwrap();
        let got = verify(SECRET, &t, NOW).unwrap();
        assert_eq!(got.sub, "p");
    }

    #[test]
    fn expiry_leeway_matches_jsonwebtoken() {
        // jsonwebtoken reads the real clock, so anchor on it for the cross-check.
        let now = get_current_timestamp();
        let mk = |exp: u64| {
            encode(
                SECRET,
                &Claims {
                    sub: "p".into(),
                    role: "agent".into(),
                    exp,
                    iat: exp.saturating_sub(300),
                },
            )
        };
        // With the reference's leeway, inside it on both implementations (margins absorb
        // a clock tick between our `now` and jsonwebtoken's).
        let reference = |t: &str| verify_leeway(SECRET, t, now, REFERENCE_LEEWAY_SECS);
        let inside = mk(now - 55);
        assert!(reference(&inside).is_ok());
        assert!(jwt_validate(&inside, SECRET).is_ok());
        // Beyond it on both.
        let gone = mk(now - 65);
        assert_eq!(reference(&gone), Err(JwtError::Expired));
        assert!(matches!(
            jwt_validate(&gone, SECRET).map_err(|e| e.into_kind()),
            Err(jsonwebtoken::errors::ErrorKind::ExpiredSignature)
        ));

        // Our default leeway is 5 s: 59 s past `exp` is refused.
        assert_eq!(verify(SECRET, &inside, now), Err(JwtError::Expired));

        // Pure arithmetic at a fixed time.
        let t = mk(NOW);
        assert!(verify(SECRET, &t, NOW + 5).is_ok());
        assert_eq!(verify(SECRET, &t, NOW + 6), Err(JwtError::Expired));
        assert!(verify_leeway(SECRET, &t, NOW + 60, 60).is_ok());
        assert_eq!(
            verify_leeway(SECRET, &t, NOW + 1, 0),
            Err(JwtError::Expired)
        );
        // exp = 0 with a tiny `now` must not underflow.
        assert!(verify(SECRET, &mk(0), 3).is_ok());
    }

    #[test]
    fn issued_in_the_future_is_refused() {
        let mk = |iat: u64| {
            encode(
                SECRET,
                &Claims {
                    sub: "p".into(),
                    role: "agent".into(),
                    exp: iat + 300,
                    iat,
                },
            )
        };
        assert!(verify(SECRET, &mk(NOW), NOW).is_ok());
        assert!(
            verify(SECRET, &mk(NOW + 5), NOW).is_ok(),
            "within the leeway"
        );
        assert_eq!(
            verify(SECRET, &mk(NOW + 6), NOW),
            Err(JwtError::IssuedInFuture)
        );
        assert_eq!(
            verify(SECRET, &mk(NOW + 10_000), NOW),
            Err(JwtError::IssuedInFuture)
        );
        assert!(verify_leeway(SECRET, &mk(NOW + 60), NOW, 60).is_ok());
        // Not a forgery: signed with our key.
        assert!(!JwtError::IssuedInFuture.is_forgery());
        assert!(!JwtError::Expired.is_forgery());
        assert!(JwtError::InvalidSignature.is_forgery());
        assert!(JwtError::Malformed.is_forgery());
        // Huge values do not overflow.
        assert_eq!(
            verify(SECRET, &mk(u64::MAX - 300), u64::MAX - 10),
            Ok(Claims {
                sub: "p".into(),
                role: "agent".into(),
                exp: u64::MAX,
                iat: u64::MAX - 300
            })
        );
    }

    #[test]
    fn issued_token_lifecycle() {
        let t = issue(SECRET, "agent-001", "agent", NOW);
        assert!(verify(SECRET, &t, NOW).is_ok());
        assert!(verify(SECRET, &t, NOW + 300 + 5).is_ok());
        assert_eq!(verify(SECRET, &t, NOW + 300 + 6), Err(JwtError::Expired));
        assert_eq!(
            verify(b"secret-b", &t, NOW),
            Err(JwtError::InvalidSignature)
        );
    }

    #[test]
    fn wrong_algorithms_are_refused() {
        let payload = r#"{"sub":"p","role":"r","exp":9999999999,"iat":0}"#;
        for alg in ["HS384", "HS512", "RS256", "ES256", "EdDSA"] {
            let t = raw_token(
                SECRET,
                &format!(r#"{{"typ":"JWT","alg":"{alg}"}}"#),
                payload,
            );
            assert_eq!(
                verify(SECRET, &t, NOW),
                Err(JwtError::InvalidAlgorithm),
                "{alg}"
            );
            assert!(jwt_validate(&t, SECRET).is_err());
        }
        for header in [
            r#"{"typ":"JWT","alg":"none"}"#,
            r#"{"typ":"JWT","alg":"hs256"}"#,
            r#"{"typ":"JWT"}"#,
            r#"{"alg":256}"#,
            r#"{"alg":"HS256","typ":5}"#,
            r#"{"alg":"HS256","alg":"HS256"}"#,
            r#"["HS256"]"#,
        ] {
            let t = raw_token(SECRET, header, payload);
            assert_eq!(
                verify(SECRET, &t, NOW),
                Err(JwtError::Malformed),
                "{header}"
            );
            assert!(jwt_validate(&t, SECRET).is_err(), "{header}");
        }
        // "alg": "none" with an empty signature.
        let t = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(payload));
        assert!(verify(SECRET, &t, NOW).is_err());
        // HS256 header but the HS512 signature of the same message.
        let message = format!("{}.{}", b64(HEADER_JSON), b64(payload));
        let mut mac = Hmac::<sha2::Sha512>::new_from_slice(SECRET).unwrap();
        mac.update(message.as_bytes());
        let t = format!(
            "{message}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(verify(SECRET, &t, NOW), Err(JwtError::InvalidSignature));
    }

    #[test]
    fn forged_tokens_are_refused() {
        let t = issue(SECRET, "agent-001", "agent", NOW);
        let parts: Vec<&str> = t.split('.').collect();
        // Swap in an admin payload, keep the signature.
        let forged_payload = b64(&format!(
            r#"{{"sub":"agent-001","role":"admin","exp":{},"iat":{NOW}}}"#,
            NOW + 300
        ));
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(
            verify(SECRET, &forged, NOW),
            Err(JwtError::InvalidSignature)
        );
        // Flip each signature character.
        for i in 0..parts[2].len() {
            let mut sig = parts[2].as_bytes().to_vec();
            sig[i] = if sig[i] == b'A' { b'B' } else { b'A' };
            let t2 = format!(
                "{}.{}.{}",
                parts[0],
                parts[1],
                String::from_utf8(sig).unwrap()
            );
            assert!(verify(SECRET, &t2, NOW).is_err());
        }
        // Truncated / extended signature, padded signature.
        let sig = parts[2];
        for bad in [
            &sig[..sig.len() - 1],
            &format!("{sig}A")[..],
            &format!("{sig}=")[..],
            "",
        ] {
            let t2 = format!("{}.{}.{}", parts[0], parts[1], bad);
            assert_eq!(verify(SECRET, &t2, NOW), Err(JwtError::InvalidSignature));
        }
        // Non-canonical last base64 character (same decoded bytes under a lax decoder).
        let last = sig.as_bytes()[sig.len() - 1];
        let mut tweaked = sig.as_bytes().to_vec();
        *tweaked.last_mut().unwrap() = last ^ 1;
        let t2 = format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            String::from_utf8(tweaked).unwrap()
        );
        assert!(verify(SECRET, &t2, NOW).is_err());
        assert!(jwt_validate(&t2, SECRET).is_err());
    }

    /// Header and claims nest at most `JSON_DEPTH_MAX` levels: at the bound a token is
    /// valid, one level deeper (or as deep as `TOKEN_BYTES_MAX` allows) it is refused.
    #[test]
    fn nesting_is_bounded() {
        use wire::json::JSON_DEPTH_MAX;
        let nested = |n: usize| "[".repeat(n) + &"]".repeat(n);
        let header = |x: &str| format!(r#"{{"alg":"HS256","typ":"JWT","x":{x}}}"#);
        let claims = |x: &str| {
            format!(
                r#"{{"sub":"a","role":"agent","exp":{},"iat":{NOW},"aud2":{x}}}"#,
                NOW + 60
            )
        };
        let at = nested(JSON_DEPTH_MAX - 1);
        assert!(verify(SECRET, &raw_token(SECRET, &header(&at), &claims("1")), NOW).is_ok());
        assert!(verify(SECRET, &raw_token(SECRET, &header("1"), &claims(&at)), NOW).is_ok());
        // About 6,000 levels fit in a token.
        for depth in [JSON_DEPTH_MAX + 1, 6000] {
            let deep = nested(depth - 1);
            let t = raw_token(SECRET, &header(&deep), &claims("1"));
            assert!(t.len() <= TOKEN_BYTES_MAX);
            assert_eq!(verify(SECRET, &t, NOW), Err(JwtError::Malformed));
            let t = raw_token(SECRET, &header("1"), &claims(&deep));
            assert_eq!(verify(SECRET, &t, NOW), Err(JwtError::InvalidClaims));
        }
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let long = "a".repeat(TOKEN_BYTES_MAX + 1);
        let cases: &[&str] = &[
            "",
            ".",
            "..",
            "...",
            "a.b",
            "a.b.c",
            "a.b.c.d",
            "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9..",
            "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.e30.",
            "\u{0}\u{1}.\u{ff}.\u{10ffff}",
            "€€€.€€€.€€€",
            "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9=.e30.x",
            &long,
        ];
        for c in cases {
            assert!(verify(SECRET, c, NOW).is_err(), "{c:?}");
        }
        assert_eq!(verify(SECRET, &long, NOW), Err(JwtError::Malformed));
        // Pseudo-random byte soup.
        let mut x: u32 = 12345;
        for _ in 0..2000 {
            let len = (x % 80) as usize;
            let s: String = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    b"ab.-_=+/eyJ0{}\"\\ \x00"[(x >> 16) as usize % 18] as char
                })
                .collect();
            assert!(verify(SECRET, &s, NOW).is_err());
        }
    }

    #[test]
    fn claim_shapes_match_jsonwebtoken() {
        let h = HEADER_JSON;
        let ok = |p: &str| {
            let t = raw_token(SECRET, h, p);
            verify(SECRET, &t, NOW).is_ok()
        };
        let far = 9_999_999_999u64;
        // Accepted.
        assert!(ok(&format!(
            r#"{{"sub":"p","role":"r","exp":{far},"iat":0}}"#
        )));
        assert!(ok(&format!(
            r#"{{"iat":0,"exp":{far},"role":"r","sub":"p","x":null}}"#
        )));
        assert!(ok(&format!(
            r#"{{"sub":"p","role":"r","exp":{far},"iat":0,"aud":5}}"#
        )));
        assert!(ok(&format!(
            r#"{{"sub":"p","role":"r","exp":{far},"iat":0,"aud":null}}"#
        )));
        // `nbf`: deliberately stricter than the reference (which ignores it): a token
        // not valid yet is refused beyond the leeway; a past or near `nbf` is fine.
        let with_nbf = |nbf: &str| {
            let p = format!(r#"{{"sub":"p","role":"r","exp":{far},"iat":0,"nbf":{nbf}}}"#);
            verify(SECRET, &raw_token(SECRET, h, &p), NOW)
        };
        assert_eq!(with_nbf(&far.to_string()), Err(JwtError::NotYetValid));
        assert_eq!(with_nbf(&(NOW + 6).to_string()), Err(JwtError::NotYetValid));
        assert_eq!(with_nbf("1e300"), Err(JwtError::NotYetValid));
        assert!(with_nbf(&(NOW + 5).to_string()).is_ok());
        assert!(with_nbf(&NOW.to_string()).is_ok());
        assert!(with_nbf("0").is_ok());
        assert!(with_nbf("-5").is_ok());
        assert!(with_nbf(r#""soon""#).is_ok());
        // Refused: shapes.
        for p in [
            r#"{"sub":"p","role":"r","iat":0}"#.to_string(),
            format!(r#"{{"sub":"p","role":"r","exp":{far}}}"#),
            format!(r#"{{"role":"r","exp":{far},"iat":0}}"#),
            format!(r#"{{"sub":"p","exp":{far},"iat":0}}"#),
            format!(r#"{{"sub":1,"role":"r","exp":{far},"iat":0}}"#),
            format!(r#"{{"sub":"p","role":"r","exp":"{far}","iat":0}}"#),
            format!(r#"{{"sub":"p","role":"r","exp":{far}.0,"iat":0}}"#),
            r#"{"sub":"p","role":"r","exp":-1,"iat":0}"#.to_string(),
            format!(r#"{{"sub":"p","role":"r","exp":{far},"iat":-5}}"#),
            format!(r#"{{"sub":"p","sub":"q","role":"r","exp":{far},"iat":0}}"#),
            format!(r#"{{"sub":"p","role":"r","exp":{far},"iat":0,"iss":1,"iss":2}}"#),
            format!(r#"{{"sub":"p","role":"r","exp":{far},"iat":0}} x"#),
            "[]".to_string(),
            "null".to_string(),
            "".to_string(),
        ] {
            let t = raw_token(SECRET, h, &p);
            assert_eq!(verify(SECRET, &t, NOW), Err(JwtError::InvalidClaims), "{p}");
            assert!(jwt_validate(&t, SECRET).is_err(), "{p}");
        }
        // Refused: audience present.
        for aud in [r#""x""#, r#"["x","y"]"#, "[]"] {
            let p = format!(r#"{{"sub":"p","role":"r","exp":{far},"iat":0,"aud":{aud}}}"#);
            let t = raw_token(SECRET, h, &p);
            assert_eq!(
                verify(SECRET, &t, NOW),
                Err(JwtError::InvalidAudience),
                "{aud}"
            );
            assert!(jwt_validate(&t, SECRET).is_err(), "{aud}");
        }
        // Audience of other shapes is ignored there too.
        let p = format!(r#"{{"sub":"p","role":"r","exp":{far},"iat":0,"aud":[1]}}"#);
        let t = raw_token(SECRET, h, &p);
        assert!(verify(SECRET, &t, NOW).is_ok());
        assert!(jwt_validate(&t, SECRET).is_ok());
    }

    #[test]
    fn empty_and_odd_secrets() {
        for secret in [&b""[..], &[0u8; 200][..], "ünïcödé".as_bytes()] {
            let t = issue(secret, "p", "r", NOW);
            assert!(verify(secret, &t, NOW).is_ok());
            assert!(
                jwt_validate(&issue(secret, "p", "r", get_current_timestamp()), secret).is_ok()
            );
        }
    }
}
