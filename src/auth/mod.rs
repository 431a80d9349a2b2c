//! Authentication: API keys and device tokens exchanged for short-lived HS256 JWTs.
//!
//! `POST /api/token` flow, as in the reference: an `X-API-Key` that names a known key wins;
//! otherwise (header absent, not visible ASCII, or unknown key) an `X-Device-Token` is
//! tried; with neither usable the answer is 401 with an empty body. [`exchange_token`] does
//! the API-key half on any shard (each holds [`ApiKeys`]); the device-token half needs the
//! [`DeviceTokenIndex`] shard that owns the token, after which [`TokenResponse::issue`]
//! builds the reply with role [`DEVICE_TOKEN_ROLE`] (`api::token`).
//!
//! Auth imports no other service: pairing asks auth's typed operations
//! ([`ops::Op::Insert`], [`ops::Op::Remove`]) to index and drop device tokens, and
//! `api::token` hands the pairing entry id of a used device token back to its caller
//! (the router), which tells pairing ([`api::Issued`]).
//!
//! Workflows are generic over the shard layer (`crate::shard`); the failure budget's
//! ledger, hints and counters are state each shard keeps ([`budget::Budgeted`]).

pub mod admin;
pub mod agent;
pub mod api;
pub mod budget;
pub mod failures;
pub mod jwt;
pub mod keys;
pub mod ops;
pub mod principal;
pub mod tokens;
pub mod verified;

use serde::Serialize;

use crate::time::UnixTime;
use chatixia_store::Secrets;

pub use jwt::{issue, verify, Claims, JwtError};
pub use keys::{ApiKeyEntry, ApiKeys, ApiKeysError};
pub use tokens::{DeviceGrant, DeviceTokenIndex, IndexInsertError};

/// What auth's workflows are held to and check with (immutable after start).
#[derive(Clone, Debug)]
pub struct Config {
    /// The API keys, parsed once before the shards start.
    pub api_keys: ApiKeys,
    /// JWT signing secret (`SIGNALING_SECRET`).
    pub jwt_secret: Vec<u8>,
    /// Clock skew allowed on a JWT's `exp`, `nbf` and `iat` (`--jwt-leeway-secs`).
    pub jwt_leeway_secs: u64,
    /// Keys derived from `jwt_secret` (issue 10): a presented device token is looked up
    /// by its keyed hash.
    pub secrets: Secrets,
    /// The failure budgets of the routes that check a secret (`failures`), server-wide:
    /// each shard enforces its share of the total.
    pub failures: failures::FailureLimits,
    /// `--require-agent-auth`: agent routes need the agent's JWT (`agent`).
    pub require_agent_auth: bool,
    /// `--insecure-open-admin`: the operator routes need no admin token (the
    /// reference's open admin plane), and task reads withhold nothing.
    pub insecure_open_admin: bool,
}

impl Config {
    /// These keys and this secret (its derived keys with it), the other settings at
    /// their defaults.
    pub fn new(api_keys: ApiKeys, jwt_secret: Vec<u8>) -> Config {
        Config {
            secrets: Secrets::derive(&jwt_secret),
            api_keys,
            jwt_secret,
            jwt_leeway_secs: jwt::LEEWAY_SECS_DEFAULT,
            failures: failures::FailureLimits::default(),
            require_agent_auth: false,
            insecure_open_admin: false,
        }
    }
}

impl Default for Config {
    /// The reference's defaults: the development key and secret.
    fn default() -> Self {
        Config::new(ApiKeys::dev_default(), DEFAULT_SECRET.as_bytes().to_vec())
    }
}

/// The credentials a request presents, as its header values (the router reads them;
/// `None`: absent): `Authorization` and `X-API-Key`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Presented<'a> {
    pub authorization: Option<&'a str>,
    pub api_key: Option<&'a str>,
}

/// Signing secret when `SIGNALING_SECRET` is unset.
pub const DEFAULT_SECRET: &str = "dev-secret-change-me";

/// Role of every token issued for a device token (the reference hard-codes it).
pub const DEVICE_TOKEN_ROLE: &str = "agent";

/// Body of a successful `POST /api/token`.
///
/// Field order is the reference's wire order: it builds the body with `json!`, and
/// serde_json without `preserve_order` (the reference's build) sorts object keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenResponse {
    /// Peer id the token is for (`sub`).
    pub peer_id: String,
    /// Role in the token.
    pub role: String,
    /// The JWT.
    pub token: String,
}

