//! [`Backend`] on redb: one file, one table per record kind, every commit durable
//! (`Durability::Immediate`: the commit returns after its fsync).
//!
//! Open = crash recovery by redb (after `kill -9` the last durable commit is intact; redb
//! rebuilds its allocator state), then a full integrity check (every page checksum), then
//! the meta check (format, server-secret check value, commit sequence and record counts),
//! all with any panic inside redb caught ([`crate::guard`]). Any failure is an error
//! naming `state.redb` (or the file at fault) and the problem; the store never starts
//! empty or partial in silence.
//!
//! What detects what (issue 22):
//! * every B-tree page carries a checksum, and every branch the checksums of its
//!   children, up to the root in the commit slot (itself checksummed): a damaged page on
//!   the live tree fails the integrity check. redb then falls back to the previous commit
//!   when that one still verifies — which would drop the newest commit. Hence:
//! * the meta table holds a commit sequence number and the record count of every table,
//!   updated by every commit; when the store has loaded at start, and at a clean
//!   shutdown, the sequence and counts are also written to `state.redb.seen` (outside the
//!   database). At open, a database whose sequence is behind that file's lost commits and
//!   is refused (a file truncated to nothing, which redb would take for a new database, an
//!   older copy put back by hand, a rollback to the previous commit); on load, a table
//!   whose row count differs from the recorded count is refused;
//! * a record that does not decode, or sits under another record's key, is refused.
//!
//! Not detected: after an unclean stop (`kill -9`, power loss), damage confined to the
//! pages written by the newest commit makes redb fall back to the commit before it (the
//! same thing redb must do for a commit interrupted by the crash, which was never
//! acknowledged, so the two cannot be told apart from the file). redb's two-phase commit
//! would close this at the price of a second fsync per commit (measured: 0.45–0.6× the
//! commits per second at one writer); see docs/ARCHITECTURE.md, "Durable state".

pub mod export;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use redb::{
    Database, DatabaseError, Durability, ReadableDatabase as _, ReadableTable as _,
    ReadableTableMetadata as _, TableDefinition, TableHandle as _,
};
use serde::{Deserialize, Serialize};

use crate::dir::DataDir;
use crate::error::StoreError;
use crate::guard::{catch, one_line};
use crate::records::{self, Counts, Mutation, PairingRecord, RevocationRecord, Snapshot};
use crate::secret::Secrets;
use crate::{Admit, Backend};

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "state.redb";
/// Name of the marker left when an integrity check had to repair the file.
pub const DAMAGED_MARKER: &str = "state.redb.damaged";
/// Name of the file written when the store has loaded at start and at a clean shutdown:
/// the commit sequence and record counts the database held then (see the module docs).
pub const SEEN_FILE: &str = "state.redb.seen";

/// Default of [`crate::StoreConfig::cache_bytes_max`]: bytes of redb's page cache
/// (`--data-cache-bytes-max`). redb's own default is 1 GiB, which it fills with every page
/// written or read (all of the records after a start-up load): memory that no budget
/// counted (issue 20). 32 MiB holds the upper levels of every table's B-tree, which
/// is what a commit reads; record pages come from the OS page cache when needed.
pub const CACHE_BYTES_DEFAULT: usize = 32 * 1024 * 1024;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const PAIRINGS: TableDefinition<u32, &[u8]> = TableDefinition::new("pairing");
pub(crate) const TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("device_token");
pub(crate) const REVOCATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("revocation");
/// Invite codes by 64-bit key (six-digit and long codes).
pub(crate) const INVITES: TableDefinition<u64, &[u8]> = TableDefinition::new("invite_v2");
/// Six-digit invite codes written before long codes existed (keyed by the u32 code):
/// still loaded, and emptied as they are redeemed or expire; nothing new goes there.
pub(crate) const INVITES_V1: TableDefinition<u32, &[u8]> = TableDefinition::new("invite");
pub(crate) const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("task");
/// Agent bindings by agent id (issue 20, review). A data directory written before they
/// were kept has no such table: it loads with none, and the first commit creates it.
pub(crate) const AGENT_BINDINGS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("agent_binding");

/// Value of the meta key `format`.
pub(crate) const FORMAT: &[u8] = b"chatixia-store 1";

