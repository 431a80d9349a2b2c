//! Static API keys, parsed from the bytes of the `API_KEYS_FILE` (the caller reads it).
//!
//! File shape: `{"keys": {"<api key>": {"peer_id": "…", "role": "…", "mesh": "…"}}}`, with
//! `mesh` optional (absent or `null` means the default mesh). Other fields are ignored.
//! When no file can be read the caller uses [`ApiKeys::dev_default`] (or
//! [`ApiKeys::load`] with `None`): the single key `ak_dev_001` for peer `agent-001`, role
//! `agent`.
//!
//! Every shard holds its own immutable copy; nothing here changes after parsing.
//!
//! Keys are kept and looked up by their SHA-256 digest, not their text: a lookup
//! compares digests, so how long it takes says nothing about how much of a real key a
//! guess has right (a map of the texts would compare a guess with a stored key byte by
//! byte after a hash match). The failure budget (`auth::failures`) bounds the guesses.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The development key used when no key file can be read.
pub const DEV_API_KEY: &str = "ak_dev_001";
/// Peer id of [`DEV_API_KEY`].
pub const DEV_PEER_ID: &str = "agent-001";
/// Role of [`DEV_API_KEY`].
pub const DEV_ROLE: &str = "agent";

pub use wire::keys_file::{FILE_BYTES_MAX, KEYS_MAX};

/// What one API key grants.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ApiKeyEntry {
    /// Peer id the key authenticates as.
    pub peer_id: String,
    /// Role put in issued tokens.
    pub role: String,
    /// Mesh the key belongs to; `None` is the default mesh.
    #[serde(default)]
    pub mesh: Option<String>,
}

/// Why a key file was refused.
///
/// Messages never contain API keys (serde errors here name types and positions, not
/// map keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeysError {
    /// The file is larger than [`FILE_BYTES_MAX`].
    TooLarge {
        /// Size of the file.
        bytes: usize,
    },
    /// Not JSON of the expected shape: a top-level object with a `keys` object whose values
    /// each have string `peer_id` and `role` (and optionally a string or null `mesh`).
    Malformed {
        /// serde_json's description, with line and column.
        reason: String,
    },
    /// More than [`KEYS_MAX`] keys.
    TooManyKeys {
        /// Number of keys in the file.
        count: usize,
    },
}

impl std::fmt::Display for ApiKeysError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiKeysError::TooLarge { bytes } => write!(
                f,
                "API key file is {bytes} bytes, more than the {FILE_BYTES_MAX}-byte limit"
            ),
            ApiKeysError::Malformed { reason } => write!(
                f,
                "API key file is not of the form {{\"keys\": {{\"<key>\": {{\"peer_id\": \
                 \"…\", \"role\": \"…\"}}}}}}: {reason}"
            ),
            ApiKeysError::TooManyKeys { count } => write!(
                f,
                "API key file defines {count} keys, more than the limit of {KEYS_MAX}"
            ),
        }
    }
}

impl std::error::Error for ApiKeysError {}

/// The SHA-256 digest a key is stored and looked up under.
fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The API keys a server accepts (immutable once built).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeys {
    /// SHA-256 of each key → what it grants.
    keys: HashMap<[u8; 32], ApiKeyEntry>,
    peer_ids: HashSet<String>,
    /// peer id → its mesh (`None`: the default mesh). When several keys name the same
    /// peer with different meshes, the first key in sorted order decides.
    peer_mesh: HashMap<String, Option<String>>,
}

#[derive(Deserialize)]
struct KeysFile {
    keys: HashMap<String, ApiKeyEntry>,
}

impl ApiKeys {
    /// Parse a key file's bytes. Duplicate keys: the last one wins (as in the reference).
    /// `{"keys": {}}` is valid and accepts no key at all (no dev-key fallback).
    pub fn parse(bytes: &[u8]) -> Result<ApiKeys, ApiKeysError> {
        Self::parse_limited(bytes, FILE_BYTES_MAX, KEYS_MAX)
    }

    /// [`ApiKeys::parse`] with explicit limits (the tests use small ones).
    fn parse_limited(
        bytes: &[u8],
        file_bytes_max: usize,
        keys_max: usize,
    ) -> Result<ApiKeys, ApiKeysError> {
        if bytes.len() > file_bytes_max {
            return Err(ApiKeysError::TooLarge { bytes: bytes.len() });
        }
        // The bound every JSON input has (operator input too: one rule, no recursion).
        wire::json::check_depth(bytes, wire::json::JSON_DEPTH_MAX).map_err(|e| {
            ApiKeysError::Malformed {
                reason: e.to_string(),
            }
        })?;
        let file: KeysFile =
            serde_json::from_slice(bytes).map_err(|e| ApiKeysError::Malformed {
                reason: e.to_string(),
            })?;
        if file.keys.len() > keys_max {
            return Err(ApiKeysError::TooManyKeys {
                count: file.keys.len(),
            });
        }
        Ok(ApiKeys::from_map(file.keys))
    }

