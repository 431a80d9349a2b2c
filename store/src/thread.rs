//! The storage thread: one OS thread owns the [`Backend`]; writers hand it writes through
//! one bounded queue, it commits everything queued in one transaction (one fsync) and then
//! completes every write of that commit.
//!
//! Completions never touch a shard's waker from the storage thread (monoio, without its
//! `sync` feature — our workspace build — panics on a cross-thread wake). Instead each
//! shard has a [`ShardLink`](crate::ShardLink): the storage thread pushes `(key, result)`
//! into the link's own single-producer ring and rings the link's [`Doorbell`]; the shard,
//! woken by its doorbell on its own thread, calls
//! [`ShardLink::on_doorbell`](crate::ShardLink::on_doorbell), which wakes the local
//! waiters. Control threads (start-up, tests) use [`StoreHandle::write_blocking`].

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::channel::{BackupRequest, Completion, Reply, Request, Shared, Stats};
pub use crate::channel::{Chunk, Doorbell, WriteClass};
use crate::error::{StoreError, SubmitError};
use crate::link::ShardLink;
use crate::records::{Mutation, Snapshot};
use crate::redb_backend::RedbBackend;
use crate::secret::Secrets;
use crate::{Backend, DataDir};

/// Default of [`StoreConfig::queue_depth_max`].
pub const QUEUE_DEPTH_MAX_DEFAULT: usize = 4096;
/// Default of [`StoreConfig::batch_writes_max`].
pub const BATCH_WRITES_MAX_DEFAULT: usize = 1024;
/// Default of [`StoreConfig::inflight_max`].
pub const INFLIGHT_MAX_DEFAULT: usize = 1024;
/// Default of [`StoreConfig::data_bytes_max`] (`--data-bytes-max`): 1 GiB of records.
pub const DATA_BYTES_MAX_DEFAULT: u64 = 1 << 30;
/// Default of [`StoreConfig::retry_interval`].
pub const RETRY_INTERVAL_DEFAULT: Duration = Duration::from_secs(2);
/// Default of [`StoreConfig::retained_writes_max`].
pub const RETAINED_WRITES_MAX_DEFAULT: usize = 65_536;

/// Bytes of one backup chunk handed from the backup thread to the shard that streams it.
pub const BACKUP_CHUNK_BYTES: usize = 64 * 1024;
/// Chunks in flight between the backup thread and the shard (1 MiB with
/// [`BACKUP_CHUNK_BYTES`]): the backup thread waits when the shard's client reads slower
/// than the backup is written, so a slow client costs at most this much memory.
pub const BACKUP_CHUNKS_MAX: usize = 16;
/// How long the backup thread waits for the shard to take a chunk before it gives up
/// (a client that stopped reading): the snapshot it holds keeps pages from being reused.
pub const BACKUP_STALL_MAX: Duration = Duration::from_secs(60);

