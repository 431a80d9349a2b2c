//! Agent bindings (issue 20, finding 2): in the default configuration an agent id
//! belongs to whoever registered it, so no client without credentials can act as an
//! agent another client registered.
//!
//! Each record is bound ([`AgentRecord::bound`]) to the [`Owner`] of the principal that
//! created it: its credential's peer id, or its source address. A register or heartbeat
//! of a known agent is refused with [`AgentRefusal::Bound`] (403) unless the principal
//! [may act for it](Principal::may_act_for): a credential for the agent (its peer id is
//! the agent id or `<agent id>-sidecar`, or an admin's), or one that holds the binding.
//! A principal that acts moves the binding to itself, so the agent's own key takes its
//! id back from whoever registered it first, and an admin can move any agent. The
//! binding lives as long as the record: `DELETE` (admin) removes both. Agents are not
//! durable, so neither is the binding (a restart forgets both).
//!
//! The check comes first: a refused request changes nothing and is not charged.
//! Memory: the binding is a client key (at most 45 bytes) or an operator-issued peer
//! id, covered by `AGENT_OVERHEAD_BYTES`.

use super::{AgentInfo, AgentRefusal, AgentStore, Heartbeat};
use crate::auth::principal::{bound_message, Owner, Principal};
use crate::limits::Charge;
use crate::time::UnixTime;

impl AgentStore {
    /// What agent `agent_id` is bound to, if it is held and bound.
    pub fn binding(&self, agent_id: &str) -> Option<&Owner> {
        self.agents.get(agent_id).and_then(|r| r.bound.as_ref())
    }

    /// `Ok` when `by` may act as `agent_id` (a new agent, an unbound one, or
    /// [`Principal::may_act_for`]); else the 403 refusal naming what is needed.
    pub fn check_binding(&self, agent_id: &str, by: &Principal) -> Result<(), AgentRefusal> {
        match self.binding(agent_id) {
            Some(bound) if !by.may_act_for(agent_id, bound) => {
                Err(AgentRefusal::Bound(bound_message(agent_id, bound)))
            }
            _ => Ok(()),
        }
    }

    fn bind(&mut self, agent_id: &str, by: &Principal) {
        if let Some(r) = self.agents.get_mut(agent_id) {
            // Most heartbeats come from the binding's holder: no new allocation then.
            if !r.bound.as_ref().is_some_and(|b| by.is_owner(b)) {
                r.bound = Some(by.owner());
            }
        }
    }

    /// `POST /api/registry/agents` by `by`: [`check_binding`](Self::check_binding), then
    /// [`upsert_for`](Self::upsert_for) `client`'s quota, then bound to `by`.
    pub fn upsert_as(
        &mut self,
        info: AgentInfo,
        by: &Principal,
        now: UnixTime,
    ) -> Result<(), AgentRefusal> {
        let id = info.agent_id.clone();
        self.check_binding(&id, by)?;
        self.upsert_for(info, &Charge::of(by), now)?;
        self.bind(&id, by);
        Ok(())
    }

