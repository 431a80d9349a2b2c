use std::net::{IpAddr, Ipv4Addr};

use super::*;

fn limits() -> WsLimits {
    WsLimits {
        outbound_frames_max: 4,
        outbound_bytes_max: 100,
        idle_timeout: Duration::from_secs(60),
        ..WsLimits::default()
    }
}

fn frame(len: usize) -> Box<[u8]> {
    vec![0u8; len].into_boxed_slice()
}

fn close_of(t: &ConnTable, key: usize) -> Option<(u16, String)> {
    t.slots.borrow()[key]
        .close
        .as_deref()
        .map(|(c, r)| (*c, r.to_string()))
}

fn queued(t: &ConnTable, key: usize) -> usize {
    t.slots.borrow()[key].outq.len()
}

#[test]
fn a_full_frame_queue_closes_the_slow_peer() {
    let l = limits();
    let t = ConnTable::new(l.clone());
    let k = t.register("p".into(), None, true, 0);
    for _ in 0..l.outbound_frames_max {
        t.enqueue(k, frame(1));
    }
    assert_eq!(close_of(&t, k), None);
    t.enqueue(k, frame(1));
    let (code, reason) = close_of(&t, k).unwrap();
    assert_eq!(code, close_code::POLICY_VIOLATION);
    assert!(reason.contains("outbound queue full"), "{reason}");
    assert_eq!(queued(&t, k), 0, "the queue is dropped");
    assert_eq!(t.closed_slow.get(), 1);
    // Nothing more is queued once closing.
    t.enqueue(k, frame(1));
    assert_eq!(queued(&t, k), 0);
    assert_eq!(t.closed_slow.get(), 1);
}

#[test]
fn the_byte_limit_bounds_what_waits_behind_a_frame() {
    let l = limits();
    let t = ConnTable::new(l.clone());
    let k = t.register("p".into(), None, true, 0);
    // One frame larger than the byte limit still goes into an empty queue.
    t.enqueue(k, frame(l.outbound_bytes_max * 3));
    assert_eq!(close_of(&t, k), None);
    let (out, closing) = take_output(&t, k);
    assert_eq!(out.len(), l.outbound_bytes_max * 3);
    assert!(!closing);
    t.enqueue(k, frame(60));
    t.enqueue(k, frame(40));
    assert_eq!(close_of(&t, k), None, "exactly at the limit is fine");
    t.enqueue(k, frame(1));
    assert_eq!(close_of(&t, k).unwrap().0, close_code::POLICY_VIOLATION);
}

#[test]
fn the_shard_connection_limit_counts_open_connections() {
    let l = WsLimits {
        connections_per_shard_max: 2,
        ..limits()
    };
    let t = ConnTable::new(l.clone());
    assert!(t.has_room());
    let a = t.register("a".into(), None, true, 0);
    assert!(t.has_room());
    let b = t.register("b".into(), None, true, 0);
    assert!(!t.has_room(), "two open, limit two");
    // A replaced connection still counts until its task ends.
    let b2 = t.register("b".into(), None, true, 0);
    assert_eq!(t.open.get(), 3);
    t.unregister(b);
    t.unregister(a);
    assert!(t.has_room());
    t.unregister(b2);
    assert_eq!(t.open.get(), 0);
}

#[test]
fn per_ip_counts_are_limited_and_released() {
    let t = ConnTable::new(WsLimits {
        connections_per_ip_max: 2,
        ..limits()
    });
    let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    assert!(t.ip_acquire(a));
    assert!(t.ip_acquire(a));
    assert!(!t.ip_acquire(a), "third connection of one IP is refused");
    assert!(t.ip_acquire(b), "other IPs are counted apart");
    t.ip_release(a);
    assert!(t.ip_acquire(a));
    // A limit of 0 refuses everyone and leaves no empty entry behind.
    let c = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3));
    let none = ConnTable::new(WsLimits {
        connections_per_ip_max: 0,
        ..limits()
    });
    assert!(!none.ip_acquire(c));
    assert!(!none.ip_counts.borrow().contains_key(&c));
    assert!(!t.ip_counts.borrow().contains_key(&c));
    // Releasing to zero forgets the IP; releasing an unknown IP is harmless.
    t.ip_release(b);
    assert!(!t.ip_counts.borrow().contains_key(&b));
    t.ip_release(b);
    assert!(!t.ip_counts.borrow().contains_key(&b));
}

