//! Agent pairing: invite code → pending entry → admin approval → device token.
//!
//! Sharded, sans-IO stores; each shard holds one of each for the keys it owns:
//!
//! * [`CodeStore`]: invite code → issuer, keyed by the code (12 base32 symbols, or six
//!   digits with `--pair-code-format digits6`);
//! * [`PairingStore`]: entry id → [`Entry`], keyed by the 8-hex-digit id;
//! * [`RateLimiter`]: client IP → recent `pair` attempts, and [`budget::AddressBudget`]:
//!   client key (IPv4 address, IPv6 /64) → wrong codes in 24 h, both on
//!   `shard_of(client key)`.
//!
//! An approved entry's device token is indexed by auth (`auth::DeviceTokenIndex`, on the
//! shard owning the token) and its peer authorized by signaling (`signaling::PeerAuthz`,
//! on `shard_of(peer_id)`): pairing asks their typed operations; neither imports pairing.
//!
//! Values that pick the owning shard (codes, ids, tokens) are drawn by the caller *before*
//! routing ([`Code::random`], [`EntryId::random`], [`new_device_token`]), so no store needs
//! to know about other shards.
//!
//! The workflows ([`api`]) are generic over the shard layer and tested on the simulator
//! (`server/sim/pairing.rs`).
//!
//! `POST /api/pairing/pair`, in the reference's order:
//! 1. the body must deserialize as [`PairRequest`] (the HTTP layer's job; failures there
//!    are answered before any check below and do not count against the rate limit; see
//!    `wire::json::parse_body`);
//! 2. [`RateLimiter::check_and_count`] for the client IP: `false` → 429
//!    [`PairError::RateLimited`]. Every attempt that gets past this counts, whether it then
//!    succeeds or fails; refused (429) attempts do not count;
//! 3. [`PairRequest::validate`]: code format (400), then trimmed agent name (400). These do
//!    not consume the code;
//! 4. the client key's daily budget of wrong codes ([`budget::AddressBudget::reserve`],
//!    checked in the same message as step 2): spent → 429; a right code is refunded;
//! 5. [`CodeStore::redeem`] on the code's shard (six-digit codes first pass the
//!    [`guard::GuessGuard`]): `None` → 401 [`PairError::InvalidCode`];
//! 6. [`PairingStore::create`] on the new id's shard, inheriting the issuer's mesh →
//!    200 [`PairResponse`].

pub mod api;
pub mod budget;
pub mod cluster;
pub mod codes;
pub mod directory;
pub mod entries;
pub mod guard;
pub mod ops;
pub mod paged;
pub mod ratelimit;
pub mod records;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::shard::paging::PageLimits;
use crate::shard::{Error, Kind};
use chatixia_store::Secrets;

pub use codes::{daily_guess_odds, Code, CodeFormat, CodeInsertError, CodeStore, Issuer};
pub use entries::{
    new_device_token, new_peer_id, CreateError, Entry, EntryId, PairingStore, Status,
};
pub use guard::GuardLimits;
pub use ops::Store;
pub use ratelimit::RateLimiter;

/// What pairing's workflows are held to (immutable after start).
#[derive(Clone, Debug)]
pub struct Config {
    /// The guessing guard, the daily budget of wrong codes, the per-key code quota and
    /// the format of new codes (`--pair-*`).
    pub guard: GuardLimits,
    /// How long rejected and revoked entries are kept after their last change
    /// (`--pairing-retention`).
    pub retention: Duration,
    /// Keys derived from the server secret (issue 10): claim secrets and device tokens
    /// are kept as keyed hashes, a device token sealed until used.
    pub secrets: Secrets,
    /// List pages of `GET /api/pairing/pending|all`.
    pub pages: PageLimits,
}

impl Default for Config {
    /// The defaults, with the secrets of the development secret.
    fn default() -> Self {
        Config {
            guard: GuardLimits::default(),
            retention: DEFAULT_RETENTION,
            secrets: Secrets::derive(crate::auth::DEFAULT_SECRET.as_bytes()),
            pages: PageLimits::default(),
        }
    }
}

