//! `chatixia-store`: the durable control-plane state of chatixia-core (issue 10).
//!
//! * Typed [records] — pairing entries, device-token grants (keyed hashes only),
//!   revocations (with a per-peer JWT "not before"), invite codes, pending/assigned tasks —
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
//!
//! The engine was chosen by measurement: see `benches/engines.rs` and
//! docs/ARCHITECTURE.md, "Durable state".

mod dir;
mod doorbell;
mod error;
mod link;
pub mod records;
pub mod redb_backend;
mod secret;
pub mod thread;

pub use dir::{DataDir, LOCK_FILE};
pub use doorbell::SocketDoorbell;
pub use error::{StoreError, SubmitError};
pub use link::{Ack, ShardLink};
pub use records::{
    Counts, DeviceTokenRecord, InviteRecord, Mutation, PairingRecord, PairingStatus,
    RevocationRecord, SealedToken, Snapshot, TaskRecord, TokenHash,
};
pub use redb_backend::{RedbBackend, CACHE_BYTES_DEFAULT, DAMAGED_MARKER, DB_FILE};
pub use secret::{HashKind, Secrets, UnsealError};
pub use thread::{Doorbell, Store, StoreConfig, StoreHandle, StoreStats, WriteClass};

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
}