/// Limits of the storage path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// Writes queued for the storage thread, all shards together. Bounds memory and
    /// latency when the disk is slower than the offered load; when full,
    /// [`ShardLink::submit`](crate::ShardLink::submit) fails with
    /// [`SubmitError::QueueFull`] (answer 503: nothing was written).
    pub queue_depth_max: usize,
    /// Writes committed together at most (bounds one transaction's size and the latency
    /// of the first write in it); the rest wait for the next commit.
    pub batch_writes_max: usize,
    /// Writes one shard may have waiting for their commit (sizes its completion ring);
    /// when reached, `submit` fails with [`SubmitError::InFlightFull`] (503).
    pub inflight_max: usize,
    /// While the store is unavailable (the disk refused a commit), how often the storage
    /// thread tries to recover: reopen the database, write the retained writes (or a
    /// probe) and, once that commit succeeds, take writes again. Each try reopens the
    /// database (redb recovery: a read of the whole tree), so a short interval costs
    /// storage-thread time during an outage; a long one delays the recovery.
    pub retry_interval: Duration,
    /// Writes submitted as retained (revocations) kept while the store is unavailable,
    /// all shards together; each is about one pairing record, a revocation and a token
    /// hash (≈ 1 KiB), so the default holds 64 MiB at most. Past it a retained write
    /// fails like any other ([`StoreError::Unavailable`]).
    pub retained_writes_max: usize,
    /// Bytes of records (keys and values) the store may hold (`--data-bytes-max`). A
    /// write that would grow them past it is refused with [`StoreError::Full`] (503),
    /// nothing of it applied; a write that frees space or keeps the size always passes
    /// (finishing a task, a deletion). A store already over it (a lower bound after a
    /// restart) still loads: only growth is refused. The file on disk is larger than
    /// the records by redb's page layout (see docs/BENCHMARKS.md).
    pub data_bytes_max: u64,
    /// The bound of [`WriteClass::Anonymous`] writes (on behalf of clients without
    /// credentials): the anonymous share of `data_bytes_max`, so that authenticated
    /// writes always have room.
    pub anonymous_data_bytes_max: u64,
    /// Bytes of redb's page cache (`--data-cache-bytes-max`), see
    /// [`CACHE_BYTES_DEFAULT`](crate::CACHE_BYTES_DEFAULT).
    pub cache_bytes_max: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            queue_depth_max: QUEUE_DEPTH_MAX_DEFAULT,
            batch_writes_max: BATCH_WRITES_MAX_DEFAULT,
            inflight_max: INFLIGHT_MAX_DEFAULT,
            retry_interval: RETRY_INTERVAL_DEFAULT,
            retained_writes_max: RETAINED_WRITES_MAX_DEFAULT,
            data_bytes_max: DATA_BYTES_MAX_DEFAULT,
            anonymous_data_bytes_max: DATA_BYTES_MAX_DEFAULT / 2,
            cache_bytes_max: crate::CACHE_BYTES_DEFAULT,
        }
    }
}

/// A copy of the storage counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Transactions committed, each with one durable sync (fsync).
    pub commits: u64,
    /// Commits that failed (every write in them got the error).
    pub commits_failed: u64,
    /// Writes completed (successfully or not).
    pub writes: u64,
    /// Mutations in those writes.
    pub mutations: u64,
    /// Most writes that shared one commit.
    pub batch_writes_largest: u64,
    /// Submissions refused because the queue was full.
    pub queue_full: u64,
    /// Times the store became unavailable (a commit the disk refused).
    pub unavailable_episodes: u64,
    /// Writes refused because the store was unavailable (or whose commit made it so).
    pub refused_unavailable: u64,
    /// Retained writes (revocations) waiting for the store to recover.
    pub retained: u64,
    /// Retained writes refused because `retained_writes_max` were already waiting.
    pub retained_refused: u64,
    /// Times the store became available again.
    pub recoveries: u64,
    /// Backups completed.
    pub backups: u64,
    /// Backups that failed or were abandoned by their client.
    pub backups_failed: u64,
    /// Bytes of the stored records (keys and values) now.
    pub data_bytes: u64,
    /// Their bound ([`StoreConfig::data_bytes_max`]).
    pub data_bytes_max: u64,
    /// Size of the database file after the last commit.
    pub file_bytes: u64,
    /// Writes refused by `data_bytes_max`.
    pub refused_full: u64,
    /// Writes refused by `anonymous_data_bytes_max`.
    pub refused_anonymous: u64,
}

/// Whether the store can take writes now, and if not why and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreHealth {
    /// Commits succeed (or none failed since the last success).
    pub available: bool,
    /// Why not (the error of the last failed commit or recovery try), when unavailable.
    pub reason: Option<String>,
    /// Since when it is unavailable (ns since the Unix epoch; 0 when available).
    pub since_ns: u64,
}

