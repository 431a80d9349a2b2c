//! Agent records and the per-shard agent store.

use std::collections::btree_map::{BTreeMap, Entry};
use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use super::health::Health;
use crate::time::UnixTime;
use wire::json::JsonBody;

mod binding;
mod budget;
mod mirror;
pub use binding::{BindingChange, DeleteStart};
pub use budget::{
    agent_bytes, AgentBudgetConfig, AgentRefusal, AGENT_OVERHEAD_BYTES, AGENT_STORE_NAMES,
};
pub use mirror::{
    MirrorNotes, MirrorWrite, RouteEntry, HEARTBEAT_WRITE_INTERVAL, NOTED_AGENTS_MAX,
};

/// Default `port` of an agent when the body has none.
pub const fn default_port() -> u16 {
    8000
}

/// Body of `POST /api/registry/agents`. `agent_id` and `hostname` are required; every
/// other field has a default. Unknown fields are ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Unique id; also the shard key.
    pub agent_id: String,
    /// Required.
    pub hostname: String,
    /// Default `""`.
    #[serde(default)]
    pub ip: String,
    /// Default 8000.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Peer id of the agent's WebRTC sidecar; default `""` (none).
    #[serde(default)]
    pub sidecar_peer_id: String,
    /// Default: all fields empty / zero.
    #[serde(default)]
    pub capabilities: AgentCapabilities,
    /// Default `""`.
    #[serde(default)]
    pub status: String,
    /// Default `""`.
    #[serde(default)]
    pub mode: String,
}

impl JsonBody for AgentInfo {
    const REQUIRED_FIELDS: &'static [&'static str] = &["agent_id", "hostname"];
}

/// `capabilities` of an agent; every field defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCapabilities {
    /// Skill names, used by routing and task claiming.
    #[serde(default)]
    pub skills: Vec<String>,
    /// Default empty.
    #[serde(default)]
    pub mcp_servers: Vec<String>,
    /// Default 0.
    #[serde(default)]
    pub goals_count: u32,
    /// Default `""`.
    #[serde(default)]
    pub mode: String,
}

/// Body of `POST /api/hub/heartbeat`. Only `agent_id` is required.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Heartbeat {
    /// Required.
    pub agent_id: String,
    /// Default `""`.
    #[serde(default)]
    pub hostname: String,
    /// Default `""`.
    #[serde(default)]
    pub ip: String,
    /// Default 8000.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Default `""`.
    #[serde(default)]
    pub status: String,
    /// Default `""`.
    #[serde(default)]
    pub mode: String,
    /// Accepted and ignored (as in the reference).
    #[serde(default)]
    pub skills_count: u32,
    /// Default 0.
    #[serde(default)]
    pub goals_count: u32,
    /// Accepted and ignored (as in the reference).
    #[serde(default)]
    pub uptime_seconds: u64,
    /// Replaces the agent's skills; also the skills whose pending tasks it claims.
    #[serde(default)]
    pub skill_names: Vec<String>,
    /// Default `""`; an empty value does not overwrite a known sidecar id.
    #[serde(default)]
    pub sidecar_peer_id: String,
}

impl JsonBody for Heartbeat {
    const REQUIRED_FIELDS: &'static [&'static str] = &["agent_id"];
}

/// A registered agent: its latest [`AgentInfo`] plus registry metadata.
///
/// Serializes (for the list route) as the `AgentInfo` fields followed by `health`,
/// `registered_at` and `last_heartbeat` (RFC 3339, see [`UnixTime::to_rfc3339`]).
/// [`AgentRecord::sorted_keys`] gives the sorted-key shape of the get and route routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRecord {
    /// As registered, then as updated by heartbeats.
    pub info: AgentInfo,
    /// Set to `active` by register and heartbeat, recomputed by the health tick.
    pub health: Health,
    /// When the agent was last registered with `POST /api/registry/agents` (re-registering
    /// resets it, as in the reference), or its first heartbeat.
    pub registered_at: UnixTime,
    /// Last register or heartbeat.
    pub last_heartbeat: UnixTime,
    /// What the agent is bound to (issue 20): the credential or address that registered
    /// it; `None` for a record made without a principal (`upsert`, `heartbeat`), which
    /// the next principal binds. Never serialized. See `binding.rs`.
    pub bound: Option<crate::limits::Owner>,
}

