//! Backups, exports, restore and verify (issue 22).
//!
//! The format is [`crate::format`]'s.
//!
//! `redb_backend::export::Exporter` writes from one read transaction (a consistent snapshot: every commit
//! acknowledged before it was taken, nothing after); the storage thread takes it between
//! two group commits and a backup thread writes it while commits go on.

use std::io::{BufRead as _, BufReader, Read as _, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::dir::DataDir;
use crate::error::StoreError;
use crate::format::{hex, End, Header, TableCounts};
pub use crate::format::{Export, ExportSummary, BACKUP_VERSION};
use crate::guard::one_line;
use crate::records::{
    self, AgentBindingRecord, Counts, DeviceTokenRecord, InviteRecord, Mutation, PairingRecord,
    RevocationRecord, TaskRecord, VALUE_FORMAT,
};
use crate::redb_backend::{RedbBackend, DAMAGED_MARKER, DB_FILE, FORMAT, SEEN_FILE};
use crate::secret::Secrets;
use crate::Backend as _;

/// Longest line [`restore`] reads. The longest record is a task with its payload, result
/// and error at their size limits (64 KiB each by default, JSON-escaped up to 6× for
/// control characters): 16 MiB leaves room for raised limits while a damaged file
/// without newlines cannot make restore buffer it whole.
pub const LINE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Records written into the new database per commit by [`restore`] (bounds one
/// transaction's memory).
const RESTORE_BATCH_RECORDS: usize = 10_000;

/// Name of the database [`restore`] builds and checks before it takes the place of
/// `state.redb`.
pub const RESTORING_FILE: &str = "state.redb.restoring";
/// Name the replaced database is moved to by `restore --replace`.
pub const BEFORE_RESTORE_FILE: &str = "state.redb.before-restore";

/// What [`verify`] found.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// The database file.
    pub file: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Records of each kind (every one decoded and checked against its key).
    pub counts: Counts,
    /// The commit sequence number.
    pub seq: u64,
    /// Time of the full integrity check (every page checksum).
    pub check_elapsed: Duration,
    /// Time of the whole check (open, integrity check, meta, decode of every record).
    pub elapsed: Duration,
    /// The commit recorded when the store was last loaded or cleanly closed, if any.
    pub seen_seq: Option<u64>,
}

/// The start-up check of a data directory, offline: lock it (refused while a server runs
/// on it: use a backup of the running server instead), recover, check every page and
/// every record, and report. The same code as the server's start, so a directory that
/// verifies starts, and one that does not is refused with the same message.
pub fn verify(data_dir: &Path, secrets: &Secrets) -> Result<VerifyReport, StoreError> {
    let t0 = Instant::now();
    if !data_dir.join(DB_FILE).exists() {
        return Err(StoreError::Io {
            path: data_dir.join(DB_FILE),
            op: "verify",
            message: "no such file (not a data directory, or an empty one)".into(),
        });
    }
    let dir = DataDir::open(data_dir)?;
    let seen_seq = std::fs::read(dir.file(SEEN_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["seq"].as_u64());
    let backend = RedbBackend::open(dir, secrets)?;
    let snap = backend.load()?;
    let file = backend.file().to_owned();
    let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let dir = backend.into_dir();
    drop(dir);
    Ok(VerifyReport {
        file,
        bytes,
        counts: snap.counts(),
        seq: snap.seq,
        check_elapsed: snap.check_elapsed,
        elapsed: t0.elapsed(),
        seen_seq,
    })
}

/// Writes the data directory's state to `out` in the backup format, offline (the
/// directory is locked and checked first, as [`verify`] does).
pub fn export(
    data_dir: &Path,
    secrets: &Secrets,
    out: &mut dyn Write,
) -> Result<ExportSummary, StoreError> {
    if !data_dir.join(DB_FILE).exists() {
        return Err(StoreError::Io {
            path: data_dir.join(DB_FILE),
            op: "export",
            message: "no such file (not a data directory, or an empty one)".into(),
        });
    }
    let backend = RedbBackend::open(DataDir::open(data_dir)?, secrets)?;
    backend.load()?;
    let exporter = backend.exporter()?;
    Box::new(exporter).write_to(out)
}

/// What [`restore`] did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The restored database.
    pub file: PathBuf,
    /// Records of each kind restored.
    pub counts: Counts,
    /// Where the database it replaced was moved (`--replace`).
    pub replaced: Option<PathBuf>,
}

fn damaged(from: &Path, problem: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        file: from.to_owned(),
        problem: format!("not a complete backup: {}", one_line(&problem.into())),
    }
}

/// Reads one line of at most [`LINE_BYTES_MAX`] bytes (without its newline); `None` at
/// the end of the file.
fn read_line(
    r: &mut impl std::io::BufRead,
    buf: &mut Vec<u8>,
    from: &Path,
) -> Result<Option<()>, StoreError> {
    buf.clear();
    let n = r
        .take(LINE_BYTES_MAX as u64 + 1)
        .read_until(b'\n', buf)
        .map_err(|e| StoreError::Io {
            path: from.to_owned(),
            op: "read",
            message: e.to_string(),
        })?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(damaged(
            from,
            if buf.len() > LINE_BYTES_MAX {
                format!("a line longer than {LINE_BYTES_MAX} bytes")
            } else {
                "it ends in the middle of a line (truncated)".to_owned()
            },
        ));
    }
    buf.pop();
    Ok(Some(()))
}

