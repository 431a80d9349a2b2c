//! The state one shard owns, one store per service (see docs/ARCHITECTURE.md, "State
//! placement"), sans-IO: the server's shard context and the simulator both hold one.

use std::cell::RefCell;

use super::ServerConfig;
use crate::auth::budget::Counters as AuthCounters;
use crate::auth::failures::{FailureHints, FailureLedger, InFlight};
use crate::auth::verified::VerifiedTokens;
use crate::auth::DeviceTokenIndex;
use crate::hub::{TaskPointers, TaskStore};
use crate::registry::{AgentStore, AgentStoreConfig};
use crate::shard::Owns;
use crate::signaling::{ConnTable, PeerAuthz};
use crate::time::UnixTime;
use crate::{hub, pairing};

/// The state one shard owns, one store per service (see docs/ARCHITECTURE.md, "State
/// placement").
pub struct ShardState {
    /// Registry: the agents whose `shard_of(agent_id)` is this shard.
    pub agents: RefCell<AgentStore>,
    /// Hub: tasks homed here, and pointers for the agents owned here.
    pub hub: RefCell<hub::Store>,
    /// Pairing: invite codes, entries, `pair` rate-limit buckets.
    pub pairing: RefCell<pairing::Store>,
    /// Auth: the device-token index.
    pub tokens: RefCell<DeviceTokenIndex>,
    /// Auth: wrong secrets of the client addresses this shard owns
    /// (`shard_of(address)`).
    pub auth_failures: RefCell<FailureLedger>,
    /// Auth: what this shard has heard of other shards' addresses with recent failures.
    pub auth_hints: RefCell<FailureHints>,
    /// Bearer tokens verified lately (`auth::verified`).
    pub verified_tokens: RefCell<VerifiedTokens>,
    /// Auth: the secret checks of client addresses now in flight on this shard (one per
    /// address: `auth::budget::admit_held`).
    pub auth_in_flight: RefCell<InFlight>,
    /// Auth: the failure budget's counters of the requests this shard took.
    pub auth_counters: AuthCounters,
    /// Signaling: which of the peers owned here may signal.
    pub authz: RefCell<PeerAuthz>,
    /// Signaling: the live connections of the peers owned here, and the per-IP counts
    /// of the client addresses owned here.
    pub ws: ConnTable,
    /// The changes to the state above, as each service notes them (the dashboard's
    /// event stream reads them).
    pub changes: RefCell<crate::shard::ChangeLog>,
    /// Cluster: this shard's requests to other nodes waiting for their answers.
    pub node_asks: crate::shard::nodes::NodeAsks,
    /// Revocations made here whose cluster records wait for Redis (`--cluster`).
    pub pairing_unsynced: RefCell<pairing::cluster::Unsynced>,
    /// Task writes made here that may have run in Redis and wait to be taken back
    /// (`--cluster`).
    pub hub_take_backs: RefCell<crate::hub::cluster::TakeBacks>,
}

impl ShardState {
    /// Whether no borrow of the state is held (debug builds check it before an ask of
    /// this shard itself, which may apply at once: `reactor::Shard::ask`).
    pub fn is_unborrowed(&self) -> bool {
        self.agents.try_borrow_mut().is_ok()
            && self.hub.try_borrow_mut().is_ok()
            && self.pairing.try_borrow_mut().is_ok()
            && self.tokens.try_borrow_mut().is_ok()
            && self.auth_failures.try_borrow_mut().is_ok()
            && self.auth_hints.try_borrow_mut().is_ok()
            && self.verified_tokens.try_borrow_mut().is_ok()
            && self.auth_in_flight.try_borrow_mut().is_ok()
            && self.authz.try_borrow_mut().is_ok()
            && self.changes.try_borrow_mut().is_ok()
            && self.ws.is_unborrowed()
            && self.node_asks.is_unborrowed()
            && self.pairing_unsynced.try_borrow_mut().is_ok()
            && self.hub_take_backs.try_borrow_mut().is_ok()
    }

