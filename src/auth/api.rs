//! `POST /api/token` and `GET /api/config`.

use std::net::IpAddr;

use crate::auth::budget::failed;
use crate::auth::failures::Failure;
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
/// An unknown key or token counts against `client`'s failure budget (a missing one does
/// not), which the router checked before. An `X-API-Key` that is no known key counts
/// even when the request also carries a device token that then succeeds: otherwise a
/// device's holder could guess API keys outside the budget (the answer's `peer_id` and
/// `role` say whether the guess was a key).
pub async fn token(ctx: &ShardCtx, req: &Request, client: IpAddr) -> Answer<Response> {
    let now = ctx.now();
    let cfg = &ctx.config;
    let api_key = header(req, "x-api-key");
    if req.header("x-api-key").is_some() && api_key.and_then(|k| cfg.api_keys.lookup(k)).is_none() {
        failed(ctx, client, Failure::TokenApiKey);
    }
    let exchange = exchange_token(
        &cfg.api_keys,
        &cfg.jwt_secret,
        api_key,
        header(req, "x-device-token"),
        now,
    );
    match exchange {
        TokenExchange::Issued(resp) => Ok(Response::json(200, &resp)),
        // An unknown key was counted above.
        TokenExchange::Unauthorized => Ok(Response::new(401)),
        TokenExchange::LookupDeviceToken(token) => {
            // The index is keyed by the token's keyed hash (what the store keeps).
            let key = crate::durable::token_key_of(&cfg.secrets, token);
            match ask_owner(ctx, &key, Op::Lookup(Box::new(key.clone()))).await? {
                Reply::Grant(Some(grant)) => {
                    crate::pairing::api::token_used(ctx, grant.entry_id).await;
                    let resp = TokenResponse::issue(
                        &cfg.jwt_secret,
                        &grant.peer_id,
                        DEVICE_TOKEN_ROLE,
                        now,
                    );
                    Ok(Response::json(200, &resp))
                }
                Reply::Grant(None) => {
                    failed(ctx, client, Failure::TokenDeviceToken);
                    Ok(Response::new(401))
                }
                _ => Ok(crate::server::common::unexpected()),
            }
        }
    }
}

/// `GET /api/config` (with the embedded TURN server's entry for a caller with a
/// credential, `crate::turn::ice_entry`).
pub fn ice(ctx: &ShardCtx, req: &Request) -> Response {
    let cfg = &ctx.config;
    let turn = cfg
        .turn
        .as_ref()
        .map(|(url, secret)| (url.as_str(), secret.as_slice()));
    let mut body = ice_config(&cfg.stun_urls, turn, ctx.now());
    body.ice_servers.extend(crate::turn::ice_entry(ctx, req));
    Response::json(200, &body)
}
