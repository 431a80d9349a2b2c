//! Who acts on the agent and task routes, and what an agent or a task is bound to
//! (issue 20, finding 2): types the services share (registry binds agents, hub records
//! who created and claimed a task, limits charges what they store). How a request's
//! credential is checked is auth's (`auth::principal::resolve`).
//!
//! A request's [`Principal`] is its credential, if it has one — a known `X-API-Key`
//! (the PyPI agent sends its sidecar's key on register, heartbeat and task result) or a
//! valid `Authorization: Bearer` JWT — and always the client key of its source address
//! ([`super::client_key`]: the address, IPv6 by /64). An agent record is bound to an
//! [`Owner`]: the credential's peer id if a credential created it, else the address.
//!
//! * A credential **is for** agent `X` when its peer id is `X` or `X-sidecar` (the PyPI
//!   agent's sidecar convention, README "Two agents in five minutes"), or its role is
//!   `admin`: it may always act as `X`, and moves `X`'s binding to itself.
//! * Otherwise a request may act as `X` only if it [holds](Principal::holds) `X`'s
//!   binding: the same credential peer, or, for an address-bound agent, the same
//!   address. Anything else is 403 ([`bound_message`]).

/// The role of an operator's credential: acts for any agent, opens the operator routes.
pub const ADMIN_ROLE: &str = "admin";

/// Suffix of a PyPI agent's sidecar peer id: agent `alpha` runs sidecar `alpha-sidecar`.
pub const SIDECAR_SUFFIX: &str = "-sidecar";

/// What an agent is bound to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// The peer id of the API key or JWT that created it (or last acted for it).
    Peer(String),
    /// The client key of the source address that created it without credentials.
    Address(String),
}

/// Who created or claimed a task: the credential's peer id (if any) and the source
/// address. Kept with the task (and in its durable record) so that the task's shard can
/// check an update or a read without asking the agent's shard.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Holder {
    /// The credential's peer id; `None`: the request had none.
    pub peer: Option<String>,
    /// The credential's role was `admin` (what the task is charged to: no quota).
    pub admin: bool,
    /// The client key of the source address.
    pub address: String,
}

impl Holder {
    /// What this holder binds: its peer if it had a credential, else its address.
    pub fn owner(&self) -> Owner {
        match &self.peer {
            Some(p) => Owner::Peer(p.clone()),
            None => Owner::Address(self.address.clone()),
        }
    }
}

/// The caller of an agent or task route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The credential's peer id (a known API key's `peer_id`, a JWT's `sub`); `None`:
    /// no credential.
    pub peer: Option<String>,
    /// Whether the credential's role is `admin`.
    pub admin: bool,
    /// The client key of the source address.
    pub address: String,
}

impl Principal {
    /// A request without credentials from `address` (a client key).
    pub fn anonymous(address: impl Into<String>) -> Principal {
        Principal {
            peer: None,
            admin: false,
            address: address.into(),
        }
    }

    /// A request with a credential for `peer` with `role`.
    pub fn credential(peer: impl Into<String>, role: &str, address: impl Into<String>) -> Self {
        Principal {
            peer: Some(peer.into()),
            admin: role == ADMIN_ROLE,
            address: address.into(),
        }
    }

    /// What an agent this principal creates or acts for is bound to afterwards.
    pub fn owner(&self) -> Owner {
        self.holder().owner()
    }

    /// Whether `owner` is what [`owner`](Self::owner) would give (without building it).
    pub fn is_owner(&self, owner: &Owner) -> bool {
        match (owner, &self.peer) {
            (Owner::Peer(p), Some(q)) => p == q,
            (Owner::Address(a), None) => *a == self.address,
            _ => false,
        }
    }

    /// This principal as a task's creator or claimer.
    pub fn holder(&self) -> Holder {
        Holder {
            peer: self.peer.clone(),
            admin: self.admin,
            address: self.address.clone(),
        }
    }

    /// Whether the credential is for agent `agent_id`: an admin's, or its peer id is
    /// `agent_id` or `agent_id-sidecar`. Never true without a credential, or for `""`.
    pub fn is_for(&self, agent_id: &str) -> bool {
        if self.admin {
            return true;
        }
        match &self.peer {
            Some(p) if !agent_id.is_empty() => {
                p == agent_id
                    || p.strip_suffix(SIDECAR_SUFFIX)
                        .is_some_and(|name| name == agent_id)
            }
            _ => false,
        }
    }

    /// Whether this principal holds `owner`: the same credential peer, or the same
    /// source address for an address binding.
    pub fn holds(&self, owner: &Owner) -> bool {
        match owner {
            Owner::Peer(p) => self.peer.as_deref() == Some(p.as_str()),
            Owner::Address(a) => self.address == *a,
        }
    }

