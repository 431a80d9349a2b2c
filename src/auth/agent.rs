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
use super::failures::Failure;
use super::jwt::Claims;
use super::keys::DEV_API_KEY;
use super::principal::Principal;
use crate::http::{Request, Response};
use crate::time::UnixTime;

/// The 401 for a refused agent token.
fn unauthorized(u: Unauthorized) -> Response {
    match u {
        Unauthorized::Missing => Response::error(
            401,
            "agent token required (--require-agent-auth): Authorization: Bearer <token from /api/token>",
        ),
        Unauthorized::NotBearer => {
            Response::error(401, "Authorization header must be Bearer <token>")
        }
        Unauthorized::Token(e) => Response::error(401, format!("invalid token: {e}")),
    }
}

/// The caller's verified claims: 401 without a usable, valid bearer token.
pub fn authenticate(
    req: &Request,
    secret: &[u8],
    now: UnixTime,
    leeway_secs: u64,
) -> Result<Claims, Unauthorized> {
    let header = req.header("authorization").map(str::as_bytes);
    bearer_claims(header, secret, now, leeway_secs)
}

/// Whether the token's subject may act as `agent_id`: itself, or any agent for an admin.
pub fn may_act_as(claims: &Claims, agent_id: &str) -> bool {
    claims.sub == agent_id || claims.role == ADMIN_ROLE
}

/// 403 unless [`may_act_as`].
pub fn require_self(claims: &Claims, agent_id: &str) -> Result<(), Response> {
    if may_act_as(claims, agent_id) {
        return Ok(());
    }
    Err(Response::error(
        403,
        format!(
            "token is for `{}`, not for agent `{agent_id}`: an agent may only act as itself",
            claims.sub
        ),
    ))
}

/// The caller of an agent or task route from `peer` (issue 20): under
/// `--require-agent-auth` the bearer JWT's claims (401 without one, 403 when not for
/// `agent_id`); otherwise [`super::principal::resolve`] (a JWT, a known API key, or
/// none). A forged bearer token counts against `peer`'s failure budget, and so does an
/// `X-API-Key` that is no known key, whatever the route answers then ([`unknown_key`]).
pub fn principal(
    ctx: &crate::server::ShardCtx,
    req: &Request,
    peer: IpAddr,
    agent_id: Option<&str>,
) -> Result<Principal, Response> {
    let address = crate::limits::client_key(peer);
    let cfg = &ctx.config;
    match gate(ctx, req, peer, agent_id)? {
        Some(c) => Ok(Principal::credential(c.sub, &c.role, address)),
        None => super::principal::resolve(
            req,
            &cfg.api_keys,
            &cfg.jwt_secret,
            ctx.now(),
            cfg.jwt_leeway_secs,
            address,
        )
        .inspect(|by| unknown_key(ctx, req, by, peer))
        .map_err(|r| {
            if r.forged {
                super::budget::failed(ctx, peer, Failure::Agent);
            }
            r.response
        }),
    }
}

/// Counts `req`'s `X-API-Key` as a wrong secret against `peer`'s failure budget when it
/// is no known key: `by` (what `req` resolved to) has no credential although a key was
/// sent. A key decides which agents a request may act as and which tasks it may read,
/// so every answer to a request with a guessed key (200 or 403 at a binding, a task
/// charged as anonymous or not in `/metrics`, a task withheld or not) tells whether the
/// guess was a key; counting it up front, before any of that, holds guessing to the
/// budget (the router admitted the request first: `budget::secret_route_of`). A request
/// without a key, and a known key (for any agent), are never counted; nor is the public
/// development key `ak_dev_001` ([`DEV_API_KEY`]) where it is not configured: the
/// unmodified PyPI agent sends it on every request when it has no key of its own, and
/// trying a key everyone knows guesses nothing. Any other key a client sends without
/// having it counts, also an agent's misconfigured one (a server without that key
/// cannot give its sidecar a JWT either).
pub fn unknown_key(ctx: &crate::server::ShardCtx, req: &Request, by: &Principal, peer: IpAddr) {
    let sent = req.header("x-api-key");
    if by.peer.is_none() && sent.is_some_and(|k| k != DEV_API_KEY) {
        super::budget::failed(ctx, peer, Failure::AgentApiKey);
    }
}

/// The route's gate under `--require-agent-auth`: `Ok(None)` when the flag is off,
/// else the caller's claims, checked to act as `agent_id` when one is given. A token
/// that is not ours counts against `peer`'s failure budget (the router has checked the
/// budget before the route ran).
pub fn gate(
    ctx: &crate::server::ShardCtx,
    req: &Request,
    peer: IpAddr,
    agent_id: Option<&str>,
) -> Result<Option<Claims>, Response> {
    if !ctx.config.require_agent_auth {
        return Ok(None);
    }
    let cfg = &ctx.config;
    let claims =
        authenticate(req, &cfg.jwt_secret, ctx.now(), cfg.jwt_leeway_secs).map_err(|u| {
            if u.is_forgery() {
                super::budget::failed(ctx, peer, Failure::Agent);
            }
            unauthorized(u)
        })?;
    if let Some(id) = agent_id {
        require_self(&claims, id)?;
    }
    Ok(Some(claims))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwt;

    const SECRET: &[u8] = b"s";
    const NOW_SECS: u64 = 1_795_239_689;

    fn req(auth: Option<&str>) -> Request {
        let mut raw = String::from("POST /api/hub/heartbeat HTTP/1.1\r\nHost: x\r\n");
        if let Some(a) = auth {
            raw.push_str(&format!("Authorization: {a}\r\n"));
        }
        raw.push_str("\r\n");
        let mut p = crate::http::Parser::new(crate::http::Limits::default());
        p.feed(raw.as_bytes());
        match p.poll() {
            Some(crate::http::Event::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tokens_and_self() {
        let now = UnixTime::from_secs(NOW_SECS);
        let auth = |h: Option<&str>| authenticate(&req(h), SECRET, now, 5);
        assert_eq!(auth(None), Err(Unauthorized::Missing));
        assert_eq!(unauthorized(auth(None).unwrap_err()).status, 401);
        assert!(!auth(None).unwrap_err().is_forgery());
        assert!(auth(Some("Bearer nope")).unwrap_err().is_forgery());
        let t = jwt::issue(SECRET, "agent-a", "agent", NOW_SECS);
        let c = auth(Some(&format!("Bearer {t}"))).unwrap();
        assert!(require_self(&c, "agent-a").is_ok());
        assert_eq!(require_self(&c, "agent-b").unwrap_err().status, 403);
        let admin = jwt::issue(SECRET, "ops", ADMIN_ROLE, NOW_SECS);
        let c = auth(Some(&format!("Bearer {admin}"))).unwrap();
        assert!(require_self(&c, "agent-b").is_ok());
    }
}
