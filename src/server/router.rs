//! Routing: path and method → a service's handler. Every route is here, `/ws` too (it
//! takes the connection out of the HTTP loop: [`route_ws`]). Handlers that need other
//! shards' state ask them over the mailboxes; everything else is answered locally.

use std::net::SocketAddr;
use std::rc::Rc;

use super::forward;
use crate::auth::failures::{Failure, SecretRoute};
use crate::http::{Method, Request, Response};
use crate::server::msg::{ShardOp, ShardReply};
use crate::server::respond::respond;
use crate::server::{backup, debug, Msg, ServerConfig, ShardCtx};
use crate::tls::Transport;
use crate::{auth, dashboard, hub, pairing, registry};

/// The signaling WebSocket's path: its request leaves the HTTP loop with the connection.
pub const WS_PATH: &str = "/ws";

/// The echo WebSocket's path (`--ws-echo`, for conformance suites such as Autobahn):
/// the same upgrade, connection loop, codec and limits as [`WS_PATH`], no token.
pub const WS_ECHO_PATH: &str = "/ws-echo";

/// Whether `req` is a WebSocket upgrade route's (handled by [`route_ws`], not
/// [`handle`]): `/ws`, and `/ws-echo` when enabled (otherwise it is a 404).
pub fn is_ws(req: &Request, config: &ServerConfig) -> bool {
    req.path == WS_PATH || (config.ws_echo && req.path == WS_ECHO_PATH)
}

/// Whether `req` is the dashboard's event stream (a `GET` that takes the connection out
/// of the HTTP loop: [`super::events::event_stream`]).
pub fn is_event_stream(req: &Request) -> bool {
    req.path == super::events::EVENTS_PATH && req.method == Method::Get
}

/// Whether `req` is a streamed response that takes the connection out of the HTTP loop
/// (the dashboard's event stream, a backup) and is answered by [`stream_route`].
pub fn takes_connection(req: &Request) -> bool {
    is_event_stream(req) || (req.path == backup::BACKUP_PATH && req.method == Method::Get)
}

/// Answers a request of [`takes_connection`]; the connection ends with it.
pub async fn stream_route(ctx: &ShardCtx, stream: Transport, req: &Request, peer: SocketAddr) {
    if is_event_stream(req) {
        super::events::event_stream(ctx, stream, req, peer.ip()).await
    } else {
        backup::stream(ctx, stream, req, peer.ip()).await
    }
}

/// `/ws`: the signaling upgrade (`/ws-echo`: the echo one). Consumes the connection:
/// once authorized it is run by the shard that owns the peer ([`super::ws`]).
/// `leftover`: bytes read after the request.
pub async fn route_ws(
    ctx: &Rc<ShardCtx>,
    stream: Transport,
    req: &Request,
    leftover: Vec<u8>,
    peer: SocketAddr,
) {
    let echo = req.path == WS_ECHO_PATH;
    super::ws::upgrade(ctx, stream, req, leftover, peer, echo).await
}

/// The routes this server knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Readyz,
    /// `GET` is answered by [`stream_route`]; here only what is left (`HEAD`).
    AdminBackup,
    Metrics,
    Token,
    IceConfig,
    Agents,
    Agent,
    RouteSkill,
    Heartbeat,
    Topology,
    Tasks,
    TasksAll,
    Task,
    GenerateCode,
    Pair,
    PairingPending,
    PairingAll,
    Approve,
    Reject,
    Revoke,
    PairingStatus,
    DebugClock,
    DashboardPage,
    DashboardFile,
    DashboardAgents,
    DashboardTasks,
    DashboardSummary,
    DashboardInvite,
    OpenApi,
}

struct RouteDef {
    pattern: &'static str,
    route: Route,
    methods: &'static [Method],
}

