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

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::error::{StoreError, SubmitError};
use crate::link::{Completion, ShardLink};
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
            data_bytes_max: DATA_BYTES_MAX_DEFAULT,
            anonymous_data_bytes_max: DATA_BYTES_MAX_DEFAULT / 2,
            cache_bytes_max: crate::CACHE_BYTES_DEFAULT,
        }
    }
}

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
    pub(crate) data_bytes: AtomicU64,
    pub(crate) data_bytes_max: AtomicU64,
    pub(crate) file_bytes: AtomicU64,
    pub(crate) refused_full: AtomicU64,
    pub(crate) refused_anonymous: AtomicU64,
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

pub(crate) enum Reply {
    Blocking(SyncSender<Result<(), StoreError>>),
    Link { link: usize, key: usize },
}

pub(crate) enum Request {
    Write {
        mutations: Vec<Mutation>,
        reply: Reply,
        /// The size bound it is held to.
        class: WriteClass,
    },
    Register {
        link: usize,
        completions: rtrb::Producer<Completion>,
        doorbell: Arc<dyn Doorbell>,
    },
    Shutdown,
}

/// What every link shares with the storage thread.
pub(crate) struct Shared {
    pub(crate) stats: Stats,
    /// Set once the storage thread has stopped taking requests for good.
    pub(crate) exited: AtomicBool,
    next_link: AtomicUsize,
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
                class,
            })
            .map_err(|_| StoreError::Closed)?;
        rx.recv().unwrap_or(Err(StoreError::Closed))
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
        let backend = RedbBackend::open_with(DataDir::open(dir)?, secrets, config.cache_bytes_max)?;
        let (store, mut snapshot) = Store::start(backend, config)?;
        snapshot.elapsed = t0.elapsed();
        Ok((store, snapshot))
    }

    /// Loads every record from `backend`, then starts the storage thread on it.
    pub fn start<B: Backend>(
        backend: B,
        config: StoreConfig,
    ) -> Result<(Store, Snapshot), StoreError> {
        let snapshot = backend.load()?;
        let (tx, rx) = sync_channel(config.queue_depth_max.max(1));
        let shared = Arc::new(Shared {
            stats: Stats::default(),
            exited: AtomicBool::new(false),
            next_link: AtomicUsize::new(0),
        });
        let st = &shared.stats;
        st.data_bytes.store(snapshot.data_bytes, Ordering::Relaxed);
        st.data_bytes_max
            .store(config.data_bytes_max, Ordering::Relaxed);
        st.file_bytes.store(backend.file_bytes(), Ordering::Relaxed);
        let thread_shared = shared.clone();
        let bound = SizeBound {
            bytes: snapshot.data_bytes,
            bytes_max: config.data_bytes_max,
            anonymous_bytes_max: config.anonymous_data_bytes_max.min(config.data_bytes_max),
        };
        let batch_max = config.batch_writes_max.max(1);
        let thread = std::thread::Builder::new()
            .name("chatixia-store".into())
            .spawn(move || run(backend, rx, thread_shared, batch_max, bound))
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

fn run<B: Backend>(
    mut backend: B,
    rx: Receiver<Request>,
    shared: Arc<Shared>,
    batch_max: usize,
    mut bound: SizeBound,
) {
    let mut guard = ExitGuard {
        shared: &shared,
        sinks: Vec::new(),
    };
    let mut batch: Vec<(Vec<Mutation>, Reply, WriteClass)> = Vec::new();
    let mut shutdown = false;
    while !shutdown {
        // Block for the first request, then take whatever else is queued.
        let Ok(first) = rx.recv() else { break };
        let mut next = Some(first);
        while let Some(req) = next.take() {
            match req {
                Request::Write {
                    mutations,
                    reply,
                    class,
                } => batch.push((mutations, reply, class)),
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
        if batch.is_empty() {
            continue;
        }
        let refs: Vec<&[Mutation]> = batch.iter().map(|(m, _, _)| m.as_slice()).collect();
        let mut refused: Vec<Option<StoreError>> = vec![None; batch.len()];
        let mut pending = 0i64;
        let result = backend.commit(&refs, &mut |i, delta| {
            let class = batch.get(i).map_or(WriteClass::Bounded, |w| w.2);
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
        let n = batch.len() as u64;
        if result.is_ok() {
            st.commits.fetch_add(1, Ordering::Relaxed);
            bound.bytes = (bound.bytes as i64).saturating_add(pending).max(0) as u64;
            st.data_bytes.store(bound.bytes, Ordering::Relaxed);
            st.file_bytes.store(backend.file_bytes(), Ordering::Relaxed);
        } else {
            st.commits_failed.fetch_add(1, Ordering::Relaxed);
        }
        for e in refused.iter().flatten() {
            let c = match e {
                StoreError::Full {
                    anonymous: true, ..
                } => &st.refused_anonymous,
                _ => &st.refused_full,
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
        st.writes.fetch_add(n, Ordering::Relaxed);
        let muts: usize = batch.iter().map(|(m, _, _)| m.len()).sum();
        st.mutations.fetch_add(muts as u64, Ordering::Relaxed);
        st.batch_writes_largest.fetch_max(n, Ordering::Relaxed);
        for ((_, reply, _), refused) in batch.drain(..).zip(refused) {
            // A refused write was not applied, whatever the commit did.
            let result = match refused {
                Some(e) => Err(e),
                None => result.clone(),
            };
            match reply {
                Reply::Blocking(tx) => {
                    let _ = tx.send(result.clone());
                }
                Reply::Link { link, key } => {
                    if let Some(Some(sink)) = guard.sinks.get_mut(link) {
                        // Cannot be full: the link keeps at most `inflight_max` writes
                        // outstanding and the ring holds that many.
                        let _ = sink.completions.push((key, result.clone()));
                        sink.rung = true;
                    }
                }
            }
        }
        for sink in guard.sinks.iter_mut().flatten() {
            if std::mem::take(&mut sink.rung) {
                sink.doorbell.ring();
            }
        }
    }
    // Anything still queued is refused; the guard then marks the store exited and rings
    // every link so their waiters fail with `Closed` instead of waiting forever.
    drop(backend);
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
