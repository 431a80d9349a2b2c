//! Review probes for reactor::recv_ring (not for merge).
//! p1 fails on main (stale thread-local RecvRing on a second runtime: livelock); the rest pass.
//! The tick-inside-push check was run with a temporary patch (monoio foreign::push calling
//! submit()+tick() before every push, recv_ring panicking on a failed borrow): all passed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use reactor::recv_ring::RecvRing;

type Rt = monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>;

fn runtime(entries: u32) -> Rt {
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(entries)
        .enable_timer()
        .build()
        .unwrap()
}

fn pair_std() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (ours, _) = l.accept().unwrap();
    ours.set_nonblocking(true).unwrap();
    (ours, peer)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// P1: a second io_uring runtime on the same thread gets the first runtime's RecvRing
/// (thread-local), whose buffer group is registered on the old ring only.
#[test]
fn p1_second_runtime_on_same_thread() {
    {
        let mut rt = runtime(256);
        rt.block_on(async {
            RecvRing::install().expect("install 1");
        });
    }
    let mut rt = runtime(256);
    let got = rt.block_on(async {
        let ring = RecvRing::install().expect("install 2");
        let (ours, mut peer) = pair_std();
        let ours = monoio::net::TcpStream::from_std(ours).unwrap();
        let mut rx = ring.recv(ours.as_raw_fd()).unwrap();
        peer.write_all(b"hello").unwrap();
        let r = monoio::time::timeout(Duration::from_secs(2), rx.recv(Vec::new())).await;
        match r {
            Ok((Ok(n), b)) => Some(b[..n].to_vec()),
            Ok((Err(e), _)) => panic!("recv error {e}"),
            Err(_) => None,
        }
    });
    assert_eq!(
        got.as_deref(),
        Some(&b"hello"[..]),
        "second runtime on the thread never receives"
    );
}

/// P2: a runtime dropped with a receive armed (forced shard stop): does the peer see
/// the connection end? Baseline: the same with a one-shot monoio read.
fn dropped_runtime_closes(multishot: bool) -> bool {
    let (ours, mut peer) = pair_std();
    {
        let mut rt = runtime(256);
        rt.block_on(async move {
            let ring = RecvRing::install().expect("install");
            let ours = monoio::net::TcpStream::from_std(ours).unwrap();
            monoio::spawn(async move {
                struct G(bool);
                impl Drop for G {
                    fn drop(&mut self) {
                        eprintln!(
                            "task future dropped (multishot={}) panicking={}",
                            self.0,
                            std::thread::panicking()
                        );
                    }
                }
                let _g = G(multishot);
                let mut ours = ours;
                if multishot {
                    let mut rx = ring.recv(ours.as_raw_fd()).unwrap();
                    let _ = rx.recv(Vec::new()).await;
                    drop(rx);
                } else {
                    use monoio::io::AsyncReadRent;
                    let _ = ours.read(Vec::with_capacity(16)).await;
                }
                drop(ours);
            });
            monoio::time::sleep(Duration::from_millis(50)).await;
        });
        eprintln!("block_on returned (multishot={multishot})");
    }
    eprintln!("runtime dropped (multishot={multishot})");
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut b = [0u8; 8];
    let mut r = peer.read(&mut b);
    while matches!(r, Err(ref e) if e.kind() == std::io::ErrorKind::Interrupted) {
        r = peer.read(&mut b);
    }
    eprintln!("multishot={multishot} peer read: {r:?}");
    match r {
        Ok(0) => true,
        Ok(_) => panic!("unexpected bytes"),
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            false
        }
        Err(_) => true,
    }
}

#[test]
fn p2_runtime_drop_with_armed_receive() {
    // run each on its own thread (P1 shows a thread keeps its RecvRing)
    let one_shot = std::thread::spawn(|| dropped_runtime_closes(false))
        .join()
        .unwrap();
    let multi = std::thread::spawn(|| dropped_runtime_closes(true))
        .join()
        .unwrap();
    eprintln!("peer sees end: one-shot={one_shot} multishot={multi}");
    assert_eq!(
        multi, one_shot,
        "multishot differs from one-shot on runtime drop"
    );
}

