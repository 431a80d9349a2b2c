//! What the floor prototypes (`ring_healthz`, `ring_relay`, `epoll_healthz`,
//! `epoll_relay`) share: the io_uring ring they all set up the same way, the provided
//! buffer ring of the io_uring ones, and the accept step of the epoll ones.
#![allow(dead_code)] // each example uses its half

use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

/// The ring of the io_uring floors: COOP_TASKRUN | TASKRUN_FLAG | SINGLE_ISSUER, as
/// the server's shards; `DEFER=1` in the environment adds DEFER_TASKRUN.
pub fn uring() -> IoUring {
    let mut b = IoUring::builder();
    b.setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_single_issuer();
    if std::env::var("DEFER").is_ok() {
        b.setup_defer_taskrun();
    }
    b.build(4096).expect("ring")
}

/// A provided buffer ring: `COUNT` buffers of `SIZE` bytes in one slab, registered as
/// group `BGID`. It lives for the program (the kernel holds the mapping).
pub struct BufRing {
    entries: *mut BufRingEntry,
    bufs: Box<[u8]>,
    tail: u16,
}

impl BufRing {
    pub const COUNT: u16 = 1024;
    pub const SIZE: usize = 4096;
    pub const BGID: u16 = 7;

    pub fn register(ring: &IoUring) -> BufRing {
        // SAFETY: an anonymous private mapping, checked below; one 16-byte entry per
        // buffer, page aligned as the kernel requires.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::COUNT as usize * 16,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(mem != libc::MAP_FAILED);
        let mut br = BufRing {
            entries: mem as *mut BufRingEntry,
            bufs: vec![0u8; Self::SIZE * Self::COUNT as usize].into_boxed_slice(),
            tail: 0,
        };
        for bid in 0..Self::COUNT {
            br.recycle(bid);
        }
        br.publish();
        // SAFETY: the mapping is never unmapped (it lives for the program).
        unsafe {
            ring.submitter()
                .register_buf_ring(mem as u64, Self::COUNT, Self::BGID)
                .expect("register_buf_ring");
        }
        br
    }

    /// The `len` bytes the kernel put in buffer `bid`.
    pub fn data(&self, bid: u16, len: usize) -> &[u8] {
        let at = bid as usize * Self::SIZE;
        &self.bufs[at..at + len]
    }

    /// Hands buffer `bid` back (seen by the kernel at the next [`BufRing::publish`]).
    pub fn recycle(&mut self, bid: u16) {
        let idx = (self.tail & (Self::COUNT - 1)) as usize;
        let addr = self.bufs.as_ptr() as u64 + bid as u64 * Self::SIZE as u64;
        // SAFETY: idx < COUNT, inside the mapping.
        unsafe {
            let e = &mut *self.entries.add(idx);
            e.set_addr(addr);
            e.set_len(Self::SIZE as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    pub fn publish(&self) {
        // SAFETY: the tail lives in the first entry's reserved field, inside the mapping.
        unsafe {
            let t = BufRingEntry::tail(self.entries as *const _) as *const AtomicU16;
            (*t).store(self.tail, Ordering::Release);
        }
    }
}

/// TCP_NODELAY, as the server sets on every connection.
pub fn nodelay(fd: i32) {
    let one: libc::c_int = 1;
    // SAFETY: a plain setsockopt on a descriptor the caller owns.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const _ as *const _,
            4,
        );
    }
}

/// The epoll floors' accept step: accepts every pending connection on the
/// non-blocking listener `lfd`, sets TCP_NODELAY, tells `accepted`, and adds it to
/// `ep` (level-triggered, readable).
pub fn epoll_accept_all(ep: i32, lfd: i32, mut accepted: impl FnMut(i32)) {
    loop {
        // SAFETY: plain syscalls on descriptors this program owns.
        let c = unsafe {
            libc::accept4(
                lfd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if c < 0 {
            return;
        }
        nodelay(c);
        accepted(c);
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: c as u64,
        };
        // SAFETY: as above; `ev` outlives the call.
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, c, &mut ev) };
    }
}