/// A shard's end of a backup being written by a backup thread: chunks arrive in a
/// bounded ring ([`BACKUP_CHUNKS_MAX`]) and the doorbell given to
/// [`StoreHandle::backup`] rings after each. Dropping it abandons the backup.
pub struct BackupStream {
    chunks: rtrb::Consumer<Chunk>,
    writer: Arc<OnceLock<std::thread::Thread>>,
}

impl std::fmt::Debug for BackupStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackupStream")
    }
}

impl BackupStream {
    /// The next chunk, if one is ready (never blocks; wait for the doorbell otherwise).
    pub fn pop(&mut self) -> Option<Chunk> {
        let c = self.chunks.pop().ok();
        if c.is_some() {
            // Room again: the backup thread may be waiting for it (unpark never blocks).
            if let Some(t) = self.writer.get() {
                t.unpark();
            }
        }
        c
    }

    /// Whether the backup thread is gone without sending [`Chunk::End`] (nothing more
    /// will come).
    pub fn is_abandoned(&self) -> bool {
        self.chunks.is_abandoned() && self.chunks.is_empty()
    }
}

/// A cloneable, `Send` handle for submitting writes.
#[derive(Clone)]
pub struct StoreHandle {
    tx: SyncSender<Request>,
    shared: Arc<Shared>,
    inflight_max: usize,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreHandle")
    }
}

impl StoreHandle {
    /// Writes `mutations` atomically and returns once they are durable. Blocks the calling
    /// thread (waits for queue space and for the commit): for control threads and tests,
    /// never for a shard.
    pub fn write_blocking(&self, mutations: Vec<Mutation>) -> Result<(), StoreError> {
        self.write_blocking_as(mutations, WriteClass::Bounded)
    }

    /// [`write_blocking`](Self::write_blocking) held to the bound of `class`.
    pub fn write_blocking_as(
        &self,
        mutations: Vec<Mutation>,
        class: WriteClass,
    ) -> Result<(), StoreError> {
        let (tx, rx) = sync_channel(1);
        self.tx
            .send(Request::Write {
                mutations,
                reply: Reply::Blocking(tx),
                retain: false,
                class,
            })
            .map_err(|_| StoreError::Closed)?;
        rx.recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Starts a backup: the storage thread takes a read snapshot between two group
    /// commits (so it holds every write acknowledged before this call) and a backup thread
    /// writes it in the backup format ([`crate::backup`]) as [`Chunk`]s into the returned
    /// stream, ringing `doorbell` after each. Never blocks. One backup at a time
    /// ([`SubmitError::BackupRunning`]).
    pub fn backup(&self, doorbell: Arc<dyn Doorbell>) -> Result<BackupStream, SubmitError> {
        if self
            .shared
            .backup_running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(SubmitError::BackupRunning);
        }
        let (producer, consumer) = rtrb::RingBuffer::new(BACKUP_CHUNKS_MAX);
        let writer = Arc::new(OnceLock::new());
        match self.tx.try_send(Request::Backup(BackupRequest {
            chunks: producer,
            doorbell,
            writer: writer.clone(),
        })) {
            Ok(()) => Ok(BackupStream {
                chunks: consumer,
                writer,
            }),
            Err(e) => {
                self.shared.backup_running.store(false, Ordering::Release);
                Err(e.into())
            }
        }
    }

    /// Whether the store takes writes now (see [`StoreHealth`]). Never blocks.
    pub fn health(&self) -> StoreHealth {
        let sh = &self.shared;
        if sh.exited.load(Ordering::Acquire) {
            return StoreHealth {
                available: false,
                reason: Some(StoreError::Closed.to_string()),
                since_ns: 0,
            };
        }
        if sh.available.load(Ordering::Acquire) {
            return StoreHealth {
                available: true,
                reason: None,
                since_ns: 0,
            };
        }
        StoreHealth {
            available: false,
            reason: sh.reason.try_lock().ok().map(|r| r.clone()),
            since_ns: sh.unavailable_since_ns.load(Ordering::Acquire),
        }
    }

