//! `POST /api/token` and `GET /api/config`, and the peer authorization query the
//! signaling WebSocket uses.

use crate::auth::DEVICE_TOKEN_ROLE;
use crate::auth::{exchange_token, header_value_str, TokenExchange, TokenResponse};
use crate::http::{Request, Response};
use crate::ice::ice_config;
use crate::server::api_common::{ask_owner, unexpected, Reply};
use crate::server::{Msg, ShardCtx};

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.header(name)
        .and_then(|v| header_value_str(v.as_bytes()))
}

/// `POST /api/token`: an API key is checked against this shard's copy of the keys; a
/// device token is looked up on `shard_of(token)`. Unknown or missing → 401, empty body.
pub async fn token(ctx: &ShardCtx, req: &Request) -> Reply<Response> {
    let now = ctx.now();
    let cfg = &ctx.config;
    let exchange = exchange_token(
        &cfg.api_keys,
        &cfg.jwt_secret,
        header(req, "x-api-key"),
        header(req, "x-device-token"),
        now,
    );
    match exchange {
        TokenExchange::Issued(resp) => Ok(Response::json(200, &resp)),
        TokenExchange::Unauthorized => Ok(Response::new(401)),
        TokenExchange::LookupDeviceToken(token) => {
            match ask_owner(ctx, token, Msg::TokenLookup(token.into())).await? {
                Msg::Grant(Some(grant)) => {
                    let resp = TokenResponse::issue(
                        &cfg.jwt_secret,
                        &grant.peer_id,
                        DEVICE_TOKEN_ROLE,
                        now,
                    );
                    Ok(Response::json(200, &resp))
                }
                Msg::Grant(None) => Ok(Response::new(401)),
                _ => Ok(unexpected()),
            }
        }
    }
}

/// `GET /api/config`.
pub fn ice(ctx: &ShardCtx) -> Response {
    let cfg = &ctx.config;
    let turn = cfg
        .turn
        .as_ref()
        .map(|(url, secret)| (url.as_str(), secret.as_slice()));
    Response::json(200, &ice_config(&cfg.stun_urls, turn, ctx.now()))
}

/// Whether `peer_id` is authorized to see the mesh: the peer of an API key (known to
/// every shard from its copy of the keys), or of an approved, unrevoked pairing entry
/// (registered on `shard_of(peer_id)`). For the signaling WebSocket.
pub async fn is_authorized(ctx: &ShardCtx, peer_id: &str) -> Reply<bool> {
    if ctx.config.api_keys.has_peer_id(peer_id) {
        return Ok(true);
    }
    match ask_owner(ctx, peer_id, Msg::PeerIsAuthorized(peer_id.into())).await? {
        Msg::Bool(b) => Ok(b),
        _ => Err(unexpected()),
    }
}
