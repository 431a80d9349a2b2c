//! What the shards' links and the storage thread send each other (requests, replies,
//! completions, backup chunks) and the state they share. `link` (the shard's side) and
//! `thread` (the storage thread's) both build on it; neither imports the other's types
//! except that the storage thread hands out links.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, OnceLock};

use crate::backup::ExportSummary;
use crate::error::StoreError;
use crate::records::Mutation;

/// `(waiter key, commit result)`, pushed by the storage thread.
pub(crate) type Completion = (usize, Result<(), StoreError>);

/// Which size bound a write is held to ([`StoreConfig::data_bytes_max`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteClass {
    /// On behalf of a client without credentials: refused past
    /// [`StoreConfig::anonymous_data_bytes_max`] when it grows the records.
    Anonymous,
    /// Any other change: refused past [`StoreConfig::data_bytes_max`] when it grows the
    /// records.
    Bounded,
    /// A change that moves stored records forward and grows them by a bounded amount (a
    /// claim adds the agent's id, at most `--agent-field-bytes-max`, to a stored task):
    /// never refused by the bound, since refusing it would keep a full store full.
    Progress,
}

/// Wakes a shard from another thread. Must not block and must not run the shard's code:
/// the storage thread calls it after it has published completions for the shard.
pub trait Doorbell: Send + Sync + 'static {
    /// Ask the shard to call [`ShardLink::on_doorbell`](crate::ShardLink::on_doorbell).
    fn ring(&self);
}

/// Counters of the storage thread (relaxed atomics: monitoring, not synchronisation).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) commits: AtomicU64,
    pub(crate) commits_failed: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) mutations: AtomicU64,
    pub(crate) batch_writes_largest: AtomicU64,
    pub(crate) queue_full: AtomicU64,
    pub(crate) unavailable_episodes: AtomicU64,
    pub(crate) refused_unavailable: AtomicU64,
    pub(crate) retained: AtomicU64,
    pub(crate) retained_refused: AtomicU64,
    pub(crate) recoveries: AtomicU64,
    pub(crate) backups: AtomicU64,
    pub(crate) backups_failed: AtomicU64,
    pub(crate) data_bytes: AtomicU64,
    pub(crate) data_bytes_max: AtomicU64,
    pub(crate) file_bytes: AtomicU64,
    pub(crate) refused_full: AtomicU64,
    pub(crate) refused_anonymous: AtomicU64,
}

pub(crate) enum Reply {
    Blocking(SyncSender<Result<(), StoreError>>),
    Link { link: usize, key: usize },
}

pub(crate) enum Request {
    Write {
        mutations: Vec<Mutation>,
        reply: Reply,
        /// Keep it while the store is unavailable and write it on recovery.
        retain: bool,
        /// The size bound it is held to.
        class: WriteClass,
    },
    Backup(BackupRequest),
    Register {
        link: usize,
        completions: rtrb::Producer<Completion>,
        doorbell: Arc<dyn Doorbell>,
    },
    Shutdown,
}

pub(crate) struct BackupRequest {
    pub(crate) chunks: rtrb::Producer<Chunk>,
    pub(crate) doorbell: Arc<dyn Doorbell>,
    /// Set by the backup thread to itself, so the stream can wake it.
    pub(crate) writer: Arc<OnceLock<std::thread::Thread>>,
}

/// What every link shares with the storage thread.
pub(crate) struct Shared {
    pub(crate) stats: Stats,
    /// Set once the storage thread has stopped taking requests for good.
    pub(crate) exited: AtomicBool,
    pub(crate) next_link: AtomicUsize,
    /// Whether commits succeed; written by the storage thread only.
    pub(crate) available: AtomicBool,
    /// When the store became unavailable (ns since the epoch).
    pub(crate) unavailable_since_ns: AtomicU64,
    /// Why: written by the storage thread on each failure; read with `try_lock` only (a
    /// shard never waits for it: when busy, the reason is left out).
    pub(crate) reason: Mutex<String>,
    /// A backup is being written (at most one at a time).
    pub(crate) backup_running: AtomicBool,
}

/// A piece of a backup stream ([`StoreHandle::backup`]).
#[derive(Debug)]
pub enum Chunk {
    /// Bytes of the backup, in order.
    Data(Vec<u8>),
    /// The backup is complete (`Ok`) or failed (`Err`, the reason; the stream then lacks
    /// its end line, so a restore refuses what was sent).
    End(Result<ExportSummary, String>),
}
