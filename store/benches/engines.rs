//! Embedded-engine comparison for the durable control-plane workload (issue 10).
//!
//! `cargo bench -p chatixia-store --features bench-engines --bench engines` (`-- quick`
//! for a short run; `-- redb`, `-- fjall`, `-- sqlite` for one engine).
//!
//! Every commit here is durable before it returns (fsync): redb with
//! `Durability::Immediate`, fjall with a batch committed and `persist(SyncAll)`, SQLite
//! (rusqlite, bundled) in WAL mode with `synchronous=FULL`, one transaction per commit.
//! Workload, as the storage thread sees it:
//! * `commit1`: one 200-byte record per commit (1 client, no batching): commits/s and p99.
//! * `group64`: 64 records of 200 bytes per commit (64 concurrent clients sharing one
//!   fsync): records/s and commits/s.
//! * `task4k` / `task64k`: 16 tasks of 4 KiB / 64 KiB per commit.
//! * `load100k`: 100,000 entries of 200 bytes stored, closed, then open + read all.
//!
//! Plain `main` (no criterion): each figure is one timed pass, printed as a table row.

use std::path::Path;
use std::time::{Duration, Instant};

trait Engine {
    const NAME: &'static str;
    fn open(dir: &Path) -> Self;
    /// Durably commits `records` in one transaction.
    fn commit(&mut self, records: &[(Vec<u8>, Vec<u8>)]);
    /// Reads every record; returns the count.
    fn load_all(&self) -> usize;
}

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("records");

struct Redb(redb::Database);

