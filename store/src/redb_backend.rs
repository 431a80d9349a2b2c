//! [`Backend`] on redb: one file, one table per record kind, every commit durable
//! (`Durability::Immediate`: the commit returns after its fsync).
//!
//! Open = crash recovery by redb (after `kill -9` the last durable commit is intact; redb
//! rebuilds its allocator state), then a full integrity check (every page checksum), then
//! the meta check (format and server-secret check value). Any failure is an error naming
//! `state.redb` and the problem; the store never starts empty in silence.

use std::path::{Path, PathBuf};
use std::time::Instant;

use redb::{
    Database, DatabaseError, Durability, ReadableDatabase as _, ReadableTable as _,
    ReadableTableMetadata as _, TableDefinition, TableHandle as _,
};

use crate::dir::DataDir;
use crate::error::StoreError;
use crate::records::{self, Mutation, Snapshot};
use crate::secret::Secrets;
use crate::{Admit, Backend};

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "state.redb";
/// Name of the marker left when an integrity check had to repair the file.
pub const DAMAGED_MARKER: &str = "state.redb.damaged";

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const PAIRINGS: TableDefinition<u32, &[u8]> = TableDefinition::new("pairing");
const TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("device_token");
const REVOCATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("revocation");
const INVITES: TableDefinition<u32, &[u8]> = TableDefinition::new("invite");
const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("task");

/// Value of the meta key `format`.
const FORMAT: &[u8] = b"chatixia-store 1";

/// Default of [`crate::StoreConfig::cache_bytes_max`]: bytes of redb's page cache
/// (`--data-cache-bytes-max`). redb's own default is 1 GiB, which it fills with every page
/// written or read (all of the records after a start-up load): memory that no budget
/// counted (issue 20). 32 MiB holds the upper levels of every table's B-tree, which
/// is what a commit reads; record pages come from the OS page cache when needed.
pub const CACHE_BYTES_DEFAULT: usize = 32 * 1024 * 1024;

/// The redb backend. Owns the locked [`DataDir`].
pub struct RedbBackend {
    db: Database,
    file: PathBuf,
    _dir: DataDir,
}

impl std::fmt::Debug for RedbBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedbBackend({})", self.file.display())
    }
}

fn corrupt(file: &Path, problem: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        file: file.to_owned(),
        problem: problem.into(),
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
            message: other.to_string(),
        },
    }
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
        let file = dir.file(DB_FILE);
        let marker = dir.file(DAMAGED_MARKER);
        if marker.exists() {
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
        let existed = file.exists();
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
        match db.check_integrity() {
            Ok(true) => {}
            Ok(false) => {
                let problem = "failed its integrity check; redb repaired it, which may have \
                               dropped the most recent commits";
                let _ = std::fs::write(&marker, problem);
                return Err(corrupt(&file, problem));
            }
            Err(e) => return Err(engine_err(&file, e)),
        }
        let backend = RedbBackend {
            db,
            file,
            _dir: dir,
        };
        backend.check_meta(existed, secrets)?;
        Ok(backend)
    }

    /// The database file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    fn check_meta(&self, existed: bool, secrets: &Secrets) -> Result<(), StoreError> {
        let f = &self.file;
        let read = self.db.begin_read().map_err(|e| engine_err(f, e))?;
        let stored = match read.open_table(META) {
            Ok(t) => {
                let format = t.get("format").map_err(|e| engine_err(f, e))?;
                let check = t.get("secret_check").map_err(|e| engine_err(f, e))?;
                Some((
                    format.map(|v| v.value().to_vec()),
                    check.map(|v| v.value().to_vec()),
                ))
            }
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(engine_err(f, e)),
        };
        drop(read);
        match stored {
            Some((Some(format), Some(check))) => {
                if format != FORMAT {
                    return Err(corrupt(
                        f,
                        format!("unknown format {:?}", String::from_utf8_lossy(&format)),
                    ));
                }
                if check != secrets.check_value() {
                    return Err(StoreError::SecretMismatch { file: f.clone() });
                }
                Ok(())
            }
            Some(_) => Err(corrupt(f, "meta table lacks format or secret check")),
            None if existed && self.has_any_record()? => {
                Err(corrupt(f, "records present but no meta table"))
            }
            None => self.init(secrets),
        }
    }

    fn has_any_record(&self) -> Result<bool, StoreError> {
        let snap = self.load()?;
        Ok(snap.counts().total() > 0)
    }

    /// Writes the meta table and creates every table, in one durable commit.
    fn init(&self, secrets: &Secrets) -> Result<(), StoreError> {
        let f = &self.file;
        let mut txn = self.db.begin_write().map_err(|e| engine_err(f, e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| engine_err(f, redb::Error::from(e)))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| engine_err(f, e))?;
            meta.insert("format", FORMAT)
                .map_err(|e| engine_err(f, e))?;
            meta.insert("secret_check", secrets.check_value().as_slice())
                .map_err(|e| engine_err(f, e))?;
            txn.open_table(PAIRINGS).map_err(|e| engine_err(f, e))?;
            txn.open_table(TOKENS).map_err(|e| engine_err(f, e))?;
            txn.open_table(REVOCATIONS).map_err(|e| engine_err(f, e))?;
            txn.open_table(INVITES).map_err(|e| engine_err(f, e))?;
            txn.open_table(TASKS).map_err(|e| engine_err(f, e))?;
        }
        txn.commit().map_err(|e| engine_err(f, e))
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
            Mutation::PutDeviceToken(r) => (r.hash.0.len(), Some(records::encode(r))),
            Mutation::DeleteDeviceToken(h) => (h.0.len(), None),
            Mutation::PutRevocation(r) => (r.peer_id.len(), Some(records::encode(r))),
            Mutation::PutInvite(r) => (4, Some(records::encode(r))),
            Mutation::DeleteInvite(_) => (4, None),
            Mutation::PutTask(r) => (r.id.len(), Some(records::encode(r))),
            Mutation::DeleteTask(id) => (id.len(), None),
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
    invites: redb::Table<'t, u32, &'static [u8]>,
    tasks: redb::Table<'t, &'static str, &'static [u8]>,
}