impl AgentRecord {
    /// An agent record as the list shows it (§3.3's JSON: another node's agent, from the
    /// cluster's mirror); `None` when it is not such a record. Its binding is not
    /// listed: `bound` is `None`.
    pub fn from_list_json(json: &[u8]) -> Option<AgentRecord> {
        #[derive(Deserialize)]
        struct Listed {
            #[serde(flatten)]
            info: AgentInfo,
            health: String,
            registered_at: String,
            last_heartbeat: String,
        }
        let r: Listed = serde_json::from_slice(json).ok()?;
        let health = match r.health.as_str() {
            "active" => Health::Active,
            "stale" => Health::Stale,
            "offline" => Health::Offline,
            _ => return None,
        };
        Some(AgentRecord {
            info: r.info,
            health,
            registered_at: UnixTime::parse_rfc3339(&r.registered_at)?,
            last_heartbeat: UnixTime::parse_rfc3339(&r.last_heartbeat)?,
            bound: None,
        })
    }

    /// A heartbeat's change of a known record: what it carries replaces what the record
    /// held (an empty `sidecar_peer_id` keeps the known one), and the agent is active.
    fn beat(&mut self, hb: &Heartbeat, now: UnixTime) {
        self.last_heartbeat = now;
        self.health = Health::Active;
        let info = &mut self.info;
        info.hostname.clone_from(&hb.hostname);
        info.ip.clone_from(&hb.ip);
        info.port = hb.port;
        info.status.clone_from(&hb.status);
        info.mode.clone_from(&hb.mode);
        info.capabilities.skills.clone_from(&hb.skill_names);
        info.capabilities.goals_count = hb.goals_count;
        if !hb.sidecar_peer_id.is_empty() {
            info.sidecar_peer_id.clone_from(&hb.sidecar_peer_id);
        }
    }

    fn new(info: AgentInfo, now: UnixTime) -> Self {
        AgentRecord {
            info,
            health: Health::Active,
            registered_at: now,
            last_heartbeat: now,
            bound: None,
        }
    }

    /// Order in which [`AgentStore::route_candidates`] ranks agents, and by which the
    /// server merges candidates from all shards: earliest `registered_at` first, ties
    /// broken by `agent_id`. The reference takes the first match of a `DashMap`
    /// iteration, which is arbitrary; this makes "first" deterministic and favours the
    /// longest-registered agent.
    pub fn route_key(&self) -> (UnixTime, &str) {
        (self.registered_at, &self.info.agent_id)
    }

    /// This record with its JSON keys in sorted order, nested `capabilities` included: the
    /// shape the reference produces for `GET /api/registry/agents/{id}` and the route
    /// endpoint (it goes through a `serde_json::Value`, whose map is a `BTreeMap`).
    pub fn sorted_keys(&self) -> SortedAgent<'_> {
        SortedAgent(self)
    }
}

/// Formats a [`UnixTime`] as an RFC 3339 JSON string.
struct Rfc3339(UnixTime);

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl Serialize for AgentRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The reference flattens `AgentInfo` into the record.
        let i = &self.info;
        let mut st = s.serialize_struct("AgentRecord", 11)?;
        st.serialize_field("agent_id", &i.agent_id)?;
        st.serialize_field("hostname", &i.hostname)?;
        st.serialize_field("ip", &i.ip)?;
        st.serialize_field("port", &i.port)?;
        st.serialize_field("sidecar_peer_id", &i.sidecar_peer_id)?;
        st.serialize_field("capabilities", &i.capabilities)?;
        st.serialize_field("status", &i.status)?;
        st.serialize_field("mode", &i.mode)?;
        st.serialize_field("health", &self.health)?;
        st.serialize_field("registered_at", &Rfc3339(self.registered_at))?;
        st.serialize_field("last_heartbeat", &Rfc3339(self.last_heartbeat))?;
        st.end()
    }
}

/// An [`AgentRecord`] that serializes with sorted keys; see [`AgentRecord::sorted_keys`].
#[derive(Clone, Copy, Debug)]
pub struct SortedAgent<'a>(pub &'a AgentRecord);

