//! The failure budget at the edge (issue 20): [`admit`] before a route looks at a
//! secret, [`failed`] when the secret was wrong. The ledger and the hints are
//! `auth::failures` (sans-IO); this module reads the clock and asks the owner shard.
//!
//! The router calls [`admit`] for every route that checks a secret
//! ([`secret_route`]); `/ws` and the dashboard's event stream, which leave the HTTP
//! loop, call it themselves. A refused attempt is answered 429 with `retry-after`
//! before its secret is compared, so the answer says nothing about the secret. A route
//! whose check awaits (`POST /api/token` with a device token, the pairing claim path)
//! holds its attempt in flight with [`admit_held`] until the check is decided.

use std::net::IpAddr;
use std::time::Duration;

use super::failures::{client_addr, Attempt, Budget, Failure, Look, SecretRoute, Verdict};
use super::ops::{Op, Reply};
use crate::http::{Method, Response};
use crate::metrics::ShardCounters;
use crate::server::common::{ask, unexpected};
use crate::server::router::{is_admin_route, Route};
use crate::server::{Msg, ServerConfig, ShardCtx};

/// The shard that keeps `addr`'s failures.
fn owner_of(ctx: &ShardCtx, addr: IpAddr) -> usize {
    match addr {
        IpAddr::V4(a) => ctx.shard.shard_of(a.octets()),
        IpAddr::V6(a) => ctx.shard.shard_of(a.octets()),
    }
}

/// The route family whose secret `req` makes `route` check, if any (`/ws` and the
/// event stream are not HTTP-loop routes: they check on their own). The agent routes
/// check a secret under `--require-agent-auth`, and otherwise when the request carries
/// one (an `X-API-Key` or a bearer token decides which agents it may act as: issue 20,
/// `auth::principal`; an unknown key there counts as a wrong secret,
/// `auth::agent::unknown_key`). Every route that reads an `X-API-Key` is admitted here
/// first: these, `POST /api/token` and `generate-code` (an admin route reads only its
/// bearer token).
pub fn secret_route_of(
    route: Route,
    method: Method,
    config: &ServerConfig,
    req: &crate::http::Request,
) -> Option<SecretRoute> {
    secret_route(route, method, config).or_else(|| {
        let agent_route = matches!(
            (route, method),
            (Route::Agents | Route::Tasks, Method::Post)
                | (Route::Task | Route::TasksAll | Route::Heartbeat, _)
        );
        let carries = req.header("x-api-key").is_some() || req.header("authorization").is_some();
        (agent_route && carries).then_some(SecretRoute::Agent)
    })
}

/// The route family whose secret `route` checks whatever the request carries.
pub fn secret_route(route: Route, method: Method, config: &ServerConfig) -> Option<SecretRoute> {
    match route {
        Route::Token => Some(SecretRoute::Token),
        Route::GenerateCode => Some(SecretRoute::GenerateCode),
        Route::PairingStatus => Some(SecretRoute::PairingStatus),
        Route::DashboardAgents
        | Route::DashboardTasks
        | Route::DashboardSummary
        | Route::DashboardInvite => Some(SecretRoute::Admin),
        r if is_admin_route(r, method) => {
            (!config.insecure_open_admin).then_some(SecretRoute::Admin)
        }
        Route::Agents | Route::Tasks | Route::Task if method == Method::Post => {
            config.require_agent_auth.then_some(SecretRoute::Agent)
        }
        Route::Heartbeat | Route::RouteSkill => {
            config.require_agent_auth.then_some(SecretRoute::Agent)
        }
        _ => None,
    }
}

/// The 429 of a refused attempt.
pub fn too_many(by: Budget, retry_after_secs: u64) -> Response {
    let reason = match by {
        Budget::Address => format!(
            "too many wrong secrets from this address; try again in {retry_after_secs} s \
             (--auth-failures-per-ip-max per --auth-failure-window, then a back-off that \
             doubles up to --auth-backoff-max)"
        ),
        Budget::Total => format!(
            "too many wrong secrets on this server recently; addresses that sent one may \
             try again in {retry_after_secs} s (--auth-failures-total-max)"
        ),
    };
    Response::error(429, reason).with_header("retry-after", retry_after_secs.to_string())
}

/// How often an attempt that waits for another check of its address on this shard
/// ([`InFlight`](super::failures::InFlight)) looks again. Such a check is one message to another shard and back
/// (sub-millisecond): a millisecond keeps the wait short without spinning.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(1);

/// The longest an attempt waits for another check of its address on this shard; then
/// 503. Far above any check's time (one message to another shard and back); reached
/// only if a shard stops answering.
const IN_FLIGHT_WAIT_MAX: Duration = Duration::from_secs(10);