impl Engine for Redb {
    const NAME: &'static str = "redb";
    fn open(dir: &Path) -> Self {
        let db = redb::Database::create(dir.join("state.redb")).expect("redb create");
        Redb(db)
    }
    fn commit(&mut self, records: &[(Vec<u8>, Vec<u8>)]) {
        let mut txn = self.0.begin_write().expect("begin");
        txn.set_durability(redb::Durability::Immediate)
            .expect("durability");
        {
            let mut t = txn.open_table(TABLE).expect("table");
            for (k, v) in records {
                t.insert(k.as_slice(), v.as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    fn load_all(&self) -> usize {
        use redb::{ReadableDatabase as _, ReadableTable as _};
        let txn = self.0.begin_read().expect("read");
        let t = txn.open_table(TABLE).expect("table");
        let mut n = 0;
        for item in t.iter().expect("iter") {
            let (k, v) = item.expect("item");
            n += usize::from(!k.value().is_empty() && !v.value().is_empty());
        }
        n
    }
}

struct Fjall(fjall::Keyspace, fjall::PartitionHandle);

impl Engine for Fjall {
    const NAME: &'static str = "fjall";
    fn open(dir: &Path) -> Self {
        let ks = fjall::Config::new(dir.join("fjall"))
            .manual_journal_persist(true)
            .open()
            .expect("fjall open");
        let p = ks
            .open_partition("records", fjall::PartitionCreateOptions::default())
            .expect("partition");
        Fjall(ks, p)
    }
    fn commit(&mut self, records: &[(Vec<u8>, Vec<u8>)]) {
        let mut b = self.0.batch();
        for (k, v) in records {
            b.insert(&self.1, k.as_slice(), v.as_slice());
        }
        b.commit().expect("commit");
        self.0
            .persist(fjall::PersistMode::SyncAll)
            .expect("persist");
    }
    fn load_all(&self) -> usize {
        let mut n = 0;
        for item in self.1.iter() {
            let (k, v) = item.expect("item");
            n += usize::from(!k.is_empty() && !v.is_empty());
        }
        n
    }
}

struct Sqlite(rusqlite::Connection);

impl Engine for Sqlite {
    const NAME: &'static str = "sqlite";
    fn open(dir: &Path) -> Self {
        let c = rusqlite::Connection::open(dir.join("state.sqlite")).expect("sqlite open");
        c.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS records (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;",
        )
        .expect("sqlite init");
        Sqlite(c)
    }
    fn commit(&mut self, records: &[(Vec<u8>, Vec<u8>)]) {
        let txn = self.0.transaction().expect("begin");
        {
            let mut st = txn
                .prepare_cached("INSERT OR REPLACE INTO records (k, v) VALUES (?1, ?2)")
                .expect("prepare");
            for (k, v) in records {
                st.execute((k, v)).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    fn load_all(&self) -> usize {
        let mut st = self.0.prepare("SELECT k, v FROM records").expect("prepare");
        let mut rows = st.query(()).expect("query");
        let mut n = 0;
        while let Some(row) = rows.next().expect("row") {
            let k: Vec<u8> = row.get(0).expect("k");
            let v: Vec<u8> = row.get(1).expect("v");
            n += usize::from(!k.is_empty() && !v.is_empty());
        }
        n
    }
}

fn record(i: u64, len: usize) -> (Vec<u8>, Vec<u8>) {
    let mut v = vec![0u8; len];
    for (j, b) in v.iter_mut().enumerate() {
        *b = (i as usize * 31 + j) as u8;
    }
    (format!("pair/{i:012}").into_bytes(), v)
}

fn p99(mut lat: Vec<Duration>) -> Duration {
    lat.sort();
    lat[(lat.len() * 99 / 100).min(lat.len() - 1)]
}

fn run<E: Engine>(quick: bool) {
    let scale = if quick { 4 } else { 1 };
    let mut next = 0u64;
    let mut batch = |n: usize, len: usize| -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..n)
            .map(|_| {
                next += 1;
                record(next, len)
            })
            .collect()
    };

    // commit1: one record per durable commit.
    let dir = tempfile::tempdir_in(".").expect("tempdir");
    let mut e = E::open(dir.path());
    let commits = 400 / scale;
    let mut lat = Vec::with_capacity(commits);
    let t0 = Instant::now();
    for _ in 0..commits {
        let b = batch(1, 200);
        let t = Instant::now();
        e.commit(&b);
        lat.push(t.elapsed());
    }
    let el = t0.elapsed();
    println!(
        "{:6} commit1   {:8.0} commits/s  p99 {:7.2} ms",
        E::NAME,
        commits as f64 / el.as_secs_f64(),
        p99(lat).as_secs_f64() * 1e3
    );

    // group64 / task4k / task64k.
    for (label, per, len, commits) in [
        ("group64", 64usize, 200usize, 200 / scale),
        ("task4k ", 16, 4096, 100 / scale),
        ("task64k", 16, 65536, 40 / scale),
    ] {
        let mut lat = Vec::with_capacity(commits);
        let t0 = Instant::now();
        for _ in 0..commits {
            let b = batch(per, len);
            let t = Instant::now();
            e.commit(&b);
            lat.push(t.elapsed());
        }
        let el = t0.elapsed().as_secs_f64();
        println!(
            "{:6} {label}   {:8.0} records/s {:6.0} commits/s  p99 {:7.2} ms",
            E::NAME,
            (commits * per) as f64 / el,
            commits as f64 / el,
            p99(lat).as_secs_f64() * 1e3
        );
    }
    drop(e);

    // load100k: 100,000 entries, reopen, read all.
    let dir = tempfile::tempdir_in(".").expect("tempdir");
    let total = 100_000 / scale;
    {
        let mut e = E::open(dir.path());
        let t0 = Instant::now();
        let mut i = 0u64;
        while i < total as u64 {
            let b: Vec<_> = (i..(i + 5_000).min(total as u64))
                .map(|k| record(k, 200))
                .collect();
            i += b.len() as u64;
            e.commit(&b);
        }
        println!(
            "{:6} fill{}  {:8.0} records/s (5000/commit)",
            E::NAME,
            total,
            total as f64 / t0.elapsed().as_secs_f64()
        );
    }
    let t0 = Instant::now();
    let e = E::open(dir.path());
    let opened = t0.elapsed();
    let n = e.load_all();
    let el = t0.elapsed();
    assert_eq!(n, total);
    let size: u64 = walk_size(dir.path());
    println!(
        "{:6} load{}  open {:7.1} ms  open+read {:7.1} ms  on disk {:.1} MiB",
        E::NAME,
        n,
        opened.as_secs_f64() * 1e3,
        el.as_secs_f64() * 1e3,
        size as f64 / 1048576.0
    );
}

fn walk_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "quick");
    let engines = ["redb", "fjall", "sqlite"];
    let only = |n: &str| {
        !args.iter().any(|a| engines.contains(&a.as_str())) || args.iter().any(|a| a == n)
    };
    for _round in 0..2 {
        if only("redb") {
            run::<Redb>(quick);
        }
        if only("fjall") {
            run::<Fjall>(quick);
        }
        if only("sqlite") {
            run::<Sqlite>(quick);
        }
    }
}
