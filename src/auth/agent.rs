//! `--require-agent-auth` (opt-in, the strict mode): agent routes need the agent's
//! bearer JWT (from `POST /api/token`) and an agent may only act as itself.
//!
//! Routes: `POST /api/registry/agents` and `POST /api/hub/heartbeat` (body `agent_id`
//! must be the token's subject), `POST /api/hub/tasks` (a non-empty
//! `source_agent_id` must be the subject), `POST /api/hub/tasks/{id}` (the task must be
//! assigned to the subject), `GET /api/registry/route` (any valid token). A token with
//! the `admin` role may act for any agent. No usable token: 401; a valid token for
//! another agent: 403; each with a JSON `{"error": …}` body.
//!
//! Off by default: the PyPI `chatixia` agent (0.4.3) sends its sidecar's `X-API-Key` on
//! register, heartbeat and its task results, but no bearer token, and nothing at all when
//! it submits or polls a delegated task. Without the flag the default rules of
//! [`super::principal`] apply instead: an agent is bound to the credential or address
//! that registered it ([`principal`]).

use std::net::IpAddr;

use super::admin::{bearer_claims, Unauthorized, ADMIN_ROLE};
use super::budget::{failed, Budgeted};
use super::failures::Failure;
use super::jwt::Claims;
use super::keys::DEV_API_KEY;
use super::ops::{Op, Reply};
use super::verified::VerifiedTokens;
use super::{Config, Presented};
use crate::limits::Principal;
use crate::shard::Owns;
use crate::shard::{Error, Request};
use crate::time::UnixTime;
use std::cell::RefCell;

/// The 401 for a refused agent token.
fn unauthorized(u: Unauthorized) -> Error {
    match u {
        Unauthorized::Missing => Error::unauthorized(
            "agent token required (--require-agent-auth): Authorization: Bearer <token from /api/token>",
        ),
        Unauthorized::NotBearer => Error::unauthorized("Authorization header must be Bearer <token>"),
        Unauthorized::Token(e) => Error::unauthorized(format!("invalid token: {e}")),
    }
}

/// The caller's verified claims from its `Authorization` header: 401 without a usable,
/// valid bearer token.
pub fn authenticate(
    authorization: Option<&str>,
    tokens: &mut VerifiedTokens,
    secret: &[u8],
    now: UnixTime,
    leeway_secs: u64,
) -> Result<Claims, Unauthorized> {
    bearer_claims(authorization.map(str::as_bytes), |t| {
        tokens.verify(secret, t, now.as_secs(), leeway_secs)
    })
}

/// The shard's verified tokens (`auth::verified`).
fn tokens<S: Budgeted>(sh: &S) -> &RefCell<VerifiedTokens> {
    Owns::<RefCell<VerifiedTokens>>::owned(sh)
}

/// Whether the token's subject may act as `agent_id`: itself, or any agent for an admin.
pub fn may_act_as(claims: &Claims, agent_id: &str) -> bool {
    claims.sub == agent_id || claims.role == ADMIN_ROLE
}

/// 403 unless [`may_act_as`].
pub fn require_self(claims: &Claims, agent_id: &str) -> Result<(), Error> {
    if may_act_as(claims, agent_id) {
        return Ok(());
    }
    Err(Error::forbidden(format!(
        "token is for `{}`, not for agent `{agent_id}`: an agent may only act as itself",
        claims.sub
    )))
}

/// The caller of an agent or task route from `peer` (issue 20): under
/// `--require-agent-auth` the bearer JWT's claims (401 without one, 403 when not for
/// `agent_id`); otherwise [`super::principal::resolve`] (a JWT, a known API key, or
/// none). A forged bearer token counts against `peer`'s failure budget, and so does an
/// `X-API-Key` that is no known key, whatever the route answers then ([`unknown_key`]).
pub async fn principal<S: Budgeted>(
    sh: &S,
    cfg: &Config,
    presented: Presented<'_>,
    peer: IpAddr,
    agent_id: Option<&str>,
) -> Result<Principal, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let address = crate::limits::client_key(peer);
    match gate(sh, cfg, presented.authorization, peer, agent_id).await? {
        Some(c) => Ok(Principal::credential(c.sub, &c.role, address)),
        None => resolve_counted(sh, cfg, presented, peer, address).await,
    }
}

/// The reader of a task route (reads need no token, also under
/// `--require-agent-auth`): [`super::principal::resolve`], or under
/// `--insecure-open-admin` (the reference hub's operator view, whose admin plane is open
/// to anyone) an admin. An unknown `X-API-Key` decides what a read withholds as surely
/// as a wrong one at `/api/token`, so it counts against `peer`'s failure budget
/// ([`unknown_key`]), as does a forged bearer token.
pub async fn reader<S: Budgeted>(
    sh: &S,
    cfg: &Config,
    presented: Presented<'_>,
    peer: IpAddr,
) -> Result<Principal, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    let address = crate::limits::client_key(peer);
    if cfg.insecure_open_admin {
        return Ok(Principal {
            admin: true,
            ..Principal::anonymous(address)
        });
    }
    resolve_counted(sh, cfg, presented, peer, address).await
}