/// The meta key `state`, written by every commit, and the content of [`SEEN_FILE`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StateMeta {
    /// Commits since the directory was created.
    pub(crate) seq: u64,
    pub(crate) pairing: u64,
    pub(crate) device_token: u64,
    pub(crate) revocation: u64,
    pub(crate) invite: u64,
    pub(crate) task: u64,
    /// Absent in a store (and a `state.redb.seen`) written before bindings were kept.
    #[serde(default)]
    pub(crate) agent_binding: u64,
}

impl StateMeta {
    /// Records of every table together.
    fn records(&self) -> u64 {
        self.pairing
            + self.device_token
            + self.revocation
            + self.invite
            + self.task
            + self.agent_binding
    }

    fn counts_match(&self, c: &Counts) -> Option<String> {
        let pairs = [
            ("pairing", self.pairing, c.pairings),
            ("device_token", self.device_token, c.device_tokens),
            ("revocation", self.revocation, c.revocations),
            ("invite", self.invite, c.invites),
            ("task", self.task, c.tasks),
            ("agent_binding", self.agent_binding, c.agent_bindings),
        ];
        let wrong: Vec<String> = pairs
            .iter()
            .filter(|(_, want, got)| *want != *got as u64)
            .map(|(t, want, got)| format!("table {t} holds {got} records, {want} were committed"))
            .collect();
        (!wrong.is_empty()).then(|| wrong.join("; "))
    }
}

/// The redb backend. Owns the locked [`DataDir`].
pub struct RedbBackend {
    /// `None` after a failed reopen (the store is unavailable until one succeeds).
    db: Option<Database>,
    file: PathBuf,
    /// The last commit's sequence number and counts (what the meta table holds).
    state: StateMeta,
    /// A commit failed in a way that leaves redb refusing further commits ("Previous I/O
    /// error occurred"): [`Backend::recover`] reopens the database.
    poisoned: bool,
    /// How long the integrity check at open took.
    check_elapsed: std::time::Duration,
    /// Bytes of redb's page cache (kept for a reopen after an outage).
    cache_bytes: usize,
    dir: DataDir,
}

impl std::fmt::Debug for RedbBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedbBackend({})", self.file.display())
    }
}

fn corrupt(file: &Path, problem: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        file: file.to_owned(),
        problem: one_line(&problem.into()),
    }
}

/// Maps a redb error on `file` to ours.
fn engine_err(file: &Path, e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(msg) => corrupt(file, msg),
        redb::Error::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            corrupt(file, e.to_string())
        }
        redb::Error::Io(e) => StoreError::Io {
            path: file.to_owned(),
            op: "read or write",
            message: e.to_string(),
        },
        redb::Error::UpgradeRequired(v) => corrupt(
            file,
            format!("written by an older redb file format ({v}); upgrade required"),
        ),
        other => StoreError::Commit {
            file: file.to_owned(),
            message: one_line(&other.to_string()),
        },
    }
}

/// Maps a failed commit: a disk that refuses writes (or a database poisoned by an
/// earlier such failure, or damaged under us) is [`StoreError::Unavailable`]; the bool
/// says whether the database must be reopened before the next commit.
fn commit_err(file: &Path, e: impl Into<redb::Error>) -> (StoreError, bool) {
    let unavailable = |reason: String| StoreError::Unavailable {
        file: file.to_owned(),
        reason: one_line(&reason),
    };
    match e.into() {
        redb::Error::Io(e) => (unavailable(e.to_string()), true),
        redb::Error::PreviousIo => (
            unavailable("an earlier write failed; the database is being reopened".into()),
            true,
        ),
        redb::Error::Corrupted(msg) => (unavailable(format!("damaged: {msg}")), true),
        redb::Error::DatabaseClosed => (unavailable("the database is closed".into()), true),
        other => (
            StoreError::Commit {
                file: file.to_owned(),
                message: one_line(&other.to_string()),
            },
            false,
        ),
    }
}

/// `catch` with the panic reported as damage of `file`.
fn guarded<T>(file: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    catch(f).unwrap_or_else(|panic| Err(corrupt(file, panic)))
}

