//! What a shard's agent store notes for the cluster's mirror of the registry, sans-IO
//! (`registry::mirror` writes it to Redis; see its docs): which agents changed, and what
//! was last written of each, so that a steady heartbeat is not a write each.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::task::Waker;
use std::time::Duration;

use super::AgentRecord;
use crate::time::UnixTime;

/// How often a steady heartbeat (one that changes nothing but `last_heartbeat`) is
/// written to the mirror, per agent: a fifth of the 90 s after which an agent goes
/// `stale`, so another node's view of `last_heartbeat` is at most 18 s behind, while
/// 10,000 agents heartbeating every few seconds cost about 550 writes a second per
/// cluster, not one per heartbeat. Any other change is written at once.
pub const HEARTBEAT_WRITE_INTERVAL: Duration = Duration::from_secs(18);

/// Agents noted and not yet written. The mirror task takes them every time it is woken
/// (a turn of the shard's loop), so what waits is one turn's changes (an agent noted
/// twice is one entry). Beyond this (a burst of thousands of distinct agents within one
/// turn) a change is not kept: the shard writes all its agents again and removes the
/// entries of those it no longer holds ([`MirrorNotes::resync`], [`MirrorNotes::lost`]).
pub const NOTED_AGENTS_MAX: usize = 16 * 1024;

/// Why an agent was noted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    /// It registered or heartbeated here: this node takes it (a move).
    Came,
    /// Anything else (a health change, a delete): this node's own entry only.
    Changed,
}

/// What a shard's agent store tells the mirror task, sans-IO (kept by the store in a
/// cluster; see the module docs).
#[derive(Clone, Debug, Default)]
pub struct MirrorNotes {
    noted: BTreeMap<String, Why>,
    /// What was last written of each agent held: a digest of its record without
    /// `last_heartbeat`, and when. One entry per agent of the store.
    written: HashMap<String, (u64, UnixTime)>,
    /// Every agent of the shard must be written again (after a reconnect, or a note
    /// refused).
    pub resync: bool,
    /// A note was refused: entries of agents no longer held here may be left; the
    /// task removes them (this node's index, those this shard owns and no longer holds).
    pub lost: bool,
    /// The link came up: the shard's bindings are asserted into the cluster's
    /// (`registry::bindings::assert_all`) before its agents are written again.
    pub assert_bindings: bool,
    /// Bindings this shard asserted that another node had bound first (theirs won).
    pub binding_conflicts: u64,
    waker: Option<Waker>,
}

/// One write to the mirror.
#[derive(Debug, PartialEq, Eq)]
pub enum MirrorWrite {
    /// The agent's record (the list's JSON); `came`: it registered or heartbeated here;
    /// `bound`: its binding here (the write does not take the agent where the cluster's
    /// binding names another holder, `registry::bindings`); `route`: its entries in the
    /// per-skill route indexes (`registry::mirror`, `ROUTE`), `None` when
    /// `GET /api/registry/route` would not pick it (not `active`, or no skills).
    Put {
        id: String,
        json: Vec<u8>,
        came: bool,
        bound: Option<crate::limits::Owner>,
        route: Option<RouteEntry>,
    },
    /// The agent is no longer here.
    Del { id: String },
}

/// Where a routable agent stands in the per-skill route indexes of the mirror: its
/// member (`shard::paging::time_key` of `registered_at` and the id, so that the indexes'
/// byte order is [`AgentRecord::route_key`]'s) and its skills, each once.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RouteEntry {
    #[serde(rename = "m")]
    pub member: String,
    #[serde(rename = "s")]
    pub skills: Vec<String>,
}

impl RouteEntry {
    /// `r`'s entry, `None` when the route would not pick it (`registry::agents::routable`
    /// for any skill: `active`, with at least one skill).
    pub fn of(r: &AgentRecord) -> Option<RouteEntry> {
        if r.health != super::Health::Active || r.info.capabilities.skills.is_empty() {
            return None;
        }
        let mut skills = r.info.capabilities.skills.clone();
        skills.sort_unstable();
        skills.dedup();
        Some(RouteEntry {
            member: crate::shard::paging::time_key(r.registered_at, &r.info.agent_id),
            skills,
        })
    }
}

impl MirrorNotes {
    /// Notes that `id` registered or heartbeated here (`came`), or changed otherwise.
    pub fn note(&mut self, id: &str, came: bool) {
        let why = if came { Why::Came } else { Why::Changed };
        let full = self.noted.len() >= NOTED_AGENTS_MAX;
        match self.noted.get_mut(id) {
            Some(w) => {
                if came {
                    *w = Why::Came;
                }
            }
            None if full => {
                self.resync = true;
                self.lost = true;
            }
            None => {
                self.noted.insert(id.to_owned(), why);
            }
        }
        self.wake();
    }

    /// The agent left without a note (it moved to another node, whose write replaced
    /// the entry): forgets what was written of it and any pending note.
    pub fn forget(&mut self, id: &str) {
        self.written.remove(id);
        self.noted.remove(id);
    }

    /// Whether the task has something to do.
    pub fn is_pending(&self) -> bool {
        !self.noted.is_empty() || self.resync
    }

