//! Onboarding entries (the approval state machine) and the device-token index.
//!
//! ```text
//! pending_approval ──approve──▶ approved ──revoke──▶ revoked
//!        │
//!        └────────reject──────▶ rejected
//! ```
//! Every other transition is refused. Entries are kept after they reach a final state (the
//! reference never deletes them; `GET /api/pairing/all` lists them).

use std::collections::HashMap;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use super::codes::Issuer;
use super::{hex_lower, ActionError, ApproveResponse, PairResponse, Rng};
use crate::auth::DEVICE_TOKEN_ROLE;
use crate::time::UnixTime;

/// An entry id: 8 lower-case hex digits (32 random bits, like the reference's first 8
/// characters of a v4 UUID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId(u32);

impl EntryId {
    /// Parse exactly 8 lower-case hex digits; anything else (including upper case, which
    /// never matched in the reference either) is `None`.
    pub fn parse(s: &str) -> Option<EntryId> {
        let b = s.as_bytes();
        if b.len() != 8 {
            return None;
        }
        b.iter()
            .try_fold(0u32, |acc, &c| {
                let d = match c {
                    b'0'..=b'9' => c - b'0',
                    b'a'..=b'f' => c - b'a' + 10,
                    _ => return None,
                };
                Some(acc << 4 | u32::from(d))
            })
            .map(EntryId)
    }

    /// A random id.
    pub fn random(rng: &mut impl Rng) -> EntryId {
        let mut buf = [0u8; 4];
        rng.fill_bytes(&mut buf);
        EntryId(u32::from_be_bytes(buf))
    }

    /// The id with this numeric value.
    pub fn from_u32(n: u32) -> EntryId {
        EntryId(n)
    }

    /// The numeric value.
    pub fn value(self) -> u32 {
        self.0
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// Serialized as its 8-hex-digit string.
impl Serialize for EntryId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `agent-` + 6 lower-case hex digits (3 random bytes), as the reference assigns.
///
/// Only 24 bits: ids may repeat across entries, as in the reference; peer ids are keyed
/// elsewhere (the registry), so this module does not try to keep them unique.
pub fn new_peer_id(rng: &mut impl Rng) -> String {
    let mut buf = [0u8; 3];
    rng.fill_bytes(&mut buf);
    format!("agent-{}", hex_lower(&buf))
}

/// `dt_` + 32 lower-case hex digits (16 random bytes), as the reference issues.
pub fn new_device_token(rng: &mut impl Rng) -> String {
    let mut buf = [0u8; 16];
    rng.fill_bytes(&mut buf);
    format!("dt_{}", hex_lower(&buf))
}

/// Where an entry is in the approval pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Code redeemed, waiting for an admin.
    PendingApproval,
    /// Approved; holds a device token.
    Approved,
    /// Refused by an admin (final).
    Rejected,
    /// Approval withdrawn (final); the device token no longer works.
    Revoked,
}

impl Status {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::PendingApproval => "pending_approval",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::Revoked => "revoked",
        }
    }
}

/// One agent going through onboarding.
///
/// Serializes as the reference's `OnboardingEntry`: `{"id","agent_name","peer_id",
/// "device_token" (omitted while empty),"status","created_at","updated_at"}` with times as
/// float seconds. `mesh` and `invited_by` are kept for the server but are not on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The id.
    pub id: EntryId,
    /// Display name (trimmed).
    pub agent_name: String,
    /// Assigned peer id.
    pub peer_id: String,
    /// Empty until approval, then `dt_` + 32 hex (kept after revocation, as in the
    /// reference, but removed from the [`DeviceTokenIndex`]).
    pub device_token: String,
    /// State.
    pub status: Status,
    /// When the code was redeemed.
    pub created_at: UnixTime,
    /// Last transition.
    pub updated_at: UnixTime,
    /// Mesh inherited from the API key that generated the invite (`None` = default).
    pub mesh: Option<String>,
    /// Peer id of the API key that generated the invite.
    pub invited_by: String,
}