impl Tables<'_> {
    /// Bytes of the record `e` replaces or deletes (0: none).
    fn old_len(&self, e: &Encoded<'_>) -> Result<usize, redb::StorageError> {
        let v = match e.m {
            Mutation::PutPairing(r) => self.pairings.get(r.id)?.map(|v| v.value().len()),
            Mutation::PutDeviceToken(r) => self
                .tokens
                .get(r.hash.0.as_slice())?
                .map(|v| v.value().len()),
            Mutation::DeleteDeviceToken(h) => {
                self.tokens.get(h.0.as_slice())?.map(|v| v.value().len())
            }
            Mutation::PutRevocation(r) => self
                .revocations
                .get(r.peer_id.as_str())?
                .map(|v| v.value().len()),
            Mutation::PutInvite(r) => self.invites.get(r.code)?.map(|v| v.value().len()),
            Mutation::DeleteInvite(c) => self.invites.get(c)?.map(|v| v.value().len()),
            Mutation::PutTask(r) => self.tasks.get(r.id.as_str())?.map(|v| v.value().len()),
            Mutation::DeleteTask(id) => self.tasks.get(id.as_str())?.map(|v| v.value().len()),
        };
        Ok(v.map_or(0, |n| n + e.key_len))
    }

    fn apply(&mut self, e: &Encoded<'_>) -> Result<(), redb::StorageError> {
        let v = e.value.as_deref().unwrap_or_default();
        match e.m {
            Mutation::PutPairing(r) => self.pairings.insert(r.id, v).map(drop),
            Mutation::PutDeviceToken(r) => self.tokens.insert(r.hash.0.as_slice(), v).map(drop),
            Mutation::DeleteDeviceToken(h) => self.tokens.remove(h.0.as_slice()).map(drop),
            Mutation::PutRevocation(r) => self.revocations.insert(r.peer_id.as_str(), v).map(drop),
            Mutation::PutInvite(r) => self.invites.insert(r.code, v).map(drop),
            Mutation::DeleteInvite(c) => self.invites.remove(c).map(drop),
            Mutation::PutTask(r) => self.tasks.insert(r.id.as_str(), v).map(drop),
            Mutation::DeleteTask(id) => self.tasks.remove(id.as_str()).map(drop),
        }
    }
}

impl Backend for RedbBackend {
    fn commit(&mut self, writes: &[&[Mutation]], admit: Admit<'_>) -> Result<(), StoreError> {
        let f = &self.file;
        let mut txn = self.db.begin_write().map_err(|e| engine_err(f, e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| engine_err(f, redb::Error::from(e)))?;
        {
            let mut t = Tables {
                pairings: txn.open_table(PAIRINGS).map_err(|e| engine_err(f, e))?,
                tokens: txn.open_table(TOKENS).map_err(|e| engine_err(f, e))?,
                revocations: txn.open_table(REVOCATIONS).map_err(|e| engine_err(f, e))?,
                invites: txn.open_table(INVITES).map_err(|e| engine_err(f, e))?,
                tasks: txn.open_table(TASKS).map_err(|e| engine_err(f, e))?,
            };
            for (i, w) in writes.iter().enumerate() {
                let encoded: Vec<Encoded<'_>> = w.iter().map(Encoded::of).collect();
                // The change in stored bytes, read before anything of the write is
                // applied (a write names each key once).
                let mut delta: i64 = 0;
                for e in &encoded {
                    let old = t.old_len(e).map_err(|e| engine_err(f, e))?;
                    delta += e.new_len() as i64 - old as i64;
                }
                if !admit(i, delta) {
                    continue;
                }
                for e in &encoded {
                    t.apply(e).map_err(|e| engine_err(f, e))?;
                }
            }
        }
        txn.commit().map_err(|e| engine_err(f, e))
    }

    fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.file).map_or(0, |m| m.len())
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let t0 = Instant::now();
        let f = &self.file;
        let txn = self.db.begin_read().map_err(|e| engine_err(f, e))?;
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
        load_table(&txn, f, INVITES, |k, r| *k == r.code, &mut s.invites, b)?;
        load_table(&txn, f, TASKS, |k, r| *k == r.id, &mut s.tasks, b)?;
        s.elapsed = t0.elapsed();
        Ok(s)
    }

    fn describe(&self) -> String {
        format!("redb {}", self.file.display())
    }
}
