//! The agent store's memory budget and per-client quotas (issue 13, finding 1), and the
//! anonymous share (issue 20, finding 3).
//!
//! Each record is charged [`agent_bytes`]; a shard holds at most
//! [`AgentBudgetConfig::bytes_max`] bytes of agents, and one client (see
//! [`Charge`]: the identity of a valid credential, else the source address) may
//! create at most `client_agents_max` agents and `client_bytes_max` bytes on a shard;
//! anonymous clients together at most `anonymous_share_percent` of the agents and bytes.
//! A record is charged to the client it is bound to (`binding.rs`): the one that
//! created it, then whoever last registered or heartbeated it (each such request moves
//! the binding to itself). A register or heartbeat that makes the record larger, or
//! moves it to another client, is held to the same limits as a new record for that
//! client (issue 20, review): its quota, the anonymous share if it is anonymous, the
//! store's whole budget; one that adds nothing is always admitted. `DELETE` frees the
//! charge.

use super::{AgentInfo, AgentRecord, AgentStore, Heartbeat};
use crate::limits::principal::Principal;
use crate::limits::{Budget as LimitBudget, Charge, ClientLedger, Line, Names, Refusal};
use crate::time::UnixTime;

/// Fixed bytes charged per agent on top of its strings: the record and its B-tree slot,
/// the key's copy, the ledger's line, the allocator's header and rounding of each small
/// string. Measured (issue 20, docs/BENCHMARKS.md "Memory per stored task"): 16,000
/// small agents grew the RSS of a release build by about 1,000 bytes each, where 590
/// were charged with the 512 bytes of before.
pub const AGENT_OVERHEAD_BYTES: usize = 1024;
/// Bytes charged per list entry on top of its text: the `String` (24) and the
/// allocator's header and rounding of its text (16).
const ITEM_OVERHEAD_BYTES: usize = 40;

/// Limits of the agent budget (flags `--agent-store-bytes-max`,
/// `--agent-client-agents-max`, `--agent-client-bytes-max`, `--anonymous-share-percent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentBudgetConfig {
    pub bytes_max: usize,
    pub client_agents_max: usize,
    pub client_bytes_max: usize,
    /// Percent of the agents and bytes all anonymous clients together may hold.
    pub anonymous_share_percent: u8,
}

impl Default for AgentBudgetConfig {
    fn default() -> Self {
        AgentBudgetConfig {
            bytes_max: 128 * 1024 * 1024,
            client_agents_max: 1024,
            client_bytes_max: 16 * 1024 * 1024,
            anonymous_share_percent: 50,
        }
    }
}

/// Why an agent was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentRefusal {
    /// A budget: the creating client's quota (429), the anonymous share or the whole
    /// store (503); answer with [`Refusal::message`] and [`AGENT_STORE_NAMES`].
    Budget(Refusal),
    /// The agent is bound to another credential or address (issue 20): 403, with the
    /// reason (`limits::principal::bound_message`).
    Bound(String),
    /// A change of the agent's binding is being saved to the durable store: retry
    /// shortly (the handler does).
    Busy,
    /// In a cluster (`registry::bindings`): the agent is not held here bound to this
    /// principal, so the cluster's binding decides; ask it (`BIND`), then again with the
    /// check done. Nothing changed.
    AskCluster,
}

impl From<Refusal> for AgentRefusal {
    fn from(r: Refusal) -> Self {
        AgentRefusal::Budget(r)
    }
}

/// How the agent registry and its flags are called in a refusal.
pub const AGENT_STORE_NAMES: Names = Names {
    store: "agent registry",
    items: "agents",
    bytes_flag: "--agent-store-bytes-max",
    items_flag: "16,384 agents a shard",
    client_items_flag: "--agent-client-agents-max",
    client_bytes_flag: "--agent-client-bytes-max",
};

/// The bytes a list of strings is charged: each one's text and overhead.
fn list_bytes(v: &[String]) -> usize {
    v.iter().map(|s| s.len() + ITEM_OVERHEAD_BYTES).sum()
}

/// The bytes a record is charged.
pub fn agent_bytes(r: &AgentRecord) -> usize {
    let i = &r.info;
    AGENT_OVERHEAD_BYTES
        + i.agent_id.len()
        + i.hostname.len()
        + i.ip.len()
        + i.sidecar_peer_id.len()
        + i.status.len()
        + i.mode.len()
        + i.capabilities.mode.len()
        + list_bytes(&i.capabilities.skills)
        + list_bytes(&i.capabilities.mcp_servers)
}

