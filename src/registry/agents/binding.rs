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
//! id back from whoever registered it first, and an admin can move any agent.
//!
//! **Durable** (review of issue 20): agents live in memory, but the tasks targeted at
//! them are durable, so after a restart whoever heartbeated an agent's id first took its
//! pending tasks. A binding is therefore kept in the durable store too
//! (`AgentBindingRecord`), written when an agent is first bound or its binding moves
//! (a [`BindingChange`], which the handler commits before it answers 2xx, and undoes
//! with [`AgentStore::binding_undo`] if the store refuses it); a heartbeat of the same
//! holder writes nothing. While a change is being saved, other registers, heartbeats and
//! deletes of that agent get [`AgentRefusal::Busy`] (the handler retries shortly). At
//! start the stored bindings are loaded into their agent's owner shard
//! ([`AgentStore::load_binding`]): an agent known only by its binding is checked against
//! it like a registered one, and its record takes the binding when it comes back.
//!
//! **Bounded**: a binding exists only while its agent does — in memory as the record, or
//! after a restart as a loaded binding until the agent comes back — and goes with it:
//! `DELETE` (admin) removes both, from memory and the store ([`AgentStore::delete_begin`]).
//! An agent that goes offline keeps its binding until an admin deletes it (as the
//! reference keeps offline agents). A loaded binding counts as an agent against the
//! shard's `agents_max`, so bindings never outnumber what the agent budget allows.
//!
//! The check comes first: a refused request changes nothing and is not charged.
//! Memory: the binding is a client key (at most 45 bytes) or an operator-issued peer
//! id, covered by `AGENT_OVERHEAD_BYTES`; a loaded binding without a record is not
//! charged bytes (its count is bounded by `agents_max`).

use super::{AgentInfo, AgentRefusal, AgentStore, Heartbeat};
use crate::limits::principal::{bound_message, Owner, Principal};
use crate::limits::Charge;
use crate::time::UnixTime;

/// A change of an agent's binding, applied in memory and being committed to the durable
/// store (the agent is flagged saving until [`AgentStore::binding_saved`] or
/// [`AgentStore::binding_undo`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingChange {
    /// The agent.
    pub agent_id: String,
    /// Its binding from now on.
    pub owner: Owner,
    /// Its binding before (`None`: it had none).
    pub before: Option<Owner>,
    /// The agent's record was created by this change (undo removes it).
    pub created: bool,
}

impl BindingChange {
    /// A new binding (the agent had none): held to the durable store's size bound like
    /// any new record. A binding that moves replaces one of about its size.
    pub fn is_new(&self) -> bool {
        self.before.is_none()
    }
}

/// Why [`AgentStore::delete_begin`] did not start a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteStart {
    /// Removed at once (it had no binding to delete from the store).
    Removed,
    /// Flagged saving; commit the binding's deletion, then
    /// [`AgentStore::delete_finish`] (or [`AgentStore::binding_saved`] if refused).
    Deleting,
    /// No such agent (nor binding).
    NotFound,
    /// A change of it is being saved; retry.
    Busy,
}

impl AgentStore {
    /// What agent `agent_id` is bound to, if it is held and bound, or known by a
    /// binding loaded at start.
    pub fn binding(&self, agent_id: &str) -> Option<&Owner> {
        match self.agents.get(agent_id) {
            Some(r) => r.bound.as_ref(),
            None => self.loaded.get(agent_id),
        }
    }

    /// Bindings loaded at start whose agent has not come back yet.
    pub fn loaded_bindings(&self) -> usize {
        self.loaded.len()
    }

    /// Loads a stored binding at start (its agent has no record yet).
    pub fn load_binding(&mut self, agent_id: String, owner: Owner) {
        match self.agents.get_mut(&agent_id) {
            Some(r) => r.bound = Some(owner),
            None => {
                self.loaded.insert(agent_id, owner);
            }
        }
    }

    /// `Ok` when `by` may act as `agent_id` (a new agent, an unbound one, or
    /// [`Principal::may_act_for`]); else the 403 refusal naming what is needed, or
    /// [`AgentRefusal::Busy`] while a change of it is being saved.
    pub fn check_binding(&self, agent_id: &str, by: &Principal) -> Result<(), AgentRefusal> {
        self.check_binding_in(agent_id, by, false)
    }