impl Serialize for SortedAgent<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct SortedCaps<'a>(&'a AgentCapabilities);
        impl Serialize for SortedCaps<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let c = self.0;
                let mut st = s.serialize_struct("AgentCapabilities", 4)?;
                st.serialize_field("goals_count", &c.goals_count)?;
                st.serialize_field("mcp_servers", &c.mcp_servers)?;
                st.serialize_field("mode", &c.mode)?;
                st.serialize_field("skills", &c.skills)?;
                st.end()
            }
        }
        let r = self.0;
        let i = &r.info;
        let mut st = s.serialize_struct("AgentRecord", 11)?;
        st.serialize_field("agent_id", &i.agent_id)?;
        st.serialize_field("capabilities", &SortedCaps(&i.capabilities))?;
        st.serialize_field("health", &r.health)?;
        st.serialize_field("hostname", &i.hostname)?;
        st.serialize_field("ip", &i.ip)?;
        st.serialize_field("last_heartbeat", &Rfc3339(r.last_heartbeat))?;
        st.serialize_field("mode", &i.mode)?;
        st.serialize_field("port", &i.port)?;
        st.serialize_field("registered_at", &Rfc3339(r.registered_at))?;
        st.serialize_field("sidecar_peer_id", &i.sidecar_peer_id)?;
        st.serialize_field("status", &i.status)?;
        st.end()
    }
}

/// Limits of one shard's [`AgentStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentStoreConfig {
    /// Most agents this shard holds. Every register or first heartbeat with a new
    /// `agent_id` adds a record (the reference never forgets an agent, even offline ones,
    /// until it is deleted), so without a cap any client could grow memory without bound.
    /// Each record is at most about one request body in size, so memory is bounded by
    /// `agents_max` × the body size limit. When full, a new `agent_id` is refused with
    /// [`AgentsFull`] (suggested answer: 503); known agents can still register and
    /// heartbeat, and `DELETE` frees room.
    pub agents_max: usize,
}

impl Default for AgentStoreConfig {
    fn default() -> Self {
        AgentStoreConfig { agents_max: 16_384 }
    }
}

/// Refusal to add a new agent because the shard holds [`AgentStoreConfig::agents_max`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentsFull {
    /// The limit that was reached.
    pub agents_max: usize,
}

impl fmt::Display for AgentsFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "agent registry full ({} agents)", self.agents_max)
    }
}

impl std::error::Error for AgentsFull {}

/// The agents one shard owns, keyed by `agent_id`.
#[derive(Clone, Debug, Default)]
pub struct AgentStore {
    agents: BTreeMap<String, AgentRecord>,
    config: AgentStoreConfig,
    budget: budget::Budget,
    /// Bindings loaded from the durable store at start whose agent has not registered or
    /// heartbeated since (`binding.rs`). Each counts as an agent against `agents_max`;
    /// only a restart adds entries, and an agent's return or deletion removes its own.
    loaded: HashMap<String, crate::limits::principal::Owner>,
    /// Agents whose binding change (or deletion) is being committed to the durable
    /// store: their other changes wait (`AgentRefusal::Busy`). At most one entry per
    /// request in progress on this shard.
    saving: HashSet<String>,
    /// In a cluster: which agents changed, for the shard's mirror task
    /// (`registry::mirror`); `None` on a node alone.
    mirror: Option<MirrorNotes>,
    /// In a cluster (not under `--require-agent-auth`): bindings are cluster-wide, a
    /// request that is not a steady one of the agent's holder here is checked against
    /// Redis first ([`AgentRefusal::AskCluster`], `registry::bindings`).
    cluster_bindings: bool,
    /// Tests: every heartbeat takes the general path (`binding.rs`'s steady one is off),
    /// to compare the two.
    #[cfg(test)]
    general_only: bool,
    /// Tests: heartbeats that took the steady path.
    #[cfg(test)]
    steady_taken: usize,
}