/// Reads [`SEEN_FILE`] in `dir`, if there is one.
fn read_clean(dir: &DataDir) -> Result<Option<StateMeta>, StoreError> {
    let path = dir.file(SEEN_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            corrupt(
                &path,
                format!("unreadable record of the state last seen: {e}"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io {
            path,
            op: "read",
            message: e.to_string(),
        }),
    }
}

/// Writes `bytes` to `path` durably: a temporary file, fsync, rename, fsync of the
/// directory.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

impl RedbBackend {
    /// Opens (creating if missing) the database in `dir`, checks it, and checks that it
    /// was written under `secrets`; redb's page cache is [`CACHE_BYTES_DEFAULT`].
    pub fn open(dir: DataDir, secrets: &Secrets) -> Result<RedbBackend, StoreError> {
        RedbBackend::open_with(dir, secrets, CACHE_BYTES_DEFAULT)
    }

    /// [`open`](Self::open) with a page cache of at most `cache_bytes`.
    pub fn open_with(
        dir: DataDir,
        secrets: &Secrets,
        cache_bytes: usize,
    ) -> Result<RedbBackend, StoreError> {
        RedbBackend::open_named(dir, DB_FILE, secrets, cache_bytes)
    }

    /// [`open`](Self::open) on another file of the directory (restore builds the new
    /// database beside the old one and checks it this way before it takes its place).
    pub(crate) fn open_named(
        dir: DataDir,
        name: &str,
        secrets: &Secrets,
        cache_bytes: usize,
    ) -> Result<RedbBackend, StoreError> {
        let file = dir.file(name);
        let marker = dir.file(DAMAGED_MARKER);
        let main = name == DB_FILE;
        if main && marker.exists() {
            let why = std::fs::read_to_string(&marker).unwrap_or_default();
            return Err(corrupt(
                &file,
                format!(
                    "an earlier integrity check repaired it and may have lost records ({}); \
                     restore a backup or accept the repaired file, then delete {}",
                    why.trim(),
                    marker.display()
                ),
            ));
        }
        let clean = if main { read_clean(&dir)? } else { None };
        let existed = file.exists();
        if existed && clean.is_some() {
            // redb takes an empty file for a new database: after the store was loaded
            // once, an empty file is a store that lost everything.
            let len = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            if len == 0 {
                return Err(corrupt(
                    &file,
                    format!(
                        "is empty (0 bytes) but held a store when last loaded ({}); restore a \
                         backup, or delete both files to start with an empty store",
                        dir.file(SEEN_FILE).display()
                    ),
                ));
            }
        }
        let (db, check_elapsed) = guarded(&file, || {
            let mut db = match Database::builder()
                .set_cache_size(cache_bytes)
                .create(&file)
            {
                Ok(db) => db,
                Err(DatabaseError::DatabaseAlreadyOpen) => {
                    return Err(StoreError::Locked {
                        dir: dir.path().to_owned(),
                        lock_file: file.clone(),
                        holder: "redb file lock".into(),
                    })
                }
                Err(e) => return Err(engine_err(&file, e)),
            };
            let t = Instant::now();
            match db.check_integrity() {
                Ok(true) => {}
                Ok(false) => {
                    let problem = "failed its integrity check; redb repaired it, which may \
                                   have dropped the most recent commits";
                    if main {
                        let _ = std::fs::write(&marker, problem);
                    }
                    return Err(corrupt(&file, problem));
                }
                Err(e) => return Err(engine_err(&file, e)),
            }
            Ok((db, t.elapsed()))
        })?;
        let mut backend = RedbBackend {
            db: Some(db),
            file,
            state: StateMeta::default(),
            poisoned: false,
            check_elapsed,
            cache_bytes,
            dir,
        };
        let f = backend.file.clone();
        guarded(&f, || backend.check_meta(existed, secrets))?;
        if let Some(clean) = clean {
            backend.check_clean(&clean)?;
        }
        Ok(backend)
    }

    /// Creates a new database `name` in `dir` holding no records, written under the
    /// server secret whose check value is `secret_check`, its sequence starting at `seq`
    /// (restore builds the restored database this way).
    pub(crate) fn create_named(
        dir: DataDir,
        name: &str,
        secret_check: &[u8],
        seq: u64,
    ) -> Result<RedbBackend, StoreError> {
        let file = dir.file(name);
        let db = guarded(&file, || {
            Database::create(&file).map_err(|e| engine_err(&file, e))
        })?;
        let mut backend = RedbBackend {
            db: Some(db),
            file,
            state: StateMeta::default(),
            poisoned: false,
            check_elapsed: std::time::Duration::ZERO,
            cache_bytes: CACHE_BYTES_DEFAULT,
            dir,
        };
        backend.init(secret_check, seq)?;
        Ok(backend)
    }

    /// The database file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The data directory (and its lock), once the backend is closed.
    pub(crate) fn into_dir(mut self) -> DataDir {
        self.db = None;
        self.dir
    }

    fn db(&self) -> Result<&Database, StoreError> {
        self.db.as_ref().ok_or_else(|| StoreError::Unavailable {
            file: self.file.clone(),
            reason: "the database could not be reopened yet".into(),
        })
    }

    /// Refuses a database behind the state recorded when it was last loaded or cleanly
    /// closed.
    fn check_clean(&self, clean: &StateMeta) -> Result<(), StoreError> {
        let s = &self.state;
        if s.seq < clean.seq || (s.seq == clean.seq && s != clean) {
            return Err(corrupt(
                &self.file,
                format!(
                    "holds commit {} ({} records) but was at commit {} ({} records) when it \
                     was last loaded or cleanly closed ({}): the newest changes are missing; \
                     restore a backup, or delete {} to accept this state",
                    s.seq,
                    s.records(),
                    clean.seq,
                    clean.records(),
                    SEEN_FILE,
                    self.dir.file(SEEN_FILE).display()
                ),
            ));
        }
        Ok(())
    }

    fn check_meta(&mut self, existed: bool, secrets: &Secrets) -> Result<(), StoreError> {
        let f = self.file.clone();
        let f = &f;
        let read = self.db()?.begin_read().map_err(|e| engine_err(f, e))?;
        let stored = match read.open_table(META) {
            Ok(t) => {
                let get = |k: &str| {
                    t.get(k)
                        .map(|v| v.map(|v| v.value().to_vec()))
                        .map_err(|e| engine_err(f, e))
                };
                Some((get("format")?, get("secret_check")?, get("state")?))
            }
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(engine_err(f, e)),
        };
        drop(read);
        match stored {
            Some((Some(format), Some(check), state)) => {
                if format != FORMAT {
                    return Err(corrupt(
                        f,
                        format!("unknown format {:?}", String::from_utf8_lossy(&format)),
                    ));
                }
                if check != secrets.check_value() {
                    return Err(StoreError::SecretMismatch { file: f.clone() });
                }
                self.state = match state {
                    // Written before the sequence was kept: counted at load instead.
                    None => StateMeta::default(),
                    Some(bytes) => serde_json::from_slice(&bytes)
                        .map_err(|e| corrupt(f, format!("meta table, key state: {e}")))?,
                };
                Ok(())
            }
            Some(_) => Err(corrupt(f, "meta table lacks format or secret check")),
            None if existed && self.has_any_record()? => {
                Err(corrupt(f, "records present but no meta table"))
            }
            None => self.init(&secrets.check_value(), 0),
        }
    }

    fn has_any_record(&self) -> Result<bool, StoreError> {
        let snap = self.load_unchecked()?;
        Ok(snap.counts().total() > 0)
    }

    /// Writes the meta table and creates every table, in one durable commit.
    pub(crate) fn init(&mut self, secret_check: &[u8], seq: u64) -> Result<(), StoreError> {
        let f = &self.file;
        let state = StateMeta {
            seq,
            ..StateMeta::default()
        };
        let mut txn = self.db()?.begin_write().map_err(|e| engine_err(f, e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| engine_err(f, redb::Error::from(e)))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| engine_err(f, e))?;
            meta.insert("format", FORMAT)
                .map_err(|e| engine_err(f, e))?;
            meta.insert("secret_check", secret_check)
                .map_err(|e| engine_err(f, e))?;
            let bytes = serde_json::to_vec(&state).unwrap_or_default();
            meta.insert("state", bytes.as_slice())
                .map_err(|e| engine_err(f, e))?;
            txn.open_table(PAIRINGS).map_err(|e| engine_err(f, e))?;
            txn.open_table(TOKENS).map_err(|e| engine_err(f, e))?;
            txn.open_table(REVOCATIONS).map_err(|e| engine_err(f, e))?;
            txn.open_table(INVITES).map_err(|e| engine_err(f, e))?;
            txn.open_table(INVITES_V1).map_err(|e| engine_err(f, e))?;
            txn.open_table(TASKS).map_err(|e| engine_err(f, e))?;
            txn.open_table(AGENT_BINDINGS)
                .map_err(|e| engine_err(f, e))?;
        }
        txn.commit().map_err(|e| engine_err(f, e))?;
        self.state = state;
        Ok(())
    }

    /// Every record, without the count check (see [`Backend::load`]).
    fn load_unchecked(&self) -> Result<Snapshot, StoreError> {
        let f = &self.file;
        let txn = self.db()?.begin_read().map_err(|e| engine_err(f, e))?;
        let mut s = Snapshot::default();
        let b = &mut s.data_bytes;
        load_table(&txn, f, PAIRINGS, |k, r| *k == r.id, &mut s.pairings, b)?;
        load_table(
            &txn,
            f,
            TOKENS,
            |k, r| *k == r.hash.0,
            &mut s.device_tokens,
            b,
        )?;
        load_table(
            &txn,
            f,
            REVOCATIONS,
            |k, r| *k == r.peer_id,
            &mut s.revocations,
            b,
        )?;
        load_table(
            &txn,
            f,
            INVITES_V1,
            |k, r| u64::from(*k) == r.code,
            &mut s.invites,
            b,
        )?;
        load_table(&txn, f, INVITES, |k, r| *k == r.code, &mut s.invites, b)?;
        load_table(&txn, f, TASKS, |k, r| *k == r.id, &mut s.tasks, b)?;
        load_table(
            &txn,
            f,
            AGENT_BINDINGS,
            |k, r| *k == r.agent_id,
            &mut s.agent_bindings,
            b,
        )?;
        Ok(s)
    }

    fn commit_inner(
        &mut self,
        writes: &[&[Mutation]],
        admit: Admit<'_>,
    ) -> Result<StateMeta, (StoreError, bool)> {
        let f = self.file.clone();
        let f = &f;
        let db = self.db().map_err(|e| (e, true))?;
        let mut txn = db.begin_write().map_err(|e| commit_err(f, e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| commit_err(f, redb::Error::from(e)))?;
        let mut state = self.state;
        state.seq += 1;
        {
            let mut t = Tables {
                pairings: txn.open_table(PAIRINGS).map_err(|e| commit_err(f, e))?,
                tokens: txn.open_table(TOKENS).map_err(|e| commit_err(f, e))?,
                revocations: txn.open_table(REVOCATIONS).map_err(|e| commit_err(f, e))?,
                invites: txn.open_table(INVITES).map_err(|e| commit_err(f, e))?,
                invites_v1: txn.open_table(INVITES_V1).map_err(|e| commit_err(f, e))?,
                tasks: txn.open_table(TASKS).map_err(|e| commit_err(f, e))?,
                bindings: txn
                    .open_table(AGENT_BINDINGS)
                    .map_err(|e| commit_err(f, e))?,
            };
            for (i, w) in writes.iter().enumerate() {
                let encoded: Vec<Encoded<'_>> = w.iter().map(Encoded::of).collect();
                // The change in stored bytes, read before anything of the write is
                // applied (a write names each key once).
                let mut delta: i64 = 0;
                for e in &encoded {
                    let old = t.old_len(e).map_err(|e| commit_err(f, e))?;
                    delta += e.new_len() as i64 - old as i64;
                }
                if !admit(i, delta) {
                    continue;
                }
                for e in &encoded {
                    t.apply(e).map_err(|e| commit_err(f, e))?;
                }
            }
            let len = |t: &dyn Fn() -> redb::Result<u64>| t().map_err(|e| commit_err(f, e));
            state.pairing = len(&|| t.pairings.len())?;
            state.device_token = len(&|| t.tokens.len())?;
            state.revocation = len(&|| t.revocations.len())?;
            state.invite = len(&|| Ok(t.invites.len()? + t.invites_v1.len()?))?;
            state.task = len(&|| t.tasks.len())?;
            state.agent_binding = len(&|| t.bindings.len())?;
        }
        {
            let mut meta = txn.open_table(META).map_err(|e| commit_err(f, e))?;
            let bytes = serde_json::to_vec(&state).unwrap_or_default();
            meta.insert("state", bytes.as_slice())
                .map_err(|e| commit_err(f, e))?;
        }
        txn.commit().map_err(|e| commit_err(f, e))?;
        Ok(state)
    }

    /// A consistent read snapshot of every table, for a backup or an export: taken now,
    /// written later (on another thread) while commits go on.
    pub fn exporter(&self) -> Result<export::Exporter, StoreError> {
        let f = &self.file;
        guarded(f, || {
            let txn = self.db()?.begin_read().map_err(|e| engine_err(f, e))?;
            let check = {
                let meta = txn.open_table(META).map_err(|e| engine_err(f, e))?;
                let v = meta.get("secret_check").map_err(|e| engine_err(f, e))?;
                v.map(|v| v.value().to_vec()).unwrap_or_default()
            };
            Ok(export::Exporter::new(txn, f.clone(), check, self.state.seq))
        })
    }
}

/// Reads every row of `def`, decoding each value; `check_key` verifies that the key is
/// the record's own (a mismatch is corruption).
fn load_table<K, R>(
    txn: &redb::ReadTransaction,
    file: &Path,
    def: TableDefinition<K, &[u8]>,
    check_key: impl Fn(&K::SelfType<'_>, &R) -> bool,
    out: &mut Vec<R>,
    bytes: &mut u64,
) -> Result<(), StoreError>
where
    K: redb::Key + 'static,
    for<'a> K::SelfType<'a>: std::fmt::Debug,
    R: for<'de> serde::Deserialize<'de>,
{
    let name = def.name().to_owned();
    let table = match txn.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(engine_err(file, e)),
    };
    out.reserve(table.len().unwrap_or(0) as usize);
    for row in table.iter().map_err(|e| engine_err(file, e))? {
        let (k, v) = row.map_err(|e| engine_err(file, e))?;
        let key = k.value();
        *bytes += (K::as_bytes(&key).as_ref().len() + v.value().len()) as u64;
        let rec: R = records::decode(v.value())
            .map_err(|p| corrupt(file, format!("table {name}, key {key:?}: {p}")))?;
        if !check_key(&key, &rec) {
            return Err(corrupt(
                file,
                format!("table {name}, key {key:?}: record belongs to another key"),
            ));
        }
        out.push(rec);
    }
    Ok(())
}

/// One mutation with its value encoded once: the key, its byte length (for the size
/// bound), the encoded value (`None`: a delete).
struct Encoded<'a> {
    m: &'a Mutation,
    key_len: usize,
    value: Option<Vec<u8>>,
}