    /// A link for one shard (create it on the shard's thread: the link is `!Send`).
    /// `doorbell` is rung by the storage thread when completions for this link are ready.
    pub fn link(&self, doorbell: Arc<dyn Doorbell>) -> Result<ShardLink, SubmitError> {
        let id = self.shared.next_link.fetch_add(1, Ordering::Relaxed);
        let (producer, consumer) = rtrb::RingBuffer::new(self.inflight_max.max(1));
        self.tx
            .send(Request::Register {
                link: id,
                completions: producer,
                doorbell,
            })
            .map_err(|_| SubmitError::Closed)?;
        Ok(ShardLink::new(
            id,
            self.tx.clone(),
            consumer,
            self.inflight_max.max(1),
            self.shared.clone(),
        ))
    }

    /// The storage counters now.
    pub fn stats(&self) -> StoreStats {
        let s = &self.shared.stats;
        StoreStats {
            commits: s.commits.load(Ordering::Relaxed),
            commits_failed: s.commits_failed.load(Ordering::Relaxed),
            writes: s.writes.load(Ordering::Relaxed),
            mutations: s.mutations.load(Ordering::Relaxed),
            batch_writes_largest: s.batch_writes_largest.load(Ordering::Relaxed),
            queue_full: s.queue_full.load(Ordering::Relaxed),
            unavailable_episodes: s.unavailable_episodes.load(Ordering::Relaxed),
            refused_unavailable: s.refused_unavailable.load(Ordering::Relaxed),
            retained: s.retained.load(Ordering::Relaxed),
            retained_refused: s.retained_refused.load(Ordering::Relaxed),
            recoveries: s.recoveries.load(Ordering::Relaxed),
            backups: s.backups.load(Ordering::Relaxed),
            backups_failed: s.backups_failed.load(Ordering::Relaxed),
            data_bytes: s.data_bytes.load(Ordering::Relaxed),
            data_bytes_max: s.data_bytes_max.load(Ordering::Relaxed),
            file_bytes: s.file_bytes.load(Ordering::Relaxed),
            refused_full: s.refused_full.load(Ordering::Relaxed),
            refused_anonymous: s.refused_anonymous.load(Ordering::Relaxed),
        }
    }
}

/// The running store: the storage thread and a handle to it.
pub struct Store {
    handle: StoreHandle,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Opens the data directory `dir` on redb: creates it, takes its lock, recovers and
    /// checks the database, checks the server secret, loads every record, then starts the
    /// storage thread. `Snapshot::elapsed` covers all of that.
    pub fn open(
        dir: &Path,
        secrets: &Secrets,
        config: StoreConfig,
    ) -> Result<(Store, Snapshot), StoreError> {
        let t0 = Instant::now();
        let backend = RedbBackend::open(DataDir::open(dir)?, secrets)?;
        let (store, mut snapshot) = Store::start(backend, config)?;
        snapshot.elapsed = t0.elapsed();
        Ok((store, snapshot))
    }

    /// Loads every record from `backend`, then starts the storage thread on it.
    pub fn start<B: Backend>(
        mut backend: B,
        config: StoreConfig,
    ) -> Result<(Store, Snapshot), StoreError> {
        let snapshot = backend.load()?;
        backend.record_start();
        let (tx, rx) = sync_channel(config.queue_depth_max.max(1));
        let shared = Arc::new(Shared {
            stats: Stats::default(),
            exited: AtomicBool::new(false),
            next_link: AtomicUsize::new(0),
            available: AtomicBool::new(true),
            unavailable_since_ns: AtomicU64::new(0),
            reason: Mutex::new(String::new()),
            backup_running: AtomicBool::new(false),
        });
        let st = &shared.stats;
        st.data_bytes.store(snapshot.data_bytes, Ordering::Relaxed);
        st.data_bytes_max
            .store(config.data_bytes_max, Ordering::Relaxed);
        st.file_bytes.store(backend.file_bytes(), Ordering::Relaxed);
        let bound = SizeBound {
            bytes: snapshot.data_bytes,
            bytes_max: config.data_bytes_max,
            anonymous_bytes_max: config.anonymous_data_bytes_max.min(config.data_bytes_max),
        };
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("chatixia-store".into())
            .spawn(move || run(backend, rx, thread_shared, config, bound))
            .map_err(|e| StoreError::Io {
                path: Default::default(),
                op: "spawn the storage thread",
                message: e.to_string(),
            })?;
        Ok((
            Store {
                handle: StoreHandle {
                    tx,
                    shared,
                    inflight_max: config.inflight_max,
                },
                thread: Some(thread),
            },
            snapshot,
        ))
    }