    /// Whether this principal may act as agent `agent_id` bound to `bound` (register,
    /// heartbeat): a credential for it, or one that holds the binding.
    pub fn may_act_for(&self, agent_id: &str, bound: &Owner) -> bool {
        self.is_for(agent_id) || self.holds(bound)
    }

    /// Whether this principal is the task creator or claimer `h` for reading the task:
    /// it holds `h`'s owner, or comes from `h`'s address.
    pub fn is_or_near(&self, h: &Holder) -> bool {
        self.holds(&h.owner()) || self.address == h.address
    }
}

/// The `error` of a 403 for acting as `agent_id`, bound to `bound`, without holding it.
/// Names what would be accepted; never the address, and never the bound peer (the
/// requester has no credential for it: naming it would tell whose key an agent uses, or
/// that a guessed key is one).
pub fn bound_message(agent_id: &str, bound: &Owner) -> String {
    let needs = format!(
        "an API key or token for `{agent_id}` or `{agent_id}{SIDECAR_SUFFIX}`, or an admin \
         token (an admin may also delete the agent)"
    );
    match bound {
        Owner::Peer(_) => format!(
            "agent `{agent_id}` is bound to another API key or token (the one that \
             registered it or last acted for it): send that credential, {needs}"
        ),
        Owner::Address(_) => format!(
            "agent `{agent_id}` is bound to the address that registered it: act from that \
             address, or send {needs}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_for_the_agent_or_its_sidecar() {
        let p = Principal::credential("alpha-sidecar", "agent", "a");
        assert!(p.is_for("alpha"));
        assert!(!p.is_for("alpha-sidecar-x"));
        assert!(!p.is_for("beta"));
        assert!(!p.is_for(""));
        let p = Principal::credential("alpha", "agent", "a");
        assert!(p.is_for("alpha"));
        assert!(!p.is_for("alph"));
        assert!(Principal::credential("ops", "admin", "a").is_for("anyone"));
        assert!(!Principal::anonymous("a").is_for("alpha"));
        // "-sidecar" alone is not for the empty agent.
        assert!(!Principal::credential("-sidecar", "agent", "a").is_for(""));
    }

    #[test]
    fn binding_rules() {
        let at = |a: &str| Owner::Address(a.into());
        let peer = |p: &str| Owner::Peer(p.into());
        let anon = Principal::anonymous("10.0.0.1");
        assert!(anon.may_act_for("x", &at("10.0.0.1")));
        assert!(!anon.may_act_for("x", &at("10.0.0.2")));
        assert!(!anon.may_act_for("x", &peer("x-sidecar")));
        // A credential not for x: its own binding, or x's address.
        let k = Principal::credential("agent-7", "agent", "10.0.0.1");
        assert!(k.may_act_for("x", &peer("agent-7")));
        assert!(k.may_act_for("x", &at("10.0.0.1")));
        assert!(!k.may_act_for("x", &at("10.0.0.2")));
        assert!(!k.may_act_for("x", &peer("agent-8")));
        // A credential for x acts whatever the binding, and moves it to itself.
        let mine = Principal::credential("x-sidecar", "agent", "10.9.9.9");
        assert!(mine.may_act_for("x", &peer("agent-8")));
        assert!(mine.may_act_for("x", &at("10.0.0.2")));
        assert_eq!(mine.owner(), peer("x-sidecar"));
        assert_eq!(anon.owner(), at("10.0.0.1"));
        for p in [&anon, &k, &mine] {
            assert!(p.is_owner(&p.owner()));
        }
        assert!(!k.is_owner(&at("10.0.0.1")) && !anon.is_owner(&peer("10.0.0.1")));
        // Reading: near the holder's address is enough.
        let creator = k.holder();
        assert!(anon.is_or_near(&creator));
        assert!(!Principal::anonymous("10.0.0.2").is_or_near(&creator));
        assert!(Principal::credential("agent-7", "agent", "10.0.0.2").is_or_near(&creator));
    }

    #[test]
    fn refusals_name_what_is_needed_but_never_the_address() {
        let m = bound_message("x", &Owner::Address("10.0.0.1".into()));
        assert!(!m.contains("10.0.0.1"), "{m}");
        assert!(m.contains("`x-sidecar`") && m.contains("admin"), "{m}");
        let m = bound_message("x", &Owner::Peer("agent-7".into()));
        assert!(!m.contains("agent-7"), "{m}");
        assert!(
            m.contains("another API key or token") && m.contains("`x-sidecar`"),
            "{m}"
        );
    }
}
