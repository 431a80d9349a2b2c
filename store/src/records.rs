//! The typed records the store keeps, and the mutations that change them.
//!
//! Records are plain data with no behaviour: the services own the state machines and hand
//! the store the record as it should be after the change ("put the whole record"), so a
//! replayed or duplicated put is harmless. Times are nanoseconds since the Unix epoch (the
//! server's `UnixTime`). Device tokens and claim secrets never appear in clear: a record
//! carries their [`TokenHash`] (keyed, see [`crate::secret`]) and, for a token its device
//! has not claimed yet, a [`SealedToken`].

use serde::{Deserialize, Serialize};

/// HMAC-SHA256 of a device token or claim secret under a key derived from the server
/// secret (see [`crate::Secrets::token_hash`]). Stored as unpadded base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenHash(pub [u8; 32]);

/// A device token encrypted under a key derived from the server secret, bound to its
/// pairing entry (see [`crate::Secrets::seal`]). Stored as unpadded base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedToken {
    /// ChaCha20-Poly1305 nonce (random, 96 bits).
    #[serde(with = "b64_array")]
    pub nonce: [u8; 12],
    /// Ciphertext followed by the 16-byte tag.
    #[serde(with = "b64_vec")]
    pub ciphertext: Vec<u8>,
}

impl Serialize for TokenHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        b64_array::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        b64_array::deserialize(d).map(TokenHash)
    }
}

/// Byte strings as unpadded standard base64 (compact in JSON and fast to decode: a JSON
/// array of numbers is 3-4 times larger and slower at start-up).
mod b64_vec {
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    use base64::Engine as _;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD_NO_PAD.encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD_NO_PAD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// Fixed-size byte arrays as unpadded standard base64; a wrong length is an error.
mod b64_array {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer, const N: usize>(
        v: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        super::b64_vec::serialize(v, s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let v = super::b64_vec::deserialize(d)?;
        let len = v.len();
        v.try_into()
            .map_err(|_| serde::de::Error::custom(format!("expected {N} bytes, found {len}")))
    }
}

/// Where a pairing entry is in the approval pipeline (mirrors `pairing::Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairingStatus {
    /// Code redeemed, waiting for an admin.
    PendingApproval,
    /// Approved; a device token exists.
    Approved,
    /// Refused by an admin (final).
    Rejected,
    /// Approval withdrawn (final).
    Revoked,
}

impl PairingStatus {
    /// Rejected or revoked: nothing changes it any more, and pairing retention removes it.
    pub fn is_final(self) -> bool {
        matches!(self, PairingStatus::Rejected | PairingStatus::Revoked)
    }
}

/// One pairing (onboarding) entry, keyed by its 32-bit id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingRecord {
    /// The entry id (8 hex digits on the wire).
    pub id: u32,
    /// Display name.
    pub agent_name: String,
    /// Assigned peer id.
    pub peer_id: String,
    /// State.
    pub status: PairingStatus,
    /// When the code was redeemed (ns since the epoch).
    pub created_at_ns: u64,
    /// Last transition (ns since the epoch).
    pub updated_at_ns: u64,
    /// Mesh inherited from the inviting API key (`None` = default mesh).
    pub mesh: Option<String>,
    /// Peer id of the API key that generated the invite.
    pub invited_by: String,
    /// Keyed hash of the device's claim secret (the `Authorization: Bearer` of
    /// `GET /api/pairing/{id}/status`).
    pub claim_hash: Option<TokenHash>,
    /// Keyed hash of the device token once approved (kept after revocation so the entry
    /// still says which token it had; the [`DeviceTokenRecord`] is what grants access).
    pub token_hash: Option<TokenHash>,
    /// The device token, encrypted, until the device first uses or claims it.
    pub sealed_token: Option<SealedToken>,
}

/// What a device token grants, keyed by the token's [`TokenHash`]. Present only while the
/// token is valid (deleted on revocation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceTokenRecord {
    /// Keyed hash of the token.
    pub hash: TokenHash,
    /// Peer id of the approved entry.
    pub peer_id: String,
    /// Role of the JWTs it exchanges for (`agent`).
    pub role: String,
    /// Mesh (`None` = default).
    pub mesh: Option<String>,
    /// The pairing entry it came from.
    pub entry_id: u32,
}

