//! The dashboard's files, compiled into the binary (`include_str!`): `GET /` is the
//! page, `GET /dashboard/{file}` its script, style sheet and icon, each with the headers
//! it must be served with ([`Asset`]; the router writes the response). Nothing is
//! fetched from elsewhere at run time, which the Content-Security-Policy enforces.

use std::borrow::Cow;

use crate::shard::Error;

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

/// One of the dashboard's files, as it is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asset {
    pub content_type: &'static str,
    pub body: Cow<'static, str>,
    /// Its `cache-control`.
    pub cache: &'static str,
    /// Headers every file is served with: the CSP and its companions.
    pub headers: &'static [(&'static str, &'static str)],
}

/// The headers of every dashboard file.
const SECURED: &[(&str, &str)] = &[
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
];

/// `GET /`.
pub fn index() -> Asset {
    Asset {
        content_type: "text/html; charset=utf-8",
        body: Cow::Owned(INDEX.replace("{{version}}", env!("CARGO_PKG_VERSION"))),
        cache: PAGE_CACHE,
        headers: SECURED,
    }
}

/// `GET /dashboard/{file}`: 404 for a name not compiled in.
pub fn file(name: &str) -> Result<Asset, Error> {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, ctype, body)) => Ok(Asset {
            content_type: ctype,
            body: Cow::Borrowed(body),
            cache: FILE_CACHE,
            headers: SECURED,
        }),
        None => Err(Error::not_found(format!("no dashboard file {name}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_headers() {
        let r = index();
        assert_eq!(r.content_type, "text/html; charset=utf-8");
        assert_eq!(r.cache, "no-cache");
        let csp = r
            .headers
            .iter()
            .find(|(k, _)| *k == "content-security-policy");
        assert!(csp.unwrap().1.contains("script-src 'self'"));
        let body = r.body;
        assert!(!body.contains("{{version}}"));
        assert!(!body.contains("http://") && !body.contains("https://"));
        assert!(
            !body.contains("style="),
            "inline styles are refused by the CSP"
        );
        let js = file("app.js").unwrap();
        assert!(js.content_type.starts_with("text/javascript"));
        assert!(file("app.css").is_ok());
        assert_eq!(
            file("../Cargo.toml").unwrap_err().kind,
            crate::shard::Kind::NotFound
        );
        assert!(file("nope.js").is_err());
    }
}