    /// A shard's empty state, one of `shards`.
    pub fn new(config: &ServerConfig, shards: usize) -> ShardState {
        ShardState {
            agents: RefCell::new({
                let mut a = AgentStore::new(AgentStoreConfig::default());
                a.set_budget(config.registry.budget);
                a
            }),
            hub: RefCell::new(hub::Store {
                tasks: TaskStore::new(config.hub.tasks),
                pointers: TaskPointers::default(),
                hints: Default::default(),
            }),
            pairing: RefCell::new(pairing::Store::with_guard(config.pairing.guard)),
            tokens: RefCell::new(DeviceTokenIndex::new()),
            auth_failures: RefCell::new(FailureLedger::new(
                config.auth.failures.shard_share(shards),
            )),
            auth_hints: RefCell::new(FailureHints::new(&config.auth.failures)),
            verified_tokens: RefCell::new(VerifiedTokens::new()),
            auth_in_flight: RefCell::new(InFlight::default()),
            auth_counters: AuthCounters::default(),
            authz: RefCell::new(PeerAuthz::default()),
            ws: ConnTable::new(config.ws.clone()),
            changes: RefCell::new(crate::shard::ChangeLog::new()),
            node_asks: Default::default(),
            pairing_unsynced: Default::default(),
            hub_take_backs: Default::default(),
        }
    }

    /// Loads this shard's part of the stored state (start-up, before accepting).
    pub fn load(&self, boot: crate::server::boot::ShardBoot, now: UnixTime) {
        let st = self;
        {
            let mut p = st.pairing.borrow_mut();
            for e in boot.entries {
                p.entries.insert_loaded(e);
            }
            for (code, issuer, expires_at) in boot.invites {
                p.codes.restore(code, issuer, expires_at);
            }
        }
        {
            let mut tokens = st.tokens.borrow_mut();
            for (key, grant) in boot.tokens {
                if tokens.insert(key, grant).is_err() {
                    tracing::error!("device-token index full at start-up; a token was not loaded");
                }
            }
            for key in boot.revoked_tokens {
                tokens.revoke(&key);
            }
        }
        {
            let mut authz = st.authz.borrow_mut();
            for (peer, at) in boot.revoked {
                authz.restore_revoked(&peer, at);
            }
            for (peer, mesh) in boot.authorized {
                authz.add(&peer, mesh.as_deref());
            }
            authz.sweep(now);
        }
        {
            let mut hub = st.hub.borrow_mut();
            for t in boot.tasks {
                hub.tasks.insert_loaded(t);
            }
            for (agent, id, deadline) in boot.pointers {
                hub.pointers.add(agent, id, deadline);
            }
        }
        {
            let mut agents = st.agents.borrow_mut();
            for (agent, owner) in boot.bindings {
                agents.load_binding(agent, owner);
            }
        }
    }
}

// The state auth's failure budget keeps on each shard and reads without a message
// (`auth::budget::Budgeted`).
impl Owns<RefCell<FailureLedger>> for ShardState {
    fn owned(&self) -> &RefCell<FailureLedger> {
        &self.auth_failures
    }
}

impl Owns<RefCell<FailureHints>> for ShardState {
    fn owned(&self) -> &RefCell<FailureHints> {
        &self.auth_hints
    }
}

impl Owns<RefCell<VerifiedTokens>> for ShardState {
    fn owned(&self) -> &RefCell<VerifiedTokens> {
        &self.verified_tokens
    }
}

impl Owns<RefCell<InFlight>> for ShardState {
    fn owned(&self) -> &RefCell<InFlight> {
        &self.auth_in_flight
    }
}

impl Owns<AuthCounters> for ShardState {
    fn owned(&self) -> &AuthCounters {
        &self.auth_counters
    }
}

impl Owns<ConnTable> for ShardState {
    #[inline]
    fn owned(&self) -> &ConnTable {
        &self.ws
    }
}

impl Owns<RefCell<PeerAuthz>> for ShardState {
    fn owned(&self) -> &RefCell<PeerAuthz> {
        &self.authz
    }
}

// A revocation's cluster records that wait for Redis are kept where it was made, and
// retried from there (`pairing::cluster::retry_unsynced`).
impl Owns<RefCell<pairing::cluster::Unsynced>> for ShardState {
    fn owned(&self) -> &RefCell<pairing::cluster::Unsynced> {
        &self.pairing_unsynced
    }
}

// A task write that may have run in Redis is taken back from the shard that made it,
// again while the link is up when it could not be at once
// (`hub::cluster::retry_take_backs`).
impl Owns<RefCell<crate::hub::cluster::TakeBacks>> for ShardState {
    fn owned(&self) -> &RefCell<crate::hub::cluster::TakeBacks> {
        &self.hub_take_backs
    }
}

// The registry's mirror task (`registry::mirror::run`) reads the agent store without a
// message.
impl Owns<RefCell<AgentStore>> for ShardState {
    fn owned(&self) -> &RefCell<AgentStore> {
        &self.agents
    }
}

// The heartbeat's skill hints (`hub::hints`) are read where the heartbeat runs, without
// a message.
impl Owns<RefCell<hub::Store>> for ShardState {
    fn owned(&self) -> &RefCell<hub::Store> {
        &self.hub
    }
}