impl AgentStore {
    /// An empty store.
    pub fn new(config: AgentStoreConfig) -> Self {
        AgentStore {
            agents: BTreeMap::new(),
            config,
            budget: budget::Budget::default(),
            loaded: HashMap::new(),
            saving: HashSet::new(),
            mirror: None,
            cluster_bindings: false,
            #[cfg(test)]
            general_only: false,
            #[cfg(test)]
            steady_taken: 0,
        }
    }

    /// The limits this store was built with.
    pub fn config(&self) -> AgentStoreConfig {
        self.config
    }

    /// Number of agents held.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether no agent is held.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// `POST /api/registry/agents`: inserts or wholly replaces the agent's record, as the
    /// reference does: `health` becomes `active`, and both `registered_at` and
    /// `last_heartbeat` become `now` (re-registering resets `registered_at`).
    pub fn upsert(&mut self, info: AgentInfo, now: UnixTime) -> Result<&AgentRecord, AgentsFull> {
        let (full, refusal) = (self.is_full_for(&info.agent_id), self.full());
        if !full || self.agents.contains_key(&info.agent_id) {
            self.note(&info.agent_id, true);
        }
        match self.agents.entry(info.agent_id.clone()) {
            Entry::Occupied(mut e) => {
                // The binding stays with the agent id (`upsert_as` moves it).
                let bound = e.get_mut().bound.take();
                e.insert(AgentRecord {
                    bound,
                    ..AgentRecord::new(info, now)
                });
                Ok(e.into_mut())
            }
            Entry::Vacant(_) if full => Err(refusal),
            Entry::Vacant(e) => Ok(e.insert(AgentRecord::new(info, now))),
        }
    }

    /// The registry half of `POST /api/hub/heartbeat` (claiming tasks is
    /// [`TaskStore::claim_for`](crate::hub::TaskStore::claim_for)).
    ///
    /// For a known agent it sets `last_heartbeat = now`, `health = active`, and overwrites
    /// `hostname`, `ip`, `port`, `status`, `mode`, `capabilities.skills` (from
    /// `skill_names`) and `capabilities.goals_count`; it overwrites `sidecar_peer_id` only
    /// when the heartbeat's is non-empty. `registered_at`, `capabilities.mcp_servers` and
    /// `capabilities.mode` are kept. An unknown agent is registered from the heartbeat
    /// (`capabilities.mode` = `mode`, no MCP servers), `registered_at` = `now`.
    pub fn heartbeat(&mut self, hb: &Heartbeat, now: UnixTime) -> Result<&AgentRecord, AgentsFull> {
        let (full, refusal) = (self.is_full_for(&hb.agent_id), self.full());
        if !full || self.agents.contains_key(&hb.agent_id) {
            self.note(&hb.agent_id, true);
        }
        match self.agents.entry(hb.agent_id.clone()) {
            Entry::Occupied(e) => {
                let rec = e.into_mut();
                rec.beat(hb, now);
                Ok(rec)
            }
            Entry::Vacant(_) if full => Err(refusal),
            Entry::Vacant(e) => {
                let info = AgentInfo {
                    agent_id: hb.agent_id.clone(),
                    hostname: hb.hostname.clone(),
                    ip: hb.ip.clone(),
                    port: hb.port,
                    sidecar_peer_id: hb.sidecar_peer_id.clone(),
                    capabilities: AgentCapabilities {
                        skills: hb.skill_names.clone(),
                        mcp_servers: Vec::new(),
                        goals_count: hb.goals_count,
                        mode: hb.mode.clone(),
                    },
                    status: hb.status.clone(),
                    mode: hb.mode.clone(),
                };
                Ok(e.insert(AgentRecord::new(info, now)))
            }
        }
    }

    /// The agent with this id, if this shard holds it.
    pub fn get(&self, agent_id: &str) -> Option<&AgentRecord> {
        self.agents.get(agent_id)
    }

    /// `DELETE /api/registry/agents/{id}`: removes and returns the agent (`None` → answer
    /// `{"error":"not found"}`).
    pub fn remove(&mut self, agent_id: &str) -> Option<AgentRecord> {
        self.uncharge(agent_id);
        let gone = self.agents.remove(agent_id);
        if gone.is_some() {
            self.note(agent_id, false);
        }
        gone
    }