    /// Makes bindings cluster-wide (`--cluster`, not under `--require-agent-auth`;
    /// `registry::bindings`): see [`check_binding_in`](Self::check_binding_in).
    pub fn enable_cluster_bindings(&mut self) {
        self.cluster_bindings = true;
    }

    /// Whether bindings are cluster-wide.
    pub fn cluster_bindings(&self) -> bool {
        self.cluster_bindings
    }

    /// Whether `by` is a steady caller of `agent_id` here: the agent's record is held
    /// here, bound to exactly what `by` binds (nothing would change).
    fn is_steady(&self, agent_id: &str, by: &Principal) -> bool {
        self.agents
            .get(agent_id)
            .and_then(|r| r.bound.as_ref())
            .is_some_and(|b| by.is_owner(b))
    }

    /// [`check_binding`](Self::check_binding), in a cluster, where the cluster's binding
    /// is the one that counts (`registry::bindings`):
    ///
    /// * an agent held here is checked against its binding here first (a refusal needs
    ///   no round trip); then, unless `by` is a steady caller (bound here to exactly
    ///   what `by` binds: nothing would change), the cluster decides
    ///   ([`AgentRefusal::AskCluster`]: nothing changed);
    /// * an agent not held here is the cluster's to decide: a binding kept here (the
    ///   agent moved away, or a restart) may be stale, since its binding may have moved
    ///   with it.
    ///
    /// `cleared`: the cluster allowed `by` (its binding now names `by`).
    pub fn check_binding_in(
        &self,
        agent_id: &str,
        by: &Principal,
        cleared: bool,
    ) -> Result<(), AgentRefusal> {
        if self.saving.contains(agent_id) {
            return Err(AgentRefusal::Busy);
        }
        let held = self.agents.contains_key(agent_id);
        if self.cluster_bindings && !held {
            return if cleared {
                Ok(())
            } else {
                Err(AgentRefusal::AskCluster)
            };
        }
        if let Some(bound) = self.binding(agent_id) {
            if !by.may_act_for(agent_id, bound) {
                return Err(AgentRefusal::Bound(bound_message(agent_id, bound)));
            }
        }
        if self.cluster_bindings && !cleared && !self.is_steady(agent_id, by) {
            return Err(AgentRefusal::AskCluster);
        }
        Ok(())
    }

    /// Every binding held here (records and loaded ones): what a node asserts into the
    /// cluster's bindings when its link comes up (`registry::bindings::assert_all`).
    pub fn bindings(&self) -> Vec<(String, Owner)> {
        let held = self
            .agents
            .iter()
            .filter_map(|(id, r)| Some((id.clone(), r.bound.clone()?)));
        let loaded = self.loaded.iter().map(|(id, o)| (id.clone(), o.clone()));
        held.chain(loaded).collect()
    }

    /// The cluster holds another binding of `agent_id` (asserted earlier by another
    /// node): it wins here too, in memory (the stored binding is asserted, and loses,
    /// again at the next start). Not while a change of it is being saved (that change
    /// passed the cluster's check). `false` when nothing was changed.
    pub fn adopt_binding(&mut self, agent_id: &str, owner: Owner) -> bool {
        if self.saving.contains(agent_id) {
            return false;
        }
        if let Some(r) = self.agents.get_mut(agent_id) {
            if r.bound.is_some() {
                r.bound = Some(owner);
                return true;
            }
            return false;
        }
        match self.loaded.get_mut(agent_id) {
            Some(b) => {
                *b = owner;
                true
            }
            None => false,
        }
    }