    /// A handle for submitting writes.
    pub fn handle(&self) -> StoreHandle {
        self.handle.clone()
    }

    /// Commits what is queued, stops the storage thread and closes the database (releasing
    /// the data directory's lock). Writes submitted afterwards fail with `Closed`.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.handle.tx.send(Request::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Sink {
    completions: rtrb::Producer<Completion>,
    doorbell: Arc<dyn Doorbell>,
    rung: bool,
}

/// Marks the store exited and rings every link, also when the thread unwinds.
struct ExitGuard<'a> {
    shared: &'a Shared,
    sinks: Vec<Option<Sink>>,
}

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        self.shared.exited.store(true, Ordering::SeqCst);
        for s in self.sinks.iter().flatten() {
            s.doorbell.ring();
        }
    }
}

/// The size bound of the stored records, kept by the storage thread.
#[derive(Debug, Clone, Copy)]
struct SizeBound {
    /// Bytes of records now (as of the last commit).
    bytes: u64,
    bytes_max: u64,
    anonymous_bytes_max: u64,
}

impl SizeBound {
    /// Decides the writes of one group commit in order: `Ok(delta)` adds to `pending`;
    /// a write that grows the records past its bound is refused (nothing of it applied).
    fn admit(&self, pending: &mut i64, delta: i64, class: WriteClass) -> Result<(), StoreError> {
        let anonymous = class == WriteClass::Anonymous;
        let max = if anonymous {
            self.anonymous_bytes_max
        } else {
            self.bytes_max
        };
        let now = (self.bytes as i64).saturating_add(*pending).max(0);
        if class != WriteClass::Progress && delta > 0 && now.saturating_add(delta) as u64 > max {
            return Err(StoreError::Full {
                bytes: now as u64,
                bytes_max: max,
                anonymous,
            });
        }
        *pending = pending.saturating_add(delta);
        Ok(())
    }
}