/// Lifetime of an invite code.
pub const CODE_TTL_SECS: u64 = 300;
/// How long a rejected or revoked entry is kept after its last change (`--pairing-retention`,
/// issue 22): then it leaves memory and the store, so a shard full of final entries frees
/// itself.
pub const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);
/// Rate-limit window for `POST /api/pairing/pair`.
pub const RATE_LIMIT_WINDOW_SECS: u64 = 60;
/// Attempts allowed per client IP per window.
pub const RATE_LIMIT_MAX_ATTEMPTS: usize = 5;

/// Longest accepted `agent_name` after trimming, in bytes.
///
/// Entries are kept for the life of the process, so the name is capped; longer names are
/// refused with 400 [`PairError::AgentNameTooLong`] (the reference has no cap; this only
/// matters for absurd names).
pub const AGENT_NAME_BYTES_MAX: usize = 1024;

/// Randomness supplied by the caller (the server passes `getrandom`; tests pass a
/// deterministic generator). Any `FnMut(&mut [u8])` is an `Rng`.
pub trait Rng {
    /// Fill `buf` with random bytes.
    fn fill_bytes(&mut self, buf: &mut [u8]);
}

impl<F: FnMut(&mut [u8])> Rng for F {
    fn fill_bytes(&mut self, buf: &mut [u8]) {
        self(buf)
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// `POST /api/pairing/pair` body. Both fields are required strings; others are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PairRequest {
    /// The invite code as typed.
    pub code: String,
    /// The agent's display name.
    pub agent_name: String,
}

impl wire::json::JsonBody for PairRequest {
    const REQUIRED_FIELDS: &'static [&'static str] = &["code", "agent_name"];
}

/// The pieces of a [`PairRequest`] that passed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidPair<'a> {
    /// The parsed code.
    pub code: Code,
    /// The agent name, trimmed.
    pub agent_name: &'a str,
}

impl PairRequest {
    /// Step 3 of the pair flow: code format first, then the trimmed agent name.
    pub fn validate(&self) -> Result<ValidPair<'_>, PairError> {
        let code = Code::parse(&self.code).ok_or(PairError::BadCodeFormat)?;
        let agent_name = self.agent_name.trim();
        if agent_name.is_empty() {
            return Err(PairError::AgentNameRequired);
        }
        if agent_name.len() > AGENT_NAME_BYTES_MAX {
            return Err(PairError::AgentNameTooLong);
        }
        Ok(ValidPair { code, agent_name })
    }
}

/// Why `POST /api/pairing/pair` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairError {
    /// 429: more than [`RATE_LIMIT_MAX_ATTEMPTS`] attempts in the window.
    RateLimited,
    /// 400: the code is neither six digits nor twelve base32 symbols.
    BadCodeFormat,
    /// 400: the agent name is empty after trimming.
    AgentNameRequired,
    /// 400: the agent name is longer than [`AGENT_NAME_BYTES_MAX`] (not in the reference).
    AgentNameTooLong,
    /// 401: no such code, already used, or expired.
    InvalidCode,
    /// 503: the pairing store is at its limit (not in the reference, which is unbounded).
    StoreFull,
}

impl PairError {
    /// What kind of refusal it is (the router answers 429, 400, 401 or 503).
    pub fn kind(self) -> Kind {
        match self {
            PairError::RateLimited => Kind::TooMany,
            PairError::BadCodeFormat | PairError::AgentNameRequired => Kind::BadRequest,
            PairError::AgentNameTooLong => Kind::BadRequest,
            PairError::InvalidCode => Kind::Unauthorized,
            PairError::StoreFull => Kind::Unavailable,
        }
    }

    /// The reason the client reads (`{"error": …}`).
    pub fn message(self) -> &'static str {
        match self {
            PairError::RateLimited => "too many pairing attempts, try again later",
            PairError::BadCodeFormat => {
                "code must be 12 characters of Crockford base32 like K7QM-3XPA-9T2D \
                 (dashes and spaces ignored), or 6 digits"
            }
            PairError::AgentNameRequired => "agent_name is required",
            PairError::AgentNameTooLong => "agent_name is too long",
            PairError::InvalidCode => "invalid or expired pairing code",
            PairError::StoreFull => "too many pairing requests, try again later",
        }
    }
}

