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

use super::admin::{bearer_token, ADMIN_ROLE};
use super::jwt::{self, Claims};
use super::principal::Principal;
use crate::http::{Request, Response};
use crate::time::UnixTime;

/// The caller's verified claims: 401 without a usable, valid bearer token.
pub fn authenticate(req: &Request, secret: &[u8], now: UnixTime) -> Result<Claims, Response> {
    let Some(header) = req.header("authorization") else {
        return Err(Response::error(
            401,
            "agent token required (--require-agent-auth): Authorization: Bearer <token from /api/token>",
        ));
    };
    let token = bearer_token(header.as_bytes())
        .ok_or_else(|| Response::error(401, "Authorization header must be Bearer <token>"))?;
    jwt::verify(secret, token, now.as_secs())
        .map_err(|e| Response::error(401, format!("invalid token: {e}")))
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
/// none).
pub fn principal(
    ctx: &crate::server::ShardCtx,
    req: &Request,
    peer: std::net::IpAddr,
    agent_id: Option<&str>,
) -> Result<Principal, Response> {
    let address = crate::limits::client_key(peer);
    match gate(ctx, req, agent_id)? {
        Some(c) => Ok(Principal::credential(c.sub, &c.role, address)),
        None => super::principal::resolve(
            req,
            &ctx.config.api_keys,
            &ctx.config.jwt_secret,
            ctx.now(),
            address,
        ),
    }
}

/// The route's gate under `--require-agent-auth`: `Ok(None)` when the flag is off,
/// else the caller's claims, checked to act as `agent_id` when one is given.
pub fn gate(
    ctx: &crate::server::ShardCtx,
    req: &Request,
    agent_id: Option<&str>,
) -> Result<Option<Claims>, Response> {
    if !ctx.config.require_agent_auth {
        return Ok(None);
    }
    let claims = authenticate(req, &ctx.config.jwt_secret, ctx.now())?;
    if let Some(id) = agent_id {
        require_self(&claims, id)?;
    }
    Ok(Some(claims))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            authenticate(&req(None), SECRET, now).unwrap_err().status,
            401
        );
        assert_eq!(
            authenticate(&req(Some("Bearer nope")), SECRET, now)
                .unwrap_err()
                .status,
            401
        );
        let t = jwt::issue(SECRET, "agent-a", "agent", NOW_SECS);
        let c = authenticate(&req(Some(&format!("Bearer {t}"))), SECRET, now).unwrap();
        assert!(require_self(&c, "agent-a").is_ok());
        assert_eq!(require_self(&c, "agent-b").unwrap_err().status, 403);
        let admin = jwt::issue(SECRET, "ops", ADMIN_ROLE, NOW_SECS);
        let c = authenticate(&req(Some(&format!("Bearer {admin}"))), SECRET, now).unwrap();
        assert!(require_self(&c, "agent-b").is_ok());
    }
}