impl<'a> Encoded<'a> {
    fn of(m: &'a Mutation) -> Encoded<'a> {
        let (key_len, value) = match m {
            Mutation::PutPairing(r) => (4, Some(records::encode(r))),
            Mutation::DeletePairing(_) => (4, None),
            Mutation::PutDeviceToken(r) => (r.hash.0.len(), Some(records::encode(r))),
            Mutation::DeleteDeviceToken(h) => (h.0.len(), None),
            Mutation::PutRevocation(r) => (r.peer_id.len(), Some(records::encode(r))),
            Mutation::PutInvite(r) => (8, Some(records::encode(r))),
            Mutation::DeleteInvite(_) => (8, None),
            Mutation::PutTask(r) => (r.id.len(), Some(records::encode(r))),
            Mutation::DeleteTask(id) => (id.len(), None),
            Mutation::PutAgentBinding(r) => (r.agent_id.len(), Some(records::encode(r))),
            Mutation::DeleteAgentBinding(id) => (id.len(), None),
        };
        Encoded { m, key_len, value }
    }

    /// Bytes of the record after this mutation (0: deleted).
    fn new_len(&self) -> usize {
        self.value.as_ref().map_or(0, |v| self.key_len + v.len())
    }
}

/// The tables a commit writes.
struct Tables<'t> {
    pairings: redb::Table<'t, u32, &'static [u8]>,
    tokens: redb::Table<'t, &'static [u8], &'static [u8]>,
    revocations: redb::Table<'t, &'static str, &'static [u8]>,
    invites: redb::Table<'t, u64, &'static [u8]>,
    invites_v1: redb::Table<'t, u32, &'static [u8]>,
    tasks: redb::Table<'t, &'static str, &'static [u8]>,
    bindings: redb::Table<'t, &'static str, &'static [u8]>,
}

