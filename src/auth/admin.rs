//! Admin authentication for the operator routes (issue 10).
//!
//! `GET /api/pairing/pending`, `GET /api/pairing/all`, `POST /api/pairing/{id}/approve`,
//! `/reject`, `/revoke`, `DELETE /api/registry/agents/{id}` and any new operator route
//! require `Authorization: Bearer <JWT>` whose `role` is [`ADMIN_ROLE`]:
//!
//! * no header, not `Bearer <token>`, or a token [`jwt::verify`] refuses (malformed,
//!   expired, wrongly signed, …) → **401**;
//! * a valid token whose role is not `admin` → **403**;
//!
//! both answered with a JSON `{"error": …}` body ([`AdminAuthError::message`]; the
//! router maps the [`Error`] to HTTP).
//! [`authorize_admin`] is pure (the caller passes the header value, the JWT secret and
//! `now`); [`authorize`] is the workflow the routes call: it also counts a token that is
//! not ours against the caller's failure budget.

use std::net::IpAddr;

use super::budget::{failed, Budgeted};
use super::failures::Failure;
use super::jwt::{self, Claims, JwtError};
use super::ops::{Op, Reply};
use super::Config;
use crate::shard::{Error, Request};
use crate::time::UnixTime;

/// The role an API key entry must carry for its JWTs to pass [`authorize_admin`].
pub use crate::limits::ADMIN_ROLE;

/// Why an `Authorization` header did not yield a usable token (all 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthorized {
    /// No `Authorization` header.
    Missing,
    /// The header is not `Bearer <token>` in visible ASCII.
    NotBearer,
    /// The JWT was refused.
    Token(JwtError),
}

impl Unauthorized {
    /// Whether a token was offered that is not ours ([`JwtError::is_forgery`]): a
    /// failure for the failure budget. A missing header is not a guess.
    pub fn is_forgery(self) -> bool {
        matches!(self, Unauthorized::Token(e) if e.is_forgery())
    }
}

/// Why an admin route is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAuthError {
    /// 401: no usable, valid token.
    Unauthorized(Unauthorized),
    /// 403: a valid token for a peer whose role is not `admin`.
    Forbidden {
        /// The token's subject.
        peer_id: String,
        /// The token's role.
        role: String,
    },
}

impl AdminAuthError {
    /// Whether it counts against the failure budget ([`Unauthorized::is_forgery`]).
    pub fn is_forgery(&self) -> bool {
        matches!(self, AdminAuthError::Unauthorized(u) if u.is_forgery())
    }

    /// The reason the client reads (`{"error": …}`, with 401 or 403: [`Error::from`]).
    pub fn message(&self) -> String {
        match self {
            AdminAuthError::Unauthorized(Unauthorized::Missing) => {
                "admin token required: Authorization: Bearer <token>".to_owned()
            }
            AdminAuthError::Unauthorized(Unauthorized::NotBearer) => {
                "Authorization header must be Bearer <token>".to_owned()
            }
            AdminAuthError::Unauthorized(Unauthorized::Token(e)) => format!("invalid token: {e}"),
            AdminAuthError::Forbidden { role, .. } => {
                format!("admin role required (token role: {role})")
            }
        }
    }
}

