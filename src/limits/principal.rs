//! Who a request stores something for (issue 20, finding 3): decides which quota an
//! entry counts against and whether the anonymous share of a store applies to it.
//! Sans-IO: [`Principal::of`] reads the request's credentials; nothing is looked up
//! elsewhere.

use std::fmt;
use std::net::IpAddr;

use crate::auth::admin::{bearer_token, ADMIN_ROLE};
use crate::auth::{header_value_str, jwt, ApiKeys};
use crate::http::Request;
use crate::time::UnixTime;

/// Who an entry of a store (a task, an agent record) is charged to.
///
/// "Authenticated" ([`Agent`](Principal::Agent), [`Admin`](Principal::Admin)) means the
/// request carried a valid credential: a known `X-API-Key`, or a bearer JWT that
/// verifies (signature, `exp`). Everything else is [`Anonymous`](Principal::Anonymous),
/// counted by its source address: normal traffic (the PyPI agent sends no credentials
/// on HTTP), but all anonymous clients together hold at most the anonymous share of a
/// store (`--anonymous-share-percent`), so that authenticated ones always have room.
///
/// A later rule may add authenticated holders (for example a task whose source agent is
/// bound to the sending address): build an `Agent` for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    /// No valid credential; the quota key is the source address ([`super::client_key`]).
    Anonymous(String),
    /// A known API key with a role other than `admin` (its peer id), or an agent JWT
    /// (its subject): a per-client quota under that identity, no anonymous share.
    Agent(String),
    /// An admin JWT or an API key with the `admin` role: no per-client quota; only the
    /// store's whole budget applies. Also the holder of entries the server itself
    /// creates (`Admin("")`).
    Admin(String),
}

impl Default for Principal {
    /// An anonymous holder with no address (records stored before holders were kept).
    fn default() -> Self {
        Principal::Anonymous(String::new())
    }
}

impl fmt::Display for Principal {
    /// The record form: `anon:<address>`, `agent:<id>`, `admin:<id>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Anonymous(a) => write!(f, "anon:{a}"),
            Principal::Agent(a) => write!(f, "agent:{a}"),
            Principal::Admin(a) => write!(f, "admin:{a}"),
        }
    }
}

impl Principal {
    /// The principal of a request from `peer`: a known `X-API-Key` first, then a valid
    /// `Authorization: Bearer` JWT, else anonymous. An unknown key or a token that does
    /// not verify is not an error here (the route's own gate refuses it where a
    /// credential is required): the request is anonymous.
    pub fn of(
        req: &Request,
        peer: IpAddr,
        keys: &ApiKeys,
        secret: &[u8],
        now: UnixTime,
    ) -> Principal {
        if let Some(entry) = req
            .header("x-api-key")
            .and_then(|v| header_value_str(v.as_bytes()))
            .and_then(|k| keys.lookup(k))
        {
            return Principal::authenticated(&entry.peer_id, &entry.role);
        }
        if let Some(claims) = req
            .header("authorization")
            .and_then(|h| bearer_token(h.as_bytes()))
            .and_then(|t| jwt::verify(secret, t, now.as_secs()).ok())
        {
            return Principal::authenticated(&claims.sub, &claims.role);
        }
        Principal::Anonymous(super::client_key(peer))
    }

    fn authenticated(id: &str, role: &str) -> Principal {
        if role == ADMIN_ROLE {
            Principal::Admin(id.to_owned())
        } else {
            Principal::Agent(id.to_owned())
        }
    }

    /// Whether the anonymous share applies.
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Principal::Anonymous(_))
    }

    /// Whether a per-client quota applies (anonymous clients and agents; not admins).
    pub fn has_quota(&self) -> bool {
        !matches!(self, Principal::Admin(_))
    }

    /// Parses the record form ([`Display`](fmt::Display)). Empty or unknown (a record
    /// written before holders were kept): anonymous with no address, so that it counts
    /// against the anonymous share after a restart rather than escape it.
    pub fn from_record(s: &str) -> Principal {
        match s.split_once(':') {
            Some(("agent", id)) => Principal::Agent(id.to_owned()),
            Some(("admin", id)) => Principal::Admin(id.to_owned()),
            Some(("anon", a)) => Principal::Anonymous(a.to_owned()),
            _ => Principal::default(),
        }
    }

    /// Heap bytes this holder takes in a ledger line (its text).
    pub fn heap_bytes(&self) -> usize {
        match self {
            Principal::Anonymous(s) | Principal::Agent(s) | Principal::Admin(s) => s.capacity(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"s";
    const NOW_SECS: u64 = 1_795_239_689;

    fn req(headers: &[(&str, &str)]) -> Request {
        let mut raw = String::from("POST /api/hub/tasks HTTP/1.1\r\nHost: x\r\n");
        for (k, v) in headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        raw.push_str("\r\n");
        let mut p = crate::http::Parser::new(crate::http::Limits::default());
        p.feed(raw.as_bytes());
        match p.poll() {
            Some(crate::http::Event::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn credentials_decide_the_principal() {
        let keys = ApiKeys::parse(
            br#"{"keys": {"ak_a": {"peer_id": "p-a", "role": "agent"},
                          "ak_o": {"peer_id": "ops", "role": "admin"}}}"#,
        )
        .unwrap();
        let now = UnixTime::from_secs(NOW_SECS);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let of = |h: &[(&str, &str)]| Principal::of(&req(h), ip, &keys, SECRET, now);
        assert_eq!(of(&[]), Principal::Anonymous("10.1.2.3".into()));
        assert_eq!(of(&[("X-API-Key", "ak_a")]), Principal::Agent("p-a".into()));
        assert_eq!(of(&[("X-API-Key", "ak_o")]), Principal::Admin("ops".into()));
        // An unknown key or a bad token: anonymous, not an error.
        assert!(of(&[("X-API-Key", "nope")]).is_anonymous());
        assert!(of(&[("Authorization", "Bearer x.y.z")]).is_anonymous());
        let t = jwt::issue(SECRET, "agent-7", "agent", NOW_SECS);
        let bearer = format!("Bearer {t}");
        assert_eq!(
            of(&[("Authorization", &bearer)]),
            Principal::Agent("agent-7".into())
        );
        let t = jwt::issue(SECRET, "root", ADMIN_ROLE, NOW_SECS);
        let bearer = format!("Bearer {t}");
        assert_eq!(
            of(&[("Authorization", &bearer)]),
            Principal::Admin("root".into())
        );
        // A token signed with another secret is not a credential.
        let t = jwt::issue(b"other", "root", ADMIN_ROLE, NOW_SECS);
        let bearer = format!("Bearer {t}");
        assert!(of(&[("Authorization", &bearer)]).is_anonymous());
    }

    #[test]
    fn record_form_round_trips() {
        for p in [
            Principal::Anonymous("10.0.0.1".into()),
            Principal::Anonymous("2001:db8:0:0::/64".into()),
            Principal::Agent("a:b".into()),
            Principal::Admin(String::new()),
        ] {
            assert_eq!(Principal::from_record(&p.to_string()), p);
        }
        assert_eq!(Principal::from_record(""), Principal::default());
        assert!(Principal::from_record("garbage").is_anonymous());
    }
}
