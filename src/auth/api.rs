//! `POST /api/token` and `GET /api/config`.

use crate::auth::ops::{Op, Reply};
use crate::auth::DEVICE_TOKEN_ROLE;
use crate::auth::{exchange_token, header_value_str, TokenExchange, TokenResponse};
use crate::http::{Request, Response};
use crate::ice::ice_config;
use crate::server::common::{ask_owner, Answer};
use crate::server::ShardCtx;

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.header(name)
        .and_then(|v| header_value_str(v.as_bytes()))
}

/// `POST /api/token`: an API key is checked against this shard's copy of the keys; a
/// device token is looked up on `shard_of(token)`. Unknown or missing → 401, empty body.
pub async fn token(ctx: &ShardCtx, req: &Request) -> Answer<Response> {
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
            match ask_owner(ctx, token, Op::Lookup(Box::new(token.to_owned()))).await? {
                Reply::Grant(Some(grant)) => {
                    let resp = TokenResponse::issue(
                        &cfg.jwt_secret,
                        &grant.peer_id,
                        DEVICE_TOKEN_ROLE,
                        now,
                    );
                    Ok(Response::json(200, &resp))
                }
                Reply::Grant(None) => Ok(Response::new(401)),
                _ => Ok(crate::server::common::unexpected()),
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
