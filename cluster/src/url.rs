//! `--cluster` URLs.

use percent_encoding::percent_decode_str;

/// Where Redis is and how to log in: `redis://[user:password@]HOST:PORT[/DB]`, or
/// `redis+sentinel://[user:password@]HOST:PORT[,HOST:PORT…]/MASTER[/DB]` (the primary
/// named `MASTER` is asked of these Sentinels). The user, password and database are the
/// data nodes' (the primary's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisUrl {
    pub addr: Addr,
    pub user: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

/// How the Redis to link to is found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addr {
    /// `redis://`: this Redis.
    Direct { host: String, port: u16 },
    /// `redis+sentinel://`: the current primary, asked of Sentinels.
    Sentinel(Sentinels),
}

/// The Sentinels that monitor the primary, and its name there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sentinels {
    /// Asked in this order (1 to [`SENTINELS_MAX`]).
    pub addrs: Vec<(String, u16)>,
    /// The name the Sentinels monitor the primary under (`sentinel monitor NAME …`).
    pub master: String,
    /// The Sentinels' own password (`requirepass` in sentinel.conf), from the query
    /// `?sentinel_password=PW`; the URL's user and password are the data nodes'.
    pub password: Option<String>,
}

/// Redis's own port, taken when a `redis://` URL names none.
pub const DEFAULT_PORT: u16 = 6379;
/// Sentinel's own port, taken when a sentinel in a `redis+sentinel://` URL names none.
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;
/// The most Sentinels one URL may list: they are asked one after another with blocking,
/// bounded connects on the link thread (at most `connect_timeout + command_timeout`
/// each), so the list bounds how long one attempt to find the primary may take. A
/// deployment runs 3 or 5 Sentinels.
pub const SENTINELS_MAX: usize = 8;

impl RedisUrl {
    /// The Sentinels, in the sentinel form.
    pub fn sentinels(&self) -> Option<&Sentinels> {
        match &self.addr {
            Addr::Sentinel(s) => Some(s),
            Addr::Direct { .. } => None,
        }
    }
}

const FORM: &str = "expected redis://[user:password@]HOST:PORT[/DB] or redis+sentinel://[user:password@]HOST:PORT[,HOST:PORT…]/MASTER[/DB]";

/// Parses a `--cluster` URL; the error names what is wrong.
///
/// `redis://[user:password@]HOST[:PORT][/DB]`: the user and the password are
/// percent-decoded (`%40` for `@`), the port defaults to 6379 and the database to 0; a
/// password alone is `redis://:password@host`. An IPv6 host is written in brackets
/// (`redis://[::1]:6379`).
///
/// `redis+sentinel://[user:password@]HOST[:PORT][,HOST[:PORT]…]/MASTER[/DB][?sentinel_password=PW]`:
/// 1 to [`SENTINELS_MAX`] Sentinels (port default 26379), asked in order for the primary
/// named `MASTER` (percent-decoded); the user, password and database are the data
/// nodes'; the Sentinels' own password, if they have one, is the query's
/// `sentinel_password` (percent-decoded).
pub fn parse_url(s: &str) -> Result<RedisUrl, String> {
    // An error names the URL, never its secrets.
    parse(s).map_err(|e| scrub(&e, s))
}

/// `s` with its password and `sentinel_password` written as `***` (for logs and
/// `config check`); anything else as given.
pub fn redact_url(s: &str) -> String {
    scrub(s, s)
}

/// `text` with every secret of the URL `s` replaced by `***`: the password of its
/// userinfo (`user:PW@`, as written) and the query's `sentinel_password=PW`.
fn scrub(text: &str, s: &str) -> String {
    let mut out = text.to_string();
    let rest = s.split_once("://").map_or(s, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        if let Some((_, pw)) = userinfo.split_once(':') {
            if !pw.is_empty() {
                out = out.replace(&format!(":{pw}@"), ":***@");
            }
        }
    }
    if let Some((_, q)) = rest.split_once('?') {
        for pair in q.split('&') {
            if let Some(pw) = pair.strip_prefix("sentinel_password=") {
                if !pw.is_empty() {
                    out = out.replace(&format!("sentinel_password={pw}"), "sentinel_password=***");
                }
            }
        }
    }
    out
}

