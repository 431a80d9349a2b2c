//! The registry's durable records: an agent's binding (issue 20, review finding 5), and
//! back. Agents themselves stay in memory only: they come back with their next
//! heartbeat.

use chatixia_store::{AgentBindingRecord, BindingOwner};

use crate::limits::principal::Owner;

/// The record of agent `agent_id`'s binding.
pub fn binding_record(agent_id: &str, owner: &Owner) -> AgentBindingRecord {
    AgentBindingRecord {
        agent_id: agent_id.to_owned(),
        owner: match owner {
            Owner::Peer(p) => BindingOwner::Peer(p.clone()),
            Owner::Address(a) => BindingOwner::Address(a.clone()),
        },
    }
}

/// The binding of a loaded record: `(agent id, owner)`.
pub fn binding_of(r: AgentBindingRecord) -> (String, Owner) {
    let owner = match r.owner {
        BindingOwner::Peer(p) => Owner::Peer(p),
        BindingOwner::Address(a) => Owner::Address(a),
    };
    (r.agent_id, owner)
}
