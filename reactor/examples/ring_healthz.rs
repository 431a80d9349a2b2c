//! Prototype (issue 14): the ceiling of a raw io_uring `/healthz` server — multishot
//! accept, multishot receive into a provided buffer ring, sends from a static buffer,
//! one `io_uring_enter` per loop turn. Not part of the server: it answers every request
//! head with the same 200, to measure what the kernel side of the loop costs.
//!
//! `cargo run --release -p reactor --example ring_healthz -- 127.0.0.1:8099`

use std::net::TcpListener;
use std::os::fd::AsRawFd;

use io_uring::{cqueue, opcode, types, IoUring};

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}";
const BUF_SIZE: usize = 4096;
const BUF_COUNT: u16 = 1024;
const BGID: u16 = 7;
const ACCEPT: u64 = u64::MAX;
const SEND_TAG: u64 = 1 << 32;

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8099".into());
    let defer = std::env::var("DEFER").is_ok();
    let listener = TcpListener::bind(&addr).expect("bind");
    let mut b = IoUring::builder();
    b.setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_single_issuer();
    if defer {
        b.setup_defer_taskrun();
    }
    let mut ring: IoUring = b.build(4096).expect("ring");

    // Buffer ring: BUF_COUNT entries of 16 bytes, page aligned; buffers in one slab.
    let ring_bytes = BUF_COUNT as usize * 16;
    // SAFETY: anonymous private mapping; checked below.
    let ring_mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            ring_bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert!(ring_mem != libc::MAP_FAILED);
    let bufs = vec![0u8; BUF_SIZE * BUF_COUNT as usize].into_boxed_slice();
    let bufs_ptr = bufs.as_ptr() as u64;
    let entries = ring_mem as *mut io_uring::types::BufRingEntry;
    let mut tail: u16 = 0;
    let push = |bid: u16, tail: &mut u16| {
        let idx = (*tail & (BUF_COUNT - 1)) as usize;
        // SAFETY: idx < BUF_COUNT, inside the mapping.
        unsafe {
            let e = &mut *entries.add(idx);
            e.set_addr(bufs_ptr + bid as u64 * BUF_SIZE as u64);
            e.set_len(BUF_SIZE as u32);
            e.set_bid(bid);
        }
        *tail = tail.wrapping_add(1);
    };
    let publish = |tail: u16| {
        // SAFETY: the tail field lives in the first entry's reserved u16.
        unsafe {
            let t = io_uring::types::BufRingEntry::tail(entries as *const _)
                as *const std::sync::atomic::AtomicU16;
            (*t).store(tail, std::sync::atomic::Ordering::Release);
        }
    };
    for bid in 0..BUF_COUNT {
        push(bid, &mut tail);
    }
    publish(tail);
    // SAFETY: the mapping lives for the program.
    unsafe {
        ring.submitter()
            .register_buf_ring(ring_mem as u64, BUF_COUNT, BGID)
            .expect("register_buf_ring");
    }

    let lfd = listener.as_raw_fd();
    let accept = opcode::AcceptMulti::new(types::Fd(lfd))
        .build()
        .user_data(ACCEPT);
    // SAFETY: the entry references only the listener fd.
    unsafe { ring.submission().push(&accept).unwrap() };
    let mut requests: u64 = 0;
    let mut pending: Vec<io_uring::squeue::Entry> = Vec::new();
    loop {
        ring.submit_and_wait(1).expect("enter");
        let mut recycled = false;
        for cqe in ring.completion() {
            let ud = cqe.user_data();
            let res = cqe.result();
            if ud == ACCEPT {
                if res >= 0 {
                    let fd = res;
                    let one: libc::c_int = 1;
                    // SAFETY: plain setsockopt on our fd.
                    unsafe {
                        libc::setsockopt(
                            fd,
                            libc::IPPROTO_TCP,
                            libc::TCP_NODELAY,
                            &one as *const _ as *const _,
                            4,
                        );
                    }
                    pending.push(
                        opcode::RecvMulti::new(types::Fd(fd), BGID)
                            .build()
                            .user_data(fd as u64),
                    );
                }
                if !cqueue::more(cqe.flags()) {
                    pending.push(
                        opcode::AcceptMulti::new(types::Fd(lfd))
                            .build()
                            .user_data(ACCEPT),
                    );
                }
                continue;
            }
            if ud & SEND_TAG != 0 {
                continue;
            }
            let fd = ud as i32;
            if res <= 0 {
                if res == -libc::ENOBUFS {
                    pending.push(
                        opcode::RecvMulti::new(types::Fd(fd), BGID)
                            .build()
                            .user_data(fd as u64),
                    );
                    continue;
                }
                // SAFETY: closing our accepted fd.
                unsafe { libc::close(fd) };
                continue;
            }
            let bid = cqueue::buffer_select(cqe.flags()).expect("buffer");
            let data = &bufs[bid as usize * BUF_SIZE..bid as usize * BUF_SIZE + res as usize];
            let n = memchr::memmem::find_iter(data, b"\r\n\r\n").count().max(1);
            requests += n as u64;
            push(bid, &mut tail);
            recycled = true;
            for _ in 0..n {
                pending.push(
                    opcode::Send::new(types::Fd(fd), RESPONSE.as_ptr(), RESPONSE.len() as u32)
                        .build()
                        .user_data(SEND_TAG | fd as u64),
                );
            }
            if !cqueue::more(cqe.flags()) {
                pending.push(
                    opcode::RecvMulti::new(types::Fd(fd), BGID)
                        .build()
                        .user_data(fd as u64),
                );
            }
        }
        if recycled {
            publish(tail);
        }
        for e in pending.drain(..) {
            // SAFETY: the entries reference the static response or nothing.
            unsafe {
                while ring.submission().push(&e).is_err() {
                    ring.submit().expect("submit");
                }
            }
        }
        let _ = requests;
    }
}