#[derive(Deserialize)]
struct RecordLine<'a> {
    table: &'a str,
    #[serde(borrow)]
    record: &'a serde_json::value::RawValue,
}

/// The mutation that puts `record` of `table` back; `Err` says what is wrong.
fn record_of(table: &str, record: &str) -> Result<(Mutation, usize), String> {
    let mut bytes = Vec::with_capacity(record.len() + 1);
    bytes.push(VALUE_FORMAT);
    bytes.extend_from_slice(record.as_bytes());
    let m = match table {
        "pairing" => (
            Mutation::PutPairing(records::decode::<PairingRecord>(&bytes)?),
            0,
        ),
        "device_token" => (
            Mutation::PutDeviceToken(records::decode::<DeviceTokenRecord>(&bytes)?),
            1,
        ),
        "revocation" => (
            Mutation::PutRevocation(records::decode::<RevocationRecord>(&bytes)?),
            2,
        ),
        // Six-digit codes of an older store are in `invite`, the others in `invite_v2`;
        // both restore into `invite_v2` (their records carry the 64-bit key).
        "invite" | "invite_v2" => (
            Mutation::PutInvite(records::decode::<InviteRecord>(&bytes)?),
            3,
        ),
        "task" => (Mutation::PutTask(records::decode::<TaskRecord>(&bytes)?), 4),
        "agent_binding" => (
            Mutation::PutAgentBinding(records::decode::<AgentBindingRecord>(&bytes)?),
            5,
        ),
        other => return Err(format!("unknown table {other:?}")),
    };
    Ok(m)
}

/// A backup being read: its header is checked on open, its records and end line by
/// [`records`](Self::records).
struct BackupReader {
    r: BufReader<std::fs::File>,
    line: Vec<u8>,
    sha: Sha256,
    from: PathBuf,
    header: Header,
}

impl BackupReader {
    fn open(from: &Path) -> Result<BackupReader, StoreError> {
        let file = std::fs::File::open(from).map_err(|e| StoreError::Io {
            path: from.to_owned(),
            op: "open",
            message: e.to_string(),
        })?;
        let mut r = BufReader::with_capacity(256 * 1024, file);
        let mut line = Vec::new();
        if read_line(&mut r, &mut line, from)?.is_none() {
            return Err(damaged(from, "it is empty"));
        }
        let mut sha = Sha256::new();
        sha.update(&line);
        sha.update(b"\n");
        let header: Header = serde_json::from_slice(&line)
            .map_err(|e| damaged(from, format!("no backup header on the first line ({e})")))?;
        if header.chatixia_store_backup != BACKUP_VERSION || header.format.as_bytes() != FORMAT {
            return Err(damaged(
                from,
                format!(
                    "backup version {} of format {:?}; this build reads version \
                     {BACKUP_VERSION} of {:?}",
                    header.chatixia_store_backup,
                    header.format,
                    String::from_utf8_lossy(FORMAT)
                ),
            ));
        }
        Ok(BackupReader {
            r,
            line,
            sha,
            from: from.to_owned(),
            header,
        })
    }

    /// Refuses a backup written under another server secret.
    fn check_secret(&self, secrets: &Secrets) -> Result<(), StoreError> {
        let check = STANDARD_NO_PAD
            .decode(self.header.secret_check.as_bytes())
            .map_err(|e| damaged(&self.from, format!("header secret_check: {e}")))?;
        if check != secrets.check_value() {
            return Err(StoreError::SecretMismatch {
                file: self.from.clone(),
            });
        }
        Ok(())
    }

    /// Reads every record (decoded into the mutation that puts it back) up to the end
    /// line, then checks the end line's counts and checksum.
    fn records(
        &mut self,
        mut on_record: impl FnMut(Mutation) -> Result<(), StoreError>,
    ) -> Result<Counts, StoreError> {
        let from = self.from.clone();
        let from = &from;
        let mut counts = [0usize; 6];
        let mut end: Option<End> = None;
        let mut n = 1u64;
        while read_line(&mut self.r, &mut self.line, from)?.is_some() {
            n += 1;
            let line = &self.line;
            if end.is_some() {
                return Err(damaged(from, format!("line {n} follows the end line")));
            }
            if line.starts_with(b"{\"end\":") {
                end = Some(
                    serde_json::from_slice(line)
                        .map_err(|e| damaged(from, format!("line {n}, the end line: {e}")))?,
                );
                continue;
            }
            self.sha.update(line);
            self.sha.update(b"\n");
            let rec: RecordLine<'_> = serde_json::from_slice(line)
                .map_err(|e| damaged(from, format!("line {n}: {e}")))?;
            let (m, kind) = record_of(rec.table, rec.record.get())
                .map_err(|e| damaged(from, format!("line {n}, table {}: {e}", rec.table)))?;
            counts[kind] += 1;
            on_record(m)?;
        }
        let end = end.ok_or_else(|| damaged(from, "no end line (truncated)"))?;
        let counts = Counts {
            pairings: counts[0],
            device_tokens: counts[1],
            revocations: counts[2],
            invites: counts[3],
            tasks: counts[4],
            agent_bindings: counts[5],
        };
        let got = hex(&self.sha.clone().finalize());
        if got != end.end.sha256 {
            return Err(damaged(
                from,
                format!(
                    "its content does not match its checksum (sha256 {got}, the end line \
                     says {})",
                    end.end.sha256
                ),
            ));
        }
        if TableCounts::from(counts) != end.end.records || counts.total() as u64 != end.end.total {
            return Err(damaged(
                from,
                format!(
                    "it holds {} records, the end line says {}",
                    counts.total(),
                    end.end.total
                ),
            ));
        }
        Ok(counts)
    }
}