/// In match order: a literal segment listed before a `{param}` one wins.
const ROUTES: &[RouteDef] = &[
    RouteDef {
        pattern: "/healthz",
        route: Route::Healthz,
        methods: &[Method::Get],
    },
    RouteDef {
        pattern: "/readyz",
        route: Route::Readyz,
        methods: &[Method::Get],
    },
    RouteDef {
        pattern: "/metrics",
        route: Route::Metrics,
        methods: &[Method::Get],
    },
    RouteDef {
        pattern: "/api/token",
        route: Route::Token,
        methods: &[Method::Post],
    },
    RouteDef {
        pattern: "/api/config",
        route: Route::IceConfig,
        methods: &[Method::Get],
    },
    RouteDef {
        pattern: "/api/registry/agents",
        route: Route::Agents,
        methods: &[Method::Get, Method::Post],
    },
    RouteDef {
        pattern: "/api/registry/agents/{id}",
        route: Route::Agent,
        methods: &[Method::Get, Method::Delete],
    },
    RouteDef {
        pattern: "/api/registry/route",
        route: Route::RouteSkill,
        methods: &[Method::Get],
    },
    RouteDef {
        pattern: "/api/hub/heartbeat",
        route: Route::Heartbeat,
        methods: &[Method::Post],
    },
    RouteDef {
        pattern: "/api/hub/network/topology",
        route: Route::Topology,
        methods: &[Method::Get],
    },
    RouteDef {
        pattern: "/api/hub/tasks",
        route: Route::Tasks,
        methods: &[Method::Post],
    },
    RouteDef {
        pattern: "/api/hub/tasks/all",
        route: Route::TasksAll,
        methods: &[Method::Get],
    },
    RouteDef {
        pattern: "/api/hub/tasks/{id}",
        route: Route::Task,
        methods: &[Method::Get, Method::Post],
    },
    RouteDef {
        pattern: "/api/pairing/generate-code",
        route: Route::GenerateCode,
        methods: &[Method::Post],
    },
    RouteDef {
        pattern: "/api/pairing/pair",
        route: Route::Pair,
        methods: &[Method::Post],
    },
    RouteDef {
        pattern: "/api/pairing/pending",
        route: Route::PairingPending,
        methods: &[Method::Get],
    },
    RouteDef {
        pattern: "/api/pairing/all",
        route: Route::PairingAll,
        methods: &[Method::Get],
    },
    RouteDef {
        pattern: "/api/pairing/{id}/approve",
        route: Route::Approve,
        methods: &[Method::Post],
    },
    RouteDef {
        pattern: "/api/pairing/{id}/reject",
        route: Route::Reject,
        methods: &[Method::Post],
    },
    RouteDef {
        pattern: "/api/pairing/{id}/revoke",
        route: Route::Revoke,
        methods: &[Method::Post],
    },
    RouteDef {
        pattern: "/api/pairing/{id}/status",
        route: Route::PairingStatus,
        methods: &[Method::Get],
    },
    RouteDef {
        pattern: "/",
        route: Route::DashboardPage,
        methods: &[Method::Get],
    },
    RouteDef {
        pattern: "/dashboard/{file}",
        route: Route::DashboardFile,
        methods: &[Method::Get],
    },
    RouteDef {
        pattern: "/api/dashboard/agents",
        route: Route::DashboardAgents,
        methods: &[Method::Get],
    },
    RouteDef {
        pattern: "/api/dashboard/tasks",
        route: Route::DashboardTasks,
        methods: &[Method::Get],
    },
    RouteDef {
        pattern: "/api/dashboard/summary",
        route: Route::DashboardSummary,
        methods: &[Method::Get],
    },
    RouteDef {
        pattern: "/api/dashboard/invite",
        route: Route::DashboardInvite,
        methods: &[Method::Post],
    },
    RouteDef {
        pattern: "/api/openapi.json",
        route: Route::OpenApi,
        methods: &[Method::Get],
    },
    RouteDef {
        pattern: backup::BACKUP_PATH,
        route: Route::AdminBackup,
        methods: &[Method::Get],
    },
    RouteDef {
        pattern: "/debug/clock",
        route: Route::DebugClock,
        methods: &[Method::Post],
    },
];

/// A matched route with its path parameters (`{name}` segments, in order).
pub struct Matched<'a> {
    pub route: Route,
    pub params: Vec<&'a str>,
    methods: &'static [Method],
}

/// Finds the route of `path`, without splitting it for the common case: a path equal
/// to a literal pattern is found by whole-string comparisons (mostly a length check
/// each); only the patterns with a `{param}` segment are then matched segment by segment.
/// Same result as matching every pattern in order, because a literal pattern is listed
/// before any `{param}` pattern that would also match it (tested below).
pub fn match_path(path: &str) -> Option<Matched<'_>> {
    if let Some(def) = ROUTES
        .iter()
        .find(|d| d.pattern == path && !d.pattern.contains('{'))
    {
        return Some(Matched {
            route: def.route,
            params: Vec::new(),
            methods: def.methods,
        });
    }
    'routes: for def in ROUTES.iter().filter(|d| d.pattern.contains('{')) {
        let mut params = Vec::new();
        let mut want = def.pattern.split('/');
        let mut got = path.split('/');
        loop {
            match (want.next(), got.next()) {
                (None, None) => {
                    return Some(Matched {
                        route: def.route,
                        params,
                        methods: def.methods,
                    })
                }
                (Some(w), Some(g)) if w.starts_with('{') && !g.is_empty() => params.push(g),
                (Some(w), Some(g)) if w == g => {}
                _ => continue 'routes,
            }
        }
    }
    None
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Patch => "PATCH",
        Method::Options => "OPTIONS",
        Method::Other => "OTHER",
    }
}