/// The bytes the record of `hb.agent_id` is charged once `hb` is applied to `known`
/// (its record, if held): [`agent_bytes`] of what [`AgentStore::heartbeat`] leaves. The
/// heartbeat's fields, and what it keeps of a known record (its capabilities' mode and
/// MCP servers, its sidecar id when the heartbeat has none); a new record's
/// capabilities' mode is the heartbeat's mode.
pub(super) fn heartbeat_bytes(known: Option<&AgentRecord>, hb: &Heartbeat) -> usize {
    let kept = match known {
        Some(r) => {
            let i = &r.info;
            i.capabilities.mode.len()
                + list_bytes(&i.capabilities.mcp_servers)
                + if hb.sidecar_peer_id.is_empty() {
                    i.sidecar_peer_id.len()
                } else {
                    0
                }
        }
        None => hb.mode.len(),
    };
    AGENT_OVERHEAD_BYTES
        + kept
        + hb.agent_id.len()
        + hb.hostname.len()
        + hb.ip.len()
        + hb.sidecar_peer_id.len()
        + hb.status.len()
        + hb.mode.len()
        + list_bytes(&hb.skill_names)
}

/// Accounting state (part of [`AgentStore`]).
#[derive(Clone, Debug, Default)]
pub(super) struct Budget {
    config: AgentBudgetConfig,
    /// agent id → (creating client, bytes charged), and per client.
    ledger: ClientLedger<String>,
    /// Upserts refused because the registry held `agents_max` agents (the ledger counts
    /// its own refusals).
    full_refused: std::cell::Cell<u64>,
}

impl Budget {
    fn uncharge(&mut self, id: &str) -> Option<Line> {
        self.ledger.uncharge(id)
    }

    /// Whether `id` is charged `bytes`, wholly to `by`'s client: a change that leaves it
    /// so needs no admission and no new charge.
    pub(super) fn is_charged_to(&self, id: &str, by: &Principal, bytes: usize) -> bool {
        self.ledger.is_charged(id, |c| c.is_of(by), bytes)
    }

    fn charge(&mut self, id: &str, client: Charge, bytes: usize) {
        self.ledger.charge(id.to_owned(), client, bytes);
    }

    fn limits(&self, agents_max: usize) -> LimitBudget {
        let c = &self.config;
        LimitBudget {
            items_max: agents_max,
            bytes_max: c.bytes_max,
            client_items_max: c.client_agents_max,
            client_bytes_max: c.client_bytes_max,
            anonymous_share_percent: c.anonymous_share_percent,
        }
    }

    /// May `client` hold `id` at `new` bytes from now on? A new record, one that grows,
    /// and one that moves to `client` are held to `client`'s quota, the anonymous share
    /// (if `client` is anonymous) and the whole store ([`ClientLedger::admit`]).
    fn admit(
        &self,
        id: &str,
        client: &Charge,
        new: usize,
        agents_max: usize,
    ) -> Result<(), Refusal> {
        let limits = self.limits(agents_max);
        self.ledger
            .admit(&limits, id, &Line::new(client.clone(), new))
    }
}

impl AgentStore {
    /// Sets the byte budget and client quotas (an empty store only).
    pub fn set_budget(&mut self, config: AgentBudgetConfig) {
        self.budget.config = config;
    }

    /// Bytes charged for the agents held, and `(agents, bytes)` of `client`.
    pub fn usage(&self, client: &Charge) -> (usize, (usize, usize)) {
        (
            self.budget.ledger.bytes(),
            self.budget.ledger.client(client),
        )
    }

    /// `(agents, bytes)` that anonymous clients created here, all together.
    /// Budget refusals so far, by `limits::Refusal::REASONS` (the store's own
    /// "full" counted with the ledger's).
    pub fn refusals(&self) -> [u64; 3] {
        let mut r = self.budget.ledger.refused();
        r[2] += self.budget.full_refused.get();
        r
    }

    pub fn anonymous_usage(&self) -> (usize, usize) {
        self.budget.ledger.anonymous()
    }

    /// Charges `id` again, to `client` (whom it is bound to from now on).
    fn recharge(&mut self, id: &str, client: &Charge) {
        self.budget.uncharge(id);
        if let Some(bytes) = self.agents.get(id).map(agent_bytes) {
            self.budget.charge(id, client.clone(), bytes);
        }
    }

    fn refused_full(&self) -> Refusal {
        self.budget
            .full_refused
            .set(self.budget.full_refused.get() + 1);
        Refusal::Full {
            items: self.agents.len(),
            bytes: self.budget.ledger.bytes(),
            items_max: self.config.agents_max,
            bytes_max: self.budget.config.bytes_max,
        }
    }