    /// Binds `agent_id` (whose record exists now) to `by`; the change to save, if its
    /// binding is new or moved (the agent is then flagged saving).
    fn bind(&mut self, agent_id: &str, by: &Principal, created: bool) -> Option<BindingChange> {
        if !self.agents.contains_key(agent_id) {
            return None;
        }
        // A loaded binding moves onto the record (a record exists now).
        let loaded = self.loaded.remove(agent_id);
        let r = self.agents.get_mut(agent_id)?;
        if r.bound.is_none() {
            r.bound = loaded;
        }
        // Most heartbeats come from the binding's holder: no new allocation then.
        if r.bound.as_ref().is_some_and(|b| by.is_owner(b)) {
            return None;
        }
        let owner = by.owner();
        let before = r.bound.replace(owner.clone());
        self.saving.insert(agent_id.to_owned());
        Some(BindingChange {
            agent_id: agent_id.to_owned(),
            owner,
            before,
            created,
        })
    }

    /// The durable store acknowledged the agent's binding change (or its deletion was
    /// refused): other changes of it may go on.
    pub fn binding_saved(&mut self, agent_id: &str) {
        self.saving.remove(agent_id);
    }

    /// The durable store refused `change`: puts the binding back as it was, and removes
    /// the record the change created (its binding, if it had one, stays as loaded).
    pub fn binding_undo(&mut self, change: &BindingChange) {
        let id = change.agent_id.as_str();
        self.saving.remove(id);
        if change.created {
            self.remove(id);
            if let Some(b) = &change.before {
                self.loaded.insert(id.to_owned(), b.clone());
            }
        } else if let Some(r) = self.agents.get_mut(id) {
            r.bound.clone_from(&change.before);
        }
    }

    /// `DELETE /api/registry/agents/{id}`, first step: an agent without a binding is
    /// removed at once; one with a binding is flagged saving while its binding's
    /// deletion is committed ([`delete_finish`](Self::delete_finish) then removes it).
    pub fn delete_begin(&mut self, agent_id: &str) -> DeleteStart {
        if self.saving.contains(agent_id) {
            return DeleteStart::Busy;
        }
        if self.binding(agent_id).is_some() {
            self.saving.insert(agent_id.to_owned());
            return DeleteStart::Deleting;
        }
        match self.remove(agent_id) {
            Some(_) => DeleteStart::Removed,
            None => DeleteStart::NotFound,
        }
    }

    /// The binding's deletion is durable: removes the agent and its binding.
    pub fn delete_finish(&mut self, agent_id: &str) {
        self.saving.remove(agent_id);
        self.loaded.remove(agent_id);
        self.remove(agent_id);
    }

    /// `POST /api/registry/agents` by `by`: [`check_binding`](Self::check_binding), then
    /// [`upsert_for`](Self::upsert_for) `client`'s quota, then bound to `by`. The binding
    /// change to commit, if any.
    pub fn upsert_as(
        &mut self,
        info: AgentInfo,
        by: &Principal,
        now: UnixTime,
    ) -> Result<Option<BindingChange>, AgentRefusal> {
        self.upsert_as_in(info, by, now, false)
    }

    /// [`upsert_as`](Self::upsert_as) in a cluster ([`check_binding_in`](Self::check_binding_in)).
    pub fn upsert_as_in(
        &mut self,
        info: AgentInfo,
        by: &Principal,
        now: UnixTime,
        cleared: bool,
    ) -> Result<Option<BindingChange>, AgentRefusal> {
        let id = info.agent_id.clone();
        self.check_binding_in(&id, by, cleared)?;
        let created = !self.agents.contains_key(&id);
        self.upsert_for(info, &Charge::of(by), now)?;
        Ok(self.bind(&id, by, created))
    }

    /// The registry half of a heartbeat by `by` (as [`upsert_as`](Self::upsert_as)).
    pub fn heartbeat_as(
        &mut self,
        hb: &Heartbeat,
        by: &Principal,
        now: UnixTime,
    ) -> Result<Option<BindingChange>, AgentRefusal> {
        self.heartbeat_as_in(hb, by, now, false)
    }

    /// [`heartbeat_as`](Self::heartbeat_as) in a cluster
    /// ([`check_binding_in`](Self::check_binding_in)).
    pub fn heartbeat_as_in(
        &mut self,
        hb: &Heartbeat,
        by: &Principal,
        now: UnixTime,
        cleared: bool,
    ) -> Result<Option<BindingChange>, AgentRefusal> {
        if self.steady_heartbeat(hb, by, now) {
            return Ok(None);
        }
        self.check_binding_in(&hb.agent_id, by, cleared)?;
        let created = !self.agents.contains_key(&hb.agent_id);
        self.heartbeat_for(hb, &Charge::of(by), now)?;
        Ok(self.bind(&hb.agent_id, by, created))
    }