/// Restores the backup `from` into the data directory `data_dir`.
///
/// Refused, with nothing changed: a file that is not a complete backup (header, every
/// record decoding, the end line's counts and SHA-256 all checked); a backup written under
/// another server secret ([`StoreError::SecretMismatch`], as the store refuses such a
/// directory); a directory in use by a running server ([`StoreError::Locked`]); a
/// directory that already holds a store, unless `replace` (then it is moved to
/// [`BEFORE_RESTORE_FILE`]). The new database is built beside the old one as
/// [`RESTORING_FILE`], checked with the server's own start-up check, and only then
/// renamed into place.
pub fn restore(
    from: &Path,
    data_dir: &Path,
    secrets: &Secrets,
    replace: bool,
) -> Result<RestoreReport, StoreError> {
    let mut reader = BackupReader::open(from)?;
    reader.check_secret(secrets)?;
    let dir = DataDir::open(data_dir)?;
    let live = dir.file(DB_FILE);
    if live.exists() && !replace {
        return Err(StoreError::Io {
            path: live,
            op: "restore over",
            message: "the data directory already holds a store; pass --replace to move it \
                      aside (to state.redb.before-restore) and restore in its place"
                .into(),
        });
    }
    let tmp = dir.file(RESTORING_FILE);
    let _ = std::fs::remove_file(&tmp);
    let (dir, counts) = match build(&mut reader, dir, secrets) {
        Ok(ok) => ok,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let io = |path: &Path, op: &'static str, e: std::io::Error| StoreError::Io {
        path: path.to_owned(),
        op,
        message: e.to_string(),
    };
    let mut replaced = None;
    if live.exists() {
        let aside = dir.file(BEFORE_RESTORE_FILE);
        std::fs::rename(&live, &aside).map_err(|e| io(&live, "move aside", e))?;
        replaced = Some(aside);
    }
    std::fs::rename(&tmp, &live).map_err(|e| io(&tmp, "rename into place", e))?;
    // The old database's record of its last state, or of a repair, does not describe
    // this one.
    for stale in [SEEN_FILE, DAMAGED_MARKER] {
        let p = dir.file(stale);
        if p.exists() {
            std::fs::remove_file(&p).map_err(|e| io(&p, "remove", e))?;
        }
    }
    std::fs::File::open(dir.path())
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir.path(), "sync", e))?;
    Ok(RestoreReport {
        file: live,
        counts,
        replaced,
    })
}

/// Writes the records of the backup into [`RESTORING_FILE`], checks the end line, then
/// checks the new database with the start-up check.
fn build(
    reader: &mut BackupReader,
    dir: DataDir,
    secrets: &Secrets,
) -> Result<(DataDir, Counts), StoreError> {
    let mut backend = RedbBackend::create_named(
        dir,
        RESTORING_FILE,
        &secrets.check_value(),
        reader.header.seq,
    )?;
    let mut batch: Vec<Mutation> = Vec::with_capacity(RESTORE_BATCH_RECORDS);
    let counts = reader.records(|m| {
        batch.push(m);
        if batch.len() >= RESTORE_BATCH_RECORDS {
            backend.commit(&[&batch], &mut |_, _| true)?;
            batch.clear();
        }
        Ok(())
    })?;
    backend.commit(&[&batch], &mut |_, _| true)?;
    // The same check as a start: integrity, meta, secret, every record decoded, counts.
    let dir = backend.into_dir();
    let backend =
        RedbBackend::open_named(dir, RESTORING_FILE, secrets, crate::CACHE_BYTES_DEFAULT)?;
    let snap = backend.load()?;
    if snap.counts() != counts {
        return Err(StoreError::Corrupt {
            file: backend.file().to_owned(),
            problem: format!(
                "holds {} records after the restore, the backup has {}",
                snap.counts().total(),
                counts.total()
            ),
        });
    }
    Ok((backend.into_dir(), counts))
}

/// Reads a backup and checks it completely (header, every record, counts, checksum)
/// without restoring it: what `store backup` does with what it received.
pub fn check_backup(from: &Path) -> Result<Counts, StoreError> {
    BackupReader::open(from)?.records(|_| Ok(()))
}
