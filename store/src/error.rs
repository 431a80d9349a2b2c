//! Errors of the store. Every error that concerns a file names it.

use std::path::PathBuf;

/// Why the store could not open, load or commit.
///
/// `Clone` because one failed group commit fails every write in it, each with the same
/// error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// A file or directory operation failed (`op` says which; the message is the OS's).
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done ("create the data directory", "open", …).
        op: &'static str,
        /// The OS error.
        message: String,
    },
    /// Another process (or another open in this process) holds the data directory's lock.
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// The lock file.
        lock_file: PathBuf,
        /// What the lock file says about its holder (its pid), if readable.
        holder: String,
    },
    /// A file is damaged or not what it should be; the store refuses to start on it.
    Corrupt {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The data directory was written under another server secret: every stored token
    /// hash would silently fail to match, so the store refuses.
    SecretMismatch {
        /// The file holding the check value.
        file: PathBuf,
    },
    /// A commit failed (the engine's message); none of the writes in it is acknowledged.
    Commit {
        /// The database file.
        file: PathBuf,
        /// The engine's message.
        message: String,
    },
    /// The disk refused a write (full, read-only, failing) or the database could not be
    /// used after such a failure: nothing of this write is on disk and it is not
    /// acknowledged. The storage thread retries on its own (reopening the database) and
    /// the store is available again once a commit succeeds. Answer 503.
    Unavailable {
        /// The database file.
        file: PathBuf,
        /// What failed, on one line (the OS's or the engine's message).
        reason: String,
    },
    /// Not durable yet, but kept: the store is unavailable and this write was submitted
    /// with [`ShardLink::submit_retained`](crate::ShardLink::submit_retained) (a
    /// revocation). The storage thread writes it before anything else once the store is
    /// available again; a process exit before then loses it.
    Deferred {
        /// The database file.
        file: PathBuf,
        /// Why it could not be written now.
        reason: String,
    },
    /// The storage thread has stopped; nothing more can be written.
    Closed,
    /// The write would grow the stored records past their bound: `--data-bytes-max`,
    /// or for a write on behalf of a client without credentials its share of it
    /// (`anonymous`). Nothing of it was applied; writes that free space still pass.
    Full {
        /// Bytes of records (keys and values) held when it was refused.
        bytes: u64,
        /// The bound that refused it.
        bytes_max: u64,
        /// Whether it was the anonymous share's bound.
        anonymous: bool,
    },
}

impl StoreError {
    /// Whether this is the store being unavailable (a disk that refuses writes), as
    /// opposed to a refusal of this one write: answer 503 and report on `/readyz`.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::Deferred { .. } | StoreError::Closed
        )
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Io { path, op, message } => {
                write!(f, "cannot {op} {}: {message}", path.display())
            }
            StoreError::Locked {
                dir,
                lock_file,
                holder,
            } => write!(
                f,
                "data directory {} is in use by another server (lock {} is held{}); \
                 stop it or choose another --data-dir",
                dir.display(),
                lock_file.display(),
                if holder.is_empty() {
                    String::new()
                } else {
                    format!(", holder: {holder}")
                }
            ),
            StoreError::Corrupt { file, problem } => {
                write!(f, "{} is damaged: {problem}", file.display())
            }
            StoreError::SecretMismatch { file } => write!(
                f,
                "{} was written under a different server secret (SIGNALING_SECRET); refused: \
                 its stored device-token hashes would never match",
                file.display()
            ),
            StoreError::Commit { file, message } => {
                write!(f, "commit to {} failed: {message}", file.display())
            }
            StoreError::Unavailable { file, reason } => write!(
                f,
                "the state store cannot save changes to {}: {reason}",
                file.display()
            ),
            StoreError::Deferred { file, reason } => write!(
                f,
                "not saved yet (the state store cannot write to {}: {reason}); kept and \
                 written once the store recovers",
                file.display()
            ),
            StoreError::Closed => f.write_str("the storage thread has stopped"),
            StoreError::Full {
                bytes,
                bytes_max,
                anonymous: false,
            } => write!(
                f,
                "the durable store is full ({bytes} bytes of records; the bound is \
                 {bytes_max} bytes, --data-bytes-max); changes that free space are still \
                 accepted"
            ),
            StoreError::Full {
                bytes,
                bytes_max,
                anonymous: true,
            } => write!(
                f,
                "the durable store's share for clients without credentials is full \
                 ({bytes} bytes of records; their bound is {bytes_max} bytes, \
                 --anonymous-share-percent of --data-bytes-max); requests with a valid \
                 X-API-Key or bearer token still have room"
            ),
        }
    }
}

impl std::error::Error for StoreError {}

/// Why a write was not queued. Every variant maps to HTTP 503 (retry later): nothing was
/// written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The storage queue holds `queue_depth_max` writes.
    QueueFull,
    /// This shard has `inflight_max` writes waiting for their commit.
    InFlightFull,
    /// The storage thread has stopped.
    Closed,
    /// A backup is already being written (one at a time: each holds a read snapshot
    /// that keeps the pages it reads from being reused).
    BackupRunning,
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SubmitError::QueueFull => "storage queue full",
            SubmitError::InFlightFull => "too many writes in flight on this shard",
            SubmitError::Closed => "storage stopped",
            SubmitError::BackupRunning => "a backup is already running",
        })
    }
}

impl std::error::Error for SubmitError {}