impl From<AdminAuthError> for Error {
    fn from(e: AdminAuthError) -> Error {
        match e {
            AdminAuthError::Unauthorized(_) => Error::unauthorized(e.message()),
            AdminAuthError::Forbidden { .. } => Error::forbidden(e.message()),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value: the scheme is matched without
/// regard to case (RFC 9110 §11.1), separated by spaces from a non-empty token; the value
/// must be visible ASCII (the reference's `HeaderValue::to_str`).
pub fn bearer_token(authorization: &[u8]) -> Option<&str> {
    let value = super::header_value_str(authorization)?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

/// The claims of an `Authorization: Bearer <JWT>` value (`None` when the header is
/// absent), as `verify` finds them: `jwt::verify_leeway`, or a shard's cache of it
/// (`auth::verified`).
pub fn bearer_claims(
    authorization: Option<&[u8]>,
    verify: impl FnOnce(&str) -> Result<Claims, jwt::JwtError>,
) -> Result<Claims, Unauthorized> {
    let header = authorization.ok_or(Unauthorized::Missing)?;
    let token = bearer_token(header).ok_or(Unauthorized::NotBearer)?;
    verify(token).map_err(Unauthorized::Token)
}

/// Decides an admin route: `authorization` is the raw `Authorization` header value
/// (`None` when absent), `secret` the JWT signing secret, `leeway_secs` the clock skew
/// allowed (`--jwt-leeway-secs`).
pub fn authorize_admin(
    authorization: Option<&[u8]>,
    secret: &[u8],
    now: UnixTime,
    leeway_secs: u64,
) -> Result<Claims, AdminAuthError> {
    let verify = |t: &str| jwt::verify_leeway(secret, t, now.as_secs(), leeway_secs);
    let claims = bearer_claims(authorization, verify).map_err(AdminAuthError::Unauthorized)?;
    if claims.role != ADMIN_ROLE {
        return Err(AdminAuthError::Forbidden {
            peer_id: claims.sub,
            role: claims.role,
        });
    }
    Ok(claims)
}

/// The admin check of an operator route from `client`, whose `Authorization` header
/// is `authorization`: the admin's claims, or 401/403 (a token that is not ours counts
/// against `client`'s failure budget, which the caller checked before).
pub async fn authorize<S: Budgeted>(
    sh: &S,
    cfg: &Config,
    authorization: Option<&str>,
    client: IpAddr,
) -> Result<Claims, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let header = authorization.map(str::as_bytes);
    match authorize_admin(header, &cfg.jwt_secret, sh.now(), cfg.jwt_leeway_secs) {
        Ok(c) => Ok(c),
        Err(e) => {
            if e.is_forgery() {
                failed(sh, client, Failure::Admin).await;
            }
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";
    const NOW_SECS: u64 = 1_795_239_689;
    const NOW: UnixTime = UnixTime(NOW_SECS * 1_000_000_000);
    const L: u64 = jwt::LEEWAY_SECS_DEFAULT;

    fn bearer(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    #[test]
    fn admin_token_passes() {
        let t = jwt::issue(SECRET, "ops-1", "admin", NOW_SECS);
        let claims = authorize_admin(Some(&bearer(&t)), SECRET, NOW, L).unwrap();
        assert_eq!(claims.sub, "ops-1");
        assert_eq!(claims.role, "admin");
        // Scheme case and extra spaces do not matter.
        for h in [
            format!("bearer {t}"),
            format!("BEARER   {t}"),
            format!(" Bearer {t} "),
        ] {
            assert!(
                authorize_admin(Some(h.as_bytes()), SECRET, NOW, L).is_ok(),
                "{h}"
            );
        }
        // Still valid through the leeway, refused after.
        let later = |s: u64| UnixTime((NOW_SECS + s) * 1_000_000_000);
        assert!(authorize_admin(Some(&bearer(&t)), SECRET, later(305), L).is_ok());
        assert!(authorize_admin(Some(&bearer(&t)), SECRET, later(360), 60).is_ok());
        assert_eq!(
            authorize_admin(Some(&bearer(&t)), SECRET, later(306), L),
            Err(AdminAuthError::Unauthorized(Unauthorized::Token(
                JwtError::Expired
            )))
        );
    }

    #[test]
    fn agent_token_is_forbidden() {
        let t = jwt::issue(SECRET, "agent-001", "agent", NOW_SECS);
        let err = authorize_admin(Some(&bearer(&t)), SECRET, NOW, L).unwrap_err();
        assert_eq!(
            err,
            AdminAuthError::Forbidden {
                peer_id: "agent-001".into(),
                role: "agent".into()
            }
        );
        assert_eq!(
            Error::from(err),
            Error::forbidden("admin role required (token role: agent)")
        );
        // Role match is exact.
        for role in ["Admin", "admin ", "", "administrator"] {
            let t = jwt::issue(SECRET, "p", role, NOW_SECS);
            assert_eq!(
                Error::from(authorize_admin(Some(&bearer(&t)), SECRET, NOW, L).unwrap_err()).kind,
                crate::shard::Kind::Forbidden,
                "{role:?}"
            );
        }
    }

    #[test]
    fn missing_malformed_and_forged_are_unauthorized() {
        let admin = jwt::issue(SECRET, "ops-1", "admin", NOW_SECS);
        let other_secret = jwt::issue(b"other", "ops-1", "admin", NOW_SECS);
        let cases: Vec<(Option<Vec<u8>>, AdminAuthError)> = vec![
            (None, AdminAuthError::Unauthorized(Unauthorized::Missing)),
            (
                Some(b"".to_vec()),
                AdminAuthError::Unauthorized(Unauthorized::NotBearer),
            ),
            (
                Some(b"Bearer".to_vec()),
                AdminAuthError::Unauthorized(Unauthorized::NotBearer),
            ),
            (
                Some(b"Bearer ".to_vec()),
                AdminAuthError::Unauthorized(Unauthorized::NotBearer),
            ),
            (
                Some(format!("Basic {admin}").into_bytes()),
                AdminAuthError::Unauthorized(Unauthorized::NotBearer),
            ),
            (
                Some(admin.clone().into_bytes()),
                AdminAuthError::Unauthorized(Unauthorized::NotBearer),
            ),
            (
                Some(format!("Bearer {admin} extra").into_bytes()),
                AdminAuthError::Unauthorized(Unauthorized::NotBearer),
            ),
            (
                Some(format!("Bearer {admin}\u{e9}").into_bytes()),
                AdminAuthError::Unauthorized(Unauthorized::NotBearer),
            ),
            (
                Some(bearer("not.a.jwt")),
                AdminAuthError::Unauthorized(Unauthorized::Token(JwtError::Malformed)),
            ),
            (
                Some(bearer(&other_secret)),
                AdminAuthError::Unauthorized(Unauthorized::Token(JwtError::InvalidSignature)),
            ),
            (
                Some(bearer(&"a".repeat(jwt::TOKEN_BYTES_MAX + 1))),
                AdminAuthError::Unauthorized(Unauthorized::Token(JwtError::Malformed)),
            ),
        ];
        for (header, want) in cases {
            let got = authorize_admin(header.as_deref(), SECRET, NOW, L).unwrap_err();
            assert_eq!(
                got,
                want,
                "{:?}",
                header.as_deref().map(String::from_utf8_lossy)
            );
            let e = Error::from(got);
            assert_eq!(e.kind, crate::shard::Kind::Unauthorized);
            assert!(e.message.is_some_and(|s| !s.is_empty()));
        }
        // An expired admin token.
        let old = jwt::issue(SECRET, "ops-1", "admin", NOW_SECS - 1000);
        assert_eq!(
            Error::from(authorize_admin(Some(&bearer(&old)), SECRET, NOW, L).unwrap_err()),
            Error::unauthorized("invalid token: expired signature")
        );
    }
}