/// The storage thread's state while it runs.
struct Thread<B: Backend> {
    backend: B,
    shared: Arc<Shared>,
    config: StoreConfig,
    /// The error of the last failed commit or recovery while unavailable.
    down: Option<StoreError>,
    /// When recovery was last tried.
    last_try: Instant,
    /// Retained writes waiting for the store to recover, oldest first.
    retained: VecDeque<Vec<Mutation>>,
    /// The size bound of the stored records.
    bound: SizeBound,
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl<B: Backend> Thread<B> {
    fn set_reason(&self, e: &StoreError) {
        if let Ok(mut r) = self.shared.reason.lock() {
            *r = e.to_string();
        }
    }

    /// Publishes the size of the records and of the file after a commit.
    fn note_size(&self) {
        let st = &self.shared.stats;
        st.data_bytes.store(self.bound.bytes, Ordering::Relaxed);
        st.file_bytes
            .store(self.backend.file_bytes(), Ordering::Relaxed);
    }

    /// The store became (or stays) unavailable because of `e`.
    fn went_down(&mut self, e: StoreError) {
        self.set_reason(&e);
        if self.down.is_none() {
            let sh = &self.shared;
            sh.unavailable_since_ns.store(now_ns(), Ordering::Release);
            sh.available.store(false, Ordering::Release);
            sh.stats
                .unavailable_episodes
                .fetch_add(1, Ordering::Relaxed);
            self.last_try = Instant::now();
        }
        self.down = Some(e);
    }

    /// While unavailable and the retry interval has passed: recover the backend, then
    /// commit the retained writes (a probe commit when there are none). Available again
    /// once that commit succeeds.
    fn try_recover(&mut self) {
        if self.down.is_none() || self.last_try.elapsed() < self.config.retry_interval {
            return;
        }
        self.last_try = Instant::now();
        if let Err(e) = self.backend.recover() {
            self.went_down(e);
            return;
        }
        let refs: Vec<&[Mutation]> = self.retained.iter().map(|m| m.as_slice()).collect();
        // Retained writes are revocations already in effect: the size bound never refuses
        // them (a revocation adds one small record; refusing it would un-revoke).
        let mut pending = 0i64;
        let bound = self.bound;
        let r = self.backend.commit(&refs, &mut |_, delta| {
            let _ = bound.admit(&mut pending, delta, WriteClass::Progress);
            true
        });
        match r {
            Ok(()) => {
                self.bound.bytes = (self.bound.bytes as i64).saturating_add(pending).max(0) as u64;
                self.note_size();
                let st = &self.shared.stats;
                st.commits.fetch_add(1, Ordering::Relaxed);
                st.recoveries.fetch_add(1, Ordering::Relaxed);
                st.retained.store(0, Ordering::Relaxed);
                self.retained.clear();
                self.down = None;
                self.shared.available.store(true, Ordering::Release);
                self.shared.unavailable_since_ns.store(0, Ordering::Release);
            }
            Err(e) => {
                self.shared
                    .stats
                    .commits_failed
                    .fetch_add(1, Ordering::Relaxed);
                self.went_down(e);
            }
        }
    }

    /// The answer for a write that could not be committed because of `e`; a retained
    /// write is kept (bounded) and answered [`StoreError::Deferred`].
    fn refuse(&mut self, mutations: Vec<Mutation>, retain: bool, e: &StoreError) -> StoreError {
        let st = &self.shared.stats;
        if !e.is_unavailable() {
            return e.clone();
        }
        st.refused_unavailable.fetch_add(1, Ordering::Relaxed);
        if !retain {
            return e.clone();
        }
        if self.retained.len() >= self.config.retained_writes_max {
            st.retained_refused.fetch_add(1, Ordering::Relaxed);
            return e.clone();
        }
        self.retained.push_back(mutations);
        st.retained
            .store(self.retained.len() as u64, Ordering::Relaxed);
        match e {
            StoreError::Unavailable { file, reason } | StoreError::Deferred { file, reason } => {
                StoreError::Deferred {
                    file: file.clone(),
                    reason: reason.clone(),
                }
            }
            other => other.clone(),
        }
    }

    /// Starts a backup thread on a snapshot taken now (after this round's commit).
    fn start_backup(&self, b: BackupRequest) {
        let BackupRequest {
            mut chunks,
            doorbell,
            writer,
        } = b;
        let export = match self.backend.export() {
            Ok(x) => x,
            Err(e) => {
                self.shared
                    .stats
                    .backups_failed
                    .fetch_add(1, Ordering::Relaxed);
                self.shared.backup_running.store(false, Ordering::Release);
                let _ = chunks.push(Chunk::End(Err(e.to_string())));
                doorbell.ring();
                return;
            }
        };
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("chatixia-backup".into())
            .spawn(move || {
                let _ = writer.set(std::thread::current());
                let mut w = ChunkWriter {
                    chunks,
                    doorbell,
                    buf: Vec::with_capacity(BACKUP_CHUNK_BYTES),
                };
                let result = export
                    .write_to(&mut w)
                    .and_then(|s| {
                        w.flush_chunk().map(|()| s).map_err(|e| StoreError::Io {
                            path: Default::default(),
                            op: "stream the backup",
                            message: e.to_string(),
                        })
                    })
                    .map_err(|e| e.to_string());
                let counter = if result.is_ok() {
                    &shared.stats.backups
                } else {
                    &shared.stats.backups_failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
                // The snapshot is written: another backup may start.
                shared.backup_running.store(false, Ordering::Release);
                // The end marker needs one free slot; a client that stopped reading gets
                // none and the stream just ends.
                let _ = w.push(Chunk::End(result));
            });
        if spawned.is_err() {
            self.shared
                .stats
                .backups_failed
                .fetch_add(1, Ordering::Relaxed);
            self.shared.backup_running.store(false, Ordering::Release);
        }
    }
}

/// Collects backup bytes into [`BACKUP_CHUNK_BYTES`] chunks and hands each to the shard.
struct ChunkWriter {
    chunks: rtrb::Producer<Chunk>,
    doorbell: Arc<dyn Doorbell>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    /// Pushes one chunk, waiting (on this backup thread) while the ring is full; gives up
    /// when the shard dropped its end or took nothing for [`BACKUP_STALL_MAX`].
    fn push(&mut self, mut c: Chunk) -> std::io::Result<()> {
        let t0 = Instant::now();
        loop {
            if self.chunks.is_abandoned() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the client went away",
                ));
            }
            match self.chunks.push(c) {
                Ok(()) => {
                    self.doorbell.ring();
                    return Ok(());
                }
                Err(rtrb::PushError::Full(back)) => {
                    c = back;
                    if t0.elapsed() > BACKUP_STALL_MAX {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the client stopped reading the backup",
                        ));
                    }
                    // Woken by the shard when it takes a chunk; the timeout re-checks
                    // for a client that went away.
                    std::thread::park_timeout(Duration::from_millis(50));
                }
            }
        }
    }

    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(BACKUP_CHUNK_BYTES));
        self.push(Chunk::Data(full))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = BACKUP_CHUNK_BYTES - self.buf.len();
        let n = bytes.len().min(room);
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() >= BACKUP_CHUNK_BYTES {
            self.flush_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn run<B: Backend>(
    backend: B,
    rx: Receiver<Request>,
    shared: Arc<Shared>,
    config: StoreConfig,
    bound: SizeBound,
) {
    let mut guard = ExitGuard {
        shared: &shared,
        sinks: Vec::new(),
    };
    let mut t = Thread {
        backend,
        shared: shared.clone(),
        config,
        down: None,
        last_try: Instant::now(),
        retained: VecDeque::new(),
        bound,
    };
    let batch_max = config.batch_writes_max.max(1);
    let mut batch: Vec<(Vec<Mutation>, Reply, bool, WriteClass)> = Vec::new();
    let mut backups: Vec<BackupRequest> = Vec::new();
    let mut shutdown = false;
    while !shutdown {
        // Block for the first request (while unavailable, at most until the next
        // recovery try), then take whatever else is queued.
        let first = if t.down.is_some() {
            let wait = config.retry_interval.saturating_sub(t.last_try.elapsed());
            match rx.recv_timeout(wait.max(Duration::from_millis(1))) {
                Ok(r) => Some(r),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(r) => Some(r),
                Err(_) => break,
            }
        };
        let mut next = first;
        while let Some(req) = next.take() {
            match req {
                Request::Write {
                    mutations,
                    reply,
                    retain,
                    class,
                } => batch.push((mutations, reply, retain, class)),
                Request::Backup(b) => backups.push(b),
                Request::Register {
                    link,
                    completions,
                    doorbell,
                } => {
                    if guard.sinks.len() <= link {
                        guard.sinks.resize_with(link + 1, || None);
                    }
                    guard.sinks[link] = Some(Sink {
                        completions,
                        doorbell,
                        rung: false,
                    });
                }
                Request::Shutdown => {
                    shutdown = true;
                    break;
                }
            }
            if batch.len() < batch_max {
                next = rx.try_recv().ok();
            }
        }
        t.try_recover();
        if !batch.is_empty() {
            // Per write: refused by the size bound (not applied, whatever the commit did).
            let mut refused: Vec<Option<StoreError>> = vec![None; batch.len()];
            let result = match &t.down {
                Some(e) => Err(e.clone()),
                None => {
                    let refs: Vec<&[Mutation]> =
                        batch.iter().map(|(m, _, _, _)| m.as_slice()).collect();
                    let mut pending = 0i64;
                    let bound = t.bound;
                    let r = t.backend.commit(&refs, &mut |i, delta| {
                        let class = batch.get(i).map_or(WriteClass::Bounded, |w| w.3);
                        match bound.admit(&mut pending, delta, class) {
                            Ok(()) => true,
                            Err(e) => {
                                if let Some(slot) = refused.get_mut(i) {
                                    *slot = Some(e);
                                }
                                false
                            }
                        }
                    });
                    drop(refs);
                    let st = &shared.stats;
                    if r.is_ok() {
                        st.commits.fetch_add(1, Ordering::Relaxed);
                        t.bound.bytes =
                            (t.bound.bytes as i64).saturating_add(pending).max(0) as u64;
                        t.note_size();
                    } else {
                        st.commits_failed.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Err(e) = &r {
                        if e.is_unavailable() {
                            t.went_down(e.clone());
                        }
                    }
                    r
                }
            };
            let st = &shared.stats;
            for e in refused.iter().flatten() {
                let c = match e {
                    StoreError::Full {
                        anonymous: true, ..
                    } => &st.refused_anonymous,
                    _ => &st.refused_full,
                };
                c.fetch_add(1, Ordering::Relaxed);
            }
            let n = batch.len() as u64;
            st.writes.fetch_add(n, Ordering::Relaxed);
            let muts: usize = batch.iter().map(|(m, _, _, _)| m.len()).sum();
            st.mutations.fetch_add(muts as u64, Ordering::Relaxed);
            st.batch_writes_largest.fetch_max(n, Ordering::Relaxed);
            for ((mutations, reply, retain, _), refused) in batch.drain(..).zip(refused) {
                let r = match (refused, &result) {
                    (Some(e), _) => Err(e),
                    (None, Ok(())) => Ok(()),
                    (None, Err(e)) => Err(t.refuse(mutations, retain, e)),
                };
                match reply {
                    Reply::Blocking(tx) => {
                        let _ = tx.send(r);
                    }
                    Reply::Link { link, key } => {
                        if let Some(Some(sink)) = guard.sinks.get_mut(link) {
                            // Cannot be full: the link keeps at most `inflight_max` writes
                            // outstanding and the ring holds that many.
                            let _ = sink.completions.push((key, r));
                            sink.rung = true;
                        }
                    }
                }
            }
        }
        for b in backups.drain(..) {
            t.start_backup(b);
        }
        for sink in guard.sinks.iter_mut().flatten() {
            if std::mem::take(&mut sink.rung) {
                sink.doorbell.ring();
            }
        }
    }
    // A last try for retained writes (revocations) before the process goes.
    if t.down.is_some() && !t.retained.is_empty() {
        t.last_try = Instant::now() - config.retry_interval;
        t.try_recover();
    }
    if t.down.is_none() {
        t.backend.close();
    }
    // Anything still queued is refused; the guard then marks the store exited and rings
    // every link so their waiters fail with `Closed` instead of waiting forever.
    drop(t);
    drop(rx);
}

impl From<TrySendError<Request>> for SubmitError {
    fn from(e: TrySendError<Request>) -> Self {
        match e {
            TrySendError::Full(_) => SubmitError::QueueFull,
            TrySendError::Disconnected(_) => SubmitError::Closed,
        }
    }
}
