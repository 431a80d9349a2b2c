//! The hub's durable records: a pending or assigned task as the store keeps it (finished
//! tasks stay in memory only), and back.

use chatixia_store::{JsonText, TaskHolder, TaskRecord};

use crate::hub::{Payload, Task, TaskAccess};
use crate::limits::Holder;
use crate::time::UnixTime;

/// The record of a pending or assigned task.
pub fn task_record(t: &Task) -> TaskRecord {
    TaskRecord {
        id: t.id.clone(),
        skill: t.skill.clone(),
        target_agent_id: t.target_agent_id.clone(),
        source_agent_id: t.source_agent_id.clone(),
        assigned_agent_id: t.assigned_agent_id.clone(),
        // The record holds the JSON text itself: every digit survives a restart.
        payload: JsonText::from_json(t.payload.get()).unwrap_or_else(|_| JsonText::null()),
        state: t.state.clone(),
        result: t.result.clone(),
        error: t.error.clone(),
        created_at_ns: t.created_at.as_nanos(),
        updated_at_ns: t.updated_at.as_nanos(),
        ttl: t.ttl,
        created_by: t.access.created_by.as_ref().map(holder_record),
        claimed_by: t.access.claimed_by.as_ref().map(holder_record),
        reported_by: t.access.reported_by.as_ref().map(holder_record),
    }
}

fn holder_record(h: &Holder) -> TaskHolder {
    TaskHolder {
        peer_id: h.peer.clone(),
        admin: h.admin,
        address: h.address.clone(),
    }
}

fn holder_of(r: TaskHolder) -> Holder {
    Holder {
        peer: r.peer_id,
        admin: r.admin,
        address: r.address,
    }
}

/// The task of a loaded record.
pub fn task_of(r: TaskRecord) -> Task {
    let created_by = r.created_by.map(holder_of);
    Task {
        id: r.id,
        skill: r.skill,
        target_agent_id: r.target_agent_id,
        source_agent_id: r.source_agent_id,
        assigned_agent_id: r.assigned_agent_id,
        // Stored canonical text (or, from an older store, a `serde_json::Value`'s, which
        // is canonical too); it was valid JSON when loaded.
        payload: Payload::from_json(r.payload.get()).unwrap_or_default(),
        state: r.state,
        result: r.result,
        error: r.error,
        created_at: UnixTime(r.created_at_ns),
        updated_at: UnixTime(r.updated_at_ns),
        ttl: r.ttl,
        holder: crate::limits::Charge::of_holder(created_by.as_ref()),
        access: TaskAccess {
            created_by,
            claimed_by: r.claimed_by.map(holder_of),
            reported_by: r.reported_by.map(holder_of),
        },
    }
}
