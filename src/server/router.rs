//! Routing: path and method → handler. Handlers that need other shards' state ask them
//! over the mailboxes; everything else is answered locally.

use crate::http::{Method, Request, Response};
use crate::server::{Msg, ShardCtx};

/// The routes this server knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Metrics,
}

struct RouteDef {
    pattern: &'static str,
    route: Route,
    methods: &'static [Method],
}

const ROUTES: &[RouteDef] = &[
    RouteDef {
        pattern: "/healthz",
        route: Route::Healthz,
        methods: &[Method::Get],
    },
    RouteDef {
        pattern: "/metrics",
        route: Route::Metrics,
        methods: &[Method::Get],
    },
];

/// A matched route with its path parameters (`{name}` segments, in order).
pub struct Matched<'a> {
    pub route: Route,
    pub params: Vec<&'a str>,
    methods: &'static [Method],
}

/// Finds the route of `path`.
pub fn match_path(path: &str) -> Option<Matched<'_>> {
    'routes: for def in ROUTES {
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

/// Answers one request.
pub async fn handle(ctx: &ShardCtx, req: &Request) -> Response {
    let Some(m) = match_path(&req.path) else {
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
    match m.route {
        Route::Healthz => Response::json_bytes(200, br#"{"status":"ok"}"#.to_vec()),
        Route::Metrics => metrics(ctx).await,
    }
}

fn preflight(allow: String) -> Response {
    Response::new(200)
        .with_header("access-control-allow-methods", "*")
        .with_header("access-control-allow-headers", "*")
        .with_header("allow", allow)
}

async fn metrics(ctx: &ShardCtx) -> Response {
    let replies = ctx.shard.ask_all(|_| Msg::MetricsQuery).await;
    let mut shards = Vec::with_capacity(replies.len());
    for (i, r) in replies.into_iter().enumerate() {
        match r {
            Ok(Msg::Metrics(m)) => shards.push(*m),
            Ok(_) | Err(reactor::AskError::NoReply) => {
                return Response::error(500, format!("shard {i} sent no metrics"));
            }
            Err(reactor::AskError::Full(_)) => {
                return Response::error(503, format!("shard {i} is overloaded (mailbox full)"));
            }
        }
    }
    Response::text(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        crate::metrics::render(&shards),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_exact_paths_only() {
        assert_eq!(match_path("/healthz").unwrap().route, Route::Healthz);
        assert!(match_path("/healthz/").is_none());
        assert!(match_path("/health").is_none());
        assert!(match_path("/").is_none());
        assert_eq!(allow_header(&[Method::Get]), "GET,HEAD,OPTIONS");
    }
}