fn parse(s: &str) -> Result<RedisUrl, String> {
    let (sentinel, rest) = match s.split_once("://") {
        Some(("redis", rest)) => (false, rest),
        Some(("redis+sentinel", rest)) => (true, rest),
        Some(("rediss" | "rediss+sentinel", _)) => {
            return Err(format!("{s:?}: TLS to Redis (rediss://) is not supported"))
        }
        Some(("unix" | "redis+unix", _)) => {
            return Err(format!(
                "{s:?}: a Unix socket is not supported; give redis://HOST:PORT"
            ))
        }
        Some((scheme, _)) => return Err(format!("{s:?}: unknown scheme {scheme:?}; {FORM}")),
        None => return Err(format!("{s:?}: not a URL; {FORM}")),
    };
    if sentinel {
        return parse_sentinel(s, rest);
    }
    if rest.contains(['?', '#']) {
        return Err(format!(
            "{s:?}: query and fragment are not supported; expected redis://[user:password@]HOST:PORT[/DB]"
        ));
    }
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (rest, None),
    };
    let (user, password, hostport) = split_userinfo(s, authority)?;
    let (host, port) = split_host_port(s, hostport, DEFAULT_PORT)?;
    let db = match path {
        None | Some("") => 0,
        Some(p) => parse_db(s, p)?,
    };
    Ok(RedisUrl {
        addr: Addr::Direct { host, port },
        user,
        password,
        db,
    })
}

fn parse_sentinel(s: &str, rest: &str) -> Result<RedisUrl, String> {
    if rest.contains('#') {
        return Err(format!("{s:?}: a fragment is not supported; {FORM}"));
    }
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, p),
        None => (rest, ""),
    };
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let (user, password, hosts) = split_userinfo(s, authority)?;
    if hosts.is_empty() {
        return Err(format!(
            "{s:?}: no sentinel; expected redis+sentinel://HOST:PORT[,HOST:PORT…]/MASTER[/DB]"
        ));
    }
    let mut addrs = Vec::new();
    for h in hosts.split(',') {
        if h.is_empty() {
            return Err(format!(
                "{s:?}: an empty sentinel in the list; expected HOST:PORT[,HOST:PORT…]"
            ));
        }
        addrs.push(split_host_port(s, h, DEFAULT_SENTINEL_PORT)?);
    }
    if addrs.len() > SENTINELS_MAX {
        return Err(format!(
            "{s:?}: {} sentinels; at most {SENTINELS_MAX}",
            addrs.len()
        ));
    }
    let (master, db) = match path.split_once('/') {
        Some((m, d)) => (m, Some(d)),
        None => (path, None),
    };
    let master = decode(s, "master name", master)?;
    if master.is_empty() {
        return Err(format!(
            "{s:?}: no master name; expected redis+sentinel://HOST:PORT[,HOST:PORT…]/MASTER[/DB]"
        ));
    }
    if master.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "{s:?}: the master name {master:?} has a space or a control character"
        ));
    }
    let db = match db {
        None | Some("") => 0,
        Some(d) => parse_db(s, d)?,
    };
    let mut sentinel_password = None;
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        match pair.split_once('=') {
            Some(("sentinel_password", v)) if sentinel_password.is_none() => {
                sentinel_password = Some(decode(s, "sentinel password", v)?)
            }
            Some(("sentinel_password", _)) => {
                return Err(format!("{s:?}: sentinel_password given twice"))
            }
            _ => {
                return Err(format!(
                    "{s:?}: unknown query {pair:?}; the only one is ?sentinel_password=PW"
                ))
            }
        }
    }
    Ok(RedisUrl {
        addr: Addr::Sentinel(Sentinels {
            addrs,
            master,
            password: sentinel_password,
        }),
        user,
        password,
        db,
    })
}

/// `(user, password, rest)` of `[user[:password]@]rest`.
type UserInfo<'a> = (Option<String>, Option<String>, &'a str);

fn split_userinfo<'a>(s: &str, authority: &'a str) -> Result<UserInfo<'a>, String> {
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
    Ok((user, password, hostport))
}

fn parse_db(url: &str, p: &str) -> Result<u32, String> {
    p.parse::<u32>()
        .map_err(|_| format!("{url:?}: database {p:?} is not a number (…/DB, DB from 0)"))
}

fn decode(url: &str, what: &str, raw: &str) -> Result<String, String> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| format!("{url:?}: the {what} is not UTF-8 once percent-decoded"))
}

