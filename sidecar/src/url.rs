//! Minimal `scheme://host[:port]/path?query` parsing for the signaling and token URLs.

/// A parsed URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// `ws`, `wss`, `http` or `https`.
    pub scheme: String,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("{s:?}: missing scheme"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "ws" | "http" => 80,
            "wss" | "https" => 443,
            other => return Err(format!("{s:?}: unsupported scheme {other:?}")),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        let (host, port) = host_port(authority, default_port).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(Url {
            scheme,
            host,
            port,
            path,
        })
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.scheme.as_str(), "wss" | "https")
    }

    /// The `Host` header value.
    pub fn host_header(&self) -> String {
        let h = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.is_tls() { 443 } else { 80 };
        if self.port == default {
            h
        } else {
            format!("{h}:{}", self.port)
        }
    }
}

/// `host[:port]` or `[v6][:port]` → `(host, port)`, the port defaulting to
/// `default_port`. The one authority parser of the sidecar: the signaling and token
/// URLs, `stun:` and `turn:` URLs all go through it. (The `url` crate does not fit:
/// `stun:host:port` is not a hierarchical URL, so it would hand back an opaque path.)
pub fn host_port(authority: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
        let (h, tail) = stripped
            .split_once(']')
            .ok_or_else(|| "bad IPv6 literal".to_string())?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| "bad port".to_string())?,
            None if tail.is_empty() => default_port,
            None => return Err("bad IPv6 literal".into()),
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| "bad port".to_string())?),
            None => (authority, default_port),
        }
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = Url::parse("ws://localhost:8080/ws").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("localhost", 8080, "/ws")
        );
        let u = Url::parse("http://127.0.0.1/api/token?x=1").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/api/token?x=1"));
        let u = Url::parse("wss://[::1]:9/ws").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        assert!(u.is_tls());
        assert_eq!(u.host_header(), "[::1]:9");
        assert!(Url::parse("ftp://x").is_err());
        assert!(Url::parse("nope").is_err());
        assert!(Url::parse("ws://:80/").is_err());
        assert_eq!(host_port("h", 3478), Ok(("h".into(), 3478)));
        assert_eq!(host_port("[::1]", 1), Ok(("::1".into(), 1)));
        assert!(host_port("h:x", 1).is_err());
    }
}
