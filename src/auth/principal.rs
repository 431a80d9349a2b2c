//! The credential of a request on the agent and task routes (issue 20, finding 2): what
//! [`resolve`] reads from its headers, the API keys, the JWT secret and `now`, as a
//! [`Principal`] (`limits::principal`, where the binding rules are).
//!
//! * An unknown `X-API-Key` counts as no credential, and as a wrong secret against the
//!   address's failure budget (`auth::agent::principal`: a key decides what a request
//!   may act as, so trying one is trying a secret); a present but invalid bearer token
//!   is 401 (only clients that mean to authenticate send one).

use super::admin::bearer_token;
use super::{header_value_str, ApiKeys, Presented};
use crate::limits::principal::Principal;
use crate::shard::Error;
use crate::time::UnixTime;

/// A bearer token [`resolve`] refused: the 401 to answer, and whether the token was
/// forged (not made with our key: counted against the address's failure budget).
#[derive(Debug)]
pub struct Refused {
    pub error: Error,
    pub forged: bool,
}

/// The principal of a request that `presented` these headers from `address` (a client
/// key) in the default configuration:
/// a valid bearer JWT (with `leeway_secs` of clock skew; verified through the shard's
/// `tokens`), else a known `X-API-Key`, else
/// none. A bearer token that does not verify is 401; an `Authorization` header of
/// another scheme and an unknown API key are ignored here (the route counts an unknown
/// key as a wrong secret: see `auth::agent::principal`).
pub fn resolve(
    presented: Presented<'_>,
    keys: &ApiKeys,
    tokens: &mut super::verified::VerifiedTokens,
    secret: &[u8],
    now: UnixTime,
    leeway_secs: u64,
    address: String,
) -> Result<Principal, Refused> {
    if let Some(token) = presented
        .authorization
        .and_then(|h| bearer_token(h.as_bytes()))
    {
        let claims = tokens
            .verify(secret, token, now.as_secs(), leeway_secs)
            .map_err(|e| Refused {
                error: Error::unauthorized(format!("invalid token: {e}")),
                forged: e.is_forgery(),
            })?;
        return Ok(Principal::credential(claims.sub, &claims.role, address));
    }
    let key = presented
        .api_key
        .and_then(|v| header_value_str(v.as_bytes()));
    Ok(match key.and_then(|k| keys.lookup(k)) {
        Some(entry) => Principal::credential(entry.peer_id.clone(), &entry.role, address),
        None => Principal::anonymous(address),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwt;

    const SECRET: &[u8] = b"s";
    const NOW_SECS: u64 = 1_795_239_689;

    fn req<'a>(headers: &[(&str, &'a str)]) -> Presented<'a> {
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        };
        Presented {
            authorization: find("authorization"),
            api_key: find("x-api-key"),
        }
    }

    fn keys() -> ApiKeys {
        ApiKeys::parse(
            br#"{"keys":{"ak_a":{"peer_id":"alpha-sidecar","role":"agent"},
                         "ak_ops":{"peer_id":"ops","role":"admin"}}}"#,
        )
        .unwrap()
    }

    fn resolve_with(headers: &[(&str, &str)]) -> Result<Principal, Error> {
        resolve(
            req(headers),
            &keys(),
            &mut crate::auth::verified::VerifiedTokens::new(),
            SECRET,
            UnixTime::from_secs(NOW_SECS),
            5,
            "10.0.0.1".into(),
        )
        .map_err(|r| r.error)
    }

    #[test]
    fn credentials_and_their_absence() {
        assert_eq!(resolve_with(&[]).unwrap(), Principal::anonymous("10.0.0.1"));
        // An unknown key is no credential (the PyPI agent's ak_dev_001 fallback).
        assert_eq!(
            resolve_with(&[("X-API-Key", "ak_dev_001")]).unwrap(),
            Principal::anonymous("10.0.0.1")
        );
        let p = resolve_with(&[("X-API-Key", "ak_a")]).unwrap();
        assert_eq!(p.peer.as_deref(), Some("alpha-sidecar"));
        assert!(!p.admin);
        assert!(resolve_with(&[("X-API-Key", "ak_ops")]).unwrap().admin);
        // A valid bearer JWT wins over a key; an invalid one is 401; another scheme is
        // ignored.
        let t = jwt::issue(SECRET, "beta", "agent", NOW_SECS);
        let p = resolve_with(&[
            ("Authorization", &format!("Bearer {t}")),
            ("X-API-Key", "ak_a"),
        ])
        .unwrap();
        assert_eq!(p.peer.as_deref(), Some("beta"));
        let bad = jwt::issue(b"other", "beta", "agent", NOW_SECS);
        let e = resolve_with(&[("Authorization", &format!("Bearer {bad}"))]).unwrap_err();
        assert_eq!(e.kind, crate::shard::Kind::Unauthorized);
        assert_eq!(
            resolve_with(&[("Authorization", "Basic dXNlcjpwdw==")]).unwrap(),
            Principal::anonymous("10.0.0.1")
        );
    }
}
