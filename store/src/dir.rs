//! The data directory: created on open, guarded by an exclusive lock file.
//!
//! Layout:
//! * `LOCK` — `flock(LOCK_EX | LOCK_NB)` held for the life of the [`DataDir`]; the file
//!   holds the holder's pid (informational only: the lock is the flock, not the content,
//!   so a stale file after `kill -9` does not block a restart).
//! * `state.redb` — the database (see [`crate::redb_backend`]).
//! * `state.redb.damaged` — written when an integrity check had to repair the database;
//!   while it exists the store refuses to open (an operator inspects, restores or accepts,
//!   then deletes it), so a repair that may have lost records never passes in silence.
//!
//! Runs on a control thread at start-up: plain `std::fs` is fine here.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use crate::error::StoreError;

/// Name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "LOCK";

/// An open, locked data directory. Dropping it releases the lock.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

fn io(path: &Path, op: &'static str, e: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_owned(),
        op,
        message: e.to_string(),
    }
}

impl DataDir {
    /// Creates `path` (and its parents) if missing, then takes the exclusive lock.
    /// A second opener — another process, or another `open` in this process — gets
    /// [`StoreError::Locked`] naming the directory.
    pub fn open(path: &Path) -> Result<DataDir, StoreError> {
        std::fs::create_dir_all(path).map_err(|e| io(path, "create the data directory", e))?;
        let lock_path = path.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| io(&lock_path, "open the lock file", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
                return Err(StoreError::Locked {
                    dir: path.to_owned(),
                    lock_file: lock_path,
                    holder: holder.trim().chars().take(64).collect(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(&lock_path, "lock", e)),
        }
        // Informational: who holds it.
        let _ = lock.set_len(0);
        let _ = lock.seek(SeekFrom::Start(0));
        let _ = writeln!(lock, "pid {}", std::process::id());
        Ok(DataDir {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A file inside it.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_and_locks() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/data");
        let d = DataDir::open(&dir).unwrap();
        assert!(dir.join(LOCK_FILE).exists());
        let err = DataDir::open(&dir).unwrap_err();
        let StoreError::Locked {
            dir: d2, holder, ..
        } = &err
        else {
            panic!("expected Locked, got {err:?}");
        };
        assert_eq!(d2, &dir);
        assert_eq!(holder, &format!("pid {}", std::process::id()));
        assert!(err.to_string().contains(&dir.display().to_string()));
        drop(d);
        // Released on drop.
        let _again = DataDir::open(&dir).unwrap();
    }

    #[test]
    fn a_file_in_the_way_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        let err = DataDir::open(&f).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains(&f.display().to_string()));
    }
}