/// A revocation, keyed by peer id: JWTs for this peer issued before `not_before_secs`
/// are refused (the JWT `iat` is in seconds), and live connections of the peer were closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationRecord {
    /// The revoked peer id.
    pub peer_id: String,
    /// JWTs with `iat < not_before_secs` are invalid.
    pub not_before_secs: u64,
    /// The pairing entry whose revocation this is, when there is one.
    pub entry_id: Option<u32>,
}

/// A live invite code, keyed by the code's 64-bit key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRecord {
    /// The code's key as the pairing service encodes it: `0..=999_999` a six-digit code
    /// (as stored before long codes existed: such records still load), `1 << 63 | v` a
    /// 12-symbol base32 code of value `v < 2^60`.
    pub code: u64,
    /// Peer id of the API key that asked for it.
    pub issuer_peer_id: String,
    /// That key's mesh.
    pub mesh: Option<String>,
    /// Expiry (ns since the epoch); [`crate::Snapshot`] still returns expired codes, the
    /// service drops them.
    pub expires_at_ns: u64,
}

/// A task that is `pending` or `assigned`, keyed by its 12-character id. Finished tasks
/// are deleted from the store ([`Mutation::DeleteTask`]) and kept in memory only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The id.
    pub id: String,
    /// Skill an agent must list to claim it (`""` for none).
    pub skill: String,
    /// Agent that may claim it (`""` for none).
    pub target_agent_id: String,
    /// Informational.
    pub source_agent_id: String,
    /// Set once a heartbeat claimed it.
    pub assigned_agent_id: String,
    /// Any JSON, kept as its text so every digit of a number survives (a
    /// `serde_json::Value` would round numbers beyond f64 and cannot hold `1e400`).
    pub payload: JsonText,
    /// `pending` or `assigned`.
    pub state: String,
    /// Last non-empty result.
    pub result: String,
    /// Last non-empty error.
    pub error: String,
    /// Creation (ns since the epoch).
    pub created_at_ns: u64,
    /// Last change (ns since the epoch).
    pub updated_at_ns: u64,
    /// Seconds from creation until it fails.
    pub ttl: u64,
    /// Who submitted it (the server's access checks); absent in records written before
    /// it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<TaskHolder>,
    /// Who claimed it; absent while pending, and in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<TaskHolder>,
    /// Who posted its last update (its report is charged to them); absent until it is
    /// updated, and in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_by: Option<TaskHolder>,
}

/// The principal that submitted or claimed a task: the peer id of its API key or JWT,
/// if it had one, and its client key (source address, IPv6 by /64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskHolder {
    /// The credential's peer id; `None`: no credential.
    pub peer_id: Option<String>,
    /// The credential's role was `admin` (an admin's tasks are charged to no quota, only
    /// to the store); absent in records written before it was kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    /// The client key of its source address.
    pub address: String,
}

/// What an agent id is bound to (issue 20, review): agents live in memory, but the
/// tasks targeted at them are durable, so the binding is too; otherwise, after a restart,
/// whoever heartbeated an agent's id first would take its pending tasks. Keyed by the
/// agent id; written when an agent is first bound or its binding moves, deleted with the
/// agent (`DELETE /api/registry/agents/{id}`). A store written before bindings were kept
/// has none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentBindingRecord {
    /// The agent id.
    pub agent_id: String,
    /// What it is bound to.
    pub owner: BindingOwner,
}

/// The owner of an agent binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BindingOwner {
    /// The peer id of the API key or JWT that registered it (or last acted for it).
    Peer(String),
    /// The client key of the source address that registered it without credentials.
    Address(String),
}

/// A JSON value kept as its text (`serde_json::value::RawValue`): stored, loaded, backed
/// up and exported byte for byte as it was given.
#[derive(Clone)]
pub struct JsonText(Box<serde_json::value::RawValue>);

impl JsonText {
    /// Checks that `text` is one JSON value and keeps it as it is.
    pub fn from_json(text: &str) -> Result<JsonText, String> {
        serde_json::value::RawValue::from_string(text.to_owned())
            .map(JsonText)
            .map_err(|e| e.to_string())
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for JsonText {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl std::fmt::Debug for JsonText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.get())
    }
}

impl From<serde_json::Value> for JsonText {
    fn from(v: serde_json::Value) -> Self {
        // A Value always serializes to valid JSON text.
        JsonText::from_json(&v.to_string()).unwrap_or_else(|_| JsonText::null())
    }
}