#[test]
fn idle_sweep_pings_at_half_and_closes_at_the_timeout() {
    let l = limits(); // 60 s
    let t = ConnTable::new(l.clone());
    let k = t.register("p".into(), None, true, 1000);
    t.sweep_idle(1029);
    assert_eq!(queued(&t, k), 0, "not yet half the idle timeout");
    t.sweep_idle(1030);
    assert_eq!(queued(&t, k), 1, "one ping at half the idle timeout");
    let (out, _) = take_output(&t, k);
    let mut ping = Vec::new();
    codec::encode_ping(b"", &mut ping);
    assert_eq!(*out, *ping);
    t.sweep_idle(1045);
    assert_eq!(queued(&t, k), 0, "a single ping per silence");
    assert_eq!(close_of(&t, k), None);
    t.sweep_idle(1060);
    let (code, reason) = close_of(&t, k).unwrap();
    assert_eq!(
        (code, reason.as_str()),
        (close_code::GOING_AWAY, "idle timeout")
    );
}

#[test]
fn activity_resets_the_idle_clock() {
    let l = limits();
    let t = ConnTable::new(l.clone());
    let k = t.register("p".into(), None, true, 0);
    t.sweep_idle(40);
    assert_eq!(queued(&t, k), 1);
    let _ = take_output(&t, k);
    // Bytes arrived (what the session does on every read).
    {
        let mut slots = t.slots.borrow_mut();
        slots[k].last_seen = 50;
        slots[k].ping_sent = false;
    }
    t.sweep_idle(100);
    assert_eq!(close_of(&t, k), None);
    assert_eq!(queued(&t, k), 1, "pinged again after new silence");
    t.sweep_idle(110);
    assert!(close_of(&t, k).is_some());
}

#[test]
fn a_second_connection_replaces_the_first() {
    let t = ConnTable::default();
    let first = t.register("p".into(), None, true, 0);
    let second = t.register("p".into(), None, true, 1);
    assert_ne!(first, second);
    assert_eq!(close_of(&t, first).unwrap().0, close_code::REPLACED);
    assert_eq!(close_of(&t, second), None);
    assert_eq!(t.open.get(), 2);
    // The first one's task ends: the identity still maps to the second.
    t.unregister(first);
    assert_eq!(t.by_id.borrow().get("p"), Some(&second));
    t.unregister(second);
    assert!(t.by_id.borrow().is_empty());
    assert_eq!(t.open.get(), 0);
}

#[test]
fn lists_and_relays_within_one_mesh_only() {
    let l = limits();
    let t = ConnTable::new(l.clone());
    let a = t.register("a".into(), None, true, 0);
    let b = t.register("b".into(), None, true, 0);
    let m = t.register("m".into(), Some("blue".into()), true, 0);
    let u = t.register("u".into(), None, false, 0);
    let mut peers = t.list(None, "a");
    peers.sort();
    assert_eq!(
        peers,
        vec![Box::<str>::from("b")],
        "unauthorized and other meshes hidden"
    );
    assert_eq!(t.list(Some("blue"), "x"), vec![Box::<str>::from("m")]);
    t.deliver("m", None, frame(3));
    assert_eq!(queued(&t, m), 0, "other mesh: dropped");
    t.deliver("b", None, frame(3));
    assert_eq!(queued(&t, b), 1);
    t.deliver("nobody", None, frame(3));
    assert_eq!(t.relayed.get(), 1);
    // An approval arriving while connected.
    t.set_authorized("u", Some("blue"));
    assert_eq!(t.list(Some("blue"), "m"), vec![Box::<str>::from("u")]);
    // From a local connection: the meshes are compared in place.
    t.deliver_from(a, "m", frame(3));
    assert_eq!(queued(&t, m), 0, "other mesh: dropped");
    t.deliver_from(m, "u", frame(3));
    assert_eq!(queued(&t, u), 1, "same mesh");
    t.deliver_from(a, "nobody", frame(3));
    assert_eq!(t.relayed.get(), 2);
    t.close_peer("a", close_code::REVOKED, "pairing revoked");
    assert_eq!(close_of(&t, a).unwrap().0, close_code::REVOKED);
}