impl Serialize for Entry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let with_token = !self.device_token.is_empty();
        let mut st = s.serialize_struct("OnboardingEntry", 6 + usize::from(with_token))?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("agent_name", &self.agent_name)?;
        st.serialize_field("peer_id", &self.peer_id)?;
        if with_token {
            st.serialize_field("device_token", &self.device_token)?;
        } else {
            st.skip_field("device_token")?;
        }
        st.serialize_field("status", &self.status)?;
        st.serialize_field("created_at", &self.created_at.as_secs_f64())?;
        st.serialize_field("updated_at", &self.updated_at.as_secs_f64())?;
        st.end()
    }
}

impl Entry {
    /// The `pair` response for this entry.
    pub fn pair_response(&self) -> PairResponse {
        PairResponse {
            id: self.id,
            peer_id: self.peer_id.clone(),
            status: self.status,
        }
    }

    /// The `approve` response for this entry.
    pub fn approve_response(&self) -> ApproveResponse {
        ApproveResponse {
            device_token: self.device_token.clone(),
            id: self.id,
            peer_id: self.peer_id.clone(),
            status: self.status,
        }
    }

    /// What this entry's device token grants, for [`DeviceTokenIndex::insert`]; `None`
    /// unless the entry is approved.
    pub fn device_grant(&self) -> Option<DeviceGrant> {
        (self.status == Status::Approved && !self.device_token.is_empty()).then(|| DeviceGrant {
            peer_id: self.peer_id.clone(),
            role: DEVICE_TOKEN_ROLE.to_owned(),
            mesh: self.mesh.clone(),
            entry_id: self.id,
        })
    }
}

/// Why an entry could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateError {
    /// The id is taken: draw another.
    IdInUse,
    /// The store holds `entries_max` entries ([`super::PairError::StoreFull`], 503).
    Full,
}

/// Onboarding entries owned by one shard.
#[derive(Debug, Clone)]
pub struct PairingStore {
    entries: HashMap<EntryId, Entry>,
    entries_max: usize,
}

impl Default for PairingStore {
    fn default() -> Self {
        PairingStore::new()
    }
}

impl PairingStore {
    /// Default for `entries_max`.
    pub const DEFAULT_ENTRIES_MAX: usize = 10_000;

    /// How many times [`create_random`](Self::create_random) redraws a taken id.
    pub const CREATE_TRIES_MAX: usize = 8;

    /// An empty store holding at most
    /// [`DEFAULT_ENTRIES_MAX`](Self::DEFAULT_ENTRIES_MAX) entries.
    pub fn new() -> PairingStore {
        PairingStore::with_limit(Self::DEFAULT_ENTRIES_MAX)
    }

    /// An empty store holding at most `entries_max` entries.
    ///
    /// Entries are never deleted (final states stay listed), so this bounds the store's
    /// memory for the life of the process. When full, [`create`](Self::create) fails with
    /// [`CreateError::Full`]; existing entries keep working. The invite code has already
    /// been used by then, so the agent needs a new one.
    pub fn with_limit(entries_max: usize) -> PairingStore {
        PairingStore {
            entries: HashMap::new(),
            entries_max,
        }
    }

    /// Add a `pending_approval` entry for a redeemed code.
    pub fn create(
        &mut self,
        id: EntryId,
        peer_id: String,
        agent_name: &str,
        invited: Issuer,
        now: UnixTime,
    ) -> Result<&Entry, CreateError> {
        if self.entries.contains_key(&id) {
            return Err(CreateError::IdInUse);
        }
        if self.entries.len() >= self.entries_max {
            return Err(CreateError::Full);
        }
        let entry = Entry {
            id,
            agent_name: agent_name.to_owned(),
            peer_id,
            device_token: String::new(),
            status: Status::PendingApproval,
            created_at: now,
            updated_at: now,
            mesh: invited.mesh,
            invited_by: invited.peer_id,
        };
        Ok(self.entries.entry(id).or_insert(entry))
    }