impl JsonText {
    /// `null`.
    pub fn null() -> JsonText {
        JsonText(serde_json::value::RawValue::NULL.to_owned())
    }
}

impl Serialize for JsonText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<serde_json::value::RawValue>::deserialize(d).map(JsonText)
    }
}

/// One change. A write is a `Vec<Mutation>` applied atomically: all of it or none of it
/// is on disk after a crash.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// Insert or replace a pairing entry (creation and every state change).
    PutPairing(PairingRecord),
    /// Remove a pairing entry (retention of rejected and revoked entries), and the
    /// revocation of its peer if that revocation is this entry's.
    DeletePairing(u32),
    /// Insert or replace a device-token grant.
    PutDeviceToken(DeviceTokenRecord),
    /// Remove a device-token grant (revocation).
    DeleteDeviceToken(TokenHash),
    /// Insert or replace a revocation.
    PutRevocation(RevocationRecord),
    /// Store a new invite code.
    PutInvite(InviteRecord),
    /// Remove an invite code (redeemed or expired), by its key.
    DeleteInvite(u64),
    /// Insert or replace a pending or assigned task.
    PutTask(TaskRecord),
    /// Remove a task (finished, expired or gone).
    DeleteTask(String),
    /// Insert or replace an agent's binding.
    PutAgentBinding(AgentBindingRecord),
    /// Remove an agent's binding (the agent was deleted), by agent id.
    DeleteAgentBinding(String),
}

/// Records of each kind, for [`crate::Snapshot`] and stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Pairing entries.
    pub pairings: usize,
    /// Device-token grants.
    pub device_tokens: usize,
    /// Revocations.
    pub revocations: usize,
    /// Invite codes.
    pub invites: usize,
    /// Pending or assigned tasks.
    pub tasks: usize,
    /// Agent bindings.
    pub agent_bindings: usize,
}

impl Counts {
    /// Records of every kind together.
    pub fn total(&self) -> usize {
        self.pairings
            + self.device_tokens
            + self.revocations
            + self.invites
            + self.tasks
            + self.agent_bindings
    }
}

/// Everything the store holds, as loaded at start-up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Pairing entries, by id.
    pub pairings: Vec<PairingRecord>,
    /// Device-token grants.
    pub device_tokens: Vec<DeviceTokenRecord>,
    /// Revocations.
    pub revocations: Vec<RevocationRecord>,
    /// Invite codes (expired ones included; filter with `now`).
    pub invites: Vec<InviteRecord>,
    /// Pending and assigned tasks.
    pub tasks: Vec<TaskRecord>,
    /// Agent bindings.
    pub agent_bindings: Vec<AgentBindingRecord>,
    /// How long opening, checking and reading took.
    pub elapsed: std::time::Duration,
    /// Of that, how long the full integrity check took (every page's checksum).
    pub check_elapsed: std::time::Duration,
    /// The store's commit sequence number when loaded (counts every commit since the
    /// data directory was created; 0 for a directory written before it was kept).
    pub seq: u64,
    /// Bytes of the stored records, keys and values (what `--data-bytes-max` bounds).
    pub data_bytes: u64,
}

impl Snapshot {
    /// Records of each kind.
    pub fn counts(&self) -> Counts {
        Counts {
            pairings: self.pairings.len(),
            device_tokens: self.device_tokens.len(),
            revocations: self.revocations.len(),
            invites: self.invites.len(),
            tasks: self.tasks.len(),
            agent_bindings: self.agent_bindings.len(),
        }
    }

    /// Drops invite codes expired at `now_ns` (they expired while the server was down)
    /// and returns the deletions to submit, so the store forgets them too.
    pub fn take_expired_invites(&mut self, now_ns: u64) -> Vec<Mutation> {
        let mut gone = Vec::new();
        self.invites.retain(|i| {
            let live = i.expires_at_ns > now_ns;
            if !live {
                gone.push(Mutation::DeleteInvite(i.code));
            }
            live
        });
        gone
    }

    /// Drops rejected and revoked pairing entries last changed before `cutoff_ns` (the
    /// pairing retention ran out while the server was down) and returns the deletions to
    /// submit, so the store forgets them too.
    pub fn take_retired_pairings(&mut self, cutoff_ns: u64) -> Vec<Mutation> {
        let mut gone = Vec::new();
        self.pairings.retain(|p| {
            let retired = p.status.is_final() && p.updated_at_ns < cutoff_ns;
            if retired {
                gone.push(Mutation::DeletePairing(p.id));
            }
            !retired
        });
        gone
    }

