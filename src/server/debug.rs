//! `POST /debug/clock` (only with `--test-clock`): moves every shard's clock forward and
//! runs every shard's periodic jobs once, so tests drive health, expiry and rate-limit
//! windows without sleeping. The server's own route (it asks every shard about itself,
//! not a service), on the shard layer ([`crate::shard::ask_all`]).

use serde::Deserialize;

use super::common::{json_body, Answer};
use super::msg::{ShardOp, ShardReply};
use super::ShardCtx;
use crate::http::{Request, Response};
use wire::json::JsonBody;

#[derive(Deserialize)]
struct Advance {
    advance_secs: f64,
}

impl JsonBody for Advance {
    const REQUIRED_FIELDS: &'static [&'static str] = &["advance_secs"];
}

/// Largest step accepted: a century.
const ADVANCE_SECS_MAX: f64 = 100.0 * 365.0 * 86_400.0;

pub async fn clock(ctx: &ShardCtx, req: &Request) -> Answer<Response> {
    let adv: Advance = json_body(req)?;
    if !(adv.advance_secs.is_finite() && (0.0..=ADVANCE_SECS_MAX).contains(&adv.advance_secs)) {
        return Ok(Response::error(
            422,
            "advance_secs must be a number of seconds between 0 and 3153600000",
        ));
    }
    let step = (adv.advance_secs * 1e9) as u64;
    let offset = ctx.clock_offset().saturating_add(step);
    let replies = crate::shard::ask_all(ctx, |_| ShardOp::SetClock(offset)).await;
    for r in replies.map_err(Response::from)? {
        if !matches!(r, ShardReply::ClockSet) {
            tracing::error!("unexpected reply to SetClock");
            return Ok(Response::error(500, "internal error"));
        }
    }
    Ok(Response::json(
        200,
        &serde_json::json!({"status": "ok", "now": ctx.now().as_secs_f64()}),
    ))
}