fn allow_header(methods: &[Method]) -> String {
    let mut names: Vec<&str> = methods.iter().map(|m| method_name(*m)).collect();
    if methods.contains(&Method::Get) {
        names.push("HEAD");
    }
    names.push("OPTIONS");
    names.join(",")
}

/// Answers one request from `peer`. `home` is set to the shard that owns what an
/// answered request named, where a connection is better served there
/// (`server::steer`: an agent's heartbeats).
pub async fn handle(
    ctx: &ShardCtx,
    req: &Request,
    peer: SocketAddr,
    home: &std::cell::Cell<Option<reactor::ShardId>>,
) -> Response {
    let matched =
        match_path(&req.path).filter(|m| m.route != Route::DebugClock || ctx.config.test_clock);
    let Some(m) = matched else {
        if req.method == Method::Options && req.header("access-control-request-method").is_some() {
            return preflight("OPTIONS".into());
        }
        return Response::error(404, format!("no route for {}", req.path));
    };
    if req.method == Method::Options {
        return preflight(allow_header(m.methods));
    }
    let method = if req.method == Method::Head {
        Method::Get
    } else {
        req.method
    };
    if !m.methods.contains(&method) {
        return Response::error(
            405,
            format!("method {} not allowed on {}", req.method_raw, req.path),
        )
        .with_header("allow", allow_header(m.methods));
    }
    let p = |i: usize| m.params.get(i).copied().unwrap_or("");
    let ip = peer.ip();
    let cfg = &ctx.config;
    // The failure budget (issue 20): an address that presented too many wrong secrets
    // is refused before any secret of this request is looked at.
    // A route whose check awaits (a device token or a claim secret looked up on another
    // shard) holds its attempt until it answers; every other route checks its secret
    // before it first awaits (`auth::budget::admit`).
    let mut _attempt = None;
    if let Some(secret_route) = secret_route_of(m.route, method, cfg, req) {
        let held = matches!(m.route, Route::Token | Route::PairingStatus);
        let admitted = if held {
            auth::budget::admit_held(ctx, ip, secret_route)
                .await
                .map(|a| _attempt = Some(a))
        } else {
            auth::budget::admit(ctx, ip, secret_route).await
        };
        if let Err(e) = admitted {
            return e.into();
        }
    }
    if is_admin_route(m.route, method) && !cfg.auth.insecure_open_admin {
        let header = req.header("authorization");
        if let Err(e) = auth::admin::authorize(ctx, &cfg.auth, header, ip).await {
            return e.into();
        }
    }
    let query = |name: &str| req.query_param(name);
    let result = match m.route {
        Route::Healthz => Ok(healthz()),
        Route::Readyz => Ok(readyz(ctx)),
        Route::AdminBackup => Ok(Response::error(
            405,
            "a backup is a GET (its length is not known in advance)",
        )
        .with_header("allow", "GET")),
        Route::Metrics => Ok(metrics(ctx).await),
        Route::Token => Ok(token(ctx, req, ip).await),
        Route::IceConfig => Ok(respond(crate::ice::get(
            ctx,
            &cfg.ice,
            crate::server::turn::ice_entry(ctx, req),
        ))),
        Route::Agents if method == Method::Post => Ok(register(ctx, req, ip).await),
        Route::Agents => Ok(respond(
            registry::api::list_page(
                ctx,
                &cfg.registry,
                query("limit").as_deref(),
                query("cursor").as_deref(),
            )
            .await,
        )),
        Route::Agent if method == Method::Delete => match path_id(p(0)) {
            Ok(id) => Ok(respond(registry::api::delete(ctx, id).await)),
            Err(e) => Err(e),
        },
        Route::Agent => match path_id(p(0)) {
            Ok(id) => Ok(respond(registry::api::get(ctx, id).await)),
            Err(e) => Err(e),
        },
        Route::RouteSkill => {
            match auth::agent::gate(ctx, &cfg.auth, req.header("authorization"), ip, None).await {
                Ok(_) => Ok(respond(registry::api::route(ctx, query("skill")).await)),
                Err(e) => Err(e.into()),
            }
        }
        Route::Heartbeat => Ok(heartbeat(ctx, req, ip, home).await),
        Route::Topology => Ok(respond(registry::api::topology_route(ctx).await)),
        Route::Tasks => Ok(create_task(ctx, req, ip).await),
        Route::TasksAll => match task_reader(ctx, req, ip).await {
            Ok(reader) => Ok(respond(
                hub::api::list_page(
                    ctx,
                    &cfg.hub,
                    &reader,
                    query("limit").as_deref(),
                    query("cursor").as_deref(),
                )
                .await,
            )),
            Err(e) => Err(e),
        },
        Route::Task if method == Method::Post => Ok(update_task(ctx, req, p(0), ip).await),
        Route::Task => match (path_id(p(0)), task_reader(ctx, req, ip).await) {
            (Ok(id), Ok(reader)) => Ok(respond(hub::api::get(ctx, &reader, id).await)),
            (Err(e), _) | (_, Err(e)) => Err(e),
        },
        Route::GenerateCode => Ok(generate_code(ctx, req, ip).await),
        Route::Pair => Ok(pair(ctx, req, ip).await),
        // Pairing entries and codes stay at their node; in a cluster, a request about
        // one another node holds is answered there (`forward`).
        Route::PairingPending | Route::PairingAll => Ok(respond(
            forward::list(
                ctx,
                m.route == Route::PairingPending,
                query("limit").as_deref(),
                query("cursor").as_deref(),
            )
            .await,
        )),
        Route::Approve => Ok(respond(
            forward::action(ctx, forward::Action::Approve, p(0)).await,
        )),
        Route::Reject => Ok(respond(
            forward::action(ctx, forward::Action::Reject, p(0)).await,
        )),
        Route::Revoke => Ok(respond(
            forward::action(ctx, forward::Action::Revoke, p(0)).await,
        )),
        Route::PairingStatus => Ok(respond(
            forward::status(ctx, req.header("authorization"), p(0), ip).await,
        )),
        Route::DebugClock => debug::clock(ctx, req).await,
        Route::DashboardPage => Ok(asset(dashboard::assets::index())),
        Route::DashboardFile => {
            Ok(dashboard::assets::file(p(0)).map_or_else(Response::from, asset))
        }
        Route::DashboardAgents
        | Route::DashboardTasks
        | Route::DashboardSummary
        | Route::DashboardInvite => Ok(dashboard_route(ctx, m.route, req, ip).await),
        Route::OpenApi => Ok(openapi()),
    };
    result.unwrap_or_else(|resp| resp)
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
    req: &Request,
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
    let auth = &config.auth;
    match route {
        Route::Token => Some(SecretRoute::Token),
        Route::GenerateCode => Some(SecretRoute::GenerateCode),
        Route::PairingStatus => Some(SecretRoute::PairingStatus),
        Route::DashboardAgents
        | Route::DashboardTasks
        | Route::DashboardSummary
        | Route::DashboardInvite => Some(SecretRoute::Admin),
        r if is_admin_route(r, method) => (!auth.insecure_open_admin).then_some(SecretRoute::Admin),
        Route::Agents | Route::Tasks | Route::Task if method == Method::Post => {
            auth.require_agent_auth.then_some(SecretRoute::Agent)
        }
        Route::Heartbeat | Route::RouteSkill => {
            auth.require_agent_auth.then_some(SecretRoute::Agent)
        }
        _ => None,
    }
}