/// Bytes of a stored value (0: none).
fn value_len(v: Option<redb::AccessGuard<'_, &'static [u8]>>) -> usize {
    v.map_or(0, |v| v.value().len())
}

impl Tables<'_> {
    /// The revocation of pairing entry `id`'s peer, if that revocation is the entry's own
    /// (peer ids may repeat across entries): it leaves with the entry.
    fn owned_revocation(&self, id: u32) -> Result<Option<String>, redb::StorageError> {
        let Some(p) = self
            .pairings
            .get(id)?
            .and_then(|v| records::decode::<PairingRecord>(v.value()).ok())
        else {
            return Ok(None);
        };
        let owned = self
            .revocations
            .get(p.peer_id.as_str())?
            .and_then(|v| records::decode::<RevocationRecord>(v.value()).ok())
            .is_some_and(|r| r.entry_id == Some(id));
        Ok(owned.then_some(p.peer_id))
    }

    /// Bytes of the records `e` replaces or deletes (0: none), keys included.
    fn old_len(&self, e: &Encoded<'_>) -> Result<usize, redb::StorageError> {
        let with_key = |n: usize| if n == 0 { 0 } else { n + e.key_len };
        Ok(match e.m {
            Mutation::PutPairing(r) => with_key(value_len(self.pairings.get(r.id)?)),
            Mutation::DeletePairing(id) => {
                let entry = with_key(value_len(self.pairings.get(id)?));
                let revocation = match self.owned_revocation(*id)? {
                    Some(peer) => value_len(self.revocations.get(peer.as_str())?) + peer.len(),
                    None => 0,
                };
                entry + revocation
            }
            Mutation::PutDeviceToken(r) => {
                with_key(value_len(self.tokens.get(r.hash.0.as_slice())?))
            }
            Mutation::DeleteDeviceToken(h) => with_key(value_len(self.tokens.get(h.0.as_slice())?)),
            Mutation::PutRevocation(r) => {
                with_key(value_len(self.revocations.get(r.peer_id.as_str())?))
            }
            Mutation::PutInvite(r) => with_key(value_len(self.invites.get(r.code)?)),
            Mutation::DeleteInvite(c) => {
                let old = match u32::try_from(*c) {
                    Ok(v1) => value_len(self.invites_v1.get(v1)?),
                    Err(_) => 0,
                };
                with_key(value_len(self.invites.get(c)?)) + with_key(old)
            }
            Mutation::PutTask(r) => with_key(value_len(self.tasks.get(r.id.as_str())?)),
            Mutation::DeleteTask(id) => with_key(value_len(self.tasks.get(id.as_str())?)),
            Mutation::PutAgentBinding(r) => {
                with_key(value_len(self.bindings.get(r.agent_id.as_str())?))
            }
            Mutation::DeleteAgentBinding(id) => {
                with_key(value_len(self.bindings.get(id.as_str())?))
            }
        })
    }

    fn apply(&mut self, e: &Encoded<'_>) -> Result<(), redb::StorageError> {
        let v = e.value.as_deref().unwrap_or_default();
        match e.m {
            Mutation::PutPairing(r) => self.pairings.insert(r.id, v).map(drop),
            Mutation::DeletePairing(id) => {
                if let Some(peer) = self.owned_revocation(*id)? {
                    self.revocations.remove(peer.as_str())?;
                }
                self.pairings.remove(id).map(drop)
            }
            Mutation::PutDeviceToken(r) => self.tokens.insert(r.hash.0.as_slice(), v).map(drop),
            Mutation::DeleteDeviceToken(h) => self.tokens.remove(h.0.as_slice()).map(drop),
            Mutation::PutRevocation(r) => self.revocations.insert(r.peer_id.as_str(), v).map(drop),
            Mutation::PutInvite(r) => self.invites.insert(r.code, v).map(drop),
            Mutation::DeleteInvite(c) => {
                self.invites.remove(c)?;
                match u32::try_from(*c) {
                    Ok(v1) => self.invites_v1.remove(v1).map(drop),
                    Err(_) => Ok(()),
                }
            }
            Mutation::PutTask(r) => self.tasks.insert(r.id.as_str(), v).map(drop),
            Mutation::DeleteTask(id) => self.tasks.remove(id.as_str()).map(drop),
            Mutation::PutAgentBinding(r) => self.bindings.insert(r.agent_id.as_str(), v).map(drop),
            Mutation::DeleteAgentBinding(id) => self.bindings.remove(id.as_str()).map(drop),
        }
    }
}