/// A lone frame goes out as it was queued; several are joined in order into one
/// buffer up to the batch limit; the byte count follows; a drained queue holds no heap.
#[test]
fn take_output_hands_over_a_lone_frame_and_joins_several() {
    let l = WsLimits::default();
    let t = ConnTable::new(l.clone());
    let k = t.register("p".into(), None, true, 0);
    let lone: Box<[u8]> = b"hello".to_vec().into_boxed_slice();
    let ptr = lone.as_ptr();
    t.enqueue(k, lone);
    let (out, closing) = take_output(&t, k);
    assert_eq!((&*out, closing), (&b"hello"[..], false));
    assert_eq!(out.as_ptr(), ptr, "handed over, not copied");
    for i in 0..5u8 {
        t.enqueue(k, vec![i; 3].into_boxed_slice());
    }
    let (out, _) = take_output(&t, k);
    assert_eq!(&*out, &[0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4][..]);
    assert_eq!(t.slots.borrow()[k].outq_bytes, 0);
    // Past the batch limit, the rest waits for the next write.
    let big = WRITE_BATCH_SIZE_MAX / 2 + 1;
    for _ in 0..3 {
        t.enqueue(k, frame(big));
    }
    assert_eq!(take_output(&t, k).0.len(), big);
    assert_eq!(queued(&t, k), 2);
    assert_eq!(t.slots.borrow()[k].outq_bytes, 2 * big);
    assert_eq!(take_output(&t, k).0.len(), big);
    assert_eq!(take_output(&t, k).0.len(), big);
    assert!(take_output(&t, k).0.is_empty());
    let slots = t.slots.borrow();
    assert!(slots[k].outq.head.is_none() && slots[k].outq.rest.capacity() == 0);
    drop(slots);
    t.close_key(k, close_code::NORMAL, "".into());
    assert!(take_output(&t, k).1, "the close is reported");
}

/// The idle sweep abandons a write in progress for the whole idle timeout (the peer
/// does not read), and only that: a connection merely silent that long while a younger
/// write is in progress gets a normal close (1001 after what it is owed), and its
/// write is left to finish.
#[test]
fn the_idle_sweep_abandons_only_a_stalled_write() {
    let l = limits(); // 60 s
    let t = ConnTable::new(l.clone());
    let stalled = t.register("s".into(), None, true, 0);
    let busy = t.register("b".into(), None, true, 0);
    t.start_write(stalled, 0);
    t.start_write(busy, 50);
    t.sweep_idle(59);
    assert!(!t.slots.borrow()[stalled].write_abort, "within the timeout");
    t.sweep_idle(60);
    assert!(t.slots.borrow()[stalled].write_abort, "stalled: abandoned");
    assert!(
        !t.slots.borrow()[busy].write_abort,
        "a 10 s old write is not stalled"
    );
    assert_eq!(
        close_of(&t, busy).unwrap().1,
        "idle timeout",
        "but silence closes it"
    );
    t.sweep_idle(110);
    assert!(
        t.slots.borrow()[busy].write_abort,
        "60 s into its write: abandoned"
    );
}

/// Frames queued while the task writes do not wake it (it comes back for them when the
/// write is done); while it waits, they do.
#[test]
fn a_writing_task_is_not_woken_for_more_output() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    struct Count(AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let count = Arc::new(Count(AtomicUsize::new(0)));
    let l = WsLimits::default();
    let t = ConnTable::new(l.clone());
    let k = t.register("p".into(), None, true, 0);
    {
        let mut slots = t.slots.borrow_mut();
        slots[k].waker = Some(Waker::from(count.clone()));
    }
    t.start_write(k, 0);
    t.enqueue(k, frame(3));
    assert_eq!(count.0.load(Ordering::SeqCst), 0);
    t.slots.borrow_mut()[k].writing = None;
    t.enqueue(k, frame(3));
    assert_eq!(count.0.load(Ordering::SeqCst), 1);
}

#[test]
fn duplicates_warn_once_per_identity_per_minute() {
    let mut log = DuplicateLog::default();
    assert!(log.should_warn("p", 100));
    assert!(!log.should_warn("p", 100));
    assert!(!log.should_warn("p", 159));
    assert!(
        log.should_warn("q", 120),
        "identities are rate limited apart"
    );
    assert!(log.should_warn("p", 160), "again after a minute");
    assert!(!log.should_warn("p", 200));
    assert!(!log.should_warn("q", 179));
    assert!(log.should_warn("q", 180));
    assert_eq!(log.len(), 2);
}

#[test]
fn the_duplicate_log_table_is_bounded() {
    let mut log = DuplicateLog::default();
    for i in 0..DuplicateLog::IDS_MAX {
        assert!(log.should_warn(&format!("p{i}"), 0));
    }
    assert_eq!(log.len(), DuplicateLog::IDS_MAX);
    // Full of fresh entries: a new identity goes to debug and is not remembered.
    assert!(!log.should_warn("new", 30));
    assert_eq!(log.len(), DuplicateLog::IDS_MAX);
    // Known identities are still rate limited as before.
    assert!(!log.should_warn("p0", 30));
    // Once the old entries are past their interval they make room.
    assert!(log.should_warn("new", 60));
    assert_eq!(log.len(), 1);
}