    /// `Some(bytes)`: [`parse`](Self::parse) them; `None` (no readable file):
    /// [`dev_default`](Self::dev_default).
    pub fn load(file: Option<&[u8]>) -> Result<ApiKeys, ApiKeysError> {
        match file {
            Some(bytes) => ApiKeys::parse(bytes),
            None => Ok(ApiKeys::dev_default()),
        }
    }

    /// The development key set: `ak_dev_001` → peer `agent-001`, role `agent`, default mesh.
    pub fn dev_default() -> ApiKeys {
        let mut keys = HashMap::with_capacity(1);
        keys.insert(
            DEV_API_KEY.to_owned(),
            ApiKeyEntry {
                peer_id: DEV_PEER_ID.to_owned(),
                role: DEV_ROLE.to_owned(),
                mesh: None,
            },
        );
        ApiKeys::from_map(keys)
    }

    fn from_map(keys: HashMap<String, ApiKeyEntry>) -> ApiKeys {
        let peer_ids = keys.values().map(|e| e.peer_id.clone()).collect();
        let mut sorted: Vec<(&String, &ApiKeyEntry)> = keys.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let mut peer_mesh = HashMap::new();
        for (_, e) in sorted {
            peer_mesh
                .entry(e.peer_id.clone())
                .or_insert_with(|| e.mesh.clone());
        }
        let keys = keys.into_iter().map(|(k, e)| (digest(&k), e)).collect();
        ApiKeys {
            keys,
            peer_ids,
            peer_mesh,
        }
    }

    /// What `key` grants, if it is known (compared by digest, see the module docs).
    pub fn lookup(&self, key: &str) -> Option<&ApiKeyEntry> {
        self.keys.get(&digest(key))
    }

    /// Peer ids that hold static API keys (the reference's "legacy" peers, always allowed
    /// to talk to each other).
    pub fn peer_ids(&self) -> &HashSet<String> {
        &self.peer_ids
    }

    /// Whether `peer_id` holds a static API key.
    /// The mesh of an API-key peer (`Some(None)`: the default mesh; `None`: not a key
    /// peer).
    pub fn mesh_of(&self, peer_id: &str) -> Option<Option<&str>> {
        self.peer_mesh.get(peer_id).map(|m| m.as_deref())
    }