    /// The common heartbeat in one lookup of the record: an agent held here, bound to
    /// `by`, no change of its binding being saved, and charged to `by` the bytes it will
    /// hold after `hb`. Then the general path would pass its checks (the binding's, the
    /// cluster's steady case, a budget admission that adds nothing), charge nothing anew
    /// and change no binding; this does only what that path changes. Applies `hb` and
    /// returns `true`; otherwise changes nothing and returns `false`. Test:
    /// `the_steady_heartbeat_changes_what_the_general_path_changes`.
    fn steady_heartbeat(&mut self, hb: &Heartbeat, by: &Principal, now: UnixTime) -> bool {
        #[cfg(test)]
        if self.general_only {
            return false;
        }
        let id = hb.agent_id.as_str();
        if !self.saving.is_empty() && self.saving.contains(id) {
            return false;
        }
        let Some(rec) = self.agents.get_mut(id) else {
            return false;
        };
        if !rec.bound.as_ref().is_some_and(|b| by.is_owner(b)) {
            return false;
        }
        let bytes = super::budget::heartbeat_bytes(Some(rec), hb);
        if !self.budget.is_charged_to(id, by, bytes) {
            return false;
        }
        rec.beat(hb, now);
        #[cfg(test)]
        {
            self.steady_taken += 1;
        }
        debug_assert_eq!(super::budget::agent_bytes(rec), bytes);
        // What `bind` does for a bound record: a loaded binding of a held agent goes.
        if !self.loaded.is_empty() {
            self.loaded.remove(id);
        }
        self.note(id, true);
        true
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

    /// Registers `id` by `by`; a binding change is acknowledged at once.
    fn up(s: &mut AgentStore, id: &str, by: &Principal) -> Result<(), AgentRefusal> {
        if let Some(change) = s.upsert_as(info(id), by, T0)? {
            s.binding_saved(&change.agent_id);
        }
        Ok(())
    }

    /// Heartbeats `id` by `by` (as [`up`]).
    fn beat(s: &mut AgentStore, id: &str, by: &Principal) -> Result<(), AgentRefusal> {
        if let Some(change) = s.heartbeat_as(&hb(id), by, T0)? {
            s.binding_saved(&change.agent_id);
        }
        Ok(())
    }

    #[test]
    fn an_address_keeps_what_it_registered() {
        let mut s = AgentStore::new(AgentStoreConfig::default());
        up(&mut s, "a", &anon("10.0.0.1")).unwrap();
        assert_eq!(s.binding("a"), Some(&Owner::Address("10.0.0.1".into())));
        // Another address may neither heartbeat nor re-register it; nothing changes.
        let before = s.get("a").unwrap().clone();
        let why = refused(beat(&mut s, "a", &anon("10.0.0.2")));
        assert!(why.contains("address that registered it"), "{why}");
        refused(up(&mut s, "a", &anon("10.0.0.2")));
        assert_eq!(s.get("a"), Some(&before));
        // A key that is not for `a` from another address: refused too.
        refused(beat(&mut s, "a", &key("b-sidecar", "10.0.0.2")));
        // The registering address may, and goes on holding it while the agent is offline.
        s.tick_health(T0.saturating_add(Duration::from_secs(10_000)));
        assert_eq!(s.get("a").unwrap().health, Health::Offline);
        refused(beat(&mut s, "a", &anon("10.0.0.2")));
        beat(&mut s, "a", &anon("10.0.0.1")).unwrap();
        assert_eq!(s.get("a").unwrap().info.capabilities.skills, ["x"]);
        // A new agent id is free for anyone; deleting frees a taken one.
        beat(&mut s, "b", &anon("10.0.0.2")).unwrap();
        s.remove("a");
        up(&mut s, "a", &anon("10.0.0.2")).unwrap();
        assert_eq!(s.binding("a"), Some(&Owner::Address("10.0.0.2".into())));
    }

    #[test]
    fn a_key_binds_and_its_own_credential_or_an_admin_moves_it() {
        let mut s = AgentStore::new(AgentStoreConfig::default());
        // Registered with alpha's key (peer `alpha-sidecar`, the PyPI convention).
        let alpha = key("alpha-sidecar", "10.0.0.1");
        up(&mut s, "alpha", &alpha).unwrap();
        assert_eq!(
            s.binding("alpha"),
            Some(&Owner::Peer("alpha-sidecar".into()))
        );
        // Not even its own address without the key.
        let why = refused(beat(&mut s, "alpha", &anon("10.0.0.1")));
        assert!(why.contains("bound to another API key or token"), "{why}");
        // The key works from anywhere.
        beat(&mut s, "alpha", &key("alpha-sidecar", "10.0.0.9")).unwrap();
        // An admin moves it to itself; then alpha's key takes it back.
        let ops = Principal::credential("ops", "admin", "10.0.0.5");
        up(&mut s, "alpha", &ops).unwrap();
        assert_eq!(s.binding("alpha"), Some(&Owner::Peer("ops".into())));
        refused(beat(&mut s, "alpha", &anon("10.0.0.5")));
        beat(&mut s, "alpha", &alpha).unwrap();
        assert_eq!(
            s.binding("alpha"),
            Some(&Owner::Peer("alpha-sidecar".into()))
        );
    }

    #[test]
    fn the_agents_own_key_takes_its_id_back_from_a_squatter() {
        let mut s = AgentStore::new(AgentStoreConfig::default());
        beat(&mut s, "alpha", &anon("10.6.6.6")).unwrap();
        up(&mut s, "alpha", &key("alpha", "10.0.0.1")).unwrap();
        refused(beat(&mut s, "alpha", &anon("10.6.6.6")));
        // An address binding moves to a credential that comes from it.
        up(&mut s, "c", &anon("10.0.0.3")).unwrap();
        beat(&mut s, "c", &key("shared", "10.0.0.3")).unwrap();
        assert_eq!(s.binding("c"), Some(&Owner::Peer("shared".into())));
        refused(beat(&mut s, "c", &anon("10.0.0.3")));
    }

    #[test]
    fn unbound_records_take_the_next_binding_and_replacing_keeps_it() {
        let mut s = AgentStore::new(AgentStoreConfig::default());
        s.upsert(info("a"), T0).unwrap();
        assert_eq!(s.binding("a"), None);
        beat(&mut s, "a", &anon("10.0.0.2")).unwrap();
        // A plain upsert (no principal) replaces the record, not its binding.
        s.upsert(info("a"), T0).unwrap();
        assert_eq!(s.binding("a"), Some(&Owner::Address("10.0.0.2".into())));
    }

    /// Review of issue 20: what must be saved (a new or moved binding, not a heartbeat
    /// of its holder); other changes of the agent wait while it is saved; a refused
    /// save is undone.
    #[test]
    fn binding_changes_are_saved_one_at_a_time_and_undone_if_refused() {
        let mut s = AgentStore::new(AgentStoreConfig::default());
        let alpha = key("alpha-sidecar", "10.0.0.1");
        let change = s.upsert_as(info("alpha"), &alpha, T0).unwrap().unwrap();
        assert_eq!(
            change,
            BindingChange {
                agent_id: "alpha".into(),
                owner: Owner::Peer("alpha-sidecar".into()),
                before: None,
                created: true,
            }
        );
        assert!(change.is_new());
        // Saving: the holder itself waits, and so does a delete.
        assert_eq!(
            s.heartbeat_as(&hb("alpha"), &alpha, T0),
            Err(AgentRefusal::Busy)
        );
        assert_eq!(s.delete_begin("alpha"), DeleteStart::Busy);
        // Refused by the store: the agent it created is gone.
        s.binding_undo(&change);
        assert!(s.get("alpha").is_none() && s.binding("alpha").is_none());
        s.assert_budget_consistent();
        up(&mut s, "alpha", &alpha).unwrap();
        // A heartbeat of its holder changes nothing to save.
        assert_eq!(s.heartbeat_as(&hb("alpha"), &alpha, T0), Ok(None));
        // An admin moves it: a moved binding (undone, it goes back).
        let ops = Principal::credential("ops", "admin", "10.0.0.5");
        let moved = s.upsert_as(info("alpha"), &ops, T0).unwrap().unwrap();
        assert!(!moved.is_new() && !moved.created);
        assert_eq!(moved.before, Some(Owner::Peer("alpha-sidecar".into())));
        s.binding_undo(&moved);
        assert_eq!(
            s.binding("alpha"),
            Some(&Owner::Peer("alpha-sidecar".into()))
        );
        assert!(s.get("alpha").is_some());
        assert_eq!(s.heartbeat_as(&hb("alpha"), &alpha, T0), Ok(None));
    }

    /// Review of issue 20: after a restart an agent known only by its stored binding is
    /// checked against it; its holder takes its record back without a save; it counts
    /// against `agents_max`; a delete removes it.
    #[test]
    fn an_agent_that_moved_to_another_node_keeps_its_binding_here() {
        let mut s = AgentStore::new(AgentStoreConfig::default());
        s.enable_mirror();
        up(&mut s, "alpha", &anon("10.0.0.1")).unwrap();
        assert!(s.drop_moved("alpha"));
        assert!(s.get("alpha").is_none());
        assert_eq!(s.loaded_bindings(), 1);
        // Another client may not take the id here; its holder may.
        refused(beat(&mut s, "alpha", &anon("10.6.6.6")));
        beat(&mut s, "alpha", &anon("10.0.0.1")).unwrap();
        assert_eq!((s.len(), s.loaded_bindings()), (1, 0));
        // Not dropped while a change of its binding is being saved.
        let change = s
            .upsert_as(info("alpha"), &key("alpha-sidecar", "10.0.0.1"), T0)
            .unwrap()
            .unwrap();
        assert!(!s.drop_moved("alpha"));
        s.binding_saved(&change.agent_id);
        assert!(s.drop_moved("alpha"));
        assert!(!s.drop_moved("alpha"), "no longer here");
    }

    /// Issue 25: in a cluster only a steady caller of an agent held here skips the
    /// cluster's check; a refusal here needs none; an agent not held here is the
    /// cluster's to decide, whatever binding is kept here; another node's binding
    /// asserted first wins here.
    #[test]
    fn in_a_cluster_only_steady_callers_skip_the_clusters_check() {
        let mut s = AgentStore::new(AgentStoreConfig::default());
        s.enable_mirror();
        s.enable_cluster_bindings();
        let a = anon("10.0.0.1");
        assert_eq!(
            s.upsert_as(info("a"), &a, T0),
            Err(AgentRefusal::AskCluster)
        );
        assert!(s.get("a").is_none() && s.binding("a").is_none());
        let change = s.upsert_as_in(info("a"), &a, T0, true).unwrap().unwrap();
        s.binding_saved(&change.agent_id);
        // Steady: no round trip.
        assert_eq!(s.heartbeat_as(&hb("a"), &a, T0), Ok(None));
        // Refused here without asking.
        refused(beat(&mut s, "a", &anon("10.0.0.2")));
        // The agent's own key would move the binding: the cluster's moves first.
        let own = key("a-sidecar", "10.0.0.9");
        assert_eq!(
            s.heartbeat_as(&hb("a"), &own, T0),
            Err(AgentRefusal::AskCluster)
        );
        // Moved to another node: the binding kept here does not decide.
        assert!(s.drop_moved("a"));
        assert_eq!(
            s.heartbeat_as(&hb("a"), &a, T0),
            Err(AgentRefusal::AskCluster)
        );
        let b = anon("10.0.0.2");
        let moved = s.heartbeat_as_in(&hb("a"), &b, T0, true).unwrap().unwrap();
        assert_eq!(moved.before, Some(Owner::Address("10.0.0.1".into())));
        s.binding_saved(&moved.agent_id);
        assert_eq!(
            s.bindings(),
            [("a".into(), Owner::Address("10.0.0.2".into()))]
        );
        // Another node bound it first: its holder acts here, this one is refused.
        assert!(s.adopt_binding("a", Owner::Peer("p".into())));
        refused(beat(&mut s, "a", &b));
        assert!(!s.adopt_binding("nope", Owner::Peer("p".into())));
    }

    #[test]
    fn loaded_bindings_hold_an_agent_until_it_comes_back_or_is_deleted() {
        let mut s = AgentStore::new(AgentStoreConfig { agents_max: 3 });
        s.load_binding("alpha".into(), Owner::Peer("alpha-sidecar".into()));
        s.load_binding("gamma".into(), Owner::Address("10.0.0.7".into()));
        assert_eq!(s.loaded_bindings(), 2);
        assert!(s.get("alpha").is_none());
        // Anyone else: refused, nothing created.
        let why = refused(beat(&mut s, "alpha", &anon("10.6.6.6")));
        assert!(why.contains("another API key or token"), "{why}");
        refused(beat(&mut s, "gamma", &anon("10.6.6.6")));
        assert_eq!((s.len(), s.loaded_bindings()), (0, 2));
        // The loaded bindings count: one new agent fits, a second does not.
        up(&mut s, "new", &anon("10.0.0.9")).unwrap();
        assert!(matches!(
            up(&mut s, "new2", &anon("10.0.0.9")),
            Err(AgentRefusal::Budget(_))
        ));
        // Its holder comes back: the binding moves onto the record, nothing to save
        // (also when the store is full: it takes its own place).
        let alpha = key("alpha-sidecar", "10.0.0.1");
        assert_eq!(s.heartbeat_as(&hb("alpha"), &alpha, T0), Ok(None));
        assert_eq!((s.len(), s.loaded_bindings()), (2, 1));
        assert_eq!(
            s.binding("alpha"),
            Some(&Owner::Peer("alpha-sidecar".into()))
        );
        // A credential for gamma takes it over: a moved binding to save; undone, the
        // loaded binding is back and the record gone.
        let g = key("gamma-sidecar", "10.0.0.1");
        let change = s.heartbeat_as(&hb("gamma"), &g, T0).unwrap().unwrap();
        assert!(change.created && !change.is_new());
        s.binding_undo(&change);
        assert_eq!((s.len(), s.loaded_bindings()), (2, 1));
        assert_eq!(s.binding("gamma"), Some(&Owner::Address("10.0.0.7".into())));
        // An admin deletes gamma, known only by its binding: saved, then removed.
        assert_eq!(s.delete_begin("gamma"), DeleteStart::Deleting);
        assert_eq!(s.delete_begin("gamma"), DeleteStart::Busy);
        s.delete_finish("gamma");
        assert_eq!(s.binding("gamma"), None);
        assert_eq!(s.delete_begin("gamma"), DeleteStart::NotFound);
        // A refused deletion leaves the agent as it was.
        assert_eq!(s.delete_begin("alpha"), DeleteStart::Deleting);
        s.binding_saved("alpha");
        assert!(s.get("alpha").is_some());
        // An unbound record goes at once.
        s.upsert(info("plain"), T0).unwrap();
        assert_eq!(s.delete_begin("plain"), DeleteStart::Removed);
        s.assert_budget_consistent();
    }

    /// Random registers, heartbeats, saves, undos, deletes and loaded bindings by a few
    /// principals, applied to two stores: one where heartbeats may take the steady path
    /// and one where they never do. Every answer and everything a store holds agree, and
    /// the steady path was taken (often).
    #[test]
    fn the_steady_heartbeat_changes_what_the_general_path_changes() {
        use crate::registry::AgentBudgetConfig;
        let config = AgentBudgetConfig {
            bytes_max: 6 * 1200,
            client_agents_max: 2,
            client_bytes_max: 2 * 1150,
            anonymous_share_percent: 70,
        };
        let new_store = |general_only| {
            let mut s = AgentStore::new(AgentStoreConfig { agents_max: 5 });
            s.set_budget(config);
            s.general_only = general_only;
            s
        };
        let (mut fast, mut general) = (new_store(false), new_store(true));
        let who = [
            anon("10.0.0.1"),
            anon("10.0.0.2"),
            key("a0", "10.0.0.1"),
            key("a1-sidecar", "10.0.0.3"),
            Principal::credential("ops", crate::limits::principal::ADMIN_ROLE, "10.0.0.4"),
        ];
        let ids = ["a0", "a1", "a2", "a3"];
        let words = ["", "m", "host", "s-22"];
        struct Rng(u64);
        impl Rng {
            fn below(&mut self, n: usize) -> usize {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 % n as u64) as usize
            }
            /// Mostly 0 (the usual value), now and then another below `k`.
            fn vary(&mut self, k: usize) -> usize {
                if self.below(8) == 0 {
                    self.below(k)
                } else {
                    0
                }
            }
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut pending: Vec<BindingChange> = Vec::new();
        for step in 0..20_000 {
            // Mostly each agent's usual principal, and mostly its usual fields: as
            // agents heartbeat, with changes now and then.
            let n = rng.below(ids.len());
            let id = ids[n];
            let by = &who[if rng.below(4) == 0 {
                rng.below(who.len())
            } else {
                n
            }];
            let op = rng.below(100);
            let (a, b) = if op < 70 {
                let mut h = hb(id);
                h.hostname = words[rng.vary(2) + 1].into();
                h.mode = words[rng.vary(2)].into();
                h.sidecar_peer_id = words[rng.vary(4)].into();
                h.status = words[rng.vary(2)].into();
                h.skill_names = (0..rng.vary(3)).map(|i| format!("k{i}")).collect();
                (
                    fast.heartbeat_as(&h, by, T0),
                    general.heartbeat_as(&h, by, T0),
                )
            } else if op < 80 {
                let mut i = info(id);
                i.capabilities.mode = words[rng.below(4)].into();
                i.capabilities.mcp_servers = (0..rng.below(2)).map(|i| format!("mcp{i}")).collect();
                i.sidecar_peer_id = words[rng.below(4)].into();
                (
                    fast.upsert_as(i.clone(), by, T0),
                    general.upsert_as(i, by, T0),
                )
            } else if op < 94 {
                // Save or undo a change being saved.
                if !pending.is_empty() {
                    let c = pending.swap_remove(rng.below(pending.len()));
                    if rng.below(4) == 0 {
                        fast.binding_undo(&c);
                        general.binding_undo(&c);
                    } else {
                        fast.binding_saved(&c.agent_id);
                        general.binding_saved(&c.agent_id);
                    }
                }
                continue;
            } else if op < 97 {
                assert_eq!(fast.delete_begin(id), general.delete_begin(id));
                fast.delete_finish(id);
                general.delete_finish(id);
                pending.retain(|c| c.agent_id != id);
                continue;
            } else {
                if fast.get(id).is_none() && !pending.iter().any(|c| c.agent_id == id) {
                    fast.load_binding(id.into(), by.owner());
                    general.load_binding(id.into(), by.owner());
                }
                continue;
            };
            assert_eq!(a, b, "step {step}: {id} by {by:?}");
            if let Ok(Some(c)) = a {
                pending.push(c);
            }
            let records = |s: &AgentStore| s.list().cloned().collect::<Vec<_>>();
            assert_eq!(records(&fast), records(&general), "step {step}");
            let mut bf = fast.bindings();
            let mut bg = general.bindings();
            bf.sort_by_key(|b| format!("{b:?}"));
            bg.sort_by_key(|b| format!("{b:?}"));
            assert_eq!(bf, bg, "step {step}");
            for p in &who {
                let c = Charge::of(p);
                assert_eq!(fast.usage(&c), general.usage(&c), "step {step}");
            }
            assert_eq!(fast.anonymous_usage(), general.anonymous_usage());
            assert_eq!(fast.refusals(), general.refusals(), "step {step}");
            fast.assert_budget_consistent();
            general.assert_budget_consistent();
        }
        assert!(
            fast.steady_taken > 2_000,
            "the steady path was taken {} times",
            fast.steady_taken
        );
        assert_eq!(general.steady_taken, 0);
    }
}
