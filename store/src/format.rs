//! The backup format (issue 22): JSON lines, one format for a backup of a running
//! server and an offline export.
//!
//! ```text
//! {"chatixia_store_backup":1,"format":"chatixia-store 1","secret_check":"…","seq":N,"written_at_ns":T}
//! {"table":"pairing","record":{…}}                one line per record, as stored
//!                                                 (tables: pairing, device_token,
//!                                                 revocation, invite, invite_v2, task,
//!                                                 agent_binding)
//! …
//! {"end":{"records":{"pairing":N,…},"total":N,"sha256":"…"}}
//! ```
//!
//! The records are the stored records themselves, so device tokens and claim secrets
//! appear only as keyed hashes, and a token not yet claimed only sealed under a key
//! derived from the server secret: a backup alone yields no usable token. `secret_check`
//! is the data directory's server-secret check value (an HMAC output, not the secret).
//! `sha256` covers every byte before the end line, so a truncated or altered backup is
//! refused by [`restore`](crate::backup::restore).
//!
//! This module holds the lines and the [`Export`] interface; a backend writes them
//! (`redb_backend::export`), [`crate::backup`] reads them back.

use std::io::Write;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::StoreError;
use crate::records::Counts;

/// Version of the backup format (the header's `chatixia_store_backup`).
pub const BACKUP_VERSION: u64 = 1;

#[derive(Serialize, Deserialize)]
pub(crate) struct Header {
    pub(crate) chatixia_store_backup: u64,
    pub(crate) format: String,
    pub(crate) secret_check: String,
    pub(crate) seq: u64,
    pub(crate) written_at_ns: u64,
}

/// Records per table, as the end line names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TableCounts {
    pub(crate) pairing: u64,
    pub(crate) device_token: u64,
    pub(crate) revocation: u64,
    pub(crate) invite: u64,
    pub(crate) task: u64,
    /// Absent in a backup written before agent bindings were kept (it restores with none).
    #[serde(default)]
    pub(crate) agent_binding: u64,
}

impl From<Counts> for TableCounts {
    fn from(c: Counts) -> Self {
        TableCounts {
            pairing: c.pairings as u64,
            device_token: c.device_tokens as u64,
            revocation: c.revocations as u64,
            invite: c.invites as u64,
            task: c.tasks as u64,
            agent_binding: c.agent_bindings as u64,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct EndBody {
    pub(crate) records: TableCounts,
    pub(crate) total: u64,
    pub(crate) sha256: String,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct End {
    pub(crate) end: EndBody,
}

/// What a backup or export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// Records of each kind.
    pub counts: Counts,
    /// Bytes written (the whole file).
    pub bytes: u64,
    /// SHA-256 of everything before the end line (hex), as the end line says.
    pub sha256: String,
    /// The store's commit sequence number at the snapshot.
    pub seq: u64,
}

/// A snapshot that can be written out in the backup format (see the module docs).
pub trait Export: Send {
    /// Writes the whole backup to `out`.
    fn write_to(self: Box<Self>, out: &mut dyn Write) -> Result<ExportSummary, StoreError>;
}

/// Counts bytes and hashes them on the way to `out`.
pub(crate) struct Hashing<'a> {
    pub(crate) out: &'a mut dyn Write,
    pub(crate) sha: Sha256,
    pub(crate) bytes: u64,
}

impl Hashing<'_> {
    pub(crate) fn put(&mut self, parts: &[&[u8]]) -> std::io::Result<()> {
        for p in parts {
            self.out.write_all(p)?;
            self.sha.update(p);
            self.bytes += p.len() as u64;
        }
        Ok(())
    }
}

pub(crate) fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
