//! The dashboard's files, compiled into the binary (`include_str!`): `GET /` is the
//! page, `GET /dashboard/{file}` its script, style sheet and icon. Nothing is fetched
//! from elsewhere at run time, which the Content-Security-Policy enforces.

use crate::http::Response;

/// Only this origin's own files may load; no inline script or style, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page is small and changes with the binary: revalidate every time. The files it
/// loads carry the build's version in their URL (`?v=`), so they may be cached.
const PAGE_CACHE: &str = "no-cache";
const FILE_CACHE: &str = "public, max-age=86400";

const INDEX: &str = include_str!("assets/index.html");
const FILES: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
    (
        "views.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/views.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("assets/app.css"),
    ),
    ("icon.svg", "image/svg+xml", include_str!("assets/icon.svg")),
];

fn secured(resp: Response, cache: &'static str) -> Response {
    resp.with_header("cache-control", cache)
        .with_header("content-security-policy", CONTENT_SECURITY_POLICY)
        .with_header("x-content-type-options", "nosniff")
        .with_header("referrer-policy", "no-referrer")
        .with_header("x-frame-options", "DENY")
}

/// `GET /`.
pub fn index() -> Response {
    let page = INDEX.replace("{{version}}", env!("CARGO_PKG_VERSION"));
    secured(
        Response::text(200, "text/html; charset=utf-8", page),
        PAGE_CACHE,
    )
}

/// `GET /dashboard/{file}`: 404 for a name not compiled in.
pub fn file(name: &str) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, ctype, body)) => secured(Response::text(200, ctype, *body), FILE_CACHE),
        None => Response::error(404, format!("no dashboard file {name}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_headers() {
        let r = index();
        assert_eq!(r.status, 200);
        let h = |r: &Response, n: &str| {
            if n == "content-type" {
                return r.content_type.map(|v| v.to_string());
            }
            r.headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        };
        assert_eq!(h(&r, "content-type").unwrap(), "text/html; charset=utf-8");
        assert!(h(&r, "content-security-policy")
            .unwrap()
            .contains("script-src 'self'"));
        let body = String::from_utf8(r.body.into_owned()).unwrap();
        assert!(!body.contains("{{version}}"));
        assert!(!body.contains("http://") && !body.contains("https://"));
        assert!(
            !body.contains("style="),
            "inline styles are refused by the CSP"
        );
        let js = file("app.js");
        assert_eq!(js.status, 200);
        assert!(h(&js, "content-type")
            .unwrap()
            .starts_with("text/javascript"));
        assert_eq!(file("app.css").status, 200);
        assert_eq!(file("../Cargo.toml").status, 404);
        assert_eq!(file("nope.js").status, 404);
    }
}