impl From<PairError> for Error {
    fn from(e: PairError) -> Error {
        Error::new(e.kind(), e.message())
    }
}

/// Why approve / reject / revoke failed: 404 in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionError {
    /// approve / reject of an id that is unknown or not `pending_approval`.
    NotFoundOrNotPending,
    /// revoke of an id that is unknown or not `approved`.
    NotFoundOrNotApproved,
}

impl ActionError {
    /// The reason the client reads (`{"error": …}`, with 404).
    pub fn message(self) -> &'static str {
        match self {
            ActionError::NotFoundOrNotPending => "not found or not pending",
            ActionError::NotFoundOrNotApproved => "not found or not approved",
        }
    }
}

impl From<ActionError> for Error {
    fn from(e: ActionError) -> Error {
        Error::not_found(e.message())
    }
}

/// `{"status":"ok"}`, the body of a successful reject or revoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OkBody {
    /// Always `"ok"`.
    pub status: &'static str,
}

impl OkBody {
    /// The one value.
    pub const OK: OkBody = OkBody { status: "ok" };
}

/// `POST /api/pairing/generate-code` → `{"code":"K7QM-3XPA-9T2D","expires_in":300}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GenerateCodeResponse {
    /// The code (serialized as its display string).
    pub code: Code,
    /// Seconds until it expires ([`CODE_TTL_SECS`]).
    pub expires_in: u64,
}

impl GenerateCodeResponse {
    /// The response for a freshly stored `code`.
    pub fn new(code: Code) -> GenerateCodeResponse {
        GenerateCodeResponse {
            code,
            expires_in: CODE_TTL_SECS,
        }
    }
}

/// `POST /api/pairing/pair` → `{"id","peer_id","status"}` (sorted key order, as the
/// reference's `json!` body serializes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PairResponse {
    /// Entry id.
    pub id: EntryId,
    /// Assigned peer id.
    pub peer_id: String,
    /// `pending_approval`.
    pub status: Status,
}