fn split_host_port(url: &str, hostport: &str, default_port: u16) -> Result<(String, u16), String> {
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
        return Err(format!("{url:?}: no host; {FORM}"));
    }
    if host.contains(['[', ']', ' ', '@', ':']) && !hostport.starts_with('[') {
        return Err(format!("{url:?}: the host {host:?} is not a host name"));
    }
    let port = match port {
        None => default_port,
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
            addr: Addr::Direct {
                host: host.into(),
                port,
            },
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
            ("rediss://h:6379", "TLS"),
            ("rediss+sentinel://h/m", "TLS"),
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

    fn sentinel(
        addrs: &[(&str, u16)],
        master: &str,
        user: Option<&str>,
        pass: Option<&str>,
        db: u32,
        sentinel_pass: Option<&str>,
    ) -> RedisUrl {
        RedisUrl {
            addr: Addr::Sentinel(Sentinels {
                addrs: addrs.iter().map(|(h, p)| (h.to_string(), *p)).collect(),
                master: master.into(),
                password: sentinel_pass.map(Into::into),
            }),
            user: user.map(Into::into),
            password: pass.map(Into::into),
            db,
        }
    }

    #[test]
    fn good_sentinel_urls() {
        let cases = [
            (
                "redis+sentinel://127.0.0.1:26380,127.0.0.1:26381/m",
                sentinel(
                    &[("127.0.0.1", 26380), ("127.0.0.1", 26381)],
                    "m",
                    None,
                    None,
                    0,
                    None,
                ),
            ),
            (
                "redis+sentinel://s1,s2,s3/mymaster/3",
                sentinel(
                    &[("s1", 26379), ("s2", 26379), ("s3", 26379)],
                    "mymaster",
                    None,
                    None,
                    3,
                    None,
                ),
            ),
            (
                "redis+sentinel://alice:p%40ss@[::1]:5000,h/m%2Fx/",
                sentinel(
                    &[("::1", 5000), ("h", 26379)],
                    "m/x",
                    Some("alice"),
                    Some("p@ss"),
                    0,
                    None,
                ),
            ),
            (
                "redis+sentinel://:pw@h:1/m?sentinel_password=s%26p",
                sentinel(&[("h", 1)], "m", None, Some("pw"), 0, Some("s&p")),
            ),
            (
                "redis+sentinel://h/m/2?sentinel_password=",
                sentinel(&[("h", 26379)], "m", None, None, 2, Some("")),
            ),
        ];
        for (s, want) in cases {
            assert_eq!(parse_url(s), Ok(want), "{s}");
        }
        let u = parse_url("redis+sentinel://h/m").unwrap();
        assert_eq!(u.sentinels().map(|s| s.master.as_str()), Some("m"));
        assert_eq!(parse_url("redis://h").unwrap().sentinels(), None);
    }

    #[test]
    fn bad_sentinel_urls_say_what_is_wrong() {
        let nine = format!("redis+sentinel://{}/m", ["h"; 9].join(","));
        let cases = [
            ("redis+sentinel://h:26379", "no master name"),
            ("redis+sentinel://h:26379/", "no master name"),
            ("redis+sentinel://h:26379//1", "no master name"),
            ("redis+sentinel:///m", "no sentinel"),
            ("redis+sentinel://u:p@/m", "no sentinel"),
            ("redis+sentinel://:1/m", "no host"),
            ("redis+sentinel://h1,,h2/m", "empty sentinel"),
            ("redis+sentinel://h1,/m", "empty sentinel"),
            ("redis+sentinel://h:0/m", "not a port number"),
            ("redis+sentinel://h:1/m/x", "is not a number"),
            ("redis+sentinel://h:1/m%20n", "space"),
            ("redis+sentinel://h:1/m?db=1", "unknown query"),
            (
                "redis+sentinel://h:1/m?sentinel_password=a&sentinel_password=b",
                "twice",
            ),
            ("redis+sentinel://h:1/m#f", "fragment"),
            (nine.as_str(), "at most 8"),
        ];
        for (s, want) in cases {
            match parse_url(s) {
                Ok(u) => panic!("{s} parsed as {u:?}"),
                Err(e) => assert!(e.contains(want), "{s}: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod redact_tests {
    use super::*;

    #[test]
    fn secrets_never_appear_in_errors_or_redacted_urls() {
        let e = parse_url("redis://:hunter2@127.0.0.1:99999").unwrap_err();
        assert!(!e.contains("hunter2") && e.contains(":***@"), "{e}");
        let e = parse_url("redis://u:p%40ss@h:1/x").unwrap_err();
        assert!(!e.contains("p%40ss"), "{e}");
        let e = parse_url("redis+sentinel://h:1/m?sentinel_password=sp&x=1").unwrap_err();
        assert!(!e.contains("=sp"), "{e}");
        assert_eq!(
            redact_url("redis://user:pw@h:6379/2"),
            "redis://user:***@h:6379/2"
        );
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(
            redact_url("redis+sentinel://:a@h1,h2/m?sentinel_password=b"),
            "redis+sentinel://:***@h1,h2/m?sentinel_password=***"
        );
    }
}