    /// Up to `n` agents whose `agent_id` is above `after`, by `agent_id`: one shard's
    /// part of a page. O(log n + n).
    pub fn page(&self, after: Option<&str>, n: usize) -> Vec<AgentRecord> {
        use std::ops::Bound;
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.agents
            .range::<str, _>((lower, Bound::Unbounded))
            .take(n)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// All agents of this shard, ordered by `agent_id` (byte-wise).
    pub fn list(&self) -> impl ExactSizeIterator<Item = &AgentRecord> + '_ {
        self.agents.values()
    }

    /// The 15 s health job ([`HEALTH_CHECK_INTERVAL`](super::HEALTH_CHECK_INTERVAL)):
    /// recomputes every agent's health from the age of its last heartbeat with
    /// [`Health::from_age`]. Returns how many agents changed health. O(agents).
    pub fn tick_health(&mut self, now: UnixTime) -> usize {
        let mut changed = 0;
        for rec in self.agents.values_mut() {
            let health = Health::from_age(now.saturating_duration_since(rec.last_heartbeat));
            if health != rec.health {
                rec.health = health;
                changed += 1;
                if let Some(m) = self.mirror.as_mut() {
                    m.note(&rec.info.agent_id, false);
                }
            }
        }
        changed
    }

    /// `GET /api/registry/route?skill=X` on this shard: the `active` agents whose
    /// `capabilities.skills` contains `skill` (exact, case-sensitive match), ordered by
    /// [`AgentRecord::route_key`]. The server merges every shard's first candidate and
    /// answers with the one with the smallest `route_key`. O(agents).
    pub fn route_candidates(&self, skill: &str) -> Vec<&AgentRecord> {
        let mut found: Vec<&AgentRecord> = self
            .agents
            .values()
            .filter(|r| routable(r, skill))
            .collect();
        found.sort_unstable_by(|a, b| a.route_key().cmp(&b.route_key()));
        found
    }

    /// The first of [`route_candidates`](Self::route_candidates), without sorting them all.
    pub fn route_first(&self, skill: &str) -> Option<&AgentRecord> {
        self.agents
            .values()
            .filter(|r| routable(r, skill))
            .min_by(|a, b| a.route_key().cmp(&b.route_key()))
    }

    /// Whether a new record for `agent_id` would pass `agents_max`: the records and the
    /// loaded bindings count (an agent whose binding was loaded takes its place).
    fn is_full_for(&self, agent_id: &str) -> bool {
        self.agents.len() + self.loaded.len() >= self.config.agents_max
            && !self.loaded.contains_key(agent_id)
    }

    fn full(&self) -> AgentsFull {
        AgentsFull {
            agents_max: self.config.agents_max,
        }
    }
}

/// Whether `r` may answer a route query for `skill`.
fn routable(r: &AgentRecord, skill: &str) -> bool {
    r.health == Health::Active && r.info.capabilities.skills.iter().any(|s| s == skill)
}

#[cfg(test)]
mod tests {
    use super::super::{agent_body, agent_list_body, parse_body};
    use super::*;
    use std::time::Duration;

    const T0: UnixTime = UnixTime(1_700_000_000_123_456_789);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn info(id: &str, skills: &[&str]) -> AgentInfo {
        AgentInfo {
            agent_id: id.into(),
            hostname: "h".into(),
            ip: "10.0.0.1".into(),
            port: 9000,
            sidecar_peer_id: format!("sc-{id}"),
            capabilities: AgentCapabilities {
                skills: skills.iter().map(|s| s.to_string()).collect(),
                mcp_servers: vec!["fs".into()],
                goals_count: 2,
                mode: "cap-mode".into(),
            },
            status: "running".into(),
            mode: "auto".into(),
        }
    }

