//! `--cluster` URLs.

use percent_encoding::percent_decode_str;

/// Where Redis is: `redis://[user:password@]HOST:PORT[/DB]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

/// Redis's own port, taken when the URL names none.
pub const DEFAULT_PORT: u16 = 6379;

/// Parses a `--cluster` URL; the error names what is wrong.
///
/// `redis://[user:password@]HOST[:PORT][/DB]`: the user and the password are
/// percent-decoded (`%40` for `@`), the port defaults to 6379 and the database to 0; a
/// password alone is `redis://:password@host`. An IPv6 host is written in brackets
/// (`redis://[::1]:6379`).
pub fn parse_url(s: &str) -> Result<RedisUrl, String> {
    let rest = match s.split_once("://") {
        Some(("redis", rest)) => rest,
        Some(("redis+sentinel", _)) => {
            return Err(format!(
                "{s:?}: redis+sentinel:// (Sentinel) is not supported yet; give the primary as redis://HOST:PORT"
            ))
        }
        Some(("rediss", _)) => {
            return Err(format!("{s:?}: rediss:// (TLS to Redis) is not supported"))
        }
        Some(("unix" | "redis+unix", _)) => {
            return Err(format!(
                "{s:?}: a Unix socket is not supported; give redis://HOST:PORT"
            ))
        }
        Some((scheme, _)) => {
            return Err(format!(
                "{s:?}: unknown scheme {scheme:?}; expected redis://[user:password@]HOST:PORT[/DB]"
            ))
        }
        None => {
            return Err(format!(
                "{s:?}: not a URL; expected redis://[user:password@]HOST:PORT[/DB]"
            ))
        }
    };
    if rest.contains(['?', '#']) {
        return Err(format!(
            "{s:?}: query and fragment are not supported; expected redis://[user:password@]HOST:PORT[/DB]"
        ));
    }
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (rest, None),
    };
    // The last '@' ends the credentials: a raw '@' in a password is forgiven.
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        None => (None, None),
        Some(u) => {
            let (user, pass) = match u.split_once(':') {
                Some((user, pass)) => (user, Some(pass)),
                None => (u, None),
            };
            let user = decode(s, "user", user)?;
            let pass = pass.map(|p| decode(s, "password", p)).transpose()?;
            match pass {
                // `redis://user@host`: Redis has no password-less AUTH; a lone name is a
                // password (as redis-cli's -u reads it).
                None if !user.is_empty() => (None, Some(user)),
                None => (None, None),
                Some(p) => ((!user.is_empty()).then_some(user), Some(p)),
            }
        }
    };
    let (host, port) = split_host_port(s, hostport)?;
    let db = match path {
        None | Some("") => 0,
        Some(p) => p.parse::<u32>().map_err(|_| {
            format!("{s:?}: database {p:?} is not a number (redis://HOST:PORT/DB, DB from 0)")
        })?,
    };
    Ok(RedisUrl {
        host,
        port,
        user,
        password,
        db,
    })
}

fn decode(url: &str, what: &str, raw: &str) -> Result<String, String> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| format!("{url:?}: the {what} is not UTF-8 once percent-decoded"))
}

fn split_host_port(url: &str, hostport: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: an IPv6 host lacks its closing ']'"))?;
        match after {
            "" => (host, None),
            p => match p.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None => return Err(format!("{url:?}: unexpected {p:?} after the IPv6 host")),
            },
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(format!(
            "{url:?}: no host; expected redis://[user:password@]HOST:PORT[/DB]"
        ));
    }
    if host.contains(['[', ']', ' ', '@', ':']) && !hostport.starts_with('[') {
        return Err(format!("{url:?}: the host {host:?} is not a host name"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => {
                return Err(format!(
                    "{url:?}: port {p:?} is not a port number (1 to 65535)"
                ))
            }
            Ok(n) => n,
        },
    };
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(host: &str, port: u16, user: Option<&str>, pass: Option<&str>, db: u32) -> RedisUrl {
        RedisUrl {
            host: host.into(),
            port,
            user: user.map(Into::into),
            password: pass.map(Into::into),
            db,
        }
    }

    #[test]
    fn good_urls() {
        let cases = [
            (
                "redis://127.0.0.1:6380",
                url("127.0.0.1", 6380, None, None, 0),
            ),
            ("redis://redis", url("redis", 6379, None, None, 0)),
            ("redis://redis/", url("redis", 6379, None, None, 0)),
            ("redis://h:1/15", url("h", 1, None, None, 15)),
            (
                "redis://:s3cret@h:7000/2",
                url("h", 7000, None, Some("s3cret"), 2),
            ),
            (
                "redis://alice:p%40ss%3Aw%2Fd@h:7000",
                url("h", 7000, Some("alice"), Some("p@ss:w/d"), 0),
            ),
            ("redis://pw@h", url("h", 6379, None, Some("pw"), 0)),
            (
                "redis://u:p@ss@h:1",
                url("h", 1, Some("u"), Some("p@ss"), 0),
            ),
            ("redis://[::1]:6390/3", url("::1", 6390, None, None, 3)),
            ("redis://[::1]", url("::1", 6379, None, None, 0)),
        ];
        for (s, want) in cases {
            assert_eq!(parse_url(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let cases = [
            (
                "redis+sentinel://h:26379,h2:26379/mymaster",
                "not supported yet",
            ),
            ("rediss://h:6379", "TLS"),
            ("http://h:6379", "unknown scheme"),
            ("127.0.0.1:6379", "not a URL"),
            ("redis://", "no host"),
            ("redis://:6379", "no host"),
            ("redis://h:0", "not a port number"),
            ("redis://h:65536", "not a port number"),
            ("redis://h:port", "not a port number"),
            ("redis://h:1/x", "is not a number"),
            ("redis://h:1/-1", "is not a number"),
            ("redis://h:1?db=2", "query"),
            ("redis://[::1:6379", "closing"),
            ("redis://u:%FF@h", "not UTF-8"),
            ("unix:///tmp/redis.sock", "Unix socket"),
        ];
        for (s, want) in cases {
            match parse_url(s) {
                Ok(u) => panic!("{s} parsed as {u:?}"),
                Err(e) => assert!(e.contains(want), "{s}: {e}"),
            }
        }
    }
}