    /// The link is back, or went down: everything is written again once it is up.
    pub fn ask_resync(&mut self) {
        self.resync = true;
        self.wake();
    }

    /// The task waits for the next note.
    pub fn set_waker(&mut self, w: &Waker) {
        match &self.waker {
            Some(old) if old.will_wake(w) => {}
            _ => self.waker = Some(w.clone()),
        }
    }

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// What to write now, given the store's agents (`get`, and all of them for a
    /// resync). A steady heartbeat's note is skipped until
    /// [`HEARTBEAT_WRITE_INTERVAL`] after the agent's last write.
    pub fn take<'a>(
        &mut self,
        now: UnixTime,
        get: impl Fn(&str) -> Option<&'a AgentRecord>,
        all: impl Iterator<Item = &'a AgentRecord>,
    ) -> Vec<MirrorWrite> {
        let noted = std::mem::take(&mut self.noted);
        let mut out = Vec::new();
        if std::mem::take(&mut self.resync) {
            self.written.clear();
            for r in all {
                let came = noted.get(&r.info.agent_id) == Some(&Why::Came);
                out.push(self.put(r, now, came));
            }
            for id in noted.keys() {
                if get(id).is_none() {
                    out.push(MirrorWrite::Del { id: id.clone() });
                }
            }
            return out;
        }
        for (id, why) in noted {
            match get(&id) {
                None => {
                    self.written.remove(&id);
                    out.push(MirrorWrite::Del { id });
                }
                Some(r) => {
                    let same = self.written.get(&id).is_some_and(|&(digest, at)| {
                        digest == digest_of(r)
                            && now.saturating_duration_since(at) < HEARTBEAT_WRITE_INTERVAL
                    });
                    if !same {
                        out.push(self.put(r, now, why == Why::Came));
                    }
                }
            }
        }
        out
    }

    fn put(&mut self, r: &AgentRecord, now: UnixTime, came: bool) -> MirrorWrite {
        self.written
            .insert(r.info.agent_id.clone(), (digest_of(r), now));
        MirrorWrite::Put {
            id: r.info.agent_id.clone(),
            json: wire::json::json_vec(r),
            came,
            bound: r.bound.clone(),
            route: RouteEntry::of(r),
        }
    }
}

/// A digest of what the list shows of `r`, but `last_heartbeat`.
fn digest_of(r: &AgentRecord) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let i = &r.info;
    (
        &i.agent_id,
        &i.hostname,
        &i.ip,
        i.port,
        &i.sidecar_peer_id,
        &i.status,
        &i.mode,
    )
        .hash(&mut h);
    let c = &i.capabilities;
    (&c.skills, &c.mcp_servers, c.goals_count, &c.mode).hash(&mut h);
    (r.health as u8, r.registered_at.0).hash(&mut h);
    h.finish()
}

/// The agent store's side of the mirror: what it notes as agents change, and what it
/// hands the mirror task.
impl super::AgentStore {
    /// Notes every change of an agent for the cluster's mirror (`registry::mirror`).
    pub fn enable_mirror(&mut self) {
        self.mirror = Some(MirrorNotes::default());
    }

    /// The mirror's notes, in a cluster.
    pub fn mirror_mut(&mut self) -> Option<&mut MirrorNotes> {
        self.mirror.as_mut()
    }

    /// What the mirror task writes now ([`MirrorNotes::take`]); empty on a node alone.
    pub fn mirror_writes(&mut self, now: UnixTime) -> Vec<MirrorWrite> {
        let agents = &self.agents;
        match self.mirror.as_mut() {
            Some(m) => m.take(now, |id| agents.get(id), agents.values()),
            None => Vec::new(),
        }
    }

    /// The agent moved to another node of the cluster (whose write replaced the
    /// mirror's entry): its record goes from memory, without a note; its binding stays
    /// (held as a loaded one is after a restart, and durable as it was). `false` when
    /// not held here, or while a change of its binding is being saved (then it stays; the next write here takes it back).
    pub fn drop_moved(&mut self, agent_id: &str) -> bool {
        if self.saving.contains(agent_id) || !self.agents.contains_key(agent_id) {
            return false;
        }
        self.uncharge(agent_id);
        // Its binding stays, as after a restart: only that principal takes the id back
        // here.
        if let Some(owner) = self.agents.remove(agent_id).and_then(|r| r.bound) {
            self.loaded.insert(agent_id.to_owned(), owner);
        }
        if let Some(m) = self.mirror.as_mut() {
            m.forget(agent_id);
        }
        true
    }

