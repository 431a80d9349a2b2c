//! Issue 22: damage anywhere in `state.redb` never starts the store with less than every
//! acknowledged record, and never panics. A store of approved pairings, their token
//! grants, revocations, invites and tasks is closed cleanly, then damaged:
//! * every page (4 KiB) overwritten in turn with random bytes;
//! * 200 random writes of random bytes, 1 byte to 64 KiB, at random offsets (and at the
//!   file's first byte and its end);
//! * truncations.
//!
//! Each damaged copy is opened with [`Store::open`] (what the server runs at start): it
//! either loads exactly the records written, or fails with an error naming the file.
//! `CHATIXIA_DAMAGE_SEED=N` picks other random damage (the default is fixed, so a run is
//! reproducible); the test prints how each case ended.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use chatixia_store::{
    Mutation, PairingStatus, Snapshot, Store, StoreConfig, StoreError, DB_FILE, SEEN_FILE,
};
use common::*;

/// xorshift64*: reproducible damage from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn seed() -> u64 {
    std::env::var("CHATIXIA_DAMAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2222)
}

/// A cleanly closed store with `n` approved pairings (+ grants and tasks), some revoked
/// and rejected entries, invites, and deleted tasks (so the file has freed pages too).
fn pristine(dir: &Path, n: u64) -> Snapshot {
    let s = secrets();
    let (store, _) = Store::open(dir, &s, StoreConfig::default()).unwrap();
    let h = store.handle();
    for i in 0..n {
        h.write_blocking(approval_write(&s, i, 200)).unwrap();
    }
    for i in n..n + 10 {
        h.write_blocking(vec![Mutation::PutPairing(pairing(
            &s,
            i,
            PairingStatus::Rejected,
        ))])
        .unwrap();
        h.write_blocking(vec![
            Mutation::PutPairing(pairing(&s, i + 100, PairingStatus::Revoked)),
            Mutation::PutRevocation(revocation(i + 100)),
        ])
        .unwrap();
        h.write_blocking(vec![Mutation::PutInvite(invite(i))])
            .unwrap();
    }
    for i in 0..n / 4 {
        h.write_blocking(vec![Mutation::DeleteTask(task_id(i))])
            .unwrap();
    }
    store.close();
    let (store, snap) = Store::open(dir, &s, StoreConfig::default()).unwrap();
    store.close();
    snap
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in [DB_FILE, SEEN_FILE] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
}

fn same_records(a: &Snapshot, b: &Snapshot) -> bool {
    a.pairings == b.pairings
        && a.device_tokens == b.device_tokens
        && a.revocations == b.revocations
        && a.invites == b.invites
        && a.tasks == b.tasks
}

/// Opens the damaged copy: Ok(true) = started with every record, Ok(false) never (a
/// partial start fails the test), Err(kind) = refused naming the file.
fn outcome(dir: &Path, want: &Snapshot, case: &str) -> String {
    let file = dir.join(DB_FILE);
    match Store::open(dir, &secrets(), StoreConfig::default()) {
        Ok((store, got)) => {
            store.close();
            assert!(
                same_records(&got, want),
                "{case}: started with other records than were written: {} of {}",
                got.counts().total(),
                want.counts().total()
            );
            "started with every record".into()
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&file.display().to_string())
                    || msg.contains(&dir.join(SEEN_FILE).display().to_string()),
                "{case}: the error does not name the file: {msg}"
            );
            assert!(!msg.contains('\n'), "{case}: not one line: {msg}");
            assert!(
                matches!(e, StoreError::Corrupt { .. } | StoreError::Io { .. }),
                "{case}: {e:?}"
            );
            // Classify by what caught it, for the printed tally.
            let kind = if msg.contains("panicked") {
                "refused: redb panicked (caught)"
            } else if msg.contains("last loaded") {
                "refused: behind the state last seen"
            } else if msg.contains("were committed") {
                "refused: record counts"
            } else if msg.contains("integrity check") {
                "refused: integrity check repaired it"
            } else if msg.contains("table ") {
                "refused: a record did not decode"
            } else {
                "refused: redb reported damage"
            };
            kind.into()
        }
    }
}