impl Backend for RedbBackend {
    fn commit(&mut self, writes: &[&[Mutation]], admit: Admit<'_>) -> Result<(), StoreError> {
        let f = self.file.clone();
        let r = catch(|| self.commit_inner(writes, admit)).unwrap_or_else(|panic| {
            Err((
                StoreError::Unavailable {
                    file: f.clone(),
                    reason: panic,
                },
                true,
            ))
        });
        match r {
            Ok(state) => {
                self.state = state;
                Ok(())
            }
            Err((e, reopen)) => {
                self.poisoned |= reopen;
                Err(e)
            }
        }
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let t0 = Instant::now();
        let f = &self.file;
        let mut s = guarded(f, || self.load_unchecked())?;
        // A directory written before the counts were kept has sequence 0 and no counts.
        if self.state.seq > 0 {
            if let Some(wrong) = self.state.counts_match(&s.counts()) {
                return Err(corrupt(f, wrong));
            }
        }
        s.elapsed = t0.elapsed();
        s.check_elapsed = self.check_elapsed;
        s.seq = self.state.seq;
        Ok(s)
    }

    fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.file).map_or(0, |m| m.len())
    }

    fn describe(&self) -> String {
        format!("redb {}", self.file.display())
    }

    fn needs_recovery(&self) -> bool {
        self.poisoned || self.db.is_none()
    }

    fn recover(&mut self) -> Result<(), StoreError> {
        if !self.needs_recovery() {
            return Ok(());
        }
        // Close the failed handle first: redb holds a lock on the file while it is open.
        self.db = None;
        let f = self.file.clone();
        let unavailable = |reason: String| StoreError::Unavailable {
            file: f.clone(),
            reason: one_line(&reason),
        };
        let cache = self.cache_bytes;
        let db = catch(|| Database::builder().set_cache_size(cache).create(&f))
            .map_err(&unavailable)?
            .map_err(|e| unavailable(format!("cannot reopen the database: {e}")))?;
        // redb's recovery on open verified the newest commit (the handle was not closed
        // cleanly). The commits acknowledged so far must all be there.
        let read = || -> Result<Option<StateMeta>, StoreError> {
            let txn = db.begin_read().map_err(|e| engine_err(&f, e))?;
            let meta = txn.open_table(META).map_err(|e| engine_err(&f, e))?;
            let v = meta.get("state").map_err(|e| engine_err(&f, e))?;
            Ok(v.and_then(|v| serde_json::from_slice(v.value()).ok()))
        };
        let state = catch(read)
            .map_err(&unavailable)?
            .map_err(|e| unavailable(format!("cannot read the reopened database: {e}")))?
            .unwrap_or_default();
        if state.seq < self.state.seq {
            return Err(unavailable(format!(
                "the reopened database is at commit {} but commit {} was acknowledged; \
                 stop the server and check the data directory",
                state.seq, self.state.seq
            )));
        }
        self.state = state;
        self.db = Some(db);
        self.poisoned = false;
        Ok(())
    }

    fn export(&self) -> Result<Box<dyn crate::format::Export>, StoreError> {
        Ok(Box::new(self.exporter()?))
    }

    fn record_start(&mut self) {
        // Best effort: a full disk must not stop a start whose data is intact.
        let bytes = serde_json::to_vec(&self.state).unwrap_or_default();
        let _ = write_durably(&self.dir.file(SEEN_FILE), &bytes);
    }

    fn close(&mut self) {
        if self.needs_recovery() {
            return;
        }
        // Closing the database records a clean shutdown in its header; then the commit
        // it ended at is recorded beside it.
        let db = self.db.take();
        if catch(move || drop(db)).is_err() {
            return;
        }
        self.record_start();
    }
}