    pub(super) fn note(&mut self, agent_id: &str, came: bool) {
        if let Some(m) = self.mirror.as_mut() {
            m.note(agent_id, came);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{AgentInfo, AgentStore, AgentStoreConfig, Health, Heartbeat};

    const T0: UnixTime = UnixTime(1_700_000_000_000_000_000);

    fn info(id: &str) -> AgentInfo {
        wire::json::parse_body(format!(r#"{{"agent_id":"{id}","hostname":"h"}}"#).as_bytes())
            .unwrap()
    }

    fn hb(id: &str, host: &str) -> Heartbeat {
        wire::json::parse_body(format!(r#"{{"agent_id":"{id}","hostname":"{host}"}}"#).as_bytes())
            .unwrap()
    }

    fn ids(w: &[MirrorWrite]) -> Vec<String> {
        w.iter()
            .map(|w| match w {
                MirrorWrite::Put { id, came, .. } => format!("put {id} {came}"),
                MirrorWrite::Del { id } => format!("del {id}"),
            })
            .collect()
    }

    #[test]
    fn changes_are_written_and_steady_heartbeats_at_most_once_per_interval() {
        let mut s = AgentStore::new(AgentStoreConfig::default());
        s.enable_mirror();
        s.upsert(info("a"), T0).unwrap();
        s.heartbeat(&hb("b", "h"), T0).unwrap();
        assert_eq!(ids(&s.mirror_writes(T0)), ["put a true", "put b true"]);
        assert!(s.mirror_writes(T0).is_empty());
        // A steady heartbeat: not written until the interval has passed.
        let t1 = T0.saturating_add(Duration::from_secs(5));
        s.heartbeat(&hb("b", "h"), t1).unwrap();
        assert!(s.mirror_writes(t1).is_empty());
        let t2 = T0.saturating_add(HEARTBEAT_WRITE_INTERVAL);
        s.heartbeat(&hb("b", "h"), t2).unwrap();
        let w = s.mirror_writes(t2);
        assert_eq!(ids(&w), ["put b true"]);
        let MirrorWrite::Put { json, .. } = &w[0] else {
            unreachable!()
        };
        assert_eq!(json, &wire::json::json_vec(s.get("b").unwrap()));
        // A heartbeat that changes a field: at once.
        s.heartbeat(&hb("b", "h2"), t2).unwrap();
        assert_eq!(ids(&s.mirror_writes(t2)), ["put b true"]);
        // A health change: at once, not as the agent coming here.
        let late = T0.saturating_add(Duration::from_secs(100));
        assert_eq!(s.tick_health(late), 1);
        assert_eq!(s.get("a").unwrap().health, Health::Stale);
        assert_eq!(ids(&s.mirror_writes(late)), ["put a false"]);
        // A delete.
        s.remove("a");
        assert_eq!(ids(&s.mirror_writes(late)), ["del a"]);
        // A move: dropped without a note.
        assert!(s.drop_moved("b"));
        assert!(s.mirror_writes(late).is_empty());
        assert!(s.get("b").is_none());
        // Coming back is written at once (nothing was written of it since).
        s.heartbeat(&hb("b", "h2"), late).unwrap();
        assert_eq!(ids(&s.mirror_writes(late)), ["put b true"]);
    }

    #[test]
    fn a_resync_writes_every_agent_and_deletes_noted_ones_gone() {
        let mut s = AgentStore::new(AgentStoreConfig::default());
        s.upsert(info("x"), T0).unwrap();
        s.enable_mirror();
        s.upsert(info("a"), T0).unwrap();
        s.upsert(info("gone"), T0).unwrap();
        s.remove("gone");
        s.mirror_mut().unwrap().ask_resync();
        assert_eq!(
            ids(&s.mirror_writes(T0)),
            ["put a true", "put x false", "del gone"]
        );
    }

    #[test]
    fn only_active_agents_with_skills_have_a_route_entry_ordered_as_the_route_key() {
        let mut s = AgentStore::new(AgentStoreConfig::default());
        s.enable_mirror();
        let i: AgentInfo = wire::json::parse_body(
            br#"{"agent_id":"a","hostname":"h","capabilities":{"skills":["y","x","y"]}}"#,
        )
        .unwrap();
        s.upsert(i, T0).unwrap();
        s.upsert(info("none"), T0).unwrap();
        let a = s.get("a").unwrap();
        let e = RouteEntry::of(a).unwrap();
        assert_eq!(e.skills, ["x", "y"]);
        assert_eq!(e.member, format!("{:020}.a", T0.0));
        assert_eq!(RouteEntry::of(s.get("none").unwrap()), None);
        // The members' byte order is the route key's: time first, then the id.
        let later = crate::shard::paging::time_key(T0.saturating_add(Duration::from_nanos(1)), "0");
        assert!(e.member < later);
        assert!(e.member < crate::shard::paging::time_key(T0, "b"));
        // Not active: no entry, and the write that says so carries none.
        s.mirror_writes(T0);
        let late = T0.saturating_add(Duration::from_secs(100));
        s.tick_health(late);
        assert_eq!(RouteEntry::of(s.get("a").unwrap()), None);
        assert!(s
            .mirror_writes(late)
            .iter()
            .all(|w| matches!(w, MirrorWrite::Put { route: None, .. })));
    }

    #[test]
    fn a_burst_beyond_the_bound_asks_for_a_resync() {
        let mut m = MirrorNotes::default();
        for i in 0..NOTED_AGENTS_MAX {
            m.note(&i.to_string(), true);
        }
        m.note("0", true);
        assert!(!m.resync);
        m.note("one more", false);
        assert!(m.resync && m.lost);
    }
}
