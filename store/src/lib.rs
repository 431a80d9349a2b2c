//! `chatixia-store`: the durable control-plane state of chatixia-core (issue 10).
//!
//! * Typed [records] — pairing entries, device-token grants (keyed hashes only),
//!   revocations (with a per-peer JWT "not before"), invite codes, pending/assigned tasks,
//!   agent bindings —
//!   changed by atomic writes (`Vec<`[`Mutation`]`>`).
//! * A small [`Backend`] trait over those records (commit a group of writes durably, load
//!   everything), implemented on redb ([`RedbBackend`]); a later backend (Redis, for
//!   several nodes) implements the same trait.
//! * [`Store`]: the backend on its own storage thread. Writers submit through one bounded
//!   queue; the thread commits everything queued in one transaction with one fsync (group
//!   commit) and then completes each write. Shards submit through a [`ShardLink`] and await
//!   an [`Ack`] that is woken on the shard's own thread (see [`thread`]).
//! * [`DataDir`]: `--data-dir` semantics (created on open, exclusive `flock` lock file).
//! * [`Secrets`]: keys derived from the server secret (never stored in the data
//!   directory) for keyed token hashes and sealing a device token not yet claimed.
//! * [`backup`]: backups of a running store, offline export, restore and verify, in one
//!   JSON-lines format (issue 22).
//! * Disk trouble: a commit the disk refuses makes the store *unavailable*
//!   ([`StoreHealth`]); writes then fail at once with [`StoreError::Unavailable`] while the
//!   storage thread retries (reopening the database) until a commit succeeds. Writes
//!   submitted as *retained* (revocations) are kept and written first on recovery.
//!
//! The engine was chosen by measurement: see `benches/engines.rs` and
//! docs/ARCHITECTURE.md, "Durable state".

pub mod backup;
mod channel;
mod dir;
mod error;
pub mod format;
mod guard;
mod link;
pub mod records;
pub mod redb_backend;
mod secret;
pub mod thread;

pub use backup::{Export, ExportSummary, RestoreReport, VerifyReport};
pub use dir::{DataDir, LOCK_FILE};
pub use error::{StoreError, SubmitError};
pub use link::{Ack, ShardLink};
pub use records::{
    AgentBindingRecord, BindingOwner, Counts, DeviceTokenRecord, InviteRecord, JsonText, Mutation,
    PairingRecord, PairingStatus, RevocationRecord, SealedToken, Snapshot, TaskHolder, TaskRecord,
    TokenHash,
};
pub use redb_backend::{RedbBackend, CACHE_BYTES_DEFAULT, DAMAGED_MARKER, DB_FILE, SEEN_FILE};
pub use secret::{HashKind, Secrets, UnsealError};
pub use thread::{
    BackupStream, Chunk, Doorbell, Store, StoreConfig, StoreHandle, StoreHealth, StoreStats,
    WriteClass,
};

/// Asked once per write of a group commit, in order, with the write's index and the
/// change it would make to the bytes of stored records (keys and values; negative: it
/// frees space). `false`: the write is skipped (not applied) and the rest go on.
pub type Admit<'a> = &'a mut dyn FnMut(usize, i64) -> bool;

/// Where the records live. Implementations run on the storage thread only (`&mut self`,
/// blocking calls are fine there).
pub trait Backend: Send + 'static {
    /// Applies every mutation of every write that `admit` accepts in one atomic
    /// transaction and returns once it is durable (one fsync for the whole group). On
    /// error none of it is acknowledged.
    fn commit(&mut self, writes: &[&[Mutation]], admit: Admit<'_>) -> Result<(), StoreError>;

    /// Size of the backing file(s) on disk, for `/metrics` (0 when unknown).
    fn file_bytes(&self) -> u64 {
        0
    }

    /// Reads every record. A record that cannot be decoded is an error naming the file
    /// and the record, never skipped.
    fn load(&self) -> Result<Snapshot, StoreError>;

    /// What and where, for logs (`redb /var/lib/chatixia/state.redb`).
    fn describe(&self) -> String;

    /// Whether a failed commit left the backend unusable until [`recover`](Self::recover)
    /// (redb: "Previous I/O error occurred", the database must be reopened).
    fn needs_recovery(&self) -> bool {
        false
    }

    /// Makes the backend usable again after a failure (redb: closes and reopens the
    /// database, which recovers its last durable commit). An error leaves it unusable;
    /// the storage thread tries again later.
    fn recover(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// A consistent snapshot of every record, to write as a backup on another thread
    /// while commits go on.
    fn export(&self) -> Result<Box<dyn format::Export>, StoreError>;

    /// The store loaded at start: record the state it was in, so that a later open
    /// notices when commits since are missing (redb: `state.redb.seen`).
    fn record_start(&mut self) {}

    /// A clean shutdown: everything acknowledged is already durable; record that the
    /// store stopped here (redb: `state.redb.seen`).
    fn close(&mut self) {}
}