    /// [`create`](Self::create) with a random id and peer id, redrawing taken ids up to
    /// [`CREATE_TRIES_MAX`](Self::CREATE_TRIES_MAX) times. For a store that owns every id
    /// (one shard, tests); a sharded server draws [`EntryId::random`] first and routes.
    pub fn create_random(
        &mut self,
        rng: &mut impl Rng,
        agent_name: &str,
        invited: Issuer,
        now: UnixTime,
    ) -> Result<&Entry, CreateError> {
        let mut id = None;
        for _ in 0..Self::CREATE_TRIES_MAX {
            let candidate = EntryId::random(rng);
            if !self.entries.contains_key(&candidate) {
                id = Some(candidate);
                break;
            }
        }
        let id = id.ok_or(CreateError::IdInUse)?;
        let peer_id = new_peer_id(rng);
        self.create(id, peer_id, agent_name, invited, now)
    }

    /// The entry with this id (`None` for unknown or malformed ids).
    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.get(&EntryId::parse(id)?)
    }

    /// `pending_approval` → `approved` with a fresh device token from `rng`.
    ///
    /// The caller then inserts `entry.device_grant()` into the [`DeviceTokenIndex`] owning
    /// `entry.device_token` and replies with `entry.approve_response()`.
    pub fn approve(
        &mut self,
        id: &str,
        rng: &mut impl Rng,
        now: UnixTime,
    ) -> Result<&Entry, ActionError> {
        let e = self
            .pending_mut(id)
            .ok_or(ActionError::NotFoundOrNotPending)?;
        e.status = Status::Approved;
        e.device_token = new_device_token(rng);
        e.updated_at = now;
        Ok(e)
    }

    /// `pending_approval` → `rejected`.
    pub fn reject(&mut self, id: &str, now: UnixTime) -> Result<&Entry, ActionError> {
        let e = self
            .pending_mut(id)
            .ok_or(ActionError::NotFoundOrNotPending)?;
        e.status = Status::Rejected;
        e.updated_at = now;
        Ok(e)
    }

    /// `approved` → `pending_approval`, dropping the device token: undoes an approval
    /// whose token could not be activated, so the admin can approve again later.
    pub fn withdraw_approval(&mut self, id: &str, now: UnixTime) -> Result<&Entry, ActionError> {
        let e = EntryId::parse(id)
            .and_then(|id| self.entries.get_mut(&id))
            .filter(|e| e.status == Status::Approved)
            .ok_or(ActionError::NotFoundOrNotApproved)?;
        e.status = Status::PendingApproval;
        e.device_token.clear();
        e.updated_at = now;
        Ok(e)
    }

    /// `approved` → `revoked`. The caller then removes `entry.device_token` from the
    /// [`DeviceTokenIndex`] that owns it.
    pub fn revoke(&mut self, id: &str, now: UnixTime) -> Result<&Entry, ActionError> {
        let e = EntryId::parse(id)
            .and_then(|id| self.entries.get_mut(&id))
            .filter(|e| e.status == Status::Approved)
            .ok_or(ActionError::NotFoundOrNotApproved)?;
        e.status = Status::Revoked;
        e.updated_at = now;
        Ok(e)
    }

    fn pending_mut(&mut self, id: &str) -> Option<&mut Entry> {
        EntryId::parse(id)
            .and_then(|id| self.entries.get_mut(&id))
            .filter(|e| e.status == Status::PendingApproval)
    }

    /// Entries awaiting approval, oldest first (ties by id).
    pub fn list_pending(&self) -> Vec<&Entry> {
        self.sorted(|e| e.status == Status::PendingApproval)
    }

    /// All entries, oldest first (ties by id). (The reference's order is its hash map's,
    /// i.e. unspecified.)
    pub fn list_all(&self) -> Vec<&Entry> {
        self.sorted(|_| true)
    }

    fn sorted(&self, keep: impl Fn(&Entry) -> bool) -> Vec<&Entry> {
        let mut v: Vec<&Entry> = self.entries.values().filter(|e| keep(e)).collect();
        v.sort_unstable_by_key(|e| (e.created_at, e.id));
        v
    }

    /// Peer ids of approved (not revoked) entries, for authorization.
    pub fn approved_peer_ids(&self) -> impl Iterator<Item = &str> {
        self.entries
            .values()
            .filter(|e| e.status == Status::Approved)
            .map(|e| e.peer_id.as_str())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The configured limit.
    pub fn entries_max(&self) -> usize {
        self.entries_max
    }
}