/// `POST /api/token`: auth's workflow; a device token that was used ends its pairing
/// entry's claim path (pairing's `token_used`) before the answer.
async fn token(ctx: &ShardCtx, req: &Request, ip: std::net::IpAddr) -> Response {
    let cfg = &ctx.config;
    let api_key = req.header("x-api-key");
    let device_token = req.header("x-device-token");
    match auth::api::token(ctx, &cfg.auth, api_key, device_token, ip).await {
        Ok(issued) => {
            if let Some(entry) = issued.device_entry {
                let id = pairing::EntryId::from_u32(entry);
                forward::token_used(ctx, id).await;
            }
            issued.outcome().into()
        }
        Err(e) => e.into(),
    }
}

/// `POST /api/pairing/generate-code`: the `X-API-Key` of a known key (auth: an unknown
/// one counts against the failure budget), then pairing issues a code in its name.
async fn generate_code(ctx: &ShardCtx, req: &Request, ip: std::net::IpAddr) -> Response {
    let cfg = &ctx.config;
    let api_key = req.header("x-api-key");
    let key = match auth::api::known_key(ctx, &cfg.auth, api_key, ip, Failure::GenerateCode).await {
        Ok(k) => k,
        Err(e) => return e.into(),
    };
    let issuer = pairing::Issuer {
        peer_id: key.peer_id.clone(),
        mesh: key.mesh.clone(),
    };
    respond(pairing::api::issue_code(ctx, &cfg.pairing, issuer).await)
}