    fn hb(id: &str) -> Heartbeat {
        parse_body(format!(r#"{{"agent_id":"{id}"}}"#).as_bytes()).unwrap()
    }

    fn store() -> AgentStore {
        AgentStore::new(AgentStoreConfig::default())
    }

    #[test]
    fn agent_info_defaults() {
        let i: AgentInfo = parse_body(br#"{"agent_id":"a","hostname":"h"}"#).unwrap();
        assert_eq!(
            i,
            AgentInfo {
                agent_id: "a".into(),
                hostname: "h".into(),
                ip: String::new(),
                port: 8000,
                sidecar_peer_id: String::new(),
                capabilities: AgentCapabilities::default(),
                status: String::new(),
                mode: String::new(),
            }
        );
        let i: AgentInfo = parse_body(
            br#"{"agent_id":"a","hostname":"h","capabilities":{"skills":["x"]},"extra":[1]}"#,
        )
        .unwrap();
        assert_eq!(i.capabilities.skills, ["x"]);
        assert_eq!(i.capabilities.goals_count, 0);
        assert!(i.capabilities.mcp_servers.is_empty());
    }

    #[test]
    fn heartbeat_defaults_and_errors() {
        let h = hb("a");
        assert_eq!(
            h,
            Heartbeat {
                agent_id: "a".into(),
                hostname: String::new(),
                ip: String::new(),
                port: 8000,
                status: String::new(),
                mode: String::new(),
                skills_count: 0,
                goals_count: 0,
                uptime_seconds: 0,
                skill_names: vec![],
                sidecar_peer_id: String::new(),
            }
        );
        let err = parse_body::<Heartbeat>(br#"{"hostname":"h"}"#).unwrap_err();
        assert!(matches!(
            err,
            super::super::BodyError::MissingField {
                field: "agent_id",
                ..
            }
        ));
        for bad in [
            &br#"{"agent_id":"a","uptime_seconds":-1}"#[..],
            br#"{"agent_id":"a","goals_count":1.5}"#,
            br#"{"agent_id":"a","skill_names":[1]}"#,
            br#"{"agent_id":"a","sidecar_peer_id":null}"#,
        ] {
            assert_eq!(parse_body::<Heartbeat>(bad).unwrap_err().status(), 422);
        }
    }

    #[test]
    fn upsert_inserts_and_replaces() {
        let mut s = store();
        let r = s.upsert(info("a", &["x"]), T0).unwrap();
        assert_eq!(r.health, Health::Active);
        assert_eq!(r.registered_at, T0);
        assert_eq!(r.last_heartbeat, T0);

        s.tick_health(T0.saturating_add(secs(100)));
        assert_eq!(s.get("a").unwrap().health, Health::Stale);

        // Re-registering replaces everything, resets registered_at and health.
        let t1 = T0.saturating_add(secs(200));
        let mut i2 = info("a", &["y"]);
        i2.sidecar_peer_id = String::new();
        let r = s.upsert(i2.clone(), t1).unwrap();
        assert_eq!(r.info, i2);
        assert_eq!(r.registered_at, t1);
        assert_eq!(r.last_heartbeat, t1);
        assert_eq!(r.health, Health::Active);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn first_heartbeat_registers() {
        let mut s = store();
        let h: Heartbeat = parse_body(
            br#"{"agent_id":"a","hostname":"h","ip":"1.2.3.4","port":1,"status":"s","mode":"m",
                "skills_count":9,"goals_count":3,"uptime_seconds":5,"skill_names":["x","y"],
                "sidecar_peer_id":"sc"}"#,
        )
        .unwrap();
        let r = s.heartbeat(&h, T0).unwrap();
        assert_eq!(
            r.info,
            AgentInfo {
                agent_id: "a".into(),
                hostname: "h".into(),
                ip: "1.2.3.4".into(),
                port: 1,
                sidecar_peer_id: "sc".into(),
                capabilities: AgentCapabilities {
                    skills: vec!["x".into(), "y".into()],
                    mcp_servers: vec![],
                    goals_count: 3,
                    mode: "m".into(),
                },
                status: "s".into(),
                mode: "m".into(),
            }
        );
        assert_eq!(r.registered_at, T0);
        assert_eq!(r.last_heartbeat, T0);
        assert_eq!(r.health, Health::Active);
    }

    #[test]
    fn heartbeat_updates_known_agent() {
        let mut s = store();
        s.upsert(info("a", &["x", "y"]), T0).unwrap();
        s.tick_health(T0.saturating_add(secs(300)));
        assert_eq!(s.get("a").unwrap().health, Health::Offline);

        let t1 = T0.saturating_add(secs(300));
        let h: Heartbeat = parse_body(
            br#"{"agent_id":"a","hostname":"h2","skill_names":["z"],"goals_count":7,"mode":"m2"}"#,
        )
        .unwrap();
        let r = s.heartbeat(&h, t1).unwrap().clone();
        assert_eq!(r.health, Health::Active);
        assert_eq!(r.last_heartbeat, t1);
        assert_eq!(r.registered_at, T0, "registered_at is kept");
        let i = &r.info;
        assert_eq!(i.hostname, "h2");
        assert_eq!(i.ip, "", "overwritten even when absent from the heartbeat");
        assert_eq!(i.port, 8000);
        assert_eq!(i.status, "");
        assert_eq!(i.mode, "m2");
        assert_eq!(i.capabilities.skills, ["z"], "skills are replaced");
        assert_eq!(i.capabilities.goals_count, 7);
        assert_eq!(i.capabilities.mcp_servers, ["fs"], "mcp_servers kept");
        assert_eq!(i.capabilities.mode, "cap-mode", "capabilities.mode kept");
        assert_eq!(
            i.sidecar_peer_id, "sc-a",
            "empty sidecar id does not overwrite"
        );

        // A non-empty one does.
        let h: Heartbeat = parse_body(br#"{"agent_id":"a","sidecar_peer_id":"new"}"#).unwrap();
        assert_eq!(s.heartbeat(&h, t1).unwrap().info.sidecar_peer_id, "new");
        // And an empty skill list empties the skills.
        assert!(s.get("a").unwrap().info.capabilities.skills.is_empty());
    }

    #[test]
    fn get_remove_list() {
        let mut s = store();
        assert!(s.is_empty());
        for id in ["c", "a", "b"] {
            s.upsert(info(id, &[]), T0).unwrap();
        }
        let ids: Vec<&str> = s.list().map(|r| r.info.agent_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(s.get("b").unwrap().info.agent_id, "b");
        assert!(s.get("zz").is_none());
        assert_eq!(s.remove("b").unwrap().info.agent_id, "b");
        assert!(s.remove("b").is_none());
        assert!(s.get("b").is_none());
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn agents_max_refuses_only_new_agents() {
        let mut s = AgentStore::new(AgentStoreConfig { agents_max: 2 });
        s.upsert(info("a", &[]), T0).unwrap();
        s.heartbeat(&hb("b"), T0).unwrap();
        assert_eq!(
            s.upsert(info("c", &[]), T0).unwrap_err(),
            AgentsFull { agents_max: 2 }
        );
        assert_eq!(s.heartbeat(&hb("c"), T0).unwrap_err().agents_max, 2);
        // Known agents still work.
        s.upsert(info("b", &[]), T0).unwrap();
        s.heartbeat(&hb("a"), T0).unwrap();
        assert_eq!(s.len(), 2);
        // Deleting frees room.
        s.remove("a");
        s.heartbeat(&hb("c"), T0).unwrap();
        assert_eq!(s.len(), 2);

        let mut zero = AgentStore::new(AgentStoreConfig { agents_max: 0 });
        assert!(zero.upsert(info("a", &[]), T0).is_err());
    }

    #[test]
    fn health_transitions_at_exact_boundaries() {
        let mut s = store();
        s.upsert(info("a", &[]), T0).unwrap();
        let ns = Duration::from_nanos(1);
        let steps = [
            (secs(90), Health::Active),
            (secs(90) + ns, Health::Stale),
            (secs(270), Health::Stale),
            (secs(270) + ns, Health::Offline),
            (secs(10_000), Health::Offline),
        ];
        for (age, want) in steps {
            s.tick_health(T0.saturating_add(age));
            assert_eq!(s.get("a").unwrap().health, want, "{age:?}");
        }
        // A heartbeat revives; a clock that went backwards counts as age 0.
        s.heartbeat(&hb("a"), T0).unwrap();
        assert_eq!(s.tick_health(UnixTime::EPOCH), 0);
        assert_eq!(s.get("a").unwrap().health, Health::Active);
    }

    #[test]
    fn tick_health_counts_changes() {
        let mut s = store();
        s.upsert(info("a", &[]), T0).unwrap();
        s.upsert(info("b", &[]), T0.saturating_add(secs(60)))
            .unwrap();
        assert_eq!(s.tick_health(T0.saturating_add(secs(100))), 1);
        assert_eq!(s.tick_health(T0.saturating_add(secs(100))), 0);
        assert_eq!(s.tick_health(T0.saturating_add(secs(200))), 1);
    }

    #[test]
    fn route_candidates_active_with_skill_in_registration_order() {
        let mut s = store();
        s.upsert(info("late", &["x"]), T0.saturating_add(secs(30)))
            .unwrap();
        s.upsert(info("early", &["y", "x"]), T0).unwrap();
        s.upsert(info("tie-b", &["x"]), T0.saturating_add(secs(10)))
            .unwrap();
        s.upsert(info("tie-a", &["x"]), T0.saturating_add(secs(10)))
            .unwrap();
        s.upsert(info("other", &["y"]), T0).unwrap();
        let ids = |s: &AgentStore, skill: &str| -> Vec<String> {
            s.route_candidates(skill)
                .iter()
                .map(|r| r.info.agent_id.clone())
                .collect()
        };
        assert_eq!(ids(&s, "x"), ["early", "tie-a", "tie-b", "late"]);
        assert_eq!(s.route_first("x").unwrap().info.agent_id, "early");
        assert!(ids(&s, "X").is_empty(), "case-sensitive");
        assert!(ids(&s, "").is_empty());
        assert!(s.route_first("nope").is_none());

        // Only active agents: "early" goes stale (last heard at T0), the others do not.
        s.tick_health(T0.saturating_add(secs(91)));
        assert_eq!(ids(&s, "x"), ["tie-a", "tie-b", "late"]);
        // Heartbeat-replaced skills take effect for routing.
        let h: Heartbeat = parse_body(br#"{"agent_id":"tie-a","skill_names":["y"]}"#).unwrap();
        s.heartbeat(&h, T0.saturating_add(secs(91))).unwrap();
        assert_eq!(ids(&s, "x"), ["tie-b", "late"]);
    }

    fn sample_record() -> AgentRecord {
        AgentRecord {
            info: info("a1", &["search"]),
            health: Health::Active,
            registered_at: T0,
            last_heartbeat: UnixTime(1_700_000_005_000_000_000),
            bound: None,
        }
    }

    #[test]
    fn record_json_in_struct_order() {
        let want = concat!(
            r#"{"agent_id":"a1","hostname":"h","ip":"10.0.0.1","port":9000,"sidecar_peer_id":"sc-a1","#,
            r#""capabilities":{"skills":["search"],"mcp_servers":["fs"],"goals_count":2,"mode":"cap-mode"},"#,
            r#""status":"running","mode":"auto","health":"active","#,
            r#""registered_at":"2023-11-14T22:13:20.123456789+00:00","#,
            r#""last_heartbeat":"2023-11-14T22:13:25+00:00"}"#
        );
        assert_eq!(serde_json::to_string(&sample_record()).unwrap(), want);
        assert_eq!(
            agent_list_body(&[sample_record()]),
            format!("[{want}]").into_bytes()
        );
        let empty: [AgentRecord; 0] = [];
        assert_eq!(agent_list_body(&empty), b"[]");
        let r = sample_record();
        assert_eq!(
            agent_list_body(&[&r, &r]),
            format!("[{want},{want}]").into_bytes()
        );
    }

    #[test]
    fn record_json_sorted_matches_value_round_trip() {
        let r = sample_record();
        let want = concat!(
            r#"{"agent_id":"a1","#,
            r#""capabilities":{"goals_count":2,"mcp_servers":["fs"],"mode":"cap-mode","skills":["search"]},"#,
            r#""health":"active","hostname":"h","ip":"10.0.0.1","#,
            r#""last_heartbeat":"2023-11-14T22:13:25+00:00","mode":"auto","port":9000,"#,
            r#""registered_at":"2023-11-14T22:13:20.123456789+00:00","#,
            r#""sidecar_peer_id":"sc-a1","status":"running"}"#
        );
        assert_eq!(agent_body(&r), want.as_bytes());
        // The reference's path: to_value (BTreeMap-backed) then serialize.
        let via_value = serde_json::to_string(&serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(via_value, want);
    }
}