/// What a device token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceGrant {
    /// Peer id of the approved entry.
    pub peer_id: String,
    /// Always [`DEVICE_TOKEN_ROLE`] (`agent`).
    pub role: String,
    /// Mesh of the entry (`None` = default).
    pub mesh: Option<String>,
    /// The entry it came from.
    pub entry_id: EntryId,
}

/// Why a device token could not be indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexInsertError {
    /// The token is already indexed (128 random bits: practically never).
    InUse,
    /// The index holds `tokens_max` tokens.
    Full,
}

/// Device token → grant, for the tokens one shard owns. Holds only approved, unrevoked
/// tokens: insert on approve, remove on revoke.
#[derive(Debug, Clone)]
pub struct DeviceTokenIndex {
    tokens: HashMap<String, DeviceGrant>,
    tokens_max: usize,
}

impl Default for DeviceTokenIndex {
    fn default() -> Self {
        DeviceTokenIndex::new()
    }
}

impl DeviceTokenIndex {
    /// Default for `tokens_max`.
    pub const DEFAULT_TOKENS_MAX: usize = 100_000;

    /// An empty index holding at most
    /// [`DEFAULT_TOKENS_MAX`](Self::DEFAULT_TOKENS_MAX) tokens.
    pub fn new() -> DeviceTokenIndex {
        DeviceTokenIndex::with_limit(Self::DEFAULT_TOKENS_MAX)
    }

    /// An empty index holding at most `tokens_max` tokens.
    ///
    /// Tokens come only from approvals, which the pairing stores' `entries_max` already
    /// bound, so this is a backstop: set it at least as large as the entries one shard's
    /// share of tokens can come from. When full, [`insert`](Self::insert) fails with
    /// [`IndexInsertError::Full`] and the new token does not work (the server should then
    /// revoke the entry it just approved and answer 503).
    pub fn with_limit(tokens_max: usize) -> DeviceTokenIndex {
        DeviceTokenIndex {
            tokens: HashMap::new(),
            tokens_max,
        }
    }

    /// Index `token`.
    pub fn insert(&mut self, token: String, grant: DeviceGrant) -> Result<(), IndexInsertError> {
        if self.tokens.contains_key(&token) {
            return Err(IndexInsertError::InUse);
        }
        if self.tokens.len() >= self.tokens_max {
            return Err(IndexInsertError::Full);
        }
        self.tokens.insert(token, grant);
        Ok(())
    }

    /// Drop `token` (on revoke); returns what it granted.
    pub fn remove(&mut self, token: &str) -> Option<DeviceGrant> {
        self.tokens.remove(token)
    }

