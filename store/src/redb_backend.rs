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
use crate::Backend;

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "state.redb";
/// Name of the marker left when an integrity check had to repair the file.
pub const DAMAGED_MARKER: &str = "state.redb.damaged";

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const PAIRINGS: TableDefinition<u32, &[u8]> = TableDefinition::new("pairing");
const TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("device_token");
const REVOCATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("revocation");
/// Invite codes by 64-bit key (six-digit and long codes).
const INVITES: TableDefinition<u64, &[u8]> = TableDefinition::new("invite_v2");
/// Six-digit invite codes written before long codes existed (keyed by the u32 code):
/// still loaded, and emptied as they are redeemed or expire; nothing new goes there.
const INVITES_V1: TableDefinition<u32, &[u8]> = TableDefinition::new("invite");
const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("task");

/// Value of the meta key `format`.
const FORMAT: &[u8] = b"chatixia-store 1";

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
    /// was written under `secrets`.
    pub fn open(dir: DataDir, secrets: &Secrets) -> Result<RedbBackend, StoreError> {
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
        let mut db = match Database::create(&file) {
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

impl Backend for RedbBackend {
    fn commit(&mut self, writes: &[&[Mutation]]) -> Result<(), StoreError> {
        let f = &self.file;
        let mut txn = self.db.begin_write().map_err(|e| engine_err(f, e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| engine_err(f, redb::Error::from(e)))?;
        {
            let mut pairings = txn.open_table(PAIRINGS).map_err(|e| engine_err(f, e))?;
            let mut tokens = txn.open_table(TOKENS).map_err(|e| engine_err(f, e))?;
            let mut revocations = txn.open_table(REVOCATIONS).map_err(|e| engine_err(f, e))?;
            let mut invites = txn.open_table(INVITES).map_err(|e| engine_err(f, e))?;
            let mut invites_v1 = txn.open_table(INVITES_V1).map_err(|e| engine_err(f, e))?;
            let mut tasks = txn.open_table(TASKS).map_err(|e| engine_err(f, e))?;
            for m in writes.iter().flat_map(|w| w.iter()) {
                let r = match m {
                    Mutation::PutPairing(r) => pairings
                        .insert(r.id, records::encode(r).as_slice())
                        .map(drop),
                    Mutation::PutDeviceToken(r) => tokens
                        .insert(r.hash.0.as_slice(), records::encode(r).as_slice())
                        .map(drop),
                    Mutation::DeleteDeviceToken(h) => tokens.remove(h.0.as_slice()).map(drop),
                    Mutation::PutRevocation(r) => revocations
                        .insert(r.peer_id.as_str(), records::encode(r).as_slice())
                        .map(drop),
                    Mutation::PutInvite(r) => invites
                        .insert(r.code, records::encode(r).as_slice())
                        .map(drop),
                    Mutation::DeleteInvite(c) => {
                        invites
                            .remove(c)
                            .map(drop)
                            .and_then(|()| match u32::try_from(*c) {
                                Ok(old) => invites_v1.remove(old).map(drop),
                                Err(_) => Ok(()),
                            })
                    }
                    Mutation::PutTask(r) => tasks
                        .insert(r.id.as_str(), records::encode(r).as_slice())
                        .map(drop),
                    Mutation::DeleteTask(id) => tasks.remove(id.as_str()).map(drop),
                };
                r.map_err(|e| engine_err(f, e))?;
            }
        }
        txn.commit().map_err(|e| engine_err(f, e))
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let t0 = Instant::now();
        let f = &self.file;
        let txn = self.db.begin_read().map_err(|e| engine_err(f, e))?;
        let mut s = Snapshot::default();
        load_table(&txn, f, PAIRINGS, |k, r| *k == r.id, &mut s.pairings)?;
        load_table(&txn, f, TOKENS, |k, r| *k == r.hash.0, &mut s.device_tokens)?;
        load_table(
            &txn,
            f,
            REVOCATIONS,
            |k, r| *k == r.peer_id,
            &mut s.revocations,
        )?;
        load_table(
            &txn,
            f,
            INVITES_V1,
            |k, r| u64::from(*k) == r.code,
            &mut s.invites,
        )?;
        load_table(&txn, f, INVITES, |k, r| *k == r.code, &mut s.invites)?;
        load_table(&txn, f, TASKS, |k, r| *k == r.id, &mut s.tasks)?;
        s.elapsed = t0.elapsed();
        Ok(s)
    }

    fn describe(&self) -> String {
        format!("redb {}", self.file.display())
    }
}