/// The mesh index agrees with a scan of every slot through registrations, replacements,
/// approvals that move a peer to another mesh, and disconnects in any order.
#[test]
fn the_mesh_index_matches_a_full_scan() {
    let t = ConnTable::default();
    let meshes = [None, Some("red"), Some("blue")];
    let mut keys = Vec::new();
    // A small deterministic sequence (xorshift) of operations.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for step in 0..2000u64 {
        match next(4) {
            0 | 1 => {
                let id = format!("p{}", next(60));
                let mesh = meshes[next(3) as usize].map(Box::from);
                keys.push(t.register(id.into(), mesh, next(4) != 0, step));
            }
            2 if !keys.is_empty() => {
                let k = keys.swap_remove(next(keys.len() as u64) as usize);
                t.unregister(k);
            }
            _ => {
                let id = format!("p{}", next(60));
                t.set_authorized(&id, meshes[next(3) as usize]);
            }
        }
        for mesh in meshes {
            let mut fast = t.list(mesh, "p0");
            fast.sort();
            let mut scan: Vec<Box<str>> = t
                .slots
                .borrow()
                .iter()
                .filter(|(_, s)| {
                    s.authorized
                        && s.close.is_none()
                        && s.mesh.as_deref() == mesh
                        && &*s.peer_id != "p0"
                })
                .map(|(_, s)| s.peer_id.clone())
                .collect();
            scan.sort();
            assert_eq!(fast, scan, "step {step}, mesh {mesh:?}");
        }
    }
    for k in keys {
        t.unregister(k);
    }
    assert!(t.meshes.borrow().default_mesh.is_empty());
    assert!(
        t.meshes.borrow().named.is_empty(),
        "empty meshes are dropped"
    );
}

/// A replaced connection of the same id is not listed to its successor while it
/// closes: `list` skips the asker by key, so the old slot must be excluded by its close,
/// which `close_reason` (what the session reads for the close frame) leaves in place.
#[test]
fn a_replaced_connection_closing_is_not_listed_to_its_successor() {
    let t = ConnTable::default();
    let old = t.register("b".into(), None, true, 0);
    let _a = t.register("a".into(), None, true, 0);
    let new = t.register("b".into(), None, true, 1);
    assert_ne!(old, new);
    let (code, _) = t.close_reason(old).expect("the old connection is closing");
    assert_eq!(code, close_code::REPLACED);
    assert_eq!(
        t.close_reason(old).map(|c| c.0),
        Some(code),
        "read, not taken"
    );
    let listed = t.list(None, "b");
    assert!(
        !listed.iter().any(|p| &**p == "b"),
        "the peer is listed to itself: {listed:?}"
    );
    assert_eq!(t.close_reason(new), None);
}

/// The shard clock is the wall clock (plus the test offset), which can step back
/// (NTP, `date -s`): a write begun at 100 s seen by a sweep at 95 s is young, not
/// 2³² − 5 s old, and is not abandoned.
#[test]
fn a_clock_stepped_back_does_not_abandon_a_write() {
    let l = limits(); // 60 s
    let t = ConnTable::new(l.clone());
    let k = t.register("w".into(), None, true, 100);
    t.start_write(k, 100);
    t.sweep_idle(95);
    assert!(!t.slots.borrow()[k].write_abort);
    t.sweep_idle(160);
    assert!(
        t.slots.borrow()[k].write_abort,
        "60 s after its start: abandoned"
    );
}

/// A write's age counts from its start on the shard clock, whatever the clock's value
/// (here around 2³² s, where an earlier 32-bit start wrapped): abandoned at the idle
/// timeout, not before.
#[test]
fn a_write_is_abandoned_at_the_idle_timeout_from_its_start() {
    let l = limits(); // 60 s
    let t = ConnTable::new(l.clone());
    let k = t.register("w".into(), None, true, (1 << 32) - 5);
    t.start_write(k, u64::from(u32::MAX - 4));
    t.sweep_idle((1 << 32) + 30);
    assert!(!t.slots.borrow()[k].write_abort, "35 s: not yet");
    t.sweep_idle((1 << 32) + 56);
    assert!(t.slots.borrow()[k].write_abort, "61 s: abandoned");
}
