//! Issue 22: disk trouble while running. The data directory is on a small tmpfs that
//! fills up, or its database file stops being writable: changes that cannot be made durable get 503 with
//! a JSON reason and are not applied; reads are still served; the cause is logged once,
//! shown on `/metrics` and `/readyz` (503) while `/healthz` stays 200; a revocation takes
//! effect at once (202) and is written once the store recovers; the store recovers by
//! itself when space returns; nothing acknowledged is lost (checked after `kill -9`).
//!
//! Mounting a tmpfs and `chattr +i` need root: without it these tests fail under
//! `CI=true` (CI runs as root) and say why and return elsewhere.

use crate::common;
use common::ws::{join, recv_close};
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chatixia_store::{
    DeviceTokenRecord, HashKind, Mutation, PairingRecord, PairingStatus, Secrets, Store,
    StoreConfig,
};

const SECRET: &str = "store-disk-test-secret";

/// A tmpfs mounted for one test, unmounted (lazily) on drop, before its mount point's
/// scratch directory is removed.
pub(crate) struct Tmpfs {
    pub(crate) path: PathBuf,
    _scratch: TempDir,
}

impl Tmpfs {
    /// `None` (after saying why) when this process may not mount; a failure under
    /// `CI=true`.
    pub(crate) fn mount(size: &str) -> Option<Tmpfs> {
        let dir = TempDir::new();
        let mnt = dir.0.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mnt)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                path: mnt,
                _scratch: dir,
            }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                common::skip(&format!(
                    "cannot mount a tmpfs (the disk tests need root): {why}"
                ));
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn secrets() -> Secrets {
    Secrets::derive(SECRET.as_bytes())
}

fn token(id: u32) -> String {
    format!("dt_{id:032x}")
}

fn entry(id: u32, status: PairingStatus) -> PairingRecord {
    PairingRecord {
        id,
        agent_name: format!("device {id}"),
        peer_id: format!("agent-{:06x}", id & 0xff_ffff),
        status,
        created_at_ns: 1_795_239_689_000_000_000,
        updated_at_ns: 1_795_239_689_000_000_000,
        mesh: None,
        invited_by: "admin-1".into(),
        claim_hash: None,
        token_hash: (status == PairingStatus::Approved)
            .then(|| secrets().token_hash(HashKind::DeviceToken, &token(id))),
        sealed_token: None,
    }
}

/// Entries 1..=3 approved (tokens `token(id)`), entry 4 pending.
fn fill(dir: &Path) {
    let s = secrets();
    let (store, _) = Store::open(dir, &s, StoreConfig::default()).unwrap();
    let h = store.handle();
    for id in 1..=3 {
        let e = entry(id, PairingStatus::Approved);
        h.write_blocking(vec![
            Mutation::PutDeviceToken(DeviceTokenRecord {
                hash: e.token_hash.unwrap(),
                peer_id: e.peer_id.clone(),
                role: "agent".into(),
                mesh: None,
                entry_id: id,
            }),
            Mutation::PutPairing(e),
        ])
        .unwrap();
    }
    h.write_blocking(vec![Mutation::PutPairing(entry(
        4,
        PairingStatus::PendingApproval,
    ))])
    .unwrap();
    store.close();
}

fn start(dir: &Path) -> Server {
    let mut o = Opts::cores(2);
    o.args = vec![
        "--data-dir".into(),
        dir.display().to_string(),
        "--store-retry-interval".into(),
        "0.2".into(),
    ];
    o.env = vec![
        ("SIGNALING_SECRET".into(), SECRET.into()),
        ("RUST_LOG".into(), "warn".into()),
    ];
    Server::with(o)
}

fn submit(s: &Server, payload_bytes: usize) -> Resp {
    s.post_json(
        "/api/hub/tasks",
        &json!({"skill": "disk", "payload": {"blob": "b".repeat(payload_bytes)}}),
    )
}