fn damage(path: &Path, offset: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn damage_anywhere_starts_with_every_record_or_is_refused_naming_the_file() {
    let root = tempfile::tempdir().unwrap();
    let clean = root.path().join("pristine");
    let want = pristine(&clean, 60);
    assert_eq!(want.counts().pairings, 80);
    let len = std::fs::metadata(clean.join(DB_FILE)).unwrap().len();
    let mut rng = Rng(seed() | 1);
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let mut run = |case: String, apply: &dyn Fn(&Path)| {
        let dir = root.path().join("case");
        let _ = std::fs::remove_dir_all(&dir);
        copy_dir(&clean, &dir);
        apply(&dir.join(DB_FILE));
        *tally.entry(outcome(&dir, &want, &case)).or_default() += 1;
    };

    // Every page in turn.
    let pages = len.div_ceil(4096);
    for p in 0..pages {
        let bytes = rng.bytes(4096.min((len - p * 4096) as usize));
        run(format!("page {p} of {pages}"), &|f| {
            damage(f, p * 4096, &bytes)
        });
    }
    // 200 random writes of 1 byte to 64 KiB, the first at the header, the last at the end.
    for i in 0..200 {
        let size = 1 + rng.below(64 * 1024);
        let offset = match i {
            0 => 0,
            1 => len.saturating_sub(size),
            _ => rng.below(len),
        };
        let size = size.min(len - offset) as usize;
        let bytes = rng.bytes(size);
        run(format!("{size} random bytes at {offset}"), &|f| {
            damage(f, offset, &bytes)
        });
    }
    // Truncations.
    for keep in [0, 1, 512, 4096, len / 3, len / 2, len - 4096, len - 1] {
        run(format!("truncated to {keep} of {len} bytes"), &|f| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(f)
                .unwrap()
                .set_len(keep)
                .unwrap()
        });
    }
    eprintln!("seed {:#x}, {len} bytes, {pages} pages: {tally:#?}", seed());
    assert!(
        tally.keys().any(|k| k.starts_with("refused")),
        "no damage was detected at all: the cases did not reach the data"
    );
}

#[test]
fn a_database_older_than_its_clean_shutdown_is_refused() {
    // An operator copies an older state.redb back by hand: its records are intact and
    // redb finds nothing wrong, but changes acknowledged since are missing.
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let s = secrets();
    let (store, _) = Store::open(&dir, &s, StoreConfig::default()).unwrap();
    store
        .handle()
        .write_blocking(approval_write(&s, 1, 10))
        .unwrap();
    store.close();
    let old = std::fs::read(dir.join(DB_FILE)).unwrap();
    let (store, _) = Store::open(&dir, &s, StoreConfig::default()).unwrap();
    store
        .handle()
        .write_blocking(approval_write(&s, 2, 10))
        .unwrap();
    store.close();
    std::fs::write(dir.join(DB_FILE), old).unwrap();
    let err = Store::open(&dir, &s, StoreConfig::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("newest changes are missing"), "{msg}");
    assert!(msg.contains(SEEN_FILE), "{msg}");
    // Accepting it on purpose: delete the record of the state last seen.
    std::fs::remove_file(dir.join(SEEN_FILE)).unwrap();
    let (store, snap) = Store::open(&dir, &s, StoreConfig::default()).unwrap();
    assert_eq!(snap.counts().pairings, 1);
    store.close();
}

#[test]
fn a_kill_without_clean_shutdown_is_not_mistaken_for_damage() {
    // The state recorded at the last start is older than what that run committed
    // before it died: that is fine.
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let s = secrets();
    let (store, _) = Store::open(&dir, &s, StoreConfig::default()).unwrap();
    store.close();
    assert!(dir.join(SEEN_FILE).exists());
    let (store, _) = Store::open(&dir, &s, StoreConfig::default()).unwrap();
    store
        .handle()
        .write_blocking(approval_write(&s, 1, 10))
        .unwrap();
    // No close: as after kill -9 (the thread is leaked, the lock released by hand).
    std::mem::forget(store);
    // The lock is held by this process: open a copy instead.
    let copy = root.path().join("copy");
    copy_dir(&dir, &copy);
    let (store, snap) = Store::open(&copy, &s, StoreConfig::default()).unwrap();
    assert_eq!(snap.counts().pairings, 1);
    store.close();
}