    /// The registry half of a heartbeat by `by` (as [`upsert_as`](Self::upsert_as)).
    pub fn heartbeat_as(
        &mut self,
        hb: &Heartbeat,
        by: &Principal,
        now: UnixTime,
    ) -> Result<(), AgentRefusal> {
        self.check_binding(&hb.agent_id, by)?;
        self.heartbeat_for(hb, &Charge::of(by), now)?;
        self.bind(&hb.agent_id, by);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{AgentStoreConfig, Health};
    use std::time::Duration;
    use wire::json::parse_body;

    const T0: UnixTime = UnixTime(1_700_000_000_000_000_000);

    fn info(id: &str) -> AgentInfo {
        parse_body(format!(r#"{{"agent_id":"{id}","hostname":"h"}}"#).as_bytes()).unwrap()
    }

    fn hb(id: &str) -> Heartbeat {
        parse_body(format!(r#"{{"agent_id":"{id}","skill_names":["x"]}}"#).as_bytes()).unwrap()
    }

    fn anon(addr: &str) -> Principal {
        Principal::anonymous(addr)
    }

    fn key(peer: &str, addr: &str) -> Principal {
        Principal::credential(peer, "agent", addr)
    }

    fn refused(r: Result<(), AgentRefusal>) -> String {
        match r {
            Err(AgentRefusal::Bound(why)) => why,
            other => panic!("expected a binding refusal, got {other:?}"),
        }
    }

    #[test]
    fn an_address_keeps_what_it_registered() {
        let mut s = AgentStore::new(AgentStoreConfig::default());
        s.upsert_as(info("a"), &anon("10.0.0.1"), T0).unwrap();
        assert_eq!(s.binding("a"), Some(&Owner::Address("10.0.0.1".into())));
        // Another address may neither heartbeat nor re-register it; nothing changes.
        let before = s.get("a").unwrap().clone();
        let why = refused(s.heartbeat_as(&hb("a"), &anon("10.0.0.2"), T0));
        assert!(why.contains("address that registered it"), "{why}");
        refused(s.upsert_as(info("a"), &anon("10.0.0.2"), T0));
        assert_eq!(s.get("a"), Some(&before));
        // A key that is not for `a` from another address: refused too.
        refused(s.heartbeat_as(&hb("a"), &key("b-sidecar", "10.0.0.2"), T0));
        // The registering address may, and goes on holding it while the agent is offline.
        s.tick_health(T0.saturating_add(Duration::from_secs(10_000)));
        assert_eq!(s.get("a").unwrap().health, Health::Offline);
        refused(s.heartbeat_as(&hb("a"), &anon("10.0.0.2"), T0));
        s.heartbeat_as(&hb("a"), &anon("10.0.0.1"), T0).unwrap();
        assert_eq!(s.get("a").unwrap().info.capabilities.skills, ["x"]);
        // A new agent id is free for anyone; deleting frees a taken one.
        s.heartbeat_as(&hb("b"), &anon("10.0.0.2"), T0).unwrap();
        s.remove("a");
        s.upsert_as(info("a"), &anon("10.0.0.2"), T0).unwrap();
        assert_eq!(s.binding("a"), Some(&Owner::Address("10.0.0.2".into())));
    }

    #[test]
    fn a_key_binds_and_its_own_credential_or_an_admin_moves_it() {
        let mut s = AgentStore::new(AgentStoreConfig::default());
        // Registered with alpha's key (peer `alpha-sidecar`, the PyPI convention).
        let alpha = key("alpha-sidecar", "10.0.0.1");
        s.upsert_as(info("alpha"), &alpha, T0).unwrap();
        assert_eq!(
            s.binding("alpha"),
            Some(&Owner::Peer("alpha-sidecar".into()))
        );
        // Not even its own address without the key.
        let why = refused(s.heartbeat_as(&hb("alpha"), &anon("10.0.0.1"), T0));
        assert!(why.contains("bound to another API key or token"), "{why}");
        // The key works from anywhere.
        s.heartbeat_as(&hb("alpha"), &key("alpha-sidecar", "10.0.0.9"), T0)
            .unwrap();
        // An admin moves it to itself; then alpha's key takes it back.
        let ops = Principal::credential("ops", "admin", "10.0.0.5");
        s.upsert_as(info("alpha"), &ops, T0).unwrap();
        assert_eq!(s.binding("alpha"), Some(&Owner::Peer("ops".into())));
        refused(s.heartbeat_as(&hb("alpha"), &anon("10.0.0.5"), T0));
        s.heartbeat_as(&hb("alpha"), &alpha, T0).unwrap();
        assert_eq!(
            s.binding("alpha"),
            Some(&Owner::Peer("alpha-sidecar".into()))
        );
    }

    #[test]
    fn the_agents_own_key_takes_its_id_back_from_a_squatter() {
        let mut s = AgentStore::new(AgentStoreConfig::default());
        s.heartbeat_as(&hb("alpha"), &anon("10.6.6.6"), T0).unwrap();
        s.upsert_as(info("alpha"), &key("alpha", "10.0.0.1"), T0)
            .unwrap();
        refused(s.heartbeat_as(&hb("alpha"), &anon("10.6.6.6"), T0));
        // An address binding moves to a credential that comes from it.
        s.upsert_as(info("c"), &anon("10.0.0.3"), T0).unwrap();
        s.heartbeat_as(&hb("c"), &key("shared", "10.0.0.3"), T0)
            .unwrap();
        assert_eq!(s.binding("c"), Some(&Owner::Peer("shared".into())));
        refused(s.heartbeat_as(&hb("c"), &anon("10.0.0.3"), T0));
    }

    #[test]
    fn unbound_records_take_the_next_binding_and_replacing_keeps_it() {
        let mut s = AgentStore::new(AgentStoreConfig::default());
        s.upsert(info("a"), T0).unwrap();
        assert_eq!(s.binding("a"), None);
        s.heartbeat_as(&hb("a"), &anon("10.0.0.2"), T0).unwrap();
        // A plain upsert (no principal) replaces the record, not its binding.
        s.upsert(info("a"), T0).unwrap();
        assert_eq!(s.binding("a"), Some(&Owner::Address("10.0.0.2".into())));
    }
}