/// Whether `ip` may try a secret on `route` now: `Err` is the answer (429, or 503 when
/// the owner cannot be asked). Costs a message only for an address this shard knows to
/// have failed recently (and it is not its owner). For a check that does not await (an
/// API key, a JWT): the caller checks the secret before it next awaits, so the outcome
/// is counted before any other attempt of the address is admitted here.
pub async fn admit(ctx: &ShardCtx, ip: IpAddr, route: SecretRoute) -> Result<(), Response> {
    admit_inner(ctx, ip, route, false).await.map(drop)
}

/// [`admit`] for a check that awaits (a device token or a claim secret looked up on
/// another shard): the [`Attempt`] counts the check as in flight until it is dropped,
/// which the caller does once the secret was found right or counted wrong; meanwhile
/// other attempts of the address on this shard wait ([`InFlight`](super::failures::InFlight)).
pub async fn admit_held(
    ctx: &ShardCtx,
    ip: IpAddr,
    route: SecretRoute,
) -> Result<Attempt<'_>, Response> {
    admit_inner(ctx, ip, route, true)
        .await
        .map(|a| a.unwrap_or_else(|| Attempt::enter(&ctx.state.auth_in_flight, client_addr(ip))))
}

/// Waits until no check of `addr` is in flight on this shard (at most
/// [`IN_FLIGHT_WAIT_MAX`]).
async fn wait_turn(ctx: &ShardCtx, addr: IpAddr) -> Result<(), Response> {
    let mut waited = Duration::ZERO;
    while ctx.state.auth_in_flight.borrow().count(addr) > 0 {
        if waited >= IN_FLIGHT_WAIT_MAX {
            return Err(Response::error(
                503,
                "another secret check from this address is still running on this shard; \
                 retry",
            ));
        }
        monoio::time::sleep(IN_FLIGHT_POLL).await;
        waited += IN_FLIGHT_POLL;
    }
    Ok(())
}

async fn admit_inner(
    ctx: &ShardCtx,
    ip: IpAddr,
    route: SecretRoute,
    hold: bool,
) -> Result<Option<Attempt<'_>>, Response> {
    let addr = client_addr(ip);
    // One check of an address in flight per shard: the next waits for its outcome.
    wait_turn(ctx, addr).await?;
    let now = ctx.now();
    let owner = owner_of(ctx, addr);
    let mut attempt = None;
    let verdict = if owner == ctx.shard.id() {
        ctx.state.auth_failures.borrow_mut().check(addr, now)
    } else {
        let look = ctx.state.auth_hints.borrow().look(addr, now);
        match look {
            Look::Unknown => Verdict::Allowed {
                recent_until: crate::time::UnixTime::EPOCH,
            },
            Look::Refused { until, by } => Verdict::Refused {
                until,
                recent_until: until,
                by,
            },
            Look::Ask => {
                // In flight while the owner is asked: the address's other attempts here
                // wait, so the owner answers each with the failures before it counted.
                attempt = Some(Attempt::enter(&ctx.state.auth_in_flight, addr));
                let v = match ask(ctx, owner, Op::FailureCheck(Box::new(addr))).await? {
                    Reply::Failures(v) => *v,
                    _ => return Err(unexpected()),
                };
                ctx.state.auth_hints.borrow_mut().note(addr, v, ctx.now());
                v
            }
        }
    };
    match (verdict, verdict.retry_after_secs(now)) {
        (Verdict::Refused { by, .. }, Some(secs)) => {
            ShardCounters::inc(&ctx.counters.auth_refused[route.index()]);
            Err(too_many(by, secs))
        }
        // A check that does not await is decided before this shard runs anything else:
        // its attempt need not stay in flight.
        _ => Ok(attempt.filter(|_| hold)),
    }
}

/// `ip` presented a wrong secret: counted in `/metrics` and on the address's owner
/// (told, not asked: the failure's answer does not wait). If the owner's mailbox is
/// full the failure is not recorded there, but this shard asks the owner before the
/// address's next attempt (and answers 503 if it still cannot).
pub fn failed(ctx: &ShardCtx, ip: IpAddr, failure: Failure) {
    ShardCounters::inc(&ctx.counters.auth_failures[failure.index()]);
    let addr = client_addr(ip);
    let now = ctx.now();
    let owner = owner_of(ctx, addr);
    if owner == ctx.shard.id() {
        ctx.state.auth_failures.borrow_mut().fail(addr, now);
        return;
    }
    ctx.state.auth_hints.borrow_mut().failed(addr, now);
    let msg = Msg::Auth(Op::FailureRecord(Box::new(addr)));
    if ctx.shard.try_tell(owner, msg).is_err() {
        tracing::debug!(owner, "failure not recorded: the owner's mailbox is full");
    }
}