    /// [`upsert`](Self::upsert) for `client`.
    pub fn upsert_for(
        &mut self,
        info: AgentInfo,
        client: &Charge,
        now: UnixTime,
    ) -> Result<(), Refusal> {
        let id = info.agent_id.clone();
        let probe = AgentRecord::new(info, now);
        self.budget
            .admit(&id, client, agent_bytes(&probe), self.config.agents_max)?;
        if self.upsert(probe.info, now).is_err() {
            return Err(self.refused_full());
        }
        self.recharge(&id, client);
        Ok(())
    }

    /// [`heartbeat`](Self::heartbeat) for `client`.
    pub fn heartbeat_for(
        &mut self,
        hb: &Heartbeat,
        client: &Charge,
        now: UnixTime,
    ) -> Result<(), Refusal> {
        let new = heartbeat_bytes(self.agents.get(&hb.agent_id), hb);
        self.budget
            .admit(&hb.agent_id, client, new, self.config.agents_max)?;
        if self.heartbeat(hb, now).is_err() {
            return Err(self.refused_full());
        }
        self.recharge(&hb.agent_id, client);
        Ok(())
    }

    /// Frees `agent_id`'s charge (with [`remove`](Self::remove)).
    pub(super) fn uncharge(&mut self, agent_id: &str) {
        self.budget.uncharge(agent_id);
    }