/// P3: a tiny ring (SQ 4 / CQ 8) with many flooding connections: CQ overflow, EBUSY on
/// submit, ticks inside foreign::push. Data must arrive whole and in order; random
/// stops/drops must not panic or hang.
#[test]
fn p3_tiny_ring_flood() {
    let mut rt = runtime(std::env::var("P3_ENTRIES").map_or(4, |v| v.parse().unwrap()));
    rt.block_on(async {
        let ring = RecvRing::install().expect("install");
        let conns: usize = std::env::var("P3_CONNS").map_or(300, |v| v.parse().unwrap());
        let len = 64 * 1024;
        let mut tasks = Vec::new();
        let mut senders = Vec::new();
        for i in 0..conns {
            let (ours, mut peer) = pair_std();
            let ours = monoio::net::TcpStream::from_std(ours).unwrap();
            let mut rx = ring.recv(ours.as_raw_fd()).unwrap();
            senders.push(std::thread::spawn(move || {
                let data = pattern(len, i as u8);
                for c in data.chunks(1000) {
                    if peer.write_all(c).is_err() {
                        return;
                    }
                }
                let _ = peer.shutdown(std::net::Shutdown::Write);
                let mut b = [0u8; 16];
                let _ = peer.read(&mut b);
            }));
            tasks.push(monoio::spawn(async move {
                let mut got = Vec::new();
                // every 7th: stop midway and read the rest one-shot
                if i % 7 == 0 {
                    while got.len() < len / 2 {
                        let (r, b) = rx.recv(Vec::new()).await;
                        let n = r.unwrap();
                        assert!(n > 0);
                        got.extend_from_slice(&b[..n]);
                    }
                    got.extend(rx.stop().await);
                    use monoio::io::AsyncReadRent;
                    let mut ours = ours;
                    loop {
                        let (r, b) = ours.read(Vec::with_capacity(8192)).await;
                        let n = r.unwrap();
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&b[..n]);
                    }
                } else {
                    loop {
                        // slow consumer on some: let inboxes fill and pause
                        if i % 5 == 0 {
                            monoio::time::sleep(Duration::from_millis(1)).await;
                        }
                        let (r, b) = rx.recv(Vec::new()).await;
                        let n = r.unwrap();
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&b[..n]);
                    }
                    drop(rx);
                    drop(ours);
                }
                assert_eq!(got.len(), len, "conn {i} length");
                assert!(got == pattern(len, i as u8), "conn {i} content");
            }));
        }
        for t in tasks {
            t.await;
        }
        monoio::time::sleep(Duration::from_millis(50)).await;
        for s in senders {
            s.join().unwrap();
        }
        // Orphans freed after their final completions.
        monoio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(ring.slots(), 0);
    });
}

/// P4: stop midway through a stream, then read the rest one-shot.
#[test]
fn p4_stop_midway() {
    let mut rt = runtime(256);
    rt.block_on(async {
        let ring = RecvRing::install().expect("install");
        let len = 64 * 1024;
        let (ours, mut peer) = pair_std();
        let ours = monoio::net::TcpStream::from_std(ours).unwrap();
        let mut rx = ring.recv(ours.as_raw_fd()).unwrap();
        let sender = std::thread::spawn(move || {
            let data = pattern(len, 9);
            for c in data.chunks(1000) {
                peer.write_all(c).unwrap();
            }
            peer.shutdown(std::net::Shutdown::Write).unwrap();
            eprintln!("sender done");
            let mut b = [0u8; 16];
            let _ = peer.read(&mut b);
        });
        let mut got = Vec::new();
        while got.len() < len / 2 {
            let (r, b) = rx.recv(Vec::new()).await;
            let n = r.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&b[..n]);
        }
        eprintln!("got {} before stop", got.len());
        let held = rx.stop().await;
        eprintln!("stop returned {}", held.len());
        got.extend(held);
        use monoio::io::AsyncReadRent;
        let mut ours = ours;
        loop {
            let (r, b) = ours.read(Vec::with_capacity(8192)).await;
            let n = r.unwrap();
            eprintln!("one-shot read {n}");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(got.len(), len);
        assert!(got == pattern(len, 9));
        drop(ours);
        monoio::time::sleep(Duration::from_millis(50)).await;
        sender.join().unwrap();
    });
}