/// `POST /api/pairing/{id}/approve` → `{"device_token","id","peer_id","status"}` (sorted
/// key order, as the reference's `json!` body serializes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApproveResponse {
    /// `dt_` + 32 hex.
    pub device_token: String,
    /// Entry id.
    pub id: EntryId,
    /// The agent's peer id.
    pub peer_id: String,
    /// `approved`.
    pub status: Status,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(code: &str, name: &str) -> PairRequest {
        PairRequest {
            code: code.into(),
            agent_name: name.into(),
        }
    }

    #[test]
    fn validation_order_and_messages() {
        // Code format is checked before the name.
        assert_eq!(req("12345", "").validate(), Err(PairError::BadCodeFormat));
        assert_eq!(
            req("1234567", "a").validate(),
            Err(PairError::BadCodeFormat)
        );
        assert_eq!(req("12a456", "a").validate(), Err(PairError::BadCodeFormat));
        assert_eq!(
            req("12 3456", "a").validate().map(|v| v.code),
            Ok(Code::from_u32(123_456))
        );
        assert_eq!(
            req(" k7qm-3xpa 9t2d", "a").validate().map(|v| v.code),
            Code::parse("K7QM-3XPA-9T2D").ok_or(PairError::BadCodeFormat)
        );
        assert_eq!(
            req("K7QM-3XPA-9T2", "a").validate(),
            Err(PairError::BadCodeFormat)
        );
        assert_eq!(
            req("12345６", "a").validate(),
            Err(PairError::BadCodeFormat)
        );
        assert_eq!(req("", "a").validate(), Err(PairError::BadCodeFormat));
        assert_eq!(
            req("123456", "").validate(),
            Err(PairError::AgentNameRequired)
        );
        assert_eq!(
            req("123456", " \t\n\u{3000}").validate(),
            Err(PairError::AgentNameRequired)
        );
        let long = "x".repeat(AGENT_NAME_BYTES_MAX + 1);
        assert_eq!(
            req("123456", &long).validate(),
            Err(PairError::AgentNameTooLong)
        );
        let at_limit = format!("  {}  ", "x".repeat(AGENT_NAME_BYTES_MAX));
        assert!(req("123456", &at_limit).validate().is_ok());
        let r = req("012345", "  my agent ");
        let v = r.validate().unwrap();
        assert_eq!(v.code.to_string(), "012345");
        assert_eq!(v.agent_name, "my agent");
    }

    #[test]
    fn errors_and_their_reasons() {
        let cases = [
            (
                PairError::RateLimited,
                Kind::TooMany,
                "too many pairing attempts, try again later",
            ),
            (
                PairError::BadCodeFormat,
                Kind::BadRequest,
                "code must be 12 characters of Crockford base32 like K7QM-3XPA-9T2D \
                 (dashes and spaces ignored), or 6 digits",
            ),
            (
                PairError::AgentNameRequired,
                Kind::BadRequest,
                "agent_name is required",
            ),
            (
                PairError::InvalidCode,
                Kind::Unauthorized,
                "invalid or expired pairing code",
            ),
            (
                PairError::StoreFull,
                Kind::Unavailable,
                "too many pairing requests, try again later",
            ),
        ];
        for (e, kind, msg) in cases {
            assert_eq!(Error::from(e), Error::new(kind, msg));
        }
        assert_eq!(
            Error::from(ActionError::NotFoundOrNotPending),
            Error::not_found("not found or not pending")
        );
        assert_eq!(
            Error::from(ActionError::NotFoundOrNotApproved),
            Error::not_found("not found or not approved")
        );
        assert_eq!(
            serde_json::to_string(&OkBody::OK).unwrap(),
            r#"{"status":"ok"}"#
        );
    }

    #[test]
    fn response_bodies() {
        let code = Code::parse("004200").unwrap();
        assert_eq!(
            serde_json::to_string(&GenerateCodeResponse::new(code)).unwrap(),
            r#"{"code":"004200","expires_in":300}"#
        );
        let id = EntryId::parse("0badc0de").unwrap();
        assert_eq!(
            serde_json::to_string(&PairResponse {
                id,
                peer_id: "agent-a1b2c3".into(),
                status: Status::PendingApproval,
            })
            .unwrap(),
            r#"{"id":"0badc0de","peer_id":"agent-a1b2c3","status":"pending_approval"}"#
        );
        assert_eq!(
            serde_json::to_string(&ApproveResponse {
                device_token: "dt_00".into(),
                id,
                peer_id: "agent-a1b2c3".into(),
                status: Status::Approved,
            })
            .unwrap(),
            r#"{"device_token":"dt_00","id":"0badc0de","peer_id":"agent-a1b2c3","status":"approved"}"#
        );
    }

    #[test]
    fn request_json() {
        assert_eq!(
            wire::json::parse_body::<PairRequest>(br#"{"code":"123456","agent_name":"a","x":1}"#),
            Ok(req("123456", "a"))
        );
        for (body, status) in [
            (&br#"{"code":"123456"}"#[..], 422),
            (br#"{"code":123456,"agent_name":"a"}"#, 422),
            (br#"[]"#, 422),
            (br#"{"code":"1""#, 400),
            (b"", 400),
            (br#"{"code":"123456","agent_name":"a"} x"#, 400),
        ] {
            let err = wire::json::parse_body::<PairRequest>(body).unwrap_err();
            assert_eq!(err.status(), status, "{}", String::from_utf8_lossy(body));
        }
    }

    /// One single-shard run of the whole flow, in the reference's order.
    #[test]
    fn end_to_end_flow() {
        use crate::auth::{self, ApiKeys, TokenExchange, DEVICE_TOKEN_ROLE};
        use crate::time::UnixTime;
        use std::net::{IpAddr, Ipv4Addr};

        let t0 = UnixTime(1_795_239_689_000_000_000);
        let secret = b"dev-secret-change-me";
        let keys = ApiKeys::parse(
            br#"{"keys":{"ak_blue":{"peer_id":"hub-blue","role":"admin","mesh":"blue"}}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut rng = move |buf: &mut [u8]| {
            for b in buf {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
        };
        let mut codes = CodeStore::new();
        let mut entries = PairingStore::new();
        let mut index = crate::auth::DeviceTokenIndex::new();
        let mut limiter = RateLimiter::new();
        let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

        // generate-code with a known API key.
        let key = keys.lookup("ak_blue").unwrap();
        let issuer = Issuer {
            peer_id: key.peer_id.clone(),
            mesh: key.mesh.clone(),
        };
        let code = codes
            .generate(&mut rng, CodeFormat::Long, issuer, t0)
            .unwrap();
        let body = serde_json::to_string(&GenerateCodeResponse::new(code)).unwrap();
        assert_eq!(body, format!(r#"{{"code":"{code}","expires_in":300}}"#));

        // The pair handler, as the server will run it.
        let mut pair = |body: &str, now: UnixTime| -> Result<PairResponse, PairError> {
            let req = wire::json::parse_body::<PairRequest>(body.as_bytes()).unwrap();
            if !limiter.check_and_count(client, now) {
                return Err(PairError::RateLimited);
            }
            let valid = req.validate()?;
            let invited = codes
                .redeem(valid.code, now)
                .ok_or(PairError::InvalidCode)?;
            entries
                .create_random(&mut rng, valid.agent_name, invited, now)
                .map(Entry::pair_response)
                .map_err(|_| PairError::StoreFull)
        };

        // Failures before the code check do not burn the code, but do count.
        let good = format!(r#"{{"code":"{code}","agent_name":"  bot  "}}"#);
        let blank = format!(r#"{{"code":"{code}","agent_name":" "}}"#);
        assert_eq!(pair(&blank, t0), Err(PairError::AgentNameRequired));
        assert_eq!(
            pair(r#"{"code":"12","agent_name":"x"}"#, t0),
            Err(PairError::BadCodeFormat)
        );
        let resp = pair(&good, t0).unwrap();
        assert_eq!(resp.status, Status::PendingApproval);
        // Single use.
        assert_eq!(pair(&good, t0), Err(PairError::InvalidCode));
        // Five attempts counted (two invalid, one success, one reused code) + this one.
        assert_eq!(pair(&good, t0), Err(PairError::InvalidCode));
        assert_eq!(pair(&good, t0), Err(PairError::RateLimited));

        // Admin approves; the token goes into the index.
        let id = resp.id.to_string();
        let e = entries.approve(&id, &mut rng, t0).unwrap();
        assert_eq!(e.agent_name, "bot");
        assert_eq!(e.mesh.as_deref(), Some("blue"));
        let approved = e.approve_response();
        let grant = e.device_grant().unwrap();
        index.insert(e.device_token.clone(), grant).unwrap();

        // The agent exchanges its device token for a JWT.
        let token = approved.device_token.as_str();
        let now = t0.saturating_add_secs(10);
        let lookup = match auth::exchange_token(&keys, secret, None, Some(token), now) {
            TokenExchange::LookupDeviceToken(t) => t,
            other => panic!("{other:?}"),
        };
        let grant = index.lookup(lookup).unwrap();
        let resp = auth::TokenResponse::issue(secret, &grant.peer_id, DEVICE_TOKEN_ROLE, now);
        let claims = auth::verify(secret, &resp.token, now.as_secs()).unwrap();
        assert_eq!(claims.sub, approved.peer_id);
        assert_eq!(claims.role, "agent");

        // Revoke: the token stops working.
        let e = entries.revoke(&id, now).unwrap();
        assert!(index.remove(&e.device_token).is_some());
        assert!(index.lookup(token).is_none());
    }

    #[test]
    fn closures_are_rngs() {
        let mut n = 0u8;
        let mut rng = |buf: &mut [u8]| {
            for b in buf {
                n = n.wrapping_add(1);
                *b = n;
            }
        };
        let mut buf = [0u8; 3];
        rng.fill_bytes(&mut buf);
        assert_eq!(buf, [1, 2, 3]);
        assert_eq!(hex_lower(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