    /// The start-up log line: how many records of each kind and how long it took.
    pub fn summary(&self) -> String {
        let c = self.counts();
        format!(
            "loaded {} records ({} pairing entries, {} device tokens, {} revocations, \
             {} invite codes, {} tasks, {} agent bindings; {} bytes) in {:.1} ms \
             (integrity check {:.1} ms)",
            c.total(),
            c.pairings,
            c.device_tokens,
            c.revocations,
            c.invites,
            c.tasks,
            c.agent_bindings,
            self.data_bytes,
            self.elapsed.as_secs_f64() * 1e3,
            self.check_elapsed.as_secs_f64() * 1e3
        )
    }
}

/// Version byte in front of every stored value; a value with another first byte is
/// refused as corrupt (a later format bumps it and migrates on open).
pub(crate) const VALUE_FORMAT: u8 = 1;

/// `VALUE_FORMAT` followed by the record as JSON.
pub(crate) fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let mut out = vec![VALUE_FORMAT];
    // Serializing these plain structs (strings, integers, byte arrays, JSON values) into a
    // Vec cannot fail; an empty body would be refused on load rather than panic here.
    let _ = serde_json::to_writer(&mut out, record);
    out
}

/// The inverse of [`encode`]; the error says what is wrong with the bytes.
pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        None => Err("empty value".to_owned()),
        Some((&VALUE_FORMAT, body)) => {
            serde_json::from_slice(body).map_err(|e| format!("undecodable record: {e}"))
        }
        Some((v, _)) => Err(format!("unknown record format {v}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip_and_refusals() {
        let r = RevocationRecord {
            peer_id: "agent-abc123".into(),
            not_before_secs: 17,
            entry_id: Some(7),
        };
        let bytes = encode(&r);
        assert_eq!(bytes[0], VALUE_FORMAT);
        assert_eq!(decode::<RevocationRecord>(&bytes), Ok(r));
        assert_eq!(
            decode::<RevocationRecord>(&[]),
            Err("empty value".to_owned())
        );
        assert_eq!(
            decode::<RevocationRecord>(&[9, b'{', b'}']),
            Err("unknown record format 9".to_owned())
        );
        let truncated = &bytes[..bytes.len() - 3];
        assert!(decode::<RevocationRecord>(truncated)
            .unwrap_err()
            .starts_with("undecodable record"));
    }

    #[test]
    fn expired_invites_are_taken_and_summary_counts() {
        let inv = |code, expires_at_ns| InviteRecord {
            code,
            issuer_peer_id: "p".into(),
            mesh: None,
            expires_at_ns,
        };
        let mut s = Snapshot {
            invites: vec![inv(1, 100), inv(2, 200), inv(3, 201)],
            elapsed: std::time::Duration::from_micros(1500),
            ..Snapshot::default()
        };
        assert_eq!(
            s.take_expired_invites(200),
            vec![Mutation::DeleteInvite(1), Mutation::DeleteInvite(2)]
        );
        assert_eq!(s.invites, vec![inv(3, 201)]);
        assert_eq!(
            s.summary(),
            "loaded 1 records (0 pairing entries, 0 device tokens, 0 revocations, \
             1 invite codes, 0 tasks, 0 agent bindings; 0 bytes) in 1.5 ms (integrity \
             check 0.0 ms)"
        );
    }

    #[test]
    fn byte_fields_are_base64_and_length_checked() {
        let sealed = SealedToken {
            nonce: [1; 12],
            ciphertext: vec![0xff; 5],
        };
        let json = serde_json::to_string(&(TokenHash([0; 32]), &sealed)).unwrap();
        assert_eq!(
            json,
            format!(
                r#"["{}",{{"nonce":"AQEBAQEBAQEBAQEB","ciphertext":"//////8"}}]"#,
                "A".repeat(43)
            )
        );
        let back: (TokenHash, SealedToken) = serde_json::from_str(&json).unwrap();
        assert_eq!(back, (TokenHash([0; 32]), sealed));
        assert!(serde_json::from_str::<TokenHash>(r#""AAAA""#)
            .unwrap_err()
            .to_string()
            .contains("expected 32 bytes, found 3"));
        assert!(serde_json::from_str::<TokenHash>(r#""!!""#).is_err());
        assert!(serde_json::from_str::<TokenHash>("[0,0]").is_err());
    }
}