    pub fn has_peer_id(&self, peer_id: &str) -> bool {
        self.peer_ids.contains(peer_id)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is accepted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Debug output shows counts only: the map keys are secrets.
impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("keys", &self.keys.len())
            .field("peer_ids", &self.peer_ids.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_written_by_the_load_generator_load() {
        let v = loadgen::keys::generate(10, 3).unwrap();
        let keys = ApiKeys::parse(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(keys.len(), 10);
    }

    #[test]
    fn parses_a_valid_file() {
        let keys = ApiKeys::parse(
            br#"{
                "keys": {
                    "ak_one": {"peer_id": "agent-1", "role": "agent"},
                    "ak_two": {"peer_id": "hub", "role": "admin", "extra": [1, 2]}
                },
                "comment": "ignored"
            }"#,
        )
        .unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(
            keys.lookup("ak_one"),
            Some(&ApiKeyEntry {
                peer_id: "agent-1".into(),
                role: "agent".into(),
                mesh: None
            })
        );
        assert_eq!(
            keys.lookup("ak_two").map(|e| e.role.as_str()),
            Some("admin")
        );
        assert_eq!(keys.lookup("ak_three"), None);
        assert_eq!(keys.lookup(""), None);
        // The dev key is not added when a file is present.
        assert_eq!(keys.lookup(DEV_API_KEY), None);
        assert!(keys.has_peer_id("hub"));
        assert!(!keys.has_peer_id("agent-001"));
        let mut ids: Vec<&str> = keys.peer_ids().iter().map(String::as_str).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["agent-1", "hub"]);
    }

    #[test]
    fn parses_mesh() {
        let keys = ApiKeys::parse(
            br#"{"keys": {
                "a": {"peer_id": "p1", "role": "agent", "mesh": "blue"},
                "b": {"peer_id": "p2", "role": "agent", "mesh": null},
                "c": {"peer_id": "p3", "role": "agent"}
            }}"#,
        )
        .unwrap();
        assert_eq!(keys.lookup("a").unwrap().mesh.as_deref(), Some("blue"));
        assert_eq!(keys.lookup("b").unwrap().mesh, None);
        assert_eq!(keys.lookup("c").unwrap().mesh, None);
    }

    #[test]
    fn duplicate_keys_last_wins_and_shared_peer_ids() {
        let keys = ApiKeys::parse(
            br#"{"keys": {"k": {"peer_id": "a", "role": "x"},
                          "k": {"peer_id": "b", "role": "y"},
                          "k2": {"peer_id": "b", "role": "z"}}}"#,
        )
        .unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.lookup("k").unwrap().peer_id, "b");
        assert_eq!(keys.peer_ids().len(), 1);
    }

    #[test]
    fn empty_key_map_is_valid_and_empty() {
        let keys = ApiKeys::parse(br#"{"keys": {}}"#).unwrap();
        assert!(keys.is_empty());
        assert_eq!(keys.lookup(DEV_API_KEY), None);
    }

    #[test]
    fn malformed_files_are_errors() {
        let cases: &[&[u8]] = &[
            b"",
            b"not json",
            b"{",
            b"[]",
            b"null",
            b"{}",
            br#"{"keys": null}"#,
            br#"{"keys": []}"#,
            br#"{"keys": {"k": "agent-1"}}"#,
            br#"{"keys": {"k": {"peer_id": "a"}}}"#,
            br#"{"keys": {"k": {"role": "a"}}}"#,
            br#"{"keys": {"k": {"peer_id": 1, "role": "a"}}}"#,
            br#"{"keys": {"k": {"peer_id": "a", "role": "b", "mesh": 3}}}"#,
            br#"{"keys": {"k": {"peer_id": "a", "role": "b"}}} trailing"#,
            b"\xff\xfe{}",
        ];
        for c in cases {
            let err = ApiKeys::parse(c).unwrap_err();
            assert!(
                matches!(err, ApiKeysError::Malformed { .. }),
                "{:?}",
                String::from_utf8_lossy(c)
            );
            assert!(err
                .to_string()
                .starts_with("API key file is not of the form"));
        }
    }

    /// Nesting: at the bound the file loads (unknown fields ignored), one level deeper
    /// or 100,000 levels it is refused with the depth, without recursion.
    #[test]
    fn nesting_is_bounded() {
        use wire::json::JSON_DEPTH_MAX;
        let file = |n: usize| {
            let x = "[".repeat(n) + &"]".repeat(n);
            format!(r#"{{"keys": {{"k": {{"peer_id": "a", "role": "b"}}}}, "x": {x}}}"#)
        };
        assert!(ApiKeys::parse(file(JSON_DEPTH_MAX - 1).as_bytes()).is_ok());
        for depth in [JSON_DEPTH_MAX + 1, 100_000] {
            let err = ApiKeys::parse(file(depth - 1).as_bytes()).unwrap_err();
            assert!(
                err.to_string().contains(&format!(
                    "JSON nesting is {depth} levels deep; the limit is {JSON_DEPTH_MAX}"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn errors_do_not_leak_keys() {
        let err = ApiKeys::parse(br#"{"keys": {"ak_super_secret": {"peer_id": 7}}}"#)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("ak_super_secret"), "{err}");
        let keys =
            ApiKeys::parse(br#"{"keys": {"ak_super_secret": {"peer_id": "p", "role": "r"}}}"#)
                .unwrap();
        assert!(!format!("{keys:?}").contains("ak_super_secret"));
    }

    #[test]
    fn size_limits() {
        const FILE_MAX: usize = 4096;
        const KEYS: usize = 100;
        let big = vec![b' '; FILE_MAX + 1];
        assert_eq!(
            ApiKeys::parse_limited(&big, FILE_MAX, KEYS),
            Err(ApiKeysError::TooLarge {
                bytes: FILE_MAX + 1
            })
        );
        let mut s = String::from(r#"{"keys":{"#);
        for i in 0..=KEYS {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&format!(r#""k{i}":{{"peer_id":"p","role":"r"}}"#));
        }
        s.push_str("}}");
        assert_eq!(
            ApiKeys::parse_limited(s.as_bytes(), usize::MAX, KEYS),
            Err(ApiKeysError::TooManyKeys { count: KEYS + 1 })
        );
        assert!(ApiKeys::parse_limited(s.as_bytes(), usize::MAX, KEYS + 1).is_ok());
    }

    #[test]
    fn missing_file_gives_dev_key() {
        for keys in [ApiKeys::load(None).unwrap(), ApiKeys::dev_default()] {
            assert_eq!(keys.len(), 1);
            let e = keys.lookup("ak_dev_001").unwrap();
            assert_eq!(e.peer_id, "agent-001");
            assert_eq!(e.role, "agent");
            assert_eq!(e.mesh, None);
            assert!(keys.has_peer_id("agent-001"));
        }
        let from_file =
            ApiKeys::load(Some(br#"{"keys":{"x":{"peer_id":"p","role":"r"}}}"#)).unwrap();
        assert_eq!(from_file.lookup("ak_dev_001"), None);
        assert!(ApiKeys::load(Some(b"{")).is_err());
    }
}
