//! The agent store's memory budget and per-client quotas (issue 13, finding 1).
//!
//! Each record is charged [`agent_bytes`]; a shard holds at most
//! [`AgentBudgetConfig::bytes_max`] bytes of agents, and one client (source address)
//! may create at most `client_agents_max` agents and `client_bytes_max` bytes on a
//! shard. A record is charged to the client that created it; later registers and
//! heartbeats (by anyone) re-charge it to that client, refused only if the store as a
//! whole would pass its budget. `DELETE` frees the charge.

use std::fmt;

use super::{AgentInfo, AgentRecord, AgentStore, AgentsFull, Heartbeat};
use crate::limits::ClientLedger;
use crate::time::UnixTime;

/// Fixed bytes charged per agent on top of its strings (record, map entry, health).
pub const AGENT_OVERHEAD_BYTES: usize = 512;
/// Bytes charged per list entry on top of its text (the `String` itself).
const ITEM_OVERHEAD_BYTES: usize = 24;

/// Limits of the agent budget (flags `--agent-store-bytes-max`,
/// `--agent-client-agents-max`, `--agent-client-bytes-max`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentBudgetConfig {
    pub bytes_max: usize,
    pub client_agents_max: usize,
    pub client_bytes_max: usize,
}

impl Default for AgentBudgetConfig {
    fn default() -> Self {
        AgentBudgetConfig {
            bytes_max: 128 * 1024 * 1024,
            client_agents_max: 1024,
            client_bytes_max: 16 * 1024 * 1024,
        }
    }
}

/// Why an agent was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentRefusal {
    /// The shard holds `agents_max` agents or its byte budget: 503.
    Full(AgentsFull),
    /// The creating client holds its share: 429, with the reason.
    ClientQuota(String),
    /// The agent is bound to another credential or address (issue 20): 403, with the
    /// reason (`auth::principal::bound_message`).
    Bound(String),
}

impl fmt::Display for AgentRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentRefusal::Full(e) => write!(f, "{e} or --agent-store-bytes-max"),
            AgentRefusal::ClientQuota(why) | AgentRefusal::Bound(why) => f.write_str(why),
        }
    }
}

/// The bytes a record is charged.
pub fn agent_bytes(r: &AgentRecord) -> usize {
    let i = &r.info;
    let list = |v: &[String]| {
        v.iter()
            .map(|s| s.len() + ITEM_OVERHEAD_BYTES)
            .sum::<usize>()
    };
    AGENT_OVERHEAD_BYTES
        + i.agent_id.len()
        + i.hostname.len()
        + i.ip.len()
        + i.sidecar_peer_id.len()
        + i.status.len()
        + i.mode.len()
        + i.capabilities.mode.len()
        + list(&i.capabilities.skills)
        + list(&i.capabilities.mcp_servers)
}

/// Accounting state (part of [`AgentStore`]).
#[derive(Clone, Debug, Default)]
pub(super) struct Budget {
    config: AgentBudgetConfig,
    /// agent id → (creating client, bytes charged), and per client.
    ledger: ClientLedger<String>,
}

impl Budget {
    fn uncharge(&mut self, id: &str) -> Option<String> {
        self.ledger.uncharge(id).map(|(client, _)| client)
    }

    fn charge(&mut self, id: &str, client: String, bytes: usize) {
        self.ledger.charge(id.to_owned(), client, bytes);
    }

    /// May `client` store `id` at `new` bytes?
    fn admit(&self, id: &str, client: &str, new: usize) -> Result<(), AgentRefusal> {
        let (old_client, old) = match self.ledger.charge_of(id) {
            Some((c, b)) => (Some(c), b),
            None => (None, 0),
        };
        if old_client.is_none() && !client.is_empty() {
            let (agents, bytes) = self.ledger.client(client);
            let c = &self.config;
            if agents >= c.client_agents_max || bytes + new > c.client_bytes_max {
                return Err(AgentRefusal::ClientQuota(format!(
                    "this client registered {agents} agents ({bytes} bytes) on this shard; its \
                     quota is {} agents (--agent-client-agents-max) and {} bytes \
                     (--agent-client-bytes-max)",
                    c.client_agents_max, c.client_bytes_max
                )));
            }
        }
        if self.ledger.bytes() - old + new > self.config.bytes_max {
            return Err(AgentRefusal::Full(AgentsFull { agents_max: 0 }));
        }
        Ok(())
    }
}

impl AgentStore {
    /// Sets the byte budget and client quotas (an empty store only).
    pub fn set_budget(&mut self, config: AgentBudgetConfig) {
        self.budget.config = config;
    }

    /// Bytes charged for the agents held, and `(agents, bytes)` of `client`.
    pub fn usage(&self, client: &str) -> (usize, (usize, usize)) {
        (
            self.budget.ledger.bytes(),
            self.budget.ledger.client(client),
        )
    }