/// [`super::principal::resolve`] with the shard's verified tokens, counting a forged
/// bearer token or an unknown `X-API-Key` against `peer`'s failure budget.
async fn resolve_counted<S: Budgeted>(
    sh: &S,
    cfg: &Config,
    presented: Presented<'_>,
    peer: IpAddr,
    address: String,
) -> Result<Principal, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    // The cache is borrowed for the call only: never across an await.
    let resolved = super::principal::resolve(
        presented,
        &cfg.api_keys,
        &mut tokens(sh).borrow_mut(),
        &cfg.jwt_secret,
        sh.now(),
        cfg.jwt_leeway_secs,
        address,
    );
    match resolved {
        Ok(by) => {
            unknown_key(sh, presented, &by, peer).await;
            Ok(by)
        }
        Err(r) => {
            if r.forged {
                failed(sh, peer, Failure::Agent).await;
            }
            Err(r.error)
        }
    }
}

/// Counts the request's `X-API-Key` as a wrong secret against `peer`'s failure budget
/// when it is no known key: `by` (what the request resolved to) has no credential
/// although a key was sent. A key decides which agents a request may act as and which
/// tasks it may read, so every answer to a request with a guessed key (200 or 403 at a
/// binding, a task charged as anonymous or not in `/metrics`, a task withheld or not)
/// tells whether the guess was a key; counting it up front, before any of that, holds
/// guessing to the budget (the router admitted the request first:
/// `server::router::secret_route_of`). A request without a key, and a known key (for
/// any agent), are never counted; nor is the public development key `ak_dev_001`
/// ([`DEV_API_KEY`]) where it is not configured: the unmodified PyPI agent sends it on
/// every request when it has no key of its own, and trying a key everyone knows
/// guesses nothing. Any other key a client sends without having it counts, also an
/// agent's misconfigured one (a server without that key cannot give its sidecar a JWT
/// either).
pub async fn unknown_key<S: Budgeted>(
    sh: &S,
    presented: Presented<'_>,
    by: &Principal,
    peer: IpAddr,
) where
    Op: Request<S::Msg, Reply = Reply>,
{
    if by.peer.is_none() && presented.api_key.is_some_and(|k| k != DEV_API_KEY) {
        failed(sh, peer, Failure::AgentApiKey).await;
    }
}

/// The route's gate under `--require-agent-auth`: `Ok(None)` when the flag is off,
/// else the caller's claims from its `Authorization` header, checked to act as
/// `agent_id` when one is given. A token that is not ours counts against `peer`'s
/// failure budget (the router has checked the budget before the route ran).
pub async fn gate<S: Budgeted>(
    sh: &S,
    cfg: &Config,
    authorization: Option<&str>,
    peer: IpAddr,
    agent_id: Option<&str>,
) -> Result<Option<Claims>, Error>
where
    Op: Request<S::Msg, Reply = Reply>,
{
    if !cfg.require_agent_auth {
        return Ok(None);
    }
    // The cache is borrowed for the call only: never across an await.
    let verified = authenticate(
        authorization,
        &mut tokens(sh).borrow_mut(),
        &cfg.jwt_secret,
        sh.now(),
        cfg.jwt_leeway_secs,
    );
    let claims = match verified {
        Ok(c) => c,
        Err(u) => {
            if u.is_forgery() {
                failed(sh, peer, Failure::Agent).await;
            }
            return Err(unauthorized(u));
        }
    };
    if let Some(id) = agent_id {
        require_self(&claims, id)?;
    }
    Ok(Some(claims))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwt;
    use crate::shard::Kind;

    const SECRET: &[u8] = b"s";
    const NOW_SECS: u64 = 1_795_239_689;

    #[test]
    fn tokens_and_self() {
        let now = UnixTime::from_secs(NOW_SECS);
        let auth = |h: Option<&str>| {
            authenticate(
                h,
                &mut crate::auth::verified::VerifiedTokens::new(),
                SECRET,
                now,
                5,
            )
        };
        assert_eq!(auth(None), Err(Unauthorized::Missing));
        assert_eq!(
            unauthorized(auth(None).unwrap_err()).kind,
            Kind::Unauthorized
        );
        assert!(!auth(None).unwrap_err().is_forgery());
        assert!(auth(Some("Bearer nope")).unwrap_err().is_forgery());
        let t = jwt::issue(SECRET, "agent-a", "agent", NOW_SECS);
        let c = auth(Some(&format!("Bearer {t}"))).unwrap();
        assert!(require_self(&c, "agent-a").is_ok());
        assert_eq!(
            require_self(&c, "agent-b").unwrap_err().kind,
            Kind::Forbidden
        );
        let admin = jwt::issue(SECRET, "ops", ADMIN_ROLE, NOW_SECS);
        let c = auth(Some(&format!("Bearer {admin}"))).unwrap();
        assert!(require_self(&c, "agent-b").is_ok());
    }
}