    /// What `token` grants, if it is indexed.
    pub fn lookup(&self, token: &str) -> Option<&DeviceGrant> {
        self.tokens.get(token)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether no token is indexed.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The configured limit.
    pub fn tokens_max(&self) -> usize {
        self.tokens_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: UnixTime = UnixTime(1_795_239_689_123_456_789);

    fn counter_rng() -> impl FnMut(&mut [u8]) {
        let mut n = 0u8;
        move |buf: &mut [u8]| {
            for b in buf {
                n = n.wrapping_add(1);
                *b = n;
            }
        }
    }

    fn issuer(mesh: Option<&str>) -> Issuer {
        Issuer {
            peer_id: "agent-001".into(),
            mesh: mesh.map(str::to_owned),
        }
    }

    fn later(s: u64) -> UnixTime {
        T0.saturating_add_secs(s)
    }

    /// A store with one pending entry; returns its id string.
    fn one_pending(store: &mut PairingStore, rng: &mut impl Rng) -> String {
        store
            .create_random(rng, "my-agent", issuer(Some("blue")), T0)
            .unwrap()
            .id
            .to_string()
    }

    #[test]
    fn ids_and_tokens_format() {
        let mut r = counter_rng();
        let id = EntryId::random(&mut r);
        assert_eq!(id.to_string(), "01020304");
        assert_eq!(new_peer_id(&mut r), "agent-050607");
        let t = new_device_token(&mut r);
        assert_eq!(t, "dt_08090a0b0c0d0e0f1011121314151617");
        assert_eq!(t.len(), 35);
        assert_eq!(EntryId::parse("01020304"), Some(id));
        assert_eq!(
            EntryId::parse("deadbeef").map(EntryId::value),
            Some(0xdead_beef)
        );
        assert_eq!(EntryId::from_u32(0xab).to_string(), "000000ab");
        for bad in [
            "",
            "0102030",
            "010203040",
            "DEADBEEF",
            "0102030g",
            "-1020304",
            "0x020304",
        ] {
            assert_eq!(EntryId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn create_pending() {
        let mut s = PairingStore::new();
        let mut r = counter_rng();
        let e = s
            .create_random(&mut r, "my-agent", issuer(Some("blue")), T0)
            .unwrap();
        assert_eq!(e.status, Status::PendingApproval);
        assert!(e.device_token.is_empty());
        assert_eq!(e.mesh.as_deref(), Some("blue"));
        assert_eq!(e.invited_by, "agent-001");
        assert_eq!(e.created_at, T0);
        assert_eq!(e.updated_at, T0);
        assert!(e.device_grant().is_none());
        assert_eq!(
            serde_json::to_string(&e.pair_response()).unwrap(),
            r#"{"id":"01020304","peer_id":"agent-050607","status":"pending_approval"}"#
        );
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn entry_json_matches_reference_shape() {
        let mut s = PairingStore::new();
        let mut r = counter_rng();
        let id = one_pending(&mut s, &mut r);
        assert_eq!(
            serde_json::to_string(s.get(&id).unwrap()).unwrap(),
            r#"{"id":"01020304","agent_name":"my-agent","peer_id":"agent-050607","status":"pending_approval","created_at":1795239689.1234567,"updated_at":1795239689.1234567}"#
        );
        s.approve(&id, &mut r, UnixTime(1_795_239_700_500_000_000))
            .unwrap();
        assert_eq!(
            serde_json::to_string(s.get(&id).unwrap()).unwrap(),
            r#"{"id":"01020304","agent_name":"my-agent","peer_id":"agent-050607","device_token":"dt_08090a0b0c0d0e0f1011121314151617","status":"approved","created_at":1795239689.1234567,"updated_at":1795239700.5}"#
        );
    }

    #[test]
    fn approve_then_revoke() {
        let mut s = PairingStore::new();
        let mut r = counter_rng();
        let id = one_pending(&mut s, &mut r);
        let e = s.approve(&id, &mut r, later(5)).unwrap();
        assert_eq!(e.status, Status::Approved);
        assert!(e.device_token.starts_with("dt_"));
        assert_eq!(e.updated_at, later(5));
        assert_eq!(e.created_at, T0);
        let resp = e.approve_response();
        assert_eq!(resp.status, Status::Approved);
        assert_eq!(resp.device_token, e.device_token);
        let grant = e.device_grant().unwrap();
        assert_eq!(grant.role, "agent");
        assert_eq!(grant.peer_id, e.peer_id);
        assert_eq!(grant.mesh.as_deref(), Some("blue"));
        assert_eq!(grant.entry_id.to_string(), id);
        let peer = e.peer_id.clone();
        assert_eq!(s.approved_peer_ids().collect::<Vec<_>>(), [peer.as_str()]);

        // Approve / reject again are refused.
        assert_eq!(
            s.approve(&id, &mut r, later(6)).unwrap_err(),
            ActionError::NotFoundOrNotPending
        );
        assert_eq!(
            s.reject(&id, later(6)).unwrap_err(),
            ActionError::NotFoundOrNotPending
        );

        let e = s.revoke(&id, later(7)).unwrap();
        assert_eq!(e.status, Status::Revoked);
        assert_eq!(e.updated_at, later(7));
        // The token stays on the entry (as in the reference) but grants nothing.
        assert!(!e.device_token.is_empty());
        assert!(e.device_grant().is_none());
        assert_eq!(s.approved_peer_ids().count(), 0);

        // Revoked is final.
        assert_eq!(
            s.revoke(&id, later(8)).unwrap_err(),
            ActionError::NotFoundOrNotApproved
        );
        assert_eq!(
            s.approve(&id, &mut r, later(8)).unwrap_err(),
            ActionError::NotFoundOrNotPending
        );
        assert_eq!(
            s.reject(&id, later(8)).unwrap_err(),
            ActionError::NotFoundOrNotPending
        );
    }

    #[test]
    fn reject_is_final() {
        let mut s = PairingStore::new();
        let mut r = counter_rng();
        let id = one_pending(&mut s, &mut r);
        // Revoke of a pending entry is refused.
        assert_eq!(
            s.revoke(&id, later(1)).unwrap_err(),
            ActionError::NotFoundOrNotApproved
        );
        let e = s.reject(&id, later(2)).unwrap();
        assert_eq!(e.status, Status::Rejected);
        assert_eq!(e.updated_at, later(2));
        assert!(e.device_token.is_empty());
        assert_eq!(
            s.approve(&id, &mut r, later(3)).unwrap_err(),
            ActionError::NotFoundOrNotPending
        );
        assert_eq!(
            s.reject(&id, later(3)).unwrap_err(),
            ActionError::NotFoundOrNotPending
        );
        assert_eq!(
            s.revoke(&id, later(3)).unwrap_err(),
            ActionError::NotFoundOrNotApproved
        );
        // State unchanged by the refusals.
        assert_eq!(s.get(&id).unwrap().updated_at, later(2));
    }

    #[test]
    fn unknown_and_malformed_ids() {
        let mut s = PairingStore::new();
        let mut r = counter_rng();
        let id = s
            .create(
                EntryId::from_u32(0xdead_beef),
                "p".into(),
                "a",
                issuer(None),
                T0,
            )
            .unwrap()
            .id
            .to_string();
        assert_eq!(id, "deadbeef");
        for bad in ["", "ffffffff", "01020304/../x", &id.to_uppercase(), "😀😀"] {
            assert!(s.get(bad).is_none());
            assert_eq!(
                s.approve(bad, &mut r, T0).unwrap_err(),
                ActionError::NotFoundOrNotPending
            );
            assert_eq!(
                s.reject(bad, T0).unwrap_err(),
                ActionError::NotFoundOrNotPending
            );
            assert_eq!(
                s.revoke(bad, T0).unwrap_err(),
                ActionError::NotFoundOrNotApproved
            );
        }
        assert_eq!(s.get(&id).unwrap().status, Status::PendingApproval);
    }

    #[test]
    fn lists() {
        let mut s = PairingStore::new();
        let mut r = counter_rng();
        let a = s
            .create(
                EntryId::from_u32(3),
                "agent-aaaaaa".into(),
                "a",
                issuer(None),
                later(2),
            )
            .unwrap()
            .id;
        let b = s
            .create(
                EntryId::from_u32(2),
                "agent-bbbbbb".into(),
                "b",
                issuer(None),
                later(1),
            )
            .unwrap()
            .id;
        let c = s
            .create(
                EntryId::from_u32(1),
                "agent-cccccc".into(),
                "c",
                issuer(None),
                later(2),
            )
            .unwrap()
            .id;
        s.approve(&b.to_string(), &mut r, later(3)).unwrap();
        let ids = |v: Vec<&Entry>| v.iter().map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(ids(s.list_all()), [b, c, a]);
        assert_eq!(ids(s.list_pending()), [c, a]);
        s.reject(&a.to_string(), later(4)).unwrap();
        assert_eq!(ids(s.list_pending()), [c]);
        assert_eq!(
            serde_json::to_string(&s.list_pending()).unwrap(),
            format!(
                r#"[{{"id":"00000001","agent_name":"c","peer_id":"agent-cccccc","status":"pending_approval","created_at":{0},"updated_at":{0}}}]"#,
                later(2).as_secs_f64()
            )
        );
        assert_eq!(
            serde_json::to_string(&PairingStore::new().list_all()).unwrap(),
            "[]"
        );
    }

    #[test]
    fn id_collision_and_limit() {
        let mut s = PairingStore::with_limit(2);
        assert_eq!(s.entries_max(), 2);
        let id = EntryId::from_u32(7);
        s.create(id, "agent-000001".into(), "a", issuer(None), T0)
            .unwrap();
        assert_eq!(
            s.create(id, "agent-000002".into(), "b", issuer(None), T0)
                .unwrap_err(),
            CreateError::IdInUse
        );
        // The original is untouched.
        assert_eq!(s.get("00000007").unwrap().agent_name, "a");
        // create_random redraws past a taken id.
        let mut draws = [7u32, 7, 9].into_iter();
        let mut r = move |b: &mut [u8]| {
            if b.len() == 4 {
                b.copy_from_slice(&draws.next().unwrap_or(0).to_be_bytes());
            } else {
                b.fill(0xab);
            }
        };
        let e = s.create_random(&mut r, "c", issuer(None), T0).unwrap();
        assert_eq!(e.id, EntryId::from_u32(9));
        assert_eq!(e.peer_id, "agent-ababab");
        assert_eq!(
            s.create(EntryId::from_u32(10), "p".into(), "d", issuer(None), T0)
                .unwrap_err(),
            CreateError::Full
        );
        // A generator stuck on a taken id gives up.
        let mut stuck = |b: &mut [u8]| b.copy_from_slice(&[0, 0, 0, 7][..b.len().min(4)]);
        let mut big = PairingStore::new();
        big.create(id, "p".into(), "a", issuer(None), T0).unwrap();
        assert_eq!(
            big.create_random(&mut stuck, "x", issuer(None), T0)
                .unwrap_err(),
            CreateError::IdInUse
        );
    }

    #[test]
    fn device_token_index() {
        let mut s = PairingStore::new();
        let mut r = counter_rng();
        let id = one_pending(&mut s, &mut r);
        let e = s.approve(&id, &mut r, later(1)).unwrap();
        let token = e.device_token.clone();
        let grant = e.device_grant().unwrap();

        let mut idx = DeviceTokenIndex::with_limit(1);
        assert_eq!(idx.tokens_max(), 1);
        idx.insert(token.clone(), grant.clone()).unwrap();
        assert_eq!(idx.lookup(&token), Some(&grant));
        assert_eq!(idx.lookup("dt_nope"), None);
        assert_eq!(idx.lookup(""), None);
        assert_eq!(
            idx.insert(token.clone(), grant.clone()),
            Err(IndexInsertError::InUse)
        );
        assert_eq!(
            idx.insert("dt_other".into(), grant.clone()),
            Err(IndexInsertError::Full)
        );

        // Revoke: the entry says which token to drop.
        let e = s.revoke(&id, later(2)).unwrap();
        assert_eq!(idx.remove(&e.device_token), Some(grant));
        assert_eq!(idx.lookup(&token), None);
        assert!(idx.is_empty());
        assert_eq!(idx.remove(&token), None);
    }
    #[test]
    fn withdrawn_approval_goes_back_to_pending() {
        let mut store = PairingStore::new();
        let mut rng = |b: &mut [u8]| b.iter_mut().enumerate().for_each(|(i, x)| *x = i as u8 + 7);
        let issuer = Issuer {
            peer_id: "admin".into(),
            mesh: None,
        };
        let id = store
            .create_random(&mut rng, "laptop", issuer, UnixTime::from_secs(1))
            .unwrap()
            .id
            .to_string();
        assert!(
            store
                .withdraw_approval(&id, UnixTime::from_secs(2))
                .is_err(),
            "pending: nothing to withdraw"
        );
        store
            .approve(&id, &mut rng, UnixTime::from_secs(3))
            .unwrap();
        let e = store
            .withdraw_approval(&id, UnixTime::from_secs(4))
            .unwrap();
        assert_eq!(e.status, Status::PendingApproval);
        assert!(e.device_token.is_empty());
        assert!(
            store.approve(&id, &mut rng, UnixTime::from_secs(5)).is_ok(),
            "approvable again"
        );
    }
}