fn status_of(s: &Server, id: u32) -> String {
    let all = s.admin_get("/api/pairing/all");
    assert_eq!(all.status, 200, "{}", all.text());
    all.json()
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == format!("{id:08x}").as_str())
        .map(|e| e["status"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn device_jwt(s: &Server, id: u32) -> Resp {
    s.req(
        "POST",
        "/api/token",
        &[("X-Device-Token", &token(id))],
        None,
    )
}

fn metric(s: &Server, name: &str) -> u64 {
    let text = s.get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .parse()
        .unwrap()
}

fn wait_ready(s: &Server, within: Duration) -> Resp {
    let t0 = Instant::now();
    loop {
        let r = s.get("/readyz");
        if r.status == 200 || t0.elapsed() > within {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fills the filesystem holding `dir` with a ballast file until it is full.
fn fill_disk(dir: &Path) -> PathBuf {
    use std::io::Write;
    let ballast = dir.join("ballast");
    let mut f = std::fs::File::create(&ballast).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    ballast
}

#[test]
fn a_full_disk_refuses_writes_with_503_keeps_serving_and_recovers_by_itself() {
    let Some(fs) = Tmpfs::mount("4m") else { return };
    let dir = fs.path.join("data");
    fill(&dir);
    let mut s = start(&dir);
    // Entry 2's device is connected when it gets revoked.
    let peer2 = entry(2, PairingStatus::Approved).peer_id;
    let jwt2 = device_jwt(&s, 2).json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut ws2, _) = join(&s, &peer2, &jwt2);
    let mut acked: Vec<String> = Vec::new();
    for _ in 0..3 {
        let r = submit(&s, 100);
        assert_eq!(r.status, 200, "{}", r.text());
        acked.push(r.json()["task_id"].as_str().unwrap().to_owned());
    }
    let ballast = fill_disk(&fs.path);
    // What fits in the database's free pages is still saved; then the disk refuses.
    let mut refused = None;
    for _ in 0..500 {
        let r = submit(&s, 30_000);
        if r.status == 200 {
            acked.push(r.json()["task_id"].as_str().unwrap().to_owned());
        } else {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("the full disk never refused a write");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.error(503).contains("No space left on device"),
        "{}",
        r.text()
    );
    let tasks_before = s.get("/api/hub/tasks/all").json().as_array().unwrap().len();
    for _ in 0..30 {
        let r = submit(&s, 10);
        assert_eq!(r.status, 503, "{}", r.text());
    }
    // Not applied: no task was added by the refused submissions.
    let tasks_now = s.get("/api/hub/tasks/all").json().as_array().unwrap().len();
    assert_eq!(tasks_now, tasks_before);
    assert_eq!(tasks_now, acked.len());

    // Health: /readyz says why, /healthz is alive, /metrics shows it.
    let r = s.get("/readyz");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["status"], "unavailable");
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{}",
        r.text()
    );
    assert_eq!(s.get("/healthz").status, 200);
    assert_eq!(metric(&s, "chatixia_store_available"), 0);
    assert!(metric(&s, "chatixia_store_unavailable_refused_total") >= 30);
    // Reads are served.
    for id in &acked {
        let r = s.get(&format!("/api/hub/tasks/{id}"));
        assert_eq!(r.json()["state"], "pending", "{}", r.text());
    }
    assert_eq!(status_of(&s, 1), "approved");
    assert_eq!(device_jwt(&s, 1).status, 200);
    // An approval cannot be saved: 503, and the entry stays pending.
    let r = s.admin_req("POST", &format!("/api/pairing/{:08x}/approve", 4));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(status_of(&s, 4), "pending_approval");
    // A revocation fails closed: in effect at once, kept, written on recovery.
    let r = s.admin_req("POST", &format!("/api/pairing/{:08x}/revoke", 2));
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["saved"], false);
    assert_eq!(recv_close(&mut ws2).0, 4001);
    assert_eq!(device_jwt(&s, 2).status, 401);
    assert_eq!(status_of(&s, 2), "revoked");
    assert_eq!(metric(&s, "chatixia_store_retained_writes"), 1);
    // Logged once (by the control thread, which looks every 200 ms), not once per
    // refused request.
    let logged = |s: &Server| {
        s.log()
            .lines()
            .filter(|l| l.contains("state store unavailable"))
            .count()
    };
    let t0 = Instant::now();
    while logged(&s) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "{}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..20 {
        assert_eq!(submit(&s, 10).status, 503);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(logged(&s), 1, "{}", s.log());
    assert!(!s.log().contains("store commit failed"), "{}", s.log());

    // Space returns: the store recovers by itself.
    std::fs::remove_file(&ballast).unwrap();
    let r = wait_ready(&s, Duration::from_secs(15));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(metric(&s, "chatixia_store_available"), 1);
    assert!(metric(&s, "chatixia_store_recoveries_total") >= 1);
    assert_eq!(metric(&s, "chatixia_store_retained_writes"), 0);
    let r = submit(&s, 100);
    assert_eq!(r.status, 200, "{}", r.text());
    acked.push(r.json()["task_id"].as_str().unwrap().to_owned());
    let r = s.admin_req("POST", &format!("/api/pairing/{:08x}/approve", 4));
    assert_eq!(r.status, 200, "{}", r.text());
    // The control thread looks every 200 ms.
    let t0 = Instant::now();
    while !s.log().contains("state store available again") {
        assert!(t0.elapsed() < Duration::from_secs(5), "{}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    }

    // Nothing acknowledged is lost, and the kept revocation was written.
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let s = start(&dir);
    for id in &acked {
        let r = s.get(&format!("/api/hub/tasks/{id}"));
        assert_eq!(r.json()["state"], "pending", "{id} lost: {}", r.text());
    }
    assert_eq!(status_of(&s, 2), "revoked");
    assert_eq!(device_jwt(&s, 2).status, 401);
    assert_eq!(common::ws::connect(&s, &jwt2).err(), Some(401));
    assert_eq!(status_of(&s, 4), "approved");
    assert_eq!(device_jwt(&s, 1).status, 200);
}

/// Whether `dir`'s filesystem refuses writes to a file made immutable while it is open
/// (ext4, xfs, btrfs do; tmpfs does not); `chattr` needs root.
fn immutable_files_refuse_writes(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let probe = dir.join("probe");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&probe)
        .map_err(|e| e.to_string())?;
    let st = Command::new("chattr")
        .arg("+i")
        .arg(&probe)
        .output()
        .map_err(|e| e.to_string())?;
    let refused = st.status.success() && f.write_at(b"x", 0).is_err();
    let _ = Command::new("chattr").arg("-i").arg(&probe).status();
    let _ = std::fs::remove_file(&probe);
    if refused {
        Ok(())
    } else if !st.status.success() {
        Err(format!(
            "chattr +i failed: {}",
            String::from_utf8_lossy(&st.stderr)
        ))
    } else {
        Err("this filesystem does not refuse writes to an open immutable file".into())
    }
}

fn chattr(flag: &str, f: &Path) {
    let st = Command::new("chattr").arg(flag).arg(f).status().unwrap();
    assert!(st.success(), "chattr {flag} {}", f.display());
}

/// A data file the server may no longer write (the kernel refusing writes, as after a
/// filesystem turned read-only). A running server's filesystem cannot be remounted
/// read-only by hand (the kernel answers EBUSY while files are open for writing), so the
/// test makes `state.redb` immutable (`chattr +i`: every write fails with EPERM, root
/// included) — the same path as EROFS in the server: the commit fails, the store is
/// unavailable until a retry succeeds.
#[test]
fn a_data_file_that_cannot_be_written_refuses_writes_and_recovers_when_writable_again() {
    let root = TempDir::new();
    if let Err(why) = immutable_files_refuse_writes(&root.0) {
        common::skip(&format!(
            "cannot make a file unwritable (needs root and ext4/xfs/btrfs under {}): {why}",
            root.0.display()
        ));
        return;
    }
    let dir = root.0.join("data");
    fill(&dir);
    let s = start(&dir);
    let r = submit(&s, 10);
    assert_eq!(r.status, 200, "{}", r.text());
    let first = r.json()["task_id"].as_str().unwrap().to_owned();
    let file = dir.join(chatixia_store::DB_FILE);
    chattr("+i", &file);
    let r = submit(&s, 10);
    let undo = || chattr("-i", &file);
    if r.status != 503 {
        undo();
    }
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.error(503).contains("not permitted"), "{}", r.text());
    let r = s.get("/readyz");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(s.get("/healthz").status, 200);
    assert_eq!(
        s.get(&format!("/api/hub/tasks/{first}")).json()["state"],
        "pending"
    );
    // Still refused across retries (each reopen fails too).
    std::thread::sleep(Duration::from_millis(600));
    let r = submit(&s, 10);
    undo();
    assert_eq!(r.status, 503, "{}", r.text());
    let r = wait_ready(&s, Duration::from_secs(15));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = submit(&s, 10);
    assert_eq!(r.status, 200, "{}", r.text());
}