    fn recharge(&mut self, id: &str, client: &str) {
        let old = self.budget.uncharge(id);
        if let Some(bytes) = self.agents.get(id).map(agent_bytes) {
            let owner = old.unwrap_or_else(|| client.to_owned());
            self.budget.charge(id, owner, bytes);
        }
    }

    fn refusal(&self, e: AgentRefusal) -> AgentRefusal {
        match e {
            AgentRefusal::Full(_) => AgentRefusal::Full(self.full()),
            q => q,
        }
    }

    /// [`upsert`](Self::upsert) for `client` (a source address; `""`: no quota).
    pub fn upsert_for(
        &mut self,
        info: AgentInfo,
        client: &str,
        now: UnixTime,
    ) -> Result<(), AgentRefusal> {
        let id = info.agent_id.clone();
        let probe = AgentRecord::new(info, now);
        self.budget
            .admit(&id, client, agent_bytes(&probe))
            .map_err(|e| self.refusal(e))?;
        self.upsert(probe.info, now).map_err(AgentRefusal::Full)?;
        self.recharge(&id, client);
        Ok(())
    }

    /// [`heartbeat`](Self::heartbeat) for `client`.
    pub fn heartbeat_for(
        &mut self,
        hb: &Heartbeat,
        client: &str,
        now: UnixTime,
    ) -> Result<(), AgentRefusal> {
        // What the record will hold: the heartbeat's fields, plus the kept ones.
        let kept = self.agents.get(&hb.agent_id).map_or(0, |r| {
            let i = &r.info;
            i.capabilities.mode.len()
                + i.capabilities
                    .mcp_servers
                    .iter()
                    .map(|s| s.len() + ITEM_OVERHEAD_BYTES)
                    .sum::<usize>()
                + if hb.sidecar_peer_id.is_empty() {
                    i.sidecar_peer_id.len()
                } else {
                    0
                }
        });
        let new = AGENT_OVERHEAD_BYTES
            + kept
            + hb.agent_id.len()
            + hb.hostname.len()
            + hb.ip.len()
            + hb.sidecar_peer_id.len()
            + hb.status.len()
            + 2 * hb.mode.len()
            + hb.skill_names
                .iter()
                .map(|s| s.len() + ITEM_OVERHEAD_BYTES)
                .sum::<usize>();
        self.budget
            .admit(&hb.agent_id, client, new)
            .map_err(|e| self.refusal(e))?;
        self.heartbeat(hb, now).map_err(AgentRefusal::Full)?;
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

    fn info(id: &str, host: &str) -> AgentInfo {
        parse_body(format!(r#"{{"agent_id":"{id}","hostname":"{host}"}}"#).as_bytes()).unwrap()
    }

    #[test]
    fn quotas_per_client_and_budget_per_store() {
        let mut s = AgentStore::new(AgentStoreConfig::default());
        s.set_budget(AgentBudgetConfig {
            bytes_max: 5 * 600,
            client_agents_max: 2,
            client_bytes_max: 1 << 20,
        });
        s.upsert_for(info("a1", "h"), "10.0.0.1", T0).unwrap();
        s.upsert_for(info("a2", "h"), "10.0.0.1", T0).unwrap();
        let e = s.upsert_for(info("a3", "h"), "10.0.0.1", T0).unwrap_err();
        assert!(matches!(e, AgentRefusal::ClientQuota(_)), "{e}");
        // The client's own agents can still update; another client is not affected.
        s.upsert_for(info("a1", "host"), "10.0.0.1", T0).unwrap();
        let hb: Heartbeat = parse_body(br#"{"agent_id":"a2","skill_names":["x"]}"#).unwrap();
        s.heartbeat_for(&hb, "10.0.0.9", T0).unwrap();
        s.upsert_for(info("b1", "h"), "10.0.0.2", T0).unwrap();
        s.assert_budget_consistent();
        assert_eq!(s.usage("10.0.0.1").1 .0, 2);
        // The store's budget: 5 × 600 bytes hold 5 small agents, not 6.
        s.upsert_for(info("c1", "h"), "10.0.0.3", T0).unwrap();
        s.upsert_for(info("d1", "h"), "10.0.0.4", T0).unwrap();
        let e = s.upsert_for(info("e1", "h"), "10.0.0.5", T0).unwrap_err();
        assert!(matches!(e, AgentRefusal::Full(_)), "{e}");
        let big = info("d1", &"x".repeat(4000));
        assert!(matches!(
            s.upsert_for(big, "10.0.0.4", T0),
            Err(AgentRefusal::Full(_))
        ));
        // Removal frees room.
        s.remove("a1");
        s.assert_budget_consistent();
        s.upsert_for(info("a3", "h"), "10.0.0.1", T0).unwrap();
        s.assert_budget_consistent();
    }
}