/// `POST /api/pairing/pair`: the body (an object: `["123456","name"]` would otherwise be
/// read field by field), then pairing's workflow. Parse failures are answered before the
/// rate limit and do not count against it (the reference's order).
async fn pair(ctx: &ShardCtx, req: &Request, ip: std::net::IpAddr) -> Response {
    if let Err(resp) = super::common::require_object(&req.body) {
        return resp;
    }
    let body: pairing::PairRequest = match super::common::json_body(req) {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    respond(forward::pair(ctx, body, ip).await)
}

/// The dashboard's API routes (docs/PROTOCOL.md §9): every one needs an admin token,
/// `--insecure-open-admin` or not (the invite is issued by the token's subject).
async fn dashboard_route(
    ctx: &ShardCtx,
    route: Route,
    req: &Request,
    ip: std::net::IpAddr,
) -> Response {
    let header = req.header("authorization");
    let claims = match auth::admin::authorize(ctx, &ctx.config.auth, header, ip).await {
        Ok(c) => c,
        Err(e) => return e.into(),
    };
    let q = |name: &str| req.query_param(name);
    match route {
        Route::DashboardAgents => {
            let (limit, cursor, sort, order, health, text) = (
                q("limit"),
                q("cursor"),
                q("sort"),
                q("order"),
                q("health"),
                q("q"),
            );
            let params = dashboard::api::AgentParams {
                limit: limit.as_deref(),
                cursor: cursor.as_deref(),
                sort: sort.as_deref(),
                order: order.as_deref(),
                health: health.as_deref(),
                q: text.as_deref(),
            };
            respond(dashboard::api::agents(ctx, &params).await)
        }
        Route::DashboardTasks => {
            let (limit, cursor, state, agent) = (q("limit"), q("cursor"), q("state"), q("agent"));
            let params = dashboard::api::TaskParams {
                limit: limit.as_deref(),
                cursor: cursor.as_deref(),
                state: state.as_deref(),
                agent: agent.as_deref(),
            };
            respond(dashboard::api::tasks(ctx, &params).await)
        }
        Route::DashboardSummary => respond(dashboard::api::summary(ctx).await),
        _ => {
            let issuer = dashboard::api::issuer(claims.sub, &ctx.config.auth.api_keys);
            respond(pairing::api::issue_code(ctx, &ctx.config.pairing, issuer).await)
        }
    }
}

/// A dashboard file as a response, with its security headers.
fn asset(a: dashboard::assets::Asset) -> Response {
    let mut resp = Response::text(200, a.content_type, a.body.into_owned())
        .with_header("cache-control", a.cache);
    for (name, value) in a.headers {
        resp = resp.with_header(name, *value);
    }
    resp
}

/// A path parameter, percent-decoded (400 for a bad escape).
fn path_id(raw: &str) -> Result<String, Response> {
    super::common::path_param(raw)
}

/// `POST /api/registry/agents`: the body, the caller's principal (401 for a token that
/// does not verify), then the registry's workflow. A 403 from the agent's binding while
/// the request carried an unknown `X-API-Key` counts against the address's failure
/// budget (a key for the agent would have been accepted).
async fn register(ctx: &ShardCtx, req: &Request, ip: std::net::IpAddr) -> Response {
    let info: registry::AgentInfo = match object_body(req) {
        Ok(i) => i,
        Err(resp) => return resp,
    };
    let cfg = &ctx.config;
    let presented = super::common::presented(req);
    let by = match auth::agent::principal(ctx, &cfg.auth, presented, ip, Some(&info.agent_id)).await
    {
        Ok(by) => by,
        Err(e) => return e.into(),
    };
    let r = registry::api::register(ctx, &ctx.config.registry, info, by).await;
    respond(r)
}

/// A JSON body of the shape `T` (an object): 415, 400 or 422 otherwise.
fn object_body<T: wire::json::JsonBody>(req: &Request) -> Result<T, Response> {
    super::common::require_object(&req.body)?;
    super::common::json_body(req)
}

/// The caller's principal on an agent route (`auth::agent::principal`), acting as
/// `agent_id` when it names one.
async fn principal(
    ctx: &ShardCtx,
    req: &Request,
    ip: std::net::IpAddr,
    agent_id: Option<&str>,
) -> Result<crate::limits::Principal, Response> {
    let presented = super::common::presented(req);
    auth::agent::principal(ctx, &ctx.config.auth, presented, ip, agent_id)
        .await
        .map_err(Response::from)
}

/// `POST /api/hub/heartbeat`. An accepted heartbeat sets `home` to its agent's owner.
async fn heartbeat(
    ctx: &ShardCtx,
    req: &Request,
    ip: std::net::IpAddr,
    home: &std::cell::Cell<Option<reactor::ShardId>>,
) -> Response {
    let hb: registry::Heartbeat = match object_body(req) {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let by = match principal(ctx, req, ip, Some(&hb.agent_id)).await {
        Ok(by) => by,
        Err(resp) => return resp,
    };
    let cfg = &ctx.config;
    let owner = ctx.shard.shard_of(hb.agent_id.as_bytes());
    let r = hub::api::heartbeat(ctx, &cfg.registry, &cfg.hub, hb, by).await;
    if r.is_ok() {
        home.set(Some(owner));
    }
    respond(r)
}

/// `POST /api/hub/tasks`.
async fn create_task(ctx: &ShardCtx, req: &Request, ip: std::net::IpAddr) -> Response {
    let sub: hub::TaskSubmission = match object_body(req) {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let source = (!sub.source_agent_id.is_empty()).then_some(sub.source_agent_id.as_str());
    let by = match principal(ctx, req, ip, source).await {
        Ok(by) => by,
        Err(resp) => return resp,
    };
    respond(hub::api::create(ctx, &ctx.config.hub, sub, by).await)
}

/// `POST /api/hub/tasks/{id}`.
async fn update_task(
    ctx: &ShardCtx,
    req: &Request,
    raw_id: &str,
    ip: std::net::IpAddr,
) -> Response {
    let id = match path_id(raw_id) {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let upd: hub::TaskUpdate = match object_body(req) {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let by = match principal(ctx, req, ip, None).await {
        Ok(by) => by,
        Err(resp) => return resp,
    };
    let r = hub::api::update(ctx, &ctx.config.hub, id, upd, by).await;
    respond(r)
}

/// The reader of a task route (`auth::agent::reader`: reads need no token; an unknown
/// key or a forged token counts against the address's failure budget).
async fn task_reader(
    ctx: &ShardCtx,
    req: &Request,
    ip: std::net::IpAddr,
) -> Result<crate::limits::Principal, Response> {
    let presented = super::common::presented(req);
    auth::agent::reader(ctx, &ctx.config.auth, presented, ip)
        .await
        .map_err(Response::from)
}

/// The operator routes (issue 10): they need an admin JWT unless the server runs with
/// `--insecure-open-admin`.
pub fn is_admin_route(route: Route, method: Method) -> bool {
    match route {
        Route::PairingPending
        | Route::PairingAll
        | Route::Approve
        | Route::Reject
        | Route::Revoke => true,
        Route::Agent => method == Method::Delete,
        _ => false,
    }
}

/// `GET /healthz`: `{"status":"ok"}`.
pub fn healthz() -> Response {
    Response::json_static(200, br#"{"status":"ok"}"#)
}

/// The OpenAPI 3.1 description of every route (docs/openapi.json), compiled in.
/// `POST /debug/clock` and `/ws-echo` are left out: they exist only behind test flags.
pub const OPENAPI_JSON: &[u8] = include_bytes!("../../docs/openapi.json");

/// How long clients may reuse the document: it changes only with the binary, and a few
/// minutes keep an upgraded server's new document from being hidden for long.
const OPENAPI_CACHE: &str = "public, max-age=300";

/// `GET /api/openapi.json`: [`OPENAPI_JSON`].
pub fn openapi() -> Response {
    Response::json_static(200, OPENAPI_JSON).with_header("cache-control", OPENAPI_CACHE)
}

/// `GET /readyz` (issue 22): 200 `{"status":"ready"}` while the state store takes writes;
/// 503 `{"status":"unavailable","error":…,"unavailable_secs":…}` while it does not (a
/// full, read-only or failing disk: changes that need a write are refused, reads are
/// served). `/healthz` stays 200 either way: the process is alive.
pub fn readyz(ctx: &ShardCtx) -> Response {
    // In a cluster, a node without its Redis cannot answer for the shared state: new
    // clients go to another node (issue 25).
    if let Some(node) = &ctx.config.cluster {
        let h = node.node.health();
        if !h.up {
            let why = h.reason.unwrap_or_else(|| "not connected yet".into());
            return not_ready(ctx, format!("cluster link down: {why}"), h.since_ns);
        }
        // Up, but the primary's replicas do not keep up (`--cluster-wait-replicas`; after
        // a failover, before the old primary rejoins as a replica): every durable write
        // would be refused, so new clients go elsewhere.
        if let Some((why, since_ns)) = h.replicas_short {
            return not_ready(
                ctx,
                format!("cluster writes not replicated: {why}"),
                since_ns,
            );
        }
    }
    let Some(store) = &ctx.config.store else {
        return Response::json_static(200, br#"{"status":"ready"}"#);
    };
    let h = store.health();
    if h.available {
        return Response::json_static(200, br#"{"status":"ready"}"#);
    }
    let why = h
        .reason
        .unwrap_or_else(|| "the state store cannot save changes".into());
    not_ready(ctx, why, h.since_ns)
}

/// `/readyz`'s 503: why, and for how long (since `since_ns`, Unix ns on the wall clock,
/// stamped by the store or the cluster link: the test clock's offset does not apply; 0
/// when not known).
fn not_ready(ctx: &ShardCtx, error: String, since_ns: u64) -> Response {
    let wall = crate::time::UnixTime(ctx.now().0.saturating_sub(ctx.clock_offset()));
    let secs = if since_ns == 0 {
        0
    } else {
        wall.saturating_duration_since(crate::time::UnixTime(since_ns))
            .as_secs()
    };
    let body = serde_json::json!({
        "status": "unavailable",
        "error": error,
        "unavailable_secs": secs,
    });
    Response::json(503, &body)
}

fn preflight(allow: String) -> Response {
    Response::new(200)
        .with_header("access-control-allow-methods", "*")
        .with_header("access-control-allow-headers", "*")
        .with_header("allow", allow)
}

async fn metrics(ctx: &ShardCtx) -> Response {
    let replies = ctx.shard.ask_all(|_| Msg::Shard(ShardOp::Metrics)).await;
    let mut shards = Vec::with_capacity(replies.len());
    for (i, r) in replies.into_iter().enumerate() {
        match r {
            Ok(Msg::ShardReply(ShardReply::Metrics(m))) => shards.push(*m),
            Ok(_) | Err(reactor::AskError::NoReply) => {
                return Response::error(500, format!("shard {i} sent no metrics"));
            }
            Err(reactor::AskError::Full(_)) => {
                return Response::error(503, format!("shard {i} is overloaded (mailbox full)"));
            }
        }
    }
    let mut body = crate::server::metrics::render(&shards);
    match pairing::api::counters(ctx).await {
        Ok(c) => body.push_str(&pairing::api::render_metrics(&c)),
        Err(e) => return e.into(),
    }
    if let Some(store) = &ctx.config.store {
        body.push_str(&crate::server::metrics::render_store(
            &store.stats(),
            store.health().available,
        ));
    }
    if let Some(node) = &ctx.config.cluster {
        let malformed = shards.iter().map(|m| m.cluster_malformed).sum();
        let conflicts = shards.iter().map(|m| m.cluster_binding_conflicts).sum();
        let pipes: Vec<_> = shards.iter().map(|m| m.cluster_pipe).collect();
        body.push_str(&crate::server::cluster::render_metrics(
            &node.id,
            &node.node.stats(),
            malformed,
            conflicts,
            &pipes,
        ));
    }
    Response::text(200, "text/plain; version=0.0.4; charset=utf-8", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_exact_paths_only() {
        assert_eq!(match_path("/healthz").unwrap().route, Route::Healthz);
        assert!(match_path("/healthz/").is_none());
        assert!(match_path("/health").is_none());
        assert_eq!(match_path("/").unwrap().route, Route::DashboardPage);
        assert!(match_path("//").is_none());
        assert_eq!(allow_header(&[Method::Get]), "GET,HEAD,OPTIONS");
    }

    #[test]
    fn admin_routes() {
        let admin = |path: &str, method| is_admin_route(match_path(path).unwrap().route, method);
        assert!(admin("/api/pairing/pending", Method::Get));
        assert!(admin("/api/pairing/all", Method::Get));
        for action in ["approve", "reject", "revoke"] {
            assert!(admin(
                &format!("/api/pairing/0badc0de/{action}"),
                Method::Post
            ));
        }
        assert!(admin("/api/registry/agents/a1", Method::Delete));
        assert!(!admin("/api/registry/agents/a1", Method::Get));
        assert!(!admin("/api/registry/agents", Method::Post));
        assert!(!admin("/api/pairing/pair", Method::Post));
        assert!(!admin("/api/pairing/generate-code", Method::Post));
        assert!(!admin("/api/hub/heartbeat", Method::Post));
        assert!(!admin("/api/token", Method::Post));
    }

    #[test]
    fn literal_patterns_come_before_the_param_patterns_that_match_them() {
        for def in ROUTES.iter().filter(|d| !d.pattern.contains('{')) {
            // Were a `{param}` pattern listed first to also match this path, matching in
            // list order would pick it; match_path's literal fast path would not.
            let first = ROUTES.iter().find(|d| {
                let (w, g): (Vec<_>, Vec<_>) = (
                    d.pattern.split('/').collect(),
                    def.pattern.split('/').collect(),
                );
                w.len() == g.len()
                    && w.iter()
                        .zip(&g)
                        .all(|(w, g)| w == g || (w.starts_with('{') && !g.is_empty()))
            });
            assert_eq!(first.map(|d| d.route), Some(def.route), "{}", def.pattern);
            assert_eq!(match_path(def.pattern).unwrap().route, def.route);
        }
    }

    /// docs/openapi.json describes exactly the routes of [`ROUTES`] (less the test-only
    /// `/debug/clock`) plus `/ws` and the event stream, each with exactly its methods.
    #[test]
    fn openapi_document_describes_every_route() {
        let doc: serde_json::Value = serde_json::from_slice(OPENAPI_JSON).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        // Parameter names may differ (`{id}` here, `{agent_id}` there): compare shapes.
        let shape = |p: &str| -> String {
            p.split('/')
                .map(|s| if s.starts_with('{') { "{}" } else { s })
                .collect::<Vec<_>>()
                .join("/")
        };
        let paths: std::collections::HashMap<String, &serde_json::Value> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (shape(k), v))
            .collect();
        let http_methods = ["get", "put", "post", "delete", "options", "head", "patch"];
        let documented = |pattern: &str| -> Vec<String> {
            let item = paths
                .get(&shape(pattern))
                .unwrap_or_else(|| panic!("{pattern} is not in docs/openapi.json"));
            let mut m: Vec<String> = item
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| http_methods.contains(&k.as_str()))
                .map(|k| k.to_uppercase())
                .collect();
            m.sort();
            m
        };
        let mut routed = 0;
        for def in ROUTES.iter().filter(|d| d.route != Route::DebugClock) {
            let mut want: Vec<String> =
                def.methods.iter().map(|m| method_name(*m).into()).collect();
            want.sort();
            assert_eq!(documented(def.pattern), want, "{}", def.pattern);
            routed += 1;
        }
        assert_eq!(documented(WS_PATH), ["GET"]);
        assert_eq!(documented(super::super::events::EVENTS_PATH), ["GET"]);
        assert_eq!(
            paths.len(),
            routed + 2,
            "a documented path that is not routed"
        );
        assert!(!paths.contains_key("/debug/clock") && !paths.contains_key(WS_ECHO_PATH));
        let r = openapi();
        assert_eq!((r.status, r.content_type), (200, Some("application/json")));
    }

    #[test]
    fn param_segments_are_captured() {
        let m = match_path("/api/pairing/abc/approve").unwrap();
        assert_eq!(
            (m.route, m.params.as_slice()),
            (Route::Approve, &["abc"][..])
        );
        let m = match_path("/api/hub/tasks/all").unwrap();
        assert_eq!(m.route, Route::TasksAll);
        let m = match_path("/api/hub/tasks/t1").unwrap();
        assert_eq!((m.route, m.params.as_slice()), (Route::Task, &["t1"][..]));
        assert!(match_path("/api/pairing//approve").is_none());
        assert!(match_path("/api/hub/tasks/t1/x").is_none());
    }
}
