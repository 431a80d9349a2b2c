//! Onboarding entries (the approval state machine). The device-token index an approval
//! feeds is auth's (`auth::DeviceTokenIndex`).
//!
//! ```text
//! pending_approval ──approve──▶ approved ──revoke──▶ revoked
//!        │
//!        └────────reject──────▶ rejected
//! ```
//! Every other transition is refused. Entries are kept after they reach a final state (the
//! reference never deletes them; `GET /api/pairing/all` lists them) until the pairing
//! retention (`--pairing-retention`, default 30 days after their last change) removes
//! them ([`PairingStore::retire`]).

use std::collections::HashMap;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use super::codes::Issuer;
use super::{hex_lower, ActionError, ApproveResponse, PairResponse, Rng};
use crate::auth::{DeviceGrant, DEVICE_TOKEN_ROLE};
use crate::time::UnixTime;
use chatixia_store::TokenHash;

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
/// Serializes as the reference's `OnboardingEntry` without its `device_token` (issue 10:
/// lists never carry tokens): `{"id","agent_name","peer_id","status","created_at",
/// "updated_at"}` with times as
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
    /// reference, but removed from auth's device-token index).
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
    /// Keyed hash of the device token once approved (what the durable store keeps; its
    /// hex is the token's key in auth's device-token index, `auth::tokens::token_key`).
    pub token_hash: Option<TokenHash>,
    /// Keyed hash of the claim secret handed out by `pair` (the device's own path to its
    /// token: `GET /api/pairing/{id}/status`).
    pub claim_hash: Option<TokenHash>,
    /// The device has used its token (or the entry was revoked): the token is no longer
    /// served on the claim path nor kept sealed in the store.
    pub token_claimed: bool,
    /// A change of this entry is being committed to the store: other transitions wait
    /// (answer 409) so the store sees the entry's changes in the order they happened.
    pub saving: bool,
}

impl Serialize for Entry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Never the device token: lists are admin reads, and a token is a secret handed
        // out once (the approve response) or to its device (the claim path).
        let mut st = s.serialize_struct("OnboardingEntry", 6)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("agent_name", &self.agent_name)?;
        st.serialize_field("peer_id", &self.peer_id)?;
        st.skip_field("device_token")?;
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

    /// What this entry's device token grants, for auth's device-token index; `None`
    /// unless the entry is approved.
    pub fn device_grant(&self) -> Option<DeviceGrant> {
        (self.status == Status::Approved && !self.device_token.is_empty()).then(|| DeviceGrant {
            peer_id: self.peer_id.clone(),
            role: DEVICE_TOKEN_ROLE.to_owned(),
            mesh: self.mesh.clone(),
            entry_id: self.id.value(),
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
    /// Only rejected and revoked entries past their retention are deleted, so this
    /// bounds the store's memory for the life of the process. When full, [`create`](Self::create) fails with
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
            token_hash: None,
            claim_hash: None,
            token_claimed: false,
            saving: false,
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

    /// The entry with this id, to change in place (the owner's durable bookkeeping).
    pub fn get_mut(&mut self, id: EntryId) -> Option<&mut Entry> {
        self.entries.get_mut(&id)
    }

    /// Puts `entry` back as it was before a change the store did not acknowledge (`None`:
    /// the entry did not exist).
    pub fn restore(&mut self, id: EntryId, entry: Option<Entry>) {
        match entry {
            Some(e) => {
                self.entries.insert(id, e);
            }
            None => {
                self.entries.remove(&id);
            }
        }
    }

    /// Removes the rejected and revoked entries last changed before `cutoff` (and not
    /// being saved) and returns their ids, for the store to delete them too
    /// (`--pairing-retention`).
    pub fn retire(&mut self, cutoff: UnixTime) -> Vec<EntryId> {
        let mut gone = Vec::new();
        self.entries.retain(|id, e| {
            let retired = matches!(e.status, Status::Rejected | Status::Revoked)
                && !e.saving
                && e.updated_at < cutoff;
            if retired {
                gone.push(*id);
            }
            !retired
        });
        gone
    }

    /// Adds an entry loaded from the store at start-up (the limit does not apply: what
    /// was acknowledged is kept).
    pub fn insert_loaded(&mut self, entry: Entry) {
        self.entries.insert(entry.id, entry);
    }

    /// `pending_approval` → `approved` with a fresh device token from `rng`.
    ///
    /// The caller then indexes `entry.device_grant()` with auth (on the shard owning the
    /// token) and replies with `entry.approve_response()`.
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

    /// `approved` → `revoked`. The caller then has auth drop the entry's token from its
    /// index.
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

#[cfg(test)]
mod tests;
