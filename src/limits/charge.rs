//! What an entry of a store is charged to (issue 20, finding 3): decides which quota
//! it counts against and whether the anonymous share of a store applies to it. Derived
//! from the request's [`Principal`] (`auth::principal`: its credential, else its
//! address), and for a loaded task from its stored creator.

use std::fmt;

#[cfg(test)]
use super::principal::ADMIN_ROLE;
use super::principal::{Holder, Principal};

/// Who an entry of a store (a task, an agent record) is charged to.
///
/// "Authenticated" ([`Agent`](Charge::Agent), [`Admin`](Charge::Admin)) means the
/// request carried a valid credential: a known `X-API-Key`, or a bearer JWT that
/// verifies (signature, `exp`). Everything else is [`Anonymous`](Charge::Anonymous),
/// counted by its source address: normal traffic (the PyPI agent sends no credentials
/// on HTTP), but all anonymous clients together hold at most the anonymous share of a
/// store (`--anonymous-share-percent`), so that authenticated ones always have room.
///
/// A later rule may add authenticated holders (for example a task whose source agent is
/// bound to the sending address): build an `Agent` for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Charge {
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

impl Default for Charge {
    /// An anonymous holder with no address (records stored before holders were kept).
    fn default() -> Self {
        Charge::Anonymous(String::new())
    }
}

impl fmt::Display for Charge {
    /// As logs show it: `anon:<address>`, `agent:<id>`, `admin:<id>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Charge::Anonymous(a) => write!(f, "anon:{a}"),
            Charge::Agent(a) => write!(f, "agent:{a}"),
            Charge::Admin(a) => write!(f, "admin:{a}"),
        }
    }
}

impl Charge {
    /// What an entry stored for `p` is charged to: its credential's identity (an admin's
    /// no quota), or without one its source address.
    pub fn of(p: &Principal) -> Charge {
        match (&p.peer, p.admin) {
            (Some(id), true) => Charge::Admin(id.clone()),
            (Some(id), false) => Charge::Agent(id.clone()),
            (None, _) => Charge::Anonymous(p.address.clone()),
        }
    }

    /// Whether this is [`Charge::of`]`(p)` (without building it).
    pub fn is_of(&self, p: &Principal) -> bool {
        match (self, &p.peer, p.admin) {
            (Charge::Admin(c), Some(id), true) | (Charge::Agent(c), Some(id), false) => c == id,
            (Charge::Anonymous(c), None, _) => *c == p.address,
            _ => false,
        }
    }

    /// What a loaded task is charged to: its creator as stored (`None`: a record
    /// written before creators were kept, charged as anonymous with no address, so that
    /// it counts against the anonymous share rather than escape it).
    pub fn of_holder(h: Option<&Holder>) -> Charge {
        match h {
            Some(Holder {
                peer: Some(id),
                admin: true,
                ..
            }) => Charge::Admin(id.clone()),
            Some(Holder { peer: Some(id), .. }) => Charge::Agent(id.clone()),
            Some(Holder {
                peer: None,
                address,
                ..
            }) => Charge::Anonymous(address.clone()),
            None => Charge::default(),
        }
    }

    /// Whether the anonymous share applies.
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Charge::Anonymous(_))
    }

    /// Whether a per-client quota applies (anonymous clients and agents; not admins).
    pub fn has_quota(&self) -> bool {
        !matches!(self, Charge::Admin(_))
    }

    /// Heap bytes this holder takes in a ledger line (its text).
    pub fn heap_bytes(&self) -> usize {
        match self {
            Charge::Anonymous(s) | Charge::Agent(s) | Charge::Admin(s) => s.capacity(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_decide_the_charge() {
        let anon = Principal::anonymous("10.1.2.3");
        assert_eq!(Charge::of(&anon), Charge::Anonymous("10.1.2.3".into()));
        let agent = Principal::credential("p-a", "agent", "10.1.2.3");
        assert_eq!(Charge::of(&agent), Charge::Agent("p-a".into()));
        let admin = Principal::credential("ops", ADMIN_ROLE, "10.1.2.3");
        assert_eq!(Charge::of(&admin), Charge::Admin("ops".into()));
        // A loaded task is charged as it was created.
        for p in [anon, agent, admin] {
            assert_eq!(Charge::of_holder(Some(&p.holder())), Charge::of(&p));
        }
        assert_eq!(Charge::of_holder(None), Charge::Anonymous(String::new()));
    }
}