    #[cfg(test)]
    pub(super) fn assert_budget_consistent(&self) {
        let sum: usize = self.agents.values().map(agent_bytes).sum();
        assert_eq!(self.budget.ledger.bytes(), sum);
        assert_eq!(self.budget.ledger.len(), self.agents.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::AgentStoreConfig;
    use wire::json::parse_body;

    const T0: UnixTime = UnixTime(1_700_000_000_000_000_000);

    fn anon(addr: &str) -> Charge {
        Charge::Anonymous(addr.into())
    }

    fn info(id: &str, host: &str) -> AgentInfo {
        parse_body(format!(r#"{{"agent_id":"{id}","hostname":"{host}"}}"#).as_bytes()).unwrap()
    }

    /// A heartbeat that changes nothing adds nothing, so it is admitted at the client's
    /// byte quota: the bytes it is held to are the record's after it (the capabilities'
    /// mode kept, not counted a second time from the heartbeat's mode).
    #[test]
    fn an_unchanged_heartbeat_with_a_mode_is_admitted_at_the_quota() {
        let hb: Heartbeat =
            parse_body(br#"{"agent_id":"a1","mode":"relay","skill_names":["x"]}"#).unwrap();
        let mut probe = AgentStore::new(AgentStoreConfig::default());
        probe.heartbeat_for(&hb, &anon("10.0.0.1"), T0).unwrap();
        let bytes = probe.usage(&anon("10.0.0.1")).1 .1;
        let mut s = AgentStore::new(AgentStoreConfig::default());
        s.set_budget(AgentBudgetConfig {
            client_bytes_max: bytes,
            ..AgentBudgetConfig::default()
        });
        s.heartbeat_for(&hb, &anon("10.0.0.1"), T0).unwrap();
        assert_eq!(s.heartbeat_for(&hb, &anon("10.0.0.1"), T0), Ok(()));
        // One more byte is more than the quota.
        let mut grown = hb.clone();
        grown.hostname = "h".into();
        let e = s.heartbeat_for(&grown, &anon("10.0.0.1"), T0).unwrap_err();
        assert!(matches!(e, Refusal::ClientQuota { .. }), "{e:?}");
        s.assert_budget_consistent();
    }

    #[test]
    fn quotas_per_client_and_budget_per_store() {
        let mut s = AgentStore::new(AgentStoreConfig::default());
        s.set_budget(AgentBudgetConfig {
            bytes_max: 5 * (AGENT_OVERHEAD_BYTES + 90),
            client_agents_max: 2,
            client_bytes_max: 1 << 20,
            anonymous_share_percent: 100,
        });
        s.upsert_for(info("a1", "h"), &anon("10.0.0.1"), T0)
            .unwrap();
        s.upsert_for(info("a2", "h"), &anon("10.0.0.1"), T0)
            .unwrap();
        let e = s
            .upsert_for(info("a3", "h"), &anon("10.0.0.1"), T0)
            .unwrap_err();
        assert!(matches!(e, Refusal::ClientQuota { .. }), "{e:?}");
        // The client's own agents can still update; another client is not affected.
        s.upsert_for(info("a1", "host"), &anon("10.0.0.1"), T0)
            .unwrap();
        let hb: Heartbeat = parse_body(br#"{"agent_id":"a2","skill_names":["x"]}"#).unwrap();
        s.heartbeat_for(&hb, &anon("10.0.0.1"), T0).unwrap();
        s.upsert_for(info("b1", "h"), &anon("10.0.0.2"), T0)
            .unwrap();
        s.assert_budget_consistent();
        assert_eq!(s.usage(&anon("10.0.0.1")).1 .0, 2);
        // A heartbeat by another client moves the agent's charge to it (its binding
        // moves too, `binding.rs`): it counts as a new agent for that client.
        s.heartbeat_for(&hb, &anon("10.0.0.2"), T0).unwrap();
        assert_eq!(s.usage(&anon("10.0.0.1")).1 .0, 1);
        assert_eq!(s.usage(&anon("10.0.0.2")).1 .0, 2);
        let e = s.heartbeat_for(&hb, &anon("10.0.0.2"), T0);
        assert!(e.is_ok(), "{e:?}");
        let e = s
            .upsert_for(info("a1", "h"), &anon("10.0.0.2"), T0)
            .unwrap_err();
        assert!(matches!(e, Refusal::ClientQuota { .. }), "{e:?}");
        s.heartbeat_for(&hb, &anon("10.0.0.1"), T0).unwrap();
        s.assert_budget_consistent();
        // The store's budget: 5 × (overhead + 90) bytes hold 5 small agents, not 6.
        s.upsert_for(info("c1", "h"), &anon("10.0.0.3"), T0)
            .unwrap();
        s.upsert_for(info("d1", "h"), &anon("10.0.0.4"), T0)
            .unwrap();
        let e = s
            .upsert_for(info("e1", "h"), &anon("10.0.0.5"), T0)
            .unwrap_err();
        assert!(matches!(e, Refusal::Full { .. }), "{e:?}");
        let big = info("d1", &"x".repeat(4000));
        assert!(matches!(
            s.upsert_for(big, &anon("10.0.0.4"), T0),
            Err(Refusal::Full { .. })
        ));
        // Removal frees room.
        s.remove("a1");
        s.assert_budget_consistent();
        s.upsert_for(info("a3", "h"), &anon("10.0.0.1"), T0)
            .unwrap();
        s.assert_budget_consistent();
    }

    /// Issue 20, finding 3: many addresses fill only the anonymous share of the
    /// registry; an authenticated client still registers, and anonymous agents that
    /// exist keep their heartbeats (no growth) while new anonymous ones are refused.
    #[test]
    fn anonymous_share_of_the_registry() {
        let mut s = AgentStore::new(AgentStoreConfig { agents_max: 20 });
        s.set_budget(AgentBudgetConfig {
            bytes_max: 1 << 20,
            client_agents_max: 2,
            client_bytes_max: 1 << 20,
            anonymous_share_percent: 50,
        });
        let mut refusals = Vec::new();
        for ip in 0..10 {
            for k in 0..3 {
                let who = anon(&format!("10.0.1.{ip}"));
                if let Err(e) = s.upsert_for(info(&format!("a{ip}-{k}"), "h"), &who, T0) {
                    refusals.push(e);
                }
            }
        }
        assert_eq!(s.anonymous_usage().0, 10, "half of 20 agents");
        let e = refusals.last().unwrap();
        assert_eq!(e.reason(), "anonymous_share");
        let m = e.message(&AGENT_STORE_NAMES);
        assert!(
            m.contains("agent registry") && m.contains("--anonymous-share-percent 50"),
            "{m}"
        );
        // Known anonymous agents still heartbeat.
        let hb: Heartbeat = parse_body(br#"{"agent_id":"a0-0","hostname":"h"}"#).unwrap();
        s.heartbeat_for(&hb, &anon("10.0.1.0"), T0).unwrap();
        // Authenticated clients register up to the whole store.
        let agent = Charge::Agent("agent-x".into());
        s.upsert_for(info("real-1", "h"), &agent, T0).unwrap();
        s.upsert_for(info("real-2", "h"), &agent, T0).unwrap();
        let admin = Charge::Admin("ops".into());
        for k in 0..8 {
            s.upsert_for(info(&format!("ops-{k}"), "h"), &admin, T0)
                .unwrap();
        }
        let e = s.upsert_for(info("ops-9", "h"), &admin, T0).unwrap_err();
        assert_eq!(e.reason(), "store_full");
        s.assert_budget_consistent();
    }
}