impl TokenResponse {
    /// Issue a token for `peer_id`/`role` at `now` and wrap it in the response body.
    pub fn issue(secret: &[u8], peer_id: &str, role: &str, now: UnixTime) -> TokenResponse {
        TokenResponse {
            peer_id: peer_id.to_owned(),
            role: role.to_owned(),
            token: jwt::issue(secret, peer_id, role, now.as_secs()),
        }
    }
}

/// Outcome of the API-key half of `POST /api/token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenExchange<'a> {
    /// The API key is known: reply 200 with this body.
    Issued(TokenResponse),
    /// No usable API key, but a device token was sent: look it up in the
    /// `DeviceTokenIndex` that owns it; found → 200 with
    /// `TokenResponse::issue(secret, &grant.peer_id, DEVICE_TOKEN_ROLE, now)`, else 401.
    LookupDeviceToken(&'a str),
    /// 401, empty body.
    Unauthorized,
}

/// Decide `POST /api/token` as far as the API keys allow.
///
/// `api_key` and `device_token` are the `X-API-Key` / `X-Device-Token` header values as
/// text (see [`header_value_str`]); `None` when absent or not text.
pub fn exchange_token<'a>(
    keys: &ApiKeys,
    secret: &[u8],
    api_key: Option<&str>,
    device_token: Option<&'a str>,
    now: UnixTime,
) -> TokenExchange<'a> {
    if let Some(entry) = api_key.and_then(|k| keys.lookup(k)) {
        return TokenExchange::Issued(TokenResponse::issue(
            secret,
            &entry.peer_id,
            &entry.role,
            now,
        ));
    }
    match device_token {
        Some(token) => TokenExchange::LookupDeviceToken(token),
        None => TokenExchange::Unauthorized,
    }
}

/// A header value as text the way the reference reads it (`HeaderValue::to_str`): every
/// byte must be visible ASCII (0x20..=0x7E) or a tab; otherwise the header counts as
/// absent. No trimming is done here (the HTTP parser already strips surrounding
/// whitespace).
pub fn header_value_str(value: &[u8]) -> Option<&str> {
    // Every byte looked at (no early exit), so the loop is vectorised: a bearer token
    // is checked on every request.
    let visible = value.iter().fold(true, |ok, &b| {
        ok & ((b == b'\t') | (0x20..0x7f).contains(&b))
    });
    if visible {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixTime = UnixTime(1_795_239_689_500_000_000);

    #[test]
    fn api_key_wins() {
        let keys = ApiKeys::dev_default();
        let got = exchange_token(&keys, b"s", Some("ak_dev_001"), Some("dt_x"), NOW);
        let TokenExchange::Issued(resp) = got else {
            panic!("expected Issued, got {got:?}");
        };
        assert_eq!(resp.peer_id, "agent-001");
        assert_eq!(resp.role, "agent");
        let claims = verify(b"s", &resp.token, NOW.as_secs()).unwrap();
        assert_eq!(claims.sub, "agent-001");
        assert_eq!(claims.iat, 1_795_239_689);
        assert_eq!(claims.exp, 1_795_239_989);
    }

    #[test]
    fn unknown_api_key_falls_back_to_device_token() {
        let keys = ApiKeys::dev_default();
        assert_eq!(
            exchange_token(&keys, b"s", Some("nope"), Some("dt_abc"), NOW),
            TokenExchange::LookupDeviceToken("dt_abc")
        );
        assert_eq!(
            exchange_token(&keys, b"s", None, Some("dt_abc"), NOW),
            TokenExchange::LookupDeviceToken("dt_abc")
        );
        assert_eq!(
            exchange_token(&keys, b"s", Some("nope"), None, NOW),
            TokenExchange::Unauthorized
        );
        assert_eq!(
            exchange_token(&keys, b"s", None, None, NOW),
            TokenExchange::Unauthorized
        );
        assert_eq!(
            exchange_token(&keys, b"s", Some(""), None, NOW),
            TokenExchange::Unauthorized
        );
    }

    #[test]
    fn response_json_order() {
        let r = TokenResponse {
            peer_id: "agent-001".into(),
            role: "agent".into(),
            token: "t".into(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"peer_id":"agent-001","role":"agent","token":"t"}"#
        );
    }

    #[test]
    fn header_values() {
        assert_eq!(header_value_str(b"ak_dev_001"), Some("ak_dev_001"));
        assert_eq!(header_value_str(b""), Some(""));
        assert_eq!(header_value_str(b"a b\tc~"), Some("a b\tc~"));
        assert_eq!(header_value_str(b"caf\xc3\xa9"), None);
        assert_eq!(header_value_str(b"a\x7f"), None);
        assert_eq!(header_value_str(b"a\x00"), None);
        assert_eq!(header_value_str(b"a\r\n"), None);
    }
}
